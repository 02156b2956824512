"""script steps: a deterministic Python callable, called with the step's declared inputs."""

from __future__ import annotations

import json
from typing import Any

from engine import strict_json
from engine.errors import StepError
from engine.spec.models import ScriptSpec
from engine.steps.base import StepContext, StepOutcome


class ScriptRunner:
    """A script step's callable and output checks, looked up once: `runner(values)` is the
    checked output of one call, or raises the step's `StepError`. `for_each` makes one per step
    and calls it once per item."""

    __slots__ = ("step_id", "function", "fn", "schema")

    def __init__(self, step_id: str, spec: ScriptSpec):
        fn = spec._callable
        if fn is None:  # pragma: no cover - the loader always resolves it
            raise StepError(step_id, f"script '{spec.function}' was not resolved")
        self.step_id, self.function, self.fn = step_id, spec.function, fn
        self.schema = spec.schema_ if isinstance(spec.schema_, dict) else None

    def __call__(self, values: dict[str, Any]) -> Any:
        try:
            output = self.fn(**values)
        except Exception as e:  # noqa: BLE001 - user code; reported as a step failure
            raise StepError(self.step_id, f"script '{self.function}' raised {type(e).__name__}: {e}") from e
        kind = type(output)
        # A value JSON gives back as it is (a small int, a finite float, valid text, true/false/null)
        # skips the round trip; anything else is copied through JSON and checked.
        if not ((kind is int and output.bit_length() <= 64) or kind is bool or output is None
                or (kind is float and output - output == 0.0) or (kind is str and _valid_text(output))):
            try:
                output = json.loads(json.dumps(output, allow_nan=False))
                strict_json.check(output)
            except (TypeError, ValueError, RecursionError) as e:
                raise StepError(self.step_id, f"script '{self.function}' returned non-JSON data: {e}") from e
        if self.schema is not None:
            problems = strict_json.schema_problems(self.schema, output, limit=1)
            if problems:
                raise StepError(self.step_id, f"script output fails its schema: {problems[0]}")
        return output


def _valid_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def run_script_step(ctx: StepContext, spec: ScriptSpec, values: dict[str, Any]) -> StepOutcome:
    return StepOutcome(output=ScriptRunner(ctx.step_id, spec)(values), served_by="script")
