"""Distilled classifiers: sentence embeddings plus a multinomial logistic regression that abstains.

For an llm step whose output is a closed set (`closed_schema`: enums, booleans, consts), the
trusted pairs (`engine.promotion.training`) teach a classifier that can answer *new phrasings*,
which lookups cannot. It serves only when its confidence clears a threshold calibrated on held-out
trusted pairs so that precision there is at least `target_precision`; below it the request falls
through to the cache and the tiers.

Confidence (`score`):
    margin        the top answer's probability minus the runner-up's (the default)
    top           the top answer's probability
On BANKING77 (all-MiniLM-L6-v2, C = 10) the margin ranks right answers above wrong ones better: with
the test labels in hand, the best threshold at 99% precision serves 77.0% of the test split by
margin against 75.4% by top probability. Calibrated as below (4 seeds, 3 deals each), the margin
served 75.7 to 76.2% of the test split at 99.10 to 99.11% precision; the top probability served
75.2 to 75.6% at 98.97 to 99.01%, and with one deal 74.4 to 76.9% at 98.85 to 99.13%
(`examples/benchmarks/classifier_calibration.py`).

Training (`train_classifier`): cross-fitting over k folds (k = round(1 / `held_out`): 5 folds at
the default 0.2), dealt per answer from a seeded shuffle so every fold holds each answer's share,
repeated `repeats` times with a different deal each time:
    out-of-fold   each fold's pairs are scored by a model fitted on the other folds, so every pair
                  gets a confidence from a model that never saw it, once per repeat
    threshold     calibrated on every repeat's out-of-fold confidences together: the lowest
                  confidence at which the answers at or above it are still `target_precision`
                  precise (pooling repeats steadies it: with one deal the served share on
                  BANKING77's test split moved between 74.4% and 76.9% with the seed)
    report        the first repeat's folds, each judged at the threshold calibrated on the *other*
                  folds' out-of-fold confidences (so neither its fit nor its threshold saw it):
                  held-out precision, coverage and a confusion summary for review (an estimate of
                  the procedure, not of the exact weights served)
    served model  fitted on every pair, with the calibrated threshold

Stored as plain JSON (`ClassifierModel.to_dict`): labels (the answers), coefficients, intercepts,
threshold, score, embedder name. Loading parses numbers and checks shapes; nothing executable is
loaded and scikit-learn is needed only to train (serving is a matrix product and a softmax in numpy).
A file without `score` (written before it existed) is read as `top`.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from engine.errors import ConfigError
from engine.hashing import canonical_json
from engine.quality.logistic import fit_logistic

FORMAT = "engine.classifier/1"
SCORES = ("margin", "top")
"""How confidence is read from a row of probabilities (see the module docstring)."""


def closed_schema(schema: Any) -> bool:
    """The step's answers form a small closed set: an enum/const/boolean, or an object whose
    properties all are (and that allows no others)."""
    if not isinstance(schema, dict):
        return False
    if "enum" in schema or "const" in schema or schema.get("type") == "boolean":
        return True
    props = schema.get("properties")
    if schema.get("type") == "object" and isinstance(props, dict) and props:
        return all(closed_schema(p) for p in props.values())
    return False


class ClassifierFormatError(ConfigError):
    """A classifier file that is not a well-formed engine classifier."""


@dataclass
class ClassifierModel:
    labels: list[Any]
    """The answers, one per class (the step's outputs, as JSON values)."""
    coef: np.ndarray
    """(classes, dims) float32."""
    intercept: np.ndarray
    """(classes,) float32."""
    threshold: float
    embedder: str
    input: str | None = None
    target_precision: float = 0.99
    meta: dict[str, Any] = field(default_factory=dict)
    score: str = "top"
    """What `threshold` is compared with: `margin` or `top` (SCORES)."""

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        return _softmax(np.asarray(vectors, dtype=np.float32) @ self.coef.T + self.intercept)

    def decide(self, vectors: np.ndarray) -> list[tuple[Any, float]]:
        """(answer or None when it abstains, top probability) per row."""
        probs = self.probabilities(vectors)
        top = probs.argmax(axis=1)
        served = confidence(probs, self.score) >= self.threshold
        return [(self.labels[int(i)] if served[r] else None, float(probs[r, i])) for r, i in enumerate(top)]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "embedder": self.embedder, "input": self.input, "score": self.score,
                "threshold": self.threshold, "target_precision": self.target_precision,
                "labels": self.labels, "intercept": [_num(x) for x in self.intercept.tolist()],
                "coef": [[_num(x) for x in row] for row in self.coef.tolist()], "meta": self.meta}

    @classmethod
    def from_dict(cls, data: Any) -> ClassifierModel:
        """Parse a stored classifier: plain numbers and labels only, shapes checked."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ClassifierFormatError(f"not an engine classifier (format must be '{FORMAT}')")
        try:
            labels = list(data["labels"])
            coef = np.asarray(data["coef"], dtype=np.float32)
            intercept = np.asarray(data["intercept"], dtype=np.float32)
            threshold = float(data["threshold"])
            embedder = str(data["embedder"])
            score = str(data.get("score", "top"))
        except (KeyError, TypeError, ValueError) as e:
            raise ClassifierFormatError(f"malformed classifier: {e}") from None
        if (coef.ndim != 2 or coef.shape[0] != len(labels) or intercept.shape != (len(labels),) or len(labels) < 2
                or not np.isfinite(coef).all() or not np.isfinite(intercept).all() or not 0 <= threshold <= 1
                or score not in SCORES):
            raise ClassifierFormatError(f"malformed classifier: {len(labels)} labels, coef {coef.shape}, "
                                        f"intercept {intercept.shape}, threshold {threshold}, score '{score}'")
        return cls(labels=labels, coef=coef, intercept=intercept, threshold=threshold, embedder=embedder, score=score,
                   input=data.get("input"), target_precision=float(data.get("target_precision", 0.99)),
                   meta=dict(data.get("meta") or {}))


def _num(x: float) -> float:
    return float(f"{x:.6g}")


MIN_SERVED = 10
"""A threshold must serve at least this many calibration pairs (one lucky answer proves nothing)."""


def calibrate(top_prob: np.ndarray, correct: np.ndarray, target: float, min_served: int = MIN_SERVED) -> float | None:
    """The lowest threshold t such that the answers with probability >= t are at least `target`
    precise (most coverage at that precision) and number at least `min_served`; None when there is
    no such threshold."""
    if len(top_prob) == 0:
        return None
    order = np.argsort(-top_prob, kind="stable")
    probs = top_prob[order]
    precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    # only the end of a run of tied probabilities is a possible cut: `>= t` serves the whole run
    ends = np.append(probs[1:] != probs[:-1], True)
    ok = np.nonzero(ends & (precision >= target) & (np.arange(1, len(order) + 1) >= min_served))[0]
    return float(probs[ok[-1]]) if len(ok) else None


def confidence(probs: np.ndarray, score: str) -> np.ndarray:
    """Each row's confidence in its top answer: its probability (`top`) or its lead over the
    runner-up (`margin`)."""
    if score == "top" or probs.shape[1] < 2:
        return probs.max(axis=1)  # type: ignore[no-any-return]
    if score != "margin":
        raise ValueError(f"unknown classifier score '{score}' (one of {', '.join(SCORES)})")
    two = np.partition(probs, -2, axis=1)[:, -2:]
    return two[:, 1] - two[:, 0]  # type: ignore[no-any-return]


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _judge(probs: np.ndarray, keys: list[str], expected: list[str], thresholds: np.ndarray,
           score: str) -> dict[str, Any]:
    """Precision on what was served (confidence at or above the row's threshold), coverage,
    accuracy had it never abstained, and a confusion summary (per label, and the most frequent
    confusions). `keys`: the canonical answer of each probability column."""
    top = probs.argmax(axis=1)
    predicted = [keys[int(i)] for i in top]
    served = confidence(probs, score) >= thresholds if len(top) else np.zeros(0, dtype=bool)
    n = len(expected)
    n_served = int(served.sum())
    correct_served = sum(1 for i in range(n) if served[i] and predicted[i] == expected[i])
    per_label: dict[str, dict[str, int]] = {}
    confusions: Counter[tuple[str, str]] = Counter()
    for i in range(n):
        row = per_label.setdefault(expected[i], {"support": 0, "served": 0, "correct": 0, "predicted_as": 0})
        row["support"] += 1
        if served[i]:
            row["served"] += 1
            per_label.setdefault(predicted[i], {"support": 0, "served": 0, "correct": 0, "predicted_as": 0})
            per_label[predicted[i]]["predicted_as"] += 1
            if predicted[i] == expected[i]:
                row["correct"] += 1
            else:
                confusions[(expected[i], predicted[i])] += 1
    return {"pairs": n, "served": n_served, "correct": correct_served,
            "precision": correct_served / n_served if n_served else 0.0,
            "coverage": n_served / n if n else 0.0,
            "accuracy_without_abstaining": sum(1 for i in range(n) if predicted[i] == expected[i]) / n if n else 0.0,
            "per_label": {k: per_label[k] for k in sorted(per_label)},
            "confusions": [{"expected": e, "got": g, "n": c} for (e, g), c in confusions.most_common(10)]}


@dataclass
class TrainResult:
    model: ClassifierModel | None
    """None when no threshold reaches the target precision on the calibration pairs."""
    report: dict[str, Any]
    reason: str | None = None


def _fit(vectors: np.ndarray, labels: list[str], c: float, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    clf = fit_logistic(vectors, labels, c, seed, "a classifier")
    classes = [str(x) for x in clf.classes_]
    coef = np.asarray(clf.coef_, dtype=np.float32)
    intercept = np.asarray(clf.intercept_, dtype=np.float32)
    if len(classes) == 2 and coef.shape[0] == 1:  # binary: softmax over (-z/2, z/2) is sigmoid(z)
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2], dtype=np.float32)
    return classes, coef, intercept


def _folds(keys: list[str], k: int, seed: int) -> list[list[int]]:
    """k folds dealt answer by answer from a seeded shuffle (each fold holds each answer's share)."""
    order = list(range(len(keys)))
    random.Random(seed).shuffle(order)
    folds: list[list[int]] = [[] for _ in range(k)]
    for dealt, (_, idx) in enumerate(sorted(((keys[i], i) for i in order), key=lambda t: t[0])):
        folds[dealt % k].append(idx)
    return [sorted(f) for f in folds if f]


def _complements(folds: list[list[int]]) -> list[list[int]]:
    """Each fold's complement: the pairs of the other folds."""
    return [[i for f, other in enumerate(folds) if f != j for i in other] for j in range(len(folds))]


def _out_of_fold(vectors: np.ndarray, keys: list[str], classes: list[str], folds: list[list[int]],
                 others: list[list[int]], c: float, seed: int) -> np.ndarray:
    """Every pair's probabilities over every answer from a model fitted on the other folds
    (`others`: each fold's complement; an answer a fold's fit never saw scores 0)."""
    column = {k: j for j, k in enumerate(classes)}
    oof = np.zeros((len(keys), len(classes)), dtype=np.float64)
    for fold, fit_idx in zip(folds, others):
        fit_keys = [keys[i] for i in fit_idx]
        if len(set(fit_keys)) < 2:
            oof[fold, column[fit_keys[0]] if fit_keys else 0] = 1.0
            continue
        fold_classes, coef, intercept = _fit(vectors[fit_idx], fit_keys, c, seed)
        oof[np.ix_(fold, [column[x] for x in fold_classes])] = _softmax(vectors[fold] @ coef.T + intercept)
    return oof


def train_classifier(texts: Sequence[str], answers: Sequence[Any], embed: Callable[[list[str]], np.ndarray],
                     *, embedder: str, input_field: str | None = None, target_precision: float = 0.99,
                     c: float = 10.0, held_out: float = 0.2, score: str = "margin", repeats: int = 3,
                     seed: int = 0) -> TrainResult:
    """Train on (text, answer) pairs; see the module docstring for the folds and repeats."""
    if score not in SCORES:
        raise ValueError(f"unknown classifier score '{score}' (one of {', '.join(SCORES)})")
    keys = [canonical_json(a) for a in answers]
    by_key = {k: a for k, a in zip(keys, answers)}
    if len(by_key) < 2:
        return TrainResult(None, {"pairs": len(keys)}, "fewer than two distinct answers: nothing to classify")
    vectors = np.asarray(embed(list(texts)), dtype=np.float32)
    classes = sorted(by_key)
    k = max(2, min(round(1 / held_out), len(keys)))
    deals = [_folds(keys, k, seed + r) for r in range(max(1, repeats))]
    complements = [_complements(folds) for folds in deals]
    oofs = [_out_of_fold(vectors, keys, classes, folds, others, c, seed)
            for folds, others in zip(deals, complements)]
    conf = [confidence(oof, score) for oof in oofs]
    correct = [np.array([classes[int(t)] == key for t, key in zip(oof.argmax(axis=1), keys)], dtype=np.float64)
               for oof in oofs]
    report: dict[str, Any] = {"pairs": len(keys), "labels": len(by_key), "folds": len(deals[0]),
                              "repeats": len(deals), "calibration_pairs": len(keys) * len(deals),
                              "target_precision": target_precision, "C": c, "score": score,
                              "embedder": embedder, "seed": seed,
                              "label_counts": dict(sorted(Counter(keys).items()))}
    threshold = calibrate(np.concatenate(conf), np.concatenate(correct), target_precision)
    if threshold is None:
        return TrainResult(None, report, f"no threshold reaches {target_precision:.1%} precision on the "
                                         f"{len(keys)} pairs' out-of-fold answers")
    # the report: the first deal's folds, each at the threshold its other folds calibrate
    folds, first, ok = deals[0], conf[0], correct[0]
    thresholds = np.ones(len(keys))
    for fold, rest_idx in zip(folds, complements[0]):
        rest = np.array(rest_idx, dtype=np.int64)
        t = calibrate(first[rest], ok[rest], target_precision)
        thresholds[fold] = np.inf if t is None else t
    report["held_out"] = _judge(oofs[0], classes, keys, thresholds, score)
    report["report_pairs"] = len(keys)
    report["threshold"] = threshold
    report["calibration"] = _judge(oofs[0], classes, keys, np.full(len(keys), threshold), score)
    fitted_classes, coef, intercept = _fit(vectors, keys, c, seed)
    final = ClassifierModel(labels=[by_key[x] for x in fitted_classes], coef=coef, intercept=intercept,
                            threshold=threshold, embedder=embedder, input=input_field,
                            target_precision=target_precision, score=score)
    final.meta = {"trained_pairs": len(keys), "fit_pairs": len(keys), "folds": len(folds), "repeats": len(deals),
                  "held_out": {x: report["held_out"][x] for x in ("precision", "coverage", "pairs")}}
    return TrainResult(final, report)
