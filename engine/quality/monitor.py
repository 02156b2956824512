"""The cheap-tier quality monitor: which tiers a step may use now, how often to check them, and
what a check's verdict changes.

States per (workflow, step, tier), kept in the store so every process sees them:
    active      used; a share `sample` of its valid answers is re-asked of the reference
    escalated   the Wilson lower bound of its disagreement passed `max_disagreement`: the step
                escalates straight past it (logged in quality_events)
    probation   after the cool-off (`cooloff` seconds or `cooloff_runs` runs of the step, doubled
                for each escalation since the tier last passed probation) or `engine quality
                reset`: tried again on a share `probation_sample` of requests, each answer
                checked inline before it is served (the rest skip the tier); back to active after
                `probation_checks` checks without passing the bound, else escalated again
Only checks of answers that were served count toward disagreement (answers escalated for low
confidence are compared too, for calibration, but were never returned).

Interactive runs check off the request path, concurrently and from a bounded queue
(`engine.quality.checkqueue`; `drain()` waits for it, as the CLI, `Engine.close()` and
interpreter exit do); batch runs check inline, and a disagreeing inline check returns the
reference's answer. An escalation takes effect at once in the process that decided it (its state
cache is dropped) and within `_STATE_TTL` seconds in every other process.

Cache entries a monitored tier wrote are `unverified` until a check settles them; they are served
only while `serves_unverified` holds: the tier is not escalated past, and was not escalated past
since the entry was written (an escalated tier's entries never return on probation unchecked).
"""

from __future__ import annotations

import atexit
import random
import threading
import time
from datetime import datetime, timezone
from typing import Any

from engine.quality import checkqueue
from engine.quality.checkqueue import CheckJob
from engine.quality.confidence import calibrate
from engine.quality.spec import AUTO, QualityPolicy
from engine.quality.stats import wilson_bounds
from engine.store import quality as quality_store
from engine.store.quality import ACTIVE, ESCALATED, PROBATION

_rng = random.Random()
_rng_lock = threading.Lock()
_STATE_TTL = 1.0  # seconds a tier state read from the store is reused


def seed(value: int) -> None:
    """Seed the sampler (benchmarks and tests)."""
    with _rng_lock:
        _rng.seed(value)


def sampled(rate: float) -> bool:
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    with _rng_lock:
        return _rng.random() < rate


class Monitor:
    """Tier states and confidence thresholds of one store, cached briefly in memory."""

    def __init__(self, store: Any):
        self.store = store
        self._states: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}
        self._thresholds: dict[tuple[str, str, str], tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._moves = 0
        """State moves made by this process: a read that raced one is not cached."""

    # --- states ---------------------------------------------------------------------------------

    def state(self, workflow: str, step_id: str, tier: str, policy: QualityPolicy) -> dict[str, Any]:
        key = (workflow, step_id, tier)
        now = time.monotonic()
        with self._lock:
            cached = self._states.get(key)
        if cached is not None and now - cached[0] < _STATE_TTL:
            row = cached[1]
        else:
            with self._lock:
                moves = self._moves
            row = quality_store.get_state(self.store, workflow, step_id, tier)
            with self._lock:
                if self._moves == moves:  # a move in between: this read may be stale, don't keep it
                    self._states[key] = (now, row)
        if row["state"] == ESCALATED and self._cooled_off(row, policy):
            self._move(workflow, step_id, tier, PROBATION, "cool-off over: tried again under heavier sampling")
            return self.state(workflow, step_id, tier, policy)
        return row

    def _cooled_off(self, row: dict[str, Any], policy: QualityPolicy) -> bool:
        """The cool-off is over: `cooloff` seconds or `cooloff_runs` runs, doubled for every
        escalation since the tier last passed probation (a tier that keeps failing is tried less
        and less often)."""
        since = row.get("since")
        if not since:
            return True
        factor = 2 ** min(max(int(row.get("strikes") or 1), 1) - 1, 16)
        elapsed = (datetime.now(timezone.utc) - datetime.fromisoformat(since)).total_seconds()
        if elapsed >= policy.cooloff * factor:
            return True
        runs = quality_store.step_runs_since(self.store, row["workflow"], row["step_id"], since)
        return runs >= policy.cooloff_runs * factor

    def _move(self, workflow: str, step_id: str, tier: str, state: str, reason: str) -> None:
        quality_store.set_state(self.store, workflow, step_id, tier, state, reason)
        with self._lock:
            self._moves += 1
            self._states.pop((workflow, step_id, tier), None)
            self._thresholds.pop((workflow, step_id, tier), None)

    def usable_tiers(self, workflow: str, step_id: str, policy: QualityPolicy) -> tuple[list[str], list[str]]:
        """(tiers to ask in order, monitored tiers skipped because they are escalated)."""
        use, skipped = [], []
        for tier in policy.chain:
            if policy.monitored(tier) and self.state(workflow, step_id, tier, policy)["state"] == ESCALATED:
                skipped.append(tier)
            else:
                use.append(tier)
        return use, skipped

    def serves_unverified(self, workflow: str, step_id: str, tier: str, policy: QualityPolicy,
                          written: float) -> bool:
        """Whether an unverified answer `tier` wrote at `written` (epoch seconds) may still be served:
        not while the tier is escalated past, and never after an escalation that came later."""
        if not policy.monitored(tier):
            return True
        row = self.state(workflow, step_id, tier, policy)
        if row["state"] == ESCALATED:
            return False
        escalated = row.get("escalated_at")
        return not escalated or datetime.fromisoformat(escalated).timestamp() < written

    def sample_rate(self, workflow: str, step_id: str, tier: str, policy: QualityPolicy) -> float:
        if not policy.monitored(tier):
            return 0.0
        state = self.state(workflow, step_id, tier, policy)["state"]
        return max(policy.sample, policy.probation_sample) if state == PROBATION else policy.sample

    # --- verdicts -------------------------------------------------------------------------------

    def record(self, policy: QualityPolicy, *, workflow: str, step_id: str, tier: str, **check: Any) -> int:
        """Store a check, then move the tier if its served answers now disagree too often; returns
        the check's id."""
        check_id = quality_store.record_check(self.store, workflow=workflow, step_id=step_id, tier=tier, **check)
        with self._lock:
            self._thresholds.pop((workflow, step_id, tier), None)
        if check["status"] == "skipped" or not check.get("served", True):
            return check_id
        row = quality_store.get_state(self.store, workflow, step_id, tier)
        n, disagree = quality_store.served_counts(self.store, workflow, step_id, tier, row["epoch_check_id"] or 0)
        lower, _ = wilson_bounds(disagree, n, policy.confidence)
        if row["state"] != ESCALATED and n >= policy.min_checks and lower > policy.max_disagreement:
            self._move(workflow, step_id, tier, ESCALATED,
                       f"disagreed with the reference {disagree}/{n} ({disagree / n:.1%}; Wilson lower bound "
                       f"{lower:.1%} > max_disagreement {policy.max_disagreement:.1%})")
        elif row["state"] == PROBATION and n >= policy.probation_checks:
            self._move(workflow, step_id, tier, ACTIVE,
                       f"probation passed: {disagree}/{n} disagreements (Wilson lower bound {lower:.1%})")
        return check_id

    def reset(self, workflow: str | None = None, step_id: str | None = None, tier: str | None = None) -> int:
        """Put escalated tiers (matching the filter) on probation now."""
        moved = 0
        for row in quality_store.all_states(self.store):
            if (workflow and row["workflow"] != workflow) or (step_id and row["step_id"] != step_id) or (
                    tier and row["tier"] != tier) or row["state"] == PROBATION:
                continue
            self._move(row["workflow"], row["step_id"], row["tier"], PROBATION, "engine quality reset")
            moved += 1
        return moved

    # --- confidence -----------------------------------------------------------------------------

    def threshold(self, workflow: str, step_id: str, tier: str, policy: QualityPolicy) -> float:
        """The confidence a cheap answer needs to be served. A fixed `min_confidence`, or with
        `auto` the lowest threshold at which reference-checked answers agreed at least
        `target_agreement` (above 1, i.e. always escalate, until `calibration_min` checks exist)."""
        if policy.min_confidence is None:
            return 0.0
        if policy.min_confidence != AUTO:
            return float(policy.min_confidence)
        key = (workflow, step_id, tier)
        with self._lock:
            cached = self._thresholds.get(key)
        if cached is not None:
            return cached[1]
        pairs = [(c["confidence"], c["status"] == "agree")
                 for c in quality_store.checks(self.store, workflow, step_id, tier, limit=2000)
                 if c["status"] != "skipped" and c["confidence"] is not None]
        value = calibrate(pairs, policy.target_agreement, minimum=policy.calibration_min)
        with self._lock:
            self._thresholds[key] = (len(pairs), value)
        return value


_monitors: dict[int, Monitor] = {}
_monitors_lock = threading.Lock()


def monitor_for(store: Any) -> Monitor:
    with _monitors_lock:
        monitor = _monitors.get(id(store))
        if monitor is None or monitor.store is not store:
            monitor = _monitors[id(store)] = Monitor(store)
        return monitor


# --- background checks ----------------------------------------------------------------------------

def submit(job: CheckJob) -> bool:
    """Queue a check off the request path (`engine.quality.checkqueue`); False when it was dropped."""
    return checkqueue.submit(job)


def drain(timeout: float | None = 120.0) -> int:
    """Wait for queued background checks; returns how many were still pending."""
    return checkqueue.drain(timeout)


atexit.register(drain, 60.0)
