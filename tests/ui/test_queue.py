"""The labelling queue's choices: an enum output is picked from its labels, anything else is edited."""

from __future__ import annotations

import pytest

from engine import run_workflow
from engine.quality import monitor
from engine.quality.queue import choices, review_queue

TEMPLATED = """\
name: sort
inputs: {text: {type: string}, labels: {type: array, items: {type: string}}}
steps:
  - id: label
    inputs: {text: "{{ inputs.text }}", labels: "{{ inputs.labels }}"}
    llm:
      tier: local
      prompt: "Sort: {{ text }}"
      schema:
        type: object
        properties: {label: {enum: "{{ labels }}"}}
        required: [label]
      max_tokens: 12
"""

FREE_TEXT = """\
name: summary
inputs: {text: {type: string}}
steps:
  - id: summarise
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: local
      prompt: "Summarise: {{ text }}"
      schema:
        type: object
        properties: {summary: {type: string}, words: {type: integer}}
        required: [summary]
      max_tokens: 40
"""


@pytest.mark.parametrize("schema, expected", [
    ({"enum": ["a", "b"]}, (["a", "b"], None)),
    ({"type": "object", "properties": {"intent": {"enum": ["x", "y"]}}, "required": ["intent"]},
     ([{"intent": "x"}, {"intent": "y"}], "intent")),
    ({"type": "object", "properties": {"intent": {"enum": ["x"]}, "note": {"type": "string"}},
      "required": ["intent"]}, (None, None)),
    ({"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}, (None, None)),
    ({"type": "string"}, (None, None)),
])
def test_choices(schema, expected):
    assert choices(schema) == expected


def test_a_templated_enum_offers_the_labels_of_that_run(project, fake):
    path = project(TEMPLATED)
    fake.enqueue('{"label": "fx"}')
    run_workflow(path, {"text": "my card is lost", "labels": ["cards", "fx"]})
    monitor.drain()
    (item,) = review_queue(monitor_store())
    assert item.reason == "sample" and item.choices == [{"label": "cards"}, {"label": "fx"}]
    assert item.answers == [{"tier": "local", "model": "small", "output": {"label": "fx"}, "trust": "unverified",
                             "confidence": None, "role": "answered"}]


def test_a_free_text_output_has_no_choices_and_is_edited_as_json(project, fake):
    path = project(FREE_TEXT)
    fake.enqueue('{"summary": "lost card"}')
    run_workflow(path, {"text": "I lost my card yesterday"})
    (item,) = review_queue(monitor_store())
    assert item.choices is None and item.schema["required"] == ["summary"]


def monitor_store():
    from pathlib import Path

    from engine.runner import open_store

    return open_store(Path(".engine/engine.db"))
