"""A learned router: before any call, predict from the input's embedding whether the cheapest tier's
answer will agree with the reference, and send the input straight to the next tier when it will
probably not (no cheap call is made then).

Evidence (`engine.promotion.router_proposal`): the step's own inputs where the cheapest tier's
answer was compared with the reference (reference checks, sampled or escalated) or with a person's
label; each is one example, labelled agree or disagree.

Training (`train_router`): a binary logistic regression on the embeddings, P(agree | input).
    out of fold   the examples are dealt into k folds (agree and disagree dealt separately, so
                  each fold holds its share of both); each fold is scored by a model fitted on the
                  others, so every example gets a probability from a model that never saw it
    threshold     the lowest probability t at which the examples at or above it agree at least
                  `target_agreement` and number at least `MIN_ROUTED` (most coverage at the target)
    held out      each fold judged at the threshold calibrated on the *other* folds' out-of-fold
                  probabilities: the agreement and coverage the procedure achieves on examples
                  neither its fit nor its threshold saw. When that agreement misses the target, or
                  no threshold exists, the router has learnt that the evidence holds no usable
                  signal: it routes every input up (`threshold` None). A router that routes
                  everything up is still worth serving: it saves the cheap call and its latency.
    served model  fitted on every example, with the calibrated threshold

Serving (`RouterModel.route`) is an embedding, a dot product and a sigmoid: with the `hash`
embedder well under a millisecond on CPU (examples/benchmarks/router.py measures it). Stored as
plain JSON (`RouterModel.to_dict`); scikit-learn is needed only to train.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from engine.errors import ConfigError
from engine.quality.logistic import fit_logistic

FORMAT = "engine.router/1"
MIN_ROUTED = 20
"""A threshold must send at least this many examples to the cheap tier (a short lucky run proves nothing)."""
CHEAP, UP = "cheap", "up"


class RouterFormatError(ConfigError):
    """A router file that is not a well-formed engine router."""


@dataclass
class RouterModel:
    coef: np.ndarray
    """(dims,) float32."""
    intercept: float
    threshold: float | None
    """P(agree) at or above which an input goes to the cheap tier; None: every input goes up."""
    embedder: str
    cheap_tier: str
    input: str | None = None
    target_agreement: float = 0.98
    meta: dict[str, Any] = field(default_factory=dict)

    def probability(self, vectors: np.ndarray) -> np.ndarray:
        z = np.asarray(vectors, dtype=np.float32) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))  # type: ignore[no-any-return]

    def decide(self, probability: float) -> str:
        return CHEAP if self.threshold is not None and probability >= self.threshold else UP

    def route(self, values: dict[str, Any]) -> tuple[str, float]:
        """(`cheap` or `up`, P(agree)) for one input (embedded with the model's embedder)."""
        if self.threshold is None:
            return UP, 0.0  # no signal: nothing to embed
        from engine.cache.embedders import get_embedder

        vector = get_embedder(self.embedder).embed([input_text(values, self.input)])
        p = float(self.probability(vector)[0])
        return self.decide(p), p

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "embedder": self.embedder, "cheap_tier": self.cheap_tier, "input": self.input,
                "threshold": self.threshold, "target_agreement": self.target_agreement, "meta": self.meta,
                "intercept": [_num(self.intercept)], "coef": [[_num(x) for x in self.coef.tolist()]]}

    @classmethod
    def from_dict(cls, data: Any) -> RouterModel:
        """Parse a stored router: plain numbers only, shapes checked."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RouterFormatError(f"not an engine router (format must be '{FORMAT}')")
        try:
            coef = np.asarray(data["coef"], dtype=np.float32)
            intercept = np.asarray(data["intercept"], dtype=np.float32)
            raw = data.get("threshold")
            threshold = None if raw is None else float(raw)
            embedder, cheap = str(data["embedder"]), str(data["cheap_tier"])
        except (KeyError, TypeError, ValueError) as e:
            raise RouterFormatError(f"malformed router: {e}") from None
        if (coef.ndim != 2 or coef.shape[0] != 1 or intercept.shape != (1,) or not np.isfinite(coef).all()
                or not np.isfinite(intercept).all() or (threshold is not None and not 0 <= threshold <= 1)):
            raise RouterFormatError(f"malformed router: coef {coef.shape}, intercept {intercept.shape}, "
                                    f"threshold {threshold}")
        return cls(coef=coef[0], intercept=float(intercept[0]), threshold=threshold, embedder=embedder,
                   cheap_tier=cheap, input=data.get("input"),
                   target_agreement=float(data.get("target_agreement", 0.98)), meta=dict(data.get("meta") or {}))


def input_text(values: dict[str, Any], field_name: str | None = None) -> str:
    """The text a router embeds: the named input, the only input, or one `name: value` line per
    input (sorted by name); the same text the classifiers read (`engine.promotion.training`)."""
    def text(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)

    if field_name is not None:
        return text(values.get(field_name, ""))
    if len(values) == 1:
        return text(next(iter(values.values())))
    return "\n".join(f"{k}: {text(values[k])}" for k in sorted(values))


def _num(x: float) -> float:
    return float(f"{x:.6g}")


def calibrate(prob: np.ndarray, agree: np.ndarray, target: float, min_routed: int = MIN_ROUTED) -> float | None:
    """The lowest threshold t such that the examples with probability >= t agree at least `target`
    and number at least `min_routed`; None when there is no such threshold."""
    if len(prob) == 0:
        return None
    order = np.argsort(-prob, kind="stable")
    p = prob[order]
    rate = np.cumsum(agree[order]) / np.arange(1, len(order) + 1)
    ends = np.append(p[1:] != p[:-1], True)  # `>= t` routes a whole run of ties together
    ok = np.nonzero(ends & (rate >= target) & (np.arange(1, len(order) + 1) >= min_routed))[0]
    return float(p[ok[-1]]) if len(ok) else None


def _fit(vectors: np.ndarray, agree: np.ndarray, c: float, seed: int) -> tuple[np.ndarray, float]:
    """(coef, intercept) of P(agree); a constant model when one class is missing."""
    if agree.min() == agree.max():
        rate = float(agree[0])
        return np.zeros(vectors.shape[1], dtype=np.float32), 50.0 if rate else -50.0
    clf = fit_logistic(vectors, agree.astype(int), c, seed, "a router")
    return np.asarray(clf.coef_[0], dtype=np.float32), float(clf.intercept_[0])


def _folds(agree: np.ndarray, k: int, seed: int) -> list[list[int]]:
    order = list(range(len(agree)))
    random.Random(seed).shuffle(order)
    folds: list[list[int]] = [[] for _ in range(k)]
    for dealt, idx in enumerate(sorted(order, key=lambda i: agree[i])):  # stable: shuffled within a class
        folds[dealt % k].append(idx)
    return [sorted(f) for f in folds if f]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))  # type: ignore[no-any-return]


@dataclass
class TrainResult:
    model: RouterModel
    report: dict[str, Any]
    reason: str | None = None
    """Why every input goes up (no usable signal), else None."""


def train_router(texts: Sequence[str], agree: Sequence[bool], embed: Callable[[list[str]], np.ndarray], *,
                 embedder: str, cheap_tier: str, input_field: str | None = None, target_agreement: float = 0.98,
                 c: float = 1.0, folds: int = 5, seed: int = 0) -> TrainResult:
    """Train on (text, the cheap tier agreed) examples; see the module docstring."""
    y = np.asarray([1.0 if a else 0.0 for a in agree])
    n = len(y)
    vectors = np.asarray(embed(list(texts)), dtype=np.float32)
    k = max(2, min(folds, n))
    deal = _folds(y, k, seed)
    oof = np.zeros(n)
    others = [np.setdiff1d(np.arange(n), fold) for fold in deal]
    for fold, rest in zip(deal, others):
        coef, intercept = _fit(vectors[rest], y[rest], c, seed)
        oof[fold] = _sigmoid(vectors[fold] @ coef + intercept)
    threshold = calibrate(oof, y, target_agreement)
    routed = agreed = 0
    for fold, rest in zip(deal, others):  # each fold at the threshold the other folds calibrate
        t = calibrate(oof[rest], y[rest], target_agreement, max(1, MIN_ROUTED * (k - 1) // k))
        if t is None:
            continue
        down = [i for i in fold if oof[i] >= t]
        routed += len(down)
        agreed += int(sum(y[i] for i in down))
    held = {"examples": n, "routed_cheap": routed, "coverage": routed / n if n else 0.0,
            "agreement": agreed / routed if routed else None}
    report: dict[str, Any] = {"examples": n, "agree": int(y.sum()), "base_agreement": float(y.mean()) if n else 0.0,
                              "folds": len(deal), "target_agreement": target_agreement, "C": c, "seed": seed,
                              "embedder": embedder, "cheap_tier": cheap_tier, "held_out": held}
    reason = None
    if threshold is None:
        reason = (f"no threshold sends >= {MIN_ROUTED} of the {n} examples to '{cheap_tier}' at "
                  f"{target_agreement:.1%} agreement out of fold: every input goes up")
    elif routed and agreed / routed < target_agreement:
        reason = (f"held out, the inputs it would send to '{cheap_tier}' agree {agreed / routed:.1%} "
                  f"(< {target_agreement:.1%}): no reliable signal, every input goes up")
        threshold = None
    elif not routed:
        reason = "held out, no fold's threshold sends anything down: every input goes up"
        threshold = None
    if threshold is not None:
        report["calibration"] = {"routed_cheap": int((oof >= threshold).sum()),
                                 "agreement": float(y[oof >= threshold].mean())}
    report["threshold"] = threshold
    coef, intercept = _fit(vectors, y, c, seed) if n else (np.zeros(vectors.shape[1], dtype=np.float32), 0.0)
    model = RouterModel(coef=coef, intercept=intercept, threshold=threshold, embedder=embedder, cheap_tier=cheap_tier,
                        input=input_field, target_agreement=target_agreement,
                        meta={"trained_examples": n, "held_out": held, "no_signal": reason is not None})
    return TrainResult(model, report, reason)
