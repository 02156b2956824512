"""Bad input that used to crash or hang: each ends with exit 2 and one clear message (file, line,
field where there is one), or works. Deep sub-workflow chains, special and oversized files, lone
surrogates, template bombs, unsafe workflow names, non-positive counts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.errors import InputError, SpecError
from engine.spec import load_workflow
from engine.spec.loader import MAX_SUBWORKFLOW_DEPTH

SCRIPT = """\
name: {name}
inputs: {{text: {{type: string}}}}
steps:
  - id: echo
    inputs: {{text: "{{{{ inputs.text }}}}"}}
    script: ops.py:echo
outputs:
  text: "{{{{ steps.echo.output.text }}}}"
"""
OPS = {"ops.py": "def echo(text):\n    return {'text': text}\n\ndef items(n):\n    return list(range(n))\n"}


def cli_run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def clean(err: str) -> bool:
    return "internal error" not in err and "Traceback" not in err


# --- sub-workflow depth ------------------------------------------------------------------------


def chain(root: Path, depth: int) -> Path:
    """wf0.yaml -> wf1.yaml -> ... -> wf{depth-1}.yaml (the last one runs a script)."""
    (root / "ops.py").write_text(OPS["ops.py"])
    for i in range(depth):
        if i == depth - 1:
            text = SCRIPT.format(name=f"wf{i}")
        else:
            text = (f"name: wf{i}\ninputs: {{text: {{type: string}}}}\nsteps:\n  - id: sub\n"
                    f"    workflow: wf{i + 1}.yaml\n    inputs: {{text: \"{{{{ inputs.text }}}}\"}}\n"
                    f"outputs:\n  text: \"{{{{ steps.sub.output.text }}}}\"\n")
        (root / f"wf{i}.yaml").write_text(text)
    return root / "wf0.yaml"


def test_a_sub_workflow_chain_200_deep_is_refused_with_the_chain(engine_home: Path) -> None:
    top = chain(engine_home, 200)
    with pytest.raises(SpecError) as e:
        load_workflow(top)
    text = str(e.value)
    assert f"sub-workflows nest more than {MAX_SUBWORKFLOW_DEPTH} workflows deep" in text
    assert "wf0.yaml -> wf1.yaml -> wf2.yaml -> ..." in text and "-> wf32.yaml" in text
    assert f"{top}:" in text and "steps[0](sub).workflow" in text
    assert len(e.value.problems) == 1 and e.value.problems[0][0].startswith(f"{top}:5:")  # the top file's step
    code, _, err = cli_run("validate", str(top))
    assert code == 2 and "nest more than 32" in err and clean(err) and len(err.strip().splitlines()) == 1


def test_a_chain_at_the_depth_limit_loads_and_runs(engine_home: Path) -> None:
    top = chain(engine_home, MAX_SUBWORKFLOW_DEPTH)
    code, out, err = cli_run("run", str(top), "-i", "text=deep", "-q")
    assert code == 0 and json.loads(out) == {"text": "deep"}, err


# --- special and oversized files ---------------------------------------------------------------

LLM = """\
name: files
inputs: {text: {type: string}}
steps:
  - id: ask
    inputs: {text: "{{ inputs.text }}"}
    llm:
      prompt: "Label {{ text }}"
      schema: %s
      max_tokens: 10
"""
TABLE = """\
name: files
inputs: {text: {type: string}}
steps:
  - id: look
    inputs: {text: "{{ inputs.text }}"}
    decision:
      key: "{{ text }}"
      table: %s
"""


def sparse(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (a hole): refused before it is read."""
    with path.open("wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize("text", [LLM % "{file: /dev/zero}", TABLE % "/dev/zero", TABLE % "{file: /dev/zero}"])
def test_a_device_as_a_schema_or_table_is_refused(project, text: str) -> None:
    path = project(text)
    code, _, err = cli_run("validate", str(path))
    assert code == 2 and clean(err)
    assert "cannot read '/dev/zero': not a regular file" in err and f"{path}:" in err


def test_a_device_as_the_workflow_is_refused() -> None:
    code, _, err = cli_run("validate", "/dev/zero")
    assert code == 2 and "/dev/zero: not a regular file" in err and clean(err)


def test_oversized_schema_and_table_files_are_refused_before_reading(project, engine_home: Path) -> None:
    sparse(engine_home / "huge.json", 30_000_000)
    code, _, err = cli_run("validate", str(project(LLM % "{file: huge.json}")))
    assert code == 2 and "the file is 30,000,000 bytes (at most 20,000,000)" in err and clean(err)
    sparse(engine_home / "huge.csv", 300_000_000)
    code, _, err = cli_run("validate", str(project(TABLE % "huge.csv")))
    assert code == 2 and "the file is 300,000,000 bytes (at most 200,000,000)" in err and clean(err)


def test_batch_inputs_from_a_device_or_oversized_are_refused(project, engine_home: Path) -> None:
    path = project(SCRIPT.format(name="demo"), files=OPS, config=None)
    code, _, err = cli_run("run", str(path), "--inputs", "/dev/zero", "-q")
    assert code == 2 and "--inputs '/dev/zero' is not a regular file" in err and clean(err)
    huge = sparse(engine_home / "huge.jsonl", (1 << 30) + 1)
    code, _, err = cli_run("run", str(path), "--inputs", str(huge), "-q")
    assert code == 2 and "is 1,073,741,825 bytes (at most 1,073,741,824)" in err and clean(err)


# --- lone surrogates ---------------------------------------------------------------------------


def test_undecodable_command_line_input_names_the_input_and_position(project) -> None:
    path = project(SCRIPT.format(name="demo"), files=OPS, config=None)
    raw = b"ok\xff".decode("utf-8", "surrogateescape")  # what Python makes of `-i text=$'ok\xff'`
    code, _, err = cli_run("run", str(path), "-i", f"text={raw}", "-q")
    assert code == 2 and clean(err) and len(err.strip().splitlines()) == 1
    assert "--input 'text': character 2 is a lone surrogate (\\udcff: the byte 0xff, not UTF-8 text)" in err


def test_a_surrogate_in_inputs_json_names_the_input_and_position(project) -> None:
    path = project(SCRIPT.format(name="demo"), files=OPS, config=None)
    code, _, err = cli_run("run", str(path), "--inputs-json", '{"text": "abc\\ud800"}', "-q")
    assert code == 2 and clean(err)
    assert "--inputs-json: input 'text': character 3 is a lone surrogate (\\ud800)" in err


def test_a_surrogate_in_a_tag_or_tenant_is_refused(project) -> None:
    path = project(SCRIPT.format(name="demo"), files=OPS, config=None)
    raw = b"\xfe".decode("utf-8", "surrogateescape")
    for args, message in ((["--tag", f"team={raw}"], "--tag: character 5 is a lone surrogate (\\udcfe"),
                          (["--tenant", f"t{raw}"], "--tenant: character 1 is a lone surrogate (\\udcfe")):
        code, _, err = cli_run("run", str(path), "-i", "text=x", "-q", *args)
        assert code == 2 and message in err and clean(err), err


def test_surrogates_anywhere_in_run_inputs_are_an_input_error(project) -> None:
    from engine.runner import run_workflow

    wf = load_workflow(project("name: nested\ninputs: {doc: {type: object}}\nsteps:\n  - id: echo\n"
                               "    inputs: {text: '{{ inputs.doc }}'}\n    script: ops.py:echo\n",
                               files=OPS, config=None))
    with pytest.raises(InputError, match=r"input 'doc.parts\[1\]': character 0 is a lone surrogate \(\\udc80"):
        run_workflow(wf, {"doc": {"parts": ["fine", "\udc80x"]}}, store=False)


def test_a_batch_line_with_a_surrogate_fails_that_item_only(project, engine_home: Path) -> None:
    path = project(SCRIPT.format(name="demo"), files=OPS, config=None)
    items = engine_home / "items.jsonl"
    items.write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": "bad \\udfff"}\n')
    out = engine_home / "out.jsonl"
    code, _, err = cli_run("run", str(path), "--inputs", str(items), "-o", str(out), "-q")
    assert clean(err)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["status"] == "ok" and lines[0]["outputs"] == {"text": "fine"}
    assert lines[1]["status"] != "ok" and "character 4 is a lone surrogate (\\udfff)" in lines[1]["error"]


# --- template render budget --------------------------------------------------------------------


@pytest.mark.parametrize("template, message", [
    ("{{ text * 100000000000 }}", "repeating a value 100,000,000,000 times"),
    ("{{ text * 1e11 }}", "TypeError: can't multiply sequence by non-int of type 'float'"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
     "more than 1,000,000 loop steps"),
    ("{% set ns = namespace(t=text) %}{% for i in range(64) %}{% set ns.t = ns.t ~ ns.t %}{% endfor %}",
     "a value of more than 10,000,000 characters/items"),
    ("{{ text|center(100000000000) }}", "a size argument of 100,000,000,000"),
    ("{{ text.ljust(100000000000) }}", "a size argument of 100,000,000,000"),
    ("{{ '{:>100000000000}'.format(text) }}", "a format width of 8 or more digits"),
    ("{{ '%100000000000s' % text }}", "a format width of 8 or more digits"),
    ("{{ 7 ** 100000000 }}", "an integer of more than 100,000 bits"),
    ("{{ ([text * 1000] * 100000)|join }}", "repeating a value 100,000 times"),
    ("{{ (text * 1000)|replace('a', text * 100000) }}", "replace() would make more than 10,000,000"),
    ("{{ lipsum(10000000) }}", "lipsum() of more than 100,000 words"),
])
def test_template_bombs_fail_fast_with_a_clear_error(template: str, message: str) -> None:
    from engine.templating import TemplateError, render

    with pytest.raises(TemplateError) as e:
        render(template, {"text": "a"})
    assert message in str(e.value)


def test_the_budget_leaves_ordinary_templates_alone() -> None:
    from engine.templating import render

    context = {"xs": ["a", "b", "c"], "n": 4, "text": "x,y"}
    assert render("{% for x in xs %}{{ loop.index }}={{ x|upper }}{{ ',' if not loop.last }}{% endfor %}",
                  context) == "1=A,2=B,3=C"
    assert render("{{ n * 3 }} {{ 'ab' * 2 }} {{ 2 ** 10 }} {{ '%03d' % n }} {{ text.replace(',', ';') }}",
                  context) == "12 abab 1024 004 x;y"
    assert render("{% filter upper %}{{ xs|join('-') }}{% endfilter %}", context) == "A-B-C"
    assert render("{{ xs + ['d'] }}", context) == ["a", "b", "c", "d"]
    big = "z" * 1_000_000
    assert render("{{ text }}{{ big }}", {"text": "<", "big": big}) == "<" + big


def test_a_prompt_bomb_fails_its_step_not_the_process(project, fake) -> None:
    path = project((LLM % "{type: object}").replace(
        "Label {{ text }}", "{% for i in range(100000) %}{% for j in range(100000) %}{{ text }}{% endfor %}{% endfor %}"))
    code, _, err = cli_run("run", str(path), "-i", "text=hi", "-q")
    assert code == 1 and "more than 1,000,000 loop steps" in err and clean(err)


# --- for_each scheduling -----------------------------------------------------------------------


def test_fanout_drivers_schedule_without_rescanning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drivers ask the linear schedule, never the full scan (which made for_each quadratic)."""
    import asyncio

    from engine.providers.calls import Fanout, adrive, drive, gather_calls

    def rescan(*_: Any) -> Any:
        raise AssertionError("Fanout.ready rescans every task")

    monkeypatch.setattr(Fanout, "ready", rescan)

    def task(i: int) -> Any:
        return i * 2
        yield  # a computation that asks no provider

    def group() -> Fanout:
        return Fanout([(lambda i=i: task(i)) for i in range(50)], after=[set() if i < 2 else {i - 2} for i in range(50)],
                      limit=3)

    expected = [i * 2 for i in range(50)]
    assert drive(gather_calls(group())) == expected
    assert drive(gather_calls(group(), concurrent=False)) == expected
    assert asyncio.run(adrive(gather_calls(group()))) == expected


def test_schedule_matches_the_full_scan_order() -> None:
    """The schedule starts tasks in the order the scan would: the lowest ready index first."""
    import random

    from engine.providers.calls import Fanout

    rng = random.Random(7)
    for _ in range(50):
        n = rng.randint(1, 30)
        after = [{d for d in rng.sample(range(i), rng.randint(0, min(3, i)))} for i in range(n)]
        group = Fanout([lambda: None] * n, after=after if rng.random() < 0.8 else [])
        schedule = group.schedule()
        done: set[int] = set()
        started: set[int] = set()
        while True:
            scan = group.ready(done, started)
            i = schedule.take()
            assert i == (scan[0] if scan else None)
            if i is None:
                break
            started.add(i)
            done.add(i)
            schedule.finish(i)
        assert done == set(range(n))


def test_for_each_over_many_items_keeps_order_and_stops_on_failure(project) -> None:
    path = project("""\
name: many
inputs: {n: {type: integer}}
steps:
  - id: make
    inputs: {n: "{{ inputs.n }}"}
    script: ops.py:items
  - id: each
    for_each: "{{ steps.make.output }}"
    inputs: {text: "{{ item }}"}
    script: ops.py:echo
outputs:
  out: "{{ steps.each.output }}"
""", files=OPS, config=None)
    code, out, err = cli_run("run", str(path), "-i", "n=20000", "-q")
    assert code == 0, err
    assert [o["text"] for o in json.loads(out)["out"]] == list(range(20000))


# --- workflow names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "..", "a/b", "/etc/x", ".hidden", "x..y", "a b", "", "-x", "x" * 129,
                                  "x\\n"])
def test_unsafe_workflow_names_are_refused(project, name: str) -> None:
    path = project(SCRIPT.format(name=json.dumps(name)), files=OPS, config=None)
    with pytest.raises(SpecError) as e:
        load_workflow(path)
    assert f"{path}:1:1: name: workflow name" in str(e.value) and "is not allowed" in str(e.value)
    code, _, err = cli_run("validate", str(path))
    assert code == 2 and "is not allowed" in err and clean(err)


@pytest.mark.parametrize("name", ["demo", "ticket-triage", "v1.2_beta", "X", "9lives", "a" * 128])
def test_safe_workflow_names_load(project, name: str) -> None:
    assert load_workflow(project(SCRIPT.format(name=name), files=OPS, config=None)).name == name


def test_every_shipped_workflow_still_loads() -> None:
    root = Path(__file__).resolve().parents[2]
    files = [p for d in ("workflows", "examples") for p in (root / d).rglob("*.yaml")
             if p.name != "engine.yaml" and "skills" not in p.parts and "results" not in p.parts]
    import re

    from engine.spec.models import WORKFLOW_NAME

    names = [m.group(1).strip("'\"") for p in files for m in re.finditer(r"(?m)^name: *(.+?) *$", p.read_text())]
    assert names and all(re.fullmatch(WORKFLOW_NAME, n) and ".." not in n for n in names), names


# --- count flags -------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["run", "{wf}", "--inputs", "{items}", "-c", "0"],
    ["run", "{wf}", "--inputs", "{items}", "-c", "-5"],
    ["run", "{wf}", "--inputs", "{items}", "--concurrency", "0"],
    ["run", "{wf}", "--inputs", "{items}", "--poll-interval", "0"],
    ["runs", "list", "--limit", "0"],
    ["runs", "list", "-n", "-1"],
    ["cache", "inspect", "-n", "0"],
    ["promotions", "show", "x", "--rows", "0"],
])
def test_counts_must_be_positive(project, engine_home: Path, args: list[str]) -> None:
    wf = project(SCRIPT.format(name="demo"), files=OPS, config=None)
    items = engine_home / "items.jsonl"
    items.write_text('{"text": "a"}\n')
    code, _, err = cli_run(*[a.format(wf=wf, items=items) for a in args])
    assert code == 2 and "Invalid value" in err and clean(err), err
    assert ">=1" in err or "x>0" in err or "0<x" in err, err


def test_for_each_scale_benchmark_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "for_each_scale.json"
    proc = subprocess.run([sys.executable, str(root / "examples/benchmarks/for_each_scale.py"), "--sizes", "100,300",
                           "--out", str(out)], cwd=tmp_path, env={**os.environ, "ENGINE_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["items"] for r in rows] == [100, 300] and all(r["after_s"] > 0 for r in rows)
    assert all("before_s" in r or r["before"].startswith("skipped") for r in rows)
