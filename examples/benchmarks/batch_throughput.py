"""Batch throughput at concurrency 1, 8 and 64: a cloud-like provider with a simulated 50 ms
latency (speed-up ratio), as an async-native provider (`acomplete` awaits the latency) and as a
sync-only plugin (`complete` sleeps; the engine runs it on worker threads), and the bundled local
model (llama.cpp, serialized per model).

    python examples/benchmarks/batch_throughput.py [--items 128] [--local-items 12] [--no-local]

Prints a table and writes examples/benchmarks/results/batch_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from engine import Engine, EngineConfig
from engine.batch import run_batch
from engine.providers.base import Completion, CompletionRequest
from engine.providers.fake import FakeProvider
from engine.providers.registry import register_provider

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "examples" / "benchmarks" / "results" / "batch_throughput.json"
TRIAGE = ROOT / "examples" / "support_triage"
LEVELS = (1, 8, 64)

SIM_WORKFLOW = {
    "name": "sim_classify",
    "inputs": {"ticket": {"type": "string"}},
    "steps": [{
        "id": "classify",
        "inputs": {"ticket": "{{ inputs.ticket }}"},
        "llm": {"tier": "cloud", "prompt": "Ticket: {{ ticket }}", "max_tokens": 16,
                "schema": {"type": "object", "properties": {"intent": {"type": "string"}}, "required": ["intent"]}},
    }],
}


def sim_provider(latency_s: float) -> FakeProvider:
    def respond(_request: object) -> dict[str, str]:
        time.sleep(latency_s)
        return {"intent": "card_arrival"}

    return FakeProvider(responder=respond)


class AsyncSim:
    """A cloud-like async-native provider: `acomplete` awaits the latency."""

    name = "asim"

    def __init__(self, latency_s: float):
        self.latency_s = latency_s

    def _reply(self, request: CompletionRequest) -> Completion:
        return Completion(text='{"intent": "card_arrival"}', finish_reason="stop", input_tokens=30,
                          output_tokens=6, model=request.model)

    def complete(self, request: CompletionRequest) -> Completion:
        time.sleep(self.latency_s)
        return self._reply(request)

    async def acomplete(self, request: CompletionRequest) -> Completion:
        await asyncio.sleep(self.latency_s)
        return self._reply(request)


def tickets(n: int, offset: int = 0) -> list[dict[str, str]]:
    """BANKING77 queries (examples/support_triage/tickets.jsonl); distinct `offset`s give each
    concurrency level its own tickets, so llama.cpp's prompt-state cache cannot favour later runs."""
    rows = [json.loads(line) for line in (TRIAGE / "tickets.jsonl").read_text().splitlines() if line.strip()]
    return [{"id": str(i), "ticket": rows[(offset + i) % len(rows)]["ticket"]} for i in range(n)]


def measure(engine: Engine, workflow: object, items: list[dict[str, str]], concurrency: int, work: Path,
            progress: Progress, label: str) -> dict[str, float]:
    inputs = work / f"{label}-{concurrency}.jsonl"
    inputs.write_text("".join(json.dumps(i) + "\n" for i in items))
    task = progress.add_task(f"{label} c={concurrency}", total=len(items))

    class Observer:
        def start(self, summary: object) -> None: ...

        def advance(self, summary: object, line: object) -> None:
            progress.advance(task)

    started = time.perf_counter()
    summary = run_batch(engine, workflow, inputs, work / f"{label}-{concurrency}.out.jsonl",  # type: ignore[arg-type]
                        concurrency=concurrency, observer=Observer())
    seconds = time.perf_counter() - started
    return {"concurrency": concurrency, "items": len(items), "ok": summary.ok, "failed": summary.failed,
            "seconds": round(seconds, 3), "items_per_s": round(len(items) / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=128, help="items per run, simulated provider")
    parser.add_argument("--local-items", type=int, default=12, help="items per run, local model")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--no-local", action="store_true")
    args = parser.parse_args()

    console = Console()
    report: dict[str, object] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "latency_ms": args.latency_ms,
    }
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
        work = Path(tmp)
        os.chdir(work)
        register_provider("sim", sim_provider(args.latency_ms / 1000))
        register_provider("asim", AsyncSim(args.latency_ms / 1000))
        for key, model in (("simulated_50ms_async", "asim:model"), ("simulated_50ms", "sim:model")):
            sim = Engine(config=EngineConfig.model_validate({"tiers": {"cloud": [{"model": model}]},
                                                             "store": str(work / f"{key}.db")}))
            wf = sim.load(SIM_WORKFLOW)
            rows = [measure(sim, wf, tickets(args.items), c, work, progress, key) for c in LEVELS]
            base = rows[0]["items_per_s"]
            for r in rows:
                r["speedup"] = round(r["items_per_s"] / base, 2)
            report[key] = rows
        if not args.no_local:
            local = Engine(config=EngineConfig.model_validate({
                "tiers": {"local": [{"model": "llamacpp:smollm2"}]}, "store": str(work / "local.db")}))
            triage = local.load(TRIAGE / "workflow.yaml")
            local.warm(triage)
            local.run(triage, {"ticket": tickets(1, offset=39)[0]["ticket"]})  # static prefix evaluated once
            rows = [measure(local, triage, tickets(args.local_items, offset=k * args.local_items), c, work,
                            progress, "local") for k, c in enumerate(LEVELS)]
            base = rows[0]["items_per_s"]
            for r in rows:
                r["speedup"] = round(r["items_per_s"] / base, 2)
            report["local_smollm2"] = rows

    table = Table(title="batch throughput (items/s; speed-up vs concurrency 1)", title_justify="left")
    for col in ("provider", "concurrency", "items", "seconds", "items/s", "speed-up", "failed"):
        table.add_column(col, justify="left" if col == "provider" else "right")
    for key, name in (("simulated_50ms_async", f"simulated {args.latency_ms:.0f} ms, async-native"),
                      ("simulated_50ms", f"simulated {args.latency_ms:.0f} ms, sync-only plugin"),
                      ("local_smollm2", "local SmolLM2")):
        for r in report.get(key, []):  # type: ignore[union-attr]
            table.add_row(name, str(r["concurrency"]), str(r["items"]), f"{r['seconds']:.2f}",
                          f"{r['items_per_s']:.1f}", f"{r['speedup']:.2f}x", str(r["failed"]))
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {RESULTS.relative_to(ROOT)}")
    chart = plot(report)
    if chart:
        console.print(f"wrote {chart.relative_to(ROOT)}")


def plot(report: dict[str, object]) -> Path | None:
    """Speed-up against concurrency, for each provider (needs the `benchmark` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, label in (("simulated_50ms_async", f"async-native provider, {report['latency_ms']:.0f} ms latency"),
                       ("simulated_50ms", f"sync-only provider, {report['latency_ms']:.0f} ms latency (threads)"),
                       ("local_smollm2", "local SmolLM2 (calls serialized per model)")):
        rows = report.get(key) or []
        if rows:
            xs = [r["concurrency"] for r in rows]  # type: ignore[index]
            ys = [r["speedup"] for r in rows]  # type: ignore[index]
            ax.plot(xs, ys, marker="o", label=label)
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.1f}x", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(LEVELS, [str(c) for c in LEVELS])
    ax.set_xlabel("--concurrency")
    ax.set_ylabel("throughput vs concurrency 1")
    ax.set_title("engine run --inputs: batch throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = RESULTS.with_suffix(".png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


if __name__ == "__main__":
    main()
