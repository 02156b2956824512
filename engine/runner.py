"""Runs a workflow: inputs in, outputs and one record per step out; sync and async entry points.

State is `{"inputs": {...}, "steps": {id: {"output": ...}}}`; each step renders its declared
inputs from it, runs, and adds its output. Every run, step and llm call is written to the store.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.errors import EngineError, LLMStepError, StepError, UserError
from engine.inputs import validate_inputs
from engine.spec.loader import load_workflow
from engine.serving import Server, default_servers
from engine.spec.models import Step, Workflow
from engine.providers.calls import ProviderCalls, adrive, drive
from engine.steps import StepContext, StepOutcome, run_script_step
from engine.steps.decision import decision_step_calls
from engine.steps.llm import llm_step_calls
from engine.store import Store
from engine.store.opening import open_store
from engine.templating import TemplateError, evaluate_condition, render

_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)  # a forked worker must not repeat its parent's ids


def new_run_id() -> str:
    """32 random hex digits, like `uuid4().hex`, from a generator seeded once from os.urandom
    (uuid4 reads os.urandom on every call, which shows on the hot path)."""
    return f"{_ids.getrandbits(128):032x}"


@dataclass
class StepRecord:
    step_id: str
    kind: str
    status: str
    """ok | skipped | failed"""
    served_by: str | None = None
    """script | decision | llm (later also cache, lookup, script promotions)"""
    tier: str | None = None
    provider: str | None = None
    model: str | None = None
    attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    baseline_cost: float = 0.0
    latency_ms: float = 0.0
    output: Any = None
    error: str | None = None
    validation_errors: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, Any] | None = None
    """For a cache hit: kind (exact|semantic), entry_id, similarity (see engine.cache)."""
    trust: str | None = None
    """For llm steps: reference | verified | labelled | unverified (see engine.quality.trust)."""
    confidence: float | None = None


@dataclass
class RunResult:
    run_id: str
    workflow: str
    status: str
    """ok | failed"""
    outputs: dict[str, Any]
    steps: list[StepRecord]
    latency_ms: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def tokens_in(self) -> int:
        return sum(s.tokens_in for s in self.steps)

    @property
    def tokens_out(self) -> int:
        return sum(s.tokens_out for s in self.steps)

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.steps)

    @property
    def baseline_cost(self) -> float:
        """What the run would have cost with every llm step sent straight to the dearest tier."""
        return sum(s.baseline_cost for s in self.steps)

    def step(self, step_id: str) -> StepRecord:
        return next(s for s in self.steps if s.step_id == step_id)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(tokens_in=self.tokens_in, tokens_out=self.tokens_out, cost=self.cost,
                    baseline_cost=self.baseline_cost)
        return data


class _ScriptCall:
    """A script step shaped as a provider call, so the drivers decide where it runs: inline under
    `run_workflow`, on a worker thread under `arun_workflow` (user code may block; the event loop
    must not)."""

    name = "script"

    def __init__(self, ctx: StepContext, spec: Any):
        self.ctx, self.spec = ctx, spec

    def complete(self, values: dict[str, Any]) -> StepOutcome:
        return run_script_step(self.ctx, self.spec, values)


def _run_step(ctx: StepContext, step: Step, values: dict[str, Any]) -> ProviderCalls[StepOutcome]:
    if step.script is not None:
        outcome: StepOutcome = yield _ScriptCall(ctx, step.script), values  # type: ignore[misc,assignment]
        return outcome
    if step.decision is not None:
        return (yield from decision_step_calls(ctx, step.decision, values))
    assert step.llm is not None
    return (yield from llm_step_calls(ctx, step.llm, values))


def run_workflow(
    workflow: str | Path | Workflow,
    inputs: dict[str, Any] | None = None,
    *,
    config: EngineConfig | None = None,
    store: Store | None | bool = True,
    tags: dict[str, Any] | None = None,
    raise_on_error: bool = True,
    servers: list[Server] | None = None,
    tenant: str | None = None,
    inline_checks: bool | None = None,
    provider_batch: Any = None,
) -> RunResult:
    """Run a workflow. With `raise_on_error` a failed step raises its `StepError`, whose
    `.result` holds the partial `RunResult`; otherwise the result comes back with status failed.
    `store=True` opens the configured store, `False`/`None` logs nothing. `servers` may answer
    llm steps before their tiers (caches, promoted lookups; see `engine.serving`). `tenant` namespaces
    the caches: one tenant's cached answers never serve another's. Quality checks of cheap tiers
    (see `engine.quality`) run after the run, off the request path, unless `inline_checks` (the
    default for batch runs, tagged `batch`).
    `provider_batch` (an `engine.provider_batch.ProviderBatcher`) sends the calls it routes through
    provider batch APIs."""
    return drive(_run(workflow, inputs, config=config, store=store, tags=tags, raise_on_error=raise_on_error,
                      servers=servers, tenant=tenant, inline_checks=inline_checks,
                      provider_batch=provider_batch))


async def arun_workflow(
    workflow: str | Path | Workflow,
    inputs: dict[str, Any] | None = None,
    *,
    config: EngineConfig | None = None,
    store: Store | None | bool = True,
    tags: dict[str, Any] | None = None,
    raise_on_error: bool = True,
    servers: list[Server] | None = None,
    tenant: str | None = None,
    inline_checks: bool | None = None,
    provider_batch: Any = None,
) -> RunResult:
    """`run_workflow` on the caller's event loop: each provider call is awaited (`acomplete`;
    a sync-only provider runs on a worker thread), so thousands of runs overlap on one loop.
    Script and decision steps run inline (they are meant to be quick, pure functions); log rows
    go to the store's write-behind queue, which never blocks on SQLite."""
    return await adrive(_run(workflow, inputs, config=config, store=store, tags=tags,
                             raise_on_error=raise_on_error, servers=servers, tenant=tenant,
                             inline_checks=inline_checks, provider_batch=provider_batch))


def _run(
    workflow: str | Path | Workflow,
    inputs: dict[str, Any] | None,
    *,
    config: EngineConfig | None,
    store: Store | None | bool,
    tags: dict[str, Any] | None,
    raise_on_error: bool,
    servers: list[Server] | None,
    tenant: str | None,
    inline_checks: bool | None,
    provider_batch: Any,
) -> ProviderCalls[RunResult]:
    wf = load_workflow(workflow, config=config)
    config = wf.config if config is None else config.with_tiers(wf.tiers)
    values = validate_inputs(wf, inputs or {})
    db: Store | None = open_store(config.store_url()) if store is True else (store or None)
    run_id = new_run_id()
    if db is not None:
        db.start_run(run_id, wf.name, str(wf.version), str(wf.path) if wf.path else None, values,
                     {**(tags or {}), "tenant": tenant} if tenant is not None else tags)
    if servers is None:
        servers = default_servers(wf, config, db)
    state: dict[str, Any] = {"inputs": values, "steps": {}}
    records: list[StepRecord] = []
    after_run: list[Any] = []
    inline = bool(tags and "batch" in tags) if inline_checks is None else inline_checks
    started = time.perf_counter()
    failure: EngineError | None = None
    outputs: dict[str, Any] = {}
    for step in wf.steps:
        ctx = StepContext(run_id, wf, config, db, step.id, servers, tenant=tenant, inline_checks=inline,
                          after_run=after_run, provider_batch=provider_batch)
        record, error = yield from _execute(ctx, step, state)
        records.append(record)
        if db is not None:
            _record_step(db, run_id, record)
        if error is not None:
            failure = error
            break
        state["steps"][step.id] = {"output": record.output}
    if failure is None:
        try:
            outputs = render(wf.outputs, state) if wf.outputs else {s.id: state["steps"][s.id]["output"]
                                                                    for s in wf.steps[-1:]}
        except TemplateError as e:
            failure = StepError("outputs", str(e))
    result = RunResult(run_id=run_id, workflow=wf.name, status="failed" if failure else "ok",
                       outputs=outputs if failure is None else {}, steps=records,
                       latency_ms=(time.perf_counter() - started) * 1000,
                       error=str(failure) if failure else None)
    if db is not None:
        db.finish_run(run_id, status=result.status, outputs=result.outputs, error=result.error,
                      tokens_in=result.tokens_in, tokens_out=result.tokens_out, cost=result.cost,
                      latency_ms=result.latency_ms, baseline_cost=result.baseline_cost)
    if after_run:
        from engine.quality.monitor import submit

        for task in after_run:
            submit(task)
    if failure is not None and raise_on_error:
        failure.result = result  # type: ignore[attr-defined]
        raise failure
    return result


def _execute(ctx: StepContext, step: Step,
             state: dict[str, Any]) -> ProviderCalls[tuple[StepRecord, EngineError | None]]:
    record = StepRecord(step_id=step.id, kind=step.kind, status="ok")
    started = time.perf_counter()
    try:
        if step.when is not None and not evaluate_condition(step.when, state):
            record.status = "skipped"
            return record, None
        values = render(step.inputs, state)
        outcome = yield from _run_step(ctx, step, values)
    except TemplateError as e:
        record.status, record.error = "failed", f"step '{step.id}': {e}"
        return record, StepError(step.id, str(e))
    except (StepError, UserError) as e:
        record.status, record.error = "failed", str(e)
        if isinstance(e, LLMStepError):
            _fill_attempts(record, e.attempts)
        return record, e
    finally:
        record.latency_ms = (time.perf_counter() - started) * 1000
    record.output = outcome.output
    record.served_by = outcome.served_by
    record.tier, record.provider, record.model = outcome.tier, outcome.provider, outcome.model
    record.cache = outcome.cache
    record.trust, record.confidence = outcome.trust, outcome.confidence
    _fill_attempts(record, outcome.attempts)
    record.baseline_cost = outcome.baseline_cost
    return record, None


def _fill_attempts(record: StepRecord, attempts: list[dict[str, Any]]) -> None:
    attempts = [a for a in attempts if not a.get("purpose")]
    record.calls = attempts
    record.attempts = sum(1 for a in attempts if a.get("outcome") != "skipped")
    record.tokens_in = sum(a.get("tokens_in", 0) for a in attempts)
    record.tokens_out = sum(a.get("tokens_out", 0) for a in attempts)
    record.cost = sum(a.get("cost", 0.0) for a in attempts)
    record.validation_errors = [a["error"] for a in attempts if a.get("outcome") == "invalid"]


def _record_step(db: Store, run_id: str, record: StepRecord) -> None:
    db.record_step({
        "run_id": run_id, "step_id": record.step_id, "kind": record.kind, "status": record.status,
        "served_by": record.served_by, "tier": record.tier, "provider": record.provider,
        "model": record.model, "attempts": record.attempts, "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out, "cost": record.cost, "baseline_cost": record.baseline_cost,
        "latency_ms": record.latency_ms,
        "output": record.output, "error": record.error, "validation_errors": record.validation_errors,
        "trust": record.trust, "confidence": record.confidence,
    }, link_calls=bool(record.calls))

