"""The Postgres writer's pipelined batches (engine.store.pipeline) against a real PostgreSQL, and
the dialect layer's compilation of one SQL text for both backends (engine.store.dialect)."""

from __future__ import annotations

import math

import pytest

import pgserve
from engine.store.dialect import POSTGRES, SQLITE, numbered


@pytest.fixture
def pg_store(monkeypatch):
    from engine.store.postgres import PostgresStore

    monkeypatch.setenv("ENGINE_PGVECTOR_INDEX", "none")
    store = PostgresStore(pgserve.fresh_database(), flush_interval_s=60)  # the test flushes
    yield store
    store.close()


def _call(run_id: str, n: int) -> dict:
    return {"run_id": run_id, "workflow": "w", "step_id": "s", "outcome": "valid", "attempt": n,
            "output": {"n": n}, "tokens_in": 1, "tokens_out": 1, "cost": 0.0}


def test_a_batch_commits_in_order_with_its_links(pg_store):
    for i in range(40):
        rid = f"r{i}"
        pg_store.start_run(rid, "w", "1", None, {"text": f"q{i}"}, {"batch": "b", "item": i})
        pg_store.record_llm_call(_call(rid, 1))
        pg_store.record_step({"run_id": rid, "step_id": "s", "kind": "llm", "status": "ok", "output": {"n": 1}},
                             link_calls=True)
        pg_store.finish_run(rid, status="ok", outputs={"n": i}, error=None, tokens_in=1, tokens_out=1, cost=0.5,
                            latency_ms=1.0)
    assert pg_store.writer.pending
    pg_store.flush()
    runs = pg_store.query("SELECT id, status, outputs FROM runs ORDER BY started_at, id")
    assert len(runs) == 40 and {r["status"] for r in runs} == {"ok"}  # each update after its insert
    linked = pg_store.query("SELECT c.step_execution_id AS c, s.id AS s FROM llm_calls c "
                            "JOIN steps s ON s.run_id = c.run_id AND s.step_id = c.step_id")
    assert len(linked) == 40 and all(r["c"] == r["s"] for r in linked)
    assert pg_store.writer.batches == 1 and pg_store.writer.errors == 0


def test_a_bad_row_mid_batch_loses_only_itself(pg_store, caplog):
    pg_store.record_llm_call(_call("r", 1))
    pg_store.record_llm_call({"run_id": "r", "no_such_column": 1})
    pg_store.record_llm_call(_call("r", 3))
    pg_store.flush()
    assert pg_store.writer.errors == 1 and "no_such_column" in caplog.text
    assert [r["attempt"] for r in pg_store.query("SELECT attempt FROM llm_calls ORDER BY id")] == [1, 3]
    pg_store.record_llm_call(_call("r", 4))  # the connection and its prepared statements still work
    pg_store.flush()
    assert pg_store.query("SELECT COUNT(*) AS n FROM llm_calls")[0]["n"] == 3


def test_parameters_keep_their_values(pg_store):
    text = "naïve \x00 \ud800 'quoted' ? %s 100%"
    pg_store.enqueue("INSERT INTO cache_entries (namespace, input_key, text, cost, hits, vector, created) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", ["ns", "k1", text, 0.1, True, b"\x00\x01\xff", math.inf])
    pg_store.enqueue("INSERT INTO cache_entries (namespace, input_key, text, cost, hits, vector, created) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", ["ns", "k2", None, -1e-12, 2**40, None, 1.5])
    pg_store.flush()
    rows = pg_store.query("SELECT * FROM cache_entries ORDER BY input_key")
    assert rows[0]["text"] == "naïve \ufffd \ufffd 'quoted' ? %s 100%"
    assert rows[0]["cost"] == 0.1 and rows[0]["hits"] == 1 and rows[0]["vector"] == b"\x00\x01\xff"
    assert rows[0]["created"] == math.inf
    assert rows[1]["text"] is None and rows[1]["cost"] == -1e-12 and rows[1]["hits"] == 2**40
    assert rows[1]["vector"] is None


def test_one_sql_text_compiles_for_both_dialects():
    sql = "SELECT * FROM t WHERE a = ? AND b LIKE 'x?%' AND \"c?\" = ? AND d LIKE ?"
    assert SQLITE.sql(sql) == sql
    assert POSTGRES.sql(sql) == "SELECT * FROM t WHERE a = %s AND b LIKE 'x?%%' AND \"c?\" = %s AND d LIKE %s"
    assert numbered(sql) == "SELECT * FROM t WHERE a = $1 AND b LIKE 'x?%' AND \"c?\" = $2 AND d LIKE $3"
    assert numbered("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', $1"
    with pytest.raises(ValueError, match="unterminated"):
        POSTGRES.sql("SELECT 'oops ?")


def test_json_access_per_dialect():
    assert SQLITE.json_get("tags", "batch") == "json_extract(tags, '$.batch')"
    assert SQLITE.json_field("tags", "a b") == ("json_extract(tags, ?)", ['$."a b"'])
    assert POSTGRES.json_get("tags", "it's") == "(tags::jsonb ->> 'it''s')"
    assert POSTGRES.json_field("r.tags", "a b") == ("(r.tags::jsonb ->> ?)", ["a b"])
    # a plain key is inlined: the expression of the index on it (runs_batch)
    assert POSTGRES.json_field("r.tags", "batch") == ("(r.tags::jsonb ->> 'batch')", [])
    assert SQLITE.json_field("tags", "batch") == ("json_extract(tags, '$.batch')", [])


def _rows(store, sql):
    return [{k: v for k, v in r.items() if k not in ("id", "started_at", "ended_at", "created_at", "step_execution_id")}
            for r in store.query(sql)]


def _sent(monkeypatch) -> list[str]:
    """The statements the writer sends (each batch as `engine.store.pipeline` gets it)."""
    from engine.store import pipeline

    sent: list[str] = []
    real = pipeline.Pipeline.write

    def write(self, conn, batch, **kwargs):
        sent.extend(sql for sql, _ in batch)
        return real(self, conn, batch, **kwargs)

    monkeypatch.setattr(pipeline.Pipeline, "write", write)
    return sent


def _one_run(store, rid: str, *, calls: int = 1, flush_between: bool = False) -> None:
    store.start_run(rid, "w", "1", None, {"text": rid}, {"batch": "b"})
    store.record_step({"run_id": rid, "step_id": "clean", "kind": "script", "status": "ok", "output": "q"})
    for n in range(1, calls + 1):
        store.record_llm_call(_call(rid, n))
        if flush_between:
            store.flush()
    store.record_step({"run_id": rid, "step_id": "s", "kind": "llm", "status": "ok", "output": {"n": calls}},
                      link_calls=True)
    store.finish_run(rid, status="ok", outputs={"n": calls}, error=None, tokens_in=1, tokens_out=1, cost=0.5,
                     latency_ms=1.0)


def test_a_run_within_one_batch_is_written_without_updates_and_reads_the_same(pg_store, monkeypatch):
    """A run that starts and finishes in one batch is one INSERT of the finished row, and its call
    is inserted with its step, already linked: three statements instead of five, and the rows read
    back exactly as when the run is spread over batches (each part an INSERT, then the UPDATEs)."""
    sent = _sent(monkeypatch)
    _one_run(pg_store, "whole")
    pg_store.flush()
    assert len(sent) == 3 and not any(sql.startswith("UPDATE") for sql in sent)
    assert sum("INSERT INTO llm_calls" in sql and "(SELECT id FROM step)" in sql for sql in sent) == 1
    sent.clear()
    _one_run(pg_store, "spread", flush_between=True)  # the call committed before its step
    pg_store.flush()
    assert len(sent) == 5 and sent[0].startswith("INSERT INTO runs")  # the finish is an UPDATE again
    whole, spread = (_rows(pg_store, f"SELECT * FROM runs WHERE id = '{rid}'") for rid in ("whole", "spread"))
    assert [{**r, "inputs": None, "id": None} for r in whole] == [{**r, "inputs": None, "id": None} for r in spread]
    assert whole[0]["status"] == "ok" and whole[0]["outputs"] == {"n": 1} and whole[0]["cost"] == 0.5
    for rid in ("whole", "spread"):
        linked = pg_store.query("SELECT c.step_execution_id AS c, s.id AS s FROM llm_calls c JOIN steps s "
                                "ON s.run_id = c.run_id AND s.step_id = c.step_id WHERE c.run_id = ?", [rid])
        assert len(linked) == 1 and linked[0]["c"] == linked[0]["s"]


def test_every_call_of_a_step_is_linked_whatever_the_batches(pg_store):
    """Re-asks: the step links all its run's calls, those in its own batch and those committed
    earlier; a call of another run in between, or a statement on the table, changes nothing."""
    _one_run(pg_store, "two", calls=2)  # two calls in the step's batch
    pg_store.record_llm_call(_call("three", 1))
    pg_store.flush()  # the first call of "three" committed alone
    pg_store.start_run("three", "w", "1", None, {}, {})
    pg_store.record_llm_call(_call("three", 2))
    pg_store.record_llm_call(_call("other", 1))  # another run's call between the call and its step
    pg_store.record_llm_call(_call("three", 3))
    pg_store.enqueue("UPDATE llm_calls SET reason = 'note' WHERE run_id = ?", ["other"])
    pg_store.record_step({"run_id": "three", "step_id": "s", "kind": "llm", "status": "ok", "output": {}},
                         link_calls=True)
    pg_store.flush()
    steps = {r["run_id"]: r["id"] for r in pg_store.query("SELECT id, run_id FROM steps WHERE step_id = 's'")}
    calls = pg_store.query("SELECT run_id, attempt, step_execution_id FROM llm_calls ORDER BY id")
    assert [(c["run_id"], c["attempt"]) for c in calls] == [
        ("two", 1), ("two", 2), ("three", 1), ("three", 2), ("other", 1), ("three", 3)]  # queued order
    for c in calls:
        assert c["step_execution_id"] == steps.get(c["run_id"])  # "other" has no step: unlinked


def test_a_statement_on_runs_between_start_and_finish_keeps_the_order(pg_store):
    """An UPDATE of the run between its start and its finish runs between them, as queued: the
    finish (which clears `error`) comes last."""
    pg_store.start_run("r", "w", "1", None, {}, {})
    pg_store.enqueue("UPDATE runs SET error = 'midway' WHERE id = ?", ["r"])
    pg_store.finish_run("r", status="ok", outputs={}, error=None, tokens_in=0, tokens_out=0, cost=0.0,
                        latency_ms=1.0)
    pg_store.flush()
    assert pg_store.query("SELECT status, error FROM runs WHERE id = 'r'") == [{"status": "ok", "error": None}]


def test_the_writer_waits_for_the_server_in_select(pg_store, monkeypatch):
    """While the server works through a batch, the writer thread waits in `select` (the GIL
    released, so the threads that queue runs go on), not inside libpq's `get_result`."""
    from engine.store import pipeline

    waited = []
    real = pipeline.select.select

    def spy(r, w, x, *timeout):
        waited.append((list(r), list(w)))
        return real(r, w, x, *timeout)

    monkeypatch.setattr(pipeline.select, "select", spy)
    pg_store.enqueue("SELECT pg_sleep(0.2)", [])
    pg_store.flush()
    socket = pg_store.writer.conn.conn.pgconn.socket
    assert any(socket in r for r, _ in waited)
