"""Provider batches vs real time: 1,000 BANKING77 queries classified into 77 intents, once sent in
real time and once through the provider's batch API, against in-process servers speaking the
OpenAI and Anthropic wire formats (`engine.testing.batch_servers`), priced at the real list prices
(gpt-4o-mini, claude-haiku-4-5).

    python examples/benchmarks/provider_batch.py [--items 1000] [--data DIR] [--out FILE]

The servers run in their own process (so their work does not count as the engine's) and answer
the labelled intent. Measured per provider: cost of the run and the cost ratio, and the engine's
wall time: the whole run in real time (at a fake server with no latency), and for the provider
batch the whole run minus the time spent sleeping between polls (the provider's queue time,
which a real batch API adds, up to 24 h). Prints a table and writes
examples/benchmarks/results/provider_batch.json (and a chart, with the `benchmark` extra).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "examples" / "benchmarks" / "results" / "provider_batch.json"
DATA = ROOT / "examples" / "benchmarks" / "data" / "banking77"
MODELS = {"openai": "openai:gpt-4o-mini", "anthropic": "anthropic:claude-haiku-4-5"}


def load(data: Path, n: int) -> tuple[list[dict[str, str]], list[str]]:
    with (data / "test.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    random.Random(14).shuffle(rows)
    labels = json.loads((data / "categories.json").read_text())
    return [{"id": str(i), "text": r["text"], "category": r["category"]} for i, r in enumerate(rows[:n])], labels


def serve(answers: dict[str, str], queue: Any) -> None:
    """The fake providers' process: answer each query with its labelled intent."""
    from engine.testing.batch_servers import FakeProviderServer, Scenario

    def answer(messages: list[dict[str, Any]], model: str) -> Any:
        text = str(next(m["content"] for m in messages if m["role"] == "user"))
        return {"intent": answers.get(text.removeprefix("Customer message: "), "card_arrival")}

    with FakeProviderServer(answer, Scenario(polls_in_progress=1)) as server:
        queue.put(server.base_url)
        while True:
            time.sleep(3600)


def workflow(labels: list[str], tier: str) -> dict[str, Any]:
    return {
        "name": f"banking77_{tier}", "inputs": {"text": {"type": "string"}},
        "steps": [{"id": "classify", "inputs": {"text": "{{ inputs.text }}"}, "llm": {
            "tier": tier,
            "system": "You are a banking support triage assistant. Classify the customer's message into "
                      "exactly one intent.",
            "prompt": "Customer message: {{ text }}",
            "schema": {"type": "object", "properties": {"intent": {"enum": labels}}, "required": ["intent"],
                       "additionalProperties": False},
            "max_tokens": 24, "retries": 1}}],
        "outputs": {"intent": "{{ steps.classify.output.intent }}"},
    }


def measure(work: Path, base_url: str, provider: str, items: list[dict[str, str]], labels: list[str],
            batch: bool, progress: Progress) -> dict[str, Any]:
    from engine import Engine, EngineConfig
    from engine.batch import run_batch
    from engine.provider_batch import ProviderBatchOptions

    mode = "provider batch" if batch else "real time"
    url = f"{base_url}/v1" if provider == "openai" else base_url
    config = EngineConfig.model_validate({
        "tiers": {provider: [{"model": MODELS[provider], "options": {"base_url": url}}]},
        "store": str(work / f"{provider}-{'batch' if batch else 'rt'}.db")})
    engine = Engine(config=config)
    wf = engine.load(workflow(labels, provider))
    inputs = work / "items.jsonl"
    inputs.write_text("".join(json.dumps({"id": i["id"], "text": i["text"]}) + "\n" for i in items))
    task = progress.add_task(f"{provider}, {mode}", total=len(items))

    class Observer:
        def start(self, summary: Any) -> None: ...

        def advance(self, summary: Any, line: Any) -> None:
            progress.advance(task)

    options = ProviderBatchOptions(poll_s=0.05) if batch else None
    started = time.perf_counter()
    summary = run_batch(engine, wf, inputs, work / f"{provider}-{batch}.out.jsonl", concurrency=8,
                        observer=Observer(), provider_batch=options)
    wall = time.perf_counter() - started
    engine.close()
    outputs = [json.loads(line) for line in (work / f"{provider}-{batch}.out.jsonl").read_text().splitlines()]
    correct = sum(1 for o, i in zip(outputs, items) if o.get("outputs", {}).get("intent") == i["category"])
    state = summary.provider_batch
    waited = state.waited_s if state is not None else 0.0
    return {"provider": provider, "model": MODELS[provider], "mode": mode, "items": len(items), "ok": summary.ok,
            "correct": correct, "cost_usd": round(summary.cost, 9), "wall_s": round(wall, 3),
            "poll_wait_s": round(waited, 3), "engine_s": round(wall - waited, 3),
            "provider_batches": len(state.jobs) if state is not None else 0,
            "realtime_fallbacks": sum(state.fallbacks.values()) if state is not None else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    console = Console(width=max(Console().width, 130))
    if not (args.data / "test.csv").is_file():
        console.print(f"BANKING77 not found in {args.data} (use --data DIR)")
        sys.exit(2)
    items, labels = load(args.data, args.items)
    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark-fake")
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-benchmark-fake")
    queue: Any = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=({i["text"]: i["category"] for i in items}, queue), daemon=True)
    server.start()
    base_url = queue.get(timeout=60)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
            work = Path(tmp)
            os.chdir(work)
            for provider in MODELS:
                for batch in (False, True):
                    rows.append(measure(work, base_url, provider, items, labels, batch, progress))
    finally:
        server.terminate()
    for row in rows:
        realtime = next(r for r in rows if r["provider"] == row["provider"] and r["mode"] == "real time")
        row["cost_ratio"] = round(row["cost_usd"] / realtime["cost_usd"], 4) if realtime["cost_usd"] else None
        row["engine_time_ratio"] = round(row["engine_s"] / realtime["engine_s"], 3) if realtime["engine_s"] else None

    table = Table(title=f"{args.items} BANKING77 queries: real time vs provider batch (in-process wire-format "
                        f"servers, list prices)", title_justify="left")
    for col in ("model", "mode", "ok", "correct", "cost $", "cost ratio", "batches", "engine s", "engine x",
                "poll wait s"):
        table.add_column(col, justify="left" if col in ("model", "mode") else "right")
    for r in rows:
        table.add_row(r["model"], r["mode"], str(r["ok"]), str(r["correct"]), f"{r['cost_usd']:.4f}",
                      f"{r['cost_ratio']:.3f}", str(r["provider_batches"]), f"{r['engine_s']:.2f}",
                      f"{r['engine_time_ratio']:.2f}", f"{r['poll_wait_s']:.2f}")
    console.print(table)
    report = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform()},
              "items": args.items, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    chart = plot(rows, args.out.with_suffix(".png"))
    console.print(f"wrote {chart}" if chart else "chart skipped (matplotlib not installed: the benchmark extra)")


def plot(rows: list[dict[str, Any]], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = [f"{r['model'].split(':')[1]}\n{r['mode']}" for r in rows]
    colors = ["#888" if r["mode"] == "real time" else "#2a7" for r in rows]
    left.bar(names, [r["cost_usd"] for r in rows], color=colors)
    left.set_ylabel("USD for the run")
    left.set_title("cost")
    right.bar(names, [r["engine_s"] for r in rows], color=colors)
    right.set_ylabel("seconds (excluding poll waits)")
    right.set_title("engine wall time")
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


if __name__ == "__main__":
    main()
