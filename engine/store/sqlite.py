"""The SQLite store: runs, step executions and llm calls, in WAL mode.

One connection per store, shared across threads behind a lock; other processes coordinate
through WAL and a busy timeout. JSON columns are stored as text and decoded on read. The schema
comes from the migrations (`engine.store.migrations`, their DDL from `engine.store.schema`);
`store.db` is a sqlite-utils `Database` on the same connection, for queries.

Log rows (runs, steps, llm calls, cache lookup events) are written behind: queued on the hot
path and committed in batches by one writer thread (see `engine.store.writer` for the queue,
backpressure, flushing and what a hard kill may lose). Reads see every write made before them:
`query` and `with store.lock:` drain the queue first. `ENGINE_STORE_SYNC=1` (or
`SQLiteStore(path, write_behind=False)`) writes every row before the call returns instead.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

from engine.store.base import JSON_COLUMNS, LINK_SQL, clean_text, decode, dump, plain, StoreReads
from engine.clock import now_iso
from engine.store.dialect import SQLITE
from engine.store.migrations import migrate
from engine.store.schema import Schema
from engine.store.writer import WriteBehind

_dump = dump
_LINK_SQL = LINK_SQL
__all__ = ["SQLiteStore", "clean_text", "JSON_COLUMNS"]


class _FlushingLock:
    """`store.lock`: the connection's lock, which first writes the queued rows, so whoever takes
    it to use the connection directly reads what was written before."""

    def __init__(self, raw: threading.RLock, writer: WriteBehind):
        self.raw = raw
        self.writer = writer

    def __enter__(self) -> _FlushingLock:
        self.raw.acquire()
        if self.writer.pending:
            try:
                self.writer.drain_locked()
            except BaseException:
                self.raw.release()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.release()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        ok = self.raw.acquire(blocking, timeout)
        if ok and self.writer.pending:
            self.writer.drain_locked()
        return ok

    def release(self) -> None:
        self.raw.release()


class SQLiteStore(StoreReads):
    dialect = "sqlite"

    def __init__(self, path: str | Path, *, write_behind: bool | None = None, flush_interval_s: float = 0.05,
                 batch_rows: int = 512, max_pending: int = 10_000):
        """`write_behind`: queue log rows for the writer thread (default; `ENGINE_STORE_SYNC=1`
        turns it off). `flush_interval_s` / `batch_rows`: a transaction at least this often / per
        this many rows. `max_pending`: the queue bound (producers write it themselves when full)."""
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        self.db = sqlite_utils.Database(conn)
        self.conn_lock = threading.RLock()
        """The connection's lock without the flush: for reads of tables the queue never writes."""
        if write_behind is None:
            write_behind = os.environ.get("ENGINE_STORE_SYNC", "").strip().lower() not in ("1", "true", "yes")
        self.writer = WriteBehind(conn, self.conn_lock, interval_s=flush_interval_s, batch_rows=batch_rows,
                                  max_pending=max_pending, enabled=write_behind)
        self.lock = _FlushingLock(self.conn_lock, self.writer)
        self._sql: dict[tuple[str, tuple[str, ...]], str] = {}
        self._closed = False
        with self.conn_lock:
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")
            _retry_locked(lambda: migrate(Schema(conn.execute, SQLITE)))

    def flush(self) -> int:
        """Commit every queued write now; returns how many were written."""
        return self.writer.flush()

    def close(self) -> None:
        """Flush, stop the writer thread and close the connection."""
        if self._closed:
            return
        self.writer.close()
        with self.conn_lock:
            self._closed = True
            self.db.conn.close()

    # --- writes ---------------------------------------------------------------------------------

    def start_run(self, run_id: str, workflow: str, version: str, path: str | None,
                  inputs: dict[str, Any], tags: dict[str, Any] | None = None) -> None:
        self._queue_insert("runs", {
            "id": run_id, "workflow": workflow, "workflow_version": str(version),
            "workflow_path": path, "status": "running", "inputs": _dump(inputs),
            "tags": _dump(tags or {}), "tokens_in": 0, "tokens_out": 0, "cost": 0.0,
            "started_at": now_iso(),
        })

    def finish_run(self, run_id: str, *, status: str, outputs: Any, error: str | None,
                   tokens_in: int, tokens_out: int, cost: float, latency_ms: float,
                   baseline_cost: float = 0.0) -> None:
        values = {
            "status": status, "outputs": _dump(outputs), "error": error, "tokens_in": tokens_in,
            "tokens_out": tokens_out, "cost": cost, "latency_ms": latency_ms, "ended_at": now_iso(),
            "baseline_cost": baseline_cost,
        }
        self.writer.put(self._statement("UPDATE runs", tuple(values)), [*map(clean_text, values.values()), run_id])

    def record_step(self, row: dict[str, Any], *, link_calls: bool = False) -> None:
        """Queue a step execution row; with `link_calls`, its run's llm calls for that step are
        linked to it (`step_execution_id`) in the same transaction."""
        row = {k: (_dump(v) if k in JSON_COLUMNS else v) for k, v in row.items()}
        row.setdefault("started_at", now_iso())
        sql, params = self._statement("steps", tuple(row)), [clean_text(v) for v in row.values()]
        if not link_calls:
            self.writer.put(sql, params)
            return
        run_id, step_id = row["run_id"], row["step_id"]

        def insert_and_link(conn: sqlite3.Connection) -> None:
            step_row = conn.execute(sql, params).lastrowid
            conn.execute(_LINK_SQL, [step_row, run_id, step_id])

        self.writer.put("", insert_and_link)

    def record_llm_call(self, row: dict[str, Any]) -> None:
        row = {k: (_dump(v) if k in JSON_COLUMNS else v) for k, v in row.items()}
        row.setdefault("created_at", now_iso())
        self._queue_insert("llm_calls", row)

    def insert_now(self, table: str, row: dict[str, Any], *, returning: bool = True) -> int:
        """Write one row at once (after the queued ones) and return its rowid: for the few rows
        whose id is needed (quality checks and events), not for the per-run log. `returning`:
        False for tables whose key is not an integer id (then 0 is returned)."""
        sql = self._statement(table, tuple(row))
        with self.lock:
            return int(self.db.conn.execute(sql, [clean_text(v) for v in row.values()]).lastrowid or 0)

    def update(self, table: str, key: Any, fields: dict[str, Any], *, key_column: str = "id") -> int:
        """UPDATE one row's `fields` at once; returns the rows changed."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        return self.execute(f"UPDATE {table} SET {sets} WHERE {key_column} = ?",
                            [*(clean_text(v) for v in fields.values()), key])

    def execute(self, sql: str, params: Any = (), *, flush: bool = True) -> int:
        """One statement at once (after the queued ones unless `flush` is False); its rowcount."""
        with (self.lock if flush else self.conn_lock):
            return int(self.db.conn.execute(sql, params or []).rowcount)

    def execute_returning(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        """One statement with a RETURNING clause (or a SELECT); its first row, without the queue."""
        with self.conn_lock:
            cur = self.db.conn.execute(sql, params or [])
            row = cur.fetchone()
            names = [d[0] for d in cur.description or ()]
        return None if row is None else plain(dict(zip(names, row)))

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        """Statements committed together, or not at all (BEGIN IMMEDIATE: the write lock first)."""
        with self.lock:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Tx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def json_field(self, column: str, key: str) -> tuple[str, list[Any]]:
        return SQLITE.json_field(column, key)

    def data_version(self) -> Any:
        """Changes whenever another connection commits (SQLite's `PRAGMA data_version`)."""
        with self.conn_lock:
            return self.db.conn.execute("PRAGMA data_version").fetchone()[0]

    def enqueue(self, sql: str, params: Any = ()) -> None:
        """Queue any write for the writer thread (log rows that nothing reads back at once)."""
        self.writer.put(sql, params)

    def _queue_insert(self, table: str, row: dict[str, Any]) -> None:
        """Queue one INSERT. Plain SQL, prepared once per column set: sqlite-utils' `insert`
        introspects the table on every call."""
        self.writer.put(self._statement(table, tuple(row)), [clean_text(v) for v in row.values()])

    def _statement(self, table: str, columns: tuple[str, ...]) -> str:
        key = (table, columns)
        sql = self._sql.get(key)
        if sql is None:
            if table == "UPDATE runs":
                sql = f"UPDATE runs SET {', '.join(f'{k} = ?' for k in columns)} WHERE id = ?"
            else:
                sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            self._sql[key] = sql
        return sql

    def link_calls(self, run_id: str, step_id: str, step_execution_id: int) -> None:
        self.writer.put(_LINK_SQL, [step_execution_id, run_id, step_id])

    # --- reads ----------------------------------------------------------------------------------

    def query(self, sql: str, params: Any = None, *, flush: bool = True) -> list[dict[str, Any]]:
        """Rows as dicts, JSON columns decoded. Queued writes are written first, unless `flush`
        is False (for tables the queue never writes, on a hot path)."""
        with (self.lock if flush else self.conn_lock):
            rows = list(self.db.query(sql, params or []))
        return [_decode(r) for r in rows]





class _Tx:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, sql: str, params: Any = ()) -> int:
        return int(self.conn.execute(sql, params or []).rowcount)

    def execute_many(self, sql: str, rows: list[Any]) -> None:
        self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        cur = self.conn.execute(sql, params or [])
        names = [d[0] for d in cur.description or ()]
        return [decode(dict(zip(names, row))) for row in cur.fetchall()]


def _retry_locked(fn: Any, attempts: int = 100) -> Any:
    """Run `fn`, retrying while another process holds a lock the busy handler cannot wait on
    (switching a new file to WAL, or WAL recovery, answer SQLITE_BUSY at once)."""
    for attempt in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.02 + random.random() * 0.05)


_decode = decode
