"""The SQLite run log."""

from engine.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore"]
