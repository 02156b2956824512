"""Runs a workflow: inputs in, outputs and one record per step out; sync and async entry points.

State is `{"inputs": {...}, "steps": {id: {"output": ...}}}`; each step renders its declared
inputs from it, runs, and adds its output. Every run, step and llm call is written to the store.

Steps start as soon as the steps they read are done (`engine.spec.graph`): independent steps run
at the same time, through a `Fanout` that `drive` runs on threads and `adrive` on the event loop.
Step records keep the workflow's order whatever order the steps finish in. A workflow whose
steps form a chain runs them in a plain loop. `for_each` (engine.steps.foreach), long inputs
(engine.steps.context) and sub-workflows (`workflow:`, a child run of its own) are per-step.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import engine.telemetry as telemetry
from engine.config import EngineConfig
from engine.errors import EngineError, LLMStepError, StepError, UserError
from engine.inputs import validate_inputs
from engine.spec.loader import load_workflow
from engine.serving import Server, default_servers
from engine.spec.models import Step, Workflow
from engine.providers.calls import Fanout, ProviderCalls, adrive, drive, gather_calls
from engine.steps import StepContext, StepOutcome, run_script_step
from engine.steps.base import StepResult
from engine.steps.context import context_step_calls
from engine.steps.decision import decision_step_calls
from engine.steps.foreach import for_each_calls
from engine.steps.llm import llm_step_calls, serve_early
from engine.store import Store
from engine.store.opening import open_store
from engine.templating import TemplateError, evaluate_condition, render

_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)  # a forked worker must not repeat its parent's ids


def new_run_id() -> str:
    """32 random hex digits, like `uuid4().hex`, from a generator seeded once from os.urandom
    (uuid4 reads os.urandom on every call, which shows on the hot path)."""
    return f"{_ids.getrandbits(128):032x}"


@dataclass(kw_only=True)
class StepRecord(StepResult):
    """One step of a run, as recorded: the step's `StepResult` (what served it, what it cost) plus
    its id, kind, status and the calls made for it."""

    step_id: str
    kind: str
    status: str
    """ok | skipped | failed"""
    attempts: int = 0
    """Calls made (a call the router skipped does not count)."""
    latency_ms: float = 0.0
    error: str | None = None
    validation_errors: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    """The calls made for the step's answer, in order (see `StepOutcome.attempts`)."""
    started: float = field(default=0.0, repr=False, compare=False)
    """`time.perf_counter()` when the step started (telemetry spans place the step by it)."""

    def to_dict(self) -> dict[str, Any]:
        """The record as plain data, its id, kind and status first."""
        data = asdict(self)
        return {k: data.pop(k) for k in _FIRST} | data


_FIRST = ("step_id", "kind", "status")
_SHARED = tuple(f.name for f in fields(StepResult) if f.name not in ("tokens_in", "tokens_out", "cost"))
"""What a record takes from its step's outcome as it is; tokens and cost come from the calls."""


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
        data["steps"] = [s.to_dict() for s in self.steps]
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


def run_step(ctx: StepContext, step: Step, values: dict[str, Any], concurrent: bool = True,
              item: int | None = None, *, early: bool = True) -> ProviderCalls[StepOutcome]:
    """One execution of a step of any kind on rendered `values`, as provider calls for `drive` or
    `adrive` (no step record, no log row: `_execute` adds those). `early=False`: `serve_early` was
    already asked (llm steps). `item`: the for_each index a sub-workflow's child run is tagged with."""
    if step.script is not None:
        outcome: StepOutcome = yield _ScriptCall(ctx, step.script), values  # type: ignore[misc,assignment]
        return outcome
    if step.decision is not None:
        return (yield from decision_step_calls(ctx, step.decision, values))
    if step.workflow is not None:
        return (yield from _sub_workflow(ctx, step, values, concurrent, item))
    assert step.llm is not None
    if step.llm.context is not None:
        return (yield from context_step_calls(ctx, step.llm, values, concurrent=concurrent))
    return (yield from llm_step_calls(ctx, step.llm, values, early=early))


def _sub_workflow(ctx: StepContext, step: Step, values: dict[str, Any], concurrent: bool,
                  item: int | None) -> ProviderCalls[StepOutcome]:
    """A `workflow:` step: the child runs as a run of its own, tagged with its parent run and step
    (and the item's index under for_each)."""
    child: Workflow = step._workflow
    tags: dict[str, Any] = {"parent_run": ctx.run_id, "parent_step": ctx.step_id}
    if item is not None:
        tags["parent_item"] = item
    result: RunResult = yield from _run(
        child, values, config=ctx.config, store=ctx.store or False,
        tags=tags, raise_on_error=False, servers=None,
        tenant=ctx.tenant, inline_checks=ctx.inline_checks, provider_batch=ctx.provider_batch, parallel=concurrent)
    if not result.ok:
        raise StepError(step.id, f"sub-workflow '{child.name}' (run {result.run_id}) failed: {result.error}")
    return StepOutcome(output=result.outputs, served_by="workflow", tokens_in=result.tokens_in,
                       tokens_out=result.tokens_out, cost=result.cost, baseline_cost=result.baseline_cost,
                       child_runs=[result.run_id])


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
    parallel: bool = True,
) -> RunResult:
    """Run a workflow. With `raise_on_error` a failed step raises its `StepError`, whose
    `.result` holds the partial `RunResult`; otherwise the result comes back with status failed.
    `store=True` opens the configured store, `False`/`None` logs nothing. `servers` may answer
    llm steps before their tiers (caches, promoted lookups; see `engine.serving`). `tenant` namespaces
    the caches: one tenant's cached answers never serve another's. Quality checks of cheap tiers
    (see `engine.quality`) run after the run, off the request path, unless `inline_checks` (the
    default for batch runs, tagged `batch`).
    `provider_batch` (an `engine.provider_batch.ProviderBatcher`) sends the calls it routes through
    provider batch APIs.
    `parallel`: steps that do not read each other run at the same time (on threads here), and
    `for_each` items up to their `concurrency`; False runs everything one at a time. Results and
    the log are the same either way (step records in the workflow's order)."""
    return drive(_run(workflow, inputs, config=config, store=store, tags=tags, raise_on_error=raise_on_error,
                      servers=servers, tenant=tenant, inline_checks=inline_checks,
                      provider_batch=provider_batch, parallel=parallel))


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
    parallel: bool = True,
) -> RunResult:
    """`run_workflow` on the caller's event loop: each provider call is awaited (`acomplete`;
    a sync-only provider runs on a worker thread), so thousands of runs overlap on one loop.
    Script and decision steps run inline (they are meant to be quick, pure functions); log rows
    go to the store's write-behind queue, which never blocks on SQLite."""
    return await adrive(_run(workflow, inputs, config=config, store=store, tags=tags,
                             raise_on_error=raise_on_error, servers=servers, tenant=tenant,
                             inline_checks=inline_checks, provider_batch=provider_batch, parallel=parallel))


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
    parallel: bool = True,
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
    # A provider-batch run parks its item's thread on each routed call: its steps run one at a time.
    concurrent = parallel and provider_batch is None
    chain, after = _schedule(wf)
    contexts = [StepContext(run_id, wf, config, db, step.id, servers, tenant=tenant, inline_checks=inline,
                            after_run=after_run, provider_batch=provider_batch) for step in wf.steps]
    if chain:  # each step reads the one before: no fan-out machinery on the hot path
        for i, step in enumerate(wf.steps):
            record, error = yield from _execute(contexts[i], step, state, concurrent)
            records.append(record)
            if db is not None:
                _record_step(db, run_id, record)
            if error is not None:
                failure = error
                break
    else:
        def step_calls(i: int) -> ProviderCalls[tuple[StepRecord, EngineError | None]]:
            return _execute(contexts[i], wf.steps[i], state, concurrent)

        def failed(i: int, result: tuple[StepRecord, EngineError | None]) -> bool:
            return result[1] is not None

        done = yield from gather_calls(
            Fanout([(lambda i=i: step_calls(i)) for i in range(len(wf.steps))], after, stop=failed),
            concurrent=concurrent)
        for result in done:  # the workflow's order, whatever order the steps finished in
            if result is None:
                continue
            record, error = result
            records.append(record)
            if db is not None:
                _record_step(db, run_id, record)
            if error is not None and failure is None:
                failure = error
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
    if telemetry.ACTIVE:  # tracing or metrics on (engine.telemetry): the one check when off
        telemetry.observe_run(result, started)
    if after_run:
        from engine.quality.monitor import submit

        for task in after_run:
            submit(task)
    if failure is not None and raise_on_error:
        failure.result = result  # type: ignore[attr-defined]
        raise failure
    return result


def _schedule(wf: Workflow) -> tuple[bool, list[set[int]]]:
    """(whether the steps form a chain, each in the workflow's order reading the one before; the
    indices each step waits for). Computed once per loaded workflow."""
    cached = wf.__pydantic_private__.get("_schedule")  # type: ignore[union-attr]
    if cached is None:
        from engine.spec.graph import dependencies

        deps = dependencies(wf.steps)
        index = {s.id: i for i, s in enumerate(wf.steps)}
        after = [{index[d] for d in deps[s.id]} for s in wf.steps]
        chain = (all(max(after[i], default=-1) < i for i in range(len(wf.steps)))
                 and all(i - 1 in after[i] for i in range(1, len(wf.steps))))
        cached = wf._schedule = (chain, after)
    return cached  # type: ignore[no-any-return]


def _execute(ctx: StepContext, step: Step, state: dict[str, Any],
             concurrent: bool = True) -> ProviderCalls[tuple[StepRecord, EngineError | None]]:
    kind = step.kind
    started = time.perf_counter()
    record = StepRecord(step_id=step.id, kind=kind, status="ok", started=started)
    try:
        if step.when is not None and not evaluate_condition(step.when, state):
            record.status = "skipped"
            state["steps"][step.id] = {"output": None}
            return record, None
        if step.for_each is not None:
            outcome = yield from for_each_calls(ctx, step, state, lambda values, i: run_step(ctx, step, values, concurrent, i),
                                                concurrent=concurrent)
        else:
            values = render(step.inputs, state)
            llm = step.llm
            tried = llm is not None and llm.context is None  # a promoted lookup, before any generator
            early = serve_early(ctx, llm, values) if llm is not None and tried else None
            outcome = early if early is not None else (
                yield from run_step(ctx, step, values, concurrent, early=not tried))
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
    for name in _SHARED:
        setattr(record, name, getattr(outcome, name))
    _fill_attempts(record, outcome.attempts)
    if kind == "workflow":  # the child runs' calls are theirs; their totals count here
        record.tokens_in, record.tokens_out, record.cost = outcome.tokens_in, outcome.tokens_out, outcome.cost
    entry: dict[str, Any] = {"output": outcome.output}
    if outcome.errors is not None:
        entry["errors"] = outcome.errors
    state["steps"][step.id] = entry
    return record, None


def _fill_attempts(record: StepRecord, attempts: list[dict[str, Any]]) -> None:
    if not attempts:  # served without a call (a lookup, a script, a cache hit): the defaults hold
        return
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
        "trust": record.trust, "confidence": record.confidence, "routed": record.routed,
    }, link_calls=bool(record.calls))

