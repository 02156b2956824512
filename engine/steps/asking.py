"""Asking an llm step's tiers: the calls, their validation, their log rows and their cost.

For each tier in `[tier, *escalate]`, for each model in the tier's chain:
  - a model cooling down after failures, or whose worst-case cost would cross a spend cap, is
    skipped (`engine.routing.CallGate`); local models cost $0 and are never blocked;
  - a provider error (outage, rate limit, timeout, context overflow) moves to the next model;
    an authentication error fails the step at once, with its message;
  - a reply that is cut off by the cap (finish reason `length`), is not JSON, or fails the schema
    (jsonschema, then the pydantic model when one is given) is re-asked with the validation error,
    up to `retries` times; then the step escalates to the next tier.
Every call (and every skip) is logged to the store with why it moved on (`reason`: fallback,
cooldown, budget, reask, escalate). When every tier is exhausted the step raises `LLMStepError`
carrying every attempt (`BudgetExceededError`, naming the caps, when spend caps blocked models):
an output that fails its schema is never returned as a success.

The llm step (`engine.steps.llm`), the quality cascade (`engine.quality.cascade`) and the judge
(`engine.quality.judge`) ask tiers through this module, which imports none of them.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import jsonschema
from pydantic import ValidationError

from engine import strict_json
from engine.errors import AuthenticationError, BudgetExceededError, LLMStepError, ProviderError, StepError
from engine.hashing import prompt_hash, schema_hash
from engine.pricing import PriceOverride, completion_cost, price_of
from engine.providers.base import Completion, CompletionRequest
from engine.providers.calls import ProviderCalls, drive
from engine.providers.registry import get_provider
from engine.quality.confidence import answer_confidence
from engine.quality.spec import QualityPolicy
from engine.routing import CallGate
from engine.spec.models import LLMSpec, ModelEntry
from engine.steps.base import StepContext, StepOutcome

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def system_message(spec: LLMSpec, schema: dict[str, Any] | None = None) -> str:
    """The static prefix: the step's system prompt plus the schema the reply must match."""
    schema = schema if schema is not None else spec.schema_  # type: ignore[assignment]
    parts = [spec.system.strip()] if isinstance(spec.system, str) and spec.system.strip() else []
    parts.append("Reply with only a JSON value that matches this JSON Schema:\n"
                 + json.dumps(schema, ensure_ascii=False, sort_keys=True))
    return "\n\n".join(parts)


_validator = strict_json.validator


@dataclass(frozen=True)
class CompiledStep:
    """What an llm step's spec fixes once and for all, computed on its first run."""

    prompt_hash: str
    schema_hash: str
    system: str | None
    """The static system message (None when the schema is templated: it depends on the inputs)."""
    validator: jsonschema.Draft202012Validator | None
    system_tokens: int = 0
    """The static system message's share of `estimate_tokens` (its own 4 framing tokens included)."""


def compiled(spec: LLMSpec) -> CompiledStep:
    done = spec.__pydantic_private__.get("_compiled")  # type: ignore[union-attr]  # not pydantic's slow __getattr__
    if done is None:
        static = not spec._templated_schema and isinstance(spec.schema_, dict)
        done = spec._compiled = CompiledStep(
            prompt_hash=prompt_hash(spec.system if isinstance(spec.system, str) else None,
                                    spec.prompt if isinstance(spec.prompt, str) else None),
            schema_hash=schema_hash(spec.schema_),
            system=system_message(spec) if static else None,
            validator=_validator(spec.schema_) if static else None,  # type: ignore[arg-type]
            system_tokens=math.ceil(len(system_message(spec)) / 3) + 4 if static else 0)
    return done  # type: ignore[no-any-return]


def cost_of(entry: ModelEntry, completion: Completion,
            pricing: Mapping[str, PriceOverride] | None = None) -> float:
    """What `completion` cost at `entry`'s price (its own fields, else `pricing`, else the defaults;
    see `engine.pricing`)."""
    return price_of(entry, pricing).cost(completion.input_tokens, completion.output_tokens,
                                         completion.cached_input_tokens, completion.cache_write_tokens)


def parse_and_validate(text: str, spec: LLMSpec, schema: dict[str, Any] | None = None) -> Any:
    """Return the validated output, or raise ValueError naming what is wrong."""
    strict_json.check_size(text)
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    value = strict_json.loads(text)  # strict JSON: no NaN/Infinity, bounded depth, valid Unicode
    schema = schema if schema is not None else spec.schema_  # type: ignore[assignment]
    assert isinstance(schema, dict)
    validator = compiled(spec).validator if schema is spec.schema_ else None
    if not (validator or _validator(schema)).is_valid(value):
        problems = strict_json.schema_problems(schema, value)  # `format` checked too
        raise ValueError(f"the reply does not match the schema: {'; '.join(problems)}")
    if spec._pydantic_model is not None:
        try:
            value = spec._pydantic_model.model_validate(value).model_dump(mode="json")
        except ValidationError as e:
            raise ValueError(f"the reply fails the model {spec._pydantic_model.__name__}: {e}") from None
    return value


def reask_message(error: str) -> str:
    return (f"Your reply was rejected: {error}. Reply again with only a JSON value that matches "
            f"the schema, and nothing else.")


@dataclass
class LLMCall:
    """Everything about one llm step execution that servers (caches, promoted lookups, ...) key on."""

    step_id: str
    spec: LLMSpec
    values: dict[str, Any]
    """The step's declared inputs: the dynamic part of the prompt."""
    messages: list[dict[str, str]]
    """Static system prefix first, rendered prompt last."""
    prompt_hash: str
    schema_hash: str
    input_hash: str
    schema: dict[str, Any] | None = None
    """The JSON Schema for this call (a templated schema rendered over the inputs)."""
    adapters: dict[str, Any] = field(default_factory=dict)
    """tier -> an accepted LoRA adapter (GGUF) its llamacpp models load (`engine distill`)."""
    full: LLMCall | None = None
    """The same call with the uncompressed input (`context.compress`): what reference checks ask."""
    router: Any = None
    """An accepted learned router for the step (`engine.quality.router.RouterModel`, with `id` and
    `version` in its meta), attached by the promotion server; the cascade decides with it."""

    @property
    def hashes(self) -> dict[str, str]:
        return {"prompt_hash": self.prompt_hash, "schema_hash": self.schema_hash, "input_hash": self.input_hash}



def ask_tiers(ctx: StepContext, call: LLMCall, *, tiers: Sequence[str] | None = None,
              policy: QualityPolicy | None = None, purpose: str | None = None,
              threshold: Any = None) -> StepOutcome:
    """`ask_tiers_calls`, each provider call made synchronously."""
    return drive(ask_tiers_calls(ctx, call, tiers=tiers, policy=policy, purpose=purpose, threshold=threshold))


def ask_tiers_calls(ctx: StepContext, call: LLMCall, *, tiers: Sequence[str] | None = None,
                    policy: QualityPolicy | None = None, purpose: str | None = None,
                    threshold: Any = None) -> ProviderCalls[StepOutcome]:
    """Ask the tiers in order: re-ask on invalid replies, fall back on provider errors (and past
    models cooling down or over budget, see `engine.routing`), escalate.

    `tiers`: the tiers to ask (default: the step's `[tier, *escalate]`). With a quality `policy`,
    each valid answer is logged with its trust level, and a monitored tier's answer whose
    confidence is below `threshold(tier)` escalates (reason `low_confidence`; kept on the
    outcome's `deferred` for calibration). `purpose` marks calls that do not serve the step
    (`quality_check`, `spot_check`): they are logged but never linked to the step's cost.

    A generator: yields (provider, request) for each call it makes (see `engine.providers.calls`)."""
    spec, values, hashes = call.spec, call.values, call.hashes
    base = call.messages
    gate = CallGate(ctx.config, ctx.store, ctx.run_id, ctx.workflow.name)
    attempts: list[dict[str, Any]] = []
    totals = {"tokens_in": 0, "tokens_out": 0, "cost": 0.0}
    blocked_by: list[str] = []

    tiers = list(tiers) if tiers is not None else [spec.tier, *spec.escalate]
    deferred: list[dict[str, Any]] = []
    for tier_no, tier in enumerate(tiers):
        gated = (policy is not None and purpose is None and policy.wants_confidence and policy.monitored(tier)
                 and tier_no + 1 < len(tiers))
        # a compressed call (`call.full` set) is not the reference's answer to the real input
        trust = ("reference" if policy is not None and tier == policy.reference and call.full is None
                 else "unverified")
        low_confidence = False
        for entry in ctx.config.chain(tier):
            messages = list(base)
            for attempt_no in range(1 + spec.retries):
                attempt: dict[str, Any] = {"tier": tier, "provider": entry.provider, "model": entry.model_name,
                                           "attempt": attempt_no + 1, "reason": None, "purpose": purpose}
                request = CompletionRequest(
                    model=entry.model_name, messages=messages, max_tokens=spec.max_tokens,
                    schema=call.schema,
                    temperature=spec.temperature, logprobs=gated,
                    options=({**entry.options, "lora_path": str(call.adapters[tier])}
                             if tier in call.adapters and entry.provider == "llamacpp" else entry.options))
                started = time.perf_counter()
                provider = get_provider(entry.provider)
                route = (ctx.provider_batch.route(ctx, tier, entry)  # quality checks stay real-time
                         if ctx.provider_batch is not None and purpose is None else None)
                admission = gate.admit(tier, entry, request, provider, batch=route is not None)
                if not admission.ok:
                    if admission.reason == "budget":
                        blocked_by.append(admission.message)
                    attempt.update(outcome="skipped", reason=admission.reason, error=admission.message)
                    log_call(ctx, attempt, hashes, values, None)
                    attempts.append(attempt)
                    break  # next model in the chain
                try:
                    # a provider batch route stands in for the provider (its `complete` waits for the batch)
                    completion = yield (provider if route is None else route), request
                except AuthenticationError as e:
                    gate.settle(admission, 0.0)
                    attempt.update(outcome="error", error=f"{type(e).__name__}: {e}",
                                   latency_ms=(time.perf_counter() - started) * 1000)
                    log_call(ctx, attempt, hashes, values, None)
                    attempts.append(attempt)
                    raise StepError(ctx.step_id, f"authentication failed for {entry.model}: {e}") from e
                except ProviderError as e:
                    gate.failed(entry, e)
                    attempt.update(outcome="error", reason="fallback", error=f"{type(e).__name__}: {e}",
                                   latency_ms=(time.perf_counter() - started) * 1000)
                    log_call(ctx, attempt, hashes, values, None)
                    gate.settle(admission, 0.0)
                    attempts.append(attempt)
                    break  # next model in the chain
                except BaseException:  # a config error or a bug: release the budget hold, then raise
                    gate.settle(admission, 0.0)
                    raise
                gate.succeeded(entry)
                latency = (time.perf_counter() - started) * 1000
                cost = completion_cost(admission.price, completion)
                attempt.update(tokens_in=completion.input_tokens, tokens_out=completion.output_tokens,
                               cached_tokens=completion.cached_input_tokens, cost=cost, latency_ms=latency,
                               finish_reason=completion.finish_reason, raw_output=completion.text,
                               served_model=completion.model or entry.model_name, provider_batch=completion.batch)
                totals["tokens_in"] += completion.input_tokens
                totals["tokens_out"] += completion.output_tokens
                totals["cost"] += cost
                try:
                    if completion.finish_reason == "length":
                        raise ValueError(f"the reply was cut off by max_tokens ({spec.max_tokens})")
                    output = parse_and_validate(completion.text, spec, call.schema)
                except ValueError as e:
                    last = attempt_no == spec.retries
                    attempt.update(outcome="invalid", error=str(e),
                                   reason=("escalate" if tier_no + 1 < len(tiers) else None) if last else "reask")
                    log_call(ctx, attempt, hashes, values, None)
                    gate.settle(admission, cost)
                    attempts.append(attempt)
                    messages = [*messages, {"role": "assistant", "content": completion.text},
                                {"role": "user", "content": reask_message(str(e))}]
                    continue
                confidence = completion.confidence
                if confidence is None and completion.logprobs:
                    confidence = answer_confidence(completion.text, completion.logprobs, call.schema)
                attempt.update(outcome="valid", output=output, trust=trust, confidence=confidence)
                if gated and confidence is not None and threshold is not None and confidence < threshold(tier):
                    attempt.update(reason="low_confidence", trust="unverified")
                    log_call(ctx, attempt, hashes, values, output)
                    gate.settle(admission, cost)
                    attempts.append(attempt)
                    deferred.append(attempt)
                    low_confidence = True
                    break  # escalate past this tier for this request
                log_call(ctx, attempt, hashes, values, output)
                gate.settle(admission, cost)
                attempts.append(attempt)
                return StepOutcome(output=output, served_by="llm", tier=tier, provider=entry.provider,
                                   model=entry.model_name, attempts=attempts, trust=trust, confidence=confidence,
                                   deferred=deferred, **totals)  # type: ignore[arg-type]
            else:
                break  # re-asks exhausted on this tier: escalate
            if low_confidence:
                break
    if deferred:  # every tier past a low-confidence answer failed: it is still a valid answer
        best = max(deferred, key=lambda a: a.get("confidence") or 0.0)
        return StepOutcome(output=best["output"], served_by="llm", tier=best["tier"], provider=best["provider"],
                           model=best["model"], attempts=attempts, trust="unverified",
                           confidence=best.get("confidence"), deferred=[], **totals)  # type: ignore[arg-type]
    if blocked_by:
        raise BudgetExceededError(ctx.step_id, attempts, sorted(set(m.split(" would be")[0] for m in blocked_by)))
    raise LLMStepError(ctx.step_id, attempts)


def log_call(ctx: StepContext, attempt: dict[str, Any], hashes: dict[str, str], values: dict[str, Any],
         output: Any) -> None:
    """Log one attempt (a call, a skip, an invalid or a valid reply) to the store's `llm_calls`."""
    if ctx.store is None:
        return
    ctx.store.record_llm_call({
        "run_id": ctx.run_id, "workflow": ctx.workflow.name, "step_id": ctx.step_id, **hashes,
        "input": values, "tier": attempt["tier"], "provider": attempt["provider"], "model": attempt["model"],
        "attempt": attempt["attempt"], "tokens_in": attempt.get("tokens_in", 0),
        "tokens_out": attempt.get("tokens_out", 0), "cached_tokens": attempt.get("cached_tokens", 0),
        "cost": attempt.get("cost", 0.0), "latency_ms": attempt.get("latency_ms"),
        "finish_reason": attempt.get("finish_reason"), "outcome": attempt["outcome"], "output": output,
        "raw_output": attempt.get("raw_output"), "error": attempt.get("error"),
        "reason": attempt.get("reason"), "trust": attempt.get("trust"), "purpose": attempt.get("purpose"),
        "confidence": attempt.get("confidence"), "provider_batch": attempt.get("provider_batch"),
    })
