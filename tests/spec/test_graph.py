"""The step graph: derived from template references, cycles are load-time errors, Mermaid output."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from engine import SpecError, load_workflow
from engine.cli import cli as main
from engine.spec.graph import dependencies, mermaid

WF = """\
name: g
inputs: {text: {type: string}, items: {type: array}}
steps:
  - id: a
    inputs: {text: "{{ inputs.text }}"}
    script: ops.py:same
  - id: b
    inputs: {text: "{{ steps.a.output }}"}
    script: ops.py:same
  - id: c
    when: "steps.a.output != ''"
    for_each: "{{ inputs.items }}"
    inputs: {text: "{{ item }}"}
    script: ops.py:same
  - id: d
    inputs: {x: "{{ steps.b.output }} {{ steps.c.output | length }}"}
    script: ops.py:same
"""
OPS = {"ops.py": "def same(text=None, x=None):\n    return text if x is None else x\n"}


def test_dependencies_come_from_inputs_when_and_for_each(project):
    wf = load_workflow(project(WF, files=OPS))
    assert dependencies(wf.steps) == {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def test_mermaid_text(project):
    text = mermaid(load_workflow(project(WF, files=OPS)))
    assert text.startswith("flowchart TD\n")
    for edge in ("a --> b", "a --> c", "b --> d", "c --> d"):
        assert f"    {edge}\n" in text
    assert 'c["c<br/>script<br/>for_each item"]' in text


def test_validate_graph_prints_mermaid(project):
    path = project(WF, files=OPS)
    out = CliRunner().invoke(main, ["validate", "--graph", str(path)])
    assert out.exit_code == 0, out.output
    assert "flowchart TD" in out.output and "    b --> d" in out.output
    plain = CliRunner().invoke(main, ["validate", str(path)])
    assert plain.output.startswith("ok: ") and "flowchart" not in plain.output


def test_a_cycle_is_a_load_time_error_naming_the_steps(project):
    text = WF.replace('inputs: {text: "{{ steps.a.output }}"}', 'inputs: {text: "{{ steps.d.output }}"}')
    path = project(text, files=OPS)
    with pytest.raises(SpecError) as info:
        load_workflow(path)
    problems = [p for p in info.value.problems if "cycle" in p[2]]
    assert problems, info.value.problems
    location, field, message = problems[0]
    assert "b -> d -> b" in message
    assert field == "steps[1](b).inputs" and location == f"{path}:8:5"
    out = CliRunner().invoke(main, ["validate", str(path)])
    assert out.exit_code == 2 and "cycle" in out.output


def test_a_step_reading_itself_is_a_cycle(project):
    path = project(WF.replace('inputs: {text: "{{ steps.a.output }}"}', 'inputs: {text: "{{ steps.b.output }}"}'),
                   files=OPS)
    with pytest.raises(SpecError, match="cycle: b -> b"):
        load_workflow(path)


def test_the_json_schema_has_the_new_keys():
    from engine.spec import workflow_json_schema

    schema = workflow_json_schema()
    step = schema["$defs"]["Step"]["properties"]
    for key in ("for_each", "as", "concurrency", "on_item_error", "workflow"):
        assert key in step, key
    llm = schema["$defs"]["LLMSpec"]["properties"]
    assert "context" in llm
    context = schema["$defs"]["ContextSpec"]["properties"]
    assert {"strategy", "max_input_tokens", "input", "reduce", "concurrency"} <= set(context)
    strategy = context["strategy"]
    enums = [set(o["enum"]) for o in strategy.get("anyOf", [strategy]) if "enum" in o]
    assert enums == [{"truncate", "chunk"}]  # or none: compress alone
    assert "compress" in context
    assert set(schema["$defs"]["CompressSpec"]["properties"]["mode"]["enum"]) == {"extractive", "tokens"}
    assert "for_each" in schema["$defs"]["UsesStep"]["properties"]
