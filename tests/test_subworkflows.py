"""`workflow:` steps: inputs and outputs mapped like a skill, recursion found at load time, parent
and child runs linked in the log and in `engine runs show`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from engine import SpecError, load_workflow, run_workflow
from engine.cli import cli
from engine.config import load_config
from engine.runner import open_store

CHILD = """\
name: label_one
inputs:
  text: {type: string}
  prefix: {type: string, default: "Label"}
steps:
  - id: label
    inputs: {text: "{{ inputs.text }}", prefix: "{{ inputs.prefix }}"}
    llm:
      prompt: "{{ prefix }}: {{ text }}"
      schema: {type: object, properties: {label: {type: string}}, required: [label]}
      max_tokens: 10
outputs:
  label: "{{ steps.label.output.label }}"
"""
PARENT = """\
name: parent
inputs:
  texts: {type: array}
steps:
  - id: each
    for_each: "{{ inputs.texts }}"
    inputs: {text: "{{ item }}"}
    workflow: child.yaml
  - id: one
    inputs: {text: "single"}
    workflow: child.yaml
outputs:
  labels: "{{ steps.each.output }}"
  one: "{{ steps.one.output.label }}"
"""


def label_responder(request):
    return {"label": request.messages[-1]["content"].split(": ", 1)[1].upper()}


def test_sub_workflow_runs_and_links_parent_and_child(project, fake):
    fake.responder = label_responder
    project(CHILD, name="child.yaml")
    wf = project(PARENT)
    result = run_workflow(wf, {"texts": ["a", "b"]})
    assert result.outputs == {"labels": [{"label": "A"}, {"label": "B"}], "one": "SINGLE"}
    each = result.step("each")
    assert each.kind == "workflow" and len(each.child_runs) == 2
    assert result.cost == pytest.approx(each.cost + result.step("one").cost) and result.cost > 0
    store = open_store(load_config().store_path())
    child = store.run(each.child_runs[0])
    assert child["workflow"] == "label_one"
    assert child["tags"] == {"parent_run": result.run_id, "parent_step": "each", "parent_item": 0}
    assert [c["input"]["text"] for c in child["llm_calls"]] == ["a"]

    show = CliRunner().invoke(cli, ["runs", "show", result.run_id])
    assert show.exit_code == 0, show.output
    for run_id in [*each.child_runs, *result.step("one").child_runs]:
        assert f"child run {run_id} (label_one, ok) from step" in show.output
    assert show.output.index(each.child_runs[0]) < show.output.index(each.child_runs[1])
    child_show = CliRunner().invoke(cli, ["runs", "show", each.child_runs[1]])
    assert f"parent: run {result.run_id} step each" in child_show.output
    as_json = json.loads(CliRunner().invoke(cli, ["runs", "show", result.run_id, "--json"]).output)
    assert [c["step"] for c in as_json["children"]] == ["each", "each", "one"]


def test_a_failing_child_fails_the_step_with_its_run(project, fake):
    fake.responder = lambda request: "not json"
    project(CHILD, name="child.yaml")
    wf = project(PARENT)
    result = run_workflow(wf, {"texts": ["a"]}, raise_on_error=False)
    assert result.status == "failed"
    assert "sub-workflow 'label_one' (run " in result.error


def test_inputs_are_checked_against_the_child_at_load_time(project):
    project(CHILD, name="child.yaml")
    wf = project(PARENT.replace('inputs: {text: "single"}', 'inputs: {txt: "single"}'))
    with pytest.raises(SpecError) as info:
        load_workflow(wf)
    (location, field, message), = info.value.problems
    assert field == "steps[1](one).workflow" and location == f"{wf}:11:5"
    assert "missing input(s) text" in message and "unknown input(s) txt" in message


def test_recursion_is_detected_at_load_time(project):
    project(CHILD.replace("steps:\n", "steps:\n  - id: back\n    inputs: {texts: []}\n    workflow: workflow.yaml\n"),
            name="child.yaml")
    wf = project(PARENT)
    with pytest.raises(SpecError, match=r"recursive sub-workflow: workflow.yaml -> child.yaml -> workflow.yaml"):
        load_workflow(wf)
    project(PARENT.replace("child.yaml", "workflow.yaml"))
    with pytest.raises(SpecError, match=r"recursive sub-workflow: workflow.yaml -> workflow.yaml"):
        load_workflow(wf)


def test_a_missing_or_broken_child_is_a_load_error(project):
    wf = project(PARENT)
    with pytest.raises(SpecError, match="no sub-workflow file"):
        load_workflow(wf)
    project(CHILD.replace("max_tokens: 10", "max_tokens: 0"), name="child.yaml")
    with pytest.raises(SpecError, match=r"sub-workflow 'child.yaml' fails to load:\n.*child.yaml:\d+:\d+"):
        load_workflow(wf)


def test_reading_an_output_the_child_does_not_have_is_a_load_error(project):
    project(CHILD, name="child.yaml")
    wf = project(PARENT.replace('one: "{{ steps.one.output.label }}"', 'one: "{{ steps.one.output.labels }}"'))
    with pytest.raises(SpecError) as info:
        load_workflow(wf)
    (location, field, message), = info.value.problems
    assert field == "outputs.one" and "sub-workflow 'label_one' has no output 'labels' (outputs: label)" in message
