"""Promoted scripts are served by one long-lived sandboxed worker per script, not a process per call."""

from __future__ import annotations

import os

from engine.promotion.sandbox import isolation, run_one
from engine.promotion.sandbox import worker as workers
from engine.promotion.sandbox.worker import serve_one

from sandboxmark import needs_isolation

COUNTING = ("import re\nSEEN = []\n"
            "def solve(inputs):\n    SEEN.append(inputs['text'])\n"
            "    return {'calls': len(SEEN), 'words': len(re.findall(r'\\w+', inputs['text']))}\n")


@needs_isolation
def test_calls_reuse_one_worker_and_each_call_starts_from_a_fresh_module():
    workers.close_all()
    before = workers.STARTED[0]
    outputs = [serve_one(COUNTING, {"text": "one two " * k}).output for k in range(20)]
    assert workers.STARTED[0] == before + 1  # one process for twenty calls
    assert outputs == [{"calls": 1, "words": 2 * k} for k in range(20)]  # nothing carried between calls
    assert outputs == [run_one(COUNTING, {"text": "one two " * k}).output for k in range(20)]


def _innermost(pid: int) -> int:
    while True:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = f.read().split()
        except OSError:
            return pid
        if not children:
            return pid
        pid = int(children[0])


@needs_isolation
def test_the_worker_runs_under_the_os_layer():
    workers.close_all()
    serve_one(COUNTING, {"text": "x"})
    (worker,) = workers._workers.values()
    pid = _innermost(worker.proc.pid)  # bubblewrap's own processes stand between
    for ns in ("net", "user", "mnt", "ipc") + (("pid",) if isolation.backend() == "bwrap" else ()):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    assert "NoNewPrivs:\t1" in status
    inside = set(os.listdir(f"/proc/{pid}/root"))  # its own read-only root: no project, no /proc
    assert "proc" not in inside and inside < set(os.listdir("/")) | {"lib32", "libx32"}
    workers.close_all()
    assert worker.proc.poll() is not None and not os.path.exists(worker.tmp)


@needs_isolation
def test_a_hung_or_crashed_call_fails_alone_and_the_next_call_gets_a_new_worker():
    workers.close_all()
    hang = "def solve(inputs):\n    while inputs['spin']:\n        pass\n    return 'ok'\n"
    assert serve_one(hang, {"spin": True}).error == "timeout"
    before = workers.STARTED[0]
    assert serve_one(hang, {"spin": False}).output == "ok"
    assert workers.STARTED[0] == before + 1
    bomb = "def solve(inputs):\n    return [1] * (inputs['n'] * 1000000000)\n"
    assert serve_one(bomb, {"n": 4}).error  # over the memory limit: the worker dies, the call fails
    assert serve_one(bomb, {"n": 0}).output == []


def test_refused_and_broken_scripts_start_no_worker():
    before = workers.STARTED[0]
    assert "static check" in serve_one("import os\ndef solve(inputs):\n    return 1\n", {}).error
    assert "static check" in serve_one("def solve(inputs:\n", {}).error
    assert workers.STARTED[0] == before
