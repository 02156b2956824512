"""The table modules of `engine/store/` (the only place SQL lives) over both backends: each
function the engine calls gives the same rows on SQLite and on PostgreSQL. `store_url`
(tests/store/conftest.py) is a SQLite path or a fresh Postgres database."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest

from engine.store import Store, cache, checkpoints, promotions, quality, reports
from engine.store.ledger import Ledger
from engine.clock import now_iso


@pytest.fixture
def store(store_url: str) -> Store:
    from engine.runner import open_store

    s = open_store(store_url)
    yield s
    s.close()


def _run(store: Store, run_id: str, *, tags: dict | None = None, cost: float = 0.0, purpose: str | None = None,
         trust: str = "unverified", confidence: float | None = None, workflow: str = "wf") -> None:
    store.start_run(run_id, workflow, "1", f"/flows/{workflow}.yaml", {"q": run_id}, tags or {})
    store.record_llm_call({"run_id": run_id, "workflow": workflow, "step_id": "s", "tier": "local",
                           "provider": "fake", "model": "small", "outcome": "valid", "output": {"a": run_id},
                           "input": {"q": run_id}, "input_hash": f"h-{run_id}", "cost": cost, "trust": trust,
                           "purpose": None, "prompt_hash": "p", "schema_hash": "k"})
    if purpose:
        store.record_llm_call({"run_id": run_id, "workflow": workflow, "step_id": "s", "tier": "premium",
                               "outcome": "valid", "output": {"a": "ref"}, "cost": 0.5, "purpose": purpose})
    store.record_step({"run_id": run_id, "step_id": "s", "kind": "llm", "status": "ok", "served_by": "llm",
                       "tier": "local", "provider": "fake", "model": "small", "cost": cost, "trust": trust,
                       "confidence": confidence, "output": {"a": run_id}}, link_calls=True)
    store.finish_run(run_id, status="ok", outputs={"a": run_id}, error=None, tokens_in=1, tokens_out=1,
                     cost=cost, latency_ms=1.0)


def test_reports_budgets_and_lineage(store):
    _run(store, "r1", tags={"team": "a"}, cost=0.25)
    _run(store, "r2", tags={"team": "b", "parent_run": "r1", "parent_step": "s"}, cost=0.5, purpose="quality_check")
    steps = reports.llm_steps(store)
    assert [s["run_id"] for s in steps] == ["r1", "r2"] and steps[1]["calls"] == 1  # checks serve no step
    assert [s["run_id"] for s in reports.llm_steps(store, tags={"team": "b"})] == ["r2"]
    assert reports.llm_steps(store, workflow="other") == []
    assert [c["cost"] for c in reports.check_calls(store)] == [0.5]
    assert reports.check_calls(store, tags={"team": "a"}) == []
    assert reports.run_spend(store, "r2") == pytest.approx(1.0)
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert reports.day_spend(store, today) == pytest.approx(1.25)
    assert reports.day_spend(store, today, provider="fake", model="small") == pytest.approx(0.75)
    assert reports.day_spend(store, today, tier="premium", flush=False) == pytest.approx(0.5)
    assert reports.day_spend(store, "2000-01-01", workflow="wf") == 0.0
    assert [c["id"] for c in reports.child_runs(store, "r1")] == ["r2"] and reports.child_runs(store, "r2") == []


def test_batch_checkpoints(store):
    checkpoints.create(store, {"id": "b1", "workflow": "wf", "workflow_path": "", "inputs_path": "in.jsonl",
                               "inputs_sha256": "x", "output_path": "out.jsonl", "total": 2, "status": "running"})
    assert checkpoints.exists(store, "b1") and not checkpoints.exists(store, "b2")
    assert [b["id"] for b in checkpoints.by_id_or_prefix(store, "b")] == ["b1"]
    assert checkpoints.latest(store, "in.jsonl", "out.jsonl")["total"] == 2
    assert checkpoints.latest(store, "in.jsonl", "other.jsonl") is None
    _run(store, "r1", tags={"batch": "b1", "item": 0})
    store.start_run("r2", "wf", "1", None, {}, {"batch": "b1", "item": 1})  # cut short by a crash
    assert [r["id"] for r in checkpoints.finished_runs(store, "b1")] == ["r1"]
    checkpoints.finish(store, "b1", "interrupted")
    checkpoints.reopen(store, "b1")
    assert store.run("r2")["status"] == "interrupted" and store.run("r1")["status"] == "ok"
    assert checkpoints.latest(store, "in.jsonl", "out.jsonl")["status"] == "running"


def test_quality_queue_reads(store):
    _run(store, "r1", confidence=0.2)
    _run(store, "r2")
    quality.record_check(store, workflow="wf", step_id="s", tier="local", model="m", run_id="r2", input_hash="h",
                         mode="sample", status="disagree", served=True, confidence=None, cheap_output={"a": 1},
                         reference_output={"a": 2}, reference_tier="premium", cost=0.1)
    quality.record_check(store, workflow="wf", step_id="s", tier="local", model="m", run_id="r1", input_hash="h",
                         mode="sample", status="skipped", served=True, confidence=None, cheap_output=None,
                         reference_output=None, reference_tier="premium", cost=0.0, reason="premium is down")
    disagree, low, rest = quality.queue_candidates(store, "wf", low_confidence=0.5, unverified="unverified", scan=10)
    assert [r["run_id"] for r in disagree] == ["r2"] and [r["run_id"] for r in low] == ["r1"]
    assert {r["run_id"] for r in rest} == {"r1", "r2"} and rest[0]["input_hash"] == "h-r2"
    assert quality.queue_candidates(store, "other", low_confidence=0.5, unverified="unverified", scan=10) == ([], [], [])
    assert [c["reference_output"] for c in quality.checks_of_runs(store, ["r1", "r2"])] == [{"a": 2}]
    assert quality.checks_of_runs(store, []) == []
    assert [a["output"] for a in quality.valid_answers(store, "r1", "s")] == [{"a": "r1"}]
    assert quality.skipped_reasons(store, "wf", "s") == ["premium is down"]
    quality.record_feedback(store, [{"workflow": "wf", "step_id": "s", "run_id": "r1", "input": {"q": "r1"},
                                     "input_hash": "h-r1", "output": {"a": "x"}, "kind": "label"}])
    assert [(k["run_id"], k["input_hash"]) for k in quality.feedback_keys(store)] == [("r1", "h-r1")]
    quality.mark_verified(store, "r1", "s", "person")
    (recent,) = quality.recent_feedback(store, 5)
    assert recent["step_trust"] == "verified" and json.loads(recent["served"]) == {"a": "r1"}  # as text


def test_promotion_reads(store):
    _run(store, "r1")
    promotions.insert(store, {"id": "p1", "workflow": "wf", "workflow_path": None, "step_id": "s", "kind": "lookup",
                              "status": "proposed", "prompt_hash": "p", "schema_hash": "k", "fingerprint": "f",
                              "payload": "{}", "verification": "{}", "savings": "{}", "shadow": 1,
                              "created_at": now_iso()})
    assert promotions.exists(store, "p1") and not promotions.exists(store, "p2")
    assert [p["id"] for p in promotions.find(store, statuses=("proposed", "accepted"), kind="lookup")] == ["p1"]
    assert promotions.find(store, statuses=("accepted",)) == []
    assert promotions.statuses(store, "wf") == [{"id": "p1", "status": "proposed", "shadow": 1}]
    promotions.add_check(store, "p1", "spot", "h", '{"a": 1}', '{"a": 1}', True)
    promotions.add_check(store, "p1", "spot", "h", '{"a": 1}', '{"a": 2}', False)
    assert promotions.recent_checks(store, "p1", "spot", 5) == [0, 1]
    assert promotions.serve_counts(store, "wf", "s") == {"llm": 1}
    assert promotions.served_by_promotion(store, "wf", "s", "lookup", "p1") == 0
    assert [c["output"] for c in promotions.step_calls(store, "wf", "s")] == [{"a": "r1"}]
    assert promotions.workflow_paths(store) == ["/flows/wf.yaml"]


def test_cache_tables(store):
    row = {"workflow": "wf", "step_id": "s", "namespace": "n", "input_key": "a", "sem_namespace": "sem",
           "prompt_hash": "p", "schema_hash": "k", "model_key": "m", "answer_key": "spam", "output": '{"l": 1}',
           "input": '"a"', "created": 1.0, "created_at": now_iso(), "hits": 0,
           "vector": np.array([1.0, 0.0], dtype=np.float32).tobytes()}
    first = cache.put_entry(store, row, np.array([1.0, 0.0], dtype=np.float32))
    assert cache.put_entry(store, {**row, "answer_key": "ham"}) == first  # an upsert: one row per key
    assert cache.entry(store, "n", "a")["answer_key"] == "ham" and cache.entry_by_id(store, first)["id"] == first
    assert [v[0] for v in cache.vectors_after(store, "sem", 0)] == [first]
    if cache.searches_vectors(store):
        assert cache.nearest(store, "sem", np.array([1.0, 0.0], dtype=np.float32))[0]["id"] == first
    cache.record_lookup(store, run_id="r1", workflow="wf", step_id="s", tenant=None, kind="exact", outcome="hit",
                        entry_id=first, similarity=None, tokens_saved=3, cost_saved=0.5, hit=True)
    assert cache.entry_counts(store, "wf") == [{"workflow": "wf", "step_id": "s", "entries": 1, "vectors": 1}]
    (events,) = cache.event_counts(store)
    assert events["exact_hits"] == 1 and events["cost_saved"] == 0.5
    (hit,) = cache.hits(store, run_id="r")
    assert hit["entry_output"] == {"l": 1} and hit["entry_hits"] == 1
    assert cache.delete_entries(store, workflow="other") == 0 and cache.delete_entries(store, step_id="s") == 1
    assert cache.entry(store, "n", "a") is None


def test_provider_batch_ledger(store):
    ledger = Ledger(store, "b1")
    assert not ledger.any_jobs()
    job = ledger.new_job(0, "openai", "gpt", "route", [
        ("c1", {"item": 0, "run_id": "r1", "step_id": "s", "tier": "standard", "fingerprint": "f"}),
        ("c2", {"item": 1, "run_id": "r2", "step_id": "s", "tier": "standard", "fingerprint": "f", "leader": "c1"})])
    assert ledger.any_jobs() and [j.id for j in ledger.open_jobs()] == [job.id]
    ledger.update_job(job, state="submitted", provider_job_id="pj", counts={"total": 1})
    assert ledger.jobs()[0].counts == {"total": 1} and ledger.request("c1")["provider_job_id"] == "pj"
    ledger.store_results(job, [("c1", "succeeded", {"answer": 1}, None)])
    assert ledger.request("c2")["result"] == {"answer": 1} and ledger.open_jobs() == []
    ledger.mark_fallback("c2", "expired")
    assert ledger.counts() == {"succeeded": 1, "expired": 1}
    assert sorted(ledger.job_custom_ids(job)) == ["c1", "c2"]


def test_cache_entries_settle(store):
    """Provenance columns and the settling reads and writes, on both backends."""
    base = {"workflow": "wf", "step_id": "s", "prompt_hash": "p", "schema_hash": "k", "model_key": "m",
            "input": '"a"', "created": 1.0, "created_at": now_iso(), "hits": 0, "input_hash": "h1", "tier": "local"}
    one = cache.put_entry(store, {**base, "namespace": "n1", "input_key": "a", "answer_key": "spam",
                                  "output": '{"l": "spam"}', "trust": "unverified"})
    two = cache.put_entry(store, {**base, "namespace": "n2", "input_key": "a", "answer_key": "spam",
                                  "output": '{"l": "spam"}', "trust": "unverified", "tenant": "t2"})
    copy = cache.put_entry(store, {**base, "namespace": "n1", "input_key": "b", "answer_key": "spam",
                                   "output": '{"l": "spam"}', "trust": "unverified", "input_hash": "h2",
                                   "source_entry": one})
    found = cache.entries_for(store, "wf", "s", "p", "k", "h1")
    assert sorted(r["id"] for r in found) == [one, two] and {r["trust"] for r in found} == {"unverified"}
    assert len(cache.entries_for(store, "wf", "s", None, "k", "h1")) == 2  # any prompt (labels)
    assert cache.settle_entry(store, one, trust="reference", settled_by="check:7", output='{"l": "ham"}',
                              answer_key="ham", tier="premium", provider="fake", model="large")
    row = cache.entry_by_id(store, one)
    assert (row["trust"], row["settled_by"], row["answer_key"], row["tier"]) == ("reference", "check:7", "ham", "premium")
    # a check never overwrites what is already trusted; a label does
    assert not cache.settle_entry(store, one, trust="verified", settled_by="check:8")
    assert cache.settle_entry(store, one, trust="labelled", settled_by="label:1", only_unverified=False)
    gone = cache.delete_copies_of(store, [one])
    assert [g["id"] for g in gone] == [copy] and cache.entry_by_id(store, copy) is None
    counts = {(r["trust"], r["n"]) for r in cache.trust_counts(store, "wf")}
    assert counts == {("labelled", 1), ("unverified", 1)}
    cache.record_lookup(store, run_id="r1", workflow="wf", step_id="s", tenant=None, kind="exact", outcome="hit",
                        entry_id=two, similarity=None, tokens_saved=1, cost_saved=0.1, hit=True, trust="unverified")
    cache.record_lookup(store, run_id="r2", workflow="wf", step_id="s", tenant=None, kind="exact",
                        outcome="untrusted", entry_id=two, similarity=None, tokens_saved=0, cost_saved=0.0, hit=False,
                        trust="unverified")
    (events,) = cache.event_counts(store, "wf")
    assert events["unverified_hits"] == 1 and events["bypassed"] == 1
    (hit,) = cache.hits(store, run_id="r1")
    assert hit["trust"] == "unverified" and hit["entry_trust"] == "unverified" and hit["entry_tier"] == "local"


def test_check_queue_and_verdict_times(store):
    quality.save_queue(store, [{"process": "h:1", "workflow": "wf", "step_id": "s", "submitted": 5, "dropped": 2,
                                "pending": 1, "peak": 3}])
    quality.save_queue(store, [{"process": "h:1", "workflow": "wf", "step_id": "s", "submitted": 6, "dropped": 2,
                                "pending": 0, "peak": 3}])
    (row,) = quality.queue_rows(store, "wf")
    assert (row["submitted"], row["dropped"], row["pending"], row["peak"]) == (6, 2, 0, 3)
    quality.record_check(store, workflow="wf", step_id="s", tier="local", model="m", run_id="r", input_hash="h",
                         mode="background", status="agree", served=True, confidence=None, cheap_output={"a": 1},
                         reference_output={"a": 1}, reference_tier="premium", cost=0.0, verdict_ms=12.5)
    assert [r["verdict_ms"] for r in quality.verdict_times(store, "wf")] == [12.5]
    quality.set_state(store, "wf", "s", "local", quality.ESCALATED, "disagreed")
    escalated = quality.get_state(store, "wf", "s", "local")["escalated_at"]
    quality.set_state(store, "wf", "s", "local", quality.PROBATION, "cool-off over")
    assert escalated and quality.get_state(store, "wf", "s", "local")["escalated_at"] == escalated
