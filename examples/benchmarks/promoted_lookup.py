"""A promoted lookup served in-process: the step latency (render the step's inputs, serve the
lookup, record the step) and the whole run's wall time, store on, p50 over `--runs` runs.

A one-step llm workflow answers 50 texts three times through a fake model; the lookup proposed
from that log is accepted; then every run is served by the lookup. `--engine-root DIR` runs the
same measurement against another checkout of the engine (e.g. an earlier commit, from
`git archive`), for a side-by-side figure on the same machine.

    python examples/benchmarks/promoted_lookup.py [--runs 3000] [--engine-root DIR]

Prints one line and writes examples/benchmarks/results/promoted_lookup.json (unless
--engine-root is given).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = """\
name: label
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: local
      prompt: "Label this: {{ text }}"
      schema:
        type: object
        properties: {label: {enum: [short, long]}}
        required: [label]
        additionalProperties: false
      max_tokens: 12
      promote: {spot_check: 0}
QUALITY
tiers:
  local:
    - model: fake:x
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3000)
    ap.add_argument("--engine-root", type=Path, default=ROOT)
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "benchmarks" / "results" / "promoted_lookup.json")
    args = ap.parse_args()
    sys.path.insert(0, str(args.engine_root.resolve()))
    work = Path(tempfile.mkdtemp(prefix="promoted-lookup-"))
    os.chdir(work)
    os.environ["ENGINE_HOME"] = str(work)
    from engine import load_workflow, run_workflow
    from engine.promotion import review
    from engine.promotion.proposals import propose_promotions
    from engine.providers.fake import FakeProvider
    from engine.providers.registry import register_provider
    from engine.runner import open_store

    def label(request: object) -> dict[str, str]:
        text = request.messages[1]["content"].removeprefix("Label this: ")  # type: ignore[attr-defined]
        return {"label": "long" if len(text.strip()) >= 6 else "short"}

    try:  # only trusted answers build lookups: the fake model is the step's reference tier
        import engine.quality  # noqa: F401
        quality = "      quality: {reference: local}"
    except ImportError:  # a revision from before the trust work (--engine-root)
        quality = ""
    (work / "wf.yaml").write_text(WORKFLOW.replace("QUALITY\n", quality + "\n" if quality else ""))
    register_provider("fake", FakeProvider(responder=label))
    path = (work / "wf.yaml").resolve()
    store = open_store(Path(".engine/engine.db"))
    texts = [f"text number {i}" for i in range(50)]
    for _ in range(3):
        for text in texts:
            run_workflow(path, {"text": text})
    (proposal,) = propose_promotions(load_workflow(path), store, scripts=False).proposed
    review.accept(store, proposal.id)
    wf = load_workflow(path)
    step_us, wall_us = [], []
    for k in range(args.runs):
        started = time.perf_counter()
        result = run_workflow(wf, {"text": texts[k % len(texts)]})
        wall_us.append((time.perf_counter() - started) * 1e6)
        step = result.step("classify")
        assert step.served_by == "lookup", step.served_by
        step_us.append(step.latency_ms * 1000)
    out = {"engine_root": "." if args.engine_root.resolve() == ROOT else "another checkout", "runs": args.runs,
           "step_us_p50": round(statistics.median(step_us), 1),
           "run_wall_us_p50": round(statistics.median(wall_us), 1)}
    print(json.dumps(out))
    if args.engine_root.resolve() == ROOT:  # figures of another checkout are printed only
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
