"""The review console benchmark runs (a few queries; browser rows where Chromium is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from browser_support import browser_required, missing_reason

ROOT = Path(__file__).resolve().parents[2]


def test_ui_console_benchmark_runs(tmp_path):
    data = tmp_path / "banking77"
    data.mkdir()
    (data / "test.csv").write_text("text,category\n" + "".join(
        f"where is my card number {i},card_arrival\nI lost my card {i},lost_or_stolen_card\n" for i in range(6)))
    out = tmp_path / "ui.json"
    env = {**os.environ, "ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples/benchmarks/ui_console.py"), "--n", "12",
                           "--repeat", "2", "--data", str(data), "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    result = json.loads(out.read_text())
    assert result["runs"] == 12 and result["proposal_rows"] > 0 and result["queued"] > 0
    kinds = {r["kind"] for r in result["results"]}
    assert "server only" in kinds
    if missing_reason() is None or browser_required():  # under CI the browser rows must be there
        measures = {r["measure"] for r in result["results"]}
        assert {"load proposal", "load queue", "accept (key a) until the next page"} <= measures
    for r in result["results"]:
        assert r["median_ms"] <= r["max_ms"]
