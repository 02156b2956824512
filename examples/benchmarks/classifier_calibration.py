"""Classifier calibration benchmark: which confidence, and how many deals of the folds, on BANKING77.

The distilled classifier (`engine/promotion/classifier.py`) abstains below a threshold calibrated
on cross-fitted out-of-fold answers of the trusted pairs. This compares, with the engine's own
folds, fits and calibration, on the BANKING77 train split (the trusted pairs) and the test split
(new phrasings, never seen in training or calibration):

    score    top: the top answer's probability; margin: its lead over the runner-up's
    deals    1: one deal of 5 folds; R: R deals pooled for the threshold (the engine's default, 3)

Each (score, deals) is calibrated once per seed (a seed changes the deals, not the served model,
which is fitted on every pair). Columns: the share of the test split served and the precision of
what was served, per seed, and the best share any threshold could serve at the target precision
with the test labels in hand (the ranking's ceiling). The design target: >= 75% at >= 99%.

    python examples/benchmarks/classifier_calibration.py [--seeds 0,10,20,30] [--repeats 3]
        [--vectors /tmp/b77_minilm.npz]   # keep the embeddings between runs (13k texts, minutes)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]


def _shown(path: Path) -> str:
    """A path as the result files record it: relative to the repository (no machine's layout)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return "a directory outside the repository"
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"

from engine.hashing import canonical_json  # noqa: E402
from engine.promotion.classifier import (  # noqa: E402
    SCORES, _complements, _fit, _folds, _out_of_fold, _softmax, calibrate, confidence)
from engine.promotion.classifier_proposal import embed_all  # noqa: E402


def read(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def load(args: argparse.Namespace) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    train, test = read(args.data / "train.csv"), read(args.data / "test.csv")
    if args.intents:
        keep = set(sorted({c for _, c in train})[:args.intents])
        train, test = [r for r in train if r[1] in keep], [r for r in test if r[1] in keep]
    if args.train_limit:
        train = train[:args.train_limit]
    if args.test_limit:
        test = test[:args.test_limit]
    return list(dict(train).items()), test  # one pair per distinct text, as the store keeps them


def vectors(args: argparse.Namespace, train: list[str], test: list[str]) -> tuple[np.ndarray, np.ndarray]:
    cache = args.vectors
    if cache and cache.is_file():
        saved = np.load(cache)
        if saved["train"].shape[0] == len(train) and saved["test"].shape[0] == len(test):
            return saved["train"], saved["test"]
    x_train = embed_all(args.embedder, train, label="embedding train")
    x_test = embed_all(args.embedder, test, label="embedding test")
    if cache:
        np.savez(cache, train=x_train, test=x_test)
    return x_train, x_test


def best_share(conf: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The most of the test split any threshold serves at `target` precision (labels in hand)."""
    t = calibrate(conf, correct, target, min_served=1)
    return float((conf >= t).mean()) if t is not None else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "examples" / "benchmarks" / "data" / "banking77")
    ap.add_argument("--seeds", default="0,10,20,30", help="deal seeds (a seed s deals s, s+1, ...: keep them apart)")
    ap.add_argument("--repeats", type=int, default=3, help="deals pooled in the pooled rows")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--C", type=float, default=10.0)
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--embedder", default="minilm")
    ap.add_argument("--vectors", type=Path, default=None, help="an .npz to keep the embeddings in")
    ap.add_argument("--intents", type=int, default=0, help="use only the first N intents (0: all 77)")
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--test-limit", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "classifier_calibration.json")
    args = ap.parse_args()
    console = Console(width=max(Console().width, 130))
    seeds = [int(s) for s in args.seeds.split(",")]
    train, test = load(args)
    keys = [canonical_json(c) for _, c in train]
    expected = [canonical_json(c) for _, c in test]
    classes = sorted(set(keys))
    started = time.perf_counter()
    x_train, x_test = vectors(args, [t for t, _ in train], [t for t, _ in test])
    embed_s = time.perf_counter() - started

    started = time.perf_counter()
    fitted, coef, intercept = _fit(x_train, keys, args.C, 0)  # the served model: every pair, seed-free
    probs = _softmax(x_test @ coef.T + intercept)
    right = np.array([fitted[int(i)] == e for i, e in zip(probs.argmax(axis=1), expected)], dtype=np.float64)
    test_conf = {score: confidence(probs, score) for score in SCORES}
    ceiling = {score: best_share(test_conf[score], right, args.target) for score in SCORES}
    runs: dict[str, list[dict[str, Any]]] = {}
    with console.status("") as status:
        for seed in seeds:
            oofs = []
            for r in range(args.repeats):
                status.update(f"seed {seed}: deal {r + 1}/{args.repeats} ({args.folds} fold fits)")
                folds = _folds(keys, args.folds, seed + r)
                oofs.append(_out_of_fold(x_train, keys, classes, folds, _complements(folds), args.C, 0))
            correct = [np.array([classes[int(t)] == k for t, k in zip(o.argmax(axis=1), keys)], dtype=np.float64)
                       for o in oofs]
            for score in SCORES:
                conf = [confidence(o, score) for o in oofs]
                for deals in sorted({1, args.repeats}):
                    t = calibrate(np.concatenate(conf[:deals]), np.concatenate(correct[:deals]), args.target)
                    served = test_conf[score] >= t if t is not None else np.zeros(len(test), dtype=bool)
                    n = int(served.sum())
                    runs.setdefault(f"{score}/{deals}", []).append({
                        "seed": seed, "threshold": t, "served": n, "share": n / len(test),
                        "precision": float(right[served].mean()) if n else None})
    fit_s = time.perf_counter() - started

    rows = []
    for name, seed_runs in runs.items():
        score, deals = name.split("/")
        shares = [r["share"] for r in seed_runs]
        precisions = [r["precision"] for r in seed_runs if r["precision"] is not None]
        rows.append({"score": score, "deals": int(deals), "runs": seed_runs,
                     "share_min": min(shares), "share_max": max(shares),
                     "precision_min": min(precisions) if precisions else None,
                     "ceiling": ceiling[score],
                     "meets_every_seed": all(r["share"] >= 0.75 and (r["precision"] or 0) >= args.target
                                             for r in seed_runs)})
    table = Table(title=f"BANKING77 test split as new traffic: served share @ precision, per seed "
                        f"(target {args.target:.0%}; {len(train)} trusted pairs, {len(test)} new queries)")
    for col in ("score", "deals", *(f"seed {s}" for s in seeds), "ceiling (labels in hand)",
                ">= 75% @ target, every seed"):
        table.add_column(col, justify="left" if col == "score" else "right")
    for row in rows:
        table.add_row(row["score"], str(row["deals"]),
                      *(f"{r['share']:.1%}@{r['precision']:.2%}" if r["precision"] is not None else "0"
                        for r in row["runs"]),
                      f"{row['ceiling']:.1%}", "yes" if row["meets_every_seed"] else "no")
    console.print(table)
    console.print(f"embedding {embed_s:.0f} s; fits and calibration {fit_s:.0f} s "
                  f"({len(seeds)} seeds x {args.repeats} deals x {args.folds} folds + 1 served fit)")
    report = {"data": _shown(args.data), "pairs": len(train), "test": len(test), "labels": len(classes),
              "C": args.C, "folds": args.folds, "repeats": args.repeats, "target": args.target,
              "embedder": args.embedder, "seeds": seeds, "accuracy_never_abstaining": float(right.mean()),
              "rows": rows, "embed_s": round(embed_s, 1), "fit_s": round(fit_s, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
