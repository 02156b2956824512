"""The `classifier` artifact kind: trained on trusted pairs only, calibrated abstention, review,
shadow, spot checks and demotion, retraining as a new version, plain-JSON storage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from engine import load_workflow, run_workflow
from engine.cache.embedders import get_embedder
from engine.cli import cli
from engine.promotion import records, review
from engine.promotion.artifacts import load_artifacts, promotions_dir
from engine.promotion.classifier import ClassifierModel, calibrate, closed_schema, train_classifier
from engine.promotion.proposals import propose_promotions
from engine.quality.feedback import give_feedback
from engine.store import promotions as promotion_store

from classifier_helpers import phrasings, topic_of, topic_workflow


@pytest.fixture
def topics(fake):
    fake.responder = topic_of
    return fake


def _log(path, texts):
    for text in texts:
        run_workflow(path, {"text": text})


def _proposed_classifier(path, store):
    report = propose_promotions(load_workflow(path), store, scripts=False)
    found = [p for p in report.proposed + report.unverified if p.kind == "classifier"]
    return found[0] if found else None, report


def test_closed_schema():
    assert closed_schema({"type": "object", "properties": {"a": {"enum": ["x", "y"]}, "b": {"type": "boolean"}}})
    assert closed_schema({"enum": [1, 2]})
    assert not closed_schema({"type": "object", "properties": {"a": {"type": "string"}}})
    assert not closed_schema({"type": "string"})


def test_calibrate_picks_the_lowest_threshold_meeting_precision():
    probs = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 1, 0, 1, 1], dtype=float)
    assert calibrate(probs, correct, 1.0, min_served=1) == 0.9
    assert calibrate(probs, correct, 0.8, min_served=1) == 0.6  # 5/6 = 0.83
    assert calibrate(probs, correct, 1.0, min_served=4) is None  # 3 answers at 100% are too few
    assert calibrate(np.array([0.9, 0.9]), np.array([1.0, 0.0]), 0.99, min_served=1) is None  # ties serve together
    assert calibrate(np.array([0.9]), np.array([0.0]), 0.5, min_served=1) is None


def test_trained_model_round_trips_through_plain_json():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8))
    vectors = np.vstack([centers[i % 3] + 0.05 * rng.normal(size=8) for i in range(150)]).astype(np.float32)
    answers = [{"k": "abc"[i % 3]} for i in range(150)]
    lookup = {f"t{i}": vectors[i] for i in range(150)}
    result = train_classifier([f"t{i}" for i in range(150)], answers, lambda ts: np.vstack([lookup[t] for t in ts]),
                              embedder="test")
    assert result.model is not None and result.report["held_out"]["precision"] == 1.0
    text = json.dumps(result.model.to_dict())
    again = ClassifierModel.from_dict(json.loads(text))
    assert [a for a, _ in again.decide(vectors[:6])] == answers[:6]
    bad = json.loads(text)
    bad["coef"] = bad["coef"][:-1]
    with pytest.raises(Exception, match="malformed"):
        ClassifierModel.from_dict(bad)


def test_calibration_is_cross_fitted_and_the_served_model_sees_every_pair(monkeypatch):
    """Five folds dealt per answer, three deals: every pair gets an out-of-fold confidence per deal
    (the threshold is calibrated on all of them together, the report judges each fold of the first
    deal with a threshold from its other folds) and the served model is fitted on every pair."""
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 8))
    n = 200
    which = [i % 4 for i in range(n)]
    vectors = np.vstack([centers[c] + 0.6 * rng.normal(size=8) for c in which]).astype(np.float32)
    lookup = {f"t{i}": vectors[i] for i in range(n)}
    fits: list[int] = []

    def embed(ts):
        return np.vstack([lookup[t] for t in ts])

    import engine.promotion.classifier as classifier_module

    real_fit = classifier_module._fit

    def counting_fit(x, labels, c, seed):
        fits.append(len(labels))
        return real_fit(x, labels, c, seed)

    real_calibrate = classifier_module.calibrate
    calibrated: list[int] = []

    def counting_calibrate(conf, correct, target, min_served=classifier_module.MIN_SERVED):
        calibrated.append(len(conf))
        return real_calibrate(conf, correct, target, min_served)

    deals: list[list[list[int]]] = []
    real_folds = classifier_module._folds

    def recording_folds(keys, k, seed):
        deals.append(real_folds(keys, k, seed))
        return deals[-1]

    monkeypatch.setattr(classifier_module, "_fit", counting_fit)
    monkeypatch.setattr(classifier_module, "calibrate", counting_calibrate)
    monkeypatch.setattr(classifier_module, "_folds", recording_folds)
    result = train_classifier([f"t{i}" for i in range(n)], ["abcd"[c] for c in which], embed, embedder="test")
    # three deals of five fold fits on 4/5 of the pairs, then the served model on all
    assert fits == [160] * 15 + [200]
    assert len(deals) == 3 and deals[0] != deals[1] != deals[2]
    assert all(sorted(i for f in deal for i in f) == list(range(n)) for deal in deals)
    # the served threshold pools the three deals; the report's five use the first deal's other folds
    assert calibrated == [3 * n] + [4 * n // 5] * 5
    report = result.report
    assert report["folds"] == 5 and report["repeats"] == 3 and report["calibration_pairs"] == 3 * n
    assert report["held_out"]["pairs"] == n and report["calibration"]["pairs"] == n
    assert result.model is not None and result.model.meta["fit_pairs"] == n
    assert report["calibration"]["precision"] >= 0.99
    # the held-out figures are what the cross-fitted procedure served, fold by fold
    assert 0 < report["held_out"]["coverage"] <= 1 and report["held_out"]["served"] > 0


def test_margin_score_abstains_on_a_close_runner_up_and_old_files_read_as_top():
    """The threshold applies to the top probability's lead over the runner-up (the default score):
    a top answer at 0.50 with the runner-up at 0.45 abstains where a top-probability rule serves it."""
    coef = np.eye(3, dtype=np.float32)
    close = np.log(np.array([[0.50, 0.45, 0.05]], dtype=np.float32))  # softmax of these logits: the same row
    clear = np.log(np.array([[0.50, 0.10, 0.40]], dtype=np.float32))
    margin = ClassifierModel(labels=["a", "b", "c"], coef=coef, intercept=np.zeros(3, dtype=np.float32),
                             threshold=0.08, embedder="test", score="margin")
    assert margin.decide(close)[0][0] is None
    answer, prob = margin.decide(clear)[0]
    assert answer == "a" and prob == pytest.approx(0.5, abs=1e-5)
    top = ClassifierModel(labels=["a", "b", "c"], coef=coef, intercept=np.zeros(3, dtype=np.float32),
                          threshold=0.08, embedder="test", score="top")
    assert top.decide(close)[0][0] == "a"
    old = margin.to_dict()
    assert old["score"] == "margin" and ClassifierModel.from_dict(old).score == "margin"
    del old["score"]
    assert ClassifierModel.from_dict(old).score == "top"
    with pytest.raises(Exception, match="score 'entropy'"):
        ClassifierModel.from_dict({**old, "score": "entropy"})


def test_classifier_serves_new_phrasings_after_review(project, topics, store):
    path = topic_workflow(project)
    history, new = phrasings(200, seed=1)[:120], phrasings(300, seed=2)[200:]
    _log(path, history)
    promotion, report = _proposed_classifier(path, store)
    assert promotion is not None and promotion.status == "proposed", report.notes
    v = promotion.verification
    assert v["pairs"] == 120 and v["labels"] == 3 and v["evidence"] == "trusted"
    assert v["held_out"]["precision"] >= 0.99 and v["held_out"]["coverage"] > 0.5
    shown = CliRunner().invoke(cli, ["promotions", "show", promotion.id])
    assert shown.exit_code == 0, shown.output
    assert "held-out" in shown.output and "precision" in shown.output and "confusion summary" in shown.output
    assert "classifier.v1.json" in shown.output  # the diff of accepting
    _review_console_shows(path, store, promotion)
    review.accept(store, promotion.id)
    art = next(a for a in load_artifacts(promotions_dir(path, "topics")) if a.kind == "classifier")
    assert json.loads(art.path.read_text())["format"] == "engine.classifier/1"  # plain JSON, nothing pickled
    before = len(topics.requests)
    outs = [run_workflow(path, {"text": t}) for t in new]
    served = [(o, t) for o, t in zip(outs, new) if o.step("classify").served_by == "classifier"]
    assert len(served) >= 0.5 * len(new)
    assert all(o.step("classify").tokens_in == 0 for o, _ in served)
    # the classifier's top probability is the served step's confidence (kept in the run log)
    model = ClassifierModel.from_dict(promotion.payload["model"])
    for o, text in served[:5]:
        (prob,) = model.probabilities(get_embedder("hash").embed([text])).max(axis=1)
        assert o.step("classify").confidence == pytest.approx(float(prob), abs=1e-6)
    right = sum(o.outputs["classify"] == topic_of_text(t) for o, t in served)
    assert right >= 0.97 * len(served)
    assert len(topics.requests) == before + len(new) - len(served)  # the rest fell through to the tiers


def _review_console_shows(path, store, promotion):
    """The review console's list and detail pages give the classifier's own figures (not a script's)."""
    from fastapi.testclient import TestClient

    from engine import Engine
    from engine.http import create_app

    client = TestClient(create_app(Engine(), [path], console_store=store), follow_redirects=False,
                        base_url="http://localhost")
    v = promotion.verification
    held = f"held-out precision {v['held_out']['precision']:.1%}"
    listing = client.get("/ui/proposals?kind=classifier")
    assert listing.status_code == 200 and promotion.id in listing.text and held in listing.text
    page = client.get(f"/ui/proposals/{promotion.id}")
    assert page.status_code == 200, page.text
    text = page.text
    assert held in text and 'id="held-out"' in text and 'id="confusion"' in text
    assert f"{promotion.payload['model']['threshold']:.4f}" in text and "lead over the runner-up" in text
    assert "3 deals" in text and "<h2>Code</h2>" not in text and "examples shown to the writer" not in text.lower()
    for topic in ("card", "transfer", "refund"):
        assert f"&#34;{topic}&#34;" in text or f'"{topic}"' in text  # each answer's confusion row


def topic_of_text(text):
    from engine.providers.base import CompletionRequest

    return topic_of(CompletionRequest(model="x", messages=[{"role": "user", "content": "Topic of: " + text}],
                                      max_tokens=1))


def test_only_trusted_evidence_trains(project, topics, store):
    """Without a reference tier the cheap tier's answers are unverified: no classifier; labels are."""
    path = topic_workflow(project)
    path.write_text(path.read_text().replace("quality: {reference: local}", "quality: {}"))
    texts = phrasings(80, seed=3)
    outs = [run_workflow(path, {"text": t}) for t in texts]
    promotion, report = _proposed_classifier(path, store)
    assert promotion is None
    assert any("no trusted evidence" in n for n in report.notes)
    for out, text in zip(outs[:70], texts):
        give_feedback(store, out.run_id, "classify", output=topic_of_text(text))
    promotion, report = _proposed_classifier(path, store)
    assert promotion is not None and promotion.verification["pairs"] == 70
    assert promotion.verification["trust"]["labelled"] == 70


def test_too_few_pairs_and_uncalibratable_are_not_proposed(project, topics, store):
    path = topic_workflow(project, min_pairs=100)
    _log(path, phrasings(40, seed=4))
    promotion, report = _proposed_classifier(path, store)
    assert promotion is None and any("need promote.classifier.min_pairs = 100" in n for n in report.notes)
    path2 = topic_workflow(project, min_pairs=30, extra=", target_precision: 1.0")
    topics.responder = lambda r: {"topic": ["card", "transfer", "refund"][len(r.messages[-1]["content"]) % 3]}
    _log(path2, phrasings(60, seed=5))  # labels that are noise: nothing reaches 100% precision
    promotion, report = _proposed_classifier(path2, store)
    assert promotion is not None and promotion.status == "unverified" and "no threshold" in promotion.reason
    again, report = _proposed_classifier(path2, store)
    assert again is None and any("failed calibration" in n for n in report.notes)


def test_retrained_as_new_version_when_new_trusted_evidence_arrives(project, topics, store):
    path = topic_workflow(project, extra=", retrain_share: 0.5")
    _log(path, phrasings(80, seed=6))
    first, _ = _proposed_classifier(path, store)
    review.accept(store, first.id)
    # new trusted evidence: the classifier's abstentions (the reference answers) and spot checks
    path.write_text(path.read_text().replace("spot_check: 0", "spot_check: 1.0"))
    _log(path, phrasings(110, seed=7)[80:])  # 30 new pairs < 50% of 80
    again, report = _proposed_classifier(path, store)
    assert again is None and any("is current" in n and "needs 40" in n for n in report.notes)
    _log(path, phrasings(130, seed=8)[110:])  # 50 new pairs in all (minus any repeats)
    second, report = _proposed_classifier(path, store)
    assert second is not None and second.status == "proposed", report.notes
    assert second.payload["retrain_of"] == first.id
    review.accept(store, second.id)
    assert records.get(store, first.id).status == "superseded"
    assert records.get(store, second.id).version == 2
    directory = promotions_dir(path, "topics")
    assert (directory / "classify.classifier.v2.json").is_file()
    (art,) = [a for a in load_artifacts(directory) if a.kind == "classifier"]
    assert art.version == 2 and art.model.meta["trained_pairs"] == second.verification["pairs"]


def test_shadow_and_spot_check_demotion(project, topics, store):
    path = topic_workflow(project, spot=0)
    _log(path, phrasings(100, seed=9))
    promotion, _ = _proposed_classifier(path, store)
    review.set_shadow(store, promotion.id)
    new = phrasings(160, seed=10)[100:]
    outs = [run_workflow(path, {"text": t}) for t in new[:20]]
    assert all(o.step("classify").served_by == "llm" for o in outs)  # shadow changes nothing
    shadow = promotion_store.check_stats(store, promotion.id)["shadow"]
    assert shadow["checks"] >= 10 and shadow["agree"] >= shadow["checks"] - 1
    review.accept(store, promotion.id)
    path.write_text(path.read_text().replace("spot_check: 0", "spot_check: 1.0"))
    topics.responder = lambda r: {"topic": "refund"}  # the reference drifts: every spot check disagrees
    for text in new[20:]:
        run_workflow(path, {"text": text})
        if records.get(store, promotion.id).status == "demoted":
            break
    demoted = records.get(store, promotion.id)
    assert demoted.status == "demoted" and "spot checks disagreed" in demoted.reason
    before = len(topics.requests)
    assert run_workflow(path, {"text": new[-1]}).step("classify").served_by == "llm"
    assert len(topics.requests) == before + 1


def test_an_edited_artifact_that_is_not_a_classifier_is_never_served(project, topics, store):
    path = topic_workflow(project)
    _log(path, phrasings(80, seed=11))
    promotion, _ = _proposed_classifier(path, store)
    review.accept(store, promotion.id)
    file = promotions_dir(path, "topics") / "classify.classifier.v1.json"
    data = json.loads(file.read_text())
    data["coef"] = "__import__('os').system('true')"
    file.write_text(json.dumps(data))
    (art,) = [a for a in load_artifacts(promotions_dir(path, "topics")) if a.kind == "classifier"]
    assert art.refused and art.model is None
    assert run_workflow(path, {"text": phrasings(81, seed=11)[-1]}).step("classify").served_by == "llm"
