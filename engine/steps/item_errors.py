"""What a failed `for_each` item's error says, whichever path ran the item (engine.steps.foreach,
engine.steps.script_items)."""

from __future__ import annotations

from engine.errors import EngineError, StepError
from engine.spec.models import Step


def item_failure(step: Step, index: int, error: EngineError) -> StepError:
    """The step's error when item `index` failed (`on_item_error: fail`): it names the item."""
    failed = error if isinstance(error, StepError) else StepError(step.id, str(error))
    failed.args = (f"step '{step.id}' item {index}: {plain(error, step.id)}",)
    return failed


def plain(error: BaseException, step_id: str) -> str:
    """An item's error without the step prefix."""
    text = str(error)
    prefix = f"step '{step_id}': "
    return text[len(prefix):] if text.startswith(prefix) else text
