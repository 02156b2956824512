"""`open_store(target)`: the process-wide store for a SQLite path or a `postgresql://` URL (one
connection, or one pool, shared by every run of the process)."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.store.base import Store, is_postgres_url
from engine.store.sqlite import SQLiteStore

_stores: dict[Path | str, Any] = {}
_stores_lock = threading.Lock()
_by_name: dict[tuple[str, str], Any] = {}


def open_store(path: str | Path) -> Store:
    """The process-wide store for `path` (one connection, shared by every run), or for a
    `postgresql://` URL (one connection pool)."""
    name = str(path)
    fast = ("", name) if os.path.isabs(name) else (os.getcwd(), name)  # no path resolution on the hot path
    store = _by_name.get(fast)
    if store is not None and not store._closed:
        return store  # type: ignore[no-any-return]
    if is_postgres_url(name):
        with _stores_lock:
            store = _stores.get(name)
            if store is None or store._closed:
                from engine.store.postgres import PostgresStore

                store = _stores[name] = PostgresStore(name)
            _by_name[fast] = store
            return store  # type: ignore[no-any-return]
    key = Path(path).resolve()
    with _stores_lock:
        store = _stores.get(key)
        if store is None or store._closed:
            try:
                store = SQLiteStore(key)
            except (sqlite3.DatabaseError, OSError) as e:  # not a database, unwritable, a directory
                raise ConfigError(f"cannot open the store at '{key}' (ENGINE_DB or `store:` in engine.yaml): "
                                  f"{e}") from None
            _stores[key] = store
        _by_name[fast] = store
        return store  # type: ignore[no-any-return]
