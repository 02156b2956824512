"""Script proposals with a scripted strong tier: verified in the sandbox, accepted or not proposed."""

from __future__ import annotations

import json
import os

from engine import load_workflow, run_workflow
from engine.promotion import records, review
from engine.promotion.proposals import propose_promotions
from sandboxmark import needs_isolation

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


@needs_isolation
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


@needs_isolation
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


@needs_isolation
def test_refused_script_is_unverified_with_the_reason_and_never_served(label_wf, labeller, store, monkeypatch):
    from engine.promotion import server

    monkeypatch.setattr(server, "RECHECK_S", 0.0)  # re-check the manifest on every run, not once a second
    path = label_wf()
    _seed(path)
    labeller.enqueue(json.dumps({"code": "import os\n" + GOOD}))
    report = propose_promotions(load_workflow(path), store, script_tier="premium")
    (bad,) = report.unverified
    assert "static check" in bad.reason and "import of 'os' is not allowed" in bad.reason
    assert bad.verification["static_check"]
    # An accepted script edited afterwards is checked again when loaded, and not served.
    run_workflow(path, {"text": "one more input"})  # the log grows: the writer is asked again
    labeller.enqueue(json.dumps({"code": GOOD}))
    report = propose_promotions(load_workflow(path), store, script_tier="premium")
    (good,) = [p for p in report.proposed if p.kind == "script"]
    review.accept(store, good.id)
    artifact = path.parent / "promotions" / "label" / "classify.script.v1.py"
    assert run_workflow(path, {"text": "hello there"}).step("classify").served_by == "script"
    artifact.write_text(artifact.read_text() + "\nopen('/etc/passwd')\n")
    manifest = artifact.parent / "manifest.yaml"
    os.utime(manifest, ns=(1, 1))  # artifacts are cached by the manifest's mtime (checked every RECHECK_S)
    assert run_workflow(path, {"text": "hello there"}).step("classify").served_by == "llm"


def test_promotions_cli_says_why_scripts_cannot_run(label_wf, labeller, store, monkeypatch):
    from click.testing import CliRunner

    from engine.cli import cli
    from engine.promotion import sandbox

    from engine.promotion.sandbox import isolation

    class NoNamespaces:  # libc on a kernel that refuses unprivileged user namespaces
        def __init__(self, real):
            self.real = real

        def unshare(self, flags):
            return -1

        def __getattr__(self, name):
            return getattr(self.real, name)

    real = isolation.libc()
    monkeypatch.setattr(isolation, "libc", lambda: NoNamespaces(real))
    monkeypatch.setenv("ENGINE_SANDBOX_BACKEND", "namespaces")  # the fallback, the one that unshares itself
    monkeypatch.setattr(sandbox, "_probe", [])
    path = label_wf()
    _seed(path)
    labeller.enqueue(json.dumps({"code": GOOD}))
    out = CliRunner().invoke(cli, ["promotions", "propose", str(path), "--script-tier", "premium"]).output
    assert "scripts do not run on this machine" in out and "unshare" in out
    assert "not verified: sandbox isolation unavailable" in out
    status = CliRunner().invoke(cli, ["promotions", "list", "--status", "unverified"]).output
    assert "scripts do not run on this machine" in status
    monkeypatch.setattr(sandbox, "_probe", [])
