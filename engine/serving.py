"""Servers: what may answer an llm step before its tiers are asked.

A server sees the prepared call (`LLMCall`: step, declared inputs, messages, prompt/schema/input
hashes). `serve` returns a `StepOutcome` to answer at zero tokens (its `served_by` says what it
was: cache, lookup, script, ...) or None to pass. After the tiers answer, every server `observe`s
the outcome (to fill a cache, to extend a table, to record shadow agreement).

A server may also offer `around_calls(ctx, call, answer)`: the llm step then lets it run the
answering (every server, else the tiers) itself; the exact cache uses it so that concurrent
misses of one key make one provider call (`engine.cache.flight`).

The runner consults `servers` in order; `default_servers` builds the list when a caller gives none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from engine.config import EngineConfig
    from engine.spec.models import Workflow
    from engine.steps.base import StepContext, StepOutcome
    from engine.store import Store
    from engine.steps.llm import LLMCall


class Server(Protocol):
    def serve(self, ctx: StepContext, call: LLMCall) -> StepOutcome | None: ...

    def observe(self, ctx: StepContext, call: LLMCall, outcome: StepOutcome) -> None: ...


def default_servers(workflow: Workflow, config: EngineConfig, store: Store | None) -> list[Server]:
    """The servers a run consults when the caller gives none. Features add theirs here, in
    serving order (materialized promotions first, then caches)."""
    from engine.promotion.server import promotion_server

    servers: list[Server] = []
    promoted = promotion_server(workflow, store)
    if promoted is not None:
        servers.append(promoted)
    if store is not None:
        from engine.cache import cache_servers

        servers.extend(cache_servers(workflow, store))
    return servers
