"""engine: a declarative workflow engine for LLM pipelines that materializes solved tasks."""

import engine.strict_json  # noqa: F401 - first: it imports jsonschema without a slow optional grammar
from engine.api import Engine
from engine.config import EngineConfig, load_config
from engine.errors import (
    BudgetExceededError,
    EngineError,
    InputError,
    LLMStepError,
    ProviderError,
    RunError,
    SpecError,
    StepError,
    UserError,
)
from engine.runner import RunResult, StepRecord, arun_workflow, run_workflow
from engine.spec import Workflow, load_workflow, workflow_json_schema

__all__ = [
    "BudgetExceededError",
    "Engine",
    "EngineConfig",
    "EngineError",
    "InputError",
    "LLMStepError",
    "ProviderError",
    "RunError",
    "RunResult",
    "SpecError",
    "StepError",
    "StepRecord",
    "UserError",
    "Workflow",
    "arun_workflow",
    "load_config",
    "load_workflow",
    "run_workflow",
    "workflow_json_schema",
]
