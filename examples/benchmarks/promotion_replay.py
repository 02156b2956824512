"""Replay benchmark: graduate BANKING77 intent classification out of the LLM.

A stream of requests is drawn with a Zipf-like skew from the BANKING77 test queries (repeats are
what real traffic has). The llm step's tier is **premium**: a *simulated* replay provider that
answers with the labelled intent, priced like a frontier API (USD 2.50 / 10.00 per million
input / output tokens; tokens estimated at 4 characters per token). No real premium model is called.

Rounds: the first round runs on the llm only (it fills the log); after each round the engine mines
the log, proposes a lookup, and the benchmark accepts it (as a person would after review); the
next round runs with the materialized table first (2% spot checks re-ask the premium tier).

Reported: share of llm-step executions served at zero tokens, cost against the all-premium
baseline, agreement of materialized answers with the premium answers, and the latency of a
materialized serve against a local-tier call (the bundled SmolLM2 through llama.cpp, a few calls)
and against a sandboxed script serve.

    python examples/benchmarks/promotion_replay.py [--requests 20000] [--rounds 4] [--data DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
INPUT_PRICE, OUTPUT_PRICE = 2.50, 10.00  # USD per million tokens (simulated premium tier)

WORKFLOW = """\
name: banking77_replay
inputs: {ticket: {type: string}}
steps:
  - id: classify
    inputs: {ticket: "{{ inputs.ticket }}"}
    llm:
      tier: %(tier)s
      system: You are a banking support triage assistant. Pick the one intent that matches the message.
      prompt: "Customer message: {{ ticket }}"
      schema:
        type: object
        properties: {intent: {enum: %(intents)s}}
        required: [intent]
        additionalProperties: false
      max_tokens: 32
      retries: 0
      promote: {min_calls: 3, min_agreement: 0.95, spot_check: 0.02}
"""
CONFIG = """\
store: engine.db
tiers:
  premium:
    - model: replay:premium-sim
      input_price: %s
      output_price: %s
""" % (INPUT_PRICE, OUTPUT_PRICE)


class ReplayProvider:
    """Simulated premium tier: answers with the labelled intent; tokens = characters / 4."""

    name = "replay"

    def __init__(self, labels: dict[str, str]):
        self.labels = labels
        self.calls = 0

    def complete(self, request: Any) -> Any:
        from engine.providers.base import Completion

        self.calls += 1
        text = request.messages[-1]["content"].removeprefix("Customer message: ")
        reply = json.dumps({"intent": self.labels[text]})
        tokens_in = sum(len(m["content"]) for m in request.messages) // 4
        return Completion(text=reply, finish_reason="stop", input_tokens=tokens_in,
                          output_tokens=max(1, len(reply) // 4), model=request.model)


def zipf_stream(queries: list[str], n: int, s: float, rng: random.Random) -> list[str]:
    order = queries[:]
    rng.shuffle(order)
    weights = [1 / (rank + 1) ** s for rank in range(len(order))]
    return rng.choices(order, weights=weights, k=n)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "banking77")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent over query ranks")
    ap.add_argument("--local-samples", type=int, default=8, help="real SmolLM2 calls for the latency line")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "promotion_replay.json")
    args = ap.parse_args(argv)
    console = Console(stderr=True)

    with (args.data / "test.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    labels: dict[str, str] = {}
    for r in rows:
        labels.setdefault(r["text"], r["category"])
    intents = sorted({r["category"] for r in rows})
    rng = random.Random(args.seed)
    stream = zipf_stream(list(labels), args.requests, args.zipf, rng)

    work = Path(tempfile.mkdtemp(prefix="promotion-replay-"))
    os.environ["ENGINE_HOME"] = str(work / "home")
    os.environ.pop("ENGINE_DB", None)
    (work / "engine.yaml").write_text(CONFIG)
    wf_path = work / "workflow.yaml"
    wf_path.write_text(WORKFLOW % {"tier": "premium", "intents": json.dumps(intents)})

    from engine import load_workflow, run_workflow
    from engine.promotion import review
    from engine.promotion.server import seed
    from engine.providers.registry import register_provider
    from engine.runner import open_store

    replay = ReplayProvider(labels)
    register_provider("replay", replay)
    seed(args.seed)
    store = open_store(work / "engine.db")
    wf = load_workflow(wf_path)

    premium_cost: dict[str, float] = {}  # per query, from its llm calls (deterministic tokens)
    per_round: list[dict[str, Any]] = []
    serve_ms: list[float] = []
    llm_ms: list[float] = []
    agree = served = 0
    size = len(stream) // args.rounds
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("replaying", total=len(stream))
        for rnd in range(args.rounds):
            chunk = stream[rnd * size:(rnd + 1) * size] if rnd < args.rounds - 1 else stream[rnd * size:]
            zero = cost = 0.0
            unknown_baseline: list[str] = []
            for text in chunk:
                result = run_workflow(wf, {"ticket": text}, store=store)
                step = result.step("classify")
                if step.served_by in ("lookup", "script"):
                    zero += 1
                    served += 1
                    agree += step.output["intent"] == labels[text]
                    serve_ms.append(step.latency_ms)
                else:
                    premium_cost.setdefault(text, step.cost)
                    llm_ms.append(step.latency_ms)
                cost += step.cost
                unknown_baseline.append(text)
                progress.advance(task)
            baseline = sum(premium_cost[t] for t in unknown_baseline)
            entry = {"round": rnd + 1, "requests": len(chunk), "zero_token": int(zero),
                     "zero_token_share": zero / len(chunk), "cost": cost, "baseline_cost": baseline}
            if rnd < args.rounds - 1:
                reports = review.propose(store, wf_path, scripts=False)
                accepted = [p for _, rep in reports for p in rep.proposed]
                for p in accepted:
                    review.accept(store, p.id)
                entry["accepted_rows"] = sum(len(p.payload["rows"]) for p in accepted)
            per_round.append(entry)

    status = review.status(store)
    spot = {"checks": sum(r.spot["checks"] for r in status), "agree": sum(r.spot["agree"] for r in status)}
    table_rows = sum(1 for _ in (work / "promotions" / "banking77_replay").glob("classify.lookup.v*.json"))

    local_ms = _local_latency(labels, intents, args.local_samples, console)
    script_ms = _script_latency()

    total = len(stream)
    total_zero = sum(r["zero_token"] for r in per_round)
    total_cost = sum(r["cost"] for r in per_round)
    total_base = sum(r["baseline_cost"] for r in per_round)
    promoted_rounds = per_round[1:]
    result: dict[str, Any] = {
        "simulated_premium": "replay provider answering the labelled intent (no real model); "
                             f"priced USD {INPUT_PRICE}/{OUTPUT_PRICE} per M input/output tokens, tokens = chars/4",
        "requests": total, "distinct_queries_in_stream": len(set(stream)), "zipf_s": args.zipf,
        "rounds": per_round, "zero_token_share": total_zero / total,
        "zero_token_share_after_first_accept": (sum(r["zero_token"] for r in promoted_rounds)
                                                / max(1, sum(r["requests"] for r in promoted_rounds))),
        "cost": total_cost, "baseline_cost": total_base, "cost_ratio": total_cost / total_base,
        "materialized_agreement_with_premium": agree / served if served else None,
        "spot_checks": spot, "lookup_versions": table_rows,
        "latency_ms": {
            "materialized_serve_median": statistics.median(serve_ms) if serve_ms else None,
            "materialized_serve_p95": _p95(serve_ms),
            "premium_replay_step_median": statistics.median(llm_ms) if llm_ms else None,
            "local_smollm2_call_median": statistics.median(local_ms) if local_ms else None,
            "local_samples": len(local_ms),
            "sandboxed_script_serve_median": statistics.median(script_ms),
        },
    }
    _print(console, result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _chart(result, args.out.with_suffix(".png"))
    return result


def _p95(values: list[float]) -> float | None:
    return sorted(values)[int(0.95 * (len(values) - 1))] if values else None


def _local_latency(labels: dict[str, str], intents: list[str], n: int, console: Console) -> list[float]:
    """Step latency of the same llm step on the local tier (bundled SmolLM2), not logged."""
    if n <= 0:
        return []
    from engine import run_workflow

    path = Path(tempfile.mkdtemp(prefix="promotion-local-")) / "workflow.yaml"
    path.write_text(WORKFLOW % {"tier": "local", "intents": json.dumps(intents)})
    out = []
    for text in list(labels)[:n]:
        try:
            result = run_workflow(path, {"ticket": text}, store=False, servers=[], raise_on_error=False)
        except Exception as e:  # noqa: BLE001 - report and go on without the line
            console.print(f"local model unavailable: {e}")
            return []
        out.append(result.step("classify").latency_ms)
    return out


def _script_latency(n: int = 20) -> list[float]:
    from engine.promotion.sandbox import run_one

    code = "def solve(inputs):\n    return {'intent': 'card_arrival'} if 'card' in inputs['ticket'] else None\n"
    out = []
    for _ in range(n):
        started = time.perf_counter()
        run_one(code, {"ticket": "my card has not arrived"})
        out.append((time.perf_counter() - started) * 1000)
    return out


def _print(console: Console, r: dict[str, Any]) -> None:
    table = Table(title=f"promotion replay: BANKING77, {r['requests']:,} requests "
                        f"({r['distinct_queries_in_stream']:,} distinct), premium tier SIMULATED")
    for col in ("round", "requests", "zero-token share", "cost", "all-premium cost", "ratio", "rows accepted after"):
        table.add_column(col, justify="right")
    for x in r["rounds"]:
        table.add_row(str(x["round"]), f"{x['requests']:,}", f"{x['zero_token_share']:.1%}", f"${x['cost']:.4f}",
                      f"${x['baseline_cost']:.4f}", f"{x['cost'] / x['baseline_cost']:.2f}",
                      str(x.get("accepted_rows", "-")))
    table.add_row("all", f"{r['requests']:,}", f"{r['zero_token_share']:.1%}", f"${r['cost']:.4f}",
                  f"${r['baseline_cost']:.4f}", f"{r['cost_ratio']:.2f}", "")
    Console().print(table)
    lat = r["latency_ms"]
    Console().print(
        f"materialized answers agreeing with premium: {r['materialized_agreement_with_premium']:.2%}; "
        f"spot checks {r['spot_checks']['agree']}/{r['spot_checks']['checks']} agree\n"
        f"latency (median ms): materialized serve {lat['materialized_serve_median']:.2f} "
        f"(p95 {lat['materialized_serve_p95']:.2f}), local SmolLM2 call "
        f"{lat['local_smollm2_call_median'] or float('nan'):.0f} (n={lat['local_samples']}), "
        f"sandboxed script serve {lat['sandboxed_script_serve_median']:.1f}")


def _chart(r: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart", file=sys.stderr)
        return
    rounds = [x["round"] for x in r["rounds"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(rounds, [100 * x["zero_token_share"] for x in r["rounds"]], color="#4c72b0")
    a.set(xlabel="round (propose + accept between rounds)", ylabel="% served at zero tokens",
          title="Zero-token share", ylim=(0, 100), xticks=rounds)
    width = 0.38
    b.bar([x - width / 2 for x in rounds], [x["baseline_cost"] for x in r["rounds"]], width,
          label="all-premium baseline", color="#c44e52")
    b.bar([x + width / 2 for x in rounds], [x["cost"] for x in r["rounds"]], width, label="with promotions",
          color="#55a868")
    b.set(xlabel="round", ylabel="USD (simulated premium price)", title="Cost per round", xticks=rounds)
    b.legend()
    fig.suptitle(f"BANKING77 replay, {r['requests']:,} Zipf-skewed requests (premium tier simulated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
