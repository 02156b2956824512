"""The store protocol: what the engine asks of its run log, whatever database holds it.

    Store ─┬─ SQLiteStore    (engine.store.sqlite: one file, the embedded default)
           └─ PostgresStore  (engine.store.postgres: psycopg 3 + psycopg_pool, pgvector)

Both take the same SQL text, written once: `?` placeholders and the subset of SQL both dialects
share, compiled per backend by `engine.store.dialect` (a scanner, not pattern rewriting). Where
the dialects differ, the store says it: `json_field(column, key)` for a JSON column's field
(`json_extract` on SQLite, `->>` on Postgres), `data_version()` for "did another connection
write", `dialect` for the rest (the cache's vector search). The log rows of a run
(`start_run`, `record_step`, `record_llm_call`, `finish_run`) are written behind on both.

`open_store_url(target)` picks the backend from `store:` in engine.yaml or `ENGINE_DB`:
a `postgresql://` (or `postgres://`) URL opens Postgres, anything else is a SQLite path.
"""

from __future__ import annotations

import json
import re
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any, Iterator, Protocol, runtime_checkable

JSON_COLUMNS = {"inputs", "outputs", "tags", "output", "validation_errors", "input", "cheap_output",
                "reference_output"}

_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(value: Any) -> Any:
    """Text a database can store: lone surrogates (from hostile replies or requests) become U+FFFD;
    NUL characters (which PostgreSQL text refuses) become U+FFFD too."""
    if isinstance(value, str):
        if value.isascii() and "\x00" not in value:  # most text: nothing to clean
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = _SURROGATES.sub("\ufffd", value)
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
    return value


def dump(value: Any, sort_keys: bool = False) -> str | None:
    """JSON text of `value`, storable by both backends: a NUL in a string becomes U+FFFD (jsonb
    refuses the `\\u0000` escape), lone surrogates too."""
    if value is None:
        return None
    text = json.dumps(value, ensure_ascii=False, default=str, sort_keys=sort_keys)
    if "\\u0000" in text:  # rare: dump again without the NULs
        text = json.dumps(_without_nul(value), ensure_ascii=False, default=str, sort_keys=sort_keys)
    return clean_text(text)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nul(v) for v in value]
    return value


def plain(row: dict[str, Any]) -> dict[str, Any]:
    """Postgres' NUMERIC sums as int or float, BYTEA as bytes (JSON columns left as text)."""
    out = dict(row)
    for key, value in out.items():
        if isinstance(value, Decimal):
            out[key] = int(value) if value == value.to_integral_value() else float(value)
        elif isinstance(value, memoryview):
            out[key] = bytes(value)
    return out


def decode(row: dict[str, Any]) -> dict[str, Any]:
    """JSON columns decoded; Postgres' NUMERIC sums as int or float."""
    out = plain(row)
    for key in JSON_COLUMNS & out.keys():
        if isinstance(out[key], str):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass
    return out


def is_postgres_url(target: Any) -> bool:
    return isinstance(target, str) and target.split("://", 1)[0] in ("postgresql", "postgres")


class Transaction(Protocol):
    """The statements of one `Store.transaction()`: all committed, or none."""

    def execute(self, sql: str, params: Any = ()) -> int: ...

    def execute_many(self, sql: str, rows: list[Any]) -> None: ...

    def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]: ...


@runtime_checkable
class Store(Protocol):
    """What the engine needs of a store (SQLiteStore and PostgresStore implement it)."""

    dialect: str
    """'sqlite' | 'postgresql'"""

    # the run log, written behind
    def start_run(self, run_id: str, workflow: str, version: str, path: str | None,
                  inputs: dict[str, Any], tags: dict[str, Any] | None = None) -> None: ...

    def finish_run(self, run_id: str, *, status: str, outputs: Any, error: str | None, tokens_in: int,
                   tokens_out: int, cost: float, latency_ms: float, baseline_cost: float = 0.0) -> None: ...

    def record_step(self, row: dict[str, Any], *, link_calls: bool = False) -> None: ...

    def record_llm_call(self, row: dict[str, Any]) -> None: ...

    def enqueue(self, sql: str, params: Any = ()) -> None: ...

    # written at once
    def insert_now(self, table: str, row: dict[str, Any], *, returning: bool = True) -> int: ...

    def update(self, table: str, key: Any, fields: dict[str, Any], *, key_column: str = "id") -> int: ...

    def execute(self, sql: str, params: Any = (), *, flush: bool = True) -> int: ...

    def execute_returning(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        """The first row of a statement with RETURNING (or a SELECT), JSON columns as text,
        without draining the write queue."""

    def transaction(self) -> AbstractContextManager[Transaction]: ...

    # reads (queued writes first, unless flush=False)
    def query(self, sql: str, params: Any = None, *, flush: bool = True) -> list[dict[str, Any]]: ...

    def runs(self, *, workflow: str | None = None, limit: int = 20) -> list[dict[str, Any]]: ...

    def run(self, run_id: str) -> dict[str, Any] | None: ...

    def iter_llm_calls(self, workflow: str, step_id: str) -> Iterator[dict[str, Any]]: ...

    # dialect
    def json_field(self, column: str, key: str) -> tuple[str, list[Any]]: ...

    def data_version(self) -> Any: ...

    # life cycle
    def flush(self) -> int: ...

    def close(self) -> None: ...


def run_of(store: Store, run_id: str) -> dict[str, Any] | None:
    """A run by id or unique id prefix, with its steps and llm calls (shared by both stores)."""
    rows = store.query("SELECT * FROM runs WHERE id = ? OR id LIKE ? ORDER BY started_at DESC LIMIT 2",
                       [run_id, run_id + "%"])
    if len(rows) != 1:
        return None
    run = rows[0]
    run["steps"] = store.query("SELECT * FROM steps WHERE run_id = ? ORDER BY id", [run["id"]])
    run["llm_calls"] = store.query("SELECT * FROM llm_calls WHERE run_id = ? ORDER BY id", [run["id"]])
    return run


def runs_of(store: Store, workflow: str | None, limit: int) -> list[dict[str, Any]]:
    where, params = ("WHERE workflow = ?", [workflow]) if workflow else ("", [])
    return store.query(f"SELECT * FROM runs {where} ORDER BY started_at DESC LIMIT ?", [*params, limit])


class StoreReads:
    """The run-log reads every backend shares (each backend supplies `query`)."""

    def runs(self, *, workflow: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        return runs_of(self, workflow, limit)  # type: ignore[arg-type]

    def run(self, run_id: str) -> dict[str, Any] | None:
        return run_of(self, run_id)  # type: ignore[arg-type]

    def iter_llm_calls(self, workflow: str, step_id: str) -> Iterator[dict[str, Any]]:
        yield from self.query("SELECT * FROM llm_calls WHERE workflow = ? AND step_id = ? ORDER BY id",  # type: ignore[attr-defined]
                              [workflow, step_id])


LINK_SQL = ("UPDATE llm_calls SET step_execution_id = ? WHERE run_id = ? AND step_id = ? "
            "AND step_execution_id IS NULL AND purpose IS NULL")
