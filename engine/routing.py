"""Fallbacks along a tier's chain: which model may be asked now, and cooldowns for those failing.

A provider error (429, 5xx, timeout, connection error, context overflow) moves an llm step to the
next model of its tier's chain (see `engine.steps.llm.ask_tiers`). This module keeps, per process,
the health of every model:

- a 429 that carries `retry-after` cools the model down for that long at once (the provider said
  when to come back; we do not ask earlier);
- `allowed_fails` consecutive failures of any other transient kind cool it down for `cooldown_s`;
- a success resets the count. A context-window overflow says nothing about the model's health
  and does not count.

A model that is cooling down is skipped without a call; the step's record says so. Config
(`engine.yaml`): `fallbacks: {cooldown_s: 30, allowed_fails: 3, max_cooldown_s: 600}`.

`CallGate` puts the cooldowns and the spend caps (`engine.budgets`) in front of every call.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pydantic import Field

from engine.budgets import Budgets, Reservation
from engine.errors import ContextWindowError, ProviderError, RateLimitError
from engine.pricing import Price, estimate_tokens, price_of
from engine.providers.base import CompletionRequest
from engine.spec.models import ModelEntry, Strict

if TYPE_CHECKING:
    from engine.config import EngineConfig


class FallbackConfig(Strict):
    cooldown_s: float = Field(30.0, ge=0, description="how long a failing model is skipped")
    allowed_fails: int = Field(3, ge=1, description="consecutive failures before a cooldown")
    max_cooldown_s: float = Field(600.0, ge=0, description="upper bound on a retry-after cooldown")


@dataclass
class _Health:
    fails: int = 0
    until: float = 0.0
    reason: str = ""


def model_key(entry: ModelEntry) -> str:
    base_url = entry.options.get("base_url")
    return f"{entry.model}@{base_url}" if base_url else entry.model


class Cooldowns:
    """Per-model health, shared by every run in the process (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._health: dict[str, _Health] = {}

    def cooling(self, entry: ModelEntry) -> str | None:
        """Why `entry` must not be asked now, or None."""
        with self._lock:
            health = self._health.get(model_key(entry))
            if health is None:
                return None
            left = health.until - self._clock()
            if left <= 0:
                return None
            return f"cooling down for {left:.1f} s more after {health.reason}"

    def failed(self, entry: ModelEntry, error: ProviderError, config: FallbackConfig) -> None:
        if isinstance(error, ContextWindowError):
            return
        with self._lock:
            health = self._health.setdefault(model_key(entry), _Health())
            health.fails += 1
            now = self._clock()
            if isinstance(error, RateLimitError) and error.retry_after is not None:
                wait = min(max(error.retry_after, 0.0), config.max_cooldown_s)
                health.until = max(health.until, now + wait)
                health.reason = f"429 retry-after {error.retry_after:g} s"
            elif health.fails >= config.allowed_fails:
                health.until = max(health.until, now + config.cooldown_s)
                health.reason = f"{health.fails} consecutive failures ({type(error).__name__})"

    def succeeded(self, entry: ModelEntry) -> None:
        with self._lock:
            health = self._health.get(model_key(entry))
            if health is not None:
                health.fails = 0

    def reset(self) -> None:
        with self._lock:
            self._health.clear()


COOLDOWNS = Cooldowns()
"""The process-wide health table."""


@dataclass
class Admission:
    """Whether a call may go ahead; if not, `reason` is cooldown or budget and `message` why."""

    reason: str | None = None
    message: str = ""
    reservation: Reservation | None = None
    price: Price = Price()

    @property
    def ok(self) -> bool:
        return self.reason is None


class CallGate:
    """What stands between an llm step and a model: its cooldown, then the spend caps."""

    def __init__(self, config: EngineConfig, store: Any, run_id: str, workflow: str,
                 cooldowns: Cooldowns | None = None):
        self.config = config
        self.cooldowns = COOLDOWNS if cooldowns is None else cooldowns
        self.budgets = None if config.budgets.empty else Budgets(config.budgets, store, run_id, workflow)

    def admit(self, tier: str, entry: ModelEntry, request: CompletionRequest, provider: Any,
              batch: bool = False) -> Admission:
        """`batch`: the call goes into a provider batch, so its worst case is held at the batch rate
        from the moment it is submitted."""
        price = price_of(entry, self.config.pricing)
        cooling = self.cooldowns.cooling(entry)
        if cooling is not None:
            return Admission("cooldown", cooling, price=price)
        if self.budgets is None or price.free:
            return Admission(price=price)
        worst = (price.batched() if batch else price).cost(prompt_tokens(request, provider), request.max_tokens)
        held = self.budgets.reserve(tier, entry, worst)
        if isinstance(held, str):
            return Admission("budget", held, price=price)
        return Admission(reservation=held, price=price)

    def settle(self, admission: Admission, cost: float) -> None:
        if self.budgets is not None and admission.reservation is not None:
            self.budgets.settle(admission.reservation, cost)

    def failed(self, entry: ModelEntry, error: ProviderError) -> None:
        self.cooldowns.failed(entry, error, self.config.fallbacks)

    def succeeded(self, entry: ModelEntry) -> None:
        self.cooldowns.succeeded(entry)


def prompt_tokens(request: CompletionRequest, provider: Any) -> int:
    """The prompt's token count: the provider's own tokenizer where it has one (and it is cheap),
    else a high estimate."""
    counter = getattr(provider, "count_tokens", None)
    if callable(counter):
        try:
            return int(counter(request))
        except Exception:  # noqa: BLE001 - an estimate will do
            pass
    return estimate_tokens(request.messages)
