"""`needs_isolation`: for tests that need a generated script to actually run. Where the kernel
refuses the sandbox's namespaces, the sandbox fails closed (tested on its own), and these skip
with the reason; under CI (`CI` set) that skip is a failure (tests/conftest.py): a machine that
cannot run the OS layer must not pass quietly."""

from __future__ import annotations

import pytest

from engine.promotion.sandbox import isolation_problem

needs_isolation = pytest.mark.skipif(isolation_problem() is not None,
                                     reason=f"the sandbox fails closed here: {isolation_problem()}")
