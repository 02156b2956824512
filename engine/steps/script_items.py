"""`for_each` over a script step: the items run in spans of consecutive items, not one by one.

A script is a quick, pure function, so the per-item machinery of the general path (a computation
per item, a provider call per item, a record object per item) would cost many times the call
itself. Here the callable, its output checks and the step's input template are looked up once
(`ScriptRunner`, `item_inputs`), and each task of the fan-out runs a span of consecutive items
one after the other. Spans are claimed in item order, at most `concurrency` at once, and hold at
most `SPAN` items, and at least `concurrency * 4` spans are made when there are enough items,
so a script that blocks still has its items overlap.

Results, errors and item summaries are those of the general path (`engine.steps.foreach`): outputs
in item order; with `on_item_error: fail` the first failing item in item order fails the step
(every item before it runs; no item after a failure seen is started).
"""

from __future__ import annotations

from typing import Any, Callable

from engine.errors import StepError
from engine.providers.calls import Fanout, IndexedTasks, ProviderCalls, gather_calls
from engine.spec.models import Step
from engine.steps.item_errors import item_failure, plain
from engine.steps.base import StepOutcome
from engine.steps.script import ScriptRunner
from engine.templating import TemplateError, plain_name, render

SPAN = 256
"""The most items one task runs (one lock round trip and one record per span, not per item)."""

_Span = tuple[int, list[Any], list[tuple[int, StepError]]]
"""(first index, the outputs of the items run (None for a failed one), the failed (index, error))."""


def item_inputs(step: Step, state: dict[str, Any]) -> Callable[[Any], dict[str, Any]]:
    """item -> the step's rendered inputs for it. Inputs that are each the item itself
    (``{{ line }}``) or a constant are built without the template engine, with the values render
    would give (the item, the same object; the constant)."""
    name = step.item_name
    inputs = step.inputs
    parts: list[tuple[str, bool, Any]] = []
    for key, source in inputs.items():
        if plain_name(source) == name:
            parts.append((key, True, None))
        elif isinstance(source, (int, float, type(None))) or (
                isinstance(source, str) and "{{" not in source and "{%" not in source):
            parts.append((key, False, source))
        else:
            return lambda item: render(inputs, {**state, name: item})  # type: ignore[no-any-return]
    if len(parts) == 1 and parts[0][1]:
        only = parts[0][0]
        return lambda item: {only: item}
    return lambda item: {key: item if is_item else value for key, is_item, value in parts}


class _ScriptSpans:
    """Runs spans of items: shaped as a provider (`complete`), so the drivers decide where it runs
    (inline under `run_workflow`, on a worker thread under `arun_workflow`)."""

    name = "script"

    def __init__(self, step: Step, runner: ScriptRunner, inputs: Callable[[Any], dict[str, Any]],
                 items: list[Any], stop_on_failure: bool):
        self.step_id, self.runner, self.inputs, self.items = step.id, runner, inputs, items
        self.stop_on_failure = stop_on_failure
        self.first_failed = len(items)
        """The lowest failing index seen (`fail`): no item after it starts. Spans update it without
        a lock: a lost update only lets a span run items it could have skipped (every value it
        takes is a failing index, so every item before the first failure still runs)."""

    def complete(self, span: tuple[int, int]) -> _Span:
        lo, hi = span
        runner, inputs, items = self.runner, self.inputs, self.items
        outputs: list[Any] = []
        failed: list[tuple[int, StepError]] = []
        for i in range(lo, hi):
            if i > self.first_failed:
                break
            try:
                values = inputs(items[i])
            except TemplateError as e:
                error = StepError(self.step_id, str(e))
            else:
                try:
                    outputs.append(runner(values))
                    continue
                except StepError as e:
                    error = e
            outputs.append(None)
            failed.append((i, error))
            if self.stop_on_failure:
                if i < self.first_failed:
                    self.first_failed = i
                break
        return lo, outputs, failed


def script_items_calls(step: Step, state: dict[str, Any], items: list[Any], mode: str, limit: int, *,
                       concurrent: bool = True) -> ProviderCalls[StepOutcome]:
    assert step.script is not None
    n = len(items)
    size = max(1, min(SPAN, n // (limit * 4)))
    spans = _ScriptSpans(step, ScriptRunner(step.id, step.script), item_inputs(step, state), items, mode == "fail")

    def span_calls(k: int) -> ProviderCalls[_Span]:
        result: _Span = yield spans, (k * size, min(n, (k + 1) * size))  # type: ignore[misc,assignment]
        return result

    results: list[_Span | None] = yield from gather_calls(
        Fanout(IndexedTasks(span_calls, -(-n // size)), limit=limit,
               stop=(lambda k, r: bool(r[2])) if mode == "fail" else None),
        concurrent=concurrent)
    outputs: list[Any] = []
    summaries: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    done = 0
    for result in results:
        if result is None:  # never started: an earlier item failed
            continue
        lo, outs, failed = result
        if failed and mode == "fail":
            raise item_failure(step, *failed[0])
        if not failed:
            outputs += outs
            summaries += [{"index": i, "status": "ok", "served_by": "script", "tier": None, "model": None,
                           "tokens_in": 0, "tokens_out": 0, "cost": 0.0} for i in range(lo, lo + len(outs))]
            done += len(outs)
            continue
        bad = dict(failed)
        for i, output in enumerate(outs, start=lo):
            error = bad.get(i)
            if error is None:
                outputs.append(output)
                summaries.append({"index": i, "status": "ok", "served_by": "script", "tier": None, "model": None,
                                  "tokens_in": 0, "tokens_out": 0, "cost": 0.0})
                done += 1
                continue
            text = plain(error, step.id)
            errors.append({"index": i, "item": items[i], "error": text})
            summaries.append({"index": i, "status": "failed", "error": text})
            if mode == "collect":
                outputs.append(None)
    return StepOutcome(
        output=outputs, served_by="script" if done else "for_each", attempts=[],
        tokens_in=0, tokens_out=0, cost=0.0 if summaries else 0, baseline_cost=0.0 if done else 0,
        items=summaries, errors=errors if mode != "fail" else None, child_runs=[])
