"""Mining the llm_calls log: group an llm step's logged answers by its normalised dynamic input.

Only calls under the step's *current* prompt-template and schema hash count; calls under older
hashes are reported (`stale_calls`, `prompt_changed`) but never make a group a candidate.

Which answers are evidence (`promote.evidence`):
- `trusted` (the default): only answers from the step's reference tier, answers it (or a person)
  verified, and people's labels (`feedback`, under the current schema) decide a row. A label
  outranks every tier (the latest label wins); trusted tier answers that disagree with each other
  make the input ineligible. An input is a candidate when a person labelled it, or when it has a
  trusted answer and was seen at least `min_calls` times. Unverified answers are counted and
  shown, never used.
- `any`: every valid answer counts; a candidate has `min_calls` answers whose most common one has
  a share of at least `min_agreement`. At temperature 0 a cheap model agrees with itself every
  time, so this measures consistency, not correctness; review warns about it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

from engine.hashing import canonical_json, normalize_value, prompt_hash, schema_hash
from engine.quality.trust import LABELLED, LEVELS, REFERENCE, UNVERIFIED, VERIFIED
from engine.spec.models import LLMSpec, PromoteSpec
from engine.store import promotions as promotion_store
from engine.store import quality as quality_store


def input_key(values: dict[str, Any], normalize: Sequence[str]) -> str:
    """The lookup key of a step's dynamic input: canonical JSON of its normalised values."""
    flags = {"case": "case" in normalize, "whitespace": "whitespace" in normalize}
    return canonical_json(normalize_value(values, **flags))


def step_hashes(spec: LLMSpec) -> tuple[str, str]:
    """The (prompt hash, schema hash) a step has now; the same ones `prepare_call` logs."""
    return (prompt_hash(spec.system if isinstance(spec.system, str) else None,
                        spec.prompt if isinstance(spec.prompt, str) else None),
            schema_hash(spec.schema_))


@dataclass
class Group:
    key: str
    values: dict[str, Any]
    """One representative (un-normalised) input."""
    outputs: Counter[str] = field(default_factory=Counter)
    """canonical JSON of each valid answer that served a run -> how often it came back."""
    trusted: Counter[str] = field(default_factory=Counter)
    """canonical JSON of each reference or verified answer -> how often."""
    labels: list[str] = field(default_factory=list)
    """canonical JSON of people's labels, oldest first (the latest wins)."""
    by_trust: Counter[str] = field(default_factory=Counter)
    """answers (and labels) per trust level."""
    mode: str = "trusted"
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    first_seen: str = ""
    last_seen: str = ""
    prompt_changed: bool = False
    """Calls for this input exist under another prompt/schema hash between first and last seen."""

    @property
    def calls(self) -> int:
        return sum(self.outputs.values())

    @property
    def distinct_outputs(self) -> int:
        return len(self.outputs)

    @property
    def has_trusted(self) -> bool:
        return bool(self.labels or self.trusted)

    @property
    def conflict(self) -> bool:
        """Trusted tier answers disagree among themselves (and no label settles it)."""
        return not self.labels and len(self.trusted) > 1

    def _answer_key(self) -> str | None:
        if self.mode == "any":
            return self.outputs.most_common(1)[0][0] if self.outputs else None
        if self.labels:
            return self.labels[-1]
        if len(self.trusted) == 1:
            return next(iter(self.trusted))
        return None

    @property
    def top_output(self) -> Any:
        import json

        key = self._answer_key()
        return json.loads(key) if key is not None else None

    @property
    def agreement(self) -> float:
        """Share of the evidence that agrees with the answer (any: all answers; trusted: trusted ones)."""
        if self.mode == "any":
            return self.outputs.most_common(1)[0][1] / self.calls if self.outputs else 0.0
        if self.labels:
            return 1.0
        total = sum(self.trusted.values())
        return self.trusted.most_common(1)[0][1] / total if total else 0.0

    @property
    def answerable(self) -> bool:
        """There is an answer to label this input with (a script test case)."""
        return self._answer_key() is not None

    def is_candidate(self, policy: PromoteSpec) -> bool:
        if self.mode == "any":
            return self.calls >= policy.min_calls and self.agreement >= policy.min_agreement
        if self._answer_key() is None:
            return False
        return bool(self.labels) or self.calls >= policy.min_calls

    def evidence(self) -> dict[str, Any]:
        answer = self._answer_key()
        unverified_disagreeing = sum(n for out, n in self.outputs.items() if out != answer) if answer else 0
        return {"calls": self.calls, "distinct_outputs": self.distinct_outputs,
                "agreement": round(self.agreement, 4), "tokens": self.tokens_in + self.tokens_out,
                "cost": self.cost, "first_seen": self.first_seen, "last_seen": self.last_seen,
                "prompt_changed": self.prompt_changed, "evidence": self.mode,
                "trust": {level: self.by_trust.get(level, 0) for level in LEVELS},
                "disagreeing_answers": unverified_disagreeing,
                "label_overrides": sum(n for out, n in self.trusted.items() if self.labels and out != answer)}


@dataclass
class StepLog:
    """What the log says about one llm step under its current hashes."""

    workflow: str
    step_id: str
    prompt_hash: str
    schema_hash: str
    groups: dict[str, Group]
    executions: int
    """Valid answers under the current hashes (one per served step execution)."""
    tokens: int
    cost: float
    first_seen: str | None
    last_seen: str | None
    stale_calls: int
    """Calls logged under older prompt/schema hashes (not counted)."""
    mode: str = "trusted"
    skipped_checks: list[str] = field(default_factory=list)
    """Why reference checks of this step could not run (no key, offline, ...), most recent first."""

    @property
    def trusted_inputs(self) -> int:
        return sum(1 for g in self.groups.values() if g.has_trusted)

    @property
    def conflicts(self) -> int:
        return sum(1 for g in self.groups.values() if g.conflict)

    def candidates(self, policy: PromoteSpec) -> list[Group]:
        return sorted((g for g in self.groups.values() if g.is_candidate(policy)),
                      key=lambda g: (-g.calls, g.key))

    @property
    def span_days(self) -> float:
        if not self.first_seen or not self.last_seen:
            return 0.0
        delta = datetime.fromisoformat(self.last_seen) - datetime.fromisoformat(self.first_seen)
        return delta.total_seconds() / 86400


def mine_step(store: Any, workflow: str, step_id: str, spec: LLMSpec) -> StepLog:
    """Group the step's logged calls by normalised input (see module docstring)."""
    current = step_hashes(spec)
    normalize = list(spec.promote.normalize)
    mode = spec.promote.evidence
    rows = promotion_store.step_calls(store, workflow, step_id)  # no judge calls: a verdict is no answer
    groups: dict[str, Group] = {}
    other_hash_times: dict[str, list[str]] = {}
    stale = executions = tokens = 0
    cost = 0.0
    first = last = None
    for row in rows:
        if not isinstance(row["input"], dict):
            continue
        key = input_key(row["input"], normalize)
        if (row["prompt_hash"], row["schema_hash"]) != current:
            stale += 1
            other_hash_times.setdefault(key, []).append(row["created_at"])
            continue
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(key=key, values=row["input"], first_seen=row["created_at"], mode=mode)
        if row["outcome"] == "valid" and row["trust"] in (REFERENCE, VERIFIED):
            group.trusted[canonical_json(row["output"])] += 1
        if row["purpose"]:  # a quality or spot check: evidence, but it served no run
            if row["outcome"] == "valid":
                group.by_trust[row["trust"] or UNVERIFIED] += 1
            continue
        group.tokens_in += row["tokens_in"] or 0
        group.tokens_out += row["tokens_out"] or 0
        group.cost += row["cost"] or 0.0
        group.last_seen = row["created_at"]
        tokens += (row["tokens_in"] or 0) + (row["tokens_out"] or 0)
        cost += row["cost"] or 0.0
        first = first or row["created_at"]
        last = row["created_at"]
        if row["outcome"] == "valid" and row["reason"] != "low_confidence":
            group.outputs[canonical_json(row["output"])] += 1
            group.by_trust[row["trust"] or UNVERIFIED] += 1
            executions += 1
    for key, times in other_hash_times.items():
        group = groups.get(key)
        if group is not None:
            group.prompt_changed = any(group.first_seen <= t <= group.last_seen for t in times)
    for label in quality_store.labels(store, workflow, step_id, current[1]):
        if not isinstance(label["input"], dict):
            continue
        key = input_key(label["input"], normalize)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(key=key, values=label["input"], first_seen=label["created_at"],
                                        last_seen=label["created_at"], mode=mode)
        group.labels.append(canonical_json(label["output"]))
        group.by_trust[LABELLED] += 1
    skipped = quality_store.skipped_reasons(store, workflow, step_id, limit=3)
    return StepLog(workflow=workflow, step_id=step_id, prompt_hash=current[0], schema_hash=current[1],
                   groups=groups, executions=executions, tokens=tokens, cost=cost, first_seen=first,
                   last_seen=last, stale_calls=stale, mode=mode, skipped_checks=skipped)


def monthly_savings(log: StepLog, covered_executions: int, covered_tokens: int,
                    covered_cost: float) -> dict[str, Any]:
    """Scale what the covered executions cost in the log to a 30-day month at the log's rate
    (the log's span is floored at one day, so a burst of calls is not extrapolated wildly)."""
    days = max(log.span_days, 1.0)
    scale = 30.0 / days
    share = covered_executions / log.executions if log.executions else 0.0
    return {"covered_share": round(share, 4), "log_days": round(log.span_days, 3),
            "calls_per_month": round(log.executions * scale),
            "tokens_per_month": round(covered_tokens * scale),
            "dollars_per_month": round(covered_cost * scale, 6)}
