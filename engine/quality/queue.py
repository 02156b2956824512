"""The labelling queue: logged answers worth a person's look, most useful first.

    disagreement     a cheap tier's answer that the reference answered differently
    low_confidence   an answer given (or escalated) below the confidence bar
    sample           a random sample of the remaining unverified answers

Each item is one llm step of one run, with the step's inputs, the answer of every tier that
answered it (and the reference's answer from its check), and, when the step's output is an enum
(or an object of one enum field), the choices to pick from. Answers a person already labelled (the
run, or the same input under the same schema) leave the queue. Labelling itself is
`engine.quality.feedback.give_feedback`, the call `engine feedback` makes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.quality.trust import LABELLED, UNVERIFIED, VERIFIED
from engine.store import quality as quality_store

REASONS = ("disagreement", "low_confidence", "sample")
LOW_CONFIDENCE = 0.5
_SCAN = 2000


@dataclass
class QueueItem:
    reason: str
    """disagreement | low_confidence | sample"""
    workflow: str
    step_id: str
    run_id: str
    input: Any
    """The step's inputs in that run."""
    served: Any
    """The answer the step returned."""
    served_by: str | None
    trust: str | None
    confidence: float | None
    answers: list[dict[str, Any]] = field(default_factory=list)
    """Every tier that answered: tier, model, output, trust, confidence, role (served, escalated, reference check)."""
    choices: list[Any] | None = None
    """Whole outputs to pick from, when the output is an enum (or an object of one enum field)."""
    choice_field: str | None = None
    schema: Any = None
    """The step's output schema (rendered), for editing an answer as JSON."""
    problem: str | None = None
    """Why this item cannot be labelled here (its workflow file is gone), if so."""


def _labelled(store: Any) -> tuple[set[tuple[str, str]], set[tuple[str, str, str]]]:
    rows = quality_store.feedback_keys(store)
    by_run = {(r["run_id"], r["step_id"]) for r in rows if r["run_id"]}
    by_input = {(r["workflow"], r["step_id"], r["input_hash"]) for r in rows}
    return by_run, by_input


def _candidates(store: Any, workflow: str | None, low_confidence: float) -> list[tuple[str, dict[str, Any]]]:
    disagreements, low, rest = quality_store.queue_candidates(store, workflow, low_confidence=low_confidence,
                                                              unverified=UNVERIFIED, scan=_SCAN)
    random.Random(0).shuffle(rest)  # a stable sample: the queue does not reshuffle on every page load
    return ([("disagreement", r) for r in disagreements] + [("low_confidence", r) for r in low]
            + [("sample", r) for r in rest])


def review_queue(store: Any, *, workflow: str | None = None, limit: int = 20,
                 low_confidence: float = LOW_CONFIDENCE, sample: int = 10) -> list[QueueItem]:
    """Up to `limit` items: disagreements first, then low-confidence answers, then at most
    `sample` randomly sampled unverified answers. One item per run and step, and per input."""
    by_run, by_input = _labelled(store)
    seen_runs: set[tuple[str, str]] = set()
    seen_inputs: set[tuple[str, str, str]] = set()
    sampled = 0
    chosen: list[tuple[str, dict[str, Any]]] = []
    for reason, row in _candidates(store, workflow, low_confidence):
        if len(chosen) >= limit:
            break
        run_key = (row["run_id"], row["step_id"])
        input_key = (row["workflow"], row["step_id"], row["input_hash"] or "")
        if run_key in by_run or input_key in by_input or run_key in seen_runs or input_key in seen_inputs:
            continue
        if reason == "sample":
            if sampled >= sample:
                continue
            sampled += 1
        seen_runs.add(run_key)
        seen_inputs.add(input_key)
        chosen.append((reason, row))
    checks: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if chosen:  # the reference's answers of every chosen item, in one pass over the checks
        runs = sorted({row["run_id"] for _, row in chosen})
        for q in quality_store.checks_of_runs(store, runs):
            checks.setdefault((q["run_id"], q["step_id"]), []).append(q)
    workflows: dict[str, Any] = {}
    return [_item(store, reason, row, checks.get((row["run_id"], row["step_id"]), []), workflows)
            for reason, row in chosen]


def _item(store: Any, reason: str, row: dict[str, Any], checks: list[dict[str, Any]],
          workflows: dict[str, Any]) -> QueueItem:
    calls = quality_store.valid_answers(store, row["run_id"], row["step_id"])
    answers = []
    for c in calls:
        role = ({"quality_check": "reference check", "spot_check": "spot check", "judge": "judge"}.get(c["purpose"])
                or ("escalated (low confidence)" if c["reason"] == "low_confidence" else "answered"))
        answers.append({"tier": c["tier"], "model": c["model"], "output": c["output"], "trust": c["trust"],
                        "confidence": c["confidence"], "role": role})
    logged_reference = {(a["tier"], repr(a["output"])) for a in answers}
    for q in checks:
        if (q["reference_tier"], repr(q["reference_output"])) not in logged_reference:
            answers.append({"tier": q["reference_tier"], "model": None, "output": q["reference_output"],
                            "trust": "reference", "confidence": None, "role": f"reference check ({q['status']})"})
    values = next((c["input"] for c in calls if c["purpose"] is None), None)
    item = QueueItem(reason=reason, workflow=row["workflow"], step_id=row["step_id"], run_id=row["run_id"],
                     input=values, served=row["output"], served_by=row["served_by"], trust=row["trust"],
                     confidence=row["confidence"], answers=answers)
    path = row["workflow_path"]
    if not path or not Path(path).is_file():
        item.problem = f"its workflow file ({path or 'unknown'}) is not available to check a label"
        return item
    if path not in workflows:
        from engine.spec.loader import load_workflow

        workflows[path] = load_workflow(Path(path))
    try:
        step = workflows[path].step(row["step_id"])
    except KeyError:
        item.problem = f"workflow '{row['workflow']}' no longer has step '{row['step_id']}'"
        return item
    item.schema = output_schema(step, values if isinstance(values, dict) else {})
    item.choices, item.choice_field = choices(item.schema)
    return item


def output_schema(step: Any, values: dict[str, Any]) -> Any:
    """The step's output schema as it applied to these inputs (templated schemas rendered)."""
    from engine.templating import TemplateError, render

    spec = step.llm
    if spec is None:
        return None
    if spec._templated_schema:
        try:
            return render(spec.schema_, values)
        except TemplateError:
            return spec.schema_
    return spec.schema_


def choices(schema: Any) -> tuple[list[Any] | None, str | None]:
    """Whole outputs a person can pick from: the enum of an enum schema, or of an object schema's
    only required property ({"intent": "card"}, ...). (None, None) for any other schema."""
    if not isinstance(schema, dict):
        return None, None
    if isinstance(schema.get("enum"), list):
        return list(schema["enum"]), None
    props = schema.get("properties")
    required = schema.get("required") or []
    if schema.get("type") == "object" and isinstance(props, dict) and len(required) == 1:
        name = required[0]
        prop = props.get(name)
        if isinstance(prop, dict) and isinstance(prop.get("enum"), list) and set(props) == {name}:
            return [{name: v} for v in prop["enum"]], name
    return None, None


def recent_labels(store: Any, limit: int = 8) -> list[dict[str, Any]]:
    """The latest feedback, with the trust its run's answer carries now."""
    rows = quality_store.recent_feedback(store, limit)
    for r in rows:  # a confirmation verifies the run's answer; a corrected answer is a label
        r["evidence"] = LABELLED if r["kind"] == "label" else (r["step_trust"] or VERIFIED)
    return rows
