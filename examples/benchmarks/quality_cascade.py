"""Correct, not just consistent: a real cheap tier behind a reference, on BANKING77.

The cheap tier is the real local model (SmolLM2-135M through llama.cpp, CPU). The premium tier is a
*replay*: it answers every query with its true BANKING77 label, priced like openai:gpt-4.1
(USD 2.00 / 8.00 per million input / output tokens; tokens = characters / 4) with a simulated
latency per call (`--premium-ms`, added to the measured time; nothing sleeps).

Rows (each over the same `--n` BANKING77 test queries of 10 intents, in a fresh store):
    all-premium                 tier premium
    local only                  tier local, nothing else (shown as it is)
    cascade                     local -> premium, premium the reference: 5% of served local answers
                                re-asked of it (inline, as in a batch), answers below the calibrated
                                confidence (min_confidence: auto, target 98%) escalated; its first round
    cascade + promotion         the same store over `--rounds` rounds of the same queries (shuffled);
                                after each round the trusted evidence (reference answers, verified
                                answers) is mined and every proposed lookup is accepted, as a reviewer
                                would; the row sums every round

Columns: agreement with the labels, cost against all-premium (quality checks included), share served
by each tier and by lookups, p50 latency per query. Lookups built under this scheme are checked row by
row against the labels.

    python examples/benchmarks/quality_cascade.py [--n 400] [--rounds 4] [--data DIR]
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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
INPUT_PRICE, OUTPUT_PRICE = 2.00, 8.00  # openai:gpt-4.1 list prices, USD per million tokens

INTENTS = {
    "card_arrival": "a new card has not arrived yet, delivery, tracking",
    "lost_or_stolen_card": "the card was lost or stolen",
    "exchange_rate": "currency exchange rates",
    "pending_transfer": "a transfer is pending or has not gone through",
    "request_refund": "wants a refund",
    "top_up_failed": "a top-up did not work",
    "passcode_forgotten": "forgot the passcode or PIN to log in",
    "cash_withdrawal_charge": "a fee was charged for an ATM cash withdrawal",
    "card_linking": "linking or adding a card to the app",
    "age_limit": "the minimum age to open an account",
}

WORKFLOW = """\
name: banking77_quality
inputs: {ticket: {type: string}}
steps:
  - id: classify
    inputs: {ticket: "{{ inputs.ticket }}"}
    llm:
      tier: %(tier)s
      escalate: %(escalate)s
      system: |
        You are a banking support triage assistant. Pick the one intent that best matches the
        customer's message:
%(menu)s
      prompt: "Customer message: {{ ticket }}"
      schema:
        type: object
        properties: {intent: {enum: %(intents)s}}
        required: [intent]
        additionalProperties: false
      max_tokens: 24
      retries: 1
      quality: %(quality)s
      promote: {min_calls: 1, spot_check: 0.02}
"""
CONFIG = """\
store: engine.db
tiers:
  local:
    - model: llamacpp:smollm2
  premium:
    - model: replay:gpt-4.1-sim
      input_price: %s
      output_price: %s
""" % (INPUT_PRICE, OUTPUT_PRICE)


def load_queries(data: Path, n: int, seed: int) -> dict[str, str]:
    with (data / "test.csv").open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in INTENTS]
    rng = random.Random(seed)
    rng.shuffle(rows)
    labels: dict[str, str] = {}
    for r in rows:
        labels.setdefault(r["text"].strip(), r["category"])
    return dict(list(labels.items())[:n])


def make_workflow(work: Path, *, tier: str, escalate: list[str], quality: dict[str, Any]) -> Path:
    (work / "engine.yaml").write_text(CONFIG)
    menu = "\n".join(f"        - {name}: {text}" for name, text in INTENTS.items())
    path = work / "workflow.yaml"
    path.write_text(WORKFLOW % {"tier": tier, "escalate": json.dumps(escalate), "menu": menu,
                                "intents": json.dumps(list(INTENTS)), "quality": json.dumps(quality)})
    return path


def run_row(name: str, queries: dict[str, str], *, tier: str, escalate: list[str], quality: dict[str, Any],
            rounds: int, promote: bool, premium_ms: float, seed: int, progress: Progress) -> dict[str, Any]:
    from engine import load_workflow, run_workflow
    from engine.promotion import records, review
    from engine.promotion.proposals import propose_promotions
    from engine.promotion.server import seed as seed_spot
    from engine.quality.monitor import seed as seed_monitor
    from engine.runner import open_store

    work = Path(tempfile.mkdtemp(prefix="quality-cascade-"))
    path = make_workflow(work, tier=tier, escalate=escalate, quality=quality)
    store = open_store(work / "engine.db")
    seed_monitor(seed)
    seed_spot(seed)
    texts = list(queries)
    per_round = []
    lookup_rows_checked = lookup_rows_correct = 0
    task = progress.add_task(name, total=len(texts) * rounds)
    for rnd in range(rounds):
        order = texts[:]
        random.Random(seed + rnd).shuffle(order)
        served: dict[str, int] = {}
        correct = 0
        latencies = []
        first_id = (store.query("SELECT COALESCE(MAX(id), 0) AS m FROM llm_calls")[0]["m"])
        wf = load_workflow(path)
        for text in order:
            started = time.perf_counter()
            result = run_workflow(wf, {"ticket": text}, store=store, inline_checks=True, raise_on_error=False)
            elapsed = (time.perf_counter() - started) * 1000
            if not result.ok:
                served["failed"] = served.get("failed", 0) + 1
                progress.advance(task)
                continue
            step = result.step("classify")
            key = f"{step.served_by}:{step.tier}" if step.served_by == "llm" else str(step.served_by)
            served[key] = served.get(key, 0) + 1
            correct += result.outputs["classify"]["intent"] == queries[text]
            premium_calls = store.query("SELECT COUNT(*) AS n FROM llm_calls WHERE run_id = ? AND tier = 'premium' "
                                        "AND outcome != 'skipped'", [result.run_id])[0]["n"]
            latencies.append(elapsed + premium_calls * premium_ms)
            progress.advance(task)
        cost = store.query("SELECT COALESCE(SUM(cost), 0) AS c, "
                           "COALESCE(SUM(CASE WHEN purpose IS NOT NULL THEN cost END), 0) AS q "
                           "FROM llm_calls WHERE id > ?", [first_id])[0]
        local = store.query("SELECT input, output FROM llm_calls WHERE id > ? AND tier = 'local' AND outcome = 'valid' "
                            "AND purpose IS NULL", [first_id])
        local_right = sum(1 for c in local if c["output"]["intent"] == queries[c["input"]["ticket"]])
        row = {"round": rnd + 1, "queries": len(order), "agreement": correct / len(order), "cost": cost["c"],
               "local_answers": len(local), "local_answers_right": local_right,
               "quality_check_cost": cost["q"], "served": served,
               "p50_ms": statistics.median(latencies) if latencies else None}
        if promote and rnd + 1 < rounds:
            report = propose_promotions(load_workflow(path), store, scripts=False, classifiers=False)
            for p in report.proposed:
                for r in p.payload["rows"]:
                    lookup_rows_checked += 1
                    lookup_rows_correct += r["output"]["intent"] == queries.get(r["input"]["ticket"])
                review.accept(store, p.id)
            row["accepted_rows"] = sum(len(p.payload["rows"]) for p in report.proposed)
        per_round.append(row)
    states = store.query("SELECT tier, state, reason FROM quality_state")
    checks = store.query("SELECT mode, status, COUNT(*) AS n FROM quality_checks GROUP BY mode, status")
    live = records.find(store, status="accepted")
    return {"name": name, "rounds": per_round, "tier_states": states, "checks": checks,
            "lookup_rows": lookup_rows_checked, "lookup_rows_correct": lookup_rows_correct,
            "accepted_promotions": len(live)}


def summarise(row: dict[str, Any], baseline_cost: float) -> dict[str, Any]:
    rounds = row["rounds"]
    n = sum(r["queries"] for r in rounds)
    served: dict[str, int] = {}
    for r in rounds:
        for k, v in r["served"].items():
            served[k] = served.get(k, 0) + v
    cost = sum(r["cost"] for r in rounds)
    p50 = statistics.median([r["p50_ms"] for r in rounds if r["p50_ms"] is not None]) if rounds else None
    return {"row": row["name"], "queries": n,
            "agreement": sum(r["agreement"] * r["queries"] for r in rounds) / n if n else 0.0,
            "cost": cost, "cost_vs_all_premium": cost / (baseline_cost * len(rounds)) if baseline_cost else None,
            "quality_check_cost": sum(r["quality_check_cost"] for r in rounds),
            "share": {k: v / n for k, v in sorted(served.items())}, "p50_ms": p50,
            "lookup_rows": row["lookup_rows"], "lookup_rows_correct": row["lookup_rows_correct"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "examples" / "benchmarks" / "data" / "banking77")
    ap.add_argument("--n", type=int, default=400, help="BANKING77 test queries")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of the cascade + promotion row")
    ap.add_argument("--premium-ms", type=float, default=600.0, help="simulated latency of a premium call")
    ap.add_argument("--sample", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default="premium,local,cascade",
                    help="which rows to run (comma-separated)")
    ap.add_argument("--out", type=Path, default=RESULTS / "quality_cascade.json")
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    queries = load_queries(args.data, args.n, args.seed)
    os.environ["ENGINE_HOME"] = tempfile.mkdtemp(prefix="quality-cascade-home-")
    os.environ.pop("ENGINE_DB", None)
    from engine.providers.registry import register_provider

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from promotion_replay import ReplayProvider  # the simulated premium tier: answers the label

    register_provider("replay", ReplayProvider(queries, list(INTENTS)))
    wanted = set(args.rows.split(","))
    cascade_quality = {"reference": "premium", "sample": args.sample, "min_confidence": "auto",
                       "target_agreement": 0.98}
    plans = [("all-premium", "premium", dict(tier="premium", escalate=[], quality={"reference": "premium"},
                                              rounds=1, promote=False)),
             (f"cascade + promotion ({args.rounds} rounds)", "cascade",
              dict(tier="local", escalate=["premium"], quality=cascade_quality, rounds=args.rounds, promote=True)),
             ("local only", "local", dict(tier="local", escalate=[], quality={}, rounds=1, promote=False))]
    raw: list[dict[str, Any]] = []
    started = time.perf_counter()
    result: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        for name, key, plan in plans:
            if key in wanted:
                raw.append(run_row(name, queries, premium_ms=args.premium_ms, seed=args.seed, progress=progress,
                                   **plan))  # type: ignore[arg-type]
                result = _result(raw, queries, args, started)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=2, default=str))  # after every row
    _print(result, console)
    _chart(result, args.out.with_suffix(".png"), console)
    return result


def _result(raw: list[dict[str, Any]], queries: dict[str, str], args: argparse.Namespace,
            started: float) -> dict[str, Any]:
    premium = next((r for r in raw if r["name"] == "all-premium"), None)
    baseline = premium["rounds"][0]["cost"] if premium else _premium_cost(queries)
    rows = []
    for r in raw:
        if r["name"].startswith("cascade"):
            rows.append(summarise({**r, "name": "cascade (round 1)", "rounds": r["rounds"][:1], "lookup_rows": 0,
                                   "lookup_rows_correct": 0}, baseline))
        rows.append(summarise(r, baseline))
    return {"machine": f"{os.cpu_count()} CPU cores, no GPU (llama.cpp CPU build)", "queries": len(queries),
            "intents": list(INTENTS), "premium": f"replay answering the label, priced {INPUT_PRICE}/{OUTPUT_PRICE} "
                                                 f"USD per M tokens, {args.premium_ms:g} ms simulated latency",
            "all_premium_cost_per_round": baseline, "rows": rows, "raw": raw,
            "wall_s": round(time.perf_counter() - started, 1)}


def _premium_cost(queries: dict[str, str]) -> float:
    """The all-premium cost when that row was not run: the replay's token estimate at its prices."""
    per_call = (1200 // 4 * INPUT_PRICE + 4 * OUTPUT_PRICE) / 1e6
    return per_call * len(queries)


def _print(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"BANKING77, {result['queries']} queries, {len(result['intents'])} intents",
                  title_justify="left")
    for col in ("row", "agreement", "cost vs all-premium", "quality checks", "served by", "p50 ms", "lookup rows"):
        table.add_column(col, justify="left" if col in ("row", "served by") else "right")
    for r in result["rows"]:
        share = ", ".join(f"{k} {v:.0%}" for k, v in r["share"].items())
        ratio = f"{r['cost_vs_all_premium']:.3f}" if r["cost_vs_all_premium"] is not None else "-"
        lookups = f"{r['lookup_rows_correct']}/{r['lookup_rows']} correct" if r["lookup_rows"] else "-"
        table.add_row(r["row"], f"{r['agreement']:.1%}", ratio, f"${r['quality_check_cost']:.4f}", share,
                      f"{r['p50_ms']:.0f}" if r["p50_ms"] is not None else "-", lookups)
    Console(width=160).print(table)
    for raw in result["raw"]:
        if len(raw["rounds"]) > 1:
            rt = Table(title=f"{raw['name']}: per round", title_justify="left")
            for col in ("round", "agreement", "cost", "served by", "accepted rows"):
                rt.add_column(col)
            for r in raw["rounds"]:
                rt.add_row(str(r["round"]), f"{r['agreement']:.1%}", f"${r['cost']:.4f}",
                           ", ".join(f"{k} {v}" for k, v in sorted(r["served"].items())),
                           str(r.get("accepted_rows", "-")))
            Console(width=160).print(rt)


def _chart(result: dict[str, Any], path: Path, console: Console) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("chart skipped: matplotlib is not installed (pip install -e '.[benchmark]')")
        return
    rows = result["rows"]
    names = [r["row"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["agreement"] for r in rows], width=0.4, label="agreement with labels")
    ax.bar([i + 0.2 for i in x], [r["cost_vs_all_premium"] or 0 for r in rows], width=0.4,
           label="cost vs all-premium")
    ax.axhline(0.98, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(list(x), names, rotation=10, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8)
    ax.set_title("BANKING77: cascade with a reference tier (local SmolLM2 -> premium)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    console.print(f"chart: {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
