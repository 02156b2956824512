"""JSON documents are native jsonb on PostgreSQL (migration 087_jsonb_documents), read back as
text like SQLite's; a store written before the migration keeps its rows."""

from __future__ import annotations

import pytest

import pgserve
from engine.store.migrations import JSON_DOCUMENTS, MIGRATIONS, migration


@pytest.fixture
def url(monkeypatch):
    monkeypatch.setenv("ENGINE_PGVECTOR_INDEX", "none")
    return pgserve.fresh_database()


def _types(store) -> dict[tuple[str, str], str]:
    rows = store.query("SELECT table_name, column_name, data_type FROM information_schema.columns "
                       "WHERE table_schema = 'public'")
    return {(r["table_name"], r["column_name"]): r["data_type"] for r in rows}


def test_json_documents_are_jsonb_and_read_as_text(url):
    from engine.store.postgres import PostgresStore

    store = PostgresStore(url)
    types = _types(store)
    assert all(types[(t, c)] == "jsonb" for t, cols in JSON_DOCUMENTS.items() for c in cols)
    assert types[("runs", "workflow")] == "text"
    store.start_run("r1", "w", "1", None, {"text": "héllo", "n": [1, 2]}, {"batch": "b1", "item": 3})
    field, params = store.json_field("tags", "item")
    rows = store.query(f"SELECT id, inputs, {field} AS item FROM runs WHERE {field} = ?", [*params, *params, "3"])
    assert rows == [{"id": "r1", "inputs": {"text": "héllo", "n": [1, 2]}, "item": "3"}]
    raw = store.execute_returning("SELECT tags FROM runs WHERE id = ?", ["r1"])
    assert isinstance(raw["tags"], str) and raw["tags"].startswith("{")
    store.close()


def test_a_store_from_before_keeps_its_rows(url):
    from engine.store.postgres import PostgresStore

    store = PostgresStore(url)
    store.execute("DROP INDEX runs_batch")  # as a store from before had them: TEXT, the index casting
    store.execute("ALTER TABLE runs ALTER COLUMN tags TYPE text, ALTER COLUMN inputs TYPE text")
    store.execute("CREATE INDEX runs_batch ON runs ((tags::jsonb ->> 'batch'))")
    store.execute("DELETE FROM _migrations WHERE name = '087_jsonb_documents'")
    store.execute("INSERT INTO runs (id, workflow, inputs, tags) VALUES (?, ?, ?, ?)",
                  ["old", "w", "not json", '{"batch": "b"}'])
    store.close()
    store = PostgresStore(url)  # the migration runs again over the TEXT columns
    assert _types(store)[("runs", "tags")] == _types(store)[("runs", "inputs")] == "jsonb"
    row = store.query("SELECT inputs, tags FROM runs WHERE id = 'old'")[0]
    assert row == {"inputs": "not json", "tags": {"batch": "b"}}  # the odd value kept, as a JSON string
    field, params = store.json_field("tags", "batch")
    assert store.query(f"SELECT id FROM runs WHERE {field} = ?", [*params, "b"]) == [{"id": "old"}]
    store.close()


def test_each_migration_names_its_own_version():
    assert len({name[:3] for name, _ in MIGRATIONS}) == len(MIGRATIONS)
    with pytest.raises(ValueError, match="three-digit version"):
        migration("087_again")
    with pytest.raises(ValueError, match="three-digit version"):
        migration("no_version")


def test_every_json_document_column_is_jsonb_and_only_those(url):
    """`decode` parses columns by name (JSON_COLUMNS): on PostgreSQL those, and only those, are jsonb."""
    from engine.store.base import JSON_COLUMNS
    from engine.store.postgres import PostgresStore

    store = PostgresStore(url)
    types = {k: v for k, v in _types(store).items() if not k[0].startswith("_")}
    store.close()
    named = {k for k in types if k[1] in JSON_COLUMNS}
    assert named and {k for k, t in types.items() if t == "jsonb"} == named


def test_a_migration_declares_a_json_document_column_as_dict(url):
    import sqlite3

    import psycopg

    from engine.store.dialect import POSTGRES, SQLITE
    from engine.store.schema import Schema

    with psycopg.connect(url, autocommit=True) as conn:
        schema = Schema(conn.execute, POSTGRES)
        schema.table("notes").create({"id": int, "body": str, "output": dict}, pk="id")
        schema.table("notes").add_column("input", dict)
        got = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_name = 'notes'").fetchall())
    assert got == {"id": "bigint", "body": "text", "output": "jsonb", "input": "jsonb"}
    lite = sqlite3.connect(":memory:")  # the same declaration on SQLite: JSON text
    Schema(lite.execute, SQLITE).table("notes").create({"id": int, "output": dict}, pk="id")
    assert [(r[1], r[2]) for r in lite.execute("PRAGMA table_info(notes)")] == [("id", "INTEGER"), ("output", "TEXT")]
