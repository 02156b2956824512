"""A project whose cloud tiers point at in-process OpenAI / Anthropic servers (batch APIs included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from batch_helpers import Project, good_answer

from engine.testing.batch_servers import FakeProviderServer, Scenario


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-for-the-fake")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key-for-the-fake")


@pytest.fixture
def served(engine_home: Path) -> Callable[..., Project]:
    servers: list[FakeProviderServer] = []

    def start(answer: Callable[..., Any] = good_answer, scenario: Scenario | None = None) -> Project:
        server = FakeProviderServer(answer, scenario).__enter__()
        servers.append(server)
        return Project(engine_home, server)

    yield start
    for server in servers:
        server.__exit__(None, None, None)
