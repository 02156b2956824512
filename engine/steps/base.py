"""What every step kind receives (`StepContext`) and returns (`StepOutcome`), and the fields the
run's record of a step shares with it (`StepResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.config import EngineConfig
from engine.spec.models import Workflow


@dataclass
class StepContext:
    run_id: str
    workflow: Workflow
    config: EngineConfig
    store: Any  # engine.store.Store | None
    step_id: str
    servers: list[Any] = field(default_factory=list)
    """`engine.serving.Server`s consulted before an llm step asks its tiers."""
    tenant: str | None = None
    """The run's tenant key: caches never serve one tenant's answers to another."""
    inline_checks: bool = False
    """Quality checks run inline (batch) instead of after the run, off the request path."""
    after_run: list[Any] = field(default_factory=list)
    """Callables the runner hands to the background worker once the run is recorded."""
    provider_batch: Any = None
    """`engine.provider_batch.ProviderBatcher` in a `--provider-batch` run: which calls wait for a
    provider batch instead of going out in real time."""


@dataclass(kw_only=True)
class StepResult:
    """What answered a step and what it cost: the fields a step kind's `StepOutcome` and the run's
    record of the step (`engine.runner.StepRecord`) share, declared once here."""

    output: Any = None
    served_by: str | None = None
    """script | decision | llm | workflow | cache | lookup | classifier | label | ... (for_each: the
    items' one value, or mixed)."""
    tier: str | None = None
    provider: str | None = None
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    baseline_cost: float = 0.0
    """What the step would have cost straight at the most expensive tier (llm steps)."""
    cache: dict[str, Any] | None = None
    """For a cache hit: kind (exact|semantic), entry_id, similarity (see engine.cache)."""
    trust: str | None = None
    """reference | verified | labelled | unverified (see engine.quality.trust); None: not an llm answer."""
    confidence: float | None = None
    routed: str | None = None
    """What a learned router decided before the call: cheap (the cheapest tier answers) or up (straight
    to the next tier, no cheap call); None: no router (see engine.quality.router)."""
    context: dict[str, Any] | None = None
    """Long inputs (`context:`): tokens, how they were counted, truncation, chunks (engine.steps.context)."""
    items: list[dict[str, Any]] | None = None
    """for_each: one summary per item (index, status, served_by, tier, model, tokens, cost, error)."""
    errors: list[dict[str, Any]] | None = None
    """for_each with on_item_error collect/skip: the failed items (index, item, error)."""
    child_runs: list[str] = field(default_factory=list)
    """Sub-workflow steps: the child runs' ids (tagged parent_run/parent_step in the log)."""


@dataclass(kw_only=True)
class StepOutcome(StepResult):
    """What a step kind returns: an answer (required) and every call made for it."""

    output: Any
    served_by: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """Every call made for the step, in order (the runner's record counts and sums them)."""
    deferred: list[dict[str, Any]] = field(default_factory=list)
    """Valid answers escalated for low confidence (compared with the reference for calibration)."""

    @property
    def validation_errors(self) -> list[str]:
        return [a["error"] for a in self.attempts if a.get("outcome") == "invalid" and a.get("error")]
