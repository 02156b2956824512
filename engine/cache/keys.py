"""What a cache entry is keyed on.

Exact namespace: workflow, step id, prompt-template hash, schema hash, the tier and its model
chain, and (unless the step opts out) the run's tenant. Exact key: the step's dynamic input,
normalised as the step says (whitespace, Unicode NFKC, case). The semantic namespace adds the
embedder and, when one input is embedded, the exact value of every other input.
"""

from __future__ import annotations

import json
from typing import Any

from engine.hashing import canonical_json, normalize_text, normalize_value, sha256
from engine.spec.cache import CacheSpec
from engine.steps.base import StepContext
from engine.steps.llm import LLMCall

# Caching is opt-in per step: without a `cache:` key every call reaches the tiers, so the log
# keeps the repeated answers that promotion mining needs as evidence.
DISABLED = CacheSpec.model_validate(False)


def settings(call: LLMCall) -> CacheSpec:
    return call.spec.cache or DISABLED


def tenant_of(ctx: StepContext, spec: CacheSpec) -> str | None:
    return getattr(ctx, "tenant", None) if spec.tenant else None


def model_key(ctx: StepContext, call: LLMCall) -> str:
    if call.spec.tier == "auto":  # every tier, cheapest first (engine.quality.spec.step_chain)
        from engine.quality.spec import step_chain

        tiers = step_chain(call.spec, ctx.config)
        chain = [entry.model for tier in tiers for entry in ctx.config.chain(tier)]
        return sha256(canonical_json(["auto", chain]))[:16]
    chain = [entry.model for entry in ctx.config.chain(call.spec.tier)]
    return sha256(canonical_json([call.spec.tier, chain]))[:16]


def namespace(ctx: StepContext, call: LLMCall, spec: CacheSpec) -> str:
    parts = [ctx.workflow.name, call.step_id, call.prompt_hash, call.schema_hash, model_key(ctx, call),
             tenant_of(ctx, spec)]
    return sha256(canonical_json(parts))[:32]


def normalized_input(call: LLMCall, spec: CacheSpec) -> Any:
    flags = {name: name in spec.normalize for name in ("case", "whitespace", "unicode")}
    return normalize_value(call.values, **flags)


def input_key(call: LLMCall, spec: CacheSpec) -> str:
    return sha256(canonical_json(normalized_input(call, spec)))


def answer_key(output: Any) -> str:
    return sha256(canonical_json(output))[:32]


def semantic_text(call: LLMCall, spec: CacheSpec) -> tuple[str, Any]:
    """(the text to embed, the inputs that must match exactly). Only dynamic input is embedded."""
    assert spec.semantic is not None
    values = call.values
    field = spec.semantic.input
    if field is not None:
        value = values.get(field)
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        rest = {k: v for k, v in values.items() if k != field}
    elif len(values) == 1:
        value = next(iter(values.values()))
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        rest = {}
    else:
        text = "\n".join(f"{k}: {v if isinstance(v, str) else json.dumps(v, sort_keys=True)}"
                         for k, v in sorted(values.items()))
        rest = {}
    return normalize_text(text, case=False), normalize_value(rest, case=False)


def semantic_namespace(exact_namespace: str, embedder: str, rest: Any) -> str:
    return sha256(canonical_json([exact_namespace, embedder, rest]))[:32]
