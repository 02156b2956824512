"""One round trip per write-behind batch on PostgreSQL: libpq's pipeline mode, prepared statements.

    BEGIN ─ Bind/Execute x N (each statement prepared once per connection) ─ COMMIT ─ Sync

The writer thread's batch (a run's row, its steps and calls, its finish; many runs) is sent in one
go and its answers read after one Sync: the batch costs one network round trip and one commit,
whatever its size. Statements go straight to psycopg's libpq wrapper (`conn.pgconn`), without a
cursor per statement, with `$n` placeholders (`engine.store.dialect.numbered`) and parameters as
text (`text_param`), so the server infers each parameter's type from its column.

A failed statement raises its own error (`psycopg.errors.*`, e.g. UniqueViolation) after the Sync,
its transaction then aborted (`in error`): the writer rolls it back and writes the rows one by one.
A lost connection raises `psycopg.OperationalError`: nothing of the batch committed.
"""

from __future__ import annotations

import itertools
import json
import select
from decimal import Decimal
from typing import Any

from engine.store.base import clean_text
from engine.store.dialect import numbered

try:
    import psycopg
    from psycopg import pq
    from psycopg.errors import error_from_result
except ImportError:  # pragma: no cover - the postgres extra is not installed
    psycopg = None  # type: ignore[assignment]

_names = itertools.count()


def text_param(value: Any) -> bytes | None:
    """A parameter in PostgreSQL's text input format (NULL as None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return clean_text(value).encode("utf-8")
    if isinstance(value, bool):  # before int: bool columns are BIGINT
        return b"1" if value else b"0"
    if isinstance(value, (int, float, Decimal)):
        return str(value).encode("ascii")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"\\x" + bytes(value).hex().encode("ascii")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    return str(value).encode("utf-8")


def text_params(params: Any) -> list[bytes | None]:
    """`text_param` of each, with the common types (ASCII text, int, float, NULL) inline."""
    out: list[bytes | None] = []
    for p in params or ():
        t = type(p)
        if t is str and p.isascii() and "\x00" not in p:
            out.append(p.encode("ascii"))
        elif p is None:
            out.append(None)
        elif t is int or t is float:
            out.append(str(p).encode("ascii"))
        else:
            out.append(text_param(p))
    return out


class Pipeline:
    """The prepared statements of one connection, and the batch write through them."""

    def __init__(self) -> None:
        self.prepared: dict[str, bytes] = {}

    def reset(self) -> None:
        """After a reconnect, or a failed batch (whose prepares may not have run): prepare again."""
        self.prepared = {}

    def write(self, conn: Any, batch: list[tuple[str, Any]], *, transaction: bool = True) -> None:
        """Every `(sql, params)` of `batch` (`?` placeholders, positional params) in order, in one
        transaction (`transaction`: BEGIN/COMMIT around it), in one round trip."""
        pg = conn.pgconn
        new: list[str] = []
        pg.enter_pipeline_mode()
        try:
            if transaction:
                pg.send_query_params(b"BEGIN", None)
            for sql, params in batch:
                name = self.prepared.get(sql)
                if name is None:
                    name = self.prepared[sql] = f"engine_w{next(_names)}".encode("ascii")
                    new.append(sql)
                    pg.send_prepare(name, numbered(sql).encode("utf-8"))
                pg.send_query_prepared(name, text_params(params))
            if transaction:
                pg.send_query_params(b"COMMIT", None)
            pg.pipeline_sync()
            _send(pg)
            error = _results(pg, conn)
        except BaseException:
            for sql in new:
                self.prepared.pop(sql, None)
            raise
        finally:
            if pg.pipeline_status != pq.PipelineStatus.OFF and pg.status == pq.ConnStatus.OK:
                try:
                    pg.exit_pipeline_mode()
                except psycopg.Error:  # results left unread after a lost connection
                    pass
        if error is not None:
            for sql in new:
                self.prepared.pop(sql, None)
            raise error


def _send(pg: Any) -> None:
    """Push what libpq holds of the batch to the server, waiting (without the GIL) while the
    socket is full, and reading answers meanwhile so that a server blocked on its own sends cannot
    block us."""
    while pg.flush() == 1:
        readable, _, _ = select.select([pg.socket], [pg.socket], [])
        if readable:
            pg.consume_input()


def _ready(pg: Any) -> None:
    """Wait until `get_result` would not block: the wait happens in `select`, which lets the
    producers run (libpq's own wait inside `get_result` holds the GIL, and the threads that queue
    runs would stall behind the server)."""
    while pg.is_busy():
        select.select([pg.socket], [], [])
        pg.consume_input()


def _results(pg: Any, conn: Any) -> BaseException | None:
    """Read every answer up to the Sync; the first statement's error, if one failed."""
    error: BaseException | None = None
    while True:
        _ready(pg)
        res = pg.get_result()
        if res is None:
            if pg.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError(f"the connection was lost: {pg.get_error_message()}")
            continue  # the end of one statement's results
        status = res.status
        if status == pq.ExecStatus.PIPELINE_SYNC:
            return error
        if status == pq.ExecStatus.FATAL_ERROR and error is None:
            error = error_from_result(res, encoding=conn.info.encoding)
            if pg.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError(str(error))
