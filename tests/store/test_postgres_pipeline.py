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
