"""`needs_isolation`: for tests that need a generated script to actually run. Where the kernel
refuses the sandbox's namespaces, the sandbox fails closed (tested on its own), and these skip
with the reason. With `ENGINE_REQUIRE_SANDBOX=1` (CI) a sandbox that cannot run, or a missing
bubblewrap, fails the run instead: there the OS layer must actually be tested."""

from __future__ import annotations

import os

import pytest

from engine.promotion.sandbox import isolation, isolation_problem

REQUIRED = os.environ.get("ENGINE_REQUIRE_SANDBOX") == "1"
_problem = isolation_problem()
_bwrap_problem = isolation.bubblewrap_problem()
if REQUIRED and (_problem or _bwrap_problem):
    raise RuntimeError(f"ENGINE_REQUIRE_SANDBOX=1, but the sandbox cannot run here: {_problem or _bwrap_problem}")

needs_isolation = pytest.mark.skipif(_problem is not None, reason=f"the sandbox fails closed here: {_problem}")
needs_bubblewrap = pytest.mark.skipif(_bwrap_problem is not None, reason=f"no bubblewrap here: {_bwrap_problem}")


@pytest.fixture(params=["bwrap", "namespaces"])
def os_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each OS backend in turn: bubblewrap where it works, and the namespaces fallback."""
    if request.param == "bwrap" and _bwrap_problem is not None:
        pytest.skip(f"no bubblewrap here: {_bwrap_problem}")
    monkeypatch.setenv("ENGINE_SANDBOX_BACKEND", request.param)
    return str(request.param)
