from __future__ import annotations

import sqlite3
import threading

from engine.store import SQLiteStore
from engine.store.migrations import MIGRATIONS


def test_migrations_run_once_and_wal(tmp_path):
    path = tmp_path / "e.db"
    SQLiteStore(path).close()
    store = SQLiteStore(path)  # reopening applies nothing twice
    names = [r["name"] for r in store.query("SELECT name FROM _migrations ORDER BY name")]
    assert names == sorted(n for n, _ in MIGRATIONS)
    assert store.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    assert {"runs", "steps", "llm_calls"} <= set(store.db.table_names())


def test_json_columns_round_trip(tmp_path):
    store = SQLiteStore(tmp_path / "e.db")
    store.start_run("r1", "wf", "1", None, {"q": "é", "n": [1, 2]}, {"team": "x"})
    store.finish_run("r1", status="ok", outputs={"a": None}, error=None, tokens_in=1, tokens_out=2,
                     cost=0.5, latency_ms=3.0)
    run = store.run("r1")
    assert run["inputs"] == {"q": "é", "n": [1, 2]} and run["outputs"] == {"a": None}
    assert run["tags"] == {"team": "x"} and run["cost"] == 0.5


def test_concurrent_writers_lose_nothing(tmp_path):
    store = SQLiteStore(tmp_path / "e.db")

    def write(k):
        for i in range(50):
            store.start_run(f"{k}-{i}", "wf", "1", None, {}, None)
            store.record_llm_call({"run_id": f"{k}-{i}", "workflow": "wf", "step_id": "s", "outcome": "valid"})

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.query("SELECT count(*) AS n FROM runs")[0]["n"] == 400
    assert store.query("SELECT count(*) AS n FROM llm_calls")[0]["n"] == 400
    # a second process-level connection sees the committed rows (WAL)
    other = sqlite3.connect(tmp_path / "e.db")
    assert other.execute("SELECT count(*) FROM runs").fetchone()[0] == 400
    other.close()


def test_two_processes_opening_a_new_store_apply_each_migration_once(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "race.db"
    code = f"from engine.store import SQLiteStore; SQLiteStore({str(path)!r}).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    store = SQLiteStore(path)
    names = [r["name"] for r in store.query("SELECT name FROM _migrations")]
    assert sorted(names) == sorted(n for n, _ in MIGRATIONS)
