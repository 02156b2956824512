"""`for_each` at scale: one script step over 10k, 100k and 1M items, the engine as it is against
an earlier commit of it.

The workflow makes a list of N integers in one script step, then runs a script step once per
item (`for_each`, the default concurrency of 4, on threads) and returns the list of results.
Timed end to end through `run_workflow` (no store):

- **now**: the engine of this checkout, `--rounds` rounds per size (median, fastest, slowest),
  in this process; peak RSS is the process's high-water mark after the size's rounds (sizes run
  smallest first, so it is the largest size's peak);
- **before**: the engine at `--baseline-ref` (default 6f56cd3: every item a computation, a
  provider call and a record object of its own), unpacked from git into a temporary folder and
  run once per size in a fresh process (its own peak RSS). A size whose estimate from the sizes
  already run passes `--before-limit` seconds is not run and is reported as skipped, with the
  estimate. Without git or the commit, every before is skipped.

Writes results/for_each_scale.json.

    python examples/benchmarks/for_each_scale.py [--sizes 10000,100000,1000000] [--rounds 3] [--baseline-ref 6f56cd3]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT))

WORKFLOW = """\
name: for_each_scale
inputs: {n: {type: integer}}
steps:
  - id: make
    inputs: {n: "{{ inputs.n }}"}
    script: ops.py:make
  - id: each
    for_each: "{{ steps.make.output.items }}"
    as: x
    inputs: {x: "{{ x }}"}
    script: ops.py:double
outputs:
  doubled: "{{ steps.each.output }}"
"""
OPS = """\
def make(n):
    return {"items": list(range(n))}


def double(x):
    return x * 2
"""

BEFORE = """\
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import engine
from engine.runner import run_workflow
assert engine.__file__.startswith(sys.argv[1]), engine.__file__
n = int(sys.argv[3])
started = time.perf_counter()
out = run_workflow(sys.argv[2], {"n": n}, store=False).outputs["doubled"]
seconds = time.perf_counter() - started
assert len(out) == n and (n == 0 or out[-1] == 2 * (n - 1)), "wrong result"
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _unpack(ref: str, into: Path) -> Path | None:
    """The `engine` package at `ref`, unpacked under `into`, or None when git or the ref is missing."""
    try:
        data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, "engine"],
                              capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def _before(engine_root: Path, workflow: Path, n: int) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", BEFORE, str(engine_root), str(workflow), str(n)],
                          capture_output=True, text=True, check=True, cwd=workflow.parent)
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _now(workflow: Any, n: int) -> float:
    from engine.runner import run_workflow

    started = time.perf_counter()
    result = run_workflow(workflow, {"n": n}, store=False)
    seconds = time.perf_counter() - started
    out = result.outputs["doubled"]
    assert len(out) == n and (n == 0 or out[-1] == 2 * (n - 1)), "wrong result"
    return seconds


def _estimate(points: list[tuple[int, float]], n: int) -> float:
    """Seconds for `n` items from the sizes run: the growth between the last two (between linear
    and quadratic), linear from one."""
    if not points:
        return 0.0
    (m, t) = points[-1]
    power = 1.0
    if len(points) > 1:
        (m0, t0) = points[-2]
        power = min(2.0, max(1.0, math.log(max(t, 1e-9) / max(t0, 1e-9)) / math.log(m / m0)))
    return t * (n / m) ** power


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-ref", default="6f56cd3")
    parser.add_argument("--before-limit", type=float, default=150.0,
                        help="skip a 'before' size whose estimated time passes this many seconds")
    parser.add_argument("--out", type=Path, default=RESULTS / "for_each_scale.json")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())

    from engine.spec import load_workflow

    work = Path(tempfile.mkdtemp(prefix="for_each_scale_"))
    (work / "workflow.yaml").write_text(WORKFLOW)
    (work / "ops.py").write_text(OPS)
    workflow = load_workflow(work / "workflow.yaml")
    baseline = _unpack(args.baseline_ref, work / "baseline")
    console = Console(stderr=True)
    load_start = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    before_points: list[tuple[int, float]] = []
    for n in sizes:
        rounds = [_now(workflow, n) for _ in range(max(1, args.rounds))]
        median = statistics.median(rounds)
        row: dict[str, Any] = {"items": n, "after_s": round(median, 3), "after_min_s": round(min(rounds), 3),
                               "after_max_s": round(max(rounds), 3), "after_rounds_s": [round(t, 3) for t in rounds],
                               "after_items_per_s": round(n / median),
                               "after_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
        if baseline is None:
            row["before"] = f"skipped: no git or no commit {args.baseline_ref}"
        else:
            estimate = _estimate(before_points, n)
            if estimate > args.before_limit:
                row["before"] = f"skipped: estimated {estimate:,.0f} s (from the sizes run)"
                row["before_estimated_s"] = round(estimate)
            else:
                before = _before(baseline, work / "workflow.yaml", n)
                before_points.append((n, before["seconds"]))
                row["before_s"] = round(before["seconds"], 3)
                row["before_peak_rss_mb"] = round(before["peak_rss_mb"])
                row["speedup"] = round(before["seconds"] / median, 1)
        rows.append(row)
        console.print(f"{n:,} items: {row}")

    table = Table(title=f"for_each over a script step (concurrency 4, threads; median of {args.rounds})")
    for column in ("items", "before (s)", "now (s)", "now min-max (s)", "now (items/s)", "speedup",
                   "peak RSS before/now (MB)"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['items']:,}", str(row.get("before_s", row.get("before", ""))), str(row["after_s"]),
                      f"{row['after_min_s']}-{row['after_max_s']}", f"{row['after_items_per_s']:,}",
                      str(row.get("speedup", "")), f"{row.get('before_peak_rss_mb', '-')}/{row['after_peak_rss_mb']}")
    Console(width=140).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "for_each_scale", "baseline_ref": args.baseline_ref, "rounds": args.rounds,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_1m_at_start": round(load_start, 1),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 1)},
        "results": rows}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
