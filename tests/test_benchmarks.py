"""The provider-overhead benchmark runs (a few calls, offline; LiteLLM rows only where installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_provider_overhead_benchmark_runs(tmp_path):
    out = tmp_path / "overhead.json"
    env = {**os.environ, "ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/provider_overhead.py"), "--calls", "3",
                           "--rounds", "1", "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["direct SDK call"]["ratio_to_direct"] == 1.0
    assert "us_per_call" in rows["engine run (SQLite log)"] and "engine_own_us" in rows["engine run (no store)"]


def test_provider_batch_benchmark_runs(tmp_path):
    data = tmp_path / "banking77"
    data.mkdir()
    (data / "categories.json").write_text(json.dumps(["card_arrival", "lost_or_stolen_card"]))
    (data / "test.csv").write_text("text,category\n" + "".join(
        f"where is my card number {i},card_arrival\nI lost my card {i},lost_or_stolen_card\n" for i in range(6)))
    out = tmp_path / "provider_batch.json"
    env = {**os.environ, "ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/provider_batch.py"), "--items", "12",
                           "--data", str(data), "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert {(r["provider"], r["mode"]) for r in rows} == {(p, m) for p in ("openai", "anthropic")
                                                          for m in ("real time", "provider batch")}
    for r in rows:
        assert r["ok"] == r["correct"] == 12
        if r["mode"] == "provider batch":
            assert r["provider_batches"] == 1 and r["cost_ratio"] == 0.5


def test_quality_cascade_benchmark_runs(tmp_path):
    """A few queries through the real local tier: promoted rows come only from the reference."""
    out = tmp_path / "quality.json"
    env = {**os.environ, "ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/quality_cascade.py"), "--n", "3",
                           "--rounds", "2", "--rows", "premium,cascade", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["all-premium"]["agreement"] == 1.0 and rows["all-premium"]["cost_vs_all_premium"] == 1.0
    promoted = rows["cascade + promotion (2 rounds)"]
    assert promoted["lookup_rows"] == 3 and promoted["lookup_rows_correct"] == 3
    assert promoted["agreement"] == 1.0 and promoted["cost_vs_all_premium"] < 0.75


def test_async_runs_benchmark_runs(tmp_path):
    out = tmp_path / "async.json"
    env = {**os.environ, "ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/async_runs.py"), "--runs", "40",
                           "--rounds", "1", "--latency-ms", "5", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {r["variant"].split(" (")[0]: r for r in report["results"]}
    assert rows["provider alone"]["x_floor"] == 1.0 and "seconds" in rows["Engine.arun"]
    assert "tracemalloc_peak_mb_one_round" in report["memory"]


def test_promoted_lookup_benchmark_runs(tmp_path):
    env = {**os.environ, "ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/promoted_lookup.py"), "--runs", "20",
                           "--out", str(tmp_path / "lookup.json")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step_us_p50" in json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "lookup.json").read_text())["runs"] == 20


def test_startup_benchmark_runs(tmp_path):
    out = tmp_path / "startup.json"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/startup.py"), "--rounds", "1",
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["checkout"], r["case"]) for r in rows} == {("this checkout", "import engine"),
                                                        ("this checkout", "engine --help")}
    assert all(r["range_s"][0] <= r["median_s"] <= r["range_s"][1] for r in rows)


def test_workflow_language_benchmark_runs(tmp_path):
    out = tmp_path / "workflow_language.json"
    env = {**os.environ, "ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/workflow_language.py"), "--rounds", "1",
                           "--latency-ms", "60", "--skip-local", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["cloud"]
    # every workload and variant ran (each run asserts its outputs); how much faster the parallel
    # variants are is the benchmark's figure, not a test's: it depends on the machine's load
    assert [(r["workload"].split(",")[0], r["variant"]) for r in rows] == [
        ("review_digest", "sequential"), ("review_digest", "parallel"),
        ("review_digest", "sequential"), ("review_digest", "parallel"),
        ("invoice_lines", "concurrency 1"), ("invoice_lines", "concurrency 8")]
    assert all(len(r["rounds_ms"]) == 1 for r in rows)
    assert [r["speedup"] for r in rows][::2] == [1.0, 1.0, 1.0]  # each group against its first variant


def test_static_embedder_benchmark_runs(tmp_path):
    """The comparison runs end to end (on a tiny random-vector static model over MiniLM's tokenizer)."""
    import numpy as np

    from model2vec import StaticModel
    from tokenizers import Tokenizer

    from engine.cache.embedders import minilm_path

    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    vectors = np.random.default_rng(0).normal(size=(tokenizer.get_vocab_size(), 16)).astype(np.float32)
    StaticModel(vectors, tokenizer).save_pretrained(str(tmp_path / "static"))
    out = tmp_path / "static.json"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/static_embedder.py"), "--limit", "300",
                           "--static", str(tmp_path / "static"), "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["dims"] for r in report["rows"]] == [384, 16]
    assert all(0 <= r["tuned"]["hit_rate"] <= 1 for r in report["rows"]) and "verdict" in report


def test_distill_classifier_benchmark_runs(tmp_path):
    """A small BANKING77 slice: the classifier row serves new phrasings that the lookups-only row cannot."""
    out = tmp_path / "distill.json"
    env = {**os.environ, "ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/distill_classifier.py"), "--intents", "10",
                           "--train-limit", "400", "--test-limit", "40", "--requests", "80", "--rounds", "2",
                           "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    lookups, both = rows["lookups only"], rows["lookups + classifier"]
    assert "classifier" not in lookups["new"]["served_by"] and lookups["new"]["cost_ratio"] > 0.9
    assert both["classifier"]["pairs"] == 400 and both["new"]["served_by"].get("classifier", 0) > 0
    assert both["new"]["zero_token_share"] > lookups["new"]["zero_token_share"]
    assert both["new"]["cost_ratio"] < lookups["new"]["cost_ratio"]
    answered = both["new"]["answered_by_classifier"]  # served at zero tokens, plus the spot-checked ones
    assert answered["served"] == round(both["new"]["served_by"]["classifier"] * both["new"]["requests"])
    assert round(answered["share"] * both["new"]["requests"]) == answered["served"] + answered["spot_checked"]


def test_classifier_calibration_benchmark_runs(tmp_path):
    """A small BANKING77 slice through the engine's folds and calibration: every (score, deals) row,
    a run per seed, and no calibrated share above the labels-in-hand ceiling at the target."""
    out = tmp_path / "calibration.json"
    env = {**os.environ, "ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/classifier_calibration.py"), "--intents",
                           "6", "--train-limit", "240", "--test-limit", "80", "--seeds", "0,1", "--repeats", "2",
                           "--vectors", str(tmp_path / "v.npz"), "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {(r["score"], r["deals"]) for r in report["rows"]} == {("margin", 1), ("margin", 2), ("top", 1), ("top", 2)}
    assert report["pairs"] == 240 and report["test"] == 80 and (tmp_path / "v.npz").is_file()
    for row in report["rows"]:
        assert [r["seed"] for r in row["runs"]] == [0, 1]
        for r in row["runs"]:
            assert r["precision"] is None or r["precision"] < 0.99 or r["share"] <= row["ceiling"]


def test_scale_out_benchmark_runs(tmp_path):
    """A few items on the thread executor and the store-write rows on SQLite and PostgreSQL (the
    Ray rows start Ray twice: the full benchmark's, and tests/batch/test_ray_executor.py's)."""
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/scale_out.py"), "--items", "16",
                           "--no-ray", "--rounds", "2", "--store-runs", "20", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    (threads,) = report["executors"]
    assert threads["ok"] == 16 and threads["failed"] == 0 and threads["rounds"] == 2 == len(report["rounds"])
    lo, hi = threads["items_per_s_range"]
    assert lo <= threads["items_per_s"] <= hi and threads["vs_threads"] == 1.0
    assert {(w["backend"], w["mode"]) for w in report["store_write_cost"]} == {
        ("sqlite", "write-behind"), ("sqlite", "synchronous"), ("postgresql", "write-behind"),
        ("postgresql", "synchronous"), ("postgresql / sqlite", "write-behind, committed, per round")}


def test_scale_out_store_rows_alone_in_rounds(tmp_path):
    """`--only store`: the store-write rows without the executors, each row the median of the
    interleaved rounds with its range."""
    out = tmp_path / "store.json"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/scale_out.py"), "--only", "store",
                           "--store-runs", "10", "--store-rounds", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "executors" not in report and report["store_rounds"] == 3
    rows = {(row["backend"], row["mode"]): row for row in report["store_write_cost"]}
    for row in rows.values():
        key = "ratio" if "ratio" in row else "committed_us_per_run"
        lo, hi = row[key + "_range"]
        assert lo <= row[key] <= hi
    # the ratio is taken within each round, so its median need not be the ratio of the medians
    assert rows[("postgresql / sqlite", "write-behind, committed, per round")]["ratio"] > 0


def test_trusted_stream_benchmark_runs(tmp_path):
    """A few seconds of the stream: the table and the JSON, with every figure the docs quote."""
    out = tmp_path / "stream.json"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/trusted_stream.py"), "--seconds", "3",
                           "--rate", "40", "--drain", "10", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["exact", "semantic"]
    for r in rows:
        assert r["runs"] == 120 and 0 <= r["right"] <= 1 and r["pending_at_end"] == 0
        assert {"cheap_unverified_after_bound", "wrong_after_bound", "queue_peak", "dropped", "rss_mb_peak"} <= set(r)


def test_semantic_cache_postgres_benchmark_runs(tmp_path):
    """The BANKING77 cache benchmark's PostgreSQL rows on a small made-up set (saved embeddings, so
    no model loads): HNSW decides every lookup as the exact scan does on well-separated labels."""
    import numpy as np

    rng = np.random.default_rng(0)
    labels = ["card_arrival", "lost_or_stolen_card", "top_up_failed"]
    centres = rng.normal(size=(3, 384))

    def split(name: str, n: int) -> np.ndarray:
        (tmp_path / f"{name}.csv").write_text("text,category\n" + "".join(
            f"{name} query {i},{labels[i % 3]}\n" for i in range(n)))
        x = centres[np.arange(n) % 3] + rng.normal(0, 0.03, (n, 384))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    np.savez(tmp_path / "emb.npz", train=split("train", 60), test=split("test", 21))
    out = tmp_path / "semantic_cache_postgres.json"
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]  # this checkout's engine
    env = {**os.environ, "ENGINE_HOME": str(tmp_path), "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/semantic_cache.py"), "--postgres",
                           "--data", str(tmp_path), "--embeddings", str(tmp_path / "emb.npz"), "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    result = json.loads(out.read_text())
    rows = {r["setting"]: r for r in result["rows"]}
    assert set(rows) == {"pgvector HNSW", "pgvector exact scan", "in-memory matrix (SQLite)",
                         "pgvector HNSW, no iterative scan"}
    assert rows["pgvector HNSW"]["decided_unlike_exact"] == rows["in-memory matrix (SQLite)"]["decided_unlike_exact"] == 0
    for r in rows.values():
        assert r["queries"] == 21 and r["hits"] == 21 and r["false_hits"] == 0
        assert r["lookup_ms_p50"] > 0


def test_router_benchmark_runs(tmp_path):
    """A few queries through the real local tier: every row runs, the router decides every query of
    its rows, and the lookups of the promotion rounds come from the reference only."""
    out = tmp_path / "router.json"
    env = {**os.environ, "ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/router.py"), "--quick", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == ["all-premium", "cascade", "router", "router + cascade", "router + promotion (2 rounds)"]
    assert rows["all-premium"]["agreement"] == 1.0 and rows["all-premium"]["cost_vs_all_premium"] == 1.0
    assert rows["cascade"]["cheap_calls_avoided"] == 0 and not rows["cascade"]["routed"]
    for name in ("router", "router + cascade"):
        assert sum(rows[name]["routed"].values()) == rows[name]["queries"]
    promoted = rows["router + promotion (2 rounds)"]
    assert promoted["agreement"] == 1.0 and promoted["cost_vs_all_premium"] < 1.0
    assert report["routing_speed"]["embedder"] == "hash" and report["warm_up"]["router"]["examples"] == 24
