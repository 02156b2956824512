"""Core benchmarks. Prints a table and writes examples/benchmarks/results/core.json.

(a) engine overhead per script step and per decision step, in microseconds (with and without the
    SQLite run log), against calling the same function / dict lookup directly;
(b) the llamacpp provider through the engine vs raw llama-cpp-python on the same prompts
    (output tokens/s, ratio);
(c) prefix reuse: a call sharing a ~500-token static prefix with the previous one vs a cold call,
    and two steps alternating prefixes with the LlamaRAMCache vs without it (max_tokens=1, so the
    latency is the time to first token).

Usage: python examples/benchmarks/core.py [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import track
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine import EngineConfig, load_workflow, run_workflow  # noqa: E402
from engine.providers.base import CompletionRequest  # noqa: E402
from engine.providers.llamacpp import LlamaCppProvider, bundled_model_path  # noqa: E402
from engine.spec.models import ModelEntry  # noqa: E402
from engine.store import SQLiteStore  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DATA = ROOT / "examples" / "benchmarks" / "data" / "banking77"
console = Console()


def identity(x: Any) -> Any:
    return x


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def bench_overhead(runs: int, n_steps: int = 20) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "ops.py").write_text("def identity(x):\n    return x\n")
    script_steps = [{"id": f"s{i}", "inputs": {"x": "{{ inputs.x }}"}, "script": "ops.py:identity"}
                    for i in range(n_steps)]
    table = {f"k{i}": i for i in range(100)}
    decision_steps = [{"id": f"d{i}", "inputs": {"x": "{{ inputs.x }}"},
                       "decision": {"key": "{{ x }}", "table": table}} for i in range(n_steps)]
    config = EngineConfig(tiers={"local": [ModelEntry(model="fake:x")]})
    out: dict[str, Any] = {}
    for kind, steps in (("script", script_steps), ("decision", decision_steps)):
        path = tmp / f"{kind}.yaml"
        path.write_text(json.dumps({"name": kind, "inputs": {"x": {"type": "string"}}, "steps": steps}))
        wf = load_workflow(path, config=config)
        store = SQLiteStore(tmp / f"{kind}.db")
        direct = (lambda: [identity("k7") for _ in range(n_steps)]) if kind == "script" else (
            lambda: [table["k7"] for _ in range(n_steps)])
        t_direct = timed(direct, runs)
        t_nostore = timed(lambda wf=wf: run_workflow(wf, {"x": "k7"}, store=False), runs)
        t_store = timed(lambda wf=wf, store=store: run_workflow(wf, {"x": "k7"}, store=store), runs)
        out[kind] = {
            "steps_per_run": n_steps,
            "direct_us_per_step": t_direct / n_steps * 1e6,
            "engine_us_per_step_no_store": (t_nostore - t_direct) / n_steps * 1e6,
            "engine_us_per_step_with_store": (t_store - t_direct) / n_steps * 1e6,
        }
    return out


def queries(n: int) -> list[str]:
    path = DATA / "test.csv"
    if not path.exists():
        return [f"My card number {i} has not arrived yet, what should I do?" for i in range(n)]
    with path.open() as f:
        return [row["text"] for _, row in zip(range(n), csv.DictReader(f))]


SCHEMA = {"type": "object", "properties": {"topic": {"enum": ["card", "transfer", "account", "other"]},
                                           "urgent": {"type": "boolean"}},
          "required": ["topic", "urgent"], "additionalProperties": False}
SYSTEM = "You sort banking support messages by topic and urgency."


def bench_throughput(prompts: list[str], max_tokens: int = 24) -> dict[str, Any]:
    import llama_cpp

    tmp = Path(tempfile.mkdtemp())
    wf_path = tmp / "wf.yaml"
    wf_path.write_text(json.dumps({
        "name": "throughput", "inputs": {"q": {"type": "string"}},
        "steps": [{"id": "sort", "inputs": {"q": "{{ inputs.q }}"},
                   "llm": {"system": SYSTEM, "prompt": "Message: {{ q }}", "schema": SCHEMA,
                           "max_tokens": max_tokens, "retries": 0}}]}))
    options = {"n_ctx": 2048, "cache_bytes": 0}
    config = EngineConfig(tiers={"local": [ModelEntry(model="llamacpp:smollm2", options=options)]})
    wf = load_workflow(wf_path, config=config)
    store = SQLiteStore(tmp / "t.db")
    from engine.steps.llm import system_message

    spec = wf.steps[0].llm
    assert spec is not None
    raw = llama_cpp.Llama(model_path=str(bundled_model_path()), n_ctx=2048, n_gpu_layers=0,
                          n_threads=os.cpu_count() or 1, seed=0, verbose=False)
    from engine.providers.registry import get_provider

    provider = get_provider("llamacpp")
    provider.load("smollm2", options)  # load outside the timing, like the raw model
    engine_time = raw_time = 0.0
    engine_tokens = raw_tokens = 0
    for q in track(prompts, description="(b) engine vs raw llama-cpp-python", console=console):
        t = time.perf_counter()
        result = run_workflow(wf, {"q": q}, store=store, raise_on_error=False)
        engine_time += time.perf_counter() - t
        engine_tokens += result.tokens_out
        messages = [{"role": "system", "content": system_message(spec)}, {"role": "user", "content": f"Message: {q}"}]
        t = time.perf_counter()
        out = raw.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0,
                                         response_format={"type": "json_object", "schema": SCHEMA})
        raw_time += time.perf_counter() - t
        raw_tokens += out["usage"]["completion_tokens"]
    return {
        "prompts": len(prompts),
        "engine_tokens_per_s": engine_tokens / engine_time,
        "raw_tokens_per_s": raw_tokens / raw_time,
        "engine_over_raw_ratio": (engine_tokens / engine_time) / (raw_tokens / raw_time),
        "engine_s_per_call": engine_time / len(prompts),
        "raw_s_per_call": raw_time / len(prompts),
    }


def bench_prefix(rounds: int) -> dict[str, Any]:
    prefix_a = ("You are a meticulous banking assistant. " + "Policy: answer briefly and politely. " * 70)
    prefix_b = ("You are a careful fraud analyst. " + "Rule: flag anything unusual at once. " * 70)
    questions = [f"Question {i}: is my card on its way?" for i in range(rounds * 2 + 2)]

    def call(provider: LlamaCppProvider, options: dict[str, Any], system: str, question: str) -> float:
        t = time.perf_counter()
        provider.complete(CompletionRequest(model="smollm2", options=options, max_tokens=1,
                                            messages=[{"role": "system", "content": system},
                                                      {"role": "user", "content": question}]))
        return time.perf_counter() - t

    with_cache = {"n_ctx": 2048, "cache_bytes": 512 << 20}
    without_cache = {"n_ctx": 2048, "cache_bytes": 0}
    cached, plain = LlamaCppProvider(), LlamaCppProvider()
    llama = cached.load("smollm2", with_cache).llama
    plain.load("smollm2", without_cache)
    prefix_tokens = len(llama.tokenize(prefix_a.encode()))
    first = call(cached, with_cache, prefix_a, questions[0])
    second = [call(cached, with_cache, prefix_a, q) for q in questions[1:rounds + 1]]
    # Two steps alternating static prefixes (A, B, A, B, ...).
    alt_cached, alt_plain = [], []
    call(cached, with_cache, prefix_b, questions[0])
    call(plain, without_cache, prefix_a, questions[0])
    call(plain, without_cache, prefix_b, questions[0])
    for i in track(range(rounds), description="(c) alternating prefixes", console=console):
        for prefix in (prefix_a, prefix_b):
            alt_cached.append(call(cached, with_cache, prefix, questions[i + 2]))
            alt_plain.append(call(plain, without_cache, prefix, questions[i + 2]))
    return {
        "static_prefix_tokens": prefix_tokens,
        "first_call_ttft_s": first,
        "second_call_same_prefix_ttft_s": statistics.median(second),
        "first_over_second_ratio": first / statistics.median(second),
        "alternating_with_ram_cache_ttft_s": statistics.median(alt_cached),
        "alternating_without_cache_ttft_s": statistics.median(alt_plain),
        "alternating_speedup_ratio": statistics.median(alt_plain) / statistics.median(alt_cached),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    runs, n_prompts, rounds = (50, 6, 3) if args.quick else (300, 20, 8)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}}
    with console.status("(a) engine overhead per step"):
        results["overhead"] = bench_overhead(runs)
    results["throughput"] = bench_throughput(queries(n_prompts))
    results["prefix"] = bench_prefix(rounds)

    table = Table(title="engine core benchmarks")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for kind in ("script", "decision"):
        o = results["overhead"][kind]
        table.add_row(f"(a) {kind} step overhead, no store", f"{o['engine_us_per_step_no_store']:.1f} µs")
        table.add_row(f"(a) {kind} step overhead, with SQLite log", f"{o['engine_us_per_step_with_store']:.1f} µs")
    t = results["throughput"]
    table.add_row("(b) engine tokens/s", f"{t['engine_tokens_per_s']:.1f}")
    table.add_row("(b) raw llama-cpp-python tokens/s", f"{t['raw_tokens_per_s']:.1f}")
    table.add_row("(b) engine / raw ratio", f"{t['engine_over_raw_ratio']:.3f}")
    p = results["prefix"]
    table.add_row("(c) static prefix tokens", str(p["static_prefix_tokens"]))
    table.add_row("(c) first call TTFT", f"{p['first_call_ttft_s'] * 1000:.0f} ms")
    table.add_row("(c) second call, same prefix, TTFT", f"{p['second_call_same_prefix_ttft_s'] * 1000:.0f} ms")
    table.add_row("(c) first / second ratio", f"{p['first_over_second_ratio']:.1f}x")
    table.add_row("(c) alternating A/B with LlamaRAMCache", f"{p['alternating_with_ram_cache_ttft_s'] * 1000:.0f} ms")
    table.add_row("(c) alternating A/B without cache", f"{p['alternating_without_cache_ttft_s'] * 1000:.0f} ms")
    table.add_row("(c) alternating speed-up", f"{p['alternating_speedup_ratio']:.1f}x")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "core.json").write_text(json.dumps(results, indent=2))
    console.print(f"wrote {RESULTS / 'core.json'}")


if __name__ == "__main__":
    main()
