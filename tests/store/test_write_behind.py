"""The write-behind log: batched commits, read-your-writes, backpressure, flush on close / exit /
SIGTERM, and a store that stays intact when the process is killed mid-run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from engine.store import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]


def count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def call_row(run_id: str, i: int) -> dict:
    return {"run_id": run_id, "workflow": "wf", "step_id": "s", "attempt": i, "outcome": "valid",
            "input": {"i": i}, "output": {"ok": True}}


def test_rows_are_queued_then_committed_in_batches(tmp_path):
    path = tmp_path / "e.db"
    store = SQLiteStore(path, flush_interval_s=60)  # the writer would wait a minute: only flush() writes
    for i in range(100):
        store.record_llm_call(call_row("r", i))
    assert count(path, "llm_calls") == 0  # another connection sees nothing yet
    assert len(store.writer.pending) == 100
    assert store.flush() == 100
    assert count(path, "llm_calls") == 100
    assert store.writer.batches == 1  # one transaction for the hundred rows
    store.close()


def test_writer_thread_commits_within_the_interval(tmp_path):
    path = tmp_path / "e.db"
    store = SQLiteStore(path, flush_interval_s=0.02)
    store.start_run("r1", "wf", "1", None, {}, None)
    deadline = time.monotonic() + 5
    while count(path, "runs") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert count(path, "runs") == 1 and not store.writer.pending
    store.close()


def test_reads_see_queued_writes(tmp_path):
    store = SQLiteStore(tmp_path / "e.db", flush_interval_s=60)
    store.start_run("r1", "wf", "1", None, {"q": 1}, None)
    store.record_llm_call(call_row("r1", 1))
    store.record_step({"run_id": "r1", "step_id": "s", "kind": "llm", "status": "ok"}, link_calls=True)
    store.finish_run("r1", status="ok", outputs={"a": 1}, error=None, tokens_in=1, tokens_out=1, cost=0.0,
                     latency_ms=1.0)
    run = store.run("r1")  # query() drains the queue first
    assert run["status"] == "ok" and run["outputs"] == {"a": 1}
    assert run["llm_calls"][0]["step_execution_id"] == run["steps"][0]["id"]
    store.record_llm_call(call_row("r1", 2))
    with store.lock:  # so does any code that takes the lock to use the connection directly
        n = store.db.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    assert n == 2
    store.close()


def test_backpressure_blocks_producers_at_the_bound(tmp_path):
    path = tmp_path / "e.db"
    store = SQLiteStore(path, flush_interval_s=60, max_pending=10)
    peak = 0
    done = threading.Event()

    def produce() -> None:
        for i in range(50):
            store.record_llm_call(call_row("r", i))
        done.set()

    store.conn_lock.acquire()  # the database is busy: nothing can be written
    try:
        producer = threading.Thread(target=produce)
        producer.start()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not done.is_set():
            peak = max(peak, len(store.writer.pending))
            time.sleep(0.005)
        assert not done.is_set(), "the producer must wait while the queue is full"
        assert len(store.writer.pending) == 10 and peak <= 10  # bounded: never past max_pending
    finally:
        store.conn_lock.release()
    producer.join(timeout=10)
    assert done.is_set()
    store.flush()
    assert count(path, "llm_calls") == 50  # nothing lost
    store.close()


def test_a_bad_row_does_not_lose_its_batch(tmp_path, caplog):
    path = tmp_path / "e.db"
    store = SQLiteStore(path, flush_interval_s=60)
    store.record_llm_call(call_row("r", 1))
    store.record_llm_call({"run_id": "r", "no_such_column": 1})
    store.record_llm_call(call_row("r", 3))
    store.flush()
    assert count(path, "llm_calls") == 2 and store.writer.errors == 1
    assert "no_such_column" in caplog.text
    store.close()


def test_sync_mode_writes_before_returning(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_STORE_SYNC", "1")
    path = tmp_path / "e.db"
    store = SQLiteStore(path)
    store.record_llm_call(call_row("r", 1))
    assert count(path, "llm_calls") == 1 and not store.writer.pending
    store.close()


CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from engine.store import SQLiteStore
    store = SQLiteStore({db!r}, flush_interval_s=float(os.environ.get("INTERVAL", "60")),
                        max_pending=int(os.environ.get("MAX_PENDING", "10000")), batch_rows=100)
    i = 0
    while True:
        store.start_run(f"r{{i}}", "wf", "1", None, {{"i": i}}, None)
        for k in range(3):
            store.record_llm_call({{"run_id": f"r{{i}}", "workflow": "wf", "step_id": "s", "attempt": k,
                                   "outcome": "valid", "input": {{"i": i}}, "raw_output": "x" * 200}})
        store.record_step({{"run_id": f"r{{i}}", "step_id": "s", "kind": "llm", "status": "ok"}}, link_calls=True)
        store.finish_run(f"r{{i}}", status="ok", outputs={{"i": i}}, error=None, tokens_in=1, tokens_out=1,
                         cost=0.0, latency_ms=1.0)
        i += 1
        if i == int(os.environ.get("STOP_AT", "0")):
            print("done", flush=True)
            sys.exit(0)  # no close(): the atexit hook flushes
        if i % 50 == 0:
            print(i, flush=True)
""")


def _child(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[str], Path]:
    db = tmp_path / "child.db"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT), db=str(db)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    return proc, db


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def _consistent(db: Path) -> tuple[int, int]:
    """(finished runs, runs whose rows are incomplete). A finished run must have all its rows."""
    conn = sqlite3.connect(db)
    try:
        finished = conn.execute("SELECT count(*) FROM runs WHERE status = 'ok'").fetchone()[0]
        broken = conn.execute(
            "SELECT count(*) FROM runs r WHERE r.status = 'ok' AND ("
            "(SELECT count(*) FROM llm_calls c WHERE c.run_id = r.id AND c.step_execution_id IS NOT NULL) != 3 "
            "OR (SELECT count(*) FROM steps s WHERE s.run_id = r.id) != 1)").fetchone()[0]
        return int(finished), int(broken)
    finally:
        conn.close()


def test_exit_without_close_flushes_everything(tmp_path):
    proc, db = _child(tmp_path, STOP_AT="120")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "done" in out
    assert _consistent(db) == (120, 0) and count(db, "llm_calls") == 360


def test_sigterm_flushes_then_dies_of_the_signal(tmp_path):
    proc, db = _child(tmp_path)  # the writer would wait 60 s: only the signal handler writes
    assert proc.stdout is not None
    while int(proc.stdout.readline() or 0) < 100:
        pass
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGTERM
    finished, broken = _consistent(db)
    assert finished >= 100 and broken == 0
    assert _integrity(db) == "ok"


def test_sigkill_mid_run_leaves_an_intact_store_and_bounded_loss(tmp_path):
    proc, db = _child(tmp_path, INTERVAL="0.02", MAX_PENDING="300")
    assert proc.stdout is not None
    while int(proc.stdout.readline() or 0) < 300:
        pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=300)
    assert _integrity(db) == "ok"
    finished, broken = _consistent(db)
    assert broken == 0  # commits keep queue order: a finished run has every one of its rows
    # at most max_pending queued + one batch_rows transaction in flight are lost: 400 ops, 6 per run
    assert finished >= 300 - 400 // 6 - 1
    store = SQLiteStore(db)  # and the store opens and writes again
    store.start_run("after", "wf", "1", None, {}, None)
    assert store.run("after")["status"] == "running"
    store.close()
