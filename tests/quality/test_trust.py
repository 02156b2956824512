"""Trusted evidence: a cheap tier agreeing with itself never builds a lookup; the reference,
verification and people's labels do."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from click.testing import CliRunner

from engine import load_workflow, run_workflow
from engine.cli import cli
from engine.promotion import records, review
from engine.promotion.proposals import propose_promotions
from engine.quality import monitor
from engine.store import promotions as promotion_store
from engine.store import quality as quality_store

from quality_helpers import TRUTH, WORKFLOW


def _run_all(path: Path, times: int = 3, **kwargs) -> list:
    out = []
    for _ in range(times):
        for text in TRUTH:
            out.append(run_workflow(path, {"text": text}, **kwargs))
    monitor.drain()
    return out


def _proposed_rows(path: Path, store) -> dict[str, str]:
    report = propose_promotions(load_workflow(path), store, scripts=False)
    rows = {}
    for p in report.proposed:
        for r in p.payload["rows"]:
            rows[r["input"]["text"]] = r["output"]["intent"]
    return rows


def test_wrong_cheap_answers_never_become_lookup_rows(triage_wf, tiers, store):
    """A cheap tier that answers a valid wrong label, a reference that answers right: after many
    runs no proposed row carries a wrong label."""
    path = triage_wf("      quality: {sample: 0.3, max_disagreement: 1.0}\n      promote: {min_calls: 2}")
    _run_all(path, times=6)
    rows = _proposed_rows(path, store)
    assert rows, "the verified and reference evidence should propose some rows"
    assert all(TRUTH[text] == intent for text, intent in rows.items()), rows
    # the wrong answers were logged (unverified) and never used
    wrong = store.query("SELECT COUNT(*) AS n FROM llm_calls WHERE model = 'small' AND outcome = 'valid' "
                        "AND json_extract(output, '$.intent') = 'card' AND json_extract(input, '$.text') = 'hello'")
    assert wrong[0]["n"] > 0


def test_any_evidence_reproduces_the_old_bug_and_warns(triage_wf, tiers, store):
    path = triage_wf("      quality: {sample: 0}\n      promote: {evidence: any, min_calls: 2}")
    _run_all(path, times=2)
    report = propose_promotions(load_workflow(path), store, scripts=False)
    (p,) = report.proposed
    assert any(r["output"]["intent"] != TRUTH[r["input"]["text"]] for r in p.payload["rows"])
    assert "consistency, not correctness" in p.verification["warning"]
    out = CliRunner().invoke(cli, ["promotions", "show", p.id]).output
    assert "warning" in out


def test_sample_one_escalates_past_the_cheap_tier_and_returns_the_reference(triage_wf, tiers, store):
    path = triage_wf("      quality: {sample: 1.0}")
    seen = []
    for text in ["hello", "i want my money back", "what is the weather", "refund please", "hello",
                 "i want my money back", "hello", "refund please"]:
        result = run_workflow(path, {"text": text}, inline_checks=True)
        seen.append(result)
        assert result.outputs["classify"]["intent"] == TRUTH[text]  # inline: the reference's answer wins
    state = quality_store.get_state(store, "triage", "classify", "local")
    assert state["state"] == "escalated", state
    assert "Wilson lower bound" in state["reason"]
    cheap_before = tiers.calls["small"]
    result = run_workflow(path, {"text": "hello"})
    assert tiers.calls["small"] == cheap_before  # straight past the cheap tier
    assert result.step("classify").tier == "premium" and result.step("classify").trust == "reference"
    assert any(c["reason"] == "quality" and c["outcome"] == "skipped" for c in result.step("classify").calls)
    events = quality_store.events(store, "triage")
    assert [e["event"] for e in events] == ["escalated"]
    # engine quality shows it
    out = CliRunner().invoke(cli, ["quality"]).output
    assert "escalated" in out and "local" in out
    data = json.loads(CliRunner().invoke(cli, ["quality", "--json"]).output)
    (row,) = [r for r in data if r["tier"] == "local"]
    assert row["sampled"] >= 5 and row["agreed"] < row["sampled"] and row["disagreement_low"] > 0.03


def test_a_good_cheap_tier_stays_active_and_its_answers_become_verified(triage_wf, tiers, store):
    tiers.cheap = lambda text: {"intent": TRUTH.get(text, "other")}
    path = triage_wf("      quality: {sample: 1.0}")
    _run_all(path, times=2, inline_checks=True)
    assert quality_store.get_state(store, "triage", "classify", "local")["state"] == "active"
    trust = {r["trust"] for r in store.query("SELECT trust FROM llm_calls WHERE model = 'small'")}
    assert trust == {"verified"}
    steps = {r["trust"] for r in store.query("SELECT trust FROM steps WHERE step_id = 'classify'")}
    assert steps == {"verified"}


def test_background_checks_stay_off_the_request_path(triage_wf, tiers, store):
    tiers.cheap = lambda text: {"intent": TRUTH.get(text, "other")}
    release = threading.Event()
    truth = tiers.reference

    def slow_reference(text):
        assert release.wait(10)
        return truth(text)

    tiers.reference = slow_reference
    path = triage_wf("      quality: {sample: 1.0}")
    result = run_workflow(path, {"text": "hello"})  # returns while the check waits on the reference
    assert result.step("classify").tier == "local" and result.step("classify").trust == "unverified"
    assert not store.query("SELECT * FROM quality_checks")
    release.set()
    assert monitor.drain(10) == 0
    (check,) = store.query("SELECT * FROM quality_checks")
    assert check["status"] == "agree" and check["mode"] == "background"
    assert store.query("SELECT trust, verified_by FROM llm_calls WHERE model = 'small'") == [
        {"trust": "verified", "verified_by": "reference:premium"}]
    assert store.query("SELECT trust FROM steps WHERE step_id = 'classify'") == [{"trust": "verified"}]


def test_reference_that_cannot_answer_returns_the_cheap_answer_and_explains(triage_wf, tiers, store):
    from engine.errors import ProviderUnavailableError

    def down(text):
        raise ProviderUnavailableError("premium is down", provider="fake", model="large")

    tiers.reference = down
    path = triage_wf("      quality: {sample: 1.0}\n      promote: {min_calls: 1}")
    results = _run_all(path, times=1, inline_checks=True)
    assert all(r.ok and r.outputs["classify"]["intent"] == "card" for r in results)
    assert all(r.step("classify").trust == "unverified" for r in results)
    checks = store.query("SELECT status, reason FROM quality_checks")
    assert checks and {c["status"] for c in checks} == {"skipped"}
    assert "premium is down" in checks[0]["reason"]
    assert quality_store.get_state(store, "triage", "classify", "local")["state"] == "active"
    out = CliRunner().invoke(cli, ["promotions", "propose", str(path), "--no-scripts"]).output
    assert "no trusted evidence" in out and "configure a reference tier" in out.replace("\n", " ")
    assert "reference checks were skipped: the reference could not answer" in " ".join(out.split())
    assert not records.find(store, status="proposed")


def test_single_tier_step_has_no_reference_and_proposes_nothing(project, fake, store):
    fake.responder = lambda r: {"intent": "card"}
    path = project(WORKFLOW.replace("      escalate: [premium]\n", "") % "")
    for _ in range(3):
        run_workflow(path, {"text": "hello"})
    report = propose_promotions(load_workflow(path), store, scripts=False)
    assert not report.proposed
    assert any("no trusted evidence" in n for n in report.notes)
    assert {r["trust"] for r in store.query("SELECT trust FROM llm_calls")} == {"unverified"}


def test_a_label_overrides_both_tiers(triage_wf, tiers, store, tmp_path):
    tiers.cheap = lambda text: {"intent": "other"}
    tiers.reference = lambda text: {"intent": "other"}  # both tiers agree: 'other'
    path = triage_wf("      quality: {sample: 1.0}\n      promote: {min_calls: 1}")
    result = run_workflow(path, {"text": "card never came"}, inline_checks=True)
    assert result.outputs["classify"]["intent"] == "other"
    out = CliRunner().invoke(cli, ["feedback", result.run_id, "classify", "--output", '{"intent": "card"}'])
    assert out.exit_code == 0, out.output
    rows = _proposed_rows(path, store)
    assert rows == {"card never came": "card"}
    (p,) = records.find(store, status="proposed")
    (row,) = p.payload["rows"]
    assert row["evidence"]["trust"]["labelled"] == 1 and row["evidence"]["label_overrides"] >= 1


def test_trusted_evidence_that_disagrees_is_never_proposed(triage_wf, tiers, store):
    answers = iter([{"intent": "card"}, {"intent": "refund"}] * 10)
    tiers.reference = lambda text: next(answers)
    path = triage_wf("      quality: {reference: premium}\n      promote: {min_calls: 1}")
    path.write_text(path.read_text().replace("tier: local\n      escalate: [premium]", "tier: premium"))
    for _ in range(2):
        run_workflow(path, {"text": "hello"})
    run_workflow(path, {"text": "refund please"})
    rows = _proposed_rows(path, store)
    assert "hello" not in rows and rows == {"refund please": "card"}
    (p,) = records.find(store, status="proposed")
    assert p.verification["conflicts_not_proposed"] == 1


def test_spot_check_demotes_a_wrong_artifact_even_though_the_cheap_tier_agrees(triage_wf, tiers, store):
    """The artifact was built from the cheap tier (evidence: any); the cheap tier agrees with it,
    the reference does not: spot checks go to the reference and demote it."""
    path = triage_wf("      quality: {sample: 0}\n      promote: {evidence: any, min_calls: 1, spot_check: 1.0, "
                     "demote_min_checks: 3, demote_confidence: 0}")
    run_workflow(path, {"text": "hello"})
    (p,) = propose_promotions(load_workflow(path), store, scripts=False).proposed
    review.accept(store, p.id)
    cheap_before = tiers.calls["small"]
    for _ in range(3):
        result = run_workflow(path, {"text": "hello"})
        assert result.outputs["classify"]["intent"] == "other"  # the reference's answer is served
    assert tiers.calls["small"] == cheap_before  # never asked the cheap tier
    assert records.get(store, p.id).status == "demoted"
    assert promotion_store.check_stats(store, p.id) == {"spot": {"checks": 3, "agree": 0}}
