"""The migrations' DDL (engine.store.schema): a fresh SQLite store and a fresh PostgreSQL store get
the same tables, columns and indexes, each column typed per its dialect; integer keys number
themselves; `add_column` may run twice; and on SQLite the layer writes what sqlite-utils wrote for
the stores made before it (sqlite-utils is still installed: the SQLite store queries through it)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

import pgserve
from engine.store.base import JSON_COLUMNS
from engine.store.dialect import POSTGRES, SQLITE
from engine.store.schema import Schema

PG_TYPE = {"TEXT": "text", "INTEGER": "bigint", "REAL": "double precision", "BLOB": "bytea"}
"""Each SQLite column type of the store, as the PostgreSQL one the same declaration makes."""

POSTGRES_ONLY = {("cache_entries", "embedding")}  # 070_pgvector: the pgvector column


@pytest.fixture
def url(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ENGINE_PGVECTOR_INDEX", "none")
    return pgserve.fresh_database()


@pytest.fixture
def lite(tmp_path) -> Any:
    """A fresh SQLite store's file, opened on its own connection."""
    from engine.store import SQLiteStore

    SQLiteStore(tmp_path / "fresh.db", write_behind=False).close()
    conn = sqlite3.connect(tmp_path / "fresh.db")
    yield conn
    conn.close()


@pytest.fixture
def pg(url: str) -> Any:
    """A fresh PostgreSQL store's database, on its own autocommit connection."""
    import psycopg

    from engine.store.postgres import PostgresStore

    PostgresStore(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def _sqlite_tables(conn: sqlite3.Connection) -> dict[str, list[tuple]]:
    """table -> PRAGMA table_info rows (cid, name, type, notnull, default, pk)."""
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in names}


def _sqlite_indexes(conn: sqlite3.Connection) -> dict[str, tuple[str, bool, list[str | None]]]:
    """index (the ones DDL named, not the primary keys') -> (table, unique, columns)."""
    found = {}
    for table in _sqlite_tables(conn):
        for _, name, unique, origin, _ in conn.execute(f"PRAGMA index_list({table})").fetchall():
            if origin == "c":
                columns = [r[2] for r in conn.execute(f"PRAGMA index_xinfo({name})") if r[5]]
                found[name] = (table, bool(unique), columns)
    return found


def _pg_columns(conn: Any) -> dict[tuple[str, str], tuple[str, str]]:
    rows = conn.execute("SELECT table_name, column_name, data_type, is_identity FROM information_schema.columns "
                        "WHERE table_schema = 'public'").fetchall()
    return {(t, c): (typ, identity) for t, c, typ, identity in rows}


def _pg_indexes(conn: Any) -> set[str]:
    rows = conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'").fetchall()
    return {name for (name,) in rows if not name.endswith("_pkey")}


def test_a_fresh_sqlite_and_postgres_store_have_the_same_tables_columns_and_indexes(lite, pg):
    tables = _sqlite_tables(lite)
    sqlite_columns = {(t, row[1]) for t, rows in tables.items() for row in rows}
    pg_columns = _pg_columns(pg)
    assert set(pg_columns) - POSTGRES_ONLY == sqlite_columns
    assert len(sqlite_columns) > 200 and {"runs", "steps", "llm_calls", "cache_entries", "leases"} <= set(tables)
    # PostgreSQL cuts names to 63 bytes (NAMEDATALEN), as it always did for the store's longest index
    assert _pg_indexes(pg) == {name[:63] for name in _sqlite_indexes(lite)}
    assert "idx_llm_calls_workflow_step_id_prompt_hash_schema_hash_input_ha" in _pg_indexes(pg)
    assert "runs_batch" in _pg_indexes(pg) and "idx_cache_entries_namespace_input_key" in _pg_indexes(pg)


def test_each_column_has_its_dialects_type(lite, pg):
    """SQLite: TEXT, INTEGER, REAL, BLOB; the same column on PostgreSQL: text, bigint, double
    precision, bytea, and jsonb for exactly the JSON documents."""
    pg_columns = _pg_columns(pg)
    for table, rows in _sqlite_tables(lite).items():
        for _, column, typ, _, _, _ in rows:
            assert typ in PG_TYPE, (table, column, typ)
            want = "jsonb" if column in JSON_COLUMNS and not table.startswith("_") else PG_TYPE[typ]
            assert pg_columns[(table, column)][0] == want, (table, column, typ)
    sqlite = {(t, row[1]): row[2] for t, rows in _sqlite_tables(lite).items() for row in rows}
    assert sqlite[("runs", "cost")] == "REAL" and sqlite[("cache_entries", "vector")] == "BLOB"
    assert sqlite[("runs", "tags")] == "TEXT" and pg_columns[("runs", "tags")][0] == "jsonb"


def test_integer_keys_number_themselves(lite, pg):
    """SQLite: `INTEGER PRIMARY KEY`, an alias of the rowid; PostgreSQL: a BIGINT identity. The
    same tables have one on both."""
    tables = _sqlite_tables(lite)
    keys = {t: [r for r in rows if r[5]] for t, rows in tables.items()}
    rowid_keys = {(t, key[0][1]) for t, key in keys.items() if len(key) == 1 and key[0][2] == "INTEGER"}
    assert ("steps", "id") in rowid_keys and ("llm_calls", "id") in rowid_keys and ("runs", "id") not in rowid_keys
    assert {k for k, (_, identity) in _pg_columns(pg).items() if identity == "YES"} == rowid_keys
    lite.execute("INSERT INTO steps (run_id, step_id) VALUES ('r', 'a')")
    lite.execute("INSERT INTO steps (run_id, step_id) VALUES ('r', 'b')")
    assert lite.execute("SELECT id, rowid FROM steps ORDER BY id").fetchall() == [(1, 1), (2, 2)]
    got = [pg.execute("INSERT INTO steps (run_id, step_id) VALUES ('r', %s) RETURNING id", [s]).fetchone()[0]
           for s in "ab"]
    assert got == [1, 2]


def test_keys_by_kind_on_sqlite(lite):
    """A text key, a key of several columns, and the one foreign key sqlite-utils wrote (kept as a
    REFERENCES clause; SQLite does not enforce it without PRAGMA foreign_keys)."""
    tables = _sqlite_tables(lite)
    assert [(r[1], r[2]) for r in tables["runs"] if r[5]] == [("id", "TEXT")]
    assert [(r[1], r[5]) for r in tables["quality_state"] if r[5]] == [("workflow", 1), ("step_id", 2), ("tier", 3)]
    assert [(r[1], r[5]) for r in tables["check_queue"] if r[5]] == [("process", 1), ("workflow", 2), ("step_id", 3)]
    assert [r[2:5] for r in lite.execute("PRAGMA foreign_key_list(steps)")] == [("runs", "run_id", "id")]
    assert all(not lite.execute(f"PRAGMA foreign_key_list({t})").fetchall() for t in tables if t != "steps")
    indexes = _sqlite_indexes(lite)
    assert indexes["idx_cache_entries_namespace_input_key"] == ("cache_entries", True, ["namespace", "input_key"])
    assert indexes["idx_llm_calls_workflow_step_id_prompt_hash_schema_hash_input_hash"] == (
        "llm_calls", False, ["workflow", "step_id", "prompt_hash", "schema_hash", "input_hash"])
    assert indexes["runs_batch"] == ("runs", False, [None])  # an expression: json_extract(tags, '$.batch')
    assert sum(unique for _, unique, _ in indexes.values()) == 1


DECLARED: dict[str, Any] = {
    "numbered": ({"id": int, "name": str, "n": int, "x": float, "blob": bytes, "flag": bool, "doc": dict,
                  "items": list}, {"pk": "id"}),
    "named": ({"key": str, "owner_id": int, "at": float}, {"pk": "key",
                                                           "foreign_keys": [("owner_id", "numbered", "id")]}),
    "pairs": ({"a": str, "b": str, "v": int}, {"pk": ("a", "b")}),
}


def test_sqlite_ddl_matches_what_sqlite_utils_wrote():
    """The same declarations through sqlite-utils (which made the stores before this layer) and
    through `Schema`: the same columns, types, keys, foreign keys and indexes."""
    import sqlite_utils

    def shape(conn: sqlite3.Connection) -> dict[str, Any]:
        return {t: (conn.execute(f"PRAGMA table_info({t})").fetchall(),
                    conn.execute(f"PRAGMA foreign_key_list({t})").fetchall(),
                    sorted(conn.execute(f"PRAGMA index_list({t})").fetchall()))
                for t in DECLARED}

    before = sqlite_utils.Database(memory=True)
    after = sqlite3.connect(":memory:", isolation_level=None)
    schema = Schema(after.execute, SQLITE)
    for table, (columns, options) in DECLARED.items():
        before.table(table).create(columns, **options)
        schema.table(table).create(columns, **options)
    for db in (before.table("numbered"), schema.table("numbered")):
        db.create_index(["name", "n"])
        db.create_index(["name"], unique=True)
        db.add_column("later", float)
    assert shape(after) == shape(before.conn)
    assert {r[1] for r in after.execute("PRAGMA index_list(numbered)")} == {"idx_numbered_name_n",
                                                                           "idx_numbered_name"}


def test_add_column_and_the_rest_may_run_twice_on_sqlite():
    conn = sqlite3.connect(":memory:", isolation_level=None)
    schema = Schema(conn.execute, SQLITE)
    for _ in range(2):
        schema.table("notes").create({"id": int, "body": str}, pk="id")
        schema.table("notes").create_index(["body"])
        schema.table("notes").add_column("output", dict)
    assert [(r[1], r[2]) for r in conn.execute("PRAGMA table_info(notes)")] == [
        ("id", "INTEGER"), ("body", "TEXT"), ("output", "TEXT")]
    conn.execute("INSERT INTO notes (body) VALUES ('x')")
    assert conn.execute("SELECT id FROM notes").fetchall() == [(1,)]


def test_add_column_and_the_rest_may_run_twice_on_postgres(url):
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        schema = Schema(conn.execute, POSTGRES)
        for _ in range(2):
            schema.table("notes").create({"id": int, "body": str, "at": float, "raw": bytes}, pk="id",
                                         foreign_keys=[("body", "elsewhere", "id")])  # left out on PostgreSQL
            schema.table("notes").create_index(["body", "at"], unique=True)
            schema.table("notes").add_column("output", dict)
        got = conn.execute("SELECT column_name, data_type, is_identity FROM information_schema.columns "
                           "WHERE table_name = 'notes' ORDER BY ordinal_position").fetchall()
        assert got == [("id", "bigint", "YES"), ("body", "text", "NO"), ("at", "double precision", "NO"),
                       ("raw", "bytea", "NO"), ("output", "jsonb", "NO")]
        assert _pg_indexes(conn) == {"idx_notes_body_at"}
        assert conn.execute("INSERT INTO notes (body) VALUES ('x') RETURNING id").fetchone() == (1,)
        assert schema.execute("SELECT count(*) FROM notes WHERE body = ?", ["x"]).fetchone() == (1,)


def test_a_name_that_is_not_plain_is_quoted():
    conn = sqlite3.connect(":memory:", isolation_level=None)
    schema = Schema(conn.execute, SQLITE)
    schema.table("Odd Table").create({"Key": str, "some value": int}, pk="Key")
    schema.table("Odd Table").create_index(["some value"])
    schema.table("Odd Table").add_column("Later", str)
    assert [r[1] for r in conn.execute('PRAGMA table_info("Odd Table")')] == ["Key", "some value", "Later"]
    assert [r[1] for r in conn.execute('PRAGMA index_list("Odd Table")') if r[3] == "c"] == [
        "idx_Odd Table_some value"]


def test_a_key_must_be_a_declared_column():
    schema = Schema(sqlite3.connect(":memory:").execute, SQLITE)
    with pytest.raises(ValueError, match="not among its columns"):
        schema.table("t").create({"a": str}, pk="id")
    with pytest.raises(ValueError, match="no sqlite column type"):
        schema.table("t").create({"a": set}, pk="a")


def test_the_batch_queries_use_the_partial_indexes(lite, pg):
    """A batch's runs are found through `runs_batch` and a provider batch's calls through
    `idx_llm_calls_provider_batch`, on both backends (each index holds only the rows that have the
    field): the queries spell the field as the index does (`json_field` inlines a plain key)."""
    runs_by_batch = "SELECT id FROM runs WHERE {field} = ? AND status IN ('ok', 'failed')"
    calls_by_batch = "SELECT id FROM llm_calls WHERE provider_batch = ? AND run_id != ?"

    field, params = SQLITE.json_field("tags", "batch")
    assert params == []
    plan = " ".join(str(r) for r in lite.execute("EXPLAIN QUERY PLAN " + runs_by_batch.format(field=field), ["b"]))
    assert "runs_batch" in plan
    plan = " ".join(str(r) for r in lite.execute("EXPLAIN QUERY PLAN " + calls_by_batch, ["j", "r"]))
    assert "idx_llm_calls_provider_batch" in plan
    assert "WHERE" in lite.execute("SELECT sql FROM sqlite_master WHERE name = 'runs_batch'").fetchone()[0]

    field, params = POSTGRES.json_field("tags", "batch")
    pg.execute("SET enable_seqscan = off")  # a fresh table is small: ask whether the index can serve
    plan = " ".join(r[0] for r in pg.execute("EXPLAIN " + POSTGRES.sql(runs_by_batch.format(field=field)), ["b"]))
    assert "runs_batch" in plan
    plan = " ".join(r[0] for r in pg.execute("EXPLAIN " + POSTGRES.sql(calls_by_batch), ["j", "r"]))
    assert "idx_llm_calls_provider_batch" in plan
    assert "WHERE" in pg.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'runs_batch'").fetchone()[0]
