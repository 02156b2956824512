"""One module per step kind: script, decision, llm."""

from engine.steps.base import StepContext, StepOutcome
from engine.steps.decision import run_decision_step
from engine.steps.llm import run_llm_step
from engine.steps.script import run_script_step

__all__ = ["StepContext", "StepOutcome", "run_decision_step", "run_llm_step", "run_script_step"]
