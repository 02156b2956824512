"""Skills: resolution, versions, overrides, load-time errors, libraries, `skills test`, `skills new`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import SpecError, run_workflow
from engine.cli import cli
from engine.skills import find_skills
from engine.skills import library as library_mod
from engine.skills.testing import test_skill
from engine.spec import load_workflow

ROOT = Path(__file__).resolve().parents[2]

LABEL_V1 = """\
name: label
version: 1
description: Pick a label.
inputs:
  text: {type: string}
  hint: {type: string, default: none}
params:
  labels: [a, b]
llm:
  tier: local
  system: "Pick one of: [[ labels | join(', ') ]]."
  prompt: "{{ text }} (hint: {{ hint }})"
  schema:
    type: object
    properties: {label: {enum: "[[ labels ]]"}}
    required: [label]
  max_tokens: 8
tests:
  - inputs: {text: x}
    reply: {label: a}
    expect: {label: a}
"""
LABEL_V2 = LABEL_V1.replace("version: 1", "version: 2").replace("max_tokens: 8", "max_tokens: 9")
SHOUT = """\
name: shout
version: 1
description: Upper-case a text.
inputs:
  text: {type: string}
params:
  suffix: "!"
script:
  function: shout.py:shout
  output: {type: object, properties: {text: {type: string}}, required: [text]}
tests:
  - inputs: {text: hi}
    expect: {text: "HI!"}
"""
SKILL_FILES = {
    "skills/demo/label/v1.yaml": LABEL_V1,
    "skills/demo/label/v2.yaml": LABEL_V2,
    "skills/text/shout/v1.yaml": SHOUT,
    "skills/text/shout/shout.py": "def shout(text, suffix):\n    return {'text': text.upper() + suffix}\n",
}


def workflow(uses: str, with_: str = "", inputs: str = '{text: "{{ inputs.text }}"}') -> str:
    return textwrap.dedent(f"""\
        name: wf
        inputs: {{text: {{type: string}}}}
        steps:
          - id: s
            uses: {uses}
            inputs: {inputs}
        """) + (textwrap.indent(textwrap.dedent(with_), "    ") if with_ else "")


def test_uses_expands_to_an_llm_step_with_params_filled_in(project, fake):
    wf = load_workflow(project(workflow("label@1"), files=SKILL_FILES))
    spec = wf.steps[0].llm
    assert spec.system == "Pick one of: a, b."
    assert spec.schema_["properties"]["label"] == {"enum": ["a", "b"]}
    assert spec.max_tokens == 8
    assert wf.steps[0].inputs == {"text": "{{ inputs.text }}", "hint": "none"}  # input default filled
    fake.enqueue({"label": "b"})
    assert run_workflow(wf, {"text": "hello"}).outputs == {"s": {"label": "b"}}
    assert fake.requests[0].messages[1]["content"] == "hello (hint: none)"


def test_versions_and_latest(project):
    files = SKILL_FILES
    assert load_workflow(project(workflow("label@1"), files=files)).steps[0].llm.max_tokens == 8
    assert load_workflow(project(workflow("label@2"), files=files)).steps[0].llm.max_tokens == 9
    assert load_workflow(project(workflow("label"), files=files)).steps[0].llm.max_tokens == 9


def test_overrides_tier_cap_and_labels(project, fake):
    path = project(workflow("label@1", """\
        with:
          labels: [spam, ham]
          tier: premium
          max_tokens: 5
        """), files=SKILL_FILES)
    spec = load_workflow(path).steps[0].llm
    assert (spec.tier, spec.max_tokens, spec.system) == ("premium", 5, "Pick one of: spam, ham.")
    fake.enqueue({"label": "ham"})
    result = run_workflow(path, {"text": "x"})
    assert result.step("s").model == "large" and fake.requests[0].max_tokens == 5
    fake.enqueue({"label": "a"}, {"label": "a"})  # a default label is no longer allowed
    assert not run_workflow(path, {"text": "x"}, raise_on_error=False).ok


def test_script_skill_gets_params_as_arguments(project):
    path = project(workflow("shout@1", "with: {suffix: '?'}\n"), files=SKILL_FILES)
    assert run_workflow(path, {"text": "hey"}).outputs == {"s": {"text": "HEY?"}}


@pytest.mark.parametrize("uses, with_, inputs, message", [
    ("lable@1", "", None, "unknown skill 'lable' (skills: label@1,2, shout@1)"),
    ("label@7", "", None, "skill 'label' has no version 7 (versions: label@1, label@2)"),
    ("label@x", "", None, "'label@x' must be 'name@version'"),
    ("label@1", "with: {colour: red}\n", None, "label@1 has no parameter 'colour' (overridable: labels, tier"),
    ("label@1", "", "{hint: x}", "label@1: missing input(s) text (inputs: text, hint)"),
    ("label@1", "", '{text: x, mood: y}', "unknown input(s) mood"),
])
def test_load_errors_name_what_exists(project, uses, with_, inputs, message):
    kwargs = {"inputs": inputs} if inputs else {}
    path = project(workflow(uses, with_, **kwargs), files=SKILL_FILES)
    with pytest.raises(SpecError) as info:
        load_workflow(path)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{path}:")
    assert ":5:" in str(info.value) or ":6:" in str(info.value) or ":7:" in str(info.value)


def test_uses_step_rejects_step_kind_keys(project):
    text = workflow("label@1") + "    max_tokens: 3\n"
    with pytest.raises(SpecError, match="a 'uses:' step takes only id, uses, with, inputs, when"):
        load_workflow(project(text, files=SKILL_FILES))


def test_broken_skill_file_reports_its_own_location(project):
    files = {**SKILL_FILES, "skills/demo/label/v1.yaml": LABEL_V1.replace("max_tokens: 8", "max_tokens: 8\n  colour: red")}
    with pytest.raises(SpecError) as info:
        load_workflow(project(workflow("label@1"), files=files))
    assert "label/v1.yaml:" in str(info.value) and "unknown key 'colour'" in str(info.value)


def test_libraries_by_path_config_and_entry_point(project, tmp_path, monkeypatch):
    other = tmp_path / "lib"
    for name, text in SKILL_FILES.items():
        target = other / name.removeprefix("skills/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    path = project(workflow("shout@1"), files={})
    with pytest.raises(SpecError, match="unknown skill 'shout'"):
        load_workflow(path)
    monkeypatch.setenv("ENGINE_SKILLS_PATH", str(other))
    assert load_workflow(path).steps[0].script is not None
    monkeypatch.delenv("ENGINE_SKILLS_PATH")
    (path.parent / "engine.yaml").write_text((path.parent / "engine.yaml").read_text() + f"skills: [{other}]\n")
    assert load_workflow(path).steps[0].script is not None
    (path.parent / "engine.yaml").write_text("")

    class EntryPoint:
        name = "teamlib"

        def load(self):
            return lambda: other

    monkeypatch.setattr(library_mod, "entry_points", lambda group: [EntryPoint()] if group == "engine.skills" else [])
    index = find_skills(path.parent)
    assert index.entry("shout", 1).library.label == "entry point teamlib"
    assert load_workflow(path).steps[0].script is not None


def test_project_library_shadows_later_ones(project, tmp_path, monkeypatch):
    other = tmp_path / "lib" / "demo" / "label"
    other.mkdir(parents=True)
    (other / "v1.yaml").write_text(LABEL_V1.replace("max_tokens: 8", "max_tokens: 99"))
    monkeypatch.setenv("ENGINE_SKILLS_PATH", str(tmp_path / "lib"))
    path = project(workflow("label@1"), files=SKILL_FILES)
    assert load_workflow(path).steps[0].llm.max_tokens == 8
    assert [e.path for e in find_skills(path.parent).shadowed] == [other / "v1.yaml"]


def test_skill_test_cases_pass_and_fail(project):
    project(workflow("label@1"), files=SKILL_FILES)
    index = find_skills(Path.cwd())
    assert [r.status for r in test_skill(index.load("label", 1))] == ["passed"]
    broken = LABEL_V1.replace("expect: {label: a}", "expect: {label: b}")
    project(workflow("label@1"), files={**SKILL_FILES, "skills/demo/label/v1.yaml": broken})
    results = test_skill(find_skills(Path.cwd()).load("label", 1))
    assert results[0].status == "failed" and "!= expected" in results[0].message


def test_cli_skills_list_show_test(project):
    project(workflow("label@1"), files=SKILL_FILES)
    runner = CliRunner()
    listed = runner.invoke(cli, ["skills", "list"])
    assert listed.exit_code == 0 and "label" in listed.output and "@1, @2" in listed.output
    shown = runner.invoke(cli, ["skills", "show", "label@2"])
    assert shown.exit_code == 0 and "Pick one of: a, b." in shown.output and "max_tokens: 9" in shown.output
    tested = runner.invoke(cli, ["skills", "test"])
    assert tested.exit_code == 0, tested.output
    assert "3 passed, 0 failed" in tested.output
    missing = runner.invoke(cli, ["skills", "show", "nope"])
    assert missing.exit_code == 2 and "unknown skill 'nope'" in missing.output


def test_cli_skills_new_scaffolds_passing_skills_and_next_versions(project):
    project(workflow("label@1"), files={})
    runner = CliRunner()
    for kind in ("llm", "script"):
        made = runner.invoke(cli, ["skills", "new", f"my_{kind}", "--kind", kind, "--group", "mine"])
        assert made.exit_code == 0, made.output
        assert (Path("skills/mine") / f"my_{kind}" / "v1.yaml").is_file()
    again = runner.invoke(cli, ["skills", "new", "my_llm"])
    assert "v2.yaml" in again.output
    tested = runner.invoke(cli, ["skills", "test"])
    assert tested.exit_code == 0 and "3 passed, 0 failed" in tested.output, tested.output


STARTER = find_skills(ROOT)


@pytest.mark.parametrize("entry", [e for e in STARTER.all() if e.library.path == ROOT / "skills"],
                         ids=lambda e: f"{e.name}@{e.version}")
def test_starter_library(entry):
    skill = STARTER.load(entry.name, entry.version)
    results = test_skill(skill)
    assert len(skill.tests) >= 2
    assert all(r.status == "passed" for r in results), [(r.case, r.message) for r in results]


def test_starter_library_covers_the_basics():
    assert {"classify", "extract_fields", "summarize", "normalize_text"} <= set(STARTER.names())


def test_review_digest_example_runs_on_the_starter_library(fake):
    """examples/review_digest is made of starter skills only; it loads and runs offline."""
    from engine import EngineConfig

    config = EngineConfig.model_validate({"tiers": {"local": [{"model": "fake:small"}]}})
    wf = load_workflow(ROOT / "examples" / "review_digest" / "workflow.yaml", config=config)
    assert [s.kind for s in wf.steps] == ["script", "script", "llm", "llm"]
    # sentiment and summary read only `redact`: they run at the same time, so answer by prompt
    fake.responder = lambda request: ({"label": "complaint"} if "label" in request.messages[0]["content"]
                                      else {"summary": "Broken on arrival; wants a refund."})
    result = run_workflow(wf, {"review": "  Arrived  BROKEN. Mail me at ada@example.org for the refund! "},
                          config=config, store=False)
    assert result.outputs == {"sentiment": "complaint", "summary": "Broken on arrival; wants a refund.",
                              "redacted": {"email": 1}}
    assert all("ada@example.org" not in r.messages[1]["content"] for r in fake.requests)
    assert any("praise, complaint, question" in r.messages[0]["content"] for r in fake.requests)


def test_editor_schema_knows_uses_steps():
    import jsonschema
    import yaml

    from engine.spec import workflow_json_schema

    schema = workflow_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    example = yaml.safe_load((ROOT / "examples" / "review_digest" / "workflow.yaml").read_text())
    assert list(validator.iter_errors(example)) == []
    example["steps"][0]["uses"] = "Not A Ref"
    assert list(validator.iter_errors(example))


# --- skill files and their templates are read safely -------------------------------------------


def _validate(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["validate", str(path)])
    return result.exit_code, result.stderr


def _fails_cleanly(path: Path, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        load_workflow(path)
    assert fragment in str(info.value) and str(info.value).startswith(f"{path}:"), str(info.value)
    code, err = _validate(path)
    assert code == 2 and fragment in err and "Traceback" not in err and "internal error" not in err, err


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_a_skill_template_file_that_is_a_device_or_pipe_is_refused(project, engine_home, target):
    import os

    prompt = "skills/demo/label/prompt.txt"
    files = {**SKILL_FILES, "skills/demo/label/v1.yaml": LABEL_V1.replace(
        'prompt: "{{ text }} (hint: {{ hint }})"', f"prompt: {{file: {'/dev/zero' if target == '/dev/zero' else 'prompt.txt'}}}")}
    path = project(workflow("label@1"), files=files)
    if target == "fifo":
        os.mkfifo(engine_home / prompt)  # nothing ever writes to it: reading it would wait for ever
    named = "/dev/zero" if target == "/dev/zero" else str(engine_home / prompt)
    _fails_cleanly(path, f"label@1: cannot read '{named}': not a regular file")
    shown = CliRunner().invoke(cli, ["skills", "show", "label@1"])
    assert shown.exit_code == 2 and f"cannot read '{named}': not a regular file" in shown.output, shown.output
    assert "Traceback" not in shown.output and "internal error" not in shown.output


def test_a_skill_template_file_over_the_size_limit_is_refused(project, engine_home):
    from engine.spec.positions import MAX_FILE_BYTES

    files = {**SKILL_FILES, "skills/demo/label/v1.yaml": LABEL_V1.replace(
        'prompt: "{{ text }} (hint: {{ hint }})"', "prompt: {file: big.txt}")}
    path = project(workflow("label@1"), files=files)
    with open(engine_home / "skills/demo/label/big.txt", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    _fails_cleanly(path, f"is {MAX_FILE_BYTES + 1:,} bytes (at most {MAX_FILE_BYTES:,})")


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "nowhere"])
def test_a_skill_file_that_is_not_a_regular_file_is_refused(project, engine_home, target):
    import os

    path = project(workflow("label@1"), files=SKILL_FILES)
    skill = engine_home / "skills/demo/label/v1.yaml"
    skill.unlink()
    if target == "fifo":
        os.mkfifo(skill)
    else:
        skill.symlink_to(target if target == "/dev/zero" else engine_home / "gone.yaml")
    _fails_cleanly(path, "not a regular file" if target != "nowhere" else "cannot read the skill file")
    assert str(skill) in str(pytest.raises(SpecError, load_workflow, path).value)


@pytest.mark.parametrize("template, budget", [
    # ten times longer at each step: 10**8 characters
    ("[[ labels | join(',') | replace('a', 'aaaaaaaaaa')" + " | replace('a', 'aaaaaaaaaa')" * 7 + " ]]",
     "replace() would make more than 10,000,000 characters"),
    ("[[ labels * 100000000 ]]", "repeating a value 100,000,000 times makes more than 10,000,000"),
    ("[% for a in range(1000) %][% for b in range(1000) %][% for c in range(1000) %]x"
     "[% endfor %][% endfor %][% endfor %]", "more than 1,000,000 loop steps"),
])
def test_params_templates_keep_the_render_budget(project, template, budget):
    files = {**SKILL_FILES, "skills/demo/label/v1.yaml": LABEL_V1.replace(
        "system: \"Pick one of: [[ labels | join(', ') ]].\"", f'system: "{template}"')}
    assert files["skills/demo/label/v1.yaml"] != LABEL_V1
    path = project(workflow("label@1"), files=files)
    _fails_cleanly(path, f"template render budget: {budget}")
    with pytest.raises(SpecError) as info:
        load_workflow(path)
    assert ":5:" in str(info.value) and "steps[0](s).uses: label@1: params template" in str(info.value)
