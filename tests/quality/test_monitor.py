"""Policy resolution and load-time errors, confidence and calibration, cool-off and probation,
comparisons, `tier: auto`, and what the report shows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import load_workflow, run_workflow
from engine.cli import cli
from engine.errors import SpecError
from engine.quality import monitor
from engine.quality.confidence import answer_confidence, calibrate, leaf_spans
from engine.quality.spec import resolve_policy
from engine.quality.stats import wilson_bounds
from engine.store import quality as quality_store

from quality_helpers import TRUTH


# --- policy and load-time errors -----------------------------------------------------------------

def test_policy_defaults_and_engine_level_block(triage_wf, fake):
    wf = load_workflow(triage_wf())
    policy = resolve_policy(wf.step("classify").llm, wf.config)
    assert policy.reference == "premium" and policy.sample == 0.05 and policy.max_disagreement == 0.03
    assert policy.monitored("local") and not policy.monitored("premium")
    config = "tiers:\n  local: [{model: 'fake:small'}]\n  premium: [{model: 'fake:large'}]\n" \
             "quality: {reference: premium, sample: 0.2}\n"
    wf = load_workflow(triage_wf("      quality: {sample: 0.5}", config=config).parent / "workflow.yaml")
    policy = resolve_policy(wf.step("classify").llm, wf.config)
    assert policy.reference == "premium" and policy.sample == 0.5  # the step's key wins


@pytest.mark.parametrize("extra, message", [
    ("      quality: {reference: platinum}", "quality.reference: unknown tier 'platinum'"),
    ("      quality: {sample: 1.5}", "quality.sample"),
    ("      quality: {max_disagreement: -0.1}", "quality.max_disagreement"),
    ("      quality: {min_confidence: 2}", "min_confidence must be between 0 and 1"),
    ("      quality: {min_confidence: high}", "min_confidence must be a number between 0 and 1, or auto"),
    ("      quality: {compare: {judge: nobody}}", "quality.compare.judge: unknown tier 'nobody'"),
    ("      quality: {cooloff: soon}", "is not a duration"),
    ("      quality: {refrence: premium}", "quality.refrence"),
])
def test_quality_errors_name_file_line_and_field(triage_wf, fake, extra, message):
    path = triage_wf(extra)
    with pytest.raises(SpecError) as e:
        load_workflow(path)
    text = str(e.value)
    assert message in text, text
    assert f"{path}:17:" in text  # the line of the quality: key


def test_engine_level_reference_must_be_a_tier(triage_wf, fake):
    config = "tiers:\n  local: [{model: 'fake:small'}]\n  premium: [{model: 'fake:large'}]\nquality: {reference: gold}\n"
    path = triage_wf(config=config)
    with pytest.raises(SpecError) as e:
        load_workflow(path)
    assert "quality.reference 'gold'" in str(e.value) and "engine.yaml" in str(e.value)


# --- confidence ------------------------------------------------------------------------------------

def _tok(token: str, p: float, alts: dict[str, float] | None = None) -> dict:
    tops = [{"token": token, "logprob": math.log(p)}] + [{"token": t, "logprob": math.log(q)}
                                                          for t, q in (alts or {}).items()]
    return {"token": token, "logprob": math.log(p), "top_logprobs": tops}


SCHEMA = {"type": "object", "properties": {"intent": {"enum": ["card_arrival", "card_lost", "refund"]}}}


def test_leaf_spans_finds_values_not_keys():
    text = '{"a": "x", "b": [1, true], "c": {"d": null}}'
    assert [(text[s:e], path) for s, e, path in leaf_spans(text)] == [
        ('"x"', ("a",)), ("1", ("b", 0)), ("true", ("b", 1)), ("null", ("c", "d"))]


def test_confidence_renormalises_over_the_allowed_values():
    # The grammar forced '{' (unconstrained logprob -10.2): structure tokens do not count.
    structure = [_tok('{"', math.exp(-10.2)), _tok("intent", 0.9), _tok('":', 0.9), _tok(' "', 0.9)]
    # At the value: 'card' (0.3) vs 'refund' (0.1) vs junk outside the enum ('hello', 0.5).
    value = [_tok("card", 0.3, {"refund": 0.1, "hello": 0.5}),
             _tok("_arr", 0.6, {"_lost": 0.2, "_xyz": 0.1}), _tok("ival", 0.99), _tok('"}', 0.99)]
    text = '{"intent": "card_arrival"}'
    conf = answer_confidence(text, structure + value, SCHEMA)
    # 'card' holds 0.3 of the 0.4 mass on allowed values; then '_arr' 0.6 of 0.8
    assert conf == pytest.approx(0.3 / 0.4 * 0.6 / 0.8, rel=1e-6)
    sure = [_tok('{"', math.exp(-10.2)), _tok("intent", 0.9), _tok('":', 0.9), _tok(' "', 0.9),
            _tok("refund", 0.2, {"hello": 0.7}), _tok('"}', 0.99)]
    assert answer_confidence('{"intent": "refund"}', sure, SCHEMA) == pytest.approx(1.0)
    assert answer_confidence(text, None, SCHEMA) is None


def test_free_text_confidence_is_the_geometric_mean_of_its_tokens():
    toks = [_tok('{"', 0.01), _tok("s", 0.9), _tok('":"', 0.9), _tok("ab", 0.5), _tok("cd", 0.8), _tok('"}', 0.9)]
    conf = answer_confidence('{"s":"abcd"}', toks, {"type": "object"})
    # the tokens that overlap the value "abcd" (its quotes included): '":"', 'ab', 'cd', '"}'
    assert conf == pytest.approx(math.exp((math.log(0.5) + math.log(0.8) + math.log(0.9) * 2) / 4))
    assert 0 < conf < 1


def test_calibrate_picks_the_lowest_threshold_reaching_the_target():
    pairs = [(0.99, True)] * 40 + [(0.9, True)] * 20 + [(0.8, False)] * 5 + [(0.7, True)] * 5
    assert calibrate(pairs, 0.98) == 0.9
    assert calibrate(pairs[:10], 0.98) > 1  # too few checks: escalate everything
    assert calibrate([(0.5, False)] * 50, 0.98) > 1


def test_low_confidence_answers_escalate_and_calibrate(triage_wf, tiers, store):
    tiers.cheap = lambda text: {"intent": TRUTH.get(text, "other")} if "card" in text else {"intent": "card"}
    tiers.cheap_confidence = lambda text: 0.95 if "card" in text else 0.4
    path = triage_wf("      quality: {sample: 0, min_confidence: 0.9}")
    sure = run_workflow(path, {"text": "card never came"})
    unsure = run_workflow(path, {"text": "refund please"})
    assert sure.step("classify").tier == "local" and sure.step("classify").confidence == 0.95
    assert unsure.step("classify").tier == "premium" and unsure.outputs["classify"]["intent"] == "refund"
    assert [c["reason"] for c in unsure.step("classify").calls][:1] == ["low_confidence"]
    # the escalated answer was compared with the reference for free (not served: no effect on state)
    (check,) = store.query("SELECT * FROM quality_checks")
    assert check["mode"] == "escalation" and check["served"] == 0 and check["status"] == "disagree"
    assert check["confidence"] == 0.4 and check["cost"] == 0


def test_auto_threshold_escalates_until_calibrated_then_serves_confident_answers(triage_wf, tiers, store):
    tiers.cheap = lambda text: {"intent": TRUTH.get(text, "other")} if "card" in text else {"intent": "card"}
    tiers.cheap_confidence = lambda text: 0.95 if "card" in text else 0.4
    path = triage_wf("      quality: {sample: 0, min_confidence: auto}")  # calibration_min: 30
    texts = list(TRUTH)
    first = [run_workflow(path, {"text": t}) for t in texts * 5]
    assert all(r.step("classify").tier == "premium" for r in first)  # uncalibrated: every answer escalates
    later = [run_workflow(path, {"text": t}) for t in texts]
    served = {t: r.step("classify").tier for t, r in zip(texts, later)}
    assert served == {t: ("local" if "card" in t else "premium") for t in texts}
    assert all(r.outputs["classify"]["intent"] == TRUTH[t] for t, r in zip(texts, later))


def test_tier_auto_orders_tiers_by_price(triage_wf, tiers):
    path = triage_wf()
    path.write_text(path.read_text().replace("tier: local\n      escalate: [premium]", "tier: auto"))
    wf = load_workflow(path)
    policy = resolve_policy(wf.step("classify").llm, wf.config)
    assert policy.chain == ("local", "standard", "premium") and policy.reference == "premium"
    assert policy.min_confidence == "auto"
    tiers.cheap_confidence = lambda text: 0.99
    result = run_workflow(path, {"text": "hello"})
    assert result.outputs["classify"]["intent"] == "other"  # uncalibrated: escalated to the reference
    bad = path.read_text().replace("tier: auto", "tier: auto\n      escalate: [premium]")
    path.write_text(bad)
    with pytest.raises(SpecError, match="drop escalate"):
        load_workflow(path)


# --- states ----------------------------------------------------------------------------------------

def test_wilson_bounds():
    low, high = wilson_bounds(0, 10, 0.95)
    assert low == 0 and 0.1 < high < 0.3
    low, high = wilson_bounds(5, 5, 0.95)
    assert 0.5 < low < 1 and high == 1


def test_an_escalation_holds_at_once_here_and_within_the_state_ttl_elsewhere(triage_wf, fake, monkeypatch):
    """Two processes over one store (a Monitor and a connection each): the one that escalates skips
    the tier on its next request; the other keeps its last read for at most `_STATE_TTL` seconds."""
    from types import SimpleNamespace

    from engine.runner import open_store

    wf = load_workflow(triage_wf("      quality: {cooloff: 1h}"))
    policy = resolve_policy(wf.step("classify").llm, wf.config)
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(monitor, "time", SimpleNamespace(monotonic=lambda: clock.now))
    here = monitor.Monitor(open_store(Path(".engine/engine.db")))
    there = monitor.Monitor(open_store(Path(".engine/engine.db")))
    assert here.usable_tiers("triage", "classify", policy)[0][0] == "local"
    assert there.usable_tiers("triage", "classify", policy)[0][0] == "local"  # read, and kept
    here._move("triage", "classify", "local", quality_store.ESCALATED, "disagreed")
    assert here.usable_tiers("triage", "classify", policy) == (["premium"], ["local"])  # at once
    clock.now += monitor._STATE_TTL - 0.01
    assert there.usable_tiers("triage", "classify", policy)[0][0] == "local"  # its read is still fresh
    clock.now += 0.01
    assert there.usable_tiers("triage", "classify", policy) == (["premium"], ["local"])  # past the TTL


def test_cool_off_then_probation_then_active(triage_wf, tiers, store, monkeypatch):
    path = triage_wf("      quality: {sample: 1.0, cooloff_runs: 3, probation_checks: 4}")
    for text in ["hello", "refund please", "hello", "refund please", "hello"]:
        run_workflow(path, {"text": text}, inline_checks=True)
    assert quality_store.get_state(store, "triage", "classify", "local")["state"] == "escalated"
    tiers.cheap = lambda text: {"intent": TRUTH.get(text, "other")}  # the cheap tier got better
    monkeypatch.setattr(monitor, "_STATE_TTL", 0.0)
    for _ in range(4):  # 3 runs of the step past the cheap tier, then it is tried again
        run_workflow(path, {"text": "hello"}, inline_checks=True)
    assert quality_store.get_state(store, "triage", "classify", "local")["state"] in ("probation", "active")
    for text in ["hello", "refund please", "card never came", "hello"]:
        run_workflow(path, {"text": text}, inline_checks=True)
    assert quality_store.get_state(store, "triage", "classify", "local")["state"] == "active"
    assert [e["event"] for e in quality_store.events(store)] == ["escalated", "probation", "active"]


def test_the_cool_off_doubles_for_a_tier_that_fails_probation(triage_wf, tiers, store, monkeypatch):
    """A tier escalated again straight out of probation waits twice as long before the next try."""
    path = triage_wf("      quality: {sample: 1.0, cooloff_runs: 3}")
    monkeypatch.setattr(monitor, "_STATE_TTL", 0.0)
    for text in ["hello", "refund please", "hello", "refund please", "hello"]:
        run_workflow(path, {"text": text}, inline_checks=True)
    state = quality_store.get_state(store, "triage", "classify", "local")
    assert state["state"] == "escalated" and state["strikes"] == 1
    runs = 0
    while quality_store.get_state(store, "triage", "classify", "local")["state"] == "escalated":
        run_workflow(path, {"text": "hello"}, inline_checks=True)
        runs += 1
    first_wait = runs
    while quality_store.get_state(store, "triage", "classify", "local")["state"] != "escalated":
        run_workflow(path, {"text": "hello"}, inline_checks=True)  # probation: still wrong
    assert quality_store.get_state(store, "triage", "classify", "local")["strikes"] == 2
    cheap = tiers.calls["small"]
    for _ in range(first_wait + 2):  # 3 runs cooled it off the first time; now 6 are needed
        run_workflow(path, {"text": "hello"}, inline_checks=True)
    assert quality_store.get_state(store, "triage", "classify", "local")["state"] == "escalated"
    assert tiers.calls["small"] == cheap  # never asked while cooling off
    assert [e["event"] for e in quality_store.events(store)] == ["escalated", "probation", "escalated"]


def test_quality_reset(triage_wf, tiers, store):
    path = triage_wf("      quality: {sample: 1.0}")
    for text in ["hello", "refund please"] * 3:
        run_workflow(path, {"text": text}, inline_checks=True)
    assert quality_store.get_state(store, "triage", "classify", "local")["state"] == "escalated"
    out = CliRunner().invoke(cli, ["quality", "reset", "-w", "triage"])
    assert out.exit_code == 0 and "1 tier(s) on probation" in out.output
    assert quality_store.get_state(store, "triage", "classify", "local")["state"] == "probation"


# --- comparisons -----------------------------------------------------------------------------------

def test_compare_fields_and_judge(triage_wf, tiers, store, fake):
    tiers.cheap = lambda text: {"intent": "card"}
    tiers.reference = lambda text: {"intent": "card"}
    path = triage_wf("      quality: {sample: 1.0, compare: [intent]}")
    run_workflow(path, {"text": "hello"}, inline_checks=True)
    assert store.query("SELECT status FROM quality_checks") == [{"status": "agree"}]
    from engine.quality.compare import answers_agree
    from engine.quality.spec import QualityPolicy

    fields = QualityPolicy(chain=("a", "b"), reference="b", compare_fields=("intent",))
    assert answers_agree(fields, {"intent": "x", "note": "1"}, {"intent": "x", "note": "2"})
    assert not answers_agree(QualityPolicy(chain=("a", "b"), reference="b"), {"intent": "x", "note": "1"},
                             {"intent": "x", "note": "2"})
    judge = QualityPolicy(chain=("a", "b"), reference="b", judge="premium")
    asked = []
    assert answers_agree(judge, {"s": "the card is late"}, {"s": "card delayed"},
                         lambda m, s: asked.append(m) or {"same": True})
    assert "the card is late" in asked[0][1]["content"]


def test_semantic_compare_uses_the_embedder():
    from engine.cache.embedders import register_embedder, unregister_embedder
    from engine.quality.compare import answers_agree
    from engine.quality.spec import QualityPolicy
    import numpy as np

    class Toy:
        name = "toy"

        def embed(self, texts):
            return np.array([[1.0, 0.1] if "late" in t or "delayed" in t else [0.0, 1.0] for t in texts])

    register_embedder("toy", Toy())
    try:
        policy = QualityPolicy(chain=("a", "b"), reference="b", semantic=0.9, embedder="toy")
        assert answers_agree(policy, {"s": "card is late"}, {"s": "card delayed"})
        assert not answers_agree(policy, {"s": "card is late"}, {"s": "refund"})
    finally:
        unregister_embedder("toy")


def test_extract_workflow_is_monitored(project, fake, store):
    """The free-text workflow is checked against the reference too, comparing strings semantically."""
    import numpy as np

    from engine.cache.embedders import register_embedder, unregister_embedder

    class Toy:
        name = "minilm"

        def embed(self, texts):
            return np.array([[1.0, 0.0] if "Lovelace" in t else [0.0, 1.0] for t in texts])

    root = Path(__file__).resolve().parents[2]
    fake.responder = lambda r: ({"name": "Ada Lovelace", "email": "ada@x.org"} if r.model == "large"
                                else {"name": "Lovelace, Ada", "email": "ada@x.org"} if "Ada" in
                                r.messages[1]["content"] else {"name": "Bob", "email": None})
    path = project((root / "workflows" / "extract.yaml").read_text(),
                   config="tiers:\n  local: [{model: 'fake:small'}]\n  premium: [{model: 'fake:large'}]\n"
                          "quality: {reference: premium, sample: 1.0}\n",
                   files={"extract_helpers.py": (root / "workflows" / "extract_helpers.py").read_text()})
    register_embedder("minilm", Toy())
    try:
        wf = load_workflow(path)
        policy = resolve_policy(wf.step("extract").llm, wf.config)
        assert policy.reference == "premium" and policy.semantic == 0.9 and policy.monitored("local")
        same = run_workflow(path, {"text": "Ada Lovelace, ada@x.org"}, inline_checks=True)
        assert same.outputs["record"]["name"] == "Lovelace, Ada"  # agreed (same meaning): the cheap answer
        other = run_workflow(path, {"text": "Bob, bob@x.org"}, inline_checks=True)
    finally:
        unregister_embedder("minilm")
    statuses = [r["status"] for r in store.query("SELECT status FROM quality_checks ORDER BY id")]
    assert statuses == ["agree", "disagree"]
    assert other.outputs["record"]["name"] == "Ada Lovelace"  # disagreed inline: the reference's answer


# --- report ----------------------------------------------------------------------------------------

def test_report_shows_trust_quality_cost_and_agreement_chart(triage_wf, tiers, store, tmp_path):
    path = triage_wf("      quality: {sample: 1.0, max_disagreement: 1.0}")
    for text in TRUTH:
        run_workflow(path, {"text": text}, inline_checks=True)
    data = json.loads(CliRunner().invoke(cli, ["report", "--json"]).output)
    assert data["totals"]["quality_checks"] == len(TRUTH) and data["totals"]["quality_checks_cost"] > 0
    sources = {r["key"]: r for r in data["groups"]["source"]}
    assert sources["quality checks"]["calls"] == len(TRUTH)
    trust = {r["key"] for r in data["groups"]["trust"]}
    assert trust <= {"verified", "reference", "unverified"} and "verified" in trust
    (q,) = data["quality"]
    assert q["tier"] == "local" and q["sampled"] == len(TRUTH) and q["agreed"] == 2  # two 'card' texts
    html = tmp_path / "r.html"
    out = CliRunner().invoke(cli, ["report", "--html", str(html)])
    assert "agreement with the reference" in out.output and "quality checks" in out.output
    page = html.read_text()
    assert 'aria-label="agreement per tier"' in page and "33.3%" in page


def test_judge_tier_is_asked_and_its_call_logged_apart(triage_wf, tiers, store, fake):
    from engine.quality.judge import ask_judge
    from engine.steps.base import StepContext

    path = triage_wf()
    wf = load_workflow(path)
    fake.responder = lambda r: {"same": True} if r.model == "medium" else {"intent": "card"}
    ctx = StepContext(run_id="r1", workflow=wf, config=wf.config, store=store, step_id="classify")
    verdict = ask_judge(ctx, "standard", [{"role": "user", "content": "A: x\nB: y"}],
                        {"type": "object"}, {"prompt_hash": "p", "schema_hash": "s", "input_hash": "i"}, {"text": "x"})
    assert verdict == {"same": True}
    (row,) = store.query("SELECT purpose, tier, outcome, output FROM llm_calls")
    assert row == {"purpose": "judge", "tier": "standard", "outcome": "valid", "output": {"same": True}}
