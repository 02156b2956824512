"""Proposals: lookups from candidate groups, scripts written by a strong tier and verified.

`propose_promotions(workflow, store, step=...)` mines every llm step (or one) and records:
- a **lookup** proposal: the candidate groups not yet in the step's accepted table, one row each
  with its evidence; not made again when a proposal with the same rows was rejected;
- a **classifier** proposal (closed outputs only; `engine.promotion.classifier_proposal`);
- a **router** proposal (steps with `route:` or `tier: auto`; `engine.promotion.router_proposal`),
  learnt from the step's reference checks and labels, before the log is mined;
- a **script** proposal: the strong tier (`promote.script_tier`, else `premium`) is shown k logged
  examples and writes `solve(inputs)`; the script is verified in the sandbox on every logged pair;
  below the agreement threshold it is kept as `unverified` (report kept), not proposed.
Each proposal carries its estimated monthly tokens and dollars saved (`mining.monthly_savings`).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from engine.errors import AuthenticationError, ConfigError, ProviderError
from engine.hashing import canonical_json, sha256
from engine.promotion import records
from engine.promotion.artifacts import lookup_rows, promotions_dir
from engine.promotion.mining import Group, StepLog, input_key, mine_step, monthly_savings
from engine.promotion.records import Promotion
from engine.promotion.sandbox import check_script, isolation_problem
from engine.promotion.verify import script_answerer, verify
from engine.providers.base import CompletionRequest
from engine.providers.registry import get_provider
from engine.spec.models import LLMSpec, Workflow
from engine.steps.llm import cost_of

CODE_SCHEMA = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"],
               "additionalProperties": False}
_FENCED_CODE = re.compile(r"```(?:python)?\s*(.*?)```", re.DOTALL)

WRITER_SYSTEM = """You write small, deterministic Python functions that replace an LLM step.
Write `def solve(inputs: dict)` that maps the step's inputs to its output exactly as in the examples.
Rules: standard library only; no files, network, environment or subprocesses; return a JSON-compatible
value matching the output schema, or None when the rule does not clearly apply (the LLM answers then).
Reply with a JSON object {"code": "<the Python source>"}."""


@dataclass
class ProposeReport:
    proposed: list[Promotion] = field(default_factory=list)
    unverified: list[Promotion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _new_id(kind: str) -> str:
    return ("lk-" if kind == "lookup" else "sc-") + uuid.uuid4().hex[:8]


def llm_steps(wf: Workflow, step: str | None) -> list[tuple[str, LLMSpec]]:
    steps = [(s.id, s.llm) for s in wf.steps if s.llm is not None and (step is None or s.id == step)]
    if step is not None and not steps:
        raise ConfigError(f"workflow '{wf.name}' has no llm step '{step}'")
    return steps


def propose_promotions(wf: Workflow, store: Any, *, step: str | None = None, scripts: bool = True,
                       script_tier: str | None = None, classifiers: bool = True,
                       routers: bool = True) -> ProposeReport:
    report = ProposeReport()
    for step_id, spec in llm_steps(wf, step):
        if not spec.promote.enabled:
            report.notes.append(f"{step_id}: promotion disabled (promote.enabled: false)")
            continue
        if routers:
            from engine.promotion.router_proposal import propose_router

            router = propose_router(wf, step_id, spec, store, report.notes)
            if router is not None:
                report.proposed.append(router)
        log = mine_step(store, wf.name, step_id, spec)
        if not log.groups:
            report.notes.append(f"{step_id}: no logged answers under the current prompt/schema")
            continue
        if log.mode == "trusted" and not log.trusted_inputs:
            why = (f"; reference checks were skipped: {log.skipped_checks[0]}" if log.skipped_checks else "")
            report.notes.append(
                f"{step_id}: no trusted evidence: {len(log.groups)} inputs, all answered by tiers other than the "
                f"step's reference and never verified{why}; configure a reference tier (quality.reference) or "
                f"label answers (engine feedback), or opt in to promote.evidence: any")
            continue
        made = propose_lookup(wf, step_id, spec, log, store, report)
        if made is not None:
            report.proposed.append(made)
        if classifiers:
            from engine.promotion.classifier_proposal import propose_classifier

            trained = propose_classifier(wf, step_id, spec, store, report.notes)
            if trained is not None:
                (report.proposed if trained.status == "proposed" else report.unverified).append(trained)
        if scripts:
            propose_script(wf, step_id, spec, log, store, report, tier=script_tier)
    return report


def propose_lookup(wf: Workflow, step_id: str, spec: LLMSpec, log: StepLog, store: Any,
                   report: ProposeReport) -> Promotion | None:
    policy = spec.promote
    candidates = log.candidates(policy)
    table: dict[str, Any] = {}
    if wf.path is not None:
        table = {input_key(r["input"], policy.normalize): r["output"]
                 for r in lookup_rows(promotions_dir(wf.path, wf.name), step_id)}
    live = [p for p in records.find(store, workflow=wf.name, step_id=step_id, kind="lookup", status="accepted")
            if (p.prompt_hash, p.schema_hash) == (log.prompt_hash, log.schema_hash)]
    if not live:
        table = {}  # an accepted table under older hashes is stale: its rows must be re-proposed
    new = [g for g in candidates if canonical_json(table.get(g.key)) != canonical_json(g.top_output)]
    if not new:
        need = (f"need >= {policy.min_calls} calls at >= {policy.min_agreement:.0%} agreement" if log.mode == "any"
                else f"need a label, or a trusted answer and >= {policy.min_calls} calls; "
                     f"{log.trusted_inputs} inputs have trusted evidence, {log.conflicts} conflicting")
        report.notes.append(f"{step_id}: no new lookup rows ({len(candidates)} candidate groups, "
                            f"{len(log.groups)} inputs; {need})")
        return None
    rows = [{"key": g.key, "input": g.values, "output": g.top_output, "evidence": g.evidence()} for g in new]
    fingerprint = sha256(canonical_json([wf.name, step_id, "lookup", log.prompt_hash, log.schema_hash,
                                         [(r["key"], r["output"]) for r in rows]]))
    previous = records.find(store, fingerprint=fingerprint)
    if any(p.status == "rejected" for p in previous):
        report.notes.append(f"{step_id}: the same lookup was rejected before; not proposed again")
        return None
    open_same = [p for p in previous if p.status == "proposed"]
    if open_same:
        return open_same[0]
    _supersede(store, wf.name, step_id, "lookup")
    covered = sum(g.calls for g in new)
    savings = monthly_savings(log, covered, sum(g.tokens_in + g.tokens_out for g in new), sum(g.cost for g in new))
    verification = {"rows": len(rows), "calls": covered,
                    "min_agreement": min(g.agreement for g in new), "threshold": policy.min_agreement,
                    "min_calls": policy.min_calls, "passed": True, "stale_calls_ignored": log.stale_calls,
                    "evidence": log.mode, "trust": _trust_totals(new),
                    "conflicts_not_proposed": log.conflicts}
    if log.mode == "any":
        verification["warning"] = ("promote.evidence: any: rows are built from unverified answers; a cheap "
                                   "tier agreeing with itself is consistency, not correctness")
    return records.insert(store, Promotion(
        id=_new_id("lookup"), workflow=wf.name, workflow_path=str(wf.path) if wf.path else None,
        step_id=step_id, kind="lookup", status="proposed", prompt_hash=log.prompt_hash,
        schema_hash=log.schema_hash, fingerprint=fingerprint,
        payload={"rows": rows, "normalize": list(policy.normalize), "existing_rows": len(table)},
        verification=verification, savings=savings))


def _trust_totals(groups: list[Group]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for g in groups:
        for level, n in g.evidence()["trust"].items():
            totals[level] = totals.get(level, 0) + n
    return totals


def _supersede(store: Any, workflow: str, step_id: str, kind: str) -> None:
    for p in records.find(store, workflow=workflow, step_id=step_id, kind=kind, status="proposed"):
        records.update(store, p.id, status="superseded", event="superseded", detail="a newer proposal replaced it")


def choose_examples(groups: list[Group], k: int) -> list[Group]:
    """k examples, most-called first, spread over distinct answers (round robin)."""
    by_output: dict[str, list[Group]] = {}
    for g in sorted(groups, key=lambda g: (-g.calls, g.key)):
        by_output.setdefault(canonical_json(g.top_output), []).append(g)
    chosen: list[Group] = []
    while len(chosen) < k and any(by_output.values()):
        for bucket in by_output.values():
            if bucket and len(chosen) < k:
                chosen.append(bucket.pop(0))
    return chosen


def writer_messages(step_id: str, spec: LLMSpec, examples: list[Group]) -> list[dict[str, str]]:
    lines = [f"Step '{step_id}'. Its prompt template:", str(spec.prompt), "",
             "Output JSON Schema: " + json.dumps(spec.schema_, sort_keys=True), "", "Examples (inputs -> output):"]
    lines += [f"{json.dumps(g.values, ensure_ascii=False)} -> {json.dumps(g.top_output, ensure_ascii=False)}"
              for g in examples]
    return [{"role": "system", "content": WRITER_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def extract_code(text: str) -> str:
    try:
        value = json.loads(text)
        if isinstance(value, dict) and isinstance(value.get("code"), str):
            return str(value["code"])
    except ValueError:
        pass
    fenced = _FENCED_CODE.search(text)
    return fenced.group(1) if fenced else text


def write_script(store: Any, wf: Workflow, spec: LLMSpec, step_id: str, examples: list[Group],
                 tier: str) -> tuple[str, dict[str, Any]]:
    """Ask the strong tier for a script: (code, who wrote it and what it cost)."""
    config = wf.config
    if config is None:
        raise ConfigError("the workflow was loaded without a config")
    messages = writer_messages(step_id, spec, examples)
    last_error = ""
    for entry in config.chain(tier):
        try:
            completion = get_provider(entry.provider).complete(CompletionRequest(
                model=entry.model_name, messages=messages, max_tokens=2000, schema=CODE_SCHEMA,
                temperature=0.0, options=entry.options))
        except AuthenticationError:
            raise
        except ProviderError as e:
            last_error = f"{entry.model}: {e}"
            continue
        writer = {"tier": tier, "model": entry.model, "tokens_in": completion.input_tokens,
                  "tokens_out": completion.output_tokens, "cost": cost_of(entry, completion, config.pricing)}
        return extract_code(completion.text), writer
    raise ProviderError(f"no model of tier '{tier}' wrote a script ({last_error})")


def _writer_tier(spec: LLMSpec, wf: Workflow, override: str | None) -> str | None:
    tier = override or spec.promote.script_tier
    if tier:
        return tier
    tiers = wf.config.tiers if wf.config is not None else {}
    return "premium" if "premium" in tiers else None


def propose_script(wf: Workflow, step_id: str, spec: LLMSpec, log: StepLog, store: Any,
                   report: ProposeReport, *, tier: str | None = None) -> Promotion | None:
    policy = spec.promote
    writer_tier = _writer_tier(spec, wf, tier)
    if writer_tier is None:
        report.notes.append(f"{step_id}: no script tier configured (promote.script_tier); scripts skipped")
        return None
    groups = [g for g in log.groups.values() if g.answerable]
    if len(groups) < 2:
        report.notes.append(f"{step_id}: too few distinct inputs for a script ({len(groups)})")
        return None
    current = [p for p in records.find(store, workflow=wf.name, step_id=step_id, kind="script",
                                       status=("proposed", "accepted"))
               if (p.prompt_hash, p.schema_hash) == (log.prompt_hash, log.schema_hash)]
    if current:
        report.notes.append(f"{step_id}: script {current[0].id} is already {current[0].status}")
        return None
    tried = [p for p in records.find(store, workflow=wf.name, step_id=step_id, kind="script", status="unverified")
             if (p.prompt_hash, p.schema_hash) == (log.prompt_hash, log.schema_hash)
             and p.verification.get("pairs") == len(groups)]
    if tried:
        report.notes.append(f"{step_id}: script {tried[-1].id} failed verification on these same "
                            f"{len(groups)} inputs; not asking the writer again until the log grows")
        return None
    examples = choose_examples(groups, policy.script_examples)
    try:
        code, writer = write_script(store, wf, spec, step_id, examples, writer_tier)
    except ProviderError as e:
        report.notes.append(f"{step_id}: the script writer failed: {e}")
        return None
    fingerprint = sha256(canonical_json([wf.name, step_id, "script", log.prompt_hash, log.schema_hash, code]))
    if any(p.status == "rejected" for p in records.find(store, fingerprint=fingerprint)):
        report.notes.append(f"{step_id}: the writer produced a script that was rejected before")
        return None
    shown = {g.key for g in examples}
    refused = check_script(code)  # the sandbox's language layer, also checked at load and run time
    result = verify(script_answerer(code), groups, spec, policy.min_agreement, shown)
    if refused:
        result["static_check"] = list(refused)
    agreeing = set(result.pop("agreeing_keys"))
    result["evidence"] = log.mode
    result["trust"] = _trust_totals(groups)
    if log.mode == "any":
        result["warning"] = ("promote.evidence: any: test cases are unverified answers; a cheap tier agreeing "
                             "with itself is consistency, not correctness")
    covered_groups = [g for g in groups if g.key in agreeing] if result["passed"] else []
    savings = monthly_savings(log, sum(g.calls for g in covered_groups),
                              sum(g.tokens_in + g.tokens_out for g in covered_groups),
                              sum(g.cost for g in covered_groups))
    status = "proposed" if result["passed"] else "unverified"
    reason = None if result["passed"] else (
        f"refused by the sandbox's static check: {'; '.join(refused[:3])}" if refused else
        f"not verified: {isolation_problem()}" if isolation_problem() else
        f"agreement {result['agreement']:.1%} < {policy.min_agreement:.0%} on {result['answered']} answered "
        f"of {result['pairs']} inputs ({result['failures']} failures)")
    if status == "proposed":
        _supersede(store, wf.name, step_id, "script")
    promotion = records.insert(store, Promotion(
        id=_new_id("script"), workflow=wf.name, workflow_path=str(wf.path) if wf.path else None,
        step_id=step_id, kind="script", status=status, prompt_hash=log.prompt_hash,
        schema_hash=log.schema_hash, fingerprint=fingerprint,
        payload={"code": code, "examples": [{"input": g.values, "output": g.top_output} for g in examples],
                 "writer": writer},
        verification=result, savings=savings, reason=reason))
    (report.proposed if status == "proposed" else report.unverified).append(promotion)
    return promotion

