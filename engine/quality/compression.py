"""Prompt compression under the quality monitor (`context: {compress: ...}`).

Compression is tracked per step as a pseudo-tier `<tier>+compress` in the monitor's own tables
(quality_state, quality_checks, quality_events), with the step's quality policy:

    active      the input is compressed; a share `sample` of compressed answers is re-asked of the
                reference with the FULL input (inline in batch runs, where a disagreement serves
                the reference's answer; else after the run, off the request path)
    escalated   the Wilson lower bound of the disagreement passed `max_disagreement`: the step
                sends the full input (logged in quality_events, shown by `engine quality`)
    probation   after the cool-off (or `engine quality reset`): a share `probation_sample` of
                requests is compressed, each answer checked inline before it is served

A check compares the served answer with the reference tier's answer to the full input (without a
reference tier, the step's own tiers answer the full input: the check then measures compression
alone). A reference check is never compressed, neither this one nor the cheap-tier checks of a
compressed call (`LLMCall.full`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from engine.errors import EngineError
from engine.quality.cascade import judge_for, policy_for
from engine.quality.checkqueue import CheckJob
from engine.quality.compare import answers_agree
from engine.quality.monitor import Monitor, monitor_for, sampled
from engine.quality.spec import QualityPolicy
from engine.quality.trust import REFERENCE
from engine.providers.calls import ProviderCalls
from engine.spec.models import LLMSpec
from engine.steps.base import StepContext, StepOutcome
from engine.steps.llm import ask_tiers_calls, prepare_call
from engine.store.quality import ESCALATED, PROBATION


@dataclass(frozen=True)
class Decision:
    compress: bool
    tier: str
    """The pseudo-tier the checks are recorded under."""
    state: str
    probation: bool = False
    """Compressed on probation: the answer is checked inline before it is served."""
    reason: str | None = None


def compress_tier(spec: LLMSpec) -> str:
    return f"{spec.tier}+compress"


def decide(ctx: StepContext, spec: LLMSpec) -> Decision:
    """Whether this request of the step compresses its input (the monitor's state)."""
    tier = compress_tier(spec)
    if ctx.store is None:
        return Decision(True, tier, "active")
    policy = policy_for(spec, ctx.config)
    row = monitor_for(ctx.store).state(ctx.workflow.name, ctx.step_id, tier, policy)
    state = row["state"]
    if state == ESCALATED:
        return Decision(False, tier, state, reason="switched off by the quality monitor (engine quality)")
    if state == PROBATION:
        if sampled(max(policy.sample, policy.probation_sample)):
            return Decision(True, tier, state, probation=True)
        return Decision(False, tier, state, reason="on probation, not sampled")
    return Decision(True, tier, state)


def check_compressed_calls(ctx: StepContext, spec: LLMSpec, full_values: dict[str, Any], outcome: StepOutcome,
                           decision: Decision) -> ProviderCalls[StepOutcome]:
    """Sample a compressed answer for a check against the full input (always, on probation)."""
    if ctx.store is None or outcome.tier is None:
        return outcome
    policy = policy_for(spec, ctx.config)
    if not decision.probation and not sampled(policy.sample):
        return outcome
    monitor = monitor_for(ctx.store)
    answered = time.time()
    if ctx.inline_checks or decision.probation:
        return (yield from _check_calls(ctx, spec, full_values, outcome, decision, policy, monitor,
                                        inline=True, answered_at=answered))
    background = dataclasses.replace(ctx, servers=[], after_run=[])
    ctx.after_run.append(CheckJob(
        store=ctx.store, workflow=ctx.workflow.name, step_id=ctx.step_id, concurrency=policy.check_concurrency,
        max_pending=policy.max_pending,
        calls=lambda: _check_calls(background, spec, full_values, outcome, decision, policy, monitor,
                                   inline=False, answered_at=answered)))
    return outcome


def _check_calls(ctx: StepContext, spec: LLMSpec, full_values: dict[str, Any], outcome: StepOutcome,
                 decision: Decision, policy: QualityPolicy, monitor: Monitor, *, inline: bool,
                 answered_at: float) -> ProviderCalls[StepOutcome]:
    call = prepare_call(ctx, spec, full_values)
    tiers = [policy.reference] if policy.reference is not None else list(policy.chain)
    common = dict(workflow=ctx.workflow.name, step_id=ctx.step_id, tier=decision.tier, model=outcome.model,
                  run_id=ctx.run_id, input_hash=call.input_hash, mode="inline" if inline else "background",
                  served=True, confidence=outcome.confidence, cheap_output=outcome.output,
                  reference_tier=tiers[0])
    try:
        ref = yield from ask_tiers_calls(ctx, call, tiers=tiers, policy=policy, purpose="quality_check")
    except EngineError as e:
        monitor.record(policy, status="skipped", reference_output=None, cost=0.0,
                       reason=f"the full input could not be answered: {e}"[:500], **common)  # type: ignore[arg-type]
        return outcome
    agree = answers_agree(policy, outcome.output, ref.output, judge_for(ctx, policy, call))
    monitor.record(policy, status="agree" if agree else "disagree", reference_output=ref.output, cost=ref.cost,
                   verdict_ms=(time.time() - answered_at) * 1000, **common)  # type: ignore[arg-type]
    if agree or not inline:
        return outcome
    return StepOutcome(output=ref.output, served_by="llm", tier=ref.tier, provider=ref.provider, model=ref.model,
                       attempts=outcome.attempts, tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out,
                       cost=outcome.cost, trust=REFERENCE if ref.tier == policy.reference else ref.trust,
                       confidence=ref.confidence, context=outcome.context)
