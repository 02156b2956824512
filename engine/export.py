"""Training-data export: an llm step's trusted pairs as fine-tuning JSONL.

`export_step(workflow, store, step, fmt=..., val=0.1)` writes `train.jsonl` (and `val.jsonl`) from
the same trusted evidence promotion mining uses (`engine.promotion.training`): reference answers,
verified answers and people's labels, one pair per distinct normalised input; unverified answers
never. Each example is the exact conversation the step sends (its static system prefix with the
schema instructions, the rendered prompt) and the trusted answer as compact JSON.

Formats:
    openai   {"messages": [system, user, assistant]}: OpenAI's chat fine-tuning format
    chat     {"prompt": [system, user], "completion": [assistant]}: trl's conversational
             prompt-completion format (SFTTrainer trains on the completion only)

Pairs whose rendered conversation is identical are written once. The validation split is drawn
per answer (stratified, seeded), so every answer with two or more examples keeps one in train.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from engine.errors import ConfigError, UserError
from engine.hashing import canonical_json
from engine.promotion.training import label_of, trusted_log, trusted_pairs
from engine.spec.models import LLMSpec, Workflow

FORMATS = ("openai", "chat")


class NoTrainingDataError(UserError):
    """The step has no trusted pairs to export or train on."""


@dataclass
class Example:
    messages: list[dict[str, str]]
    """system, user (the step's real messages)."""
    output: Any
    label: str
    schema: dict[str, Any] | None = None
    """The step's JSON Schema for this call (rendered, when templated)."""

    @property
    def completion(self) -> str:
        return json.dumps(self.output, ensure_ascii=False)

    def record(self, fmt: str) -> dict[str, Any]:
        answer = {"role": "assistant", "content": self.completion}
        if fmt == "openai":
            return {"messages": [*self.messages, answer]}
        return {"prompt": self.messages, "completion": [answer]}


@dataclass
class ExportResult:
    workflow: str
    step: str
    format: str
    directory: Path
    files: dict[str, Path]
    counts: dict[str, int]
    """train, val, duplicates (identical conversations written once)."""
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    """answer -> {"train": n, "val": n}."""
    trust: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"workflow": self.workflow, "step": self.step, "format": self.format,
                "files": {k: str(v) for k, v in self.files.items()}, "counts": self.counts, "labels": self.labels,
                "trust": self.trust}


def llm_spec(wf: Workflow, step_id: str) -> LLMSpec:
    step = next((s for s in wf.steps if s.id == step_id), None)
    if step is None or step.llm is None:
        names = ", ".join(s.id for s in wf.steps if s.llm is not None) or "none"
        raise ConfigError(f"workflow '{wf.name}' has no llm step '{step_id}' (llm steps: {names})")
    return step.llm


def training_examples(wf: Workflow, store: Any, step_id: str) -> tuple[list[Example], int, dict[str, int]]:
    """(examples, duplicates dropped, evidence by trust level) for the step's trusted pairs."""
    from engine.steps.base import StepContext
    from engine.steps.llm import prepare_call

    spec = llm_spec(wf, step_id)
    log = trusted_log(store, wf.name, step_id, spec)
    pairs = trusted_pairs(log)
    if not pairs:
        why = f" (reference checks were skipped: {log.skipped_checks[0]})" if log.skipped_checks else ""
        raise NoTrainingDataError(
            f"{wf.name}/{step_id}: no trusted pairs to export ({len(log.groups)} logged inputs, none answered by the "
            f"step's reference tier, verified or labelled{why}); configure quality.reference or label answers "
            f"(engine feedback)")
    ctx = cast(StepContext, SimpleNamespace(step_id=step_id))
    seen: set[str] = set()
    examples: list[Example] = []
    trust: dict[str, int] = {}
    for pair in pairs:
        call = prepare_call(ctx, spec, pair.values)
        messages = call.messages
        key = canonical_json([messages, pair.output])
        if key in seen:
            continue
        seen.add(key)
        examples.append(Example(messages=messages, output=pair.output, label=label_of(pair.output), schema=call.schema))
        for level, n in pair.evidence.items():
            trust[level] = trust.get(level, 0) + n
    return examples, len(pairs) - len(examples), trust


def split(examples: list[Example], val: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Stratified by answer: round(val * n) of each answer's examples to validation, at least one
    left in train."""
    by_label: dict[str, list[Example]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    rng = random.Random(seed)
    train: list[Example] = []
    valid: list[Example] = []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n_val = min(len(group) - 1, int(math.floor(val * len(group) + 0.5))) if val > 0 else 0
        valid.extend(group[:n_val])
        train.extend(group[n_val:])
    rng.shuffle(train)
    rng.shuffle(valid)
    return train, valid


def export_step(wf: Workflow, store: Any, step_id: str, *, fmt: str = "openai", val: float = 0.1,
                out: Path | None = None, seed: int = 0) -> ExportResult:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}' (formats: {', '.join(FORMATS)})")
    if not 0 <= val < 1:
        raise UserError(f"--val must be in [0, 1), got {val}")
    examples, duplicates, trust = training_examples(wf, store, step_id)
    train, valid = split(examples, val, seed)
    directory = Path(out) if out is not None else Path("export") / wf.name / step_id
    directory.mkdir(parents=True, exist_ok=True)
    files = {"train": directory / "train.jsonl"}
    if valid:
        files["val"] = directory / "val.jsonl"
    else:
        (directory / "val.jsonl").unlink(missing_ok=True)  # no stale split from an earlier export
    for name, rows in (("train", train), ("val", valid)):
        if name in files:
            files[name].write_text("".join(json.dumps(ex.record(fmt), ensure_ascii=False) + "\n" for ex in rows),
                                   encoding="utf-8")
    labels: dict[str, dict[str, int]] = {}
    for name, rows in (("train", train), ("val", valid)):
        for ex in rows:
            labels.setdefault(ex.label, {"train": 0, "val": 0})[name] += 1
    result = ExportResult(workflow=wf.name, step=step_id, format=fmt, directory=directory, files=files,
                          counts={"train": len(train), "val": len(valid), "duplicates": duplicates},
                          labels=dict(sorted(labels.items())), trust=trust)
    (directory / "summary.json").write_text(json.dumps(result.summary(), indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    return result
