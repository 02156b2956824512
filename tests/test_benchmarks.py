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
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["direct SDK call"]["ratio_to_direct"] == 1.0
    assert rows["engine run (SQLite log)"]["us_per_call"] > 0 and "engine_own_us" in rows["engine run (no store)"]


def test_async_runs_benchmark_runs(tmp_path):
    out = tmp_path / "async.json"
    env = {**os.environ, "ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/async_runs.py"), "--runs", "40",
                           "--rounds", "1", "--latency-ms", "5", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {r["variant"].split(" (")[0]: r for r in report["results"]}
    assert rows["provider alone"]["x_floor"] == 1.0 and rows["Engine.arun"]["seconds"] > 0
    assert report["memory"]["tracemalloc_peak_mb_one_round"] > 0


def test_promoted_lookup_benchmark_runs(tmp_path):
    env = {**os.environ, "ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/promoted_lookup.py"), "--runs", "20",
                           "--out", str(tmp_path / "lookup.json")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step_us_p50"] > 0
    assert json.loads((tmp_path / "lookup.json").read_text())["runs"] == 20
