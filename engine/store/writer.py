"""Write-behind for the run log: log rows are queued and written by one background thread.

    producer threads ──append──▶ pending (bounded deque) ──▶ writer thread: BEGIN; N rows; COMMIT

- The hot path (a run's start, its steps, its llm calls, cache lookup events) only appends a
  prepared `(sql, params)` to a deque: a few microseconds, no lock, no SQLite call.
- One writer thread per store drains the queue in one transaction per `batch_rows` rows or
  `interval_s` seconds, whichever comes first. A connection with `write_batch` (Postgres:
  `engine.store.pipeline`) takes the whole batch at once, in one round trip.
- Backpressure: the queue holds at most `max_pending` operations. A producer that finds it full
  writes the queue itself, under the connection lock, before it goes on (so a stalled writer or a
  locked database slows producers down instead of growing memory without bound).
- Read-your-writes: every read through the store (`SQLiteStore.query`, and any code that takes
  `store.lock` to use the connection) drains the queue first, on the reader's thread. A reader
  that does not take the lock (the Postgres store's pooled reads) asks `unsettled`, which also
  covers the batch the writer thread has taken from the queue and is still committing.
- Durability: `flush()` on `Engine.close()`, `SQLiteStore.close()`, at interpreter exit (atexit)
  and on SIGTERM/SIGHUP (the handler flushes, then lets the signal kill the process as before).
  A hard kill (SIGKILL, power loss) loses at most the operations queued and not yet committed:
  those of the last `interval_s` seconds, and never more than `max_pending`. Operations commit in
  the order they were queued, so a committed `finish_run` implies its steps and calls are
  committed too (batch checkpoints stay exact: an item whose finish was lost is simply re-run).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sqlite3
import threading
import time
import weakref
from collections import deque
from typing import Any

log = logging.getLogger("engine.store")

Op = tuple[str, Any]
"""(sql, params), or ("", callable(conn)) for a compound write (e.g. insert a step, then link its calls)."""


class WriteBehind:
    """The queue and writer thread of one connection. `lock` is the connection's (raw) lock."""

    def __init__(self, conn: Any, lock: threading.RLock, *, interval_s: float = 0.05,
                 batch_rows: int = 512, max_pending: int = 10_000, enabled: bool = True,
                 errors: tuple[type[BaseException], ...] = (sqlite3.Error,),
                 lost: tuple[type[BaseException], ...] = ()):
        """`conn`: a sqlite3 connection, or anything with `execute(sql, params)` and `in_transaction`
        (the Postgres store's writer connection). `errors`: a statement failed (the batch is
        retried row by row). `lost`: the connection was lost (the batch goes back to the queue and
        `conn.reconnect()` is tried before the next attempt)."""
        self.conn = conn
        self.error_types = errors
        self.lost_types = lost
        self.lock = lock
        self.interval_s = interval_s
        self.batch_rows = batch_rows
        self.max_pending = max(1, max_pending)
        self.enabled = enabled
        self.pending: deque[Op] = deque()
        self.errors = 0
        """Operations that failed to write (logged to the `engine.store` logger)."""
        self.committed = 0
        self.batches = 0
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._draining: int | None = None
        if enabled:
            _register(self)

    @property
    def unsettled(self) -> bool:
        """Operations queued, or taken from the queue and being committed right now. A reader that
        does not take `lock` flushes first when this is true: `flush` waits for the batch in flight.
        (The queue is read first: a batch is taken from it only after `_draining` is set, and
        `_draining` is cleared only once the batch is committed.)"""
        return bool(self.pending) or self._draining is not None

    # --- producers ------------------------------------------------------------------------------

    def put(self, sql: str, params: Any) -> None:
        if not self.enabled:
            self._write_now(sql, params)
            return
        pending = self.pending
        pending.append((sql, params))
        n = len(pending)
        if n >= self.max_pending:
            self.flush()  # backpressure: the producer pays for the write
        elif n >= self.batch_rows:
            self._hurry.set()
        if not self._wake.is_set():
            if self._thread is None:
                self._start()
            self._wake.set()

    def _write_now(self, sql: str, params: Any) -> None:
        with self.lock:
            _apply(self.conn, sql, params)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="engine-store-writer", daemon=True)
                self._thread.start()

    # --- the writer -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stop and not self.pending:
                return
            self._hurry.wait(self.interval_s)  # gather a batch: up to interval_s, or batch_rows rows
            self._hurry.clear()
            self._wake.clear()
            try:
                self.flush()
            except self.lost_types as e:
                log.warning("engine store writer: connection lost (%s); retrying", e)
                time.sleep(0.2)
            except Exception:  # noqa: BLE001 - the writer must outlive one bad batch
                log.exception("engine store writer: flush failed")
            if self.pending:
                self._wake.set()
            if self._stop and not self.pending:
                return

    def flush(self) -> int:
        """Write every queued operation now (on the caller's thread); returns how many. Taking the
        lock also waits for a batch the writer thread is committing."""
        with self.lock:
            return self.drain_locked()

    def drain_locked(self) -> int:
        """Write the queue in transactions of at most `batch_rows`; the caller holds `lock`."""
        me = threading.get_ident()
        if self._draining == me:  # re-entered (a signal handler on this thread): leave it to the outer drain
            return 0
        self._draining = me
        written = 0
        try:
            while self.pending:
                batch: list[Op] = []
                pending = self.pending
                while pending and len(batch) < self.batch_rows:
                    batch.append(pending.popleft())
                written += self._write(batch)
        finally:
            self._draining = None
        return written

    def _write(self, batch: list[Op]) -> int:
        conn = self.conn
        outer = conn.in_transaction  # inside someone's explicit transaction: join it
        write_batch = getattr(conn, "write_batch", None)
        try:
            if write_batch is not None and all(sql for sql, _ in batch):
                write_batch(batch, transaction=not outer)  # Postgres: the batch in one round trip
            else:
                self._write_each(conn, batch, outer)
        except self.lost_types:  # the server went away: nothing of the batch committed; queue it again
            self.pending.extendleft(reversed(batch))
            self.conn.reconnect()
            raise
        except self.error_types:
            if not outer and conn.in_transaction:
                conn.execute("ROLLBACK")
            return self._write_one_by_one(batch) if not outer else 0
        except BaseException:  # interrupted (KeyboardInterrupt): put the batch back for the next flush
            if not outer and conn.in_transaction:
                conn.execute("ROLLBACK")
            self.pending.extendleft(reversed(batch))
            raise
        self.committed += len(batch)
        self.batches += 1
        return len(batch)

    @staticmethod
    def _write_each(conn: Any, batch: list[Op], outer: bool) -> None:
        if not outer:
            conn.execute("BEGIN")
        for sql, params in batch:
            _apply(conn, sql, params)
        if not outer:
            conn.execute("COMMIT")

    def _write_one_by_one(self, batch: list[Op]) -> int:
        """A batch failed: write its operations alone, so one bad row does not lose the others."""
        ok = 0
        for sql, params in batch:
            try:
                _apply(self.conn, sql, params)
                ok += 1
            except self.error_types as e:
                self.errors += 1
                log.error("engine store writer: dropped a write that failed (%s): %s", e, sql[:120])
        self.committed += ok
        return ok

    def close(self) -> None:
        """Flush and stop the writer thread."""
        self._stop = True
        self._wake.set()
        self._hurry.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        self.flush()
        _writers.discard(self)


def _apply(conn: Any, sql: str, params: Any) -> None:
    if sql:
        conn.execute(sql, params)
    else:
        params(conn)


# --- process-wide: flush every store at exit and on termination signals ---------------------------

_writers: weakref.WeakSet[WriteBehind] = weakref.WeakSet()
_hooks_lock = threading.Lock()
_hooks_installed = False
FLUSH_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


def flush_all() -> None:
    """Flush every open store's queue (at exit, on signals, from `Engine.close`)."""
    for writer in list(_writers):
        try:
            writer.flush()
        except Exception:  # noqa: BLE001 - flush the others
            log.exception("engine store: flush at exit failed")


def _on_signal(signum: int, frame: Any) -> None:
    flush_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # die of the same signal, as without the engine


def _register(writer: WriteBehind) -> None:
    global _hooks_installed
    _writers.add(writer)
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(flush_all)
        if threading.current_thread() is threading.main_thread():
            for sig in FLUSH_SIGNALS:
                try:
                    if signal.getsignal(sig) == signal.SIG_DFL:  # never replace an application's handler
                        signal.signal(sig, _on_signal)
                except (ValueError, OSError):  # pragma: no cover - not allowed here
                    pass
