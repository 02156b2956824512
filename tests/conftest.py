"""Shared fixtures: a temporary engine home per test, a fake provider registered for the test
(and removed after), and a guard that fails any test trying to reach the network.

Under CI (the `CI` environment variable set) no test may skip: a skip there would hide a
capability the suite must exercise (PostgreSQL, the browser, the sandbox's OS isolation layer,
gguf, llama_cpp.server, ...), so every skip, at collection or at run time, is reported as a
failure that keeps the skip's reason."""

from __future__ import annotations

import ipaddress
import os
import socket
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

from engine.providers.fake import FakeProvider
from engine.providers.registry import register_provider, unregister_provider

ROOT = Path(__file__).resolve().parents[1]
# Subprocesses (the CLI, benchmarks, batch workers, Ray workers) import the engine of this checkout,
# as the test process does, not whatever copy an editable install elsewhere points to.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)

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


def _ci() -> bool:
    return bool(os.environ.get("CI"))


def _skip_reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, reason)
        return f"{longrepr[2]} ({longrepr[0]}:{longrepr[1]})"
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """A module that skips as a whole (`importorskip`, a module-level `pytest.skip`) fails in CI."""
    outcome = yield
    report = outcome.get_result()
    if _ci() and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test must run: {_skip_reason(report.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A test that skips (a `skipif` mark, `pytest.skip` in it or in a fixture) fails in CI."""
    outcome = yield
    report = outcome.get_result()
    if _ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test must run: {_skip_reason(report.longrepr)}"


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
