"""The SQLite store: runs, step executions and llm calls, through sqlite-utils, in WAL mode.

One connection per store, shared across threads behind a lock; other processes coordinate
through WAL and a busy timeout. JSON columns are stored as text and decoded on read.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import time
import threading
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

from engine.store.migrations import _now, migrate

JSON_COLUMNS = {"inputs", "outputs", "tags", "output", "validation_errors", "input", "cheap_output",
                "reference_output"}


def clean_text(value: Any) -> Any:
    """Text SQLite can store: lone surrogates (from hostile replies or requests) become U+FFFD."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATES.sub("\ufffd", value)
    return value


_SURROGATES = re.compile("[\ud800-\udfff]")


def _dump(value: Any) -> str | None:
    return None if value is None else clean_text(json.dumps(value, ensure_ascii=False, default=str))


class SQLiteStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        self.db = sqlite_utils.Database(conn)
        self.lock = threading.RLock()
        with self.lock:
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")
            _retry_locked(lambda: migrate(self.db))

    def close(self) -> None:
        with self.lock:
            self.db.conn.close()

    # --- writes ---------------------------------------------------------------------------------

    def start_run(self, run_id: str, workflow: str, version: str, path: str | None,
                  inputs: dict[str, Any], tags: dict[str, Any] | None = None) -> None:
        self._insert("runs", {
            "id": run_id, "workflow": workflow, "workflow_version": str(version),
            "workflow_path": path, "status": "running", "inputs": _dump(inputs),
            "tags": _dump(tags or {}), "tokens_in": 0, "tokens_out": 0, "cost": 0.0,
            "started_at": _now(),
        })

    def finish_run(self, run_id: str, *, status: str, outputs: Any, error: str | None,
                   tokens_in: int, tokens_out: int, cost: float, latency_ms: float,
                   baseline_cost: float = 0.0) -> None:
        values = {
            "status": status, "outputs": _dump(outputs), "error": error, "tokens_in": tokens_in,
            "tokens_out": tokens_out, "cost": cost, "latency_ms": latency_ms, "ended_at": _now(),
            "baseline_cost": baseline_cost,
        }
        sql = f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?"
        with self.lock:
            self.db.conn.execute(sql, [*map(clean_text, values.values()), run_id])

    def record_step(self, row: dict[str, Any]) -> int:
        row = {k: (_dump(v) if k in JSON_COLUMNS else v) for k, v in row.items()}
        row.setdefault("started_at", _now())
        return self._insert("steps", row)

    def record_llm_call(self, row: dict[str, Any]) -> int:
        row = {k: (_dump(v) if k in JSON_COLUMNS else v) for k, v in row.items()}
        row.setdefault("created_at", _now())
        return self._insert("llm_calls", row)

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        """One row, one autocommitted INSERT. Plain SQL on the hot path: sqlite-utils' `insert`
        introspects the table on every call, about 3x slower."""
        sql = f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        with self.lock:
            return int(self.db.conn.execute(sql, [clean_text(v) for v in row.values()]).lastrowid or 0)

    def link_calls(self, run_id: str, step_id: str, step_execution_id: int) -> None:
        with self.lock:
            self.db.execute(
                "UPDATE llm_calls SET step_execution_id = ? WHERE run_id = ? AND step_id = ? "
                "AND step_execution_id IS NULL AND purpose IS NULL", [step_execution_id, run_id, step_id])

    # --- reads ----------------------------------------------------------------------------------

    def query(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        with self.lock:
            rows = list(self.db.query(sql, params or []))
        return [_decode(r) for r in rows]

    def runs(self, *, workflow: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        where, params = ("WHERE workflow = ?", [workflow]) if workflow else ("", [])
        return self.query(f"SELECT * FROM runs {where} ORDER BY started_at DESC LIMIT ?", [*params, limit])

    def run(self, run_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM runs WHERE id = ? OR id LIKE ? ORDER BY started_at DESC LIMIT 2",
                          [run_id, run_id + "%"])
        if len(rows) != 1:
            return None
        run = rows[0]
        run["steps"] = self.query("SELECT * FROM steps WHERE run_id = ? ORDER BY id", [run["id"]])
        run["llm_calls"] = self.query("SELECT * FROM llm_calls WHERE run_id = ? ORDER BY id", [run["id"]])
        return run

    def iter_llm_calls(self, workflow: str, step_id: str) -> Iterator[dict[str, Any]]:
        yield from self.query("SELECT * FROM llm_calls WHERE workflow = ? AND step_id = ? ORDER BY id",
                              [workflow, step_id])


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


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in JSON_COLUMNS & out.keys():
        if isinstance(out[key], str):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass
    return out
