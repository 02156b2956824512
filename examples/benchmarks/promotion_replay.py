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
      quality: {reference: premium}     # its answers are trusted evidence for promotion
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
    """Simulated premium tier: answers with the labelled intent (with `noise`, that share of answers is
    a random other intent, as an imperfect model would); tokens = characters / 4."""

    name = "replay"

    def __init__(self, labels: dict[str, str], intents: list[str], noise: float = 0.0, seed: int = 0):
        self.labels = labels
        self.intents = intents
        self.noise = noise
        self.rng = random.Random(seed)
        self.calls = 0

    def complete(self, request: Any) -> Any:
        from engine.providers.base import Completion

        self.calls += 1
        text = request.messages[-1]["content"].removeprefix("Customer message: ")
        intent = self.labels[text]
        if self.noise and self.rng.random() < self.noise:
            intent = self.rng.choice([i for i in self.intents if i != intent])
        reply = json.dumps({"intent": intent})
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
    ap.add_argument("--data", type=Path, default=ROOT / "examples" / "benchmarks" / "data" / "banking77")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent over query ranks")
    ap.add_argument("--noise", default="0,0.02",
                    help="comma-separated: share of premium answers replaced by a random other intent, one "
                         "scenario each (0 = the premium tier always answers the label)")
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
    stream = zipf_stream(list(labels), args.requests, args.zipf, random.Random(args.seed))
    os.environ["ENGINE_HOME"] = tempfile.mkdtemp(prefix="promotion-replay-home-")
    os.environ.pop("ENGINE_DB", None)

    scenarios = [run_scenario(stream, labels, intents, float(n), args, console) for n in args.noise.split(",")]
    local_ms = _local_latency(labels, intents, args.local_samples, console)
    script_ms = _script_latency()
    result: dict[str, Any] = {
        "simulated_premium": "replay provider answering the labelled intent (no real model; with `noise`, that "
                             "share of answers is a random other intent); priced USD "
                             f"{INPUT_PRICE}/{OUTPUT_PRICE} per M input/output tokens, tokens = chars/4",
        "requests": len(stream), "distinct_queries_in_stream": len(set(stream)), "zipf_s": args.zipf,
        "rounds": args.rounds, "scenarios": scenarios,
        "latency_ms": {
            "local_smollm2_step_median": statistics.median(local_ms) if local_ms else None,
            "local_samples": len(local_ms),
            "local_smollm2_step_samples": [round(x, 1) for x in local_ms],
            "sandboxed_script_serve_median": statistics.median(script_ms),
        },
    }
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _chart(result, args.out.with_suffix(".png"))
    return result


def run_scenario(stream: list[str], labels: dict[str, str], intents: list[str], noise: float,
                 args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from engine import load_workflow, run_workflow
    from engine.promotion import review
    from engine.promotion.server import seed
    from engine.providers.registry import register_provider
    from engine.runner import open_store

    work = Path(tempfile.mkdtemp(prefix="promotion-replay-"))
    (work / "engine.yaml").write_text(CONFIG)
    wf_path = work / "workflow.yaml"
    wf_path.write_text(WORKFLOW % {"tier": "premium", "intents": json.dumps(intents)})
    register_provider("replay", ReplayProvider(labels, intents, noise, args.seed))
    seed(args.seed)
    store = open_store(work / "engine.db")
    wf = load_workflow(wf_path)

    premium_cost: dict[str, float] = {}  # per query, from its llm calls (deterministic tokens)
    per_round: list[dict[str, Any]] = []
    serve_ms: list[float] = []
    llm_ms: list[float] = []
    wall = {"materialized": [], "llm": []}  # type: dict[str, list[float]]
    agree = served = 0
    size = len(stream) // args.rounds
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"replaying (noise {noise:g})", total=len(stream))
        for rnd in range(args.rounds):
            chunk = stream[rnd * size:(rnd + 1) * size] if rnd < args.rounds - 1 else stream[rnd * size:]
            zero = 0
            cost = 0.0
            for text in chunk:
                started = time.perf_counter()
                result = run_workflow(wf, {"ticket": text}, store=store)
                elapsed = (time.perf_counter() - started) * 1000
                step = result.step("classify")
                if step.served_by in ("lookup", "script"):
                    zero += 1
                    served += 1
                    agree += step.output["intent"] == labels[text]
                    serve_ms.append(step.latency_ms)
                    wall["materialized"].append(elapsed)
                else:
                    premium_cost.setdefault(text, step.cost)
                    llm_ms.append(step.latency_ms)
                    wall["llm"].append(elapsed)
                cost += step.cost
                progress.advance(task)
            baseline = sum(premium_cost[t] for t in chunk)
            entry: dict[str, Any] = {"round": rnd + 1, "requests": len(chunk), "zero_token": zero,
                                     "zero_token_share": zero / len(chunk), "cost": cost, "baseline_cost": baseline}
            if rnd < args.rounds - 1:
                reports = review.propose(store, wf_path, scripts=False, classifiers=False)  # lookups only
                accepted = [p for _, rep in reports for p in rep.proposed]
                for p in accepted:
                    review.accept(store, p.id)
                entry["accepted_rows"] = sum(len(p.payload["rows"]) for p in accepted)
            per_round.append(entry)

    status = review.status(store)
    spot = {"checks": sum(r.spot["checks"] for r in status), "agree": sum(r.spot["agree"] for r in status)}
    demotions = [{"id": r.promotion.id, "reason": r.promotion.reason} for r in status
                 if r.promotion.status == "demoted"]
    demotions += [{"id": p.id, "reason": p.reason} for p in review.list_promotions(store, all_=True)
                  if p.status == "superseded" and any(e["event"] == "demoted" for e in _events(store, p.id))]
    total = len(stream)
    promoted_rounds = per_round[1:]
    total_cost = sum(r["cost"] for r in per_round)
    total_base = sum(r["baseline_cost"] for r in per_round)
    return {
        "noise": noise, "rounds": per_round,
        "zero_token_share": sum(r["zero_token"] for r in per_round) / total,
        "zero_token_share_after_first_accept": (sum(r["zero_token"] for r in promoted_rounds)
                                                / max(1, sum(r["requests"] for r in promoted_rounds))),
        "cost": total_cost, "baseline_cost": total_base, "cost_ratio": total_cost / total_base,
        "materialized_agreement_with_label": agree / served if served else None,
        "spot_checks": spot, "demotions": demotions,
        "latency_ms": {
            "materialized_serve_median": statistics.median(serve_ms) if serve_ms else None,
            "materialized_serve_p95": _p95(serve_ms),
            "premium_replay_step_median": statistics.median(llm_ms) if llm_ms else None,
            "run_wall_materialized_median": statistics.median(wall["materialized"]) if wall["materialized"] else None,
            "run_wall_premium_replay_median": statistics.median(wall["llm"]) if wall["llm"] else None,
        },
    }


def _events(store: Any, promotion_id: str) -> list[dict[str, Any]]:
    from engine.promotion import records

    return records.events(store, promotion_id)


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
    for i, text in enumerate(list(labels)[:n + 1]):  # the first call loads the model: not timed
        try:
            result = run_workflow(path, {"ticket": text}, store=False, servers=[], raise_on_error=False)
        except Exception as e:  # noqa: BLE001 - report and go on without the line
            console.print(f"local model unavailable: {e}")
            return []
        if i:
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


def _print(r: dict[str, Any]) -> None:
    console = Console(width=120)
    table = Table(title=f"promotion replay: BANKING77, {r['requests']:,} Zipf requests "
                        f"({r['distinct_queries_in_stream']:,} distinct); premium tier SIMULATED")
    for col in ("premium noise", "round", "requests", "zero-token", "cost", "all-premium", "ratio", "rows accepted"):
        table.add_column(col, justify="right")
    for sc in r["scenarios"]:
        for x in sc["rounds"]:
            table.add_row(f"{sc['noise']:.0%}", str(x["round"]), f"{x['requests']:,}", f"{x['zero_token_share']:.1%}",
                          f"${x['cost']:.4f}", f"${x['baseline_cost']:.4f}", f"{x['cost'] / x['baseline_cost']:.2f}",
                          str(x.get("accepted_rows", "-")))
        table.add_row(f"{sc['noise']:.0%}", "all", f"{r['requests']:,}", f"{sc['zero_token_share']:.1%}",
                      f"${sc['cost']:.4f}", f"${sc['baseline_cost']:.4f}", f"{sc['cost_ratio']:.2f}", "",
                      end_section=True)
    console.print(table)
    for sc in r["scenarios"]:
        lat = sc["latency_ms"]
        console.print(
            f"noise {sc['noise']:.0%}: materialized answers = labelled intent in "
            f"{sc['materialized_agreement_with_label']:.2%}; spot checks {sc['spot_checks']['agree']}/"
            f"{sc['spot_checks']['checks']} agree; demotions: {len(sc['demotions'])}; step latency median "
            f"{lat['materialized_serve_median']:.2f} ms materialized vs {lat['premium_replay_step_median']:.2f} ms "
            f"replay; whole run {lat['run_wall_materialized_median']:.1f} vs {lat['run_wall_premium_replay_median']:.1f} ms")
        for d in sc["demotions"]:
            console.print(f"  demoted {d['id']}: {d['reason']}")
    lat = r["latency_ms"]
    local = lat["local_smollm2_step_median"]
    console.print(f"local tier (SmolLM2, llama.cpp, CPU) step median: "
                  f"{'n/a' if local is None else f'{local:.0f} ms'} (n={lat['local_samples']}); "
                  f"sandboxed script serve median: {lat['sandboxed_script_serve_median']:.1f} ms")


def _chart(r: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[benchmark]'): no chart", file=sys.stderr)
        return
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / max(1, len(r["scenarios"]))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for i, sc in enumerate(r["scenarios"]):
        rounds = [x["round"] for x in sc["rounds"]]
        xs = [x - 0.4 + width * (i + 0.5) for x in rounds]
        a.bar(xs, [100 * x["zero_token_share"] for x in sc["rounds"]], width, color=colors[i % 4],
              label=f"premium noise {sc['noise']:.0%}")
        b.bar(xs, [x["cost"] / x["baseline_cost"] for x in sc["rounds"]], width, color=colors[i % 4],
              label=f"premium noise {sc['noise']:.0%}")
    a.set(xlabel="round (propose + accept between rounds)", ylabel="% of llm-step executions",
          title="Served at zero tokens", ylim=(0, 100), xticks=rounds)
    b.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    b.set(xlabel="round", ylabel="cost / all-premium baseline", title="Cost vs all-premium", xticks=rounds)
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    sc0 = r["scenarios"][0]["latency_ms"]
    names = ["lookup\nserve", "premium replay\n(simulated)", "sandboxed\nscript serve", "local SmolLM2\ncall"]
    values = [sc0["materialized_serve_median"], sc0["premium_replay_step_median"],
              r["latency_ms"]["sandboxed_script_serve_median"], r["latency_ms"]["local_smollm2_step_median"]]
    pairs = [(n, v) for n, v in zip(names, values) if v]
    c.bar([n for n, _ in pairs], [v for _, v in pairs], color="#8172b3")
    c.tick_params(axis="x", labelsize=8)
    c.set_yscale("log")
    c.set(ylabel="median ms (log scale)", title="Latency")
    for i, (_, v) in enumerate(pairs):
        c.text(i, v, f"{v:.2f}" if v < 10 else f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"BANKING77 replay: {r['requests']:,} Zipf-skewed requests; premium tier simulated "
                 f"(replays labels at USD {INPUT_PRICE}/{OUTPUT_PRICE} per M tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
