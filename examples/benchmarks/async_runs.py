"""1,000 concurrent `Engine.arun` calls against a provider whose `acomplete` sleeps 50 ms, store on.

Measured as a new user would: one llm step, distinct BANKING77 queries as inputs, the SQLite log
on. Beside it, in the same run:
  - the floor: the provider's own 1,000 `acomplete` calls gathered directly (no engine);
  - `arun` over a thread pool (`loop.run_in_executor(pool, engine.run, ...)`, 64 threads): how
    `Engine.arun` worked before it became async-native.
Each variant runs `--rounds` times, interleaved; the table shows the median. Memory: the growth
of the process's peak RSS over the whole benchmark, and tracemalloc's peak for one engine round.

    python examples/benchmarks/async_runs.py [--runs 1000] [--rounds 5] [--latency-ms 50]

Prints a table and writes examples/benchmarks/results/async_runs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine import Engine, EngineConfig  # noqa: E402
from engine.providers.base import Completion, CompletionRequest  # noqa: E402
from engine.providers.registry import register_provider  # noqa: E402

RESULTS = ROOT / "examples" / "benchmarks" / "results" / "async_runs.json"
WORKFLOW = {
    "name": "async_classify",
    "inputs": {"ticket": {"type": "string"}},
    "steps": [{
        "id": "classify",
        "inputs": {"ticket": "{{ inputs.ticket }}"},
        "llm": {"tier": "cloud", "system": "You label banking support tickets.",
                "prompt": "Ticket: {{ ticket }}", "max_tokens": 16,
                "schema": {"type": "object", "properties": {"intent": {"type": "string"}}, "required": ["intent"]}},
    }],
}


class SleepyProvider:
    """Answers after `latency` seconds: `acomplete` awaits asyncio.sleep, `complete` time.sleep."""

    name = "sleepy"

    def __init__(self, latency: float):
        self.latency = latency

    def _reply(self, request: CompletionRequest) -> Completion:
        return Completion(text='{"intent": "card_arrival"}', finish_reason="stop", input_tokens=40,
                          output_tokens=8, model=request.model)

    def complete(self, request: CompletionRequest) -> Completion:
        time.sleep(self.latency)
        return self._reply(request)

    async def acomplete(self, request: CompletionRequest) -> Completion:
        await asyncio.sleep(self.latency)
        return self._reply(request)


def queries(data: Path, n: int) -> list[str]:
    for name in ("train.csv", "test.csv"):
        path = data / name
        if path.is_file():
            import csv

            with path.open(encoding="utf-8") as f:
                rows = [r["text"] for r in csv.DictReader(f)]
            return [rows[i % len(rows)] + ("" if i < len(rows) else f" #{i}") for i in range(n)]
    return [f"ticket number {i}: where is my card?" for i in range(n)]


def rss_peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def timed(make: Callable[[], list[Awaitable[Any]]]) -> float:
    aws = make()
    started = time.perf_counter()
    await asyncio.gather(*aws)
    return time.perf_counter() - started


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    provider = SleepyProvider(args.latency_ms / 1000)
    register_provider("sleepy", provider)
    work = Path(tempfile.mkdtemp(prefix="async-runs-"))
    engine = Engine(config=EngineConfig.model_validate({"tiers": {"cloud": [{"model": "sleepy:model"}]},
                                                        "store": str(work / "async.db")}))
    wf = engine.load(WORKFLOW)
    texts = queries(args.data, args.runs)
    request = CompletionRequest(model="model", messages=[{"role": "user", "content": "x"}], max_tokens=16)
    pool = ThreadPoolExecutor(max_workers=64)
    loop = asyncio.get_running_loop()

    variants: dict[str, Callable[[], list[Awaitable[Any]]]] = {
        "provider alone (gather of acomplete)": lambda: [provider.acomplete(request) for _ in texts],
        "Engine.arun (async-native)": lambda: [engine.arun(wf, {"ticket": t}) for t in texts],
        "engine.run on a 64-thread pool (the old arun)": lambda: [
            loop.run_in_executor(pool, engine.run, wf, {"ticket": t}) for t in texts],
    }
    rss_before = rss_peak_mb()
    for make in variants.values():  # warm up: imports, the store, the clients
        await asyncio.gather(*make()[:50])
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_no in range(args.rounds):
        for name in names[round_no % len(names):] + names[:round_no % len(names)]:
            seconds[name].append(await timed(variants[name]))
            engine.flush()  # each round starts with an empty write queue
        print(f"round {round_no + 1}/{args.rounds}: " + ", ".join(
            f"{n.split(' (')[0]} {seconds[n][-1]:.3f} s" for n in names), file=sys.stderr)
    tracemalloc.start()
    await timed(variants["Engine.arun (async-native)"])
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    engine.close()
    pool.shutdown()
    floor = statistics.median(seconds[names[0]])
    rows = []
    for name in names:
        med = statistics.median(seconds[name])
        rows.append({"variant": name, "seconds": round(med, 3), "runs_per_s": round(args.runs / med, 1),
                     "x_floor": round(med / floor, 2), "rounds_s": [round(s, 3) for s in seconds[name]]})
    return {"runs": args.runs, "latency_ms": args.latency_ms, "rounds": args.rounds, "results": rows,
            "memory": {"peak_rss_growth_mb": round(rss_peak_mb() - rss_before, 1),
                       "tracemalloc_peak_mb_one_round": round(traced_peak / 2**20, 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "benchmarks" / "data" / "banking77")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    report["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                         "platform": platform.platform()}
    table = Table(title=f"{args.runs:,} concurrent runs, provider latency {args.latency_ms:.0f} ms, store on "
                        f"(median of {args.rounds} rounds)", title_justify="left")
    for col in ("variant", "seconds", "runs/s", "× provider alone"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in report["results"]:
        table.add_row(r["variant"], f"{r['seconds']:.3f}", f"{r['runs_per_s']:.0f}", f"{r['x_floor']:.1f}")
    console = Console(width=max(Console().width, 110))
    console.print(table)
    mem = report["memory"]
    console.print(f"memory: peak RSS grew {mem['peak_rss_growth_mb']} MB over the benchmark; "
                  f"tracemalloc peak for one round of {args.runs:,} arun calls: {mem['tracemalloc_peak_mb_one_round']} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
