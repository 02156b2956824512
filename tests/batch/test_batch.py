"""Batch runs: output order, per-line errors, concurrency, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import Engine
from engine.batch import run_batch
from engine.cli import cli
from engine.errors import UserError
from engine.providers.fake import FakeProvider
from engine.providers.registry import register_provider, unregister_provider

WORKFLOW = """\
name: shout
inputs: {text: {type: string, minLength: 1}}
steps:
  - id: clean
    inputs: {text: "{{ inputs.text }}"}
    script: helpers.py:clean
  - id: shout
    inputs: {text: "{{ steps.clean.output }}"}
    llm:
      tier: standard
      prompt: "text={{ text }}"
      schema: {type: object, properties: {loud: {type: string}}, required: [loud]}
      max_tokens: 20
      retries: 0
outputs:
  loud: "{{ steps.shout.output.loud }}"
"""
HELPERS = {"helpers.py": "import time, os\n"
                         "def clean(text):\n"
                         "    time.sleep(float(os.environ.get('STEP_SLEEP', '0')))\n"
                         "    hold = os.environ.get('STEP_HOLD')  # items from STEP_HOLD_FROM on wait while it exists\n"
                         "    while hold and int(text.strip()[1:]) >= int(os.environ['STEP_HOLD_FROM']) "
                         "and os.path.exists(hold):\n"
                         "        time.sleep(0.01)\n"
                         "    return text.strip()\n"}


class Tracker:
    """A fake cloud model: random latency, out-of-order completion, counts concurrent calls."""

    def __init__(self, latency: float = 0.01):
        self.latency = latency
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, request):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(random.uniform(0, self.latency))
            text = request.messages[-1]["content"].split("=", 1)[1]
            return "not json" if text == "FAIL" else {"loud": text.upper()}
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture
def tracker():
    t = Tracker()
    register_provider("fake", FakeProvider(responder=t))
    yield t
    unregister_provider("fake")


def write_items(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_output_order_ids_and_errors_per_line(project, tracker):
    wf = project(WORKFLOW, files=HELPERS)
    lines = [json.dumps({"id": f"k{i}", "text": f"item {i}"}) for i in range(30)]
    lines[3] = "{not json"
    lines[7] = "[1, 2]"
    lines[11] = json.dumps({"id": "k11", "text": ""})          # fails the input schema
    lines[15] = json.dumps({"id": "k15", "text": "FAIL"})      # the model never answers validly
    lines.insert(20, "")                                        # blank lines are not items
    items = write_items(wf.parent / "items.jsonl", lines)
    result = CliRunner().invoke(cli, ["run", str(wf), "--inputs", str(items), "--output", "out.jsonl",
                                      "--concurrency", "8", "-q"])
    assert result.exit_code == 1, result.output
    out = read_lines(Path("out.jsonl"))
    assert [o["index"] for o in out] == list(range(30))
    bad = {3, 7, 11, 15}
    for i, o in enumerate(out):
        if i in bad:
            assert o["status"] == "failed" and o["error"]
        else:
            assert o == {"index": i, "id": f"k{i}", "status": "ok", "outputs": {"loud": f"ITEM {i}"},
                         "run_id": o["run_id"]}
    assert "not valid JSON" in out[3]["error"] and "expected a JSON object" in out[7]["error"]
    assert "input 'text'" in out[11]["error"] and out[11]["id"] == "k11"
    assert "step 'shout'" in out[15]["error"] and out[15]["run_id"]
    assert tracker.peak > 1  # cloud-tier calls overlapped


def test_concurrency_bounds_cloud_calls(project, tracker):
    wf = project(WORKFLOW, files=HELPERS)
    items = write_items(wf.parent / "items.jsonl", [json.dumps({"text": f"t{i}"}) for i in range(40)])
    tracker.latency = 0.03
    summary = run_batch(Engine(), wf, items, wf.parent / "out.jsonl", concurrency=4)
    assert summary.ok == 40 and summary.served == {"script": 40, "llm/standard": 40}
    assert 2 <= tracker.peak <= 4


def test_resume_skips_done_items_and_checks_the_inputs(project, tracker):
    wf = project(WORKFLOW, files=HELPERS)
    items = write_items(wf.parent / "items.jsonl", [json.dumps({"text": f"t{i}"}) for i in range(10)])
    out = wf.parent / "out.jsonl"
    engine = Engine()
    first = run_batch(engine, wf, items, out, concurrency=3, batch_id="b1")
    again = run_batch(engine, wf, items, out, resume="b1")
    assert (first.ok, again.ok, again.resumed) == (10, 10, 10)
    assert read_lines(out)[9]["outputs"] == {"loud": "T9"}
    with pytest.raises(UserError, match="exists: resume it with --resume b1"):
        run_batch(engine, wf, items, out, batch_id="b1")
    write_items(items, [json.dumps({"text": "changed"})])
    with pytest.raises(UserError, match="changed since the batch started"):
        run_batch(engine, wf, items, out, resume=True)


def _finished(db: Path) -> dict[int, list[str]]:
    if not db.exists():
        return {}
    conn = sqlite3.connect(db, timeout=30)
    try:
        rows = conn.execute("SELECT json_extract(tags, '$.item'), id FROM runs WHERE status = 'ok'").fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()
    done: dict[int, list[str]] = {}
    for item, run_id in rows:
        done.setdefault(item, []).append(run_id)
    return done


def test_resume_after_sigkill_loses_nothing_and_repeats_nothing(project, monkeypatch):
    config = """\
        tiers:
          standard:
            - model: fake:echo
              options: {replies: ['{"loud": "X"}']}
        """
    wf = project(WORKFLOW, files=HELPERS, config=config)
    n = 60
    items = write_items(wf.parent / "items.jsonl", [json.dumps({"id": i, "text": f"t{i}"}) for i in range(n)])
    # items 12 and later wait while the hold file exists: the kill lands part-way whatever the
    # machine's speed (the deadline only guards against a hang)
    hold = wf.parent / "hold"
    hold.touch()
    monkeypatch.setenv("STEP_HOLD", str(hold))
    monkeypatch.setenv("STEP_HOLD_FROM", "12")
    db = wf.parent / ".engine" / "engine.db"
    command = [sys.executable, "-m", "engine", "run", str(wf), "--inputs", str(items), "--output", "out.jsonl",
               "--concurrency", "4", "--batch-id", "kill-me", "-q"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(_finished(db)) < 12 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _finished(db)
    assert sorted(before) == list(range(12)), "the batch must be killed part-way"
    hold.unlink()

    resumed = subprocess.run([*command[:-3], "--resume", "-q"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    after = _finished(db)
    assert sorted(after) == list(range(n))                                  # nothing lost
    assert all(len(runs) == 1 for runs in after.values())                   # nothing done twice
    assert all(after[i] == before[i] for i in before)                       # finished runs kept
    out = read_lines(Path("out.jsonl"))
    assert [o["id"] for o in out] == list(range(n)) and all(o["status"] == "ok" for o in out)
    assert {o["run_id"] for o in out} == {r for runs in after.values() for r in runs}
    conn = sqlite3.connect(db)
    status = dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    conn.close()
    assert status.get("running", 0) == 0 and status.get("interrupted", 0) <= 4


@pytest.mark.model
def test_local_tier_calls_are_serialized_per_model(project, monkeypatch):
    from engine.providers.registry import get_provider

    config = "tiers: {standard: [{model: 'llamacpp:smollm2', options: {n_ctx: 1024}}]}\n"
    wf = project(WORKFLOW, files=HELPERS, config=config)
    items = write_items(wf.parent / "items.jsonl", [json.dumps({"text": f"word {i}"}) for i in range(4)])
    engine = Engine()
    engine.warm(wf)
    counter = Tracker()
    for loaded in get_provider("llamacpp")._models.values():
        real = loaded.llama.create_chat_completion

        def tracked(*args, real=real, **kwargs):
            with counter.lock:
                counter.active += 1
                counter.peak = max(counter.peak, counter.active)
            try:
                return real(*args, **kwargs)
            finally:
                with counter.lock:
                    counter.active -= 1

        monkeypatch.setattr(loaded.llama, "create_chat_completion", tracked)
    summary = run_batch(engine, wf, items, wf.parent / "out.jsonl", concurrency=4)
    assert summary.done == 4 and summary.served["llm/standard"] + summary.failed >= 4
    assert counter.peak == 1  # four workers, one model: its calls never overlapped


def test_ctrl_c_saves_finished_items_and_resume_finishes(project, monkeypatch):
    config = """\
        tiers:
          standard:
            - model: fake:echo
              options: {replies: ['{"loud": "X"}']}
        """
    wf = project(WORKFLOW, files=HELPERS, config=config)
    n = 40
    items = write_items(wf.parent / "items.jsonl", [json.dumps({"text": f"t{i}"}) for i in range(n)])
    monkeypatch.setenv("STEP_SLEEP", "0.03")
    # items 6 and later wait while the hold file exists, so the interrupt lands part-way whatever
    # the machine's speed; it is released once the interrupt is sent, for the items in flight
    hold = wf.parent / "hold"
    hold.touch()
    monkeypatch.setenv("STEP_HOLD", str(hold))
    monkeypatch.setenv("STEP_HOLD_FROM", "6")
    db = wf.parent / ".engine" / "engine.db"
    command = [sys.executable, "-m", "engine", "run", str(wf), "--inputs", str(items), "--output", "out.jsonl",
               "--concurrency", "2", "-q"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(_finished(db)) < 6 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    hold.unlink()
    assert proc.wait(timeout=600) == 130
    before = _finished(db)
    assert 6 <= len(before) < n
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT status FROM batches").fetchone() == ("interrupted",)
    assert conn.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone() == (0,)  # in-flight finished
    conn.close()
    assert len(read_lines(Path("out.jsonl"))) == len(before)  # every finished item was written
    resumed = subprocess.run([*command[:-1], "--resume", "-q"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    after = _finished(db)
    assert sorted(after) == list(range(n)) and all(len(r) == 1 for r in after.values())
    assert len(read_lines(Path("out.jsonl"))) == n
