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
