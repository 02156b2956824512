"""The exact cache: a step whose (namespace, normalised input) was answered before is served that
answer at zero tokens, after re-validating it against the step's current schema.

Every entry carries its provenance: the tier and model that wrote it, its trust level
(`reference`, `verified`, `labelled`, `unverified`; see `engine.quality.trust`) and what settled
it (`check:<id>`, `label:<id>`). Trusted entries are served as they are. An `unverified` entry
(a monitored cheap tier's answer nobody has checked yet) is served only while its tier is in use
and was not escalated past since the entry was written (`cache: {trust: verified}` never serves
one); otherwise it is evicted and the tiers answer. The llm step samples unverified hits for a
reference check at the tier's current rate, like live answers (`engine.quality.cascade`), and the
verdict settles the entry (`settle`): agreement marks it verified, a disagreement replaces its
answer with the reference's.

Serves `served_by = "cache"`; each lookup is logged in `cache_events` (hit, miss, expired,
invalid, untrusted) with the trust level of the entry a hit served. Fills from every valid answer
the tiers give.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from engine.cache import keys
from engine.cache.flight import single_flight
from engine.cache.store import CacheEntry, CacheStore, cache_store
from engine.hashing import canonical_json
from engine.quality.trust import REFERENCE, UNVERIFIED, VERIFIED, Verdict, is_trusted
from engine.providers.calls import ProviderCalls
from engine.spec.cache import CacheSpec
from engine.steps.base import StepContext, StepOutcome
from engine.steps.llm import LLMCall, parse_and_validate
from engine.store import Store


def revalidate(call: LLMCall, entry: CacheEntry) -> Any | None:
    """The entry's output if it still passes the step's schema (and pydantic model), else None."""
    try:
        return parse_and_validate(canonical_json(entry.output), call.spec, call.schema)
    except ValueError:
        return None


def expired(entry: CacheEntry, spec: CacheSpec) -> bool:
    return spec.ttl is not None and time.time() - entry.created > spec.ttl


def servable(ctx: StepContext, call: LLMCall, spec: CacheSpec, entry: CacheEntry) -> bool:
    """Whether the entry may be served: trusted entries always; unverified ones only under
    `trust: active` (the default) while the tier that wrote them is in use and has not been
    escalated past since they were written (see `engine.quality.monitor.Monitor.serves_unverified`)."""
    if is_trusted(entry.trust):
        return True
    if spec.trust == "verified":
        return False
    if ctx.store is None or entry.tier is None:
        return True
    from engine.quality.cascade import policy_for
    from engine.quality.monitor import monitor_for

    policy = policy_for(call.spec, ctx.config)
    return monitor_for(ctx.store).serves_unverified(ctx.workflow.name, call.step_id, entry.tier, policy,
                                                    entry.created)


def served(entry: CacheEntry, output: Any, detail: dict[str, Any]) -> StepOutcome:
    return StepOutcome(output=output, served_by="cache", tier=entry.tier, provider=entry.provider,
                       model=entry.model, trust=entry.trust,
                       cache={"entry_id": entry.id, "source": "cache", "trust": entry.trust,
                              "settled_by": entry.settled_by, **detail})


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
        "trust": outcome.trust or UNVERIFIED, "settled_by": None, "input_hash": call.input_hash,
        "source_entry": None,
    }


def settle_call(cache: CacheStore, ctx: StepContext, call: LLMCall, outcome: StepOutcome, verdict: Verdict) -> list[int]:
    """A reference check judged `outcome` (a live answer or a hit): every unverified entry of this
    call holding that answer becomes verified, or takes the reference's answer. Returns the ids
    whose answer changed."""
    return cache.settle(
        workflow=ctx.workflow.name, step_id=call.step_id, prompt_hash=call.prompt_hash,
        schema_hash=call.schema_hash, input_hash=call.input_hash,
        answer=outcome.output if verdict.agree else verdict.answer, trust=VERIFIED if verdict.agree else REFERENCE,
        settled_by=verdict.settled_by, checked=outcome.output, tier=verdict.tier, provider=verdict.provider,
        model=verdict.model)


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
        if not servable(ctx, call, spec, entry):
            if spec.trust != "verified":  # its tier was escalated past: it never comes back unchecked
                self.cache.delete(entry.id)
            self.cache.record(**event, outcome="untrusted", entry=entry)
            return None
        output = revalidate(call, entry)
        if output is None:
            self.cache.delete(entry.id)
            self.cache.record(**event, outcome="invalid", entry=entry)
            return None
        self.cache.record(**event, outcome="hit", entry=entry)
        return served(entry, output, {"kind": "exact", "similarity": 1.0})

    def around_calls(self, ctx: StepContext, call: LLMCall,
                     answer: Callable[[], ProviderCalls[StepOutcome]]) -> ProviderCalls[StepOutcome]:
        """Answer the call (every server, else the tiers) as one caller of its key at a time, so
        concurrent misses of one key make one provider call (`engine.cache.flight`)."""
        return (yield from single_flight(ctx, call, answer))

    def observe(self, ctx: StepContext, call: LLMCall, outcome: StepOutcome) -> None:
        spec = keys.settings(call)
        if not spec.enabled or outcome.served_by != "llm" or spec.semantic is not None:
            return  # the semantic server writes the entry (with its vector) for semantic steps
        self.cache.put(entry_row(ctx, call, spec, outcome))

    def settle(self, ctx: StepContext, call: LLMCall, outcome: StepOutcome, verdict: Verdict) -> None:
        """A reference check's verdict on `outcome` (see `settle_call`)."""
        spec = keys.settings(call)
        if spec.enabled and spec.semantic is None:
            settle_call(self.cache, ctx, call, outcome, verdict)
