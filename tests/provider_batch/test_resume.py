"""Resuming a provider-batch run: no item lost, done twice or billed twice."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest
from batch_helpers import TEXTS, fast

from engine.pricing import price_of
from engine.testing.batch_servers import Scenario
from engine.store.ledger import Ledger
from engine.reporting import build_report
from engine.runner import open_store
from engine.spec.models import ModelEntry

EXPECTED = ["spam" if "buy" in t else "ham" for t in TEXTS]

SECOND_STEP = """\
  - id: confirm
    inputs: {text: "{{ inputs.text }}", label: "{{ steps.classify.output.label }}"}
    llm:
      tier: openai
      prompt: "Confirm the label {{ label }} of: {{ text }}"
      schema: {type: object, properties: {label: {enum: [spam, ham]}}, required: [label], additionalProperties: false}
      max_tokens: 20
"""


def batch_price(row: dict[str, Any]) -> float:
    price = price_of(ModelEntry(model=f"{row['provider']}:{row['model']}")).batched()
    return price.cost(row["tokens_in"], row["tokens_out"])


def store_of(project: Any) -> Any:
    return open_store(project.root / ".engine" / "engine.db")


def assert_each_item_once(project: Any) -> None:
    outputs = project.outputs()
    assert [o["index"] for o in outputs] == list(range(len(TEXTS)))
    assert [o["status"] for o in outputs] == ["ok"] * len(TEXTS)
    assert [o["outputs"]["label"] for o in outputs] == EXPECTED


def assert_billed_once(project: Any) -> None:
    """Every batch request is charged once in the log: replays of a result an interrupted run
    already logged cost nothing, and the total is one batch-rate charge per request."""
    rows = [r for r in store_of(project).query("SELECT * FROM llm_calls") if r["provider_batch"]]
    charged = Counter(r["provider_batch"] for r in rows if r["cost"] > 0)
    assert set(charged.values()) == {1}
    assert set(charged) == {r["provider_batch"] for r in rows}
    assert sum(r["cost"] for r in rows) == pytest.approx(sum(batch_price(r) for r in rows if r["cost"] > 0))


def test_resume_after_sigkill_between_submit_and_completion(served):
    hold = threading.Event()
    project = served(scenario=Scenario(hold=hold))
    wf, items = project.write()
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(wf), "--inputs", str(items),
                             "--output", str(project.root / "out.jsonl"), "--provider-batch", "--poll-interval", "0.05", "-q"],
                            cwd=project.root, env=dict(os.environ), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while project.server.counters.polls < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert project.server.counters.polls >= 3, "the batch was never submitted and polled"
    proc.kill()
    proc.wait()
    assert project.server.counters.batches_created == 1
    open_jobs = Ledger(store_of(project), store_of(project).query("SELECT id FROM batches")[0]["id"]).open_jobs()
    assert len(open_jobs) == 1 and open_jobs[0].provider_job_id

    hold.set()
    # resumed without --provider-batch: a run that used provider batches keeps using them
    summary = project.run(wf, items, fast(all_models=False), resume=True)
    assert summary.ok == len(TEXTS)
    counters = project.server.counters
    assert counters.batches_created == 1  # the same provider batch, polled again
    assert counters.batch_requests_billed == len(TEXTS) and counters.realtime_calls == 0
    assert_each_item_once(project)
    assert_billed_once(project)


def test_resume_after_a_kill_between_rounds_replays_answers_without_paying_again(served):
    project = served()
    wf, items = project.write(extra=SECOND_STEP)

    class KillAtRoundTwo:
        def start(self, summary: Any) -> None:
            pass

        def advance(self, summary: Any, line: Any) -> None:
            pass

        def status(self, summary: Any) -> None:
            if summary.provider_batch.stage.startswith("round 2: submitting"):
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        project.run(wf, items, observer=KillAtRoundTwo())
    assert project.server.counters.batches_created == 1
    assert not (project.root / "out.jsonl").read_text().strip()

    summary = project.run(wf, items, resume=True)
    assert summary.ok == len(TEXTS)
    counters = project.server.counters
    assert counters.batches_created == 2  # round 1 once, round 2 once (never created before the kill)
    assert counters.batch_requests_billed == 2 * len(TEXTS) and counters.realtime_calls == 0
    assert summary.provider_batch.replayed == len(TEXTS)
    assert_each_item_once(project)
    assert_billed_once(project)
    report = build_report(store_of(project))
    batched = [r for r in store_of(project).query("SELECT * FROM llm_calls") if r["cost"] > 0]
    assert report.totals["cost"] == pytest.approx(sum(batch_price(r) for r in batched))


def test_a_batch_created_but_not_recorded_before_a_kill_is_found_not_resubmitted(served, monkeypatch):
    project = served(scenario=Scenario(polls_in_progress=2))
    wf, items = project.write()
    real_update = Ledger.update_job

    def die_before_recording(self: Ledger, job: Any, **values: Any) -> None:
        if values.get("state") == "submitted":
            raise KeyboardInterrupt  # the provider has the batch; the ledger never learns its id
        real_update(self, job, **values)

    monkeypatch.setattr(Ledger, "update_job", die_before_recording)
    with pytest.raises(KeyboardInterrupt):
        project.run(wf, items)
    monkeypatch.setattr(Ledger, "update_job", real_update)
    assert project.server.counters.batches_created == 1

    summary = project.run(wf, items, resume=True)
    assert summary.ok == len(TEXTS)
    assert project.server.counters.batches_created == 1  # found by its metadata
    assert project.server.counters.realtime_calls == 0
    assert_each_item_once(project)
    assert_billed_once(project)
