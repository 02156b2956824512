"""`for_each:` on any step: the step runs once per item of a list, up to `concurrency` at once.

    - id: lines
      for_each: "{{ steps.split.output.lines }}"   # a template that yields a list
      as: line                                   # the item's name in the step's inputs (default: item)
      concurrency: 8                             # items at once (default 4)
      on_item_error: collect                     # fail (default) | skip | collect
      inputs: {text: "{{ line }}"}
      llm: {...}

Each item is the step run on its own inputs: its own llm call (so caches, promoted lookups,
quality checks and cost attribution work per item), its own script call, its own sub-workflow
run. The output is the list of the items' outputs, in the items' order whatever order they finish
in. `on_item_error`: `fail` fails the step with the first failing item's error (in item order;
items not yet started are not started); `skip` leaves failed items out of the output; `collect`
keeps a null in their place. With skip and collect, `steps.<id>.errors` lists `{index, item, error}`.
"""

from __future__ import annotations

from typing import Any, Callable

from engine.errors import EngineError, StepError
from engine.providers.calls import Fanout, IndexedTasks, ProviderCalls, gather_calls
from engine.spec.models import Step
from engine.steps.base import StepContext, StepOutcome
from engine.steps.item_errors import item_failure, plain
from engine.steps.script_items import script_items_calls
from engine.templating import TemplateError, render

DEFAULT_CONCURRENCY = 4
RunOne = Callable[[dict[str, Any], int], ProviderCalls[StepOutcome]]
"""(the item's rendered inputs, its index) -> the step's computation for it."""


def for_each_calls(ctx: StepContext, step: Step, state: dict[str, Any], run_one: RunOne, *,
                   concurrent: bool = True) -> ProviderCalls[StepOutcome]:
    assert step.for_each is not None
    try:
        items = render(step.for_each, state)
    except TemplateError as e:
        raise StepError(step.id, f"for_each: {e}") from e
    if isinstance(items, tuple):
        items = list(items)
    if not isinstance(items, list):
        raise StepError(step.id, f"for_each must yield a list, got {type(items).__name__}")
    mode = step.on_item_error or "fail"
    limit = step.concurrency or DEFAULT_CONCURRENCY
    if step.script is not None:  # a quick pure function: items in spans (same results, errors, records)
        return (yield from script_items_calls(step, state, items, mode, limit, concurrent=concurrent))
    name = step.item_name

    def item_calls(index: int, item: Any) -> ProviderCalls[tuple[StepOutcome | None, EngineError | None]]:
        try:
            values = render(step.inputs, {**state, name: item})
        except TemplateError as e:
            return None, StepError(step.id, str(e))
        try:
            return (yield from run_one(values, index)), None
        except EngineError as e:
            return None, e

    tasks = IndexedTasks(lambda i: item_calls(i, items[i]), len(items))
    results: list[tuple[StepOutcome | None, EngineError | None] | None] = yield from gather_calls(
        Fanout(tasks, limit=limit,
               stop=(lambda i, r: r[1] is not None) if mode == "fail" else None),
        concurrent=concurrent)
    outputs: list[Any] = []
    summaries: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    done: list[StepOutcome] = []
    child_runs: list[str] = []
    for index, result in enumerate(results):
        if result is None:  # never started: an earlier item failed
            continue
        outcome, error = result
        if error is not None:
            if mode == "fail":
                raise item_failure(step, index, error)
            errors.append({"index": index, "item": items[index], "error": plain(error, step.id)})
            summaries.append({"index": index, "status": "failed", "error": plain(error, step.id)})
            attempts += getattr(error, "attempts", None) or []
            if mode == "collect":
                outputs.append(None)
            continue
        assert outcome is not None
        done.append(outcome)
        outputs.append(outcome.output)
        attempts += outcome.attempts
        child_runs += outcome.child_runs
        own = [a for a in outcome.attempts if not a.get("purpose")] if outcome.attempts else None
        summaries.append({"index": index, "status": "ok", "served_by": outcome.served_by, "tier": outcome.tier,
                          "model": outcome.model,
                          "tokens_in": own and sum(a.get("tokens_in", 0) for a in own) or outcome.tokens_in,
                          "tokens_out": own and sum(a.get("tokens_out", 0) for a in own) or outcome.tokens_out,
                          "cost": own and sum(a.get("cost", 0.0) for a in own) or outcome.cost})
    confidences = [o.confidence for o in done if o.confidence is not None]
    return StepOutcome(
        output=outputs, served_by=_same([o.served_by for o in done]) or ("for_each" if not done else "mixed"),
        tier=_same([o.tier for o in done]), provider=_same([o.provider for o in done]),
        model=_same([o.model for o in done]), attempts=attempts,
        tokens_in=sum(s.get("tokens_in", 0) for s in summaries), tokens_out=sum(s.get("tokens_out", 0) for s in summaries),
        cost=sum(s.get("cost", 0.0) for s in summaries), baseline_cost=sum(o.baseline_cost for o in done),
        trust=_same([o.trust for o in done]), confidence=min(confidences) if confidences else None,
        items=summaries, errors=errors if mode != "fail" else None, child_runs=child_runs)


def _same(values: list[Any]) -> Any:
    return values[0] if values and all(v == values[0] for v in values) else None
