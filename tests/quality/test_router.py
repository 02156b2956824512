"""The learned router (`route:` on an llm step, and `tier: auto`): trained on the step's own
reference checks and labels, calibrated out of fold, decided before any call, recorded on the run,
monitored, demoted when its routed answers disagree, and honest when there is no signal."""

from __future__ import annotations

import random
import zlib

import numpy as np
from click.testing import CliRunner

from engine import load_workflow, run_workflow
from engine.cache.embedders import get_embedder
from engine.cli import cli
from engine.promotion import records, review
from engine.promotion.proposals import propose_promotions
from engine.quality.router import RouterModel, calibrate, train_router
from engine.store import promotions as promotion_store
from engine.store import quality as quality_store

INTENTS = {"card": ["my card has not arrived", "the new card never came", "where is my card"],
           "refund": ["i want my money back", "refund the order", "return and get a refund"],
           "other": ["what is the weather", "tell me a joke", "opening hours of the branch"]}
ROUTE = "      quality: {reference: premium, sample: 1.0, max_disagreement: 1.0}\n" \
        "      route: {embedder: hash, min_examples: 60}\n" \
        "      promote: {demote_min_checks: 5}"


def texts(n: int, seed: int) -> list[tuple[str, str]]:
    """n distinct (text, intent) pairs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        intent = rng.choice(sorted(INTENTS))
        out.append((f"{rng.choice(INTENTS[intent])} #{seed}-{i}", intent))
    return out


def setup_signal(tiers, truth):
    """The reference is right; the cheap tier says `card` to everything: right on card texts only."""
    tiers.reference = lambda text: {"intent": truth.get(text, "other")}
    tiers.cheap = lambda text: {"intent": "card"}


def collect(path, pairs, truth):
    for text, intent in pairs:
        truth[text] = intent
        run_workflow(path, {"text": text}, inline_checks=True)


def routers(store, path):
    report = propose_promotions(load_workflow(path), store, scripts=False, classifiers=False)
    return [p for p in report.proposed if p.kind == "router"], report


def test_calibrate_the_lowest_threshold_at_the_target():
    prob = np.linspace(1, 0, 40)
    agree = np.array([1.0] * 25 + [0.0] * 15)
    assert calibrate(prob, agree, 0.98) == prob[24]
    assert calibrate(prob, agree, 0.98, min_routed=30) is None


def test_signal_routes_the_region_the_cheap_tier_gets_right(triage_wf, tiers, store):
    path = triage_wf(ROUTE)
    truth: dict[str, str] = {}
    setup_signal(tiers, truth)
    collect(path, texts(120, 1), truth)
    (proposal,), _ = routers(store, path)
    report = proposal.verification
    assert not report["no_signal"] and report["threshold"] is not None
    assert report["held_out"]["agreement"] >= 0.98 and report["evidence"] == {"check": 120}
    review.accept(store, proposal.id)
    small = tiers.calls["small"]
    served = {"cheap": 0, "up": 0}
    right = 0
    fresh = texts(60, 2)
    for text, intent in fresh:
        truth[text] = intent
        before = tiers.calls["small"]
        result = run_workflow(path, {"text": text}, inline_checks=True)
        step = result.step("classify")
        served[step.routed] += 1
        if step.routed == "up":
            assert tiers.calls["small"] == before and step.tier == "premium"  # no cheap call at all
        right += result.outputs["classify"]["intent"] == intent
    cards = sum(1 for _, i in fresh if i == "card")
    assert served["cheap"] >= cards * 0.8 and served["cheap"] <= cards + 2
    assert tiers.calls["small"] - small == served["cheap"]
    assert right / len(fresh) >= 0.98
    assert quality_store.routed_counts(store, "triage", "classify") == {k: v for k, v in served.items() if v}
    # routed cheap answers stay under the monitor: sampled (sample 1.0) and counted for the router
    stats = promotion_store.check_stats(store, proposal.id)
    assert stats["routed"]["checks"] == served["cheap"]


def test_no_signal_routes_everything_up(triage_wf, tiers, store):
    path = triage_wf(ROUTE)
    truth: dict[str, str] = {}
    tiers.reference = lambda text: {"intent": truth.get(text, "other")}
    # wrong at random (half the time, by the text's checksum): nothing about the input predicts it
    wrong = {"card": "refund", "refund": "other", "other": "card"}
    tiers.cheap = lambda text: {"intent": truth[text] if zlib.crc32(text.encode()) % 2 else wrong[truth[text]]}
    collect(path, texts(150, 3), truth)
    (proposal,), _ = routers(store, path)
    assert proposal.verification["no_signal"] and proposal.verification["threshold"] is None
    assert "every input goes up" in (proposal.reason or "")
    review.accept(store, proposal.id)
    small = tiers.calls["small"]
    for text, intent in texts(30, 4):
        truth[text] = intent
        result = run_workflow(path, {"text": text}, inline_checks=True)
        assert result.step("classify").routed == "up" and result.outputs["classify"]["intent"] == intent
    assert tiers.calls["small"] == small


def test_router_is_demoted_when_routed_answers_disagree(triage_wf, tiers, store):
    path = triage_wf(ROUTE)
    truth: dict[str, str] = {}
    setup_signal(tiers, truth)
    collect(path, texts(120, 5), truth)
    (proposal,), _ = routers(store, path)
    review.accept(store, proposal.id)
    tiers.cheap = lambda text: {"intent": "refund"}  # the cheap tier drifted: wrong on card texts too
    decided = []
    for text, intent in [t for t in texts(80, 6) if t[1] == "card"]:
        truth[text] = intent
        result = run_workflow(path, {"text": text}, inline_checks=True)
        decided.append(result.step("classify").routed)
        assert result.outputs["classify"]["intent"] == intent  # inline checks serve the reference's answer
    assert records.get(store, proposal.id).status == "demoted"
    assert "routed answers disagreed" in (records.get(store, proposal.id).reason or "")
    assert decided[0] == "cheap" and decided[-1] is None  # demoted: the cascade runs without it


def test_tier_auto_uses_an_accepted_router(triage_wf, tiers, store):
    target = triage_wf("      quality: {sample: 1.0, max_disagreement: 1.0}")  # no route: block
    target.write_text(target.read_text().replace("tier: local\n      escalate: [premium]", "tier: auto"))
    truth: dict[str, str] = {}
    setup_signal(tiers, truth)
    collect(target, texts(120, 7), truth)
    found, _ = routers(store, target)
    assert found and found[0].verification["threshold"] is not None
    review.accept(store, found[0].id)
    refunds = [t for t in texts(40, 8) if t[1] == "refund"]
    small = tiers.calls["small"]
    for text, intent in refunds:
        truth[text] = intent
        assert run_workflow(target, {"text": text}, inline_checks=True).step("classify").routed == "up"
    assert tiers.calls["small"] == small


def test_router_round_trips_and_rejects_malformed_files():
    rng = random.Random(0)
    examples = [(f"card {i} {rng.random()}", True) for i in range(40)] + \
               [(f"weather {i} {rng.random()}", False) for i in range(40)]
    result = train_router([t for t, _ in examples], [a for _, a in examples], get_embedder("hash").embed,
                          embedder="hash", cheap_tier="local")
    model = RouterModel.from_dict(result.model.to_dict())
    assert model.threshold == result.model.threshold and model.route({"text": "card 99"})[0] == "cheap"
    assert model.route({"text": "weather 99"})[0] == "up"
    import pytest

    from engine.quality.router import RouterFormatError

    with pytest.raises(RouterFormatError):
        RouterModel.from_dict({**result.model.to_dict(), "coef": [[1.0], [2.0]]})


def test_cli_propose_and_quality_show_the_router(triage_wf, tiers, store):
    path = triage_wf(ROUTE)
    truth: dict[str, str] = {}
    setup_signal(tiers, truth)
    collect(path, texts(120, 9), truth)
    runner = CliRunner()
    out = runner.invoke(cli, ["promotions", "propose", str(path)])
    assert out.exit_code == 0, out.output
    (proposal,) = [p for p in records.find(store, kind="router")]
    assert proposal.id in out.output
    shown = runner.invoke(cli, ["promotions", "show", proposal.id])
    assert shown.exit_code == 0 and "threshold P(agree) >=" in shown.output, shown.output
    assert runner.invoke(cli, ["promotions", "accept", proposal.id]).exit_code == 0
    for text, intent in texts(30, 10):
        truth[text] = intent
        run_workflow(path, {"text": text}, inline_checks=True)
    out = runner.invoke(cli, ["quality", "--json"])
    assert out.exit_code == 0, out.output
    import json

    (row,) = [r["router"] for r in json.loads(out.output) if r.get("router")]
    assert row["id"] == proposal.id and row["decided"] == 30 and 0 < row["coverage"] < 1
    assert row["agreement"] == 1.0
    out = runner.invoke(cli, ["quality"])
    assert "router" in out.output.lower() and proposal.id in out.output


def test_labels_are_evidence_and_outrank_checks(triage_wf, tiers, store):
    from engine.promotion.mining import step_hashes
    from engine.promotion.router_proposal import router_evidence
    from engine.quality.feedback import give_feedback

    path = triage_wf("      quality: {reference: premium, sample: 0, max_disagreement: 1.0}")
    tiers.cheap = lambda text: {"intent": "card"}
    runs = [run_workflow(path, {"text": t}, inline_checks=True) for t in ("card never came", "hello")]
    spec = load_workflow(path).step("classify").llm
    hashes = step_hashes(spec)
    assert router_evidence(store, "triage", "classify", "local", hashes) == []  # nothing checked yet
    give_feedback(store, runs[0].run_id, "classify", ok=True)  # the cheap answer was right
    give_feedback(store, runs[1].run_id, "classify", output={"intent": "other"})  # it was wrong
    found = {values["text"]: (agree, source)
             for _, values, agree, source in router_evidence(store, "triage", "classify", "local", hashes)}
    assert found == {"card never came": (True, "label"), "hello": (False, "label")}


def test_exploration_keeps_evidence_growing_where_everything_goes_up(triage_wf, tiers, store):
    path = triage_wf(ROUTE.replace("min_examples: 60}", "min_examples: 60, explore: 1.0}"))
    truth: dict[str, str] = {}
    tiers.reference = lambda text: {"intent": truth.get(text, "other")}
    wrong = {"card": "refund", "refund": "other", "other": "card"}
    tiers.cheap = lambda text: {"intent": truth[text] if zlib.crc32(text.encode()) % 2 else wrong[truth[text]]}
    collect(path, texts(100, 11), truth)
    (first,), _ = routers(store, path)
    assert first.verification["threshold"] is None
    review.accept(store, first.id)
    small = tiers.calls["small"]
    for text, intent in texts(30, 12):
        truth[text] = intent
        result = run_workflow(path, {"text": text}, inline_checks=True)
        step = result.step("classify")
        assert step.routed == "up" and step.tier == "premium" and result.outputs["classify"]["intent"] == intent
    assert tiers.calls["small"] == small + 30  # asked after the answer, never served
    explored = [c for c in store.query("SELECT mode, served FROM quality_checks WHERE mode = 'explore'")]
    assert len(explored) == 30 and not any(c["served"] for c in explored)
    (second,), _ = routers(store, path)  # 30 new examples >= retrain_share 0.2 of 100: a new version
    assert second.verification["examples"] == 130 and second.payload["retrain_of"] == first.id


def test_router_embeds_like_the_steps_semantic_cache_unless_told(project):
    from engine.promotion.router_proposal import route_settings

    src = ("name: t\ninputs: {text: {type: string}}\nsteps:\n  - id: c\n    inputs: {text: \"{{ inputs.text }}\"}\n"
           "    llm:\n      tier: %s\n      prompt: \"{{ text }}\"\n      schema: {type: object}\n      max_tokens: 5\n%s")
    cases = [("auto", "      cache: {semantic: {embedder: static}}\n", "static"),
             ("auto", "      cache: {semantic: {embedder: static}}\n      route: {embedder: minilm}\n", "minilm"),
             ("auto", "", "hash"), ("local", "", None), ("local", "      route: {enabled: false}\n", None)]
    for tier, extra, embedder in cases:
        settings = route_settings(load_workflow(project(src % (tier, extra))).step("c").llm)
        assert (settings.embedder if settings is not None else None) == embedder, (tier, extra)
