"""The semantic cache: a near-duplicate input is served a cached answer when the embedding of its
dynamic input is at least `threshold` similar to a cached one (and, with the margin safeguard, no
entry with a different answer comes within `margin` of it). Every hit records its similarity and
the entry it came from; every miss records the best similarity seen.

Entries carry provenance and are served under the exact cache's trust rule (`servable`); a hit
reports the trust level of the entry it came from. A reference check of a semantic hit settles
the exact copy the hit left for its own text; when the check disagrees, the unverified entry that
served the hit is evicted too (its near-duplicate proved its answer unsafe to share), and the
reference's answer joins the index under the query's own vector, so the margin rule sees the
conflict next time.

Namespaced like the exact cache (workflow, step, prompt hash, schema hash, model chain, tenant)
plus the embedder and the exact value of the inputs that are not embedded. A failing embedder
(e.g. the OpenAI endpoint is down) never fails the step: the lookup counts as an error and the
tiers answer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.cache import keys
from engine.cache.embedders import get_embedder
from engine.cache.exact import entry_row, expired, revalidate, servable, served, settle_call
from engine.cache.store import CacheStore, cache_store
from engine.errors import ProviderError
from engine.quality.trust import REFERENCE, UNVERIFIED, Verdict
from engine.steps.base import StepContext, StepOutcome
from engine.steps.llm import LLMCall
from engine.store import Store


class SemanticCacheServer:
    """`engine.serving.Server` for near-duplicates, for steps with `cache: {semantic: ...}`."""

    def __init__(self, store: Store | CacheStore):
        self.cache = store if isinstance(store, CacheStore) else cache_store(store)

    def _embed(self, ctx: StepContext, call: LLMCall) -> tuple[str, str, str, np.ndarray | None]:
        spec = keys.settings(call)
        assert spec.semantic is not None
        cached = getattr(call, "_semantic", None)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        embedder = get_embedder(spec.semantic.embedder)
        text, rest = keys.semantic_text(call, spec)
        sem_ns = keys.semantic_namespace(keys.namespace(ctx, call, spec), embedder.name, rest)
        try:
            vector: np.ndarray | None = embedder.embed([text])[0]
        except ProviderError:
            vector = None
        result = (text, sem_ns, embedder.name, vector)
        call._semantic = result  # type: ignore[attr-defined]  # reused by observe after a miss
        return result

    def serve(self, ctx: StepContext, call: LLMCall) -> StepOutcome | None:
        spec = keys.settings(call)
        if not spec.enabled or spec.semantic is None:
            return None
        text, sem_ns, _, vector = self._embed(ctx, call)
        event: dict[str, Any] = {"run_id": ctx.run_id, "workflow": ctx.workflow.name, "step_id": call.step_id,
                                 "tenant": keys.tenant_of(ctx, spec), "kind": "semantic"}
        if vector is None:
            self.cache.record(**event, outcome="error")
            return None
        index = self.cache.index(sem_ns)
        decision = index.search(vector, spec.semantic.threshold, spec.semantic.margin)
        if decision.match is None:
            self.cache.record(**event, outcome="miss", similarity=decision.best)
            return None
        entry = self.cache.get_by_id(decision.match.entry_id)
        if entry is None:  # cleared since the index was loaded
            index.remove(decision.match.entry_id)
            self.cache.record(**event, outcome="miss", similarity=decision.best)
            return None
        if not servable(ctx, call, spec, entry):
            if spec.trust != "verified":  # its tier was escalated past: it never comes back unchecked
                self.cache.delete(entry.id)
                index.remove(entry.id)
            self.cache.record(**event, outcome="untrusted", entry=entry, similarity=decision.match.similarity)
            return None
        if expired(entry, spec) or (output := revalidate(call, entry)) is None:
            outcome = "expired" if expired(entry, spec) else "invalid"
            self.cache.delete(entry.id)
            index.remove(entry.id)
            self.cache.record(**event, outcome=outcome, entry=entry, similarity=decision.match.similarity)
            return None
        self.cache.record(**event, outcome="hit", entry=entry, similarity=decision.match.similarity)
        self._remember_exact(ctx, call, spec, entry, output)
        return served(entry, output, {"kind": "semantic", "similarity": decision.match.similarity,
                                      "conflicting_similarity": decision.match.conflicting,
                                      "entry_text": entry.text})

    def _remember_exact(self, ctx: StepContext, call: LLMCall, spec: Any, entry: Any, output: Any) -> None:
        """A semantic hit leaves an exact entry for its own text (no vector: it adds nothing to the
        index), so the same text is answered by the exact key next time, without an embedding."""
        input_key = keys.input_key(call, spec)
        self.cache.put({
            "workflow": ctx.workflow.name, "step_id": call.step_id, "namespace": keys.namespace(ctx, call, spec),
            "tenant": keys.tenant_of(ctx, spec), "prompt_hash": call.prompt_hash, "schema_hash": call.schema_hash,
            "model_key": keys.model_key(ctx, call), "input_key": input_key, "input": call.values, "output": output,
            "answer_key": keys.answer_key(output), "tier": entry.tier, "provider": entry.provider,
            "model": entry.model, "tokens_in": entry.tokens_in, "tokens_out": entry.tokens_out, "cost": entry.cost,
            "run_id": ctx.run_id, "trust": entry.trust, "settled_by": entry.settled_by,
            "input_hash": call.input_hash, "source_entry": entry.id,
        })

    def observe(self, ctx: StepContext, call: LLMCall, outcome: StepOutcome) -> None:
        spec = keys.settings(call)
        if not spec.enabled or spec.semantic is None or outcome.served_by != "llm":
            return
        text, sem_ns, embedder, vector = self._embed(ctx, call)
        row = entry_row(ctx, call, spec, outcome)
        row.update(sem_namespace=sem_ns, text=text, embedder=embedder)
        entry_id = self.cache.put(row, vector)
        if vector is not None:
            index = self.cache.index(sem_ns)
            index.add([entry_id], [row["answer_key"]], vector[None, :])  # a re-written entry, in place

    def settle(self, ctx: StepContext, call: LLMCall, outcome: StepOutcome, verdict: Verdict) -> None:
        """A reference check's verdict on `outcome`: the entries of this very input settle as in the
        exact cache; after a semantic hit that disagreed, the unverified entry that served it is
        evicted and the reference's answer is indexed under the query's vector."""
        spec = keys.settings(call)
        if not spec.enabled or spec.semantic is None:
            return
        settle_call(self.cache, ctx, call, outcome, verdict)
        hit = outcome.cache or {}
        if verdict.agree or hit.get("kind") != "semantic":
            return
        source = self.cache.get_by_id(int(hit["entry_id"]))
        text, sem_ns, embedder, vector = self._embed(ctx, call)
        if source is not None and source.trust == UNVERIFIED:
            self.cache.evict(source.id, sem_ns)
        if vector is None:
            return
        row = entry_row(ctx, call, spec, outcome)
        row.update(output=verdict.answer, answer_key=keys.answer_key(verdict.answer), tier=verdict.tier,
                   provider=verdict.provider, model=verdict.model, tokens_in=0, tokens_out=0, cost=0.0,
                   trust=REFERENCE, settled_by=verdict.settled_by, sem_namespace=sem_ns, text=text,
                   embedder=embedder)
        entry_id = self.cache.put(row, vector)
        index = self.cache.index(sem_ns)
        index.add([entry_id], [row["answer_key"]], vector[None, :])
