"""A minute of service traffic through caches under the quality monitor: how many answers are right.

Simulated: a cheap tier that answers after 20 ms and is right on 60% of the requests' items, a
reference that answers after 300 ms and is always right (both are in-process providers whose
`acomplete` sleeps; nothing is called over the network). Requests are drawn from a Zipf stream
(s = 1.1) over 5,000 items, each asked in 4 wordings, and sent with `Engine.arun` at a fixed rate
(200 per second by default) for 60 s, with the SQLite log on and the shipped quality defaults
(sample 0.05, reference = the last tier). Two cache settings: `cache: true` (exact) and
`cache: {semantic: ...}` (near-duplicates, with an embedder that places an item's wordings close
together and different items far apart).

Reported per setting:
  - answers right over the minute and over its first 10 s;
  - runs served by the cheap tier (live or from its cache entries) after the Wilson lower bound
    of its checked disagreement first passed `max_disagreement` (computed from the check log, so
    the same definition holds for any revision), of them unverified, and the wrong answers served
    after that moment;
  - time from the first wrong cheap answer served, and from the first disagreeing verdict, to the
    escalation;
  - the check queue's peak, dropped checks, what was still pending at the end, and the process's
    resident memory at 10 s, 30 s and 60 s.

    python examples/benchmarks/trusted_stream.py [--seconds 60] [--rate 200] [--engine-root DIR] [--label NAME]

`--engine-root` runs another checkout of the engine (e.g. an older revision unpacked with
`git archive REV | tar -x -C DIR`) under the same driver, for a side-by-side table. Prints a
table and writes examples/benchmarks/results/trusted_stream[-LABEL].json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
LABELS = [f"intent_{i}" for i in range(10)]
ITEMS, WORDINGS, DIM = 5000, 4, 32


def _h(item: int, salt: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{salt}:{item}".encode(), digest_size=8).digest(), "big")


def truth(item: int) -> str:
    return LABELS[_h(item, "truth") % len(LABELS)]


def cheap_answer(item: int) -> str:
    if _h(item, "right") % 100 < 60:
        return truth(item)
    return LABELS[(LABELS.index(truth(item)) + 1 + _h(item, "wrong") % (len(LABELS) - 1)) % len(LABELS)]


_ITEM = re.compile(r"request (\d+) ")


class SimTier:
    """Answers after `latency` seconds: the reference always right, the cheap tier right on 60%."""

    def __init__(self, latency: float, right: bool):
        self.latency, self.right = latency, right

    def _reply(self, request: Any) -> Any:
        from engine.providers.base import Completion

        item = int(_ITEM.search(request.messages[-1]["content"]).group(1))  # type: ignore[union-attr]
        label = truth(item) if self.right else cheap_answer(item)
        return Completion(text=json.dumps({"intent": label}), finish_reason="stop", input_tokens=60,
                          output_tokens=8, model=request.model)

    def complete(self, request: Any) -> Any:
        time.sleep(self.latency)
        return self._reply(request)

    async def acomplete(self, request: Any) -> Any:
        await asyncio.sleep(self.latency)
        return self._reply(request)


class WordingEmbedder:
    """An item's wordings sit close together (cosine ~0.99), different items far apart."""

    name = "wordings"

    def __init__(self) -> None:
        rng = np.random.default_rng(3)
        self.base = rng.standard_normal((ITEMS, DIM)).astype(np.float32)
        self.noise = rng.standard_normal((ITEMS, WORDINGS, DIM)).astype(np.float32) * 0.08

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            item, wording = (int(x) for x in re.findall(r"\d+", text)[:2])
            v = self.base[item] + self.noise[item, wording]
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def workflow(cache: Any) -> dict[str, Any]:
    return {"name": "stream", "inputs": {"text": {"type": "string"}}, "steps": [{
        "id": "classify", "inputs": {"text": "{{ inputs.text }}"},
        "llm": {"tier": "cheap", "escalate": ["reference"], "system": "Label the support request.",
                "prompt": "Request: {{ text }}", "max_tokens": 8, "retries": 0, "cache": cache,
                "schema": {"type": "object", "properties": {"intent": {"enum": LABELS}}, "required": ["intent"]}}}]}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pending_checks() -> int:
    """Checks queued or running in this process (either revision's machinery)."""
    try:
        from engine.quality import checkqueue

        return checkqueue.figures()["pending"]
    except ImportError:
        from engine.quality import monitor

        return len(getattr(monitor, "_pending", ()))


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def stream(engine: Any, wf: Any, texts: list[tuple[int, str]], rate: float) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []

    async def one(item: int, text: str) -> None:
        started = time.time()
        r = await engine.arun(wf, {"text": text})
        step = r.steps[0] if r.steps else None
        results.append({"t": started, "item": item, "ok": r.ok,
                        "answer": (r.outputs.get("classify") or {}).get("intent") if r.ok else None,
                        "served_by": step.served_by if step else None, "tier": step.tier if step else None,
                        "trust": step.trust if step else None})

    tasks = []
    began = time.perf_counter()
    for i, (item, text) in enumerate(texts):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.get_running_loop().create_task(one(item, text)))
    await asyncio.gather(*tasks)
    return results


def measure(name: str, cache: Any, args: argparse.Namespace) -> dict[str, Any]:
    from engine import Engine, EngineConfig
    from engine.quality import monitor
    from engine.quality.stats import wilson_bounds

    work = Path(tempfile.mkdtemp(prefix="trusted-stream-"))
    db = work / "stream.db"
    engine = Engine(config=EngineConfig.model_validate({
        "tiers": {"cheap": [{"model": "simcheap:small", "input_price": 0.1, "output_price": 0.4}],
                  "reference": [{"model": "simref:large", "input_price": 2.0, "output_price": 8.0}]},
        "store": str(db)}))
    wf = engine.load(workflow(cache))
    rng = np.random.default_rng(args.seed)
    n = int(args.rate * args.seconds)
    ranks = rng.zipf(1.1, size=n * 2)
    ranks = ranks[ranks <= ITEMS][:n] - 1
    perm = np.random.default_rng(11).permutation(ITEMS)
    texts = [(int(perm[r]), f"request {int(perm[r])} wording {int(w)} please") for r, w in
             zip(ranks, rng.integers(0, WORDINGS, size=len(ranks)))]

    samples: list[tuple[float, int, float]] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(0.1):
            samples.append((time.time(), pending_checks(), rss_mb()))

    threading.Thread(target=sampler, daemon=True).start()
    t0 = time.time()
    results = asyncio.run(stream(engine, wf, texts, args.rate))
    elapsed = time.time() - t0
    stop.set()
    left = monitor.drain(args.drain)
    engine.flush()
    store = engine.store_for(wf)

    right = [r["answer"] == truth(r["item"]) for r in results]
    first10 = [ok for r, ok in zip(results, right) if r["t"] - t0 < 10]
    checks = store.query("SELECT status, served, created_at, tier FROM quality_checks ORDER BY id")
    n_served = k = 0
    passed_at = None
    for c in checks:
        if c["tier"] != "cheap" or not c["served"] or c["status"] == "skipped":
            continue
        n_served += 1
        k += c["status"] == "disagree"
        if n_served >= 5 and wilson_bounds(k, n_served, 0.95)[0] > 0.03:
            passed_at = epoch(c["created_at"])
            break
    escalations = store.query("SELECT created_at FROM quality_events WHERE event = 'escalated' ORDER BY id")
    escalated_at = epoch(escalations[0]["created_at"]) if escalations else None
    first_disagree = next((epoch(c["created_at"]) for c in checks if c["status"] == "disagree"), None)
    wrong_cheap = [r["t"] for r, ok in zip(results, right) if r["tier"] == "cheap" and not ok]
    after = [(r, ok) for r, ok in zip(results, right) if passed_at is not None and r["t"] > passed_at]
    cheap_after = sum(1 for r, _ in after if r["tier"] == "cheap")
    cheap_unverified_after = sum(1 for r, _ in after if r["tier"] == "cheap" and r["trust"] in (None, "unverified"))
    wrong_after = sum(1 for _, ok in after if not ok)
    probations = store.query("SELECT COUNT(*) AS n FROM quality_events WHERE event = 'probation'")[0]["n"]
    rss = {f"rss_mb_at_{s}s": next((m for t, _, m in samples if t - t0 >= s), samples[-1][2] if samples else None)
           for s in (10, 30, int(args.seconds))}
    try:
        from engine.quality import checkqueue

        figures = checkqueue.figures()
        dropped, peak = figures["dropped"], figures["peak"]
    except ImportError:
        dropped, peak = 0, max((p for _, p, _ in samples), default=0)
    served = {}
    for r in results:
        key = f"{r['served_by']}:{r['tier']}"
        served[key] = served.get(key, 0) + 1
    row = {
        "setting": name, "runs": len(results), "seconds": round(elapsed, 1), "rate": round(len(results) / elapsed, 1),
        "right": sum(right) / len(right), "right_first_10s": sum(first10) / max(1, len(first10)),
        "cheap_served_after_bound": cheap_after, "cheap_unverified_after_bound": cheap_unverified_after,
        "wrong_after_bound": wrong_after, "probations": probations,
        "escalation_after_first_wrong_s": None if escalated_at is None or not wrong_cheap else escalated_at - min(wrong_cheap),
        "escalation_after_first_disagreement_s": None if escalated_at is None or first_disagree is None else escalated_at - first_disagree,
        "bound_passed": passed_at is not None, "escalated": escalated_at is not None,
        "queue_peak": peak, "queue_peak_sampled": max((p for _, p, _ in samples), default=0), "dropped": dropped,
        "pending_at_end": left, "checks": len(checks), "served": served, **rss,
        "rss_mb_peak": max((m for _, _, m in samples), default=None)}
    print(f"{name}: {row['right']:.1%} right ({row['right_first_10s']:.1%} in the first 10 s), "
          f"{cheap_after} cheap answers after the bound, queue peak {row['queue_peak_sampled']}", file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=200.0, help="runs started per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for checks after the stream")
    parser.add_argument("--engine-root", type=Path, default=ROOT, help="the engine checkout to run")
    parser.add_argument("--label", default="", help="names the results file (trusted_stream-LABEL.json)")
    parser.add_argument("--settings", default="exact,semantic")
    parser.add_argument("--out", type=Path, help="where the JSON goes (default: results/trusted_stream[-LABEL].json)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.engine_root.resolve()))
    from engine.cache import register_embedder
    from engine.providers.registry import register_provider

    register_provider("simcheap", SimTier(0.020, right=False))
    register_provider("simref", SimTier(0.300, right=True))
    register_embedder("wordings", WordingEmbedder())
    settings = {"exact": True, "semantic": {"semantic": {"embedder": "wordings", "threshold": 0.9, "margin": 0.12}}}
    rows = [measure(name, settings[name], args) for name in args.settings.split(",")]
    out = {"benchmark": "trusted_stream", "engine_root": "." if args.engine_root.resolve() == ROOT else "another checkout", "label": args.label,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
           "date": time.strftime("%Y-%m-%d"), "simulated": "cheap 20 ms right on 60% of items, reference 300 ms, "
           "in-process providers", "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    name = f"trusted_stream{'-' + args.label if args.label else ''}.json"
    path = args.out or ROOT / "examples" / "benchmarks" / "results" / name
    path.write_text(json.dumps(out, indent=2) + "\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.seconds:.0f} s at {args.rate:.0f} runs/s ({args.label or 'this checkout'})")
    for col in ("setting", "runs/s", "right", "first 10 s", "cheap after bound (unverified)", "wrong after bound",
                "escalation after 1st wrong", "queue peak", "dropped", "pending at end", "RSS 10/30/60 s MB"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for r in rows:
        esc = r["escalation_after_first_wrong_s"]
        table.add_row(r["setting"], f"{r['rate']:.0f}", f"{r['right']:.2%}", f"{r['right_first_10s']:.2%}",
                      f"{r['cheap_served_after_bound']} ({r.get('cheap_unverified_after_bound', '-')})",
                      str(r.get("wrong_after_bound", "-")), "-" if esc is None else f"{esc:.2f} s",
                      str(r["queue_peak_sampled"]), str(r["dropped"]), str(r["pending_at_end"]),
                      " / ".join("-" if r[k] is None else f"{r[k]:.0f}" for k in r if k.startswith("rss_mb_at_")))
    Console().print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
