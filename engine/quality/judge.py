"""`compare: {judge: TIER}`: a tier decides whether two answers mean the same. Its calls are
logged with purpose `judge` (real spend, reported with the quality checks)."""

from __future__ import annotations

import json
import time
from typing import Any

from engine.errors import AuthenticationError, ProviderError
from engine.providers.base import CompletionRequest
from engine.providers.registry import get_provider
from engine.steps.base import StepContext
from engine.steps.asking import cost_of, log_call


def ask_judge(ctx: StepContext, tier: str, messages: list[dict[str, str]], schema: dict[str, Any],
              hashes: dict[str, str], values: dict[str, Any]) -> Any:
    """The judge's validated JSON answer; None when no model of the tier could answer."""
    for entry in ctx.config.chain(tier):
        started = time.perf_counter()
        try:
            completion = get_provider(entry.provider).complete(CompletionRequest(
                model=entry.model_name, messages=messages, max_tokens=16, schema=schema, options=entry.options))
        except AuthenticationError:
            return None
        except ProviderError:
            continue
        try:
            value = json.loads(completion.text)
        except ValueError:
            value = None
        attempt = {"tier": tier, "provider": entry.provider, "model": entry.model_name, "attempt": 1,
                   "tokens_in": completion.input_tokens, "tokens_out": completion.output_tokens,
                   "cost": cost_of(entry, completion, ctx.config.pricing),
                   "latency_ms": (time.perf_counter() - started) * 1000, "finish_reason": completion.finish_reason,
                   "outcome": "valid" if isinstance(value, dict) else "invalid", "raw_output": completion.text,
                   "purpose": "judge"}
        log_call(ctx, attempt, hashes, values, value)
        return value
    return None
