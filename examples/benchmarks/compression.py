"""Prompt compression on HotpotQA dev "distractor": input tokens before and after, the share of gold
supporting sentences kept, and compression time per call, per mode and ratio.

Each question's input is its 10 paragraphs (2 gold, 8 distractors), one paragraph per block,
"Title: sentence sentence ...", and the query is the question. Rows:

  truncate        the baseline: the first `ratio` of the tokens (what `strategy: truncate` keeps)
  extractive      `context.compress: {mode: extractive}` with the engine's MiniLM embedder, and the
                  dependency-free `hash` embedder for comparison
  tokens          `context.compress: {mode: tokens}`: LLMLingua's token-level dropping scored by the
                  local tier's SmolLM2 through llama.cpp; sentences are no longer whole, so it is
                  scored by the gold answer still present and the share of supporting-sentence
                  words kept

Splits (examples/benchmarks/data/HOTPOTQA.md, CC BY-SA 4.0):

  design          the first 53 dev questions: the extractive scoring was chosen on these
  heldout         194 other dev questions, never used to choose anything
  all             both

Tokens are counted with the local tier's tokenizer (SmolLM2, exact). Nothing is simulated: every
row runs the engine's own compression code on the committed data.

    python examples/benchmarks/compression.py [--split design|heldout|all] [--n N] [--token-n N]
        [--ratios 0.4,0.5,0.6,0.7] [--embedders minilm,hash] [--torch-threads N]

Writes examples/benchmarks/results/compression[-SPLIT].json (design: compression.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from engine.cache.embedders import get_embedder
from engine.compress import compress
from engine.compress.extractive import clear_cache
from engine.providers.registry import get_provider
from engine.spec.models import CompressSpec, ModelEntry
from engine.tokens import counter_for

HERE = Path(__file__).resolve().parent
SPLITS = {"design": [HERE / "data" / "hotpotqa_dev_distractor_slice.json"],
          "heldout": [HERE / "data" / "hotpotqa_dev_distractor_heldout.json"]}
SPLITS["all"] = SPLITS["design"] + SPLITS["heldout"]
DESCRIBED = {"design": "HotpotQA dev distractor, the first 53 questions (the design set; CC BY-SA 4.0)",
             "heldout": "HotpotQA dev distractor, 194 held-out questions (never tuned on; CC BY-SA 4.0)",
             "all": "HotpotQA dev distractor, the 53 design and 194 held-out questions (CC BY-SA 4.0)"}
_WORDS = re.compile(r"\w+")


def document(item: dict[str, Any]) -> str:
    return "\n\n".join(f"{title}: " + " ".join(s.strip() for s in sentences) for title, sentences in item["context"])


def supporting(item: dict[str, Any]) -> list[str]:
    paragraphs = dict((title, sentences) for title, sentences in item["context"])
    out = []
    for title, sid in item["supporting_facts"]:
        sentences = paragraphs.get(title) or []
        if sid < len(sentences) and sentences[sid].strip():
            out.append(sentences[sid].strip())
    return out


def word_share(sentences: list[str], text: str) -> float:
    """Share of the sentences' words (with repeats) found among the text's words."""
    have: dict[str, int] = {}
    for w in _WORDS.findall(text.lower()):
        have[w] = have.get(w, 0) + 1
    total = kept = 0
    for s in sentences:
        for w in _WORDS.findall(s.lower()):
            total += 1
            if have.get(w, 0) > 0:
                have[w] -= 1
                kept += 1
    return kept / total if total else 1.0


def run_row(items: list[dict[str, Any]], label: str, mode: str, ratio: float, count: Any, *,
            embedder: Any = None, scorer: Any = None) -> dict[str, Any]:
    before = after = 0
    kept = total = answers = 0
    words: list[float] = []
    times: list[float] = []
    for item in items:
        doc = document(item)
        gold = supporting(item)
        started = time.perf_counter()
        if mode == "truncate":
            n = count(doc)
            out = counter.cut(doc, int(ratio * n))  # noqa: F821 - the module-level counter
            tokens_before, tokens_after = n, count(out)
        else:
            done = compress(doc, CompressSpec(mode=mode, ratio=ratio), count=count, query=item["question"],
                            embedder=embedder, scorer=scorer)
            out, tokens_before, tokens_after = done.text, done.tokens_before, done.tokens_after
        times.append((time.perf_counter() - started) * 1000)
        before += tokens_before
        after += tokens_after
        kept += sum(1 for s in gold if s in out)
        total += len(gold)
        answers += int(item["answer"].lower() in out.lower() or item["answer"].lower() in ("yes", "no"))
        words.append(word_share(gold, out))
    return {"row": label, "mode": mode, "ratio": ratio, "questions": len(items), "tokens_before": before,
            "tokens_after": after, "tokens_saved": 1 - after / before, "supporting_kept": kept / total,
            "supporting_words_kept": statistics.fmean(words), "answer_kept": answers / len(items),
            "ms_p50": statistics.median(times), "ms_mean": statistics.fmean(times)}


def main() -> None:
    global counter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=sorted(SPLITS), default="design")
    parser.add_argument("--n", type=int, default=0, help="questions for the truncate and extractive rows (0: all)")
    parser.add_argument("--token-n", type=int, default=2, help="questions for the token-level rows")
    parser.add_argument("--ratios", default="0.4,0.5,0.6,0.7")
    parser.add_argument("--token-ratios", default="0.5")
    parser.add_argument("--embedders", default="minilm,hash")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads for MiniLM (0: torch's default, one per core)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    items = [item for path in SPLITS[args.split] for item in json.loads(path.read_text())]
    args.n = args.n or len(items)
    out = Path(args.out or HERE / "results" / ("compression.json" if args.split == "design"
                                                else f"compression-{args.split}.json"))
    entry = ModelEntry(model="llamacpp:smollm2")
    counter = counter_for(entry)
    ratios = [float(r) for r in args.ratios.split(",") if r]
    rows = []
    for ratio in ratios if args.n > 0 else ():
        rows.append(run_row(items[:args.n], "truncate (baseline)", "truncate", ratio, counter.count))
    names = [n for n in args.embedders.split(",") if n]
    for name in names:
        get_embedder(name).embed(["warm up"])
    for name in names if args.n > 0 else ():
        clear_cache()  # the first ratio embeds every sentence; the others reuse the vectors
        timed = None
        for ratio in ratios:
            row = run_row(items[:args.n], f"extractive, {name}", "extractive", ratio, counter.count,
                          embedder=get_embedder(name))
            if timed is None:
                timed = row
            else:  # the same embedding work as the first ratio's (here cached): report that time
                row.update(ms_p50=timed["ms_p50"], ms_mean=timed["ms_mean"], timed_at_ratio=timed["ratio"])
            rows.append(row)
    token_ratios = [float(r) for r in args.token_ratios.split(",") if r] if args.token_n > 0 else []
    if token_ratios:
        loaded = get_provider("llamacpp").load(entry.model_name, entry.options)  # type: ignore[attr-defined]
    for ratio in token_ratios:
        rows.append(run_row(items[:args.token_n], "tokens, smollm2 (local tier)", "tokens", ratio, counter.count,
                            scorer=(loaded.llama, loaded.lock)))
    table = Table(title=f"Prompt compression, HotpotQA dev distractor, {args.split} (tokens: {counter.how})")
    for col in ("row", "keep ratio", "n", "tokens before", "tokens after", "saved", "supporting kept",
                "support words", "answer kept", "ms/call p50"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for r in rows:
        table.add_row(r["row"], f"{r['ratio']:.1f}", str(r["questions"]), f"{r['tokens_before'] / r['questions']:.0f}",
                      f"{r['tokens_after'] / r['questions']:.0f}", f"{r['tokens_saved']:.1%}",
                      f"{r['supporting_kept']:.1%}" if r["mode"] != "tokens" else "-",
                      f"{r['supporting_words_kept']:.1%}", f"{r['answer_kept']:.1%}", f"{r['ms_p50']:.0f}")
    Console().print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "compression", "split": args.split, "data": DESCRIBED[args.split],
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "counting": counter.how, "cpus": os.cpu_count(),
        "torch_threads": _torch_threads(), "load_average": os.getloadavg(),
        "goal": ">= 40% fewer input tokens while keeping >= 95% of the supporting sentences",
        "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return int(torch.get_num_threads())


counter: Any = None

if __name__ == "__main__":
    main()
