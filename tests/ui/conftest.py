"""Fixtures for the review console: the tickets workflow on fake tiers, a seeded store, and an
HTTP client of the app with the console mounted."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from engine.quality import monitor
from engine.runner import open_store

from ui_helpers import WORKFLOW, respond, seed


@pytest.fixture
def tickets(project: Callable[..., Path], fake: Any) -> Path:
    """The workflow, every ticket run once and checked by the reference."""
    fake.responder = respond
    monitor.seed(7)
    path = project(WORKFLOW)
    seed(path)
    return path


@pytest.fixture
def store(tickets: Path) -> Any:
    return open_store(Path(".engine/engine.db"))


@pytest.fixture
def console(tickets: Path, store: Any) -> Callable[..., Any]:
    """A TestClient of `engine serve --ui` over the tickets workflow (options: token, read_only)."""
    from fastapi.testclient import TestClient

    from engine import Engine
    from engine.http import create_app

    def make(**kwargs: Any) -> Any:
        return TestClient(create_app(Engine(), [tickets], console_store=store, **kwargs), follow_redirects=False,
                          base_url="http://localhost")

    return make
