"""Parallel steps and fan-out against a simulated 200 ms cloud tier; a long document on the local tier.

1. `examples/review_digest`: its two llm steps (sentiment, summary) read only `redact`, so the
   runner starts them together. Each run goes to a provider that answers after `--latency-ms`
   (200 ms): parallel (the default) beside `parallel=False`, sync (`run_workflow`, threads) and
   async (`arun_workflow`, the event loop). Expected about 2x.
2. `examples/invoice_lines`: 20 line items through `for_each` at concurrency 1 and 8.
3. `examples/long_document` on the real local tier (SmolLM2 through llama.cpp, n_ctx 1024):
   tokens counted exactly, chunks, reduce rounds, wall time (skip with --skip-local).

Each variant runs `--rounds` times, interleaved, store on (a temporary SQLite file), distinct
inputs every run (the invoice example caches per line); the table shows the median.

    python examples/benchmarks/workflow_language.py [--rounds 7] [--latency-ms 200] [--skip-local]

Prints a table and writes examples/benchmarks/results/workflow_language.json (no chart: three
numbers per part read better in the table).
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
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine import EngineConfig, arun_workflow, load_workflow, run_workflow  # noqa: E402
from engine.providers.base import Completion, CompletionRequest  # noqa: E402
from engine.providers.registry import register_provider  # noqa: E402

RESULTS = ROOT / "examples" / "benchmarks" / "results" / "workflow_language.json"
REVIEW = "The blender arrived quickly and crushes ice well, but the lid leaks when it is full."


def instance(schema: dict[str, Any]) -> Any:
    """A small value that matches `schema` (enough for the example schemas)."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: instance(v) for k, v in schema.get("properties", {}).items() if k in schema.get("required", [])}
    if kind == "array":
        return []
    if kind in ("number", "integer"):
        return 2
    if kind == "boolean":
        return True
    return "fine"


class SleepyCloud:
    """A cloud tier that answers after `latency` seconds: asyncio.sleep in `acomplete`,
    time.sleep in `complete`; the reply is a valid instance of the request's schema."""

    name = "sleepy"

    def __init__(self, latency: float):
        self.latency = latency
        self.calls = 0

    def _reply(self, request: CompletionRequest) -> Completion:
        self.calls += 1
        return Completion(text=json.dumps(instance(request.schema or {})), finish_reason="stop", input_tokens=60,
                          output_tokens=10, model=request.model)

    def complete(self, request: CompletionRequest) -> Completion:
        time.sleep(self.latency)
        return self._reply(request)

    async def acomplete(self, request: CompletionRequest) -> Completion:
        await asyncio.sleep(self.latency)
        return self._reply(request)


def median_ms(fn: Callable[[int], float], rounds: int, label: str) -> tuple[float, list[float]]:
    times = []
    for r in range(rounds):
        times.append(fn(r))
        print(f"  {label}: round {r + 1}/{rounds} {times[-1]:.0f} ms", file=sys.stderr)
    return statistics.median(times), times


def cloud_part(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    provider = SleepyCloud(args.latency_ms / 1000)
    register_provider("sleepy", provider)
    config = EngineConfig.model_validate({"tiers": {"local": [{"model": "sleepy:cloud"}]},
                                          "store": str(work / "bench.db")})
    digest = load_workflow(ROOT / "examples/review_digest/workflow.yaml", config=config)
    invoice = load_workflow(ROOT / "examples/invoice_lines/workflow.yaml", config=config)
    base_lines = (ROOT / "examples/invoice_lines/invoice.txt").read_text().splitlines()
    items = [ln for ln in base_lines if ln.startswith("- ")]
    seq = iter(range(10**9))

    def invoice_text() -> str:
        n = next(seq)
        return "INVOICE\n" + "\n".join(f"{ln} (order {n}-{i})" for i in range(4) for ln in items)

    def sync_digest(parallel: bool) -> Callable[[int], float]:
        def run(_: int) -> float:
            result = run_workflow(digest, {"review": f"{REVIEW} #{next(seq)}"}, config=config, parallel=parallel)
            assert result.ok, result.error
            return result.latency_ms
        return run

    def async_digest(parallel: bool) -> Callable[[int], float]:
        def run(_: int) -> float:
            result = asyncio.run(arun_workflow(digest, {"review": f"{REVIEW} #{next(seq)}"}, config=config,
                                               parallel=parallel))
            assert result.ok, result.error
            return result.latency_ms
        return run

    def invoice_run(concurrency: int) -> Callable[[int], float]:
        invoice.step("items").concurrency = concurrency
        def run(_: int) -> float:
            invoice.step("items").concurrency = concurrency
            result = run_workflow(invoice, {"invoice": invoice_text()}, config=config)
            assert result.ok and len(result.outputs["items"]) == 4 * len(items), result.error
            return result.latency_ms
        return run

    groups = [
        ("review_digest, run_workflow (threads)", [("sequential", sync_digest(False)), ("parallel", sync_digest(True))]),
        ("review_digest, arun_workflow (event loop)", [("sequential", async_digest(False)),
                                                       ("parallel", async_digest(True))]),
        (f"invoice_lines, for_each over {4 * len(items)} items", [("concurrency 1", invoice_run(1)),
                                                                 ("concurrency 8", invoice_run(8))]),
    ]
    rows = []
    for title, variants in groups:
        for _, fn in variants:
            fn(-1)  # warm up: imports, the store
        results: dict[str, list[float]] = {name: [] for name, _ in variants}
        for r in range(args.rounds):  # interleaved, so load from other processes hits both alike
            for name, fn in (variants if r % 2 == 0 else variants[::-1]):
                results[name].append(fn(r))
            print(f"{title}: round {r + 1}/{args.rounds} " + ", ".join(
                f"{n} {results[n][-1]:.0f} ms" for n, _ in variants), file=sys.stderr)
        base = statistics.median(results[variants[0][0]])
        for name, _ in variants:
            med = statistics.median(results[name])
            rows.append({"workload": title, "variant": name, "median_ms": round(med, 1),
                         "speedup": round(base / med, 2), "rounds_ms": [round(t, 1) for t in results[name]]})
    return rows


def local_part() -> dict[str, Any]:
    wf = load_workflow(ROOT / "examples/long_document/workflow.yaml")
    document = (ROOT / "examples/long_document/document.txt").read_text()
    print("long_document on the local tier (SmolLM2, llama.cpp): this takes a minute or more on a CPU",
          file=sys.stderr)
    started = time.perf_counter()
    result = run_workflow(wf, {"document": document}, raise_on_error=False)
    wall = time.perf_counter() - started
    record = result.step("summary")
    return {"status": result.status, "error": result.error, "wall_s": round(wall, 1), "context": record.context,
            "llm_calls": record.attempts, "tokens_in": record.tokens_in, "tokens_out": record.tokens_out,
            "summary": result.outputs.get("summary")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--skip-local", action="store_true", help="skip the long document on the local model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="workflow-language-"))
    os.chdir(work)  # the store and any engine.yaml lookups stay out of the repository
    report: dict[str, Any] = {"latency_ms": args.latency_ms, "rounds": args.rounds,
                              "cloud": cloud_part(args, work)}
    if not args.skip_local:
        report["local_long_document"] = local_part()
    report["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                         "load_average": [round(x, 1) for x in os.getloadavg()]}
    console = Console(width=max(Console().width, 110))
    table = Table(title=f"simulated cloud tier, {args.latency_ms:.0f} ms a call, store on "
                        f"(median of {args.rounds} rounds)", title_justify="left")
    for col in ("workload", "variant", "median ms", "speed-up"):
        table.add_column(col, justify="left" if col in ("workload", "variant") else "right")
    for r in report["cloud"]:
        table.add_row(r["workload"], r["variant"], f"{r['median_ms']:.0f}", f"{r['speedup']:.2f}x")
    console.print(table)
    local = report.get("local_long_document")
    if local:
        ctx = local["context"] or {}
        console.print(f"long_document on the local tier: {local['status']} in {local['wall_s']} s; input "
                      f"{ctx.get('tokens')} tokens ({ctx.get('counting')}), budget {ctx.get('max_input_tokens')} a "
                      f"chunk, {ctx.get('chunks')} chunks, {ctx.get('reduce_rounds')} reduce round(s), "
                      f"{local['llm_calls']} llm calls, {local['tokens_in']}/{local['tokens_out']} tokens")
        console.print(f"summary: {local['summary'] or local['error']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
