"""The run log: one protocol (`Store`), SQLite embedded by default, PostgreSQL for scale-out."""

from engine.store.base import Store
from engine.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store"]
