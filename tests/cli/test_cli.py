"""The CLI through a real subprocess: exit codes, one-line messages, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli

WF = """\
name: cli_demo
inputs:
  n: {type: integer}
  word: {type: string, default: x}
steps:
  - id: double
    inputs: {n: "{{ inputs.n }}", word: "{{ inputs.word }}"}
    script: ops.py:double
outputs:
  doubled: "{{ steps.double.output.n }}"
  word: "{{ steps.double.output.word }}"
"""
OPS = {"ops.py": "def double(n, word):\n    if n == 13:\n        raise ValueError('unlucky')\n"
                 "    return {'n': n * 2, 'word': word}\n"}


def engine(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_run_prints_outputs_json_and_summary(project, engine_home):
    project(WF, files=OPS, config=None)
    proc = engine("run", "workflow.yaml", "--input", "n=21", "-i", "word=hello world", cwd=engine_home)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"doubled": 42, "word": "hello world"}
    assert "double" in proc.stderr and "script" in proc.stderr and "total:" in proc.stderr


def test_inputs_json(project, engine_home):
    project(WF, files=OPS, config=None)
    proc = engine("run", "workflow.yaml", "--inputs-json", '{"n": 2}', "-q", cwd=engine_home)
    assert proc.returncode == 0 and json.loads(proc.stdout)["doubled"] == 4 and proc.stderr == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "workflow.yaml"], "error: missing input 'n'"),
        (["run", "workflow.yaml", "-i", "n=abc"], "error: input 'n': 'abc' is not of type 'integer'"),
        (["run", "workflow.yaml", "-i", "nope"], "error: --input 'nope': expected key=value"),
        (["run", "workflow.yaml", "--inputs-json", "{bad"], "error: --inputs-json is not valid JSON"),
        (["run", "missing.yaml"], "missing.yaml: no such workflow file"),
        (["run", "broken.yaml"], "broken.yaml:4:1: YAML syntax error: expected ',' or ']', but got '<stream end>' "
                                 "(while parsing a flow sequence at line 3, column 9)"),
        (["runs", "show", "doesnotexist"], "error: no run matches 'doesnotexist'"),
    ],
)
def test_user_errors_exit_2_with_one_message(project, engine_home, args, message):
    project(WF, files={**OPS, "broken.yaml": "name: b\nsteps:\n  - id: [oops\n"}, config=None)
    proc = engine(*args, cwd=engine_home)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_failure_exits_1(project, engine_home):
    project(WF, files=OPS, config=None)
    proc = engine("run", "workflow.yaml", "-i", "n=13", cwd=engine_home)
    assert proc.returncode == 1
    assert "raised ValueError: unlucky" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_debug_shows_traceback(project, engine_home):
    project(WF, files=OPS, config=None)
    proc = engine("--debug", "run", "workflow.yaml", cwd=engine_home)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_validate_and_schema(project, engine_home):
    project(WF, files={**OPS, "bad.yaml": WF.replace("script: ops.py:double", "script: ops.py:triple")},
            config=None)
    runner = CliRunner()
    ok = runner.invoke(cli, ["validate", "workflow.yaml"])
    assert ok.exit_code == 0 and "ok: workflow.yaml (cli_demo v1, 1 steps)" in ok.output
    bad = runner.invoke(cli, ["validate", "bad.yaml"])
    assert bad.exit_code == 2 and "bad.yaml:8:5: steps[0](double).script.function" in bad.output
    schema = runner.invoke(cli, ["schema"])
    assert schema.exit_code == 0 and json.loads(schema.output)["title"] == "engine workflow"


def test_runs_list_and_show(project, engine_home):
    project(WF, files=OPS, config=None)
    runner = CliRunner()
    out = runner.invoke(cli, ["run", "workflow.yaml", "-i", "n=5", "-q"])
    assert out.exit_code == 0, out.output
    listed = runner.invoke(cli, ["runs", "list"])
    assert listed.exit_code == 0 and "cli_demo" in listed.output
    from engine.config import load_config
    from engine.runner import open_store

    run_id = open_store(load_config().store_path()).runs()[0]["id"]
    shown = runner.invoke(cli, ["runs", "show", run_id[:8], "--json"])
    assert shown.exit_code == 0
    record = json.loads(shown.output)
    assert record["outputs"] == {"doubled": 10, "word": "x"} and record["steps"][0]["served_by"] == "script"
    text = runner.invoke(cli, ["runs", "show", run_id])
    assert text.exit_code == 0 and "cli_demo" in text.output and "double" in text.output
