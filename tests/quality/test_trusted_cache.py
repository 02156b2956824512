"""Caches never pass an unverified answer off as settled: entries carry provenance, unverified hits
are sampled like live answers, verdicts and labels settle entries, an escalated tier's entries are
never served again unchecked, and served answers are copies."""

from __future__ import annotations

import json
import threading

import numpy as np
from click.testing import CliRunner

from engine import run_workflow
from engine.cache import register_embedder, unregister_embedder
from engine.cli import cli
from engine.quality import monitor
from engine.quality.feedback import give_feedback
from engine.store import quality as quality_store

from quality_helpers import TRUTH

INPUTS = ["my card has not arrived", "i want my money back", "hello", "refund please", "what is the weather"]


def _j(value):
    return json.loads(value) if isinstance(value, str) else value


def _intent(result) -> str:
    return result.outputs["classify"]["intent"]


def test_the_cache_probe_ends_right(triage_wf, tiers, store):
    """The cheap tier answers a valid wrong label on 3 of 5 inputs; sample 1.0, `cache: true`,
    40 runs over the 5 inputs, checks off the request path: the last 10 answers are all right
    (before entries carried trust, the first wrong answers were served from the cache forever)."""
    path = triage_wf("      cache: true\n      quality: {sample: 1.0}")
    results = []
    for i in range(40):
        results.append(run_workflow(path, {"text": INPUTS[i % 5]}))
        assert monitor.drain(10) == 0  # each run's check lands before the next run
    last = results[-10:]
    assert [_intent(r) for r in last] == [TRUTH[INPUTS[i % 5]] for i in range(30, 40)]
    assert {r.step("classify").served_by for r in last} == {"cache"}
    assert {r.step("classify").trust for r in last} <= {"reference", "verified"}
    rows = store.query("SELECT answer_key, trust, settled_by FROM cache_entries")
    assert len(rows) == 5 and all(r["trust"] in ("reference", "verified") for r in rows)
    assert all(r["settled_by"].startswith("check:") for r in rows if r["trust"] == "verified")


def test_unverified_hits_are_sampled_and_count_toward_agreement(triage_wf, tiers, store):
    path = triage_wf("      cache: true\n      quality: {sample: 0.0}")
    run_workflow(path, {"text": "hello"})  # cheap 'card', cached unverified, not sampled
    (entry,) = store.query("SELECT trust, tier FROM cache_entries")
    assert entry == {"trust": "unverified", "tier": "local"}
    path.write_text(path.read_text().replace("sample: 0.0", "sample: 1.0"))
    hit = run_workflow(path, {"text": "hello"}, inline_checks=True)
    step = hit.step("classify")
    # the hit was checked inline: the reference disagreed and its answer was served
    assert _intent(hit) == "other" and step.trust == "reference"
    (check,) = store.query("SELECT tier, status, served FROM quality_checks")
    assert check == {"tier": "local", "status": "disagree", "served": 1}
    (entry,) = store.query("SELECT output, trust, settled_by, tier FROM cache_entries")
    assert _j(entry["output"]) == {"intent": "other"} and entry["trust"] == "reference"
    assert entry["settled_by"] == "check:1" and entry["tier"] == "premium"
    again = run_workflow(path, {"text": "hello"})
    assert again.step("classify").served_by == "cache" and _intent(again) == "other"
    assert again.step("classify").cache["trust"] == "reference"
    assert len(store.query("SELECT * FROM quality_checks")) == 1  # trusted hits are not re-checked


def test_an_agreeing_check_verifies_the_entry(triage_wf, tiers, store):
    tiers.cheap = lambda text: {"intent": TRUTH[text]}
    path = triage_wf("      cache: true\n      quality: {sample: 1.0}")
    first = run_workflow(path, {"text": "refund please"})
    assert first.step("classify").trust == "unverified"
    assert monitor.drain(10) == 0
    (entry,) = store.query("SELECT trust, settled_by FROM cache_entries")
    assert entry["trust"] == "verified" and entry["settled_by"].startswith("check:")
    hit = run_workflow(path, {"text": "refund please"})
    assert hit.step("classify").served_by == "cache" and hit.step("classify").trust == "verified"


def test_an_escalated_tiers_entries_are_never_served_again(triage_wf, tiers, store):
    """Entries the cheap tier wrote before it was escalated past are bypassed (and evicted) while it
    is escalated, and do not come back when it returns on probation."""
    path = triage_wf("      cache: true\n      quality: {sample: 0.0}")
    for text in INPUTS[:3]:
        run_workflow(path, {"text": text})
    assert {r["trust"] for r in store.query("SELECT trust FROM cache_entries")} == {"unverified"}
    path.write_text(path.read_text().replace("sample: 0.0", "sample: 1.0"))
    for text in ["card never came", "i want my money back", "hello", "what is the weather", "hello", "refund please"]:
        run_workflow(path, {"text": text}, inline_checks=True)
    assert quality_store.get_state(store, "triage", "classify", "local")["state"] == "escalated"
    # escalated: the old unverified entry for 'my card has not arrived' is bypassed and evicted
    result = run_workflow(path, {"text": "my card has not arrived"})
    assert result.step("classify").served_by == "llm" and result.step("classify").tier == "premium"
    events = store.query("SELECT outcome FROM cache_events WHERE outcome = 'untrusted'")
    assert len(events) == 1


def test_escalated_entries_stay_out_on_probation(triage_wf, tiers, store):
    path = triage_wf("      cache: true\n      quality: {sample: 0.0}")
    run_workflow(path, {"text": "hello"}, store=store)  # a wrong, unverified entry
    quality_store.set_state(store, "triage", "classify", "local", quality_store.ESCALATED, "disagreed")
    assert monitor.monitor_for(store).reset() == 1  # on probation now (`engine quality reset`)
    result = run_workflow(path, {"text": "hello"}, store=store)
    assert result.step("classify").served_by == "llm"  # on probation, answered live, not from the old entry
    assert store.query("SELECT outcome FROM cache_events ORDER BY id DESC LIMIT 1")[0]["outcome"] == "untrusted"


def test_trust_verified_serves_only_trusted_entries(triage_wf, tiers, store):
    path = triage_wf("      cache: {trust: verified}\n      quality: {sample: 0.0}")
    run_workflow(path, {"text": "hello"})
    second = run_workflow(path, {"text": "hello"})
    assert second.step("classify").served_by == "llm"  # the unverified entry is bypassed, kept
    assert store.query("SELECT COUNT(*) AS n FROM cache_entries")[0]["n"] == 1
    give_feedback(store, second.run_id, "classify", output={"intent": "other"})
    third = run_workflow(path, {"text": "hello"})
    assert third.step("classify").served_by == "cache" and third.step("classify").trust == "labelled"
    assert _intent(third) == "other"


def test_a_label_wins_over_two_tiers_that_disagree(triage_wf, tiers, store):
    """The cheap tier says card, the reference says other, a person says refund: the cache serves
    refund, and promotion proposes refund."""
    tiers.reference = lambda text: {"intent": "other"}
    path = triage_wf("      cache: true\n      quality: {sample: 1.0}\n      promote: {min_calls: 1}")
    first = run_workflow(path, {"text": "refund please"})
    assert monitor.drain(10) == 0
    (check,) = store.query("SELECT status FROM quality_checks")
    assert check["status"] == "disagree"
    (entry,) = store.query("SELECT output, trust FROM cache_entries")
    assert _j(entry["output"]) == {"intent": "other"} and entry["trust"] == "reference"
    give_feedback(store, first.run_id, "classify", output={"intent": "refund"})
    (entry,) = store.query("SELECT output, trust, settled_by FROM cache_entries")
    assert _j(entry["output"]) == {"intent": "refund"} and entry["trust"] == "labelled"
    assert entry["settled_by"].startswith("label:")
    served = run_workflow(path, {"text": "refund please"})
    assert served.step("classify").served_by == "cache" and _intent(served) == "refund"
    from engine import load_workflow
    from engine.promotion.proposals import propose_promotions

    report = propose_promotions(load_workflow(path), store, scripts=False)
    rows = {r["input"]["text"]: r["output"]["intent"] for p in report.proposed for r in p.payload["rows"]}
    assert rows == {"refund please": "refund"}
    # a later check never overwrites the label
    (again,) = store.query("SELECT trust FROM cache_entries")
    assert again["trust"] == "labelled"


def test_cache_hits_are_copies(triage_wf, tiers, store):
    tiers.cheap = lambda text: {"intent": TRUTH[text]}
    path = triage_wf("      cache: true\n      quality: {sample: 0.0}")
    run_workflow(path, {"text": "hello"})
    hit = run_workflow(path, {"text": "hello"})
    hit.outputs["classify"]["intent"] = "mutated"
    hit.step("classify").output["intent"] = "mutated"
    assert _intent(run_workflow(path, {"text": "hello"})) == "other"


def test_the_check_queue_is_bounded_and_counts_drops(triage_wf, tiers, store):
    """A reference slower than the traffic: with max_pending 2, a third check waiting to be
    queued is dropped at once (the run does not wait), counted, and shown by `engine quality`."""
    release = threading.Event()
    truth = tiers.reference

    def slow_reference(text):
        assert release.wait(10)
        return truth(text)

    tiers.reference = slow_reference
    path = triage_wf("      quality: {sample: 1.0, max_pending: 2, check_concurrency: 1}")
    for text in INPUTS[:4]:  # four runs return while the first check waits on the reference
        assert run_workflow(path, {"text": text}).step("classify").tier == "local"
    from engine.quality import checkqueue

    queue = checkqueue.queue_for(1, 2)
    assert queue.pending == 2 and queue.dropped >= 2 and queue.peak == 2
    release.set()
    assert monitor.drain(10) == 0
    assert len(store.query("SELECT * FROM quality_checks")) == 2
    data = json.loads(CliRunner().invoke(cli, ["quality", "--json"]).output)
    (row,) = [r for r in data if r["tier"] == "local"]
    assert row["checks_dropped"] == 2 and row["checks_pending"] == 0 and row["checks_submitted"] == 4
    assert row["verdict_p50_ms"] is not None and row["verdict_p95_ms"] >= row["verdict_p50_ms"]
    assert "dropped" in CliRunner().invoke(cli, ["quality"]).output


def test_checks_run_concurrently(triage_wf, tiers, store):
    """Three checks that each wait until all three have reached the reference: they finish only
    because the queue runs them at once (one serial worker would wait forever)."""
    barrier = threading.Barrier(3, timeout=10)
    truth = tiers.reference

    def meeting_reference(text):
        barrier.wait()
        return truth(text)

    tiers.reference = meeting_reference
    path = triage_wf("      quality: {sample: 1.0, check_concurrency: 3}")
    for text in INPUTS[:3]:
        run_workflow(path, {"text": text})
    assert monitor.drain(20) == 0
    statuses = [r["status"] for r in store.query("SELECT status FROM quality_checks")]
    assert len(statuses) == 3 and "skipped" not in statuses


class _Vectors:
    name = "trustvectors"

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def test_a_disagreeing_semantic_hit_evicts_its_source(triage_wf, tiers, store):
    """'card never came' is near 'my card has not arrived' (0.95): its semantic hit serves the
    cheap tier's unverified answer; when the check of another near-duplicate disagrees, the source
    entry and its copies go, and the reference's answer joins the index."""
    register_embedder("trustvectors", _Vectors({
        "my card has not arrived": [1.0, 0.0, 0.0], "card never came": [0.95, 0.312, 0.0],
        "hello": [0.96, 0.0, 0.28]}))
    try:
        tiers.cheap = lambda text: {"intent": "card"}  # right on the two card texts, wrong on hello
        path = triage_wf("      cache: {semantic: {threshold: 0.9, margin: 0.0, embedder: trustvectors}}\n"
                         "      quality: {sample: 0.0}")
        run_workflow(path, {"text": "my card has not arrived"})
        near = run_workflow(path, {"text": "card never came"})
        assert near.step("classify").cache["kind"] == "semantic" and near.step("classify").trust == "unverified"
        path.write_text(path.read_text().replace("sample: 0.0", "sample: 1.0"))
        wrong = run_workflow(path, {"text": "hello"}, inline_checks=True)  # a semantic hit, checked inline
        assert _intent(wrong) == "other" and wrong.step("classify").trust == "reference"
        texts = {r["text"] or _j(r["input"])["text"]: (_j(r["output"])["intent"], r["trust"])
                 for r in store.query("SELECT text, input, output, trust FROM cache_entries")}
        # the source and the copy it left for 'card never came' are gone; hello holds the reference's answer
        assert texts == {"hello": ("other", "reference")}
        assert _intent(run_workflow(path, {"text": "hello"})) == "other"
    finally:
        unregister_embedder("trustvectors")
