"""decision steps: a lookup table keyed by a template, with key normalisation and a declared
behaviour on a miss (error, a default, or an llm fallback whose answer is logged)."""

from __future__ import annotations

from typing import Any

from engine.errors import StepError
from engine.hashing import normalize_text
from engine.spec.models import DecisionSpec, MissDefault, MissLLM
from engine.steps.base import StepContext, StepOutcome
from engine.providers.calls import ProviderCalls, drive
from engine.steps.llm import llm_step_calls
from engine.templating import TemplateError, render_text


def normalize_key(key: str, spec: DecisionSpec) -> str:
    return normalize_text(key, case="case" in spec.normalize, whitespace="whitespace" in spec.normalize,
                          unicode=True)


def _table(spec: DecisionSpec) -> dict[str, Any]:
    if spec._normalized_table is None:
        assert isinstance(spec.table, dict)
        spec._normalized_table = {normalize_key(str(k), spec): v for k, v in spec.table.items()}
    return spec._normalized_table


def run_decision_step(ctx: StepContext, spec: DecisionSpec, values: dict[str, Any]) -> StepOutcome:
    return drive(decision_step_calls(ctx, spec, values))


def decision_step_calls(ctx: StepContext, spec: DecisionSpec, values: dict[str, Any]) -> ProviderCalls[StepOutcome]:
    """`run_decision_step` as a generator of provider calls (only an llm `on_miss` makes any)."""
    try:
        key = render_text(spec.key, values)
    except TemplateError as e:
        raise StepError(ctx.step_id, f"decision key: {e}") from e
    table = _table(spec)
    normalized = normalize_key(key, spec)
    if normalized in table:
        return StepOutcome(output=table[normalized], served_by="decision")
    miss = spec.on_miss
    if isinstance(miss, MissDefault):
        return StepOutcome(output=miss.default, served_by="decision")
    if isinstance(miss, MissLLM):
        return (yield from llm_step_calls(ctx, miss.llm, values))
    raise StepError(ctx.step_id, f"no entry for key '{key}' in the decision table ({len(table)} entries)")
