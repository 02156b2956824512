from __future__ import annotations

import json
import textwrap

import pytest

from engine.errors import SpecError
from engine.spec import load_workflow, workflow_json_schema

GOOD = """\
name: demo
version: 2
inputs:
  text: {type: string}
steps:
  - id: clean
    inputs: {text: "{{ inputs.text }}"}
    script: helpers.py:clean
  - id: label
    inputs: {text: "{{ steps.clean.output }}"}
    llm:
      tier: local
      system: Classify the text.
      prompt: "Text: {{ text }}"
      schema: {type: object, properties: {label: {enum: [a, b]}}, required: [label]}
      max_tokens: 10
      escalate: [premium]
outputs:
  label: "{{ steps.label.output.label }}"
"""
HELPERS = {"helpers.py": "def clean(text):\n    return text.strip()\n"}


def errors_of(project, text, **kw) -> SpecError:
    path = project(text, files=kw.pop("files", HELPERS), **kw)
    with pytest.raises(SpecError) as info:
        load_workflow(path)
    return info.value


def test_good_workflow_loads(project):
    wf = load_workflow(project(GOOD, files=HELPERS))
    assert wf.name == "demo" and wf.version == 2
    assert [s.kind for s in wf.steps] == ["script", "llm"]
    assert wf.steps[0].script._callable("  x ") == "x"
    assert wf.steps[1].llm.escalate == ["premium"]


def test_yaml_syntax_error_names_file_line_and_column(project):
    err = errors_of(project, "name: demo\nsteps:\n  - id: a\n    script: [unclosed\n")
    loc, _, msg = err.problems[0]
    assert loc.endswith("workflow.yaml:5:1") or loc.endswith("workflow.yaml:4:13"), loc
    assert "YAML syntax error" in msg


@pytest.mark.parametrize(
    "change, line, field, fragment",
    [
        (("      max_tokens: 10\n", ""), 11, "steps[1](label).llm.max_tokens", "missing required field 'max_tokens'"),
        (("      max_tokens: 10\n", "      max_tokens: 10\n      colour: red\n"), 17, "steps[1](label).llm.colour",
         "unknown key 'colour'"),
        (("tier: local", "tier: gold"), 12, "steps[1](label).llm.tier", "unknown tier 'gold'"),
        (("escalate: [premium]", "escalate: [platinum]"), 17, "steps[1](label).llm.escalate[0]",
         "unknown tier 'platinum'"),
        (("{{ steps.clean.output }}", "{{ steps.nope.output }}"), 10, "steps[1](label).inputs",
         "unknown step 'steps.nope'"),
        (("{{ inputs.text }}", "{{ steps.label.output }}"), 7, "steps[0](clean).inputs",
         "steps form a cycle: clean -> label -> clean"),
        (("{{ inputs.text }}", "{{ inputs.missing }}"), 7, "steps[0](clean).inputs", "unknown input 'inputs.missing'"),
        (("id: label", "id: clean"), 9, "steps[1](clean).id", "duplicate step id 'clean'"),
        (("{enum: [a, b]}", "{type: bogus}"), 15, "steps[1](label).llm.schema", "invalid JSON Schema"),
        (("Text: {{ text }}", "Text: {{ text "), 14, "steps[1](label).llm.prompt", "template syntax error"),
        (("Text: {{ text }}", "Text: {{ body }}"), 14, "steps[1](label).llm.prompt", "undeclared variable(s) body"),
        (("helpers.py:clean", "helpers.py:nothing"), 8, "steps[0](clean).script.function",
         "has no attribute 'nothing'"),
        (("{{ steps.label.output.label }}", "{{ steps.label.result }}"), 19, "outputs.label",
         "exposes only '.output'"),
    ],
)
def test_load_errors_name_location_and_field(project, change, line, field, fragment):
    text = GOOD.replace(*change)
    assert text != GOOD
    err = errors_of(project, text)
    hits = [p for p in err.problems if fragment in p[2]]
    assert hits, err.problems
    loc, got_field, _ = hits[0]
    assert loc.split(":")[-2] == str(line), (loc, err.problems)
    assert got_field == field
    assert "workflow.yaml:" in str(err)


def test_every_problem_is_reported_at_once(project):
    text = GOOD.replace("tier: local", "tier: gold").replace("Text: {{ text }}", "Text: {{ body }}")
    err = errors_of(project, text)
    assert len(err.problems) == 2


def test_step_needs_exactly_one_kind(project):
    text = GOOD.replace("    script: helpers.py:clean\n", "")
    err = errors_of(project, text)
    assert any("exactly one of script, decision, llm" in p[2] for p in err.problems)


def test_files_for_prompt_schema_and_table(project):
    wf = project(
        """\
        name: files
        inputs: {q: {type: string}}
        steps:
          - id: ask
            inputs: {q: "{{ inputs.q }}"}
            llm:
              system: {file: prompts/system.txt}
              prompt: {file: prompts/ask.j2}
              schema: {file: schemas/answer.json}
              max_tokens: 5
          - id: route
            inputs: {label: "{{ steps.ask.output.label }}"}
            decision: {key: "{{ label }}", table: routes.csv}
        """,
        files={
            "prompts/system.txt": "Be brief.",
            "prompts/ask.j2": "Q: {{ q }}",
            "schemas/answer.json": json.dumps({"type": "object", "properties": {"label": {"type": "string"}}}),
            "routes.csv": "label,team\nA,alpha\nB,beta\n",
        },
    )
    loaded = load_workflow(wf)
    assert loaded.steps[0].llm.system == "Be brief."
    assert loaded.steps[0].llm.prompt == "Q: {{ q }}"
    assert loaded.steps[0].llm.schema_["properties"]["label"]["type"] == "string"
    assert loaded.steps[1].decision.table == {"A": "alpha", "B": "beta"}


def test_missing_file_is_a_located_error(project):
    err = errors_of(project, GOOD.replace("system: Classify the text.", "system: {file: nowhere.txt}"))
    assert any("cannot read" in p[2] and p[1] == "steps[1](label).llm.system.file" for p in err.problems)


def test_pydantic_model_as_schema(project):
    wf = project(
        """\
        name: typed
        inputs: {q: {type: string}}
        steps:
          - id: ask
            inputs: {q: "{{ inputs.q }}"}
            llm: {prompt: "{{ q }}", schema: "models.py:Answer", max_tokens: 5}
        """,
        files={"models.py": "from pydantic import BaseModel\nclass Answer(BaseModel):\n    label: str\n"},
    )
    spec = load_workflow(wf).steps[0].llm
    assert spec._pydantic_model.__name__ == "Answer"
    assert spec.schema_["required"] == ["label"]


def test_not_a_mapping(project):
    err = errors_of(project, "- just\n- a list\n")
    assert "must be a mapping" in str(err)


def test_json_schema_of_the_format_describes_steps():
    schema = workflow_json_schema()
    assert schema["title"] == "engine workflow"
    defs = schema["$defs"]
    assert "max_tokens" in defs["LLMSpec"]["required"]
    assert defs["Step"]["additionalProperties"] is False
    assert "schema" in defs["LLMSpec"]["properties"]


def test_dict_source(project):
    project("name: x\nsteps: []\n")  # writes the fake config
    wf = load_workflow({"name": "d", "steps": [{"id": "a", "decision": {"key": "k", "table": {"k": 1}}}]})
    assert wf.steps[0].decision.table == {"k": 1}
    _ = textwrap


def test_every_shipped_workflow_validates_against_the_editor_schema():
    """The JSON Schema given to editors accepts what the loader accepts (shorthands included)."""
    from pathlib import Path

    import jsonschema
    import yaml

    root = Path(__file__).resolve().parents[2]
    validator = jsonschema.Draft202012Validator(workflow_json_schema())
    files = [p for d in ("workflows", "examples") for p in (root / d).rglob("*.yaml")
             if p.name != "engine.yaml" and "benchmarks" not in p.parts and "promotions" not in p.parts]
    assert files
    for path in files:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], (path, errors[:3])
