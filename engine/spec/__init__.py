"""The workflow spec: pydantic models, a loader with file:line errors, and a JSON Schema export."""

from engine.spec.loader import load_workflow, load_workflow_text, workflow_json_schema
from engine.spec.models import DecisionSpec, LLMSpec, ModelEntry, ScriptSpec, Step, Workflow

__all__ = [
    "DecisionSpec",
    "LLMSpec",
    "ModelEntry",
    "ScriptSpec",
    "Step",
    "Workflow",
    "load_workflow",
    "load_workflow_text",
    "workflow_json_schema",
]
