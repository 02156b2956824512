"""Servers: what may answer an llm step before its tiers are asked.

A server sees the prepared call (`LLMCall`: step, declared inputs, messages, prompt/schema/input
hashes). `serve` returns a `StepOutcome` to answer at zero tokens (its `served_by` says what it
was: cache, lookup, script, ...) or None to pass. After the tiers answer, every server `observe`s
the outcome (to fill a cache, to extend a table, to record shadow agreement).

The runner consults `servers` in order; the default list is empty in the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from engine.steps.base import StepContext, StepOutcome
    from engine.steps.llm import LLMCall


class Server(Protocol):
    def serve(self, ctx: StepContext, call: LLMCall) -> StepOutcome | None: ...

    def observe(self, ctx: StepContext, call: LLMCall, outcome: StepOutcome) -> None: ...
