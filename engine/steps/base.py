"""What every step kind receives (`StepContext`) and returns (`StepOutcome`)."""

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


@dataclass
class StepOutcome:
    output: Any
    served_by: str
    """script | decision | llm (later: cache, lookup, ...)."""
    tier: str | None = None
    provider: str | None = None
    model: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    baseline_cost: float = 0.0
    """What the step would have cost straight at the most expensive tier (llm steps)."""
    cache: dict[str, Any] | None = None
    """For a cache hit: kind (exact|semantic), entry_id, similarity."""
    trust: str | None = None
    """reference | verified | labelled | unverified (see engine.quality.trust); None: not an llm answer."""
    confidence: float | None = None
    context: dict[str, Any] | None = None
    """Long inputs (`context:`): tokens, how they were counted, truncation, chunks (engine.steps.context)."""
    items: list[dict[str, Any]] | None = None
    """for_each: one summary per item (index, status, served_by, tier, model, tokens, cost, error)."""
    errors: list[dict[str, Any]] | None = None
    """for_each with on_item_error collect/skip: the failed items (index, item, error)."""
    child_runs: list[str] = field(default_factory=list)
    """Sub-workflow steps: the child runs' ids."""
    deferred: list[dict[str, Any]] = field(default_factory=list)
    """Valid answers escalated for low confidence (compared with the reference for calibration)."""

    @property
    def validation_errors(self) -> list[str]:
        return [a["error"] for a in self.attempts if a.get("outcome") == "invalid" and a.get("error")]
