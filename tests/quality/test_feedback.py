"""People's feedback: confirm, correct, import; bad input rejected with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import Engine, run_workflow
from engine.cli import cli
from engine.quality.feedback import FeedbackError, give_feedback

from quality_helpers import TRUTH


def _count(store) -> int:
    return store.query("SELECT COUNT(*) AS n FROM feedback")[0]["n"]


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_ok_confirms_the_answer_and_verifies_the_call(triage_wf, tiers, store):
    path = triage_wf("      quality: {sample: 0}")
    result = run_workflow(path, {"text": "my card has not arrived"})
    out = _invoke("feedback", result.run_id[:10], "classify", "--ok")
    assert out.exit_code == 0, out.output
    assert "confirmed" in out.output
    (row,) = store.query("SELECT kind, output, input FROM feedback")
    assert row == {"kind": "confirm", "output": {"intent": "card"}, "input": {"text": "my card has not arrived"}}
    assert store.query("SELECT trust, verified_by FROM llm_calls") == [{"trust": "verified", "verified_by": "person"}]
    shown = _invoke("runs", "show", result.run_id).output
    assert "verified by person" in shown


@pytest.mark.parametrize("args, message", [
    (["nope", "classify", "--ok"], "no run 'nope'"),
    (["RUN", "missing", "--ok"], "has no step 'missing'"),
    (["RUN", "classify", "--output", '{"intent": "bogus"}'], "the output is rejected"),
    (["RUN", "classify", "--output", "{not json"], "--output is not JSON"),
    (["RUN", "classify"], "exactly one of --ok or --output"),
    (["RUN", "classify", "--ok", "--output", '{"intent": "card"}'], "exactly one of --ok or --output"),
])
def test_bad_feedback_is_rejected_with_nothing_written(triage_wf, tiers, store, args, message):
    path = triage_wf("      quality: {sample: 0}")
    result = run_workflow(path, {"text": "hello"})
    before = store.query("SELECT trust FROM llm_calls")
    out = _invoke("feedback", *[result.run_id if a == "RUN" else a for a in args])
    assert out.exit_code == 2, out.output
    assert message in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1
    assert _count(store) == 0
    assert store.query("SELECT trust FROM llm_calls") == before


def test_import_labels_all_or_nothing(triage_wf, tiers, store, tmp_path):
    path = triage_wf("      quality: {sample: 0}\n      promote: {min_calls: 1}")
    good = tmp_path / "labels.jsonl"
    good.write_text("\n".join(json.dumps({"id": i, "text": t, "expected": v})
                              for i, (t, v) in enumerate(TRUTH.items())) + "\n")
    bad = tmp_path / "bad.jsonl"
    lines = good.read_text().splitlines()
    lines.insert(3, json.dumps({"text": "x", "expected": "not-an-intent"}))
    bad.write_text("\n".join(lines))
    out = _invoke("feedback", "import", str(bad), "-w", str(path))
    assert out.exit_code == 2 and f"{bad}:4:" in out.output and "rejected" in out.output
    assert _count(store) == 0
    out = _invoke("feedback", "import", str(tmp_path / "missing.jsonl"), "-w", str(path))
    assert out.exit_code == 2 and "cannot read" in out.output
    out = _invoke("feedback", "import", str(good), "-w", str(path))
    assert out.exit_code == 0 and f"imported {len(TRUTH)} labels" in out.output
    # labelled evidence alone proposes a lookup, every row right, without a single llm call
    out = _invoke("promotions", "propose", str(path), "--no-scripts")
    assert "proposed" in out.output, out.output
    rows = json.loads(_invoke("promotions", "list", "--json").output)
    (p,) = rows
    assert {r["input"]["text"]: r["output"]["intent"] for r in p["payload"]["rows"]} == TRUTH
    assert p["verification"]["trust"]["labelled"] == len(TRUTH)
    shown = json.loads(_invoke("promotions", "show", p["id"], "--json").output)
    assert shown["id"] == p["id"] and shown["payload"]["rows"][0]["evidence"]["trust"]["labelled"] == 1
    assert tiers.calls["small"] == 0 and tiers.calls["large"] == 0


def test_import_runs_the_zero_token_steps_before_the_labelled_step(project, fake, store, tmp_path):
    root = Path(__file__).resolve().parents[2]
    wf = root / "examples" / "support_triage" / "workflow.yaml"
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"ticket": "  Where is my CARD?  ", "expected": "card_arrival"}) + "\n")
    out = _invoke("feedback", "import", str(labels), "-w", str(wf))
    assert out.exit_code == 0, out.output
    (row,) = store.query("SELECT input, output FROM feedback")
    assert row["output"] == {"intent": "card_arrival"}
    assert row["input"]["ticket"] != "  Where is my CARD?  "  # the normalise script ran


def test_engine_feedback_api(triage_wf, tiers, store):
    path = triage_wf("      quality: {sample: 0}")
    engine = Engine()
    result = engine.run(path, {"text": "hello"})
    row = engine.feedback(result.run_id, "classify", output={"intent": "other"})
    assert row["kind"] == "label" and row["output"] == {"intent": "other"}
    with pytest.raises(FeedbackError):
        engine.feedback(result.run_id, "classify", output={"intent": 3})
    with pytest.raises(FeedbackError):
        give_feedback(store, result.run_id, "classify")
    assert _count(store) == 1
    engine.close()


def test_serve_feedback_route(triage_wf, tiers, store):
    from fastapi.testclient import TestClient

    from engine.http import create_app

    path = triage_wf("      quality: {sample: 0}")
    engine = Engine()
    client = TestClient(create_app(engine, [path]), base_url="http://localhost")
    run = client.post("/workflows/triage/run", json={"text": "hello"}).json()
    assert run["trust"] == {"classify": "unverified"}
    assert client.post("/feedback", json={"run_id": "nope", "step": "classify", "ok": True}).status_code == 404
    bad = client.post("/feedback", json={"run_id": run["run_id"], "step": "classify", "output": {"intent": 1}})
    assert bad.status_code == 422 and "rejected" in bad.json()["detail"]
    assert client.post("/feedback", json={"run_id": run["run_id"], "step": "classify"}).status_code == 422
    assert _count(store) == 0
    ok = client.post("/feedback", json={"run_id": run["run_id"], "step": "classify", "ok": True})
    assert ok.status_code == 200 and ok.json()["kind"] == "confirm"
    assert _count(store) == 1
    engine.close()


def test_the_readme_loop_offline_labels_then_lookups_that_are_all_right(store):
    """The README's offline loop on the example: no trusted evidence, import the tickets' known
    intents, propose: every row is the ticket's label; accepted, the tickets are served at 0 tokens."""
    root = Path(__file__).resolve().parents[2]
    wf = root / "examples" / "support_triage" / "workflow.yaml"
    tickets = root / "examples" / "support_triage" / "tickets.jsonl"
    truth = {}
    for line in tickets.read_text().splitlines():
        item = json.loads(line)
        truth[" ".join(item["ticket"].split()).casefold()] = item["expected_intent"]
    import shutil

    work = Path.cwd() / "triage"
    shutil.copytree(wf.parent, work)
    path = work / "workflow.yaml"
    out = _invoke("promotions", "propose", str(path), "--no-scripts")
    assert "no logged answers" in out.output
    out = _invoke("feedback", "import", str(tickets), "-w", str(path), "--field", "expected_intent")
    assert out.exit_code == 0 and "imported 40 labels" in out.output, out.output
    out = _invoke("promotions", "propose", str(path), "--no-scripts")
    assert out.exit_code == 0 and "40 rows" in out.output, out.output
    (p,) = json.loads(_invoke("promotions", "list", "--json").output)
    got = {" ".join(r["input"]["ticket"].split()).casefold(): r["output"]["intent"] for r in p["payload"]["rows"]}
    assert len(got) == 40 and all(truth[k] == v for k, v in got.items())
    assert _invoke("promotions", "accept", p["id"]).exit_code == 0
    first = json.loads(tickets.read_text().splitlines()[0])
    result = run_workflow(path, {"ticket": first["ticket"]})
    assert result.step("classify").served_by == "lookup" and result.tokens_in == 0
    assert result.outputs["intent"] == first["expected_intent"]
