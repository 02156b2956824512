"""Distilled classifier benchmark: what lookups cannot serve, on BANKING77.

History: the BANKING77 **train** split (10,003 queries) imported as people's labels (trusted
evidence) into the store of the `promotion_replay` workflow. `engine promotions propose` then builds
a lookup (one row per train query) and a classifier (all-MiniLM-L6-v2 embeddings + logistic
regression, threshold calibrated on held-out train pairs for 99% precision); both are accepted as
a person would after review. The premium tier is the **simulated** replay provider of
`promotion_replay.py` (answers the labelled intent; USD 2.50 / 10.00 per million tokens).

Parts:
    new        the 3,080 test queries, each asked once, as all-new traffic
    replay     the promotion replay stream (20,000 Zipf-skewed requests over the test queries,
               4 rounds, propose + accept between rounds)
Rows: lookups only; lookups plus classifier. Columns: zero-token share, agreement of what was
served at zero tokens with the labels, cost against all-premium (spot checks included).

The embedder is memoised per text in this script (a query repeated in the stream is embedded
once; the vectors are the engine's own), which changes speed, not answers.

    python examples/benchmarks/distill_classifier.py [--requests 20000] [--parts new,replay]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from promotion_replay import CONFIG, WORKFLOW, ReplayProvider, zipf_stream  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"


class MemoEmbedder:
    """The engine's MiniLM embedder, memoised per text (speed only; the same vectors)."""

    name = "minilm"

    def __init__(self) -> None:
        from engine.cache.embedders import MiniLMEmbedder

        self.inner = MiniLMEmbedder()
        self.memo: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if missing:
            for t, v in zip(missing, self.inner.embed(missing)):
                self.memo[t] = v
        return np.vstack([self.memo[t] for t in texts])


def read(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def setup(train: list[tuple[str, str]], labels: dict[str, str], intents: list[str], classifier: bool,
          args: argparse.Namespace, console: Console) -> tuple[Any, Path, Any, dict[str, Any]]:
    """A fresh project whose store holds the train split as labels; propose and accept."""
    from engine import load_workflow
    from engine.promotion import review
    from engine.promotion.server import seed
    from engine.providers.registry import register_provider
    from engine.quality.feedback import import_labels
    from engine.runner import open_store

    work = Path(tempfile.mkdtemp(prefix="distill-classifier-"))
    (work / "engine.yaml").write_text(CONFIG)
    wf_path = work / "workflow.yaml"
    text = WORKFLOW % {"tier": "premium", "intents": json.dumps(intents)}
    wf_path.write_text(text.replace("min_calls: 3", f"min_calls: {args.min_calls}"))
    register_provider("replay", ReplayProvider(labels, intents, 0.0, args.seed))
    seed(args.seed)
    store = open_store(work / "engine.db")
    wf = load_workflow(wf_path)
    history = work / "history.jsonl"
    history.write_text("".join(json.dumps({"ticket": t, "expected": c}) + "\n" for t, c in train))
    import_labels(wf, store, history)
    started = time.perf_counter()
    reports = review.propose(store, wf_path, scripts=False, classifiers=classifier)
    propose_s = time.perf_counter() - started
    info: dict[str, Any] = {"propose_s": round(propose_s, 1)}
    for _, rep in reports:
        for p in rep.proposed:
            review.accept(store, p.id)
            if p.kind == "classifier":
                v = p.verification
                info["classifier"] = {"id": p.id, "pairs": v["pairs"], "labels": v["labels"],
                                      "threshold": v["threshold"], "score": v.get("score", "top"),
                                      "repeats": v.get("repeats", 1), "held_out": {
                                          k: v["held_out"][k] for k in ("pairs", "precision", "coverage",
                                                                        "accuracy_without_abstaining")}}
            else:
                info["lookup_rows"] = len(p.payload["rows"])
        for p in rep.unverified:
            info["unverified"] = p.reason
    return wf, wf_path, store, info


def run_stream(wf: Any, wf_path: Path, store: Any, stream: list[str], labels: dict[str, str], rounds: int,
               console: Console, title: str, classifier: bool) -> dict[str, Any]:
    from engine import run_workflow
    from engine.promotion import review

    size = len(stream) // rounds
    per_round = []
    served: dict[str, int] = {}
    agree: dict[str, int] = {}
    spot_cost = 0.0
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(title, total=len(stream))
        for rnd in range(rounds):
            chunk = stream[rnd * size:(rnd + 1) * size] if rnd < rounds - 1 else stream[rnd * size:]
            zero = 0
            cost = base = 0.0
            for text in chunk:
                step = run_workflow(wf, {"ticket": text}, store=store).step("classify")
                by = step.served_by
                if by in ("lookup", "classifier", "script"):
                    zero += 1
                    served[by] = served.get(by, 0) + 1
                    agree[by] = agree.get(by, 0) + (step.output["intent"] == labels[text])
                cost += step.cost
                base += step.baseline_cost
                if by != "llm":
                    spot_cost += step.cost
                progress.advance(task)
            entry = {"round": rnd + 1, "requests": len(chunk), "zero_token_share": zero / len(chunk),
                     "cost": cost, "baseline_cost": base}
            if rnd < rounds - 1:
                accepted = 0
                for _, rep in review.propose(store, wf_path, scripts=False, classifiers=classifier):
                    for p in rep.proposed:
                        review.accept(store, p.id)
                        accepted += 1
                entry["accepted"] = accepted
            per_round.append(entry)
    total = len(stream)
    zero_total = sum(served.values())
    cost = sum(r["cost"] for r in per_round)
    base = sum(r["baseline_cost"] for r in per_round)
    status = review.status(store)
    later = per_round[1:]  # the promotion replay's "after the first accept" (its lookups-only 80%)
    after_first = (sum(r["zero_token_share"] * r["requests"] for r in later) / sum(r["requests"] for r in later)
                   if later else None)
    return {"requests": total, "rounds": per_round, "zero_token_share": zero_total / total,
            "zero_token_share_after_first_accept": after_first,
            "served_by": {k: v / total for k, v in served.items()},
            "agreement": sum(agree.values()) / zero_total if zero_total else None,
            "agreement_by": {k: agree[k] / served[k] for k in served},
            "cost": cost, "baseline_cost": base, "cost_ratio": cost / base if base else None,
            "spot_checks": {"checks": sum(r.spot["checks"] for r in status),
                            "agree": sum(r.spot["agree"] for r in status)},
            "answered_by_classifier": _answered(served, agree, status, total),
            "demoted": [r.promotion.id for r in status if r.promotion.status == "demoted"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "examples" / "benchmarks" / "data" / "banking77")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--intents", type=int, default=0, help="use only the first N intents (0: all 77)")
    ap.add_argument("--train-limit", type=int, default=0, help="use only this many train queries (0: all)")
    ap.add_argument("--test-limit", type=int, default=0, help="use only this many test queries (0: all)")
    ap.add_argument("--parts", default="new,replay")
    ap.add_argument("--min-calls", type=int, default=3,
                    help="promote.min_calls: sightings an input with a trusted answer needs to become a lookup row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "distill_classifier.json")
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    os.environ["ENGINE_HOME"] = tempfile.mkdtemp(prefix="distill-classifier-home-")
    os.environ.pop("ENGINE_DB", None)
    from engine.cache.embedders import register_embedder

    register_embedder("minilm", MemoEmbedder())

    train = read(args.data / "train.csv")
    test = read(args.data / "test.csv")
    if args.intents:
        keep = set(sorted({c for _, c in train})[:args.intents])
        train = [r for r in train if r[1] in keep]
        test = [r for r in test if r[1] in keep]
    if args.train_limit:
        train = random.Random(args.seed).sample(train, args.train_limit)
    if args.test_limit:
        test = random.Random(args.seed).sample(test, args.test_limit)
    labels = {t: c for t, c in train}
    labels.update({t: c for t, c in test})
    intents = sorted({c for _, c in train + test})
    test_queries = list(dict.fromkeys(t for t, _ in test))
    parts = args.parts.split(",")
    result: dict[str, Any] = {
        "simulated_premium": "replay provider answering the labelled intent (no real model), USD 2.50/10.00 per M "
                             "tokens, tokens = chars/4",
        "history": f"BANKING77 train split, {len(train)} queries, imported as labels (trusted)",
        "min_calls": args.min_calls,
        "rows": []}
    for classifier in (False, True):
        row_name = "lookups + classifier" if classifier else "lookups only"
        wf, wf_path, store, info = setup(train, labels, intents, classifier, args, console)
        row: dict[str, Any] = {"row": row_name, **info}
        if "new" in parts:
            row["new"] = run_stream(wf, wf_path, store, test_queries, labels, 1, console, f"{row_name}: new traffic",
                                  classifier)
        if "replay" in parts:
            wf, wf_path, store, _ = setup(train, labels, intents, classifier, args, console)
            stream = zipf_stream(test_queries, args.requests, args.zipf, random.Random(args.seed))
            row["replay"] = run_stream(wf, wf_path, store, stream, labels, args.rounds, console,
                                       f"{row_name}: replay", classifier)
            result["replay_stream"] = {"requests": len(stream), "distinct": len(set(stream)), "zipf_s": args.zipf,
                                       "rounds": args.rounds}
        result["rows"].append(row)
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


def _answered(served: dict[str, int], agree: dict[str, int], status: list[Any], total: int) -> dict[str, Any]:
    """What the classifier answered: served at zero tokens, plus the answers the spot-check policy
    sent to the reference instead (the request then costs tokens, the classifier was not wrong or
    right for free), with the agreement of both with the labels / the reference."""
    checks = [r.spot for r in status if r.promotion.kind == "classifier"]
    n_checks, n_agree = sum(c["checks"] for c in checks), sum(c["agree"] for c in checks)
    n = served.get("classifier", 0) + n_checks
    return {"share": n / total if total else 0.0, "served": served.get("classifier", 0), "spot_checked": n_checks,
            "agreement": (agree.get("classifier", 0) + n_agree) / n if n else None}


def _print(r: dict[str, Any]) -> None:
    console = Console(width=130)
    table = Table(title="BANKING77: lookups vs lookups + distilled classifier (premium tier SIMULATED)")
    for col in ("row", "traffic", "zero-token", "after 1st accept", "lookup", "classifier", "agreement (served)",
                "cost vs all-premium", "spot checks"):
        table.add_column(col, justify="left" if col in ("row", "traffic") else "right")
    for row in r["rows"]:
        for part, name in (("new", "test split, all new"), ("replay", "replay stream")):
            s = row.get(part)
            if not s:
                continue
            after = s.get("zero_token_share_after_first_accept")
            table.add_row(row["row"], name, f"{s['zero_token_share']:.1%}", "-" if after is None else f"{after:.1%}",
                          f"{s['served_by'].get('lookup', 0):.1%}",
                          f"{s['served_by'].get('classifier', 0):.1%}",
                          "-" if s["agreement"] is None else f"{s['agreement']:.2%}",
                          f"{s['cost_ratio']:.3f}x", f"{s['spot_checks']['agree']}/{s['spot_checks']['checks']}")
    console.print(table)
    for row in r["rows"]:
        c = row.get("classifier")
        if c:
            h = c["held_out"]
            console.print(f"classifier: {c['pairs']} trusted pairs, {c['labels']} labels, threshold "
                          f"{c['threshold']:.3f} on the {c.get('score', 'top')} ({c.get('repeats', 1)} deals); "
                          f"held-out (train split) precision {h['precision']:.1%}, coverage {h['coverage']:.1%}, "
                          f"accuracy never abstaining {h['accuracy_without_abstaining']:.1%}; "
                          f"propose took {row['propose_s']} s")
        for part in ("new", "replay"):
            a = (row.get(part) or {}).get("answered_by_classifier")
            if a and a["share"]:
                console.print(f"{row['row']}, {part}: the classifier answered {a['share']:.1%} "
                              f"({a['served']} served at zero tokens + {a['spot_checked']} sent to the reference as "
                              f"spot checks) at {a['agreement']:.2%} agreement")


if __name__ == "__main__":
    main()
