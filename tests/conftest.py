"""Shared fixtures: a temporary engine home per test, a fake provider registered for the test
(and removed after), and a guard that fails any test trying to reach the network."""

from __future__ import annotations

import ipaddress
import socket
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

from engine.providers.fake import FakeProvider
from engine.providers.registry import register_provider, unregister_provider

ROOT = Path(__file__).resolve().parents[1]

FAKE_CONFIG = """
tiers:
  local:
    - model: fake:small
      input_price: 0.1
      output_price: 0.2
  standard:
    - model: fake:medium
      input_price: 1.0
      output_price: 2.0
  premium:
    - model: fake:large
      input_price: 10.0
      output_price: 30.0
"""


def _is_loopback(address: Any) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return isinstance(address, (str, bytes))  # unix sockets


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise AssertionError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(autouse=True)
def engine_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in its own working directory with its own user config and store."""
    home = tmp_path / "home"
    home.mkdir()
    # No random reference checks in tests of other features (they assert exact call sequences);
    # tests/quality turns sampling on explicitly.
    (home / "engine.yaml").write_text("quality: {sample: 0}\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("ENGINE_HOME", str(home))
    monkeypatch.delenv("ENGINE_DB", raising=False)
    monkeypatch.chdir(work)
    return work


@pytest.fixture(autouse=True)
def _fresh_routing_state() -> None:
    """Cooldowns and in-process budget holds are per process: start every test clean."""
    from engine.budgets import reset_ledger
    from engine.routing import COOLDOWNS

    COOLDOWNS.reset()
    reset_ledger()


@pytest.fixture
def fake() -> Any:
    provider = FakeProvider()
    register_provider("fake", provider)
    yield provider
    unregister_provider("fake")


@pytest.fixture
def project(engine_home: Path) -> Callable[..., Path]:
    """Write a workflow (and by default the fake-tier engine.yaml) into the working dir."""

    def write(workflow: str, *, name: str = "workflow.yaml", config: str | None = FAKE_CONFIG,
              files: dict[str, str] | None = None) -> Path:
        if config is not None:
            (engine_home / "engine.yaml").write_text(textwrap.dedent(config))
        for fname, content in (files or {}).items():
            (engine_home / fname).parent.mkdir(parents=True, exist_ok=True)
            (engine_home / fname).write_text(textwrap.dedent(content))
        path = engine_home / name
        path.write_text(textwrap.dedent(workflow))
        return path

    return write
