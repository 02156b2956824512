"""script steps: a deterministic Python callable, called with the step's declared inputs."""

from __future__ import annotations

import json
from typing import Any

from engine import strict_json
from engine.errors import StepError
from engine.spec.models import ScriptSpec
from engine.steps.base import StepContext, StepOutcome


def run_script_step(ctx: StepContext, spec: ScriptSpec, values: dict[str, Any]) -> StepOutcome:
    fn = spec._callable
    if fn is None:  # pragma: no cover - the loader always resolves it
        raise StepError(ctx.step_id, f"script '{spec.function}' was not resolved")
    try:
        output = fn(**values)
    except Exception as e:  # noqa: BLE001 - user code; reported as a step failure
        raise StepError(ctx.step_id, f"script '{spec.function}' raised {type(e).__name__}: {e}") from e
    try:
        output = json.loads(json.dumps(output, allow_nan=False))
        strict_json.check(output)
    except (TypeError, ValueError, RecursionError) as e:
        raise StepError(ctx.step_id, f"script '{spec.function}' returned non-JSON data: {e}") from e
    if isinstance(spec.schema_, dict):
        problems = strict_json.schema_problems(spec.schema_, output, limit=1)
        if problems:
            raise StepError(ctx.step_id, f"script output fails its schema: {problems[0]}")
    return StepOutcome(output=output, served_by="script")
