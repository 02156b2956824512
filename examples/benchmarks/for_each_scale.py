"""`for_each` at scale: one script step over 10k, 100k and 1M items, before and after the
linear scheduler.

The workflow makes a list of N integers in one script step, then runs a script step once per
item (`for_each`, the default concurrency of 4, on threads) and returns the list of results.
Timed end to end through `run_workflow` (no store), one run per size:

- **after**: the engine as it is (a cursor/heap schedule, workers that take the next item);
- **before**: the same engine with the fan-out driver of a baseline commit (`--baseline-ref`,
  default the commit before the change), which rescanned every task each time one finished
  (quadratic). Sizes whose quadratic extrapolation from the measured ones passes
  `--before-limit` seconds are not run and are reported as skipped, with the estimate.

Writes results/for_each_scale.json.

    python examples/benchmarks/for_each_scale.py [--sizes 10000,100000,1000000] [--baseline-ref bc25627]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
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


def _baseline(ref: str) -> Any | None:
    """engine/providers/calls.py at `ref`, as a module, or None when git or the ref is missing."""
    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:engine/providers/calls.py"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("engine_calls_baseline", f.name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(workflow: Any, n: int) -> float:
    from engine.runner import run_workflow

    started = time.perf_counter()
    result = run_workflow(workflow, {"n": n}, store=False)
    seconds = time.perf_counter() - started
    out = result.outputs["doubled"]
    assert len(out) == n and out[-1] == 2 * (n - 1), "wrong result"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--baseline-ref", default="bc25627")
    parser.add_argument("--before-limit", type=float, default=120.0,
                        help="skip a 'before' size whose estimated time passes this many seconds")
    parser.add_argument("--out", type=Path, default=RESULTS / "for_each_scale.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    import engine.providers.calls as calls
    from engine.spec import load_workflow

    work = Path(tempfile.mkdtemp(prefix="for_each_scale_"))
    (work / "workflow.yaml").write_text(WORKFLOW)
    (work / "ops.py").write_text(OPS)
    workflow = load_workflow(work / "workflow.yaml")
    baseline = _baseline(args.baseline_ref)
    console = Console(stderr=True)
    rows: list[dict[str, Any]] = []
    after = calls._drive_fanout
    before_points: list[tuple[int, float]] = []
    for n in sizes:
        seconds = _run(workflow, n)
        row: dict[str, Any] = {"items": n, "after_s": round(seconds, 3),
                               "after_items_per_s": round(n / seconds)}
        if baseline is None:
            row["before"] = f"skipped: no git or no commit {args.baseline_ref}"
        else:
            estimate = max((t * (n / m) ** 2 for m, t in before_points), default=0.0)
            if estimate > args.before_limit:
                row["before"] = f"skipped: estimated {estimate:,.0f} s (quadratic from the sizes run)"
                row["before_estimated_s"] = round(estimate)
            else:
                calls._drive_fanout = baseline._drive_fanout  # type: ignore[attr-defined]
                try:
                    before = _run(workflow, n)
                finally:
                    calls._drive_fanout = after
                before_points.append((n, before))
                row["before_s"] = round(before, 3)
                row["speedup"] = round(before / seconds, 1)
        rows.append(row)
        console.print(f"{n:,} items: {row}")

    table = Table(title="for_each over a script step (concurrency 4, threads)")
    for column in ("items", "before (s)", "after (s)", "after (items/s)", "speedup"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['items']:,}", str(row.get("before_s", row.get("before", ""))), str(row["after_s"]),
                      f"{row['after_items_per_s']:,}", str(row.get("speedup", "")))
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "for_each_scale", "baseline_ref": args.baseline_ref,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 1)},
        "results": rows}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
