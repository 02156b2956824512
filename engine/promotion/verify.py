"""Verify an answerer (a script, or a lookup table) against every logged input/output pair.

Each distinct logged input (under the current hashes) is one pair, labelled with its most common
answer. The report gives agreement (on answered pairs), coverage (answered / all pairs), failures
(errors, timeouts, limit kills, invalid outputs), the same on held-out pairs (not shown to the
script writer), and the first mismatches and errors for a person to read.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from engine.hashing import canonical_json
from engine.promotion.mining import Group
from engine.promotion.sandbox import Limits, SandboxResult, run_script
from engine.spec.models import LLMSpec
from engine.steps.llm import parse_and_validate

Answerer = Callable[[list[dict[str, Any]]], list[SandboxResult]]


def script_answerer(code: str, limits: Limits | None = None) -> Answerer:
    return lambda inputs: run_script(code, inputs, limits)


def table_answerer(table: dict[str, Any], key: Callable[[dict[str, Any]], str]) -> Answerer:
    def answer(inputs: list[dict[str, Any]]) -> list[SandboxResult]:
        out = []
        for values in inputs:
            k = key(values)
            out.append(SandboxResult(output=table[k]) if k in table else SandboxResult(abstained=True))
        return out

    return answer


def validated(result: SandboxResult, spec: LLMSpec, schema: dict[str, Any] | None = None) -> SandboxResult:
    """A script's answer must pass the step's schema like an llm reply; otherwise it is a failure.
    A templated schema is checked at run time, against the call's rendered `schema`."""
    if not result.answered or (schema is None and not isinstance(spec.schema_, dict)):
        return result
    if schema is None and spec._templated_schema:
        return result
    try:
        return SandboxResult(output=parse_and_validate(json.dumps(result.output), spec, schema),
                             confidence=result.confidence)
    except ValueError as e:
        return SandboxResult(error=f"invalid output: {e}")


def _stats(items: list[tuple[Group, SandboxResult]]) -> dict[str, Any]:
    answered = [(g, r) for g, r in items if r.answered]
    agree = sum(1 for g, r in answered if canonical_json(r.output) == canonical_json(g.top_output))
    failures = sum(1 for _, r in items if r.error)
    return {"pairs": len(items), "answered": len(answered), "agree": agree, "failures": failures,
            "agreement": agree / len(answered) if answered else 0.0,
            "coverage": len(answered) / len(items) if items else 0.0}


def verify(answerer: Answerer, groups: list[Group], spec: LLMSpec, threshold: float,
           shown: set[str] | None = None) -> dict[str, Any]:
    """Run the answerer over every group and report (see module docstring). When examples were
    shown (a written script), passing also needs agreement on held-out inputs it never saw."""
    shown = shown or set()
    results = [validated(r, spec) for r in answerer([g.values for g in groups])] if groups else []
    items = list(zip(groups, results))
    report = _stats(items)
    report["held_out"] = _stats([(g, r) for g, r in items if g.key not in shown])
    report["weighted_agreement"] = _weighted(items)
    report["threshold"] = threshold
    report["passed"] = report["answered"] > 0 and report["agreement"] >= threshold and (
        not shown or (report["held_out"]["answered"] > 0 and report["held_out"]["agreement"] >= threshold))
    report["mismatches"] = [
        {"input": g.values, "expected": g.top_output, "got": r.output}
        for g, r in items if r.answered and canonical_json(r.output) != canonical_json(g.top_output)][:10]
    report["errors"] = [{"input": g.values, "error": r.error} for g, r in items if r.error][:5]
    report["agreeing_keys"] = [g.key for g, r in items
                               if r.answered and canonical_json(r.output) == canonical_json(g.top_output)]
    return report


def _weighted(items: list[tuple[Group, SandboxResult]]) -> float:
    """Agreement weighted by how often each input was called (what traffic would see)."""
    total = agree = 0
    for g, r in items:
        if r.answered:
            total += g.calls
            agree += g.outputs.get(canonical_json(r.output), 0)
    return agree / total if total else 0.0
