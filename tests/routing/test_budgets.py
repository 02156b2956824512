"""Spend caps: checked before a call with its worst case, counted after; budget fallbacks."""

from __future__ import annotations

import pytest

from engine import run_workflow
from engine.config import load_config
from engine.errors import BudgetExceededError
from engine.runner import open_store

WORKFLOW = """\
name: support
inputs: {text: {type: string}}
steps:
  - id: triage
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: local
      prompt: "Triage: {{ text }}"
      schema: {type: object, properties: {urgent: {type: boolean}}, required: [urgent]}
      max_tokens: 8
  - id: answer
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: premium
      prompt: "Answer: {{ text }}"
      schema: {type: object, properties: {reply: {type: string}}, required: [reply]}
      max_tokens: 10
      retries: 1
"""
TIERS = """
tiers:
  local:
    - {model: "fake:small", input_price: 0, output_price: 0}
  premium:
    - {model: "fake:large", input_price: 1000, output_price: 2000}
    - {model: "fake:medium", input_price: 400, output_price: 800}
"""


def responder(request):
    return {"urgent": False} if "Triage" in request.messages[-1]["content"] else {"reply": "hello there"}


@pytest.fixture
def fake_replies(fake):
    fake.responder = responder
    return fake


def answer_models(results):
    return [r.step("answer").model if r.ok else None for r in results]


def test_model_cap_reached_mid_batch_falls_through_to_the_cheaper_model(project, fake_replies):
    wf = project(WORKFLOW, config=TIERS + "budgets:\n  model_day: {'fake:large': 0.2}\n")
    results = [run_workflow(wf, {"text": f"ticket {i}"}) for i in range(12)]
    used = answer_models(results)
    switch = used.index("medium")
    assert 0 < switch < 12 and used == ["large"] * switch + ["medium"] * (12 - switch)
    skipped = results[switch].step("answer").calls[0]
    assert (skipped["model"], skipped["outcome"], skipped["reason"]) == ("large", "skipped", "budget")
    assert "model_day" in skipped["error"] and "fake:large" in skipped["error"]
    store = open_store(load_config().store_path())
    spent = store.query("SELECT SUM(cost) AS s FROM llm_calls WHERE model = 'large'")[0]["s"]
    assert 0 < spent <= 0.2  # counted with real usage, never over the cap
    assert all(r.step("triage").model == "small" for r in results)  # the local tier keeps going


def test_nothing_left_fails_naming_the_cap_and_local_keeps_going(project, fake_replies):
    wf = project(WORKFLOW, config=TIERS + "budgets:\n  tier_day: {premium: 0.1}\n")
    results = [run_workflow(wf, {"text": f"ticket {i}"}, raise_on_error=False) for i in range(8)]
    failed = [r for r in results if not r.ok]
    assert failed and results[0].ok
    assert all(r.step("triage").status == "ok" for r in results)
    assert "budget exhausted" in failed[0].error and "tier_day" in failed[0].error
    assert "tier 'premium' per day" in failed[0].error
    with pytest.raises(BudgetExceededError) as info:
        run_workflow(wf, {"text": "one more"})
    assert info.value.caps == ["budget tier_day (tier 'premium' per day) $0.1"]


def test_checked_before_the_call_with_the_worst_case(project, fake_replies):
    # The real reply costs far less than the cap; the worst case (max_tokens of output) does not fit.
    wf = project(WORKFLOW, config=TIERS + "budgets:\n  run: 0.05\n")
    result = run_workflow(wf, {"text": "hi"}, raise_on_error=False)
    assert [r.model for r in fake_replies.requests] == ["small", "medium"]
    calls = result.step("answer").calls
    assert calls[0]["reason"] == "budget" and "budget run (per run) $0.05" in calls[0]["error"]
    assert result.step("answer").cost < 0.05


def test_reasks_count_against_the_run_cap(project, fake):
    replies = iter([{"urgent": False}, {"wrong": 1}, {"reply": "ok"}])
    fake.responder = lambda request: next(replies)
    # one premium call fits, a second (the re-ask) would not: it falls to medium
    wf = project(WORKFLOW, config=TIERS + "budgets:\n  run: 0.12\n")
    result = run_workflow(wf, {"text": "hi"})
    calls = result.step("answer").calls
    assert [(c["model"], c["outcome"], c["reason"]) for c in calls] == [
        ("large", "invalid", "reask"), ("large", "skipped", "budget"), ("medium", "valid", None)]
    run = open_store(load_config().store_path()).run(result.run_id)
    assert run["cost"] == pytest.approx(sum(c["cost"] for c in run["llm_calls"]))
    assert run["cost"] <= 0.12


def test_workflow_cap_per_day_and_without_a_store(project, fake_replies):
    wf = project(WORKFLOW, config=TIERS + "budgets:\n  workflows: {support: 0.15}\n")
    results = [run_workflow(wf, {"text": f"t{i}"}, store=False, raise_on_error=False) for i in range(10)]
    assert not all(r.ok for r in results)  # the in-process ledger counts when nothing is stored
    assert sum(r.cost for r in results) <= 0.15


def test_spending_by_another_process_is_seen_within_refresh_s(project, fake_replies):
    from engine.clock import now_iso

    wf = project(WORKFLOW, config=TIERS + "budgets:\n  model_day: {'fake:large': 1.0}\n  refresh_s: 3600\n")
    assert run_workflow(wf, {"text": "a"}).step("answer").model == "large"
    store = open_store(load_config().store_path())
    # another process spends $0.95 on fake:large today, writing to the same store
    store.record_llm_call({"run_id": "other", "workflow": "support", "step_id": "answer", "tier": "premium",
                           "provider": "fake", "model": "large", "attempt": 1, "cost": 0.95,
                           "outcome": "valid", "created_at": now_iso()})
    assert run_workflow(wf, {"text": "b"}).step("answer").model == "large"  # not read yet (refresh_s)
    from engine.budgets import reset_ledger

    reset_ledger()  # as when refresh_s has passed: the store is read again
    assert run_workflow(wf, {"text": "c"}).step("answer").model == "medium"
