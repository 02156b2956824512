"""PostgreSQL restarted mid-batch: runs fail clearly or are retried, nothing is written half, and a
resume finishes every item exactly once."""

from __future__ import annotations

import json
import threading
import time

import pgserve
from echoproject import project
from engine import Engine
from engine.batch import run_batch
from engine.runner import open_store


def test_postgres_restart_mid_batch(engine_home, monkeypatch):
    monkeypatch.setenv("ENGINE_PGVECTOR_INDEX", "none")
    url = pgserve.fresh_database()
    wf = project(engine_home, url, delay_ms=40)
    n = 60
    items = engine_home / "items.jsonl"
    items.write_text("".join(json.dumps({"id": i, "text": f"t{i}"}) + "\n" for i in range(n)))
    out = engine_home / "out.jsonl"

    restarted = threading.Event()

    def restart_when_going() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out.exists() and len(out.read_text().splitlines()) >= 10):
            time.sleep(0.02)
        pgserve.restart()
        restarted.set()

    restarter = threading.Thread(target=restart_when_going)
    restarter.start()
    with Engine() as engine:
        try:
            run_batch(engine, wf, items, out, concurrency=4, batch_id="pr")
        finally:
            restarter.join()
        assert restarted.is_set()
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [line["index"] for line in lines] == list(range(n))
        for line in lines:  # a run the restart cut off failed with the store's reason, not a traceback
            assert line["status"] == "ok" or "PostgreSQL store" in line["error"], line
        engine.flush()
        store = open_store(url)
        # nothing half-written: every finished run has both of its steps
        half = store.query("SELECT r.id, COUNT(s.id) AS n FROM runs r LEFT JOIN steps s ON s.run_id = r.id "
                           "WHERE r.status = 'ok' GROUP BY r.id HAVING COUNT(s.id) != 2")
        assert half == []
        resumed = run_batch(engine, wf, items, out, concurrency=4, resume="pr")
    assert resumed.done == n
    field, params = store.json_field("tags", "item")
    batch, bparams = store.json_field("tags", "batch")
    per_item = store.query(f"SELECT {field} AS item, COUNT(*) AS n FROM runs WHERE {batch} = ? "
                           "AND status IN ('ok', 'failed') GROUP BY 1", [*params, *bparams, "pr"])
    assert sorted(int(r["item"]) for r in per_item) == list(range(n))
    assert all(r["n"] == 1 for r in per_item)  # every item exactly once
