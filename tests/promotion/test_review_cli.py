"""Lookup proposal, review and acceptance end to end through the CLI; serving order; rejection memory."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from engine import run_workflow
from engine.cli import cli
from engine.promotion import records


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _seed(path: Path, texts: list[str], times: int = 3) -> None:
    for _ in range(times):
        for text in texts:
            run_workflow(path, {"text": text})


def test_lookup_propose_show_accept_serve(label_wf, labeller, store):
    path = label_wf()
    _seed(path, ["hi", "hello there"])
    run_workflow(path, {"text": "once only"})  # one call: not a candidate

    out = _invoke("promotions", "propose", str(path), "--no-scripts")
    assert "proposed" in out and "2 rows" in out
    (promotion,) = records.find(store, status="proposed")
    assert promotion.kind == "lookup"
    assert {r["input"]["text"] for r in promotion.payload["rows"]} == {"hi", "hello there"}
    assert promotion.savings["tokens_per_month"] > 0 and promotion.savings["covered_share"] == round(6 / 7, 4)

    assert promotion.id in _invoke("promotions", "list")
    shown = _invoke("promotions", "show", promotion.id)
    assert "hello there" in shown and "+++ b/promotions/label/manifest.yaml" in shown
    assert "classify.lookup.v1.json" in shown

    accepted = _invoke("promotions", "accept", promotion.id)
    assert "accepted" in accepted and '+  {"input": {"text": "hi"}, "output": {"label": "short"}}' in accepted
    folder = path.parent / "promotions" / "label"
    table = json.loads((folder / "classify.lookup.v1.json").read_text())
    assert {r["input"]["text"]: r["output"]["label"] for r in table["rows"]} == {"hi": "short", "hello there": "long"}
    assert "classify.lookup.v1.json" in (folder / "manifest.yaml").read_text()

    calls_before = len(labeller.requests)
    hit = run_workflow(path, {"text": "  HI "})  # normalised: same key
    step = hit.step("classify")
    assert (step.served_by, step.tokens_in, step.tokens_out, step.cost) == ("lookup", 0, 0, 0.0)
    assert hit.outputs == {"classify": {"label": "short"}}
    assert len(labeller.requests) == calls_before  # the llm was not asked

    miss = run_workflow(path, {"text": "something new"})  # falls through and is logged
    assert miss.step("classify").served_by == "llm" and len(labeller.requests) == calls_before + 1
    logged = store.query("SELECT COUNT(*) AS n FROM llm_calls WHERE input LIKE '%something new%'")[0]["n"]
    assert logged == 1
    assert "accepted" in _invoke("promotions", "status") and "1" in _invoke("promotions", "status")

    _seed(path, ["something new"], times=2)  # the next round extends the table: v2 holds all three
    _invoke("promotions", "propose", str(path), "--no-scripts")
    (extension,) = records.find(store, status="proposed")
    assert [r["input"]["text"] for r in extension.payload["rows"]] == ["something new"]
    _invoke("promotions", "accept", extension.id)
    v2 = json.loads((folder / "classify.lookup.v2.json").read_text())
    assert len(v2["rows"]) == 3 and records.get(store, promotion.id).status == "superseded"
    assert run_workflow(path, {"text": "something new"}).step("classify").served_by == "lookup"


def test_rejected_proposal_is_remembered(label_wf, labeller, store):
    path = label_wf()
    _seed(path, ["hi"])
    _invoke("promotions", "propose", "--no-scripts")  # no workflow: every workflow the log has runs of
    (promotion,) = records.find(store, status="proposed")
    assert "rejected" in _invoke("promotions", "reject", promotion.id, "--reason", "greetings vary")
    again = _invoke("promotions", "propose", str(path), "--no-scripts")
    assert "rejected before" in again
    assert records.find(store, status="proposed") == []
    assert records.get(store, promotion.id).reason == "greetings vary"
    assert run_workflow(path, {"text": "hi"}).step("classify").served_by == "llm"


def test_bad_id_is_a_user_error(label_wf, labeller):
    label_wf()
    result = CliRunner().invoke(cli, ["promotions", "show", "nope"])
    assert result.exit_code == 2 and "no promotion 'nope'" in result.output
