"""A provider-batch run never pays twice: real-time fallbacks replayed on resume, a batch created
just before a kill found again (Anthropic), one process at a time on a batch run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from batch_helpers import TEXTS

from engine.errors import UserError
from engine.testing.batch_servers import Scenario
from engine.store import leases
from engine.runner import open_store
from engine.store.ledger import Ledger

EXPECTED = ["spam" if "buy" in t else "ham" for t in TEXTS]

SECOND_STEP = """\
  - id: confirm
    inputs: {text: "{{ inputs.text }}", label: "{{ steps.classify.output.label }}"}
    llm:
      tier: %s
      prompt: "Confirm the label {{ label }} of: {{ text }}"
      schema: {type: object, properties: {label: {enum: [spam, ham]}}, required: [label], additionalProperties: false}
      max_tokens: 20
"""


def store_of(project: Any) -> Any:
    return open_store(project.root / ".engine" / "engine.db")


def assert_each_item_once(project: Any) -> None:
    outputs = project.outputs()
    assert [o["index"] for o in outputs] == list(range(len(TEXTS)))
    assert [o["status"] for o in outputs] == ["ok"] * len(TEXTS)
    assert [o["outputs"]["label"] for o in outputs] == EXPECTED


class KillWhen:
    """A batch observer that stops the run (as Ctrl-C would) when the stage starts with `stage`."""

    def __init__(self, stage: str):
        self.stage = stage

    def start(self, summary: Any) -> None:
        pass

    def advance(self, summary: Any, line: Any) -> None:
        pass

    def status(self, summary: Any) -> None:
        if summary.provider_batch.stage.startswith(self.stage):
            raise KeyboardInterrupt


def test_a_kill_while_round_two_waits_does_not_buy_round_one_fallbacks_again(served):
    seen: dict[str, Any] = {}
    # every request of the first provider batch fails there: round 1 is answered in real time
    project = served(scenario=Scenario(fail=lambda cid, n: cid in seen["server"].counters.custom_ids[:len(TEXTS)]))
    seen["server"] = project.server
    wf, items = project.write(extra=SECOND_STEP % "openai")

    with pytest.raises(KeyboardInterrupt):
        project.run(wf, items, observer=KillWhen("round 2: waiting"))
    counters = project.server.counters
    assert counters.batches_created == 2 and counters.realtime_calls == len(TEXTS)

    summary = project.run(wf, items, resume=True)
    assert summary.ok == len(TEXTS)
    assert counters.batches_created == 2  # round 2's batch polled again
    assert counters.realtime_calls == len(TEXTS)  # round 1's fallbacks replayed from the ledger
    assert summary.provider_batch.replayed == len(TEXTS)
    assert_each_item_once(project)
    store = store_of(project)
    realtime = [r for r in store.query("SELECT * FROM llm_calls WHERE step_id = 'classify'")
                if not r["provider_batch"] and r["outcome"] == "valid"]
    assert len(realtime) == 2 * len(TEXTS)  # each answer used by the killed run and by the resume
    assert sum(1 for r in realtime if r["cost"] > 0) == len(TEXTS)  # and charged once
    ledger = Ledger(store, store.query("SELECT id FROM batches")[0]["id"])
    assert ledger.counts().get("realtime:errored") == len(TEXTS)


@pytest.mark.parametrize("tier", ["anthropic", "openai"])
def test_a_batch_created_just_before_a_kill_is_found_again_not_created_twice(served, monkeypatch, tier):
    project = served(scenario=Scenario(polls_in_progress=2))
    wf, items = project.write(tier=tier)
    real_update = Ledger.update_job

    def die_before_recording(self: Ledger, job: Any, **values: Any) -> None:
        if values.get("state") == "submitted":
            raise KeyboardInterrupt  # the provider has the batch; the ledger holds only the intent
        real_update(self, job, **values)

    monkeypatch.setattr(Ledger, "update_job", die_before_recording)
    with pytest.raises(KeyboardInterrupt):
        project.run(wf, items)
    monkeypatch.setattr(Ledger, "update_job", real_update)
    assert project.server.counters.batches_created == 1
    store = store_of(project)
    jobs = Ledger(store, store.query("SELECT id FROM batches")[0]["id"]).jobs()
    assert [(j.state, j.provider_job_id) for j in jobs] == [("submitting", None)]

    summary = project.run(wf, items, resume=True)
    assert summary.ok == len(TEXTS)
    counters = project.server.counters
    assert counters.batches_created == 1  # found at the provider, polled, collected
    assert counters.realtime_calls == 0 and counters.batch_requests_billed == len(TEXTS)
    assert_each_item_once(project)


def test_an_anthropic_batch_of_another_run_is_not_taken_for_ours(served, monkeypatch):
    """A batch of the same size created meanwhile by someone else, already ended, whose custom ids
    are not ours, is passed over: the lost batch (still running) is found."""
    project = served(scenario=Scenario(polls_in_progress=2))
    wf, items = project.write(tier="anthropic")
    real_update = Ledger.update_job

    def die_before_recording(self: Ledger, job: Any, **values: Any) -> None:
        if values.get("state") == "submitted":
            raise KeyboardInterrupt
        real_update(self, job, **values)

    monkeypatch.setattr(Ledger, "update_job", die_before_recording)
    with pytest.raises(KeyboardInterrupt):
        project.run(wf, items)
    monkeypatch.setattr(Ledger, "update_job", real_update)
    server = project.server
    ours = next(iter(server.anthropic_batches))
    status, other = server.route("POST", "/v1/messages/batches", {"Content-Type": "application/json"},
                                 json.dumps({"requests": [
                                     {"custom_id": f"other-{n}", "params": {"model": "claude-haiku-4-5",
                                      "max_tokens": 5, "messages": [{"role": "user", "content": t}]}}
                                     for n, t in enumerate(TEXTS)]}).encode())[:2]
    assert status == 200
    server.route("GET", f"/v1/messages/batches/{other['id']}", {}, b"")
    server.route("GET", f"/v1/messages/batches/{other['id']}", {}, b"")
    assert server.anthropic_batches[other["id"]]["processing_status"] == "ended"

    summary = project.run(wf, items, resume=True)
    assert summary.ok == len(TEXTS)
    assert server.counters.batches_created == 2  # ours and the other one; none created again
    assert server.counters.realtime_calls == 0
    store = store_of(project)
    assert [j.provider_job_id for j in Ledger(store, store.query("SELECT id FROM batches")[0]["id"]).jobs()] == [ours]
    assert_each_item_once(project)


def _cli(project: Any, wf: Any, items: Any, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine", "run", str(wf), "--inputs", str(items), "--output",
            str(project.root / "out.jsonl"), "--poll-interval", "0.05", "-q", *extra]


def test_a_second_resume_is_refused_while_the_first_process_runs_the_batch(served):
    hold = threading.Event()
    project = served(scenario=Scenario(hold=hold))
    wf, items = project.write()
    first = subprocess.Popen(_cli(project, wf, items, "--provider-batch"), cwd=project.root, env=dict(os.environ),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while project.server.counters.polls < 1 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert project.server.counters.polls >= 1, "the first run never submitted its batch"

        second = subprocess.run(_cli(project, wf, items, "--resume"), cwd=project.root, env=dict(os.environ),
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert "is being run by another process" in second.stderr and "Traceback" not in second.stderr
        store = store_of(project)
        assert store.query("SELECT status FROM runs WHERE status = 'interrupted'") == []  # its runs left alone
        assert project.server.counters.batches_created == 1

        hold.set()
        assert first.wait(timeout=120) == 0
    finally:
        hold.set()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert_each_item_once(project)
    # the lease is released with the first process: a resume runs (nothing is left to do)
    summary = project.run(wf, items, resume=True)
    assert summary.resumed == len(TEXTS) and summary.ok == len(TEXTS)
    counters = project.server.counters
    assert counters.batches_created == 1 and counters.batch_requests_billed == len(TEXTS)
    assert counters.realtime_calls == 0


def test_a_batch_whose_process_was_killed_can_be_resumed_at_once(served):
    hold = threading.Event()
    project = served(scenario=Scenario(hold=hold))
    wf, items = project.write()
    first = subprocess.Popen(_cli(project, wf, items, "--provider-batch"), cwd=project.root, env=dict(os.environ),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while project.server.counters.polls < 1 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.kill()
    first.wait()
    bid = store_of(project).query("SELECT id FROM batches")[0]["id"]
    assert leases.holder(store_of(project), f"batch:{bid}") is not None  # SIGKILL released nothing
    hold.set()
    summary = project.run(wf, items, resume=True)  # its holder is gone: taken over, not refused
    assert summary.ok == len(TEXTS)
    assert project.server.counters.batches_created == 1
    assert leases.holder(store_of(project), f"batch:{bid}") is None


def test_resume_is_refused_with_exit_2_while_another_host_holds_the_batch(served):
    project = served()
    wf, items = project.write()
    with pytest.raises(KeyboardInterrupt):
        project.run(wf, items, observer=KillWhen("round 1: waiting"))
    store = store_of(project)
    bid = store.query("SELECT id FROM batches")[0]["id"]
    store.execute("INSERT INTO leases (name, owner, host, pid, acquired_at, expires) VALUES (?, ?, ?, ?, ?, ?)",
                  [f"batch:{bid}", "worker-2:4242:abc", "worker-2", 4242, "2026-01-01T00:00:00", time.time() + 3600])
    refused = subprocess.run(_cli(project, wf, items, "--resume"), cwd=project.root, env=dict(os.environ),
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert f"batch {bid} is being run by another process (process 4242 on worker-2" in refused.stderr
    with pytest.raises(UserError, match="being run by another process"):
        project.run(wf, items, resume=True)
    assert project.server.counters.batches_created == 1

    store.execute("DELETE FROM leases WHERE name = ?", [f"batch:{bid}"])  # the other host finished
    summary = project.run(wf, items, resume=True)
    assert summary.ok == len(TEXTS)
    assert project.server.counters.batches_created == 1
    assert_each_item_once(project)
