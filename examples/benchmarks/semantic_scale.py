"""The semantic cache at scale: the approximate index (faiss IVF, `engine.cache.ann`) against the
exact matrix product, on BANKING77 embeddings (all-MiniLM-L6-v2).

1. Decisions on BANKING77: fill with the train queries and their labels (10,003), ask the test
   queries (3,080) with the engine's rule (threshold 0.90, margin 0.12, the engine's defaults),
   once through the approximate index (forced on at this size) and once exactly; count hits and
   false hits (a served label that differs from the query's true label).
2. One million entries: the train vectors plus noisy copies of them (each copy keeps its
   original's label; noise N(0, 0.015) per dimension, then unit length), `--queries` test
   queries, the same rule both ways: lookup time (p50, p95) and the same hit / false-hit counts.

    python examples/benchmarks/semantic_scale.py [--entries 1000000] [--queries 300] [--data DIR]

Needs the `semantic` and `ann` extras. Prints a table; writes
examples/benchmarks/results/semantic_scale.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from engine.cache.embedders import MiniLMEmbedder
from engine.cache.index import VectorIndex

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "semantic_scale.json"
THRESHOLD, MARGIN = 0.90, 0.12
console = Console()


def load(path: Path) -> tuple[list[str], list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["category"] for r in rows]


def embed(embedder: MiniLMEmbedder, texts: list[str]) -> np.ndarray:
    with console.status(f"embedding {len(texts):,} texts"):
        return np.concatenate([embedder.embed(texts[i:i + 256]) for i in range(0, len(texts), 256)])


def decide(index: VectorIndex, queries: np.ndarray, labels: list[str], truth: list[str],
           exact: bool) -> dict[str, Any]:
    hits = false = 0
    times = []
    for q, true in zip(queries, truth):
        started = time.perf_counter()
        d = index.exact_search(q, THRESHOLD, MARGIN) if exact else index.search(q, THRESHOLD, MARGIN)
        times.append((time.perf_counter() - started) * 1000)
        if d.match is not None:
            hits += 1
            false += labels[d.match.entry_id - 1] != true
    n = len(truth)
    return {"queries": n, "hit_rate": round(hits / n, 4), "false_hit_rate": round(false / n, 4),
            "false_hits_of_hits": round(false / hits, 4) if hits else 0.0,
            "lookup_ms_p50": round(statistics.median(times), 3),
            "lookup_ms_p95": round(float(np.percentile(times, 95)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "examples" / "benchmarks" / "data" / "banking77")
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--vectors-cache", type=Path, default=None,
                    help="an .npz to keep the BANKING77 embeddings in between runs")
    args = ap.parse_args()

    train_texts, train_y = load(args.data / "train.csv")
    test_texts, test_y = load(args.data / "test.csv")
    if args.vectors_cache is not None and args.vectors_cache.is_file():
        saved = np.load(args.vectors_cache)
        x_train, x_test = saved["train"], saved["test"]
    else:
        embedder = MiniLMEmbedder()
        x_train, x_test = embed(embedder, train_texts), embed(embedder, test_texts)
        if args.vectors_cache is not None:
            np.savez(args.vectors_cache, train=x_train, test=x_test)

    report: dict[str, Any] = {"threshold": THRESHOLD, "margin": MARGIN,
                              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                          "platform": platform.platform()}}
    small = VectorIndex(ann_min=0)  # the approximate index at BANKING77's own size
    small.add(list(range(1, len(train_y) + 1)), train_y, x_train)
    report["banking77"] = {"entries": len(train_y),
                           "approximate": decide(small, x_test, train_y, test_y, exact=False),
                           "exact": decide(small, x_test, train_y, test_y, exact=True)}

    rng = np.random.default_rng(0)
    extra = args.entries - len(train_y)
    labels = list(train_y)
    big = VectorIndex(ann_min=args.entries)  # built once, after the last chunk
    big.add(list(range(1, len(train_y) + 1)), train_y, x_train)
    started = time.perf_counter()
    with console.status(f"filling {args.entries:,} entries"):
        next_id = len(train_y) + 1
        for start in range(0, extra, 100_000):
            n = min(100_000, extra - start)
            src = rng.integers(0, len(train_y), n)
            v = x_train[src] + rng.normal(0, 0.015, (n, x_train.shape[1])).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            chunk_labels = [train_y[i] for i in src]
            labels.extend(chunk_labels)
            if start + n >= extra:
                big.ann_min = 0  # the last chunk builds the approximate index over everything
            big.add(list(range(next_id, next_id + n)), chunk_labels, v)
            next_id += n
    build_s = time.perf_counter() - started
    pick = rng.choice(len(test_y), min(args.queries, len(test_y)), replace=False)
    q, truth = x_test[pick], [test_y[i] for i in pick]
    report["million"] = {"entries": len(big), "fill_and_build_s": round(build_s, 1),
                         "approximate": decide(big, q, labels, truth, exact=False),
                         "exact": decide(big, q, labels, truth, exact=True)}

    table = Table(title=f"semantic lookups: approximate (faiss IVF) vs exact; threshold {THRESHOLD}, "
                        f"margin {MARGIN}", title_justify="left")
    for col in ("fill", "search", "queries", "hit rate", "false hits", "p50 ms", "p95 ms"):
        table.add_column(col, justify="left" if col in ("fill", "search") else "right")
    for key, name in (("banking77", "BANKING77 train (10,003)"), ("million", f"{len(big):,} entries")):
        for mode in ("approximate", "exact"):
            r = report[key][mode]
            table.add_row(name, mode, f"{r['queries']:,}", f"{r['hit_rate']:.2%}", f"{r['false_hit_rate']:.2%}",
                          f"{r['lookup_ms_p50']:.2f}", f"{r['lookup_ms_p95']:.2f}")
    console.print(table)
    console.print(f"fill + index build for {len(big):,} entries: {build_s:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
