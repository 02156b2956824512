"""Token-level compression: LLMLingua's iterative token dropping with a small causal LM.

The input is tokenised with the scorer's own tokenizer and cut into segments. Each segment is
scored conditioned on the *compressed* text before it (LLMLingua's iterative step: what was
dropped earlier no longer explains what comes later): every token's self-information
-log p(token | kept prefix) comes from one forward pass over the segment, and the segment keeps
the `keep` share of its tokens with the most information (the least predictable), in order. The
kept tokens are then fed back as the prefix of the next segment.

The scorer is the local tier's llama.cpp model (by default the bundled SmolLM2), the very
instance the local tier answers with, under its lock: log-probabilities for every position of a
segment are read from one batch decoded with all outputs on (the `Llama` keeps no logits for
prompt positions otherwise). Afterwards the instance's evaluated state is dropped, so its next
completion starts clean (restoring its prompt prefix from the state cache when it has one).
Offline: nothing is downloaded. Not LLMLingua's question-aware (LongLLMLingua) variant, nor its
coarse budget controller: this is the token-level step alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _logits(llama: Any, tokens: list[int], n_past: int) -> np.ndarray:
    """Logits (len(tokens), n_vocab) of every position, the tokens evaluated after `n_past`
    tokens already in the KV cache."""
    ctx, batch, n_vocab = llama._ctx, llama._batch, llama.n_vocab()
    ctx.kv_cache_seq_rm(-1, n_past, -1)
    rows = []
    for start in range(0, len(tokens), llama.n_batch):
        part = tokens[start:start + llama.n_batch]
        batch.set_batch(batch=part, n_past=n_past + start, logits_all=True)
        ctx.decode(batch)
        rows.append(np.ctypeslib.as_array(ctx.get_logits(), shape=(len(part) * n_vocab,))
                    .reshape(len(part), n_vocab).copy())
    return np.vstack(rows)


def _logprob(row: np.ndarray, token: int) -> float:
    m = float(row.max())
    return float(row[token]) - (m + math.log(float(np.exp(row - m, dtype=np.float64).sum())))


def compress_tokens(text: str, keep: float, llama: Any, lock: Any, segment: int = 128) -> str:
    """`text` with only the `keep` share of its tokens, the least predictable, in order."""
    with lock:
        ids = [int(t) for t in llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)]
        if len(ids) < 2:
            return text
        limit = llama.n_ctx() - 8
        start = int(llama.token_bos()) if int(llama.token_bos()) >= 0 else ids[0]
        kept: list[int] = []
        try:
            prefix = 1
            last = _logits(llama, [start], 0)[-1]
            for s in range(0, len(ids), segment):
                seg = ids[s:s + segment]
                if prefix + len(seg) > limit:  # the window is full: start a fresh context
                    prefix = 1
                    last = _logits(llama, [start], 0)[-1]
                rows = _logits(llama, seg, prefix)
                info = [-_logprob(last if j == 0 else rows[j - 1], t) for j, t in enumerate(seg)]
                n_keep = max(1, round(keep * len(seg)))
                chosen = sorted(sorted(range(len(seg)), key=lambda j: (-info[j], j))[:n_keep])
                piece = [seg[j] for j in chosen]
                kept.extend(piece)
                last = _logits(llama, piece, prefix)[-1]  # the compressed segment becomes the prefix
                prefix += len(piece)
        finally:
            llama.n_tokens = 0  # the KV cache now holds scoring state: the next completion re-evaluates
        return str(llama.detokenize(kept).decode("utf-8", errors="ignore")).strip()
