"""Start-up: the wall time of a fresh interpreter that imports the engine (what every `engine`
command, serve worker and Ray actor pays before its first run), and of `engine --help`.

    python examples/benchmarks/startup.py [--rounds 7] [--engine-root DIR ...]

Each `--engine-root` (another checkout of the engine, e.g. an earlier commit from `git archive`)
is measured beside this one, the checkouts interleaved round by round; per checkout the median
and range of the rounds. Prints a table and writes examples/benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
CASES = {"import engine": [sys.executable, "-c", "import engine"],
         "engine --help": [sys.executable, "-m", "engine", "--help"]}


def timed(command: list[str], root: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(root)}
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=root, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--engine-root", type=Path, action="append", default=[],
                    help="another checkout to measure beside this one (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "benchmarks" / "results" / "startup.json")
    args = ap.parse_args()
    roots = [("this checkout", ROOT)] + [(f"other checkout {i + 1}", r.resolve())
                                         for i, r in enumerate(args.engine_root)]
    samples: dict[tuple[str, str], list[float]] = {(label, case): [] for label, _ in roots for case in CASES}
    for _, root in roots:  # warm the file cache and the bytecode once, unmeasured
        timed(CASES["import engine"], root)
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("start-up", total=args.rounds * len(roots) * len(CASES))
        for _ in range(args.rounds):
            for label, root in roots:
                for case, command in CASES.items():
                    samples[(label, case)].append(timed(command, root))
                    progress.advance(task)
    rows: list[dict[str, Any]] = []
    for (label, case), values in samples.items():
        values = sorted(values)
        rows.append({"checkout": label, "case": case, "median_s": round(statistics.median(values), 3),
                     "range_s": [round(values[0], 3), round(values[-1], 3)], "rounds": len(values)})
    table = Table(title=f"start-up: a fresh interpreter, median of {args.rounds} interleaved rounds (range)",
                  title_justify="left")
    for col in ("checkout", "case", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for r in rows:
        table.add_row(r["checkout"], r["case"], f"{r['median_s']:.2f} ({r['range_s'][0]:.2f}-{r['range_s'][1]:.2f})")
    Console().print(table)
    report = {"benchmark": "startup", "rounds": args.rounds, "load_average": list(os.getloadavg()),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
