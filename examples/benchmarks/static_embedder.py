"""Static (model2vec) embedder beside MiniLM on BANKING77: hits and false hits, and embedding time.

Each embedder fills the semantic cache with the train queries (10,003) and is queried with the
test queries (3,080), under the engine's margin rule. The (threshold, margin) of each is chosen on
a split of train only (the most hits at under 1% false hits), as `semantic_cache.py` does; the
engine's default (threshold, margin) is reported too. The static embedder would become the default
only if it is within 1 point of MiniLM on both hits and false hits.

    python examples/benchmarks/static_embedder.py [--data examples/benchmarks/data/banking77] [--static DIR]

Needs a built static model (`examples/static_embedder/build.py`; default $ENGINE_HOME/models/
minilm-static or $ENGINE_STATIC_EMBEDDER). Writes examples/benchmarks/results/static_embedder.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from semantic_cache import RESULTS, ROOT, choose, evaluate, load, rule_outcomes  # noqa: E402

from engine.cache.embedders import MiniLMEmbedder, StaticEmbedder, static_path  # noqa: E402
from engine.spec.cache import SemanticCacheSpec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "examples" / "benchmarks" / "data" / "banking77")
    ap.add_argument("--static", type=Path, default=None, help="the static model's folder")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N train and test queries (smoke runs)")
    ap.add_argument("--out", type=Path, default=RESULTS / "static_embedder.json")
    args = ap.parse_args()
    console = Console()
    train_texts, train_y = load(args.data / "train.csv")
    test_texts, test_y = load(args.data / "test.csv")
    if args.limit:
        train_texts, train_y, test_texts, test_y = (train_texts[:args.limit], train_y[:args.limit],
                                                    test_texts[:args.limit], test_y[:args.limit])
    embedders = {"all-MiniLM-L6-v2": MiniLMEmbedder(), "static (model2vec from MiniLM)": StaticEmbedder(
        args.static or static_path())}
    defaults = SemanticCacheSpec.model_validate({})
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("embedding", total=len(embedders) * (len(train_texts) + len(test_texts)))
        for name, embedder in embedders.items():
            vectors = []
            for texts in (train_texts, test_texts):
                parts = []
                for i in range(0, len(texts), 256):
                    parts.append(embedder.embed(texts[i:i + 256]))
                    progress.advance(task, len(texts[i:i + 256]))
                vectors.append(np.concatenate(parts))
            x_train, x_test = vectors
            rng = np.random.default_rng(7)
            perm = rng.permutation(len(train_y))
            fill, tune = perm[: int(0.8 * len(perm))], perm[int(0.8 * len(perm)):]
            t_star, margin, _ = choose(rule_outcomes(x_train[tune] @ x_train[fill].T, train_y[fill]), train_y[tune])
            outcomes = rule_outcomes(x_test @ x_train.T, train_y)
            tuned = evaluate(outcomes, test_y, t_star, margin)["margin"]
            at_defaults = evaluate(outcomes, test_y, defaults.threshold, defaults.margin)["margin"]
            embedder.embed(test_texts[:8])
            single = []
            for text in test_texts[:200]:
                started = time.perf_counter()
                embedder.embed([text])
                single.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            embedder.embed(test_texts[:512])
            batched = (time.perf_counter() - started) * 1000 / min(512, len(test_texts))
            rows.append({"embedder": name, "dims": int(x_train.shape[1]), "threshold": t_star, "margin": margin,
                         "tuned": tuned, "engine_defaults": at_defaults,
                         "embed_one_ms_median": statistics.median(single), "embed_batched_ms_per_text": batched})
    table = Table(title="BANKING77 semantic cache: MiniLM vs static embedder (margin rule)")
    for col in ("embedder", "dims", "tuned t / margin", "hits", "false hits", "at defaults: hits / false",
                "embed 1 (ms)", "batched (ms/text)"):
        table.add_column(col, justify="left" if col == "embedder" else "right")
    for r in rows:
        table.add_row(r["embedder"], str(r["dims"]), f"{r['threshold']:.2f} / {r['margin']:.2f}",
                      f"{100 * r['tuned']['hit_rate']:.1f}%", f"{100 * r['tuned']['false_share']:.2f}%",
                      f"{100 * r['engine_defaults']['hit_rate']:.1f}% / "
                      f"{100 * r['engine_defaults']['false_share']:.2f}%",
                      f"{r['embed_one_ms_median']:.2f}", f"{r['embed_batched_ms_per_text']:.3f}")
    console.print(table)
    base, fast = rows
    gap_hits = 100 * (base["tuned"]["hit_rate"] - fast["tuned"]["hit_rate"])
    gap_false = 100 * (fast["tuned"]["false_share"] - base["tuned"]["false_share"])
    default_ok = gap_hits <= 1.0 and gap_false <= 1.0
    verdict = (f"static is {gap_hits:+.1f} points of hits and {gap_false:+.2f} points of false hits behind MiniLM: "
               + ("within 1 point on both, it can be the default" if default_ok else "MiniLM stays the default"))
    console.print(verdict)
    console.print(f"embedding one text: {base['embed_one_ms_median'] / fast['embed_one_ms_median']:.0f}x faster; "
                  f"batched: {base['embed_batched_ms_per_text'] / fast['embed_batched_ms_per_text']:.0f}x faster")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"train": len(train_texts), "test": len(test_texts), "rows": rows,
                                    "static_can_be_default": default_ok, "verdict": verdict}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
