"""Running a skill's test cases: `engine skills test`.

Each case runs the skill as a one-step workflow, offline, and nothing is logged:
  - `fake` (default): llm skills are answered by the case's `reply` (every attempt, re-asks
    included), so a case checks the prompt the params produce (`prompt_contains`), the schema
    (a reply the schema rejects fails the run: `expect_error`) and the output (`expect`, `checks`);
    llm cases without a reply are skipped.
  - `local`: the bundled local model answers instead; cases that need a fake reply to fail
    (`expect_error`) or say `local: false` are skipped, and `prompt_contains` is not checked.
Script skills run the same way in both modes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema

from engine.config import EngineConfig
from engine.errors import EngineError
from engine.providers.base import CompletionRequest
from engine.providers.fake import FakeProvider
from engine.providers.registry import register_provider, unregister_provider
from engine.skills.expand import skill_step
from engine.skills.models import Check, Skill, SkillTest
from engine.spec.loader import load_workflow

Mode = Literal["fake", "local"]
FAKE_PROVIDER = "skilltest"


@dataclass
class CaseResult:
    skill: str
    case: str
    status: str
    """passed | failed | skipped"""
    message: str = ""
    output: Any = None


def _pick(value: Any, path: str) -> Any:
    for part in filter(None, path.split(".")):
        if isinstance(value, list):
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value[part]
        else:
            raise KeyError(part)
    return value


def check_output(check: Check, output: Any) -> str | None:
    """None when the check holds, else what is wrong."""
    where = check.path or "output"
    try:
        value = _pick(output, check.path)
    except (KeyError, IndexError, ValueError):
        return f"{where}: not found"
    if "equals" in check.model_fields_set and value != check.equals:
        return f"{where}: {value!r} != {check.equals!r}"
    if check.one_of is not None and value not in check.one_of:
        return f"{where}: {value!r} not in {check.one_of!r}"
    if check.contains is not None and check.contains not in str(value):
        return f"{where}: does not contain {check.contains!r}"
    if check.matches is not None and not re.search(check.matches, str(value)):
        return f"{where}: does not match /{check.matches}/"
    if check.max_words is not None and len(str(value).split()) > check.max_words:
        return f"{where}: {len(str(value).split())} words > {check.max_words}"
    if check.schema_ is not None:
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(check.schema_).iter_errors(value))
        if error is not None:
            return f"{where}: {error.message}"
    return None


def _config(step: dict[str, Any], mode: Mode) -> EngineConfig:
    llm = step.get("llm") or {}
    tiers = {llm.get("tier", "local"), *llm.get("escalate", [])} if llm else {"local"}
    model = "llamacpp:smollm2" if mode == "local" else f"{FAKE_PROVIDER}:model"
    return EngineConfig.model_validate({"tiers": {t: [{"model": model}] for t in tiers}})


def run_case(skill: Skill, case: SkillTest, index: int, mode: Mode = "fake") -> CaseResult:
    label = case.name or f"case {index + 1}"
    result = CaseResult(skill.ref, label, "passed")
    if skill.kind == "llm" and mode == "fake" and "reply" not in case.model_fields_set:
        result.status, result.message = "skipped", "no fake reply (runs with --local)"
        return result
    if mode == "local" and skill.kind == "llm" and (case.expect_error or not case.local):
        result.status, result.message = "skipped", "holds only for its fake reply"
        return result
    try:
        step = skill_step(skill, "skill", {n: f"{{{{ inputs.{n} }}}}" for n in case.inputs}, case.params)
        config = _config(step, mode)
        workflow = load_workflow({"name": f"test_{skill.name}", "inputs": skill.inputs, "steps": [step]},
                                 config=config)
    except (ValueError, EngineError) as e:
        result.status, result.message = "failed", f"does not load: {e}"
        return result
    fake = FakeProvider(responder=lambda _request: case.reply)
    if mode == "fake":
        register_provider(FAKE_PROVIDER, fake)
    from engine.runner import RunResult, run_workflow

    run: RunResult | None = None
    error: str | None = None
    try:
        run = run_workflow(workflow, case.inputs, config=config, store=False, raise_on_error=False, servers=[])
        error = run.error
    except EngineError as e:  # bad inputs
        error = str(e)
    finally:
        if mode == "fake":
            unregister_provider(FAKE_PROVIDER)
    output = run.outputs.get("skill") if run is not None and run.ok else None
    result.output = output
    problems = _judge(case, error, output, fake.requests if mode == "fake" else None)
    if problems:
        result.status, result.message = "failed", "; ".join(problems)
    return result


def _judge(case: SkillTest, error: str | None, output: Any, requests: list[CompletionRequest] | None) -> list[str]:
    problems: list[str] = []
    if case.expect_error:
        if error is None:
            return [f"expected an error, got {output!r}"]
        if isinstance(case.expect_error, str) and case.expect_error not in error:
            return [f"error does not mention {case.expect_error!r}: {error}"]
    elif error is not None:
        return [f"run failed: {error}"]
    if requests is not None and case.prompt_contains:
        sent = "\n".join(m["content"] for m in requests[0].messages) if requests else ""
        problems += [f"prompt lacks {text!r}" for text in case.prompt_contains if text not in sent]
    if error is not None:
        return problems
    if case.has_expect and output != case.expect:
        problems.append(f"output {output!r} != expected {case.expect!r}")
    problems += [p for p in (check_output(c, output) for c in case.checks) if p]
    return problems


def test_skill(skill: Skill, mode: Mode = "fake") -> list[CaseResult]:
    """Run every test case of `skill`; a skill without cases gives one failed result."""
    if not skill.tests:
        return [CaseResult(skill.ref, "-", "failed", "the skill has no test cases")]
    return [run_case(skill, case, i, mode) for i, case in enumerate(skill.tests)]


test_skill.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
