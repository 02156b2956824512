"""Prompt compression (`context: {compress: ...}` on an llm step): shrink a long input before it
is sent.

    extractive   keep the sentences most relevant to the step's question (`engine.compress.extractive`):
                 embeddings only, no model call
    tokens       drop the tokens a small causal LM finds most predictable, LLMLingua's token-level
                 algorithm on the local tier's llama.cpp model (`engine.compress.lingua`)

The target is `ratio` (share of the input's tokens kept, default 0.5) or `budget` (tokens);
inputs of at most `min_tokens` tokens, or already within the target, go out as is. Tokens are
counted with the step's counter (`engine.tokens`). Whether a step compresses at all is the quality
monitor's call (`engine.quality.compression`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from engine.spec.models import CompressSpec


@dataclass(frozen=True)
class Compressed:
    text: str
    tokens_before: int
    tokens_after: int
    target: int
    ms: float
    applied: bool
    """False when the input went out as is (already within the target, or nothing to drop)."""

    def info(self, mode: str) -> dict[str, Any]:
        return {"mode": mode, "applied": self.applied, "tokens_before": self.tokens_before,
                "tokens_after": self.tokens_after, "target_tokens": self.target,
                "saved": 1 - self.tokens_after / self.tokens_before if self.tokens_before else 0.0,
                "ms": round(self.ms, 2)}


def target_tokens(spec: CompressSpec, tokens: int) -> int:
    return spec.budget if spec.budget is not None else max(1, math.floor(spec.keep * tokens))


def compress(text: str, spec: CompressSpec, *, count: Callable[[str], int], query: str = "",
             embedder: Any = None, scorer: Any = None) -> Compressed:
    """`text` compressed to the spec's target. `embedder` (extractive) is an
    `engine.cache.embedders.Embedder`; `scorer` (tokens) the `(llama, lock)` of a llama.cpp model."""
    started = time.perf_counter()
    before = count(text)
    target = target_tokens(spec, before)
    if before <= max(target, spec.min_tokens):
        return Compressed(text, before, before, target, (time.perf_counter() - started) * 1000, False)
    if spec.mode == "extractive":
        from engine.compress.extractive import extract

        out = extract(text, query, target, count, embedder)
    else:
        from engine.compress.lingua import compress_tokens

        llama, lock = scorer
        out = compress_tokens(text, target / before, llama, lock, segment=spec.segment)
    return Compressed(out, before, count(out), target, (time.perf_counter() - started) * 1000, out != text)
