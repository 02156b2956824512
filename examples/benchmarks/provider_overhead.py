"""Engine overhead per llm step over a direct SDK call, beside LiteLLM's Router, in one run.

All three answer from memory, with no network:
  - direct:  `openai.OpenAI(http_client=<mock transport>).chat.completions.create(...)`
  - engine:  `run_workflow` of a one-step workflow whose tier is `openai:gpt-4o-mini`, through the
             engine's OpenAI adapter on the same mock transport (render, gate, call, validate,
             log to SQLite; and once more with no store)
  - litellm: `litellm.Router(...).completion(...)` with `mock_response` (LiteLLM's own mock, which
             skips HTTP altogether), and a Router on the same mock transport as the others (an
             `openai` client passed per call as `client=`), where LiteLLM accepts one.

Rounds interleave the variants (rotating their order) so that machine noise hits them alike; the
table shows the median and the best round (microseconds per call), each one's ratio to the direct
SDK call, and for the engine its own time: the run minus the time spent inside its adapter's
SDK call, measured in the same run.

Needs the `bench` extra (litellm<=1.100), which wants openai<3: install it in its own venv,
`pip install -e '.[bench-litellm]'`. Usage: python examples/benchmarks/provider_overhead.py [--calls 300]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch its price map
os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-key")

import openai  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine import run_workflow  # noqa: E402
from engine.providers.openai import OpenAIProvider  # noqa: E402
from engine.providers.registry import register_provider  # noqa: E402
from engine.spec import load_workflow  # noqa: E402

SCHEMA = {"type": "object", "properties": {"label": {"enum": ["spam", "ham"]}}, "required": ["label"],
          "additionalProperties": False}
REPLY = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": '{"label": "spam"}'},
                      "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 60, "completion_tokens": 6, "total_tokens": 66,
                   "prompt_tokens_details": {"cached_tokens": 0}}}
WORKFLOW = """\
name: bench
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: cloud
      system: You label messages as spam or ham.
      prompt: "Label this: {{ text }}"
      schema: {type: object, properties: {label: {enum: [spam, ham]}}, required: [label], additionalProperties: false}
      max_tokens: 16
      cache: false     # measure the llm step itself, not the exact cache answering repeats
tiers:
  cloud:
    - model: openai:gpt-4o-mini
"""
MESSAGES = [{"role": "system", "content": "You label messages as spam or ham."},
            {"role": "user", "content": "Label this: win a prize"}]


def sdk_http() -> Any:
    return importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])


def mock_client() -> Any:
    http = sdk_http()
    body = json.dumps(REPLY).encode()
    return http.Client(transport=http.MockTransport(
        lambda request: http.Response(200, content=body, headers={"content-type": "application/json"})))


class TimedOpenAIProvider(OpenAIProvider):
    """The engine's adapter, timing its own `complete` so the engine's share can be split out."""

    inside = 0.0

    def complete(self, request: Any) -> Any:
        started = time.perf_counter()
        try:
            return super().complete(request)
        finally:
            TimedOpenAIProvider.inside += time.perf_counter() - started


def variants(workdir: Path) -> dict[str, Callable[[], Any]]:
    direct = openai.OpenAI(http_client=mock_client(), max_retries=0)
    fmt = {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA, "strict": True}}

    def direct_call() -> Any:
        return direct.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=16,
                                              temperature=0, response_format=fmt)

    register_provider("openai", TimedOpenAIProvider(http_client=mock_client()))
    path = workdir / "bench.yaml"
    path.write_text(WORKFLOW)
    wf = load_workflow(path)
    budgeted_dir = workdir / "budgeted"
    budgeted_dir.mkdir()
    (budgeted_dir / "bench.yaml").write_text(WORKFLOW)
    (budgeted_dir / "engine.yaml").write_text("budgets: {run: 1.0, workflow_day: 1000, tier_day: {cloud: 1000}}\n")
    budgeted = load_workflow(budgeted_dir / "bench.yaml")
    os.environ["ENGINE_DB"] = str(workdir / "bench.db")
    out: dict[str, Callable[[], Any]] = {
        "direct SDK call": direct_call,
        "engine run (SQLite log)": lambda: run_workflow(wf, {"text": "win a prize"}),
        "engine run (no store)": lambda: run_workflow(wf, {"text": "win a prize"}, store=False),
        "engine run (SQLite log, 3 budget caps)": lambda: run_workflow(budgeted, {"text": "win a prize"}),
    }
    try:
        import litellm
        from litellm import Router
    except ImportError:
        print("litellm is not installed (pip install -e '.[bench-litellm]'): skipping it", file=sys.stderr)
        return out
    litellm.suppress_debug_info = True
    mocked = Router(model_list=[{"model_name": "small", "litellm_params": {
        "model": "openai/gpt-4o-mini", "api_key": "sk-bench", "mock_response": '{"label": "spam"}'}}])
    out["litellm Router (mock_response)"] = lambda: mocked.completion(
        model="small", messages=MESSAGES, max_tokens=16, temperature=0, response_format=fmt)
    client = openai.OpenAI(api_key="sk-bench", http_client=mock_client(), max_retries=0)
    try:
        transport = Router(model_list=[{"model_name": "small", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_key": "sk-bench"}}])
        transport.completion(model="small", messages=MESSAGES, max_tokens=16, response_format=fmt, client=client)
        out["litellm Router (same mock transport)"] = lambda: transport.completion(
            model="small", messages=MESSAGES, max_tokens=16, temperature=0, response_format=fmt, client=client)
    except Exception as e:  # noqa: BLE001
        print(f"litellm Router would not take the mock client ({type(e).__name__}): skipping that row",
              file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per variant per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=ROOT / "examples/benchmarks/results/provider_overhead.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        fns = variants(Path(tmp))
        for fn in fns.values():  # warm up (imports, clients, the store, caches)
            for _ in range(20):
                fn()
        samples: dict[str, list[float]] = {name: [] for name in fns}
        engine_only: dict[str, list[float]] = {name: [] for name in fns if name.startswith("engine")}
        with Progress(transient=True) as progress:
            task = progress.add_task("measuring", total=args.rounds * len(fns))
            order = list(fns.items())
            for round_no in range(args.rounds):
                for name, fn in order[round_no % len(order):] + order[:round_no % len(order)]:
                    TimedOpenAIProvider.inside = 0.0
                    started = time.perf_counter()
                    for _ in range(args.calls):
                        fn()
                    elapsed = time.perf_counter() - started
                    samples[name].append(elapsed / args.calls * 1e6)
                    if name in engine_only:  # the engine's own time: the run minus the adapter's call
                        engine_only[name].append((elapsed - TimedOpenAIProvider.inside) / args.calls * 1e6)
                    progress.advance(task)

    base, base_min = statistics.median(samples["direct SDK call"]), min(samples["direct SDK call"])
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        row = {"variant": name, "us_per_call": round(median, 1), "ratio_to_direct": round(median / base, 2),
               "min_us_per_call": round(min(values), 1), "min_ratio_to_direct": round(min(values) / base_min, 2),
               "overhead_us": round(median - base, 1), "rounds_us": [round(v, 1) for v in values]}
        if name in engine_only:
            row["engine_own_us"] = round(statistics.median(engine_only[name]), 1)
        rows.append(row)
    table = Table(title="llm step on a mock transport: µs per call (median and best of rounds)")
    for col in ("variant", "median µs", "× direct", "best µs", "× direct (best)", "engine's own µs"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        own = r.get("engine_own_us")
        table.add_row(r["variant"], f"{r['us_per_call']:.0f}", f"{r['ratio_to_direct']:.2f}",
                      f"{r['min_us_per_call']:.0f}", f"{r['min_ratio_to_direct']:.2f}",
                      "-" if own is None else f"{own:.0f}")
    Console(width=max(Console().width, 120)).print(table)
    versions = {}
    for package in ("openai", "litellm"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "provider_overhead", "calls_per_round": args.calls, "rounds": args.rounds,
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "versions": versions, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    import importlib.metadata

    main()
