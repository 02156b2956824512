"""Run time: shadow agreement, spot-check demotion, staleness on a prompt change."""

from __future__ import annotations

from click.testing import CliRunner

from engine import load_workflow, run_workflow
from engine.cli import cli
from engine.promotion import records, review
from engine.promotion.proposals import propose_promotions
from engine.steps import llm as llm_module
from engine.store import promotions as promotion_store


def _accepted_lookup(path, store, texts=("hi", "hello there")):
    for _ in range(3):
        for text in texts:
            run_workflow(path, {"text": text})
    report = propose_promotions(load_workflow(path), store, scripts=False)
    (promotion,) = report.proposed
    return promotion


def test_shadow_records_agreement_without_changing_outputs(label_wf, labeller, store):
    path = label_wf()
    promotion = _accepted_lookup(path, store)
    review.set_shadow(store, promotion.id)
    before = len(labeller.requests)
    labeller.responder = lambda r: {"label": "long"}  # the llm now disagrees on "hi"
    outs = [run_workflow(path, {"text": t}) for t in ("hi", "hello there", "unseen")]
    assert [o.step("classify").served_by for o in outs] == ["llm", "llm", "llm"]
    assert [o.outputs["classify"]["label"] for o in outs] == ["long", "long", "long"]
    assert len(labeller.requests) == before + 3
    assert promotion_store.check_stats(store, promotion.id) == {"shadow": {"checks": 2, "agree": 1}}
    status = CliRunner().invoke(cli, ["promotions", "status"]).output
    assert promotion.id in status and "1/2" in status


def test_spot_checks_demote_on_disagreement(label_wf, labeller, store):
    path = label_wf(", spot_check: 1.0, demote_min_checks: 4, demote_threshold: 0.3, demote_confidence: 0")
    promotion = _accepted_lookup(path, store)
    review.accept(store, promotion.id)
    for _ in range(3):  # spot checks that agree: the llm answers, nothing changes
        assert run_workflow(path, {"text": "hi"}).step("classify").served_by == "llm"
    assert records.get(store, promotion.id).status == "accepted"
    labeller.responder = lambda r: {"label": "long"}  # drift
    run_workflow(path, {"text": "hi"})
    assert records.get(store, promotion.id).status == "accepted"  # 1/4 = 25% <= 30%
    run_workflow(path, {"text": "hi"})  # 2/5 = 40% > 30%: demoted
    demoted = records.get(store, promotion.id)
    assert demoted.status == "demoted" and "2/5" in demoted.reason
    status = CliRunner().invoke(cli, ["promotions", "status"]).output
    assert "demoted" in status and "3/5" in status
    path.write_text(path.read_text().replace("spot_check: 1.0", "spot_check: 0"))
    before = len(labeller.requests)
    assert run_workflow(path, {"text": "hi"}).step("classify").served_by == "llm"  # back to the llm
    assert len(labeller.requests) == before + 1


def test_demotion_needs_confident_disagreement(label_wf, labeller, store):
    """Default: disagreement must exceed 3% at 95% confidence; one disagreement in 10 is noise."""
    path = label_wf(", spot_check: 1.0")
    promotion = _accepted_lookup(path, store)
    review.accept(store, promotion.id)
    for _ in range(9):
        run_workflow(path, {"text": "hi"})
    labeller.responder = lambda r: {"label": "long"}
    run_workflow(path, {"text": "hi"})  # 1/10: raw 10% > 3%, but not confidently
    assert records.get(store, promotion.id).status == "accepted"
    run_workflow(path, {"text": "hi"})  # 2/11: lower bound ~6% > 3%
    demoted = records.get(store, promotion.id)
    assert demoted.status == "demoted" and "2/11" in demoted.reason and "95% confidence" in demoted.reason


def test_disagreement_bound():
    from engine.promotion.server import disagreement_bound

    assert disagreement_bound(1, 10, 0) == 0.1
    assert disagreement_bound(1, 10, 0.95) < 0.03 < disagreement_bound(2, 10, 0.95)
    assert disagreement_bound(3, 100, 0.95) < 0.03 < disagreement_bound(10, 100, 0.95)


def test_spot_check_sample_rate(label_wf, labeller, store):
    from engine.promotion.server import seed

    path = label_wf(", spot_check: 0.25")
    promotion = _accepted_lookup(path, store)
    review.accept(store, promotion.id)
    seed(7)
    served = [run_workflow(path, {"text": "hi"}).step("classify").served_by for _ in range(200)]
    checks = promotion_store.check_stats(store, promotion.id)["spot"]["checks"]
    assert served.count("llm") == checks and 30 <= checks <= 70


def test_prompt_change_marks_artifact_stale_until_reverified(label_wf, labeller, store):
    path = label_wf()
    promotion = _accepted_lookup(path, store)
    review.accept(store, promotion.id)
    assert run_workflow(path, {"text": "hi"}).step("classify").served_by == "lookup"
    path.write_text(path.read_text().replace("Label this:", "Label this text:"))
    labeller.responder = lambda r: {"label": "long" if len(r.messages[1]["content"]) > 22 else "short"}
    result = run_workflow(path, {"text": "hi"})
    assert result.step("classify").served_by == "llm"
    stale = records.get(store, promotion.id)
    assert stale.status == "stale" and "prompt or schema changed" in stale.reason
    for _ in range(2):
        run_workflow(path, {"text": "hello there"})
    report = review.reverify(store, promotion.id)
    assert report["passed"] and report["pairs"] == 2
    assert records.get(store, promotion.id).status == "accepted"
    assert run_workflow(path, {"text": "hi"}).step("classify").served_by == "lookup"


def test_artifact_from_git_serves_and_is_adopted_without_its_proposal(label_wf, labeller, store, tmp_path):
    path = label_wf(", spot_check: 1.0, demote_min_checks: 1, demote_confidence: 0")
    promotion = _accepted_lookup(path, store)
    review.accept(store, promotion.id)
    store.db.execute("DELETE FROM promotions")  # a fresh store: only the files from git remain
    labeller.responder = lambda r: {"label": "long"}
    run_workflow(path, {"text": "hi"})
    adopted = records.get(store, promotion.id)
    assert adopted.status == "demoted" and adopted.workflow == "label"
    assert run_workflow(path, {"text": "hi"}).step("classify").served_by == "llm"


def test_spot_check_llm_failure_serves_the_artifact(label_wf, labeller, store):
    from engine.errors import ProviderUnavailableError

    path = label_wf(", spot_check: 1.0")
    promotion = _accepted_lookup(path, store)
    review.accept(store, promotion.id)
    labeller.responder = lambda r: ProviderUnavailableError("down")
    result = run_workflow(path, {"text": "hi"})
    assert result.ok and result.step("classify").served_by == "lookup"
    assert promotion_store.check_stats(store, promotion.id) == {}


def test_new_table_after_demotion_does_not_carry_the_demoted_rows(label_wf, labeller, store):
    import json

    path = label_wf(", spot_check: 1.0, demote_min_checks: 1, demote_confidence: 0")
    promotion = _accepted_lookup(path, store)
    review.accept(store, promotion.id)
    labeller.responder = lambda r: {"label": "long"}
    run_workflow(path, {"text": "hi"})  # disagrees: demoted
    assert records.get(store, promotion.id).status == "demoted"
    for _ in range(3):
        run_workflow(path, {"text": "fresh input"})
    (fresh,) = propose_promotions(load_workflow(path), store, scripts=False).proposed
    review.accept(store, fresh.id)
    rows = json.loads((path.parent / "promotions/label/classify.lookup.v2.json").read_text())["rows"]
    assert "hi" not in {r["input"]["text"] for r in rows}


def test_spot_check_under_arun_awaits_the_reference_on_the_loop(label_wf, labeller, store):
    """A spot check asks the reference tier through the step's provider-call generator: under
    `arun_workflow` a sync-only provider runs on a worker thread, never on the event loop's own."""
    import asyncio
    import threading

    from engine import arun_workflow

    path = label_wf(", spot_check: 1.0")
    promotion = _accepted_lookup(path, store)
    review.accept(store, promotion.id)
    threads: list[str] = []
    respond = labeller.responder
    labeller.responder = lambda r: (threads.append(threading.current_thread().name), respond(r))[1]

    async def main() -> tuple[object, str]:
        result = await arun_workflow(path, {"text": "hi"})
        return result, threading.current_thread().name

    result, loop_thread = asyncio.run(main())
    assert result.step("classify").served_by == "llm" and threads  # the spot check asked the llm
    assert loop_thread not in threads
    assert promotion_store.check_stats(store, promotion.id)["spot"]["checks"] == 1


def test_served_lookup_repeats_give_the_same_answer_and_baseline(label_wf, labeller, store):
    """The in-process fast path remembers keys and prompt lengths per raw input: a repeat, a
    normalised variant and the llm's own run must agree on the answer and on the baseline."""
    path = label_wf()
    promotion = _accepted_lookup(path, store)
    llm_run = run_workflow(path, {"text": "hello there"})  # not accepted yet: the llm answers
    review.accept(store, promotion.id)
    before = len(labeller.requests)
    served = [run_workflow(path, {"text": t}) for t in ("hello there", "hello there", "  HELLO   there ", "hi")]
    assert [r.step("classify").served_by for r in served] == ["lookup"] * 4
    assert [r.outputs["classify"]["label"] for r in served] == ["long", "long", "long", "short"]
    assert len(labeller.requests) == before
    baseline = served[0].step("classify").baseline_cost
    assert baseline > 0 and llm_run.step("classify").baseline_cost > 0
    assert served[1].step("classify").baseline_cost == baseline  # remembered
    llm_module._prompt_lengths.clear()
    recomputed = run_workflow(path, {"text": "hello there"}).step("classify")
    assert recomputed.served_by == "lookup" and recomputed.baseline_cost == baseline
    # a longer prompt is a larger baseline, even for the same row
    assert served[2].step("classify").baseline_cost > baseline
    miss = run_workflow(path, {"text": "unseen text"})
    assert miss.step("classify").served_by == "llm" and len(labeller.requests) == before + 1


def test_lookup_answers_are_copies(label_wf, labeller, store):
    """A caller that changes the answer a lookup served changes nothing in the table."""
    path = label_wf()
    promotion = _accepted_lookup(path, store)
    review.accept(store, promotion.id)
    first = run_workflow(path, {"text": "hi"})
    assert first.step("classify").served_by == "lookup" and first.step("classify").trust == "verified"
    first.outputs["classify"]["label"] = "mutated"
    first.step("classify").output["label"] = "mutated"
    again = run_workflow(path, {"text": "hi"})
    assert again.step("classify").served_by == "lookup" and again.outputs == {"classify": {"label": "short"}}


def test_a_label_corrects_a_lookup_row(label_wf, labeller, store):
    """A person's label that contradicts an accepted lookup row is served instead of the row, and
    counted once as a disagreeing `label` check of the artifact."""
    from engine.quality.feedback import give_feedback

    path = label_wf()
    promotion = _accepted_lookup(path, store)
    review.accept(store, promotion.id)
    served = run_workflow(path, {"text": "hi"})
    assert served.outputs == {"classify": {"label": "short"}}
    give_feedback(store, served.run_id, "classify", output={"label": "long"})
    for _ in range(2):
        corrected = run_workflow(path, {"text": "hi"})
        assert corrected.outputs == {"classify": {"label": "long"}}
        assert corrected.step("classify").served_by == "label" and corrected.step("classify").trust == "labelled"
    assert promotion_store.check_stats(store, promotion.id)["label"] == {"checks": 1, "agree": 0}
    assert run_workflow(path, {"text": "hello there"}).step("classify").served_by == "lookup"  # other rows serve
