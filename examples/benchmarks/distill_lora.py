"""LoRA benchmark: the local SmolLM2 before and after `engine distill`, on BANKING77.

A subset of intents (`--intents`, default 10) keeps the schema (and so the prompt) short. Their
train-split queries are imported as labels (trusted evidence) into a workflow whose `local` tier is
the bundled SmolLM2; `engine distill` trains a LoRA adapter on CPU (`--steps`, `--batch`), writes it
as a llama.cpp GGUF adapter and proposes it; the benchmark accepts it and then asks the real local
tier `--test` test-split queries through llama.cpp without and with the adapter.

Columns: agreement with the labels, cost vs all-premium (the local tier is free; premium priced as
in promotion_replay.py), median latency per call. Training time and loss are reported too.

    python examples/benchmarks/distill_lora.py [--intents 10] [--steps 30] [--batch 8] [--test 100]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"

WORKFLOW = """\
name: banking77_lora
inputs: {ticket: {type: string}}
steps:
  - id: classify
    inputs: {ticket: "{{ inputs.ticket }}"}
    llm:
      tier: local
      system: You are a banking support triage assistant. Pick the one intent that matches the message.
      prompt: "Customer message: {{ ticket }}"
      schema:
        type: object
        properties: {intent: {enum: %s}}
        required: [intent]
        additionalProperties: false
      max_tokens: 32
      retries: 0
"""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "examples" / "benchmarks" / "data" / "banking77")
    ap.add_argument("--intents", type=int, default=10)
    ap.add_argument("--train", type=int, default=400, help="train-split queries imported as labels")
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "distill_lora.json")
    args = ap.parse_args(argv)
    os.environ["ENGINE_HOME"] = tempfile.mkdtemp(prefix="distill-lora-home-")
    os.environ.pop("ENGINE_DB", None)
    from engine import load_workflow
    from engine.distill import LoraSettings, agreement, distill_step, local_entry
    from engine.export import Example
    from engine.promotion import review
    from engine.quality.feedback import import_labels
    from engine.runner import open_store

    def read(name: str) -> list[tuple[str, str]]:
        with (args.data / name).open(newline="", encoding="utf-8") as f:
            return [(r["text"], r["category"]) for r in csv.DictReader(f)]

    train_all, test_all = read("train.csv"), read("test.csv")
    intents = sorted({c for _, c in train_all})[:args.intents]
    rng = random.Random(args.seed)
    train = rng.sample([r for r in train_all if r[1] in intents], args.train)
    test = rng.sample([r for r in test_all if r[1] in intents], args.test)
    work = Path(tempfile.mkdtemp(prefix="distill-lora-"))
    wf_path = work / "workflow.yaml"
    wf_path.write_text(WORKFLOW % json.dumps(intents))
    store = open_store(work / "engine.db")
    wf = load_workflow(wf_path)
    labels = work / "labels.jsonl"
    labels.write_text("".join(json.dumps({"ticket": t, "expected": c}) + "\n" for t, c in train))
    import_labels(wf, store, labels)
    started = time.perf_counter()
    proposal = distill_step(wf, store, "classify", settings=LoraSettings(
        steps=args.steps, batch=args.batch, rank=args.rank, lr=args.lr, seed=args.seed), val=0.1, eval_n=0)
    distill_s = time.perf_counter() - started
    review.accept(store, proposal.id)
    adapter = wf_path.parent / "promotions" / wf.name / proposal.payload["file"]
    from engine.steps.base import StepContext
    from engine.steps.llm import prepare_call
    from types import SimpleNamespace
    from typing import cast

    spec = wf.step("classify").llm
    ctx = cast(StepContext, SimpleNamespace(step_id="classify"))
    examples = []
    for text, cat in test:
        call = prepare_call(ctx, spec, {"ticket": text})
        examples.append(Example(messages=call.messages, output={"intent": cat}, label=cat, schema=call.schema))
    entry = local_entry(wf)
    rows = []
    for name, path in (("local SmolLM2", None), ("local SmolLM2 + LoRA", adapter)):
        result = agreement(entry, examples, spec, path)
        rows.append({"row": name, **result, "ms_per_call": 1000 * result["seconds"] / max(1, len(examples)),
                     "cost_ratio": 0.0})
    v = proposal.verification
    out = {"intents": intents, "train_pairs": v["train_pairs"], "test_queries": len(test),
           "settings": proposal.payload["settings"], "adapter_bytes": proposal.payload["bytes"],
           "load_s": v["load_s"], "train_s": v["train_s"], "distill_s": round(distill_s, 1),
           "loss_first": v["losses"][0], "loss_last": v["losses"][-1], "rows": rows}
    console = Console(width=120)
    table = Table(title=f"BANKING77, {args.intents} intents, {len(test)} test queries: local tier before/after LoRA")
    for col in ("row", "agreement with labels", "valid", "cost vs all-premium", "ms per call"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for r in rows:
        table.add_row(r["row"], f"{r['agreement']:.1%}", f"{r['valid']}/{r['pairs']}", "0 (local)",
                      f"{r['ms_per_call']:.0f}")
    console.print(table)
    console.print(f"LoRA: {v['train_pairs']} trusted pairs, {args.steps} steps x batch {args.batch}, loss "
                  f"{out['loss_first']:.3f} -> {out['loss_last']:.3f}; GGUF load {v['load_s']} s, training "
                  f"{v['train_s']} s; adapter {out['adapter_bytes'] / 1e6:.1f} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
