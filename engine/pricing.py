"""Prices per million tokens, and what a call costs.

`DEFAULT_PRICES` holds the providers' public list prices (USD per million tokens, standard tier,
as published by OpenAI and Anthropic in 2025). A model entry's own `input_price` /
`output_price` / `cached_input_price` win over the config's `pricing:` table, which wins over
these defaults. A dated model name (`gpt-4o-2024-08-06`) takes the price of its longest known
prefix (`gpt-4o`). A model with no price anywhere costs $0 (local models; say so in config for a
paid model the table does not know).

Provider batches (`engine.provider_batch`): an answer that came back from a provider batch is
billed at the batch rate, `(1 - batch_discount)` times every price above; `batch_discount` is set
per model in the `pricing:` table and defaults to 0.5 (OpenAI's Batch API and Anthropic's Message
Batches both charge half the real-time price).

Cached input: OpenAI bills prompt tokens served from its prefix cache at the cached-input price
(`usage.prompt_tokens_details.cached_tokens`); Anthropic bills cache reads
(`usage.cache_read_input_tokens`) at a tenth of the input price and cache writes
(`usage.cache_creation_input_tokens`, 5-minute cache) at 1.25 times the input price.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from pydantic import Field

from engine.spec.models import ModelEntry, Strict


@dataclass(frozen=True)
class Price:
    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    cache_write: float | None = None
    """USD per million prompt tokens written to the provider's cache (default: the input price)."""
    batch_discount: float = 0.5
    """The share taken off every price for an answer from a provider batch."""

    def batched(self) -> Price:
        """The batch rate: every price times `1 - batch_discount`."""
        keep = 1.0 - self.batch_discount
        return Price(self.input * keep, self.output * keep,
                     None if self.cached_input is None else self.cached_input * keep,
                     None if self.cache_write is None else self.cache_write * keep, self.batch_discount)

    @property
    def free(self) -> bool:
        return self.input == 0 and self.output == 0

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0,
             cache_write_tokens: int = 0) -> float:
        cached = max(0, min(cached_input_tokens, input_tokens))
        written = max(0, min(cache_write_tokens, input_tokens - cached))
        cached_price = self.input if self.cached_input is None else self.cached_input
        write_price = self.input if self.cache_write is None else self.cache_write
        return ((input_tokens - cached - written) * self.input + cached * cached_price + written * write_price
                + output_tokens * self.output) / 1_000_000


class PriceOverride(Strict):
    """One row of the config's `pricing:` table (USD per million tokens)."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)
    cache_write: float | None = Field(None, ge=0)
    batch_discount: float = Field(0.5, ge=0, le=1, description="share taken off for provider batch answers")


# provider -> model -> (input, cached input, output), USD per million tokens.
DEFAULT_PRICES: dict[str, dict[str, tuple[float, float, float]]] = {
    "openai": {
        "gpt-4o": (2.50, 1.25, 10.00),
        "gpt-4o-mini": (0.15, 0.075, 0.60),
        "gpt-4.1": (2.00, 0.50, 8.00),
        "gpt-4.1-mini": (0.40, 0.10, 1.60),
        "gpt-4.1-nano": (0.10, 0.025, 0.40),
        "o3": (2.00, 0.50, 8.00),
        "o4-mini": (1.10, 0.275, 4.40),
        "gpt-5": (1.25, 0.125, 10.00),
        "gpt-5-mini": (0.25, 0.025, 2.00),
        "gpt-5-nano": (0.05, 0.005, 0.40),
    },
    "anthropic": {
        "claude-opus-4-1": (15.00, 1.50, 75.00),
        "claude-opus-4-0": (15.00, 1.50, 75.00),
        "claude-sonnet-4-5": (3.00, 0.30, 15.00),
        "claude-sonnet-4-0": (3.00, 0.30, 15.00),
        "claude-3-7-sonnet": (3.00, 0.30, 15.00),
        "claude-haiku-4-5": (1.00, 0.10, 5.00),
        "claude-3-5-haiku": (0.80, 0.08, 4.00),
    },
}


def default_price(provider: str, model: str) -> Price | None:
    table = DEFAULT_PRICES.get(provider, {})
    best = max((name for name in table if model == name or model.startswith(name + "-")), key=len, default=None)
    if best is None:
        return None
    inp, cached, out = table[best]
    return Price(inp, out, cached, round(inp * 1.25, 6) if provider == "anthropic" else None)


def price_of(entry: ModelEntry, table: Mapping[str, PriceOverride] | None = None) -> Price:
    """The entry's price: its own fields, else the config's `pricing:` row, else the defaults."""
    row = (table or {}).get(entry.model)
    base = (Price(row.input, row.output, row.cached_input, row.cache_write, row.batch_discount) if row is not None
            else default_price(entry.provider, entry.model_name) or Price())
    return Price(
        input=base.input if entry.input_price is None else entry.input_price,
        output=base.output if entry.output_price is None else entry.output_price,
        cached_input=base.cached_input if entry.cached_input_price is None else entry.cached_input_price,
        cache_write=base.cache_write if entry.input_price is None else None,
        batch_discount=base.batch_discount,
    )


def completion_cost(price: Price, completion: Any) -> float:
    """What a `Completion` cost at `price`: the list rate in real time, the batch rate for an answer
    from a provider batch, nothing for a batch answer already paid for by an interrupted run and
    replayed on `--resume`."""
    if getattr(completion, "prepaid", False):
        return 0.0
    rate = price.batched() if getattr(completion, "batch", None) else price
    return rate.cost(completion.input_tokens, completion.output_tokens, completion.cached_input_tokens,
                     completion.cache_write_tokens)


def estimate_tokens(messages: list[dict[str, Any]] | str) -> int:
    """A deliberately high token estimate for budget checks (about 3 characters a token, plus
    a few tokens of framing per message), used where the provider offers no local tokenizer."""
    if isinstance(messages, str):
        return math.ceil(len(messages) / 3) + 1
    return sum(math.ceil(len(str(m.get("content") or "")) / 3) + 4 for m in messages) + 3


def output_tokens_of(value: Any) -> int:
    return estimate_tokens(json.dumps(value, ensure_ascii=False, default=str))


def premium_price(tiers: Mapping[str, list[ModelEntry]], table: Mapping[str, PriceOverride] | None) -> Price:
    """The dearest model of every configured tier (by input + output price)."""
    prices = [price_of(e, table) for chain in tiers.values() for e in chain]
    return max(prices, key=lambda p: (p.input + p.output, p.output), default=Price())


def baseline_cost(premium: Price, messages: list[dict[str, Any]], output: Any,
                  attempts: list[dict[str, Any]]) -> float:
    """What one call straight to the premium model would have cost for this step: the step's
    first prompt and final output, in the tokens the provider reported when it was called (else
    an estimate), at full input price."""
    asked = [a for a in attempts if a.get("tokens_in")]
    tokens_in = asked[0]["tokens_in"] if asked else estimate_tokens(messages)
    valid = [a for a in attempts if a.get("outcome") == "valid" and a.get("tokens_out")]
    tokens_out = valid[-1]["tokens_out"] if valid else output_tokens_of(output)
    return premium.cost(tokens_in, tokens_out)
