"""The exact cache: a step whose (namespace, normalised input) was answered before is served that
answer at zero tokens, after re-validating it against the step's current schema.

Serves `served_by = "cache"`; each lookup is logged in `cache_events` (hit, miss, expired,
invalid). Fills from every valid answer the tiers give.
"""

from __future__ import annotations

import time
from typing import Any

from engine.cache import keys
from engine.cache.store import CacheEntry, CacheStore, cache_store
from engine.spec.cache import CacheSpec
from engine.steps.base import StepContext, StepOutcome
from engine.steps.llm import LLMCall, parse_and_validate
from engine.store import Store
from engine.hashing import canonical_json


def revalidate(call: LLMCall, entry: CacheEntry) -> Any | None:
    """The entry's output if it still passes the step's schema (and pydantic model), else None."""
    try:
        return parse_and_validate(canonical_json(entry.output), call.spec, call.schema)
    except ValueError:
        return None


def expired(entry: CacheEntry, spec: CacheSpec) -> bool:
    return spec.ttl is not None and time.time() - entry.created > spec.ttl


def served(entry: CacheEntry, output: Any, detail: dict[str, Any]) -> StepOutcome:
    return StepOutcome(output=output, served_by="cache", tier=entry.tier, provider=entry.provider,
                       model=entry.model, cache={"entry_id": entry.id, "source": "cache", **detail})


def entry_row(ctx: StepContext, call: LLMCall, spec: CacheSpec, outcome: StepOutcome) -> dict[str, Any]:
    return {
        "workflow": ctx.workflow.name, "step_id": call.step_id, "namespace": keys.namespace(ctx, call, spec),
        "tenant": keys.tenant_of(ctx, spec), "prompt_hash": call.prompt_hash, "schema_hash": call.schema_hash,
        "model_key": keys.model_key(ctx, call), "input_key": keys.input_key(call, spec), "input": call.values,
        "output": outcome.output, "answer_key": keys.answer_key(outcome.output), "tier": outcome.tier,
        "provider": outcome.provider, "model": outcome.model,
        "tokens_in": sum(a.get("tokens_in", 0) for a in outcome.attempts),
        "tokens_out": sum(a.get("tokens_out", 0) for a in outcome.attempts),
        "cost": sum(a.get("cost", 0.0) for a in outcome.attempts), "run_id": ctx.run_id,
    }


class ExactCacheServer:
    """`engine.serving.Server` for exact repeats. On for every llm step unless `cache: false`."""

    def __init__(self, store: Store | CacheStore):
        self.cache = store if isinstance(store, CacheStore) else cache_store(store)

    def serve(self, ctx: StepContext, call: LLMCall) -> StepOutcome | None:
        spec = keys.settings(call)
        if not spec.enabled:
            return None
        entry = self.cache.get(keys.namespace(ctx, call, spec), keys.input_key(call, spec))
        event: dict[str, Any] = {"run_id": ctx.run_id, "workflow": ctx.workflow.name, "step_id": call.step_id,
                 "tenant": keys.tenant_of(ctx, spec), "kind": "exact"}
        if entry is None:
            self.cache.record(**event, outcome="miss")
            return None
        if expired(entry, spec):
            self.cache.delete(entry.id)
            self.cache.record(**event, outcome="expired", entry=entry)
            return None
        output = revalidate(call, entry)
        if output is None:
            self.cache.delete(entry.id)
            self.cache.record(**event, outcome="invalid", entry=entry)
            return None
        self.cache.record(**event, outcome="hit", entry=entry)
        return served(entry, output, {"kind": "exact", "similarity": 1.0})

    def observe(self, ctx: StepContext, call: LLMCall, outcome: StepOutcome) -> None:
        spec = keys.settings(call)
        if not spec.enabled or outcome.served_by != "llm" or spec.semantic is not None:
            return  # the semantic server writes the entry (with its vector) for semantic steps
        self.cache.put(entry_row(ctx, call, spec, outcome))
