"""Spend caps in USD: per run, per workflow per day, per model and per tier per day.

Checked before every paid call with its worst case (prompt tokens + the step's `max_tokens`
at the model's prices) and counted after with the real usage, so re-asks, fallbacks and
escalations all count. Spending is read from the store (`llm_calls.cost`; days are UTC days) at
most every `refresh_s` seconds per cap, and this process's calls are added as they finish in
between (so other processes sharing the store are seen within `refresh_s`); with no store, an
in-process ledger counts. Calls in flight hold a reservation of their worst case, so concurrent
runs in a process cannot overshoot a cap together.

A model whose worst case costs $0 (the local tier) is never blocked.

Config (`engine.yaml`):

    budgets:
      run: 0.50                  # USD per run
      workflow_day: 20           # USD per workflow per UTC day (each workflow)
      workflows: {triage: 5}     # per-workflow daily caps, overriding workflow_day
      model_day: {"openai:gpt-4o": 10}
      tier_day: {premium: 15}
      refresh_s: 5               # how stale another process's spending may be
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from engine import clock
from engine.spec.models import ModelEntry, Strict
from engine.store import reports


class BudgetConfig(Strict):
    run: float | None = Field(None, ge=0, description="USD per run")
    workflow_day: float | None = Field(None, ge=0, description="USD per workflow per UTC day")
    workflows: dict[str, float] = Field(default_factory=dict, description="workflow -> USD per UTC day")
    model_day: dict[str, float] = Field(default_factory=dict, description="provider:model -> USD per UTC day")
    tier_day: dict[str, float] = Field(default_factory=dict, description="tier -> USD per UTC day")
    refresh_s: float = Field(5.0, ge=0, description="re-read spending from the store at most this often")

    @property
    def empty(self) -> bool:
        return (self.run is None and self.workflow_day is None and not self.workflows
                and not self.model_day and not self.tier_day)


@dataclass(frozen=True)
class Cap:
    name: str
    """run | workflow_day | model_day | tier_day"""
    scope: tuple[str, ...]
    limit: float

    def describe(self) -> str:
        what = {"run": "per run", "workflow_day": f"workflow '{self.scope[-1]}' per day",
                "model_day": f"model '{self.scope[-1]}' per day",
                "tier_day": f"tier '{self.scope[-1]}' per day"}[self.name]
        return f"budget {self.name} ({what}) ${self.limit:g}"


@dataclass
class Reservation:
    caps: list[Cap]
    amount: float
    settled: bool = False


@dataclass
class _Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: dict[tuple[str, ...], float] = field(default_factory=lambda: defaultdict(float))
    memory: dict[tuple[str, ...], float] = field(default_factory=lambda: defaultdict(float))
    read: dict[tuple[str, ...], list[float]] = field(default_factory=dict)
    """(store, *scope) -> [spent as last read plus this process's calls since, when read]"""


_LEDGER = _Ledger()


class Budgets:
    """The caps that apply to one run, checked against one store (or the in-process ledger)."""

    def __init__(self, config: BudgetConfig, store: Any, run_id: str, workflow: str):
        self.config, self.store, self.run_id, self.workflow = config, store, run_id, workflow

    def caps(self, tier: str, entry: ModelEntry) -> list[Cap]:
        c, day = self.config, clock.today()
        caps = []
        if c.run is not None:
            caps.append(Cap("run", ("run", self.run_id), c.run))
        wf_cap = c.workflows.get(self.workflow, c.workflow_day)
        if wf_cap is not None:
            caps.append(Cap("workflow_day", ("workflow", day, self.workflow), wf_cap))
        if entry.model in c.model_day:
            caps.append(Cap("model_day", ("model", day, entry.model), c.model_day[entry.model]))
        if tier in c.tier_day:
            caps.append(Cap("tier_day", ("tier", day, tier), c.tier_day[tier]))
        return caps

    def spent(self, cap: Cap) -> float:
        """Spending against `cap` (call with the ledger lock held)."""
        if self.store is None:
            return _LEDGER.memory[cap.scope]
        key = (str(getattr(self.store, "path", id(self.store))), *cap.scope)
        cached = _LEDGER.read.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self.config.refresh_s:
            return cached[0]
        # A run never read before has nothing of its own waiting in the write-behind queue (its
        # first call is admitted here first), so its first read need not flush the log.
        value = self._read(cap, flush=not (cap.scope[0] == "run" and cached is None))
        if len(_LEDGER.read) > 10_000:  # forget caps not read lately (finished runs, past days)
            for stale in [k for k, (_, at) in _LEDGER.read.items() if now - at >= self.config.refresh_s]:
                del _LEDGER.read[stale]
        _LEDGER.read[key] = [value, now]
        return value

    def _read(self, cap: Cap, flush: bool = True) -> float:
        kind = cap.scope[0]
        if kind == "run":
            return reports.run_spend(self.store, cap.scope[1], flush=flush)
        day = cap.scope[1]
        if kind == "workflow":
            return reports.day_spend(self.store, day, workflow=cap.scope[2], flush=flush)
        if kind == "model":
            provider, model = cap.scope[2].split(":", 1)
            return reports.day_spend(self.store, day, provider=provider, model=model, flush=flush)
        return reports.day_spend(self.store, day, tier=cap.scope[2], flush=flush)

    def reserve(self, tier: str, entry: ModelEntry, worst_case: float) -> Reservation | str:
        """Hold `worst_case` against every cap, or say which cap it would cross."""
        if worst_case <= 0:
            return Reservation([], 0.0)
        caps = self.caps(tier, entry)
        with _LEDGER.lock:
            for cap in caps:
                used = self.spent(cap) + _LEDGER.pending[cap.scope]
                if used + worst_case > cap.limit + 1e-12:
                    return (f"{cap.describe()} would be crossed: ${used:.6f} spent, "
                            f"worst case of this call ${worst_case:.6f}")
            for cap in caps:
                _LEDGER.pending[cap.scope] += worst_case
        return Reservation(caps, worst_case)

    def settle(self, reservation: Reservation, actual_cost: float) -> None:
        """Release the hold; the store already holds the real cost (or the ledger gets it)."""
        if reservation.settled or not reservation.caps:
            return
        reservation.settled = True
        with _LEDGER.lock:
            for cap in reservation.caps:
                _LEDGER.pending[cap.scope] -= reservation.amount
                if self.store is None:
                    _LEDGER.memory[cap.scope] += actual_cost
                else:
                    cached = _LEDGER.read.get((str(getattr(self.store, "path", id(self.store))), *cap.scope))
                    if cached is not None:
                        cached[0] += actual_cost


def reset_ledger() -> None:
    """Forget in-process spending and holds (tests)."""
    with _LEDGER.lock:
        _LEDGER.pending.clear()
        _LEDGER.memory.clear()
        _LEDGER.read.clear()
