from __future__ import annotations

from pathlib import Path

import pytest

import pgserve


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where a store lives, once per backend: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "contract.db")
    monkeypatch.delenv("ENGINE_PGVECTOR_INDEX", raising=False)  # the default: an HNSW index
    return pgserve.fresh_database()
