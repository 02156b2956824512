"""The engine's one clock: the UTC timestamps every store row, ledger entry and budget day is
stamped with. Times are ISO 8601 strings with microseconds, so they sort as text."""

from __future__ import annotations

from datetime import datetime, timezone


def now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


def now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds (`2026-01-31T12:00:00.123456+00:00`)."""
    return now().isoformat(timespec="microseconds")


def today() -> str:
    """The current UTC date (`2026-01-31`), the unit of the daily budgets."""
    return now().strftime("%Y-%m-%d")
