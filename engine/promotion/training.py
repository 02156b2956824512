"""Trusted training pairs: what may teach a model (a classifier, an export, a LoRA adapter).

One source for every learner: promotion mining (`mining.mine_step`) read in `trusted` mode, whatever
the step's `promote.evidence` says, so only answers from the step's reference tier, answers it or a
person verified, and people's labels count (a label outranks every tier, the latest wins; an input
whose trusted answers disagree is left out). Each distinct normalised input is one pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.hashing import canonical_json
from engine.promotion.mining import Group, StepLog, mine_step
from engine.spec.models import LLMSpec


@dataclass
class TrainingPair:
    key: str
    """The normalised input key (what de-duplicates pairs)."""
    values: dict[str, Any]
    output: Any
    evidence: dict[str, int]
    """Trust levels behind the answer (reference, verified, labelled, unverified)."""


def trusted_log(store: Any, workflow: str, step_id: str, spec: LLMSpec) -> StepLog:
    """The step's mined log, trusted evidence only (a step's `evidence: any` does not train models)."""
    if spec.promote.evidence != "trusted":
        spec = spec.model_copy(update={"promote": spec.promote.model_copy(update={"evidence": "trusted"})})
    return mine_step(store, workflow, step_id, spec)


def trusted_pairs(log: StepLog) -> list[TrainingPair]:
    """One pair per distinct input with a trusted answer, sorted by key (stable across runs)."""
    assert log.mode == "trusted", "training pairs come from trusted evidence only"
    groups: list[Group] = [g for g in log.groups.values() if g.answerable]
    return [TrainingPair(key=g.key, values=g.values, output=g.top_output, evidence=dict(g.evidence()["trust"]))
            for g in sorted(groups, key=lambda g: g.key)]


def input_text(values: dict[str, Any], field: str | None = None) -> str:
    """The text a model reads for a step's inputs: the named input, the only input, or one
    `name: value` line per input (sorted by name)."""
    def text(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)

    if field is not None:
        return text(values.get(field, ""))
    if len(values) == 1:
        return text(next(iter(values.values())))
    return "\n".join(f"{k}: {text(values[k])}" for k in sorted(values))


def label_of(output: Any) -> str:
    """A short name for an answer: the value of a one-field object, else its canonical JSON."""
    if isinstance(output, dict) and len(output) == 1:
        value = next(iter(output.values()))
        return value if isinstance(value, str) else canonical_json(value)
    return output if isinstance(output, str) else canonical_json(output)
