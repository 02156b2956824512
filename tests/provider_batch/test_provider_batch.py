"""Provider batch runs against in-process OpenAI and Anthropic servers: completed, partially
failed, expired, cancelled, malformed lines, re-ask rounds, caches first, real-time tiers in the
same run, pricing, budgets, progress, report."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from batch_helpers import TEXTS, fast, label_of

from engine.pricing import Price, completion_cost, price_of
from engine.providers.base import Completion
from engine.testing.batch_servers import Scenario
from engine.reporting import build_report
from engine.runner import open_store
from engine.spec.models import ModelEntry

EXPECTED = ["spam" if "buy" in t else "ham" for t in TEXTS]


def calls(root: Any) -> list[dict[str, Any]]:
    store = open_store(root / ".engine" / "engine.db")
    return store.query("SELECT * FROM llm_calls ORDER BY id")


def ledger(root: Any) -> list[dict[str, Any]]:
    store = open_store(root / ".engine" / "engine.db")
    return store.query("SELECT * FROM provider_batch_requests ORDER BY item")


def list_cost(call: dict[str, Any]) -> float:
    price = price_of(ModelEntry(model=f"{call['provider']}:{call['model']}"))
    return price.cost(call["tokens_in"], call["tokens_out"])


@pytest.mark.parametrize("tier", ["openai", "anthropic"])
def test_completed_batch_answers_every_item_at_half_price(served, tier):
    project = served()
    wf, items = project.write(tier=tier)
    summary = project.run(wf, items)
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    assert summary.ok == len(TEXTS) and summary.failed == 0
    counters = project.server.counters
    assert counters.batches_created == 1 and counters.realtime_calls == 0
    assert counters.batch_requests_billed == len(TEXTS)
    if tier == "openai":
        assert counters.files_uploaded == 1
    rows = calls(project.root)
    assert len(rows) == len(TEXTS)
    for row in rows:
        assert row["provider_batch"] and row["outcome"] == "valid"
        assert row["cost"] == pytest.approx(list_cost(row) * 0.5)
    assert summary.provider_batch.batched == len(TEXTS)
    assert summary.served == {f"batch/{tier}": len(TEXTS)}
    assert {r["state"] for r in ledger(project.root)} == {"succeeded"}
    report = build_report(open_store(project.root / ".engine" / "engine.db"))
    assert [g["key"] for g in report.groups["source"]] == [f"batch:{tier}"]


@pytest.mark.parametrize("tier", ["openai", "anthropic"])
def test_partially_failed_batch_sends_the_failed_requests_in_real_time(served, tier):
    project = served(scenario=Scenario(fail=lambda cid, n: n in (1, 3)))
    wf, items = project.write(tier=tier)
    summary = project.run(wf, items)
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    counters = project.server.counters
    assert counters.batches_created == 1
    assert counters.realtime_calls == 2 and counters.batch_requests_billed == 4
    assert summary.provider_batch.fallbacks == {"errored": 2}
    fallbacks = [r for r in ledger(project.root) if r["fallback"]]
    assert len(fallbacks) == 2 and {r["fallback"] for r in fallbacks} == {"realtime:errored"}
    rows = calls(project.root)
    batched = [r for r in rows if r["provider_batch"]]
    realtime = [r for r in rows if not r["provider_batch"]]
    assert len(batched) == 4 and len(realtime) == 2
    for row in batched:
        assert row["cost"] == pytest.approx(list_cost(row) * 0.5)
    for row in realtime:
        assert row["cost"] == pytest.approx(list_cost(row))


@pytest.mark.parametrize("tier", ["openai", "anthropic"])
@pytest.mark.parametrize("end,why", [("expired", "expired"), ("cancelled", "canceled")])
def test_expired_or_cancelled_batch_finishes_the_missing_items_in_real_time(served, tier, end, why):
    project = served(scenario=Scenario(end=end, run_before_end=2))
    wf, items = project.write(tier=tier)
    summary = project.run(wf, items)
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    counters = project.server.counters
    assert counters.batch_requests_billed == 2 and counters.realtime_calls == len(TEXTS) - 2
    assert summary.provider_batch.fallbacks == {why: len(TEXTS) - 2}
    assert summary.provider_batch.batched == 2
    job_status = open_store(project.root / ".engine" / "engine.db").query(
        "SELECT status FROM provider_batch_jobs")[0]["status"]
    assert job_status == ({"openai": end, "anthropic": "ended"}[tier])


@pytest.mark.parametrize("tier", ["openai", "anthropic"])
def test_malformed_result_line_falls_back_for_that_request_only(served, tier):
    project = served(scenario=Scenario(malformed=lambda cid, n: n == 0))
    wf, items = project.write(tier=tier)
    summary = project.run(wf, items)
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    assert project.server.counters.realtime_calls == 1
    assert sum(summary.provider_batch.fallbacks.values()) == 1
    assert summary.provider_batch.batched == len(TEXTS) - 1


def test_batch_that_fails_validation_runs_everything_in_real_time(served):
    project = served(scenario=Scenario(end="failed"))
    wf, items = project.write()
    summary = project.run(wf, items)
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    assert project.server.counters.realtime_calls == len(TEXTS)
    assert summary.provider_batch.fallbacks == {"missing": len(TEXTS)}
    assert all(not r["provider_batch"] for r in calls(project.root))


def flaky_answer(bad_items: set[str]):
    """Invalid on the first ask for texts in `bad_items`, valid once re-asked."""

    def answer(messages: list[dict[str, Any]], model: str) -> Any:
        text = next(m["content"] for m in messages if m["role"] == "user")
        reasked = any("rejected" in str(m.get("content")) for m in messages)
        if any(b in text for b in bad_items) and not reasked:
            return {"label": "maybe"}
        return {"label": label_of(messages)}

    return answer


def test_reasks_go_out_as_the_next_batch_round(served):
    project = served(answer=flaky_answer({"lunch", "gold"}))
    wf, items = project.write()
    summary = project.run(wf, items)
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    counters = project.server.counters
    assert counters.batches_created == 2 and counters.realtime_calls == 0
    assert summary.provider_batch.round == 2
    rows = calls(project.root)
    assert [r["outcome"] for r in rows].count("invalid") == 2
    assert all(r["provider_batch"] for r in rows)


def test_realtime_retries_send_reasks_in_real_time(served):
    project = served(answer=flaky_answer({"lunch", "gold"}))
    wf, items = project.write()
    project.run(wf, items, fast(realtime_retries=True))
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    counters = project.server.counters
    assert counters.batches_created == 1 and counters.realtime_calls == 2


def test_escalation_to_a_local_tier_stays_real_time(served, fake):
    project = served(answer=lambda messages, model: {"label": "maybe"})
    fake.responder = lambda request: {"label": label_of(request.messages)}
    wf, items = project.write(extra="      escalate: [local]")
    summary = project.run(wf, items, fast(), concurrency=1)
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    assert summary.ok == len(TEXTS)
    # two batch rounds (first ask, re-ask), then the local tier answered in real time
    assert project.server.counters.batches_created == 2
    assert len(fake.requests) == len(TEXTS)


def test_cache_serves_first_and_only_misses_are_batched(served):
    project = served()
    wf, items = project.write(extra="      cache: true", texts=TEXTS[:3])
    project.run(wf, items)
    assert project.server.counters.batches_created == 1
    wf, items = project.write(extra="      cache: true", texts=TEXTS)
    summary = project.run(wf, items)
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    assert summary.served["cache"] == 3
    assert project.server.counters.batches_created == 2
    assert len(project.server.counters.custom_ids) == 3 + 3  # only the 3 misses went into batch 2


def test_per_tier_batch_true_without_the_flag(served):
    project = served()
    wf, items = project.write(batch_flag=True)
    summary = project.run(wf, items, fast(all_models=False))
    assert summary.ok == len(TEXTS) and project.server.counters.batches_created == 1
    assert project.server.counters.realtime_calls == 0


def test_without_batch_marks_or_the_flag_the_run_is_real_time(served):
    project = served()
    wf, items = project.write()
    summary = project.run(wf, items, fast(all_models=False))
    assert summary.ok == len(TEXTS) and summary.provider_batch is None
    assert project.server.counters.batches_created == 0
    assert project.server.counters.realtime_calls == len(TEXTS)


def test_max_wait_cancels_and_finishes_in_real_time(served):
    hold = threading.Event()  # never released: the batch would stay in_progress
    project = served(scenario=Scenario(hold=hold, run_before_end=1))
    wf, items = project.write()
    summary = project.run(wf, items, fast(max_wait_s=0.2))
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    counters = project.server.counters
    assert counters.cancels == 1
    assert counters.batch_requests_billed == 1 and counters.realtime_calls == len(TEXTS) - 1
    assert summary.provider_batch.fallbacks == {"canceled": len(TEXTS) - 1}


def test_budget_counts_batch_spend_when_submitted(served):
    from engine.pricing import estimate_tokens
    from engine.spec import load_workflow
    from engine.steps.llm import system_message

    project = served()
    wf, items = project.write()
    spec = load_workflow(wf).steps[0].llm
    price = price_of(ModelEntry(model="openai:gpt-4o-mini")).batched()
    worst = max(price.cost(estimate_tokens([{"content": system_message(spec)},
                                            {"content": f"Label this: {text}"}]), 20) for text in TEXTS)
    # a daily cap that holds three worst cases at the batch rate: three requests get into the
    # batch, the others are refused before submission (their holds would cross the cap)
    wf, items = project.write(config_extra=f"budgets: {{workflow_day: {worst * 3 * 1.001:.12f}}}\n")
    summary = project.run(wf, items)
    outputs = project.outputs()
    assert sum(o["status"] == "ok" for o in outputs) == 3 and summary.failed == 3
    assert all("budget workflow_day" in o["error"] for o in outputs if o["status"] != "ok")
    assert len(project.server.counters.custom_ids) == 3  # refused requests never reached a batch
    assert project.server.counters.realtime_calls == 0


def test_progress_shows_stage_and_batch_state(served):
    from engine.cli.batch import stage_text

    project = served(scenario=Scenario(polls_in_progress=2))
    wf, items = project.write()
    seen: list[str] = []

    class Observer:
        def start(self, summary):
            pass

        def advance(self, summary, line):
            pass

        def status(self, summary):
            seen.append(stage_text(summary.provider_batch))

    project.run(wf, items, observer=Observer())
    text = "\n".join(seen)
    for status in ("in_progress", "finalizing", "completed"):
        assert f"gpt-4o-mini {status}" in text
    assert "round 1: waiting on provider batches (classify 6)" in text
    assert f"completed {len(TEXTS)}/{len(TEXTS)}" in text


def test_batch_pricing_uses_the_discount_of_the_pricing_table():
    price = Price(input=2.0, output=8.0, cached_input=1.0, batch_discount=0.4)
    completion = Completion(text="{}", finish_reason="stop", input_tokens=1000, output_tokens=100)
    assert completion_cost(price, completion) == pytest.approx(price.cost(1000, 100))
    completion.batch = "batch_1/i0-x"
    assert completion_cost(price, completion) == pytest.approx(price.cost(1000, 100) * 0.6)
    completion.prepaid = True
    assert completion_cost(price, completion) == 0.0
    assert Price(1.0, 2.0).batched().input == 0.5  # default discount: half price


def test_batch_discount_in_engine_yaml(served):
    project = served()
    wf, items = project.write(config_extra='pricing:\n  "openai:gpt-4o-mini": {input: 1.0, output: 2.0, '
                                           'batch_discount: 0.25}\n')
    project.run(wf, items)
    for row in calls(project.root):
        assert row["cost"] == pytest.approx((row["tokens_in"] * 1.0 + row["tokens_out"] * 2.0) / 1e6 * 0.75)


def test_batch_true_on_a_provider_without_a_batch_api_is_a_config_error(engine_home):
    from engine.config import load_config
    from engine.errors import ConfigError

    (engine_home / "engine.yaml").write_text("tiers:\n  local:\n    - model: llamacpp:smollm2\n      batch: true\n")
    with pytest.raises(ConfigError, match=r"engine.yaml:4:\d+: tiers.local\[0\].batch: provider 'llamacpp' has no "
                                          r"batch API"):
        load_config()


def test_cli_provider_batch_run_shows_the_summary(served):
    from click.testing import CliRunner

    from engine.cli import cli

    project = served()
    wf, items = project.write()
    result = CliRunner().invoke(cli, ["run", str(wf), "--inputs", str(items), "--output",
                                      str(project.root / "out.jsonl"), "--provider-batch", "--poll-interval", "0.01"])
    assert result.exit_code == 0, result.output
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    assert "provider batches: 1 polled in 1 round(s); 6 answers from batches" in result.output
    assert project.server.counters.batches_created == 1


@pytest.mark.parametrize("args,message", [
    (["--provider-batch"], "need a batch run (--inputs FILE)"),
    (["--inputs", "items.jsonl", "--provider-batch", "--max-wait", "soon"], "--max-wait: 'soon' is not a duration"),
])
def test_cli_provider_batch_flags_are_checked(served, args, message):
    from click.testing import CliRunner

    from engine.cli import cli

    project = served()
    wf, _items = project.write()
    result = CliRunner().invoke(cli, ["run", str(wf), *args])
    assert result.exit_code == 2
    assert message in result.output


ROUTED = """\
name: routed
inputs: {text: {type: string}}
steps:
  - id: spam_check
    when: "'buy' in inputs.text"
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: openai
      prompt: "Label this: {{ text }}"
      schema: {type: object, properties: {label: {enum: [spam, ham]}}, required: [label], additionalProperties: false}
      max_tokens: 20
  - id: ham_check
    when: "'buy' not in inputs.text"
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: anthropic
      prompt: "Label this: {{ text }}"
      schema: {type: object, properties: {label: {enum: [spam, ham]}}, required: [label], additionalProperties: false}
      max_tokens: 20
  - id: note
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: compat
      prompt: "Label this: {{ text }}"
      schema: {type: object, properties: {label: {enum: [spam, ham]}}, required: [label], additionalProperties: false}
      max_tokens: 20
"""


def test_requests_are_grouped_per_provider_and_model_and_compatible_servers_stay_real_time(served):
    project = served()
    _wf, items = project.write(config_extra=f"""\
  compat:
    - model: openai-compatible:local-server
      options: {{base_url: "{project.server.base_url}/v1", structured_output: json_schema}}
""")
    wf = project.root / "routed.yaml"
    wf.write_text(ROUTED)
    summary = project.run(wf, items)
    assert summary.ok == len(TEXTS)
    counters = project.server.counters
    # one round: an OpenAI batch for the spam-looking items and an Anthropic batch for the rest
    assert summary.provider_batch.round == 1 and counters.batches_created == 2
    assert sorted(job["model"] for job in summary.provider_batch.jobs) == ["anthropic:claude-haiku-4-5",
                                                                           "openai:gpt-4o-mini"]
    assert counters.batch_requests_billed == len(TEXTS)
    assert counters.realtime_calls == len(TEXTS)  # the openai-compatible server has no batch API


def test_more_items_than_the_window_go_out_in_waves(served, monkeypatch):
    from engine.provider_batch import stages

    monkeypatch.setattr(stages, "WINDOW", 2)
    project = served()
    wf, items = project.write()
    summary = project.run(wf, items)
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    assert project.server.counters.batches_created == 3  # 6 items, 2 in flight at a time
    assert summary.provider_batch.batched == len(TEXTS)


def test_a_batch_the_provider_no_longer_knows_is_given_up_after_three_polls(served):
    project = served(scenario=Scenario(lost=True))
    wf, items = project.write()
    summary = project.run(wf, items)
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED
    assert project.server.counters.realtime_calls == len(TEXTS)
    assert summary.provider_batch.fallbacks == {"missing": len(TEXTS)}
    job = open_store(project.root / ".engine" / "engine.db").query("SELECT * FROM provider_batch_jobs")[0]
    assert job["state"] == "collected" and "polling" in job["error"]


def test_the_fake_servers_reject_what_the_providers_reject():
    from engine.testing.batch_servers import anthropic_input_problem, openai_input_problem

    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": []}}
    assert openai_input_problem([line], "/v1/chat/completions") is None
    assert "unique" in openai_input_problem([line, line], "/v1/chat/completions")
    assert "same model" in openai_input_problem(
        [line, {**line, "custom_id": "b", "body": {"model": "gpt-4o", "messages": []}}], "/v1/chat/completions")
    request = {"custom_id": "i0-abc", "params": {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}}
    assert anthropic_input_problem([request]) is None
    assert "custom_id" in anthropic_input_problem([{**request, "custom_id": "has spaces"}])


def test_runs_show_names_the_provider_batch_that_answered(served):
    from click.testing import CliRunner

    from engine.cli import cli

    project = served()
    wf, items = project.write(texts=TEXTS[:1])
    project.run(wf, items)
    run_id = project.outputs()[0]["run_id"]
    result = CliRunner().invoke(cli, ["runs", "show", run_id])
    assert result.exit_code == 0, result.output
    ref = calls(project.root)[0]["provider_batch"]
    assert ref.startswith("batch_") and f"(provider batch {ref})" in result.output


def test_batch_true_in_a_workflow_tier_override_is_checked_too(engine_home):
    from engine.errors import UserError
    from engine.spec import load_workflow

    path = engine_home / "wf.yaml"
    path.write_text("name: x\ntiers:\n  mine:\n    - model: openai-compatible:q\n      batch: true\n"
                    "steps:\n  - id: s\n    script: json:dumps\n")
    with pytest.raises(UserError, match=r"wf.yaml:5:\d+: tiers.mine\[0\].batch: provider 'openai-compatible' has "
                                        r"no batch API"):
        load_workflow(path)


def test_identical_requests_in_a_round_are_sent_once_and_billed_once(served):
    project = served()
    texts = TEXTS + TEXTS[:2]  # two items repeat earlier ones
    wf, items = project.write(texts=texts)
    summary = project.run(wf, items)
    assert [o["outputs"]["label"] for o in project.outputs()] == EXPECTED + EXPECTED[:2]
    counters = project.server.counters
    assert len(counters.custom_ids) == len(TEXTS) and counters.batch_requests_billed == len(TEXTS)
    assert summary.provider_batch.batched == len(texts)
    rows = calls(project.root)
    assert len(rows) == len(texts) and all(r["provider_batch"] for r in rows)
    paid = [r for r in rows if r["cost"] > 0]
    assert len(paid) == len(TEXTS) and len({r["provider_batch"] for r in paid}) == len(TEXTS)
    assert sum(r["cost"] for r in rows) == pytest.approx(sum(list_cost(r) * 0.5 for r in paid))
