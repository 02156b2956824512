"""Hostile YAML and inputs: every user-caused failure is one readable line with file:line and
exit 2, never "internal error"; duplicate keys, alias bombs, self-references and nonsense values
are refused; control characters never reach the terminal raw."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.errors import SpecError
from engine.spec import load_workflow

GOOD = """\
name: demo
inputs: {n: {type: integer}}
steps:
  - id: double
    inputs: {n: "{{ inputs.n }}"}
    script: ops.py:double
outputs:
  doubled: "{{ steps.double.output.n }}"
"""
OPS = {"ops.py": "def double(n):\n    return {'n': n * 2, 'text': '\\x1b[31mred\\x9b'}\n"}

LLM = """\
name: llm_demo
steps:
  - id: ask
    llm:
      prompt: "hi"
      schema: {type: object}
      max_tokens: %s
"""


def cli_run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def bomb(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, message", [
    ("name: x\nname: y\nsteps: []\n", "workflow.yaml:2:1: duplicate key 'name' (first at line 1)"),
    ("name: &a [*a]\nsteps: []\n", "workflow.yaml:1:7: an alias refers to a node that contains it"),
    ("name: x\x1b[2J\n", "workflow.yaml:1:8: YAML error: character #x001b is not allowed in YAML"),
    (bomb(), "expands to more than 200,000 values"),
    ("name: " + "[" * 3000 + "]" * 3000 + "\n", "nesting deeper than 100 levels"),
])
def test_hostile_yaml_is_a_clear_error_and_fast(project, text: str, message: str) -> None:
    path = project(text)
    started = time.perf_counter()
    code, _, err = cli_run("validate", str(path))
    assert time.perf_counter() - started < 60  # a blow-up would take hours; generous for loaded CI machines
    assert code == 2 and message.replace("workflow.yaml", str(path)) in err
    assert "internal error" not in err and "Traceback" not in err


def test_alias_bomb_position_map_is_linear(project) -> None:
    # 8 levels: 43 million leaves when expanded, 0.4 KB on disk. The position map walks each node once.
    from engine.spec.positions import PositionMap, YAMLSyntaxError, parse_yaml
    started = time.perf_counter()
    with pytest.raises(YAMLSyntaxError, match="expands"):
        parse_yaml(bomb(8), "bomb.yaml")
    small = bomb(3)  # 6,561 leaves: allowed, and its positions are recorded without re-walking aliases
    data, positions = parse_yaml(small, "ok.yaml")
    assert isinstance(positions, PositionMap) and len(positions.marks) < 100
    assert len(data["d"]) == 9 and time.perf_counter() - started < 30


@pytest.mark.parametrize("cap, message", [
    ("true", "max_tokens: Input should be a valid integer"),
    ("2000000000", "max_tokens: Input should be less than or equal to 1000000"),
    ("0", "max_tokens: Input should be greater than 0"),
    ('"12"', "max_tokens: Input should be a valid integer"),
])
def test_token_caps_are_range_checked(project, cap: str, message: str) -> None:
    path = project(LLM % cap)
    with pytest.raises(SpecError) as e:
        load_workflow(path)
    assert message in str(e.value) and f"{path}:7:" in str(e.value)


def test_undecodable_workflow_file(project) -> None:
    path = project(GOOD)
    path.write_bytes(b"name: demo\n\xff\xfe bad\n")
    code, _, err = cli_run("validate", str(path))
    assert code == 2 and f"{path}:1:1: the file is not UTF-8 text (byte 0xff at offset 11)" in err


def test_schema_file_errors_do_not_echo_a_foreign_file(project, engine_home) -> None:
    secret = engine_home / "secret.txt"
    secret.write_text("type: hunter2-password\n")
    path = project(LLM.replace("schema: {type: object}", f"schema: {{file: {secret}}}") % "10")
    code, _, err = cli_run("validate", str(path))
    assert code == 2 and "invalid JSON Schema" in err and "hunter2" not in err


def test_cli_user_errors_exit_2_with_one_line(project, engine_home, monkeypatch) -> None:
    path = project(GOOD, files=OPS, config=None)
    cases = [
        (["run", str(path), "--inputs-json", "[1, 2]"], "--inputs-json must be a JSON object"),
        (["run", str(path), "--inputs-json", '{"n": NaN}'], "--inputs-json is not valid JSON"),
        (["run", str(path), "-i", "n=2", "--tag", "nokey"], "--tag 'nokey': expected key=value"),
    ]
    for args, message in cases:
        code, _, err = cli_run(*args)
        assert code == 2 and message in err and "internal error" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1


def test_store_that_is_not_a_database_or_unwritable(project, engine_home, monkeypatch) -> None:
    path = project(GOOD, files=OPS, config=None)
    junk = engine_home / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    monkeypatch.setenv("ENGINE_DB", str(junk))
    code, _, err = cli_run("run", str(path), "-i", "n=2", "-q")
    assert code == 2 and "cannot open the store" in err and "internal error" not in err
    monkeypatch.setenv("ENGINE_DB", str(engine_home))  # a directory
    code, _, err = cli_run("run", str(path), "-i", "n=2", "-q")
    assert code == 2 and "cannot open the store" in err


def test_unwritable_batch_output(project, engine_home) -> None:
    path = project(GOOD, files=OPS, config=None)
    items = engine_home / "items.jsonl"
    items.write_text('{"n": 1}\n')
    blocker = engine_home / "blocker"
    blocker.write_text("a file, not a folder")
    code, _, err = cli_run("run", str(path), "--inputs", str(items), "-o", str(blocker / "out.jsonl"), "-q")
    assert code == 2 and "cannot write the results" in err and "internal error" not in err


def test_control_characters_are_escaped_on_the_terminal(project, engine_home) -> None:
    path = project(GOOD, files=OPS, config=None)
    code, out, _ = cli_run("run", str(path), "-i", "n=2", "-q")
    assert code == 0 and "\x1b" not in out and "\x9b" not in out
    assert json.loads(out.replace("\\x9b", "\\u009b"))["doubled"] == 4
    bad = project(GOOD.replace("name: demo", 'name: demo\n"nope\\e[2J": 1'), files=OPS, config=None)
    code, _, err = cli_run("validate", str(bad))
    assert code == 2 and "\x1b" not in err and "unknown key 'nope\\x1b[2J'" in err
    named = project(GOOD.replace("name: demo", 'name: "demo\\e]0;pwned\\a"'), files=OPS, config=None)
    code, _, err = cli_run("validate", str(named))  # not a safe name, and the refusal prints it escaped
    assert code == 2 and "\x1b" not in err and "\x07" not in err and "demo\\x1b]0;pwned\\x07" in err


def test_skill_parameter_of_the_wrong_type(project, engine_home) -> None:
    skill = engine_home / "skills" / "label" / "v1.yaml"
    skill.parent.mkdir(parents=True)
    skill.write_text("""\
name: label
version: 1
description: Label a text.
params: {labels: [a, b]}
inputs: {text: {type: string}}
llm:
  prompt: "Label {{ text }} as one of [[ labels | join(', ') ]]"
  schema: {type: object, properties: {label: {enum: "[[ labels ]]"}}}
  max_tokens: 10
""")
    wf = project("""\
name: uses_demo
inputs: {text: {type: string}}
steps:
  - id: tag
    uses: label@1
    inputs: {text: "{{ inputs.text }}"}
    with: {labels: 5}
""")
    code, _, err = cli_run("validate", str(wf))
    assert code == 2 and "parameter 'labels' must be a list (like its default), not a number" in err
    assert "internal error" not in err
