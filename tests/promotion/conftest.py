"""Shared pieces for promotion tests: a labelling workflow and a fake that labels by length."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from engine.providers.base import CompletionRequest
from engine.runner import open_store

WORKFLOW = """\
name: label
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: local
      prompt: "Label this: {{ text }}"
      schema:
        type: object
        properties: {label: {enum: [short, long]}}
        required: [label]
        additionalProperties: false
      max_tokens: 12
      quality: {reference: local}     # the labeller is right: its answers are the reference
      promote: {spot_check: 0%s}
"""


def label_of(request: CompletionRequest) -> dict[str, Any]:
    text = request.messages[1]["content"].removeprefix("Label this: ")
    return {"label": "long" if len(text.strip()) >= 6 else "short"}


@pytest.fixture
def labeller(fake: Any) -> Any:
    fake.responder = label_of
    return fake


@pytest.fixture
def label_wf(project: Callable[..., Path]) -> Callable[..., Path]:
    def write(promote: str = "") -> Path:
        # `promote` adds keys (", spot_check: 1.0, ..."); a key given twice is a YAML error now.
        overrides = promote.lstrip(", ")
        keys = ", ".join(k for k in ("" if "spot_check" in overrides else "spot_check: 0", overrides) if k)
        return project(WORKFLOW.replace("{spot_check: 0%s}", "{" + keys + "}"))

    return write


@pytest.fixture
def store() -> Any:
    return open_store(Path(".engine/engine.db"))


def dumps(value: Any) -> str:
    return json.dumps(value)
