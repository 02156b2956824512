"""The llm step's cascade under its quality policy: which tiers to ask, and checking a cheap
tier's answer against the reference.

    1. tiers the monitor escalated past are skipped (logged as `skipped`, reason `quality`); a tier
       on probation answers only a sampled share `probation_sample` of requests, and each of its
       answers is checked inline before it is served (a disagreement serves the reference's
       answer), so a tier that failed serves nothing unchecked until it passes probation;
    2. the tiers answer (`ask_tiers`), a monitored tier's low-confidence answer escalating;
    3. the answer is logged with its trust: `reference` from the reference tier, else `unverified`;
    4. low-confidence answers that the reference then answered are compared for free (calibration);
    5. a share of a monitored tier's served answers is re-asked of the reference: inline in batch
       runs (a disagreement returns the reference's answer), else after the run, off the request
       path (`engine.quality.checkqueue`). Agreement marks the answer `verified`; a reference that
       cannot answer (no key, offline, outage) is counted as a skipped check and the answer stays
       `unverified`. Unverified answers a cache serves are sampled the same way
       (`sample_served_calls`), and every verdict settles the cache entries holding the answer;
    6. with a learned router (`engine.quality.router`), decided before step 1: an input it sends up
       skips the cheapest tier; a `route.explore` share of those asks it anyway, after the answer
       (inline in batch runs), as evidence for the router's next version.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

from engine.errors import EngineError, StepError
from engine.quality.compare import answers_agree
from engine.quality.checkqueue import CheckJob
from engine.quality.monitor import Monitor, monitor_for, sampled
from engine.store.quality import PROBATION
from engine.quality.spec import QualityPolicy, resolve_policy
from engine.quality.router import UP
from engine.quality.trust import REFERENCE, VERIFIED, Verdict
from engine.steps.base import StepContext, StepOutcome
from engine.providers.calls import ProviderCalls, drive
from engine.steps.asking import LLMCall, ask_tiers_calls
from engine.store import quality as quality_store

log = logging.getLogger("engine.quality")
_policies: dict[tuple[int, int], tuple[Any, Any, QualityPolicy]] = {}
_policies_lock = threading.Lock()


def policy_for(spec: Any, config: Any) -> QualityPolicy:
    """The step's resolved policy (cached per spec and config object)."""
    key = (id(spec), id(config))
    with _policies_lock:
        hit = _policies.get(key)
        if hit is not None and hit[0] is spec and hit[1] is config:
            return hit[2]
    policy = resolve_policy(spec, config)
    with _policies_lock:
        if len(_policies) > 4096:
            _policies.clear()
        _policies[key] = (spec, config, policy)
    return policy


def ask_with_quality_calls(ctx: StepContext, call: LLMCall) -> ProviderCalls[StepOutcome]:
    """The step's tiers under its quality policy, as a generator of provider calls (the llm step
    drives it synchronously or on an event loop)."""
    policy = policy_for(call.spec, ctx.config)
    monitor = monitor_for(ctx.store) if ctx.store is not None else None
    wf, step = ctx.workflow.name, ctx.step_id
    skipped: list[str] = []
    tiers = list(policy.chain)
    probation: set[str] = set()
    if monitor is not None:
        tiers, skipped = monitor.usable_tiers(wf, step, policy)
        for tier in [t for t in tiers if policy.monitored(t)]:
            if monitor.state(wf, step, tier, policy)["state"] != PROBATION:
                continue
            if sampled(monitor.sample_rate(wf, step, tier, policy)):
                probation.add(tier)  # it answers, and the answer is checked before it is served
            else:
                tiers.remove(tier)
                skipped.append(tier)
    routed = _route(call, policy, tiers)
    if routed == UP:
        tiers = tiers[1:]  # straight to the next tier: no cheap call
    threshold = (lambda tier: monitor.threshold(wf, step, tier, policy)) if monitor is not None else (
        lambda tier: float(policy.min_confidence) if isinstance(policy.min_confidence, (int, float)) else 1.01)
    try:
        outcome = yield from ask_tiers_calls(ctx, call, tiers=tiers, policy=policy, threshold=threshold)
    except StepError as e:
        if skipped and hasattr(e, "attempts"):
            e.attempts[:0] = [_skip_note(t) for t in skipped]  # type: ignore[attr-defined]
        raise
    outcome.attempts[:0] = [_skip_note(t) for t in skipped]
    outcome.routed = routed
    if monitor is None:
        return outcome
    if outcome.tier in probation:  # a tier on probation serves nothing unchecked
        return (yield from check_calls(ctx, call, policy, monitor, outcome, inline=True,
                                       settlers=[s for s in ctx.servers if hasattr(s, "settle")],
                                       answered_at=time.time()))
    if routed == UP and outcome.tier == policy.reference and call.spec.route is not None \
            and sampled(call.spec.route.explore):
        if ctx.inline_checks:
            yield from _explore_calls(ctx, call, policy, monitor, outcome)
        else:
            _explore(ctx, call, policy, monitor, outcome)
    if outcome.tier == policy.reference:
        for low in outcome.deferred:  # escalated for low confidence, then answered by the reference
            agree = answers_agree(policy, low["output"], outcome.output, judge_for(ctx, policy, call))
            monitor.record(policy, workflow=wf, step_id=step, tier=low["tier"], model=low["model"],
                           run_id=ctx.run_id, input_hash=call.input_hash, mode="escalation",
                           status="agree" if agree else "disagree", served=False, confidence=low.get("confidence"),
                           cheap_output=low["output"], reference_output=outcome.output,
                           reference_tier=policy.reference, cost=0.0)
    return (yield from _maybe_check(ctx, call, policy, monitor, outcome))


def _route(call: LLMCall, policy: QualityPolicy, tiers: list[str]) -> str | None:
    """The step's learned router's decision (`engine.quality.router`), made before any call: `cheap`
    (the cheapest tier answers, under the monitor like any cheap answer), `up` (it is not asked), or
    None: no router, the tier it was trained for is not first (escalated past, another chain) or
    has nothing after it, or the embedder failed (the cascade runs as without a router)."""
    model = call.router
    if model is None or len(tiers) < 2 or tiers[0] != model.cheap_tier or not policy.monitored(tiers[0]):
        return None
    try:
        decision, _ = model.route(call.values)
    except EngineError as e:
        log.warning("router of %s: %s; not routing", call.step_id, e)
        return None
    return str(decision)


def _explore(ctx: StepContext, call: LLMCall, policy: QualityPolicy, monitor: Monitor,
             outcome: StepOutcome) -> None:
    """Queue the exploration of an input the router sent up (off the request path)."""
    background_ctx = dataclasses.replace(ctx, servers=[], after_run=[])
    ctx.after_run.append(CheckJob(
        store=ctx.store, workflow=ctx.workflow.name, step_id=ctx.step_id, concurrency=policy.check_concurrency,
        max_pending=policy.max_pending, calls=lambda: _explore_calls(background_ctx, call, policy, monitor, outcome)))


def _explore_calls(ctx: StepContext, call: LLMCall, policy: QualityPolicy, monitor: Monitor,
                   outcome: StepOutcome) -> ProviderCalls[StepOutcome]:
    """Ask the cheapest tier an input the router sent up (`route.explore`) and record its agreement
    with the reference's answer as an unserved check: evidence for the router's next version."""
    tier = call.router.cheap_tier
    try:
        cheap = yield from ask_tiers_calls(ctx, call, tiers=[tier], policy=policy, purpose="router_explore")
    except EngineError:
        return outcome
    agree = answers_agree(policy, cheap.output, outcome.output, judge_for(ctx, policy, call))
    monitor.record(policy, workflow=ctx.workflow.name, step_id=ctx.step_id, tier=tier, model=cheap.model,
                   run_id=ctx.run_id, input_hash=call.input_hash, mode="explore",
                   status="agree" if agree else "disagree", served=False, confidence=cheap.confidence,
                   cheap_output=cheap.output, reference_output=outcome.output, reference_tier=policy.reference,
                   cost=cheap.cost)
    return outcome


def sample_served_calls(ctx: StepContext, call: LLMCall, outcome: StepOutcome) -> ProviderCalls[StepOutcome]:
    """An unverified answer a server gave (a cache entry a cheap tier wrote) is sampled for a
    reference check at its tier's current rate, exactly like a live answer of that tier, and the
    check counts toward the tier's agreement."""
    if ctx.store is None or outcome.tier is None:
        return outcome
    policy = policy_for(call.spec, ctx.config)
    return (yield from _maybe_check(ctx, call, policy, monitor_for(ctx.store), outcome))


def _maybe_check(ctx: StepContext, call: LLMCall, policy: QualityPolicy, monitor: Monitor,
                 outcome: StepOutcome) -> ProviderCalls[StepOutcome]:
    """Sample a monitored tier's served answer: check it inline (batch runs: a disagreement serves
    the reference's answer) or queue the check for after the run (`engine.quality.checkqueue`)."""
    wf, step = ctx.workflow.name, ctx.step_id
    if outcome.tier is None or not policy.monitored(outcome.tier):
        return outcome
    if not sampled(monitor.sample_rate(wf, step, outcome.tier, policy)):
        return outcome
    settlers = [s for s in ctx.servers if hasattr(s, "settle")]
    answered = time.time()
    if ctx.inline_checks:
        return (yield from check_calls(ctx, call, policy, monitor, outcome, inline=True, settlers=settlers,
                                       answered_at=answered))
    background_ctx = dataclasses.replace(ctx, servers=[], after_run=[])
    ctx.after_run.append(CheckJob(
        store=ctx.store, workflow=wf, step_id=step, concurrency=policy.check_concurrency,
        max_pending=policy.max_pending,
        calls=lambda: check_calls(background_ctx, call, policy, monitor, outcome, inline=False, settlers=settlers,
                                  answered_at=answered)))
    return outcome


def _skip_note(tier: str) -> dict[str, Any]:
    return {"tier": tier, "provider": None, "model": None, "attempt": 0, "outcome": "skipped", "reason": "quality",
            "error": f"tier '{tier}' is escalated past or on probation (not sampled) by the quality monitor "
                     f"(engine quality)"}


def check(ctx: StepContext, call: LLMCall, policy: QualityPolicy, monitor: Monitor, outcome: StepOutcome,
          *, inline: bool, settlers: list[Any] | None = None) -> StepOutcome:
    """`check_calls`, its provider calls made synchronously."""
    return drive(check_calls(ctx, call, policy, monitor, outcome, inline=inline, settlers=settlers))


def check_calls(ctx: StepContext, call: LLMCall, policy: QualityPolicy, monitor: Monitor, outcome: StepOutcome,
                *, inline: bool, settlers: list[Any] | None = None,
                answered_at: float | None = None) -> ProviderCalls[StepOutcome]:
    """Re-ask the reference (with the uncompressed input when the call was compressed); record the
    verdict (with the time from the answer to it); let every `settler` (the caches that stored the
    answer) settle it; inline, a disagreement serves the reference's answer."""
    assert policy.reference is not None and outcome.tier is not None
    wf, step = ctx.workflow.name, ctx.step_id
    common = dict(workflow=wf, step_id=step, tier=outcome.tier, model=outcome.model, run_id=ctx.run_id,
                  input_hash=call.input_hash, mode="inline" if inline else "background", served=True,
                  confidence=outcome.confidence, cheap_output=outcome.output, reference_tier=policy.reference)
    try:
        ref = yield from ask_tiers_calls(ctx, call.full or call, tiers=[policy.reference], policy=policy,
                                         purpose="quality_check")
    except EngineError as e:
        monitor.record(policy, status="skipped", reference_output=None, cost=0.0,
                       reason=f"the reference could not answer: {e}"[:500], **common)  # type: ignore[arg-type]
        return outcome
    agree = answers_agree(policy, outcome.output, ref.output, judge_for(ctx, policy, call))
    verdict_ms = (time.time() - answered_at) * 1000 if answered_at is not None else None
    check_id = monitor.record(policy, status="agree" if agree else "disagree", reference_output=ref.output,
                              cost=ref.cost, verdict_ms=verdict_ms, **common)  # type: ignore[arg-type]
    verdict = Verdict(agree=agree, answer=ref.output, tier=ref.tier, provider=ref.provider, model=ref.model,
                      settled_by=f"check:{check_id}")
    for settler in settlers or ():
        try:
            settler.settle(ctx, call, outcome, verdict)
        except Exception:  # noqa: BLE001 - the verdict is recorded; a cache that cannot take it is logged
            log.warning("could not settle the cached answer of %s/%s", wf, step, exc_info=True)
    if agree:
        if ctx.store is not None:
            quality_store.mark_verified(ctx.store, ctx.run_id, step, f"reference:{policy.reference}")
        outcome.trust = VERIFIED
        return outcome
    if not inline:
        return outcome
    return StepOutcome(output=ref.output, served_by="llm", tier=ref.tier, provider=ref.provider, model=ref.model,
                       attempts=outcome.attempts, tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out,
                       cost=outcome.cost, trust=REFERENCE, confidence=ref.confidence, routed=outcome.routed)


def judge_for(ctx: StepContext, policy: QualityPolicy, call: LLMCall) -> Any:
    if policy.judge is None:
        return None

    def ask(messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        from engine.quality.judge import ask_judge

        return ask_judge(ctx, policy.judge or "", messages, schema, call.hashes, call.values)

    return ask
