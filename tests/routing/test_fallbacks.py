"""Fallbacks along a chain, retry-after and cooldowns, composed with re-asks and escalation."""

from __future__ import annotations

import pytest

from engine import run_workflow
from engine.errors import (
    AuthenticationError,
    ContextWindowError,
    LLMStepError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from engine.routing import Cooldowns

WORKFLOW = """\
name: label
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: standard
      prompt: "Label this: {{ text }}"
      schema: {type: object, properties: {label: {enum: [spam, ham]}}, required: [label]}
      max_tokens: 12
      retries: 1
      escalate: [premium]
"""
CONFIG = """
fallbacks: {cooldown_s: 30, allowed_fails: 2}
tiers:
  standard:
    - {model: "fake:a", input_price: 1, output_price: 2}
    - {model: "fake:b", input_price: 0.5, output_price: 1}
  premium:
    - {model: "fake:p", input_price: 10, output_price: 30}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("engine.routing.COOLDOWNS", Cooldowns(clock=clock))
    return clock


def models(fake):
    return [r.model for r in fake.requests]


def test_429_moves_on_and_retry_after_cools_the_model_down(project, fake, clock):
    wf = project(WORKFLOW, config=CONFIG)
    fake.enqueue(RateLimitError("slow down", retry_after=20), {"label": "ham"})
    first = run_workflow(wf, {"text": "x"}).step("classify")
    assert (first.model, [c["reason"] for c in first.calls]) == ("b", ["fallback", None])
    assert "RateLimitError" in first.calls[0]["error"]

    fake.enqueue({"label": "spam"})
    second = run_workflow(wf, {"text": "y"}).step("classify")
    assert second.calls[0]["outcome"] == "skipped" and second.calls[0]["reason"] == "cooldown"
    assert "retry-after 20" in second.calls[0]["error"]
    assert second.attempts == 1 and models(fake) == ["a", "b", "b"]  # no request to a

    clock.now += 21  # retry-after has passed: a is asked again
    fake.enqueue({"label": "ham"})
    assert run_workflow(wf, {"text": "z"}).step("classify").model == "a"


def test_repeated_failures_cool_down_for_the_configured_time(project, fake, clock):
    wf = project(WORKFLOW, config=CONFIG)
    for _ in range(2):
        fake.enqueue(ProviderUnavailableError("503"), {"label": "ham"})
        run_workflow(wf, {"text": "x"})
    fake.enqueue({"label": "ham"})
    step = run_workflow(wf, {"text": "x"}).step("classify")
    assert step.calls[0]["reason"] == "cooldown" and "2 consecutive failures" in step.calls[0]["error"]
    clock.now += 31
    fake.enqueue({"label": "ham"})
    assert run_workflow(wf, {"text": "x"}).step("classify").model == "a"


def test_a_success_resets_the_failure_count(project, fake, clock):
    wf = project(WORKFLOW, config=CONFIG)
    fake.enqueue(ProviderTimeoutError("t"), {"label": "ham"}, {"label": "ham"},
                 ProviderTimeoutError("t"), {"label": "ham"}, {"label": "ham"})
    for _ in range(4):  # without the reset, the second timeout would cool a down for run 4
        run_workflow(wf, {"text": "x"})
    assert models(fake) == ["a", "b", "a", "a", "b", "a"]


def test_context_overflow_falls_through_without_cooling(project, fake, clock):
    wf = project(WORKFLOW, config=CONFIG)
    for _ in range(3):
        fake.enqueue(ContextWindowError("too long"), {"label": "ham"})
        assert run_workflow(wf, {"text": "x"}).step("classify").model == "b"
    assert models(fake) == ["a", "b"] * 3


def test_record_shows_every_attempt_with_why_it_moved_on(project, fake, clock):
    # a: outage -> b: invalid twice (re-ask, then escalate) -> premium p: valid
    fake.enqueue(ProviderUnavailableError("down"), {"label": "eggs"}, "nope", {"label": "spam"})
    result = run_workflow(project(WORKFLOW, config=CONFIG), {"text": "x"})
    step = result.step("classify")
    assert [(c["tier"], c["model"], c["outcome"], c.get("reason")) for c in step.calls] == [
        ("standard", "a", "error", "fallback"), ("standard", "b", "invalid", "reask"),
        ("standard", "b", "invalid", "escalate"), ("premium", "p", "valid", None)]
    from engine.runner import open_store
    from engine.config import load_config

    rows = open_store(load_config().store_path()).run(result.run_id)["llm_calls"]
    assert [r["reason"] for r in rows] == ["fallback", "reask", "escalate", None]


def test_every_model_failing_is_a_clear_error(project, fake, clock):
    fake.enqueue(ProviderUnavailableError("down"), RateLimitError("429"), ProviderTimeoutError("slow"))
    with pytest.raises(LLMStepError) as info:
        run_workflow(project(WORKFLOW, config=CONFIG), {"text": "x"})
    message = str(info.value)
    assert "ProviderUnavailableError" in message and "RateLimitError" in message
    assert "ProviderTimeoutError" in message and "3 attempt(s)" in message


def test_authentication_error_does_not_fall_through(project, fake, clock):
    fake.enqueue(AuthenticationError("bad key"), {"label": "ham"})
    result = run_workflow(project(WORKFLOW, config=CONFIG), {"text": "x"}, raise_on_error=False)
    assert not result.ok and "authentication failed for fake:a" in result.error
    assert models(fake) == ["a"]


def test_everything_cooling_down_fails_clearly_without_calls(project, fake, clock):
    wf = project(WORKFLOW, config=CONFIG.replace("allowed_fails: 2", "allowed_fails: 1"))
    fake.enqueue(ProviderUnavailableError("a down"), ProviderUnavailableError("b down"),
                 ProviderUnavailableError("p down"))
    run_workflow(wf, {"text": "x"}, raise_on_error=False)
    with pytest.raises(LLMStepError) as info:
        run_workflow(wf, {"text": "y"})
    assert len(fake.requests) == 3  # the second run made no call at all
    assert [a["reason"] for a in info.value.attempts] == ["cooldown", "cooldown", "cooldown"]
    assert "cooling down for 30.0 s more" in str(info.value)
