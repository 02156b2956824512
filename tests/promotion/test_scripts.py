"""Script proposals with a scripted strong tier: verified in the sandbox, accepted or not proposed."""

from __future__ import annotations

import json

from engine import load_workflow, run_workflow
from engine.promotion import records, review
from engine.promotion.proposals import propose_promotions

GOOD = """
def solve(inputs):
    text = inputs["text"].strip()
    return {"label": "long" if len(text) >= 6 else "short"}
"""
WRONG = """
def solve(inputs):
    return {"label": "short"}
"""
ESCAPES = {
    "socket": "import socket\ndef solve(inputs):\n    socket.create_connection(('93.184.216.34', 80))\n"
              "    return {'label': 'short'}\n",
    "file write": "def solve(inputs):\n    open('{target}', 'w').write('pwned')\n    return {'label': 'short'}\n",
    "env key": "import os\ndef solve(inputs):\n    key = os.environ.get('OPENAI_API_KEY')\n"
               "    return {'label': key} if key else None\n",
    "infinite loop": "def solve(inputs):\n    while True:\n        pass\n",
    "unbounded allocation": "def solve(inputs):\n    x = []\n    while True:\n        x.append(bytearray(10**7))\n",
}
TEXTS = ["hi", "yo", "hey", "hello there", "good morning", "greetings all", "ok", "a longer one", "no", "fine thanks"]


def _seed(path):
    for text in TEXTS:
        run_workflow(path, {"text": text})


def test_good_script_is_verified_proposed_and_serves(label_wf, labeller, store):
    path = label_wf(", script_examples: 4")
    _seed(path)
    labeller.enqueue(json.dumps({"code": GOOD}))
    report = propose_promotions(load_workflow(path), store, script_tier="premium")
    (script,) = [p for p in report.proposed if p.kind == "script"]
    v = script.verification
    assert (v["pairs"], v["answered"], v["agreement"], v["coverage"], v["failures"]) == (10, 10, 1.0, 1.0, 0)
    assert v["held_out"]["pairs"] == 6 and v["held_out"]["agreement"] == 1.0
    assert len(script.payload["examples"]) == 4 and script.payload["writer"]["model"] == "fake:large"
    writer_request = labeller.requests[len(TEXTS)]
    assert writer_request.model == "large" and "def solve" in writer_request.messages[0]["content"]
    assert script.savings["covered_share"] == 1.0

    review.accept(store, script.id)
    code = (path.parent / "promotions" / "label" / "classify.script.v1.py").read_text()
    assert "agreement 100.0%" in code and "def solve" in code
    before = len(labeller.requests)
    result = run_workflow(path, {"text": "never seen before"})
    assert result.step("classify").served_by == "script" and result.step("classify").tokens_in == 0
    assert result.outputs == {"classify": {"label": "long"}} and len(labeller.requests) == before


def test_wrong_script_fails_verification_and_is_not_proposed(label_wf, labeller, store):
    path = label_wf()
    _seed(path)
    labeller.enqueue(json.dumps({"code": WRONG}))
    report = propose_promotions(load_workflow(path), store, script_tier="premium")
    assert not [p for p in report.proposed if p.kind == "script"]
    (bad,) = report.unverified
    assert bad.status == "unverified" and bad.verification["agreement"] < 0.95
    assert bad.verification["mismatches"] and "agreement" in bad.reason
    assert records.get(store, bad.id).verification["pairs"] == 10  # the report is kept


def test_escaping_scripts_fail_and_the_step_falls_back_to_the_llm(label_wf, labeller, store, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    path = label_wf()
    _seed(path)
    target = tmp_path / "escaped.txt"
    for name, code in ESCAPES.items():
        code = code.replace("{target}", str(target))
        labeller.enqueue(json.dumps({"code": code}))
        report = propose_promotions(load_workflow(path), store, script_tier="premium")
        (bad,) = report.unverified
        assert bad.verification["answered"] == 0, name
        # Force it live anyway, to check the run-time path too: it must fall back to the llm.
        records.update(store, bad.id, status="proposed")
        review.accept(store, bad.id)
        before = len(labeller.requests)
        result = run_workflow(path, {"text": "hello there"})
        assert result.step("classify").served_by == "llm", name
        assert result.outputs == {"classify": {"label": "long"}} and len(labeller.requests) == before + 1
        assert "sk-test-secret" not in json.dumps(result.to_dict())
        records.update(store, bad.id, status="rejected")
    assert not target.exists()


def test_writer_is_not_asked_again_on_the_same_log(label_wf, labeller, store):
    path = label_wf()
    _seed(path)
    labeller.enqueue(json.dumps({"code": WRONG}))
    propose_promotions(load_workflow(path), store, script_tier="premium")
    asked = len(labeller.requests)
    report = propose_promotions(load_workflow(path), store, script_tier="premium")
    assert len(labeller.requests) == asked and any("failed verification" in n for n in report.notes)
    run_workflow(path, {"text": "brand new input"})
    labeller.enqueue(json.dumps({"code": GOOD}))
    report = propose_promotions(load_workflow(path), store, script_tier="premium")
    assert [p.kind for p in report.proposed] == ["script"]
