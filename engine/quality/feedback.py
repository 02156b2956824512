"""People's feedback: labels that outrank every tier.

- `give_feedback(store, run_id, step, ok=True)`: a person confirms the answer a run's step served
  (it becomes `verified`, and a label with that answer is kept);
- `give_feedback(store, run_id, step, output=...)`: a person's corrected answer (a label);
- `import_labels(workflow, store, path, step=...)`: a JSONL file of the workflow's inputs plus the
  expected output (`expected`) of one llm step. The step's inputs are computed by running the
  zero-token steps before it (scripts, decisions); a label file for a step behind an llm step
  must give that step's inputs directly (`step_inputs`).

Every label is checked against the step's schema first: one bad line, an unknown run or step, and
nothing is written (`FeedbackError`, a user error).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import EngineError, UserError
from engine.store import quality as quality_store
from engine.hashing import input_hash, schema_hash
from engine.templating import TemplateError, render


class FeedbackError(UserError):
    """Feedback that cannot be recorded: unknown run or step, or an output that fails the schema."""


def _load_run_workflow(run: dict[str, Any]) -> Any:
    from engine.spec.loader import load_workflow

    path = run.get("workflow_path")
    if not path or not Path(path).is_file():
        raise FeedbackError(f"run {run['id'][:12]}: its workflow file ({path or 'unknown'}) is not available to "
                            f"check the output against the step's schema")
    return load_workflow(Path(path))


def _llm_step(wf: Any, step_id: str) -> Any:
    try:
        step = wf.step(step_id)
    except KeyError:
        steps = ", ".join(s.id for s in wf.steps if s.llm is not None) or "none"
        raise FeedbackError(f"workflow '{wf.name}' has no step '{step_id}' (llm steps: {steps})") from None
    if step.llm is None:
        raise FeedbackError(f"step '{step_id}' is a {step.kind} step; feedback labels llm steps")
    return step


def check_output(step: Any, values: dict[str, Any], output: Any) -> Any:
    """The output as the step would return it, or FeedbackError naming what is wrong."""
    from engine.steps.llm import parse_and_validate

    spec = step.llm
    schema = spec.schema_
    if spec._templated_schema:
        try:
            schema = render(spec.schema_, values)
        except TemplateError as e:
            raise FeedbackError(f"step '{step.id}': cannot render its schema: {e}") from None
    try:
        return parse_and_validate(json.dumps(output), spec, schema)
    except (ValueError, TypeError) as e:
        raise FeedbackError(f"step '{step.id}': the output is rejected: {e}") from None


def _row(wf: Any, step: Any, values: dict[str, Any], output: Any, *, kind: str, source: str,
         run_id: str | None) -> dict[str, Any]:
    from engine.promotion.mining import step_hashes

    prompt, _ = step_hashes(step.llm)
    return {"workflow": wf.name, "step_id": step.id, "run_id": run_id, "schema_hash": schema_hash(step.llm.schema_),
            "prompt_hash": prompt, "input_hash": input_hash(values), "input": values, "output": output,
            "kind": kind, "source": source}


def give_feedback(store: Any, run_id: str, step_id: str, *, ok: bool = False, output: Any = None,
                  source: str = "cli") -> dict[str, Any]:
    """Confirm (`ok`) or correct (`output`) the answer a run's llm step served."""
    if ok == (output is not None):
        raise FeedbackError("give exactly one of ok (confirm the answer) or output (the right answer)")
    run = store.run(run_id)
    if run is None:
        raise FeedbackError(f"no run '{run_id}'")
    wf = _load_run_workflow(run)
    step = _llm_step(wf, step_id)
    rows = [s for s in run["steps"] if s["step_id"] == step_id]
    if not rows or rows[-1]["status"] != "ok":
        raise FeedbackError(f"run {run['id'][:12]}: step '{step_id}' has no answer to give feedback on")
    values = step_values(wf, step, run)
    if ok:
        output = check_output(step, values, rows[-1]["output"])
    else:
        output = check_output(step, values, output)
    row = _row(wf, step, values, output, kind="confirm" if ok else "label", source=source, run_id=run["id"])
    quality_store.record_feedback(store, [row])
    if ok:
        quality_store.mark_verified(store, run["id"], step_id, "person")
    settle_cached(store, [row])
    return row


def settle_cached(store: Any, rows: list[dict[str, Any]]) -> None:
    """Labels win everywhere: every cache entry of a labelled input (any tenant, model chain or
    prompt under the step's schema) takes the label, trust `labelled`; exact copies semantic hits
    made of an entry the label corrected are deleted. (Promoted artifacts read the labels
    themselves: `engine.promotion.server`.)"""
    from engine.cache.store import cache_store

    cache = cache_store(store)
    for row in rows:
        cache.settle(workflow=row["workflow"], step_id=row["step_id"], prompt_hash=None,
                     schema_hash=row["schema_hash"], input_hash=row["input_hash"], answer=row["output"],
                     trust="labelled", settled_by=f"label:{row['id']}")


def step_values(wf: Any, step: Any, run: dict[str, Any]) -> dict[str, Any]:
    """The step's declared inputs in that run, rendered from the run's inputs and step outputs."""
    state = {"inputs": run.get("inputs") or {},
             "steps": {s["step_id"]: {"output": s["output"]} for s in run["steps"] if s["status"] == "ok"}}
    try:
        return dict(render(step.inputs, state))
    except TemplateError as e:
        raise FeedbackError(f"run {run['id'][:12]}: cannot rebuild the inputs of step '{step.id}': {e}") from None


def import_labels(wf: Any, store: Any, path: Path, *, step: str | None = None, field: str = "expected",
                  source: str = "import") -> int:
    """Import a JSONL label file (see the module docstring); returns the number of labels."""
    llm_steps = [s for s in wf.steps if s.llm is not None]
    if step is None:
        if len(llm_steps) != 1:
            raise FeedbackError(f"workflow '{wf.name}' has {len(llm_steps)} llm steps; name one with --step")
        target = llm_steps[0]
    else:
        target = _llm_step(wf, step)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FeedbackError(f"cannot read {path}: {e}") from None
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            item = json.loads(line)
        except ValueError as e:
            raise FeedbackError(f"{where}: not JSON ({e})") from None
        if not isinstance(item, dict) or field not in item:
            raise FeedbackError(f"{where}: each line needs the workflow's inputs and '{field}' (the expected output)")
        expected = item.pop(field)
        try:
            if "step_inputs" in item:
                values = item["step_inputs"]
                if not isinstance(values, dict):
                    raise FeedbackError("step_inputs must be an object")
            else:
                item.pop("id", None)
                values = _inputs_for(wf, target, item)
            expected = _wrap(target, expected)
            output = check_output(target, values, expected)
        except FeedbackError as e:
            raise FeedbackError(f"{where}: {e}") from None
        except EngineError as e:
            raise FeedbackError(f"{where}: {e}") from None
        rows.append(_row(wf, target, values, output, kind="label", source=source, run_id=None))
    if not rows:
        raise FeedbackError(f"{path}: no labels")
    written = quality_store.record_feedback(store, rows)
    settle_cached(store, rows)
    return written


def _wrap(step: Any, expected: Any) -> Any:
    """A bare value for a schema that is an object with one required property is that property."""
    schema = step.llm.schema_
    if isinstance(schema, dict) and schema.get("type") == "object" and not isinstance(expected, dict):
        required = schema.get("required") or []
        if len(required) == 1:
            return {required[0]: expected}
    return expected


def _inputs_for(wf: Any, target: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run the zero-token steps before `target` to get its inputs."""
    from engine.inputs import validate_inputs
    from engine.providers.calls import drive
    from engine.runner import run_step
    from engine.steps.base import StepContext

    values = validate_inputs(wf, inputs)
    state: dict[str, Any] = {"inputs": values, "steps": {}}
    for step in wf.steps:
        if step.id == target.id:
            return dict(render(step.inputs, state))
        if step.llm is not None or (step.decision is not None and not isinstance(step.decision.on_miss, str)
                                    and hasattr(step.decision.on_miss, "llm")):
            raise FeedbackError(f"step '{target.id}' comes after llm step '{step.id}': give its inputs "
                                f"directly as step_inputs")
        ctx = StepContext(run_id="labels", workflow=wf, config=wf.config, store=None, step_id=step.id)
        outcome = drive(run_step(ctx, step, render(step.inputs, state)))
        state["steps"][step.id] = {"output": outcome.output}
    raise FeedbackError(f"no step '{target.id}'")
