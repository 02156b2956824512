"""Sandbox cost per call: the hardened three-layer sandbox against the one it replaced.

Both run the same generated script (a BANKING77-style keyword rule), interleaved in one process so
that machine noise hits both alike:

- **before**: the previous sandbox (one `python -I -S` child, audit hook policy held as globals,
  best-effort network namespace), loaded from git (`--baseline-ref`, default the commit before
  the hardening); skipped, and said so, when git or that commit is not available;
- **after**: static check + runtime layer + OS layer (user/mount/net/ipc/uts namespaces, a
  read-only root, chroot), as served;
- **after, runtime layer only**: the same child without the OS layer, to show what isolation costs;
- **served**: how a promoted script answers a run: its long-lived worker (all three layers, started
  once, then one request per line), so one call costs no process start.

Reported per configuration: median and p90 wall time of one call with one input (what a script
serve costs), and per input in a call with 50 inputs (what verification costs), plus the static
check alone. Writes results/sandbox_cost.json; a chart with matplotlib (skipped, said so, without).

    python examples/benchmarks/sandbox_cost.py [--calls 30] [--baseline-ref b826fe2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT))

CODE = '''
import re

RULES = [(re.compile(r"\\b(card|cards)\\b.*\\b(arrive|arrived|delivery)\\b"), "card_arrival"),
         (re.compile(r"\\b(pin)\\b"), "change_pin"),
         (re.compile(r"\\b(refund)\\b"), "request_refund")]


def solve(inputs):
    text = inputs["ticket"].lower()
    for pattern, label in RULES:
        if pattern.search(text):
            return {"intent": label}
    return None
'''
INPUTS = ["my card has not arrived yet", "how do I change my PIN?", "I want a refund", "hello there"]


def load_baseline(ref: str) -> Any:
    try:
        source = subprocess.run(["git", "show", f"{ref}:engine/promotion/sandbox.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "baseline_sandbox.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_sandbox", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_sandbox"] = module
    spec.loader.exec_module(module)
    return module


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": statistics.median(ordered), "p90_ms": ordered[int(0.9 * (len(ordered) - 1))],
            "n": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--baseline-ref", default="b826fe2")
    args = parser.parse_args()
    console = Console()

    from engine.promotion import sandbox

    problem = sandbox.isolation_problem()
    configs: dict[str, Callable[[list[dict[str, Any]]], list[Any]]] = {}
    baseline = load_baseline(args.baseline_ref)
    if baseline is not None:
        configs["before (previous sandbox)"] = lambda items: baseline.run_script(CODE, items)
    else:
        console.print(f"[yellow]baseline {args.baseline_ref} not available from git: 'before' skipped[/yellow]")
    if problem is None:
        configs["after (static + runtime + OS)"] = lambda items: sandbox.run_script(CODE, items)
    else:
        console.print(f"[yellow]OS isolation unavailable here ({problem}): 'after' skipped[/yellow]")
    configs["after, runtime layer only"] = lambda items: sandbox.run_script(CODE, items, layers={"static", "runtime"})
    if problem is None:  # how a promoted script is served: its long-lived worker, one request per input
        from engine.promotion.sandbox.worker import serve_one

        configs["served: long-lived worker (all layers)"] = lambda items: [serve_one(CODE, item) for item in items]

    one: dict[str, list[float]] = {name: [] for name in configs}
    many: dict[str, list[float]] = {name: [] for name in configs}
    batch = [{"ticket": INPUTS[i % len(INPUTS)]} for i in range(args.batch)]
    expected = [{"intent": "card_arrival"}, {"intent": "change_pin"}, {"intent": "request_refund"}, None]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("sandbox calls", total=args.calls * len(configs) * 2)
        for i in range(args.calls):
            for name, run in configs.items():  # interleaved: noise hits every configuration alike
                item = {"ticket": INPUTS[i % len(INPUTS)]}
                started = time.perf_counter()
                result = run([item])[0]
                one[name].append((time.perf_counter() - started) * 1000)
                assert result.error is None and result.output == expected[i % len(INPUTS)], (name, result)
                progress.advance(task)
                started = time.perf_counter()
                results = run(batch)
                many[name].append((time.perf_counter() - started) * 1000 / len(batch))
                assert all(r.error is None for r in results), (name, results[0])
                progress.advance(task)

    from engine.promotion.sandbox.static import check_script

    check_ms = []
    for _ in range(200):
        check_script.cache_clear()
        started = time.perf_counter()
        assert check_script(CODE) == ()
        check_ms.append((time.perf_counter() - started) * 1000)

    report = {"machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
              "calls": args.calls, "batch": args.batch, "static_check_ms": statistics.median(check_ms),
              "one_input": {k: stats(v) for k, v in one.items()},
              "per_input_in_batch": {k: stats(v) for k, v in many.items()}}
    table = Table(title="sandbox cost per call (ms)", title_justify="left")
    for col in ("configuration", "1 input: median", "p90", f"per input in {args.batch}: median", "p90"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for name in configs:
        a, b = report["one_input"][name], report["per_input_in_batch"][name]
        table.add_row(name, f"{a['median_ms']:.1f}", f"{a['p90_ms']:.1f}", f"{b['median_ms']:.2f}", f"{b['p90_ms']:.2f}")
    console.print(table)
    console.print(f"static check alone (uncached): {report['static_check_ms']:.2f} ms median")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sandbox_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("matplotlib not installed: chart skipped")
        return
    fig, ax = plt.subplots(figsize=(7, 3))
    names = list(configs)
    ax.barh(names, [report["one_input"][n]["median_ms"] for n in names], color="#4c72b0")
    ax.set_xlabel("ms per call with one input (median)")
    ax.set_title("sandbox cost per call")
    fig.tight_layout()
    fig.savefig(RESULTS / "sandbox_cost.png", dpi=120)
    console.print(f"wrote {RESULTS / 'sandbox_cost.json'} and sandbox_cost.png")


if __name__ == "__main__":
    main()
