"""Counting tokens for long inputs (`context:` on llm steps, see `engine.steps.context`).

On the local tier (a `llamacpp:` model) counts are exact: the model's own llama.cpp tokenizer,
under the model's lock (a `Llama` is not thread-safe). Elsewhere they are approximate: about four
characters a token, rounded up, which English text under OpenAI's and Anthropic's tokenizers
rarely exceeds. Every count says which it is (`TokenCounter.how`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

CHARS_PER_TOKEN = 4
CONTEXT_WINDOWS = {"openai": 128_000, "anthropic": 200_000}
"""Context windows by provider when a tier entry sets no `options.context_window`."""
DEFAULT_CONTEXT_WINDOW = 8192


@dataclass(frozen=True)
class TokenCounter:
    exact: bool
    how: str
    """'exact (llama.cpp tokenizer, smollm2)' or 'approximate (~4 characters a token)'."""
    count: Callable[[str], int]
    cut: Callable[[str, int], str]
    """The longest prefix of a text that is at most n tokens."""
    context_window: int


def counter_for(entry: Any) -> TokenCounter:
    """The token counter and context window of one tier entry (`engine.spec.models.ModelEntry`)."""
    if entry.provider == "llamacpp":
        return _llama_counter(entry)
    window = entry.options.get("context_window") or entry.options.get("n_ctx") or CONTEXT_WINDOWS.get(
        entry.provider, DEFAULT_CONTEXT_WINDOW)
    return TokenCounter(exact=False, how=f"approximate (~{CHARS_PER_TOKEN} characters a token)",
                        count=approximate_count, cut=lambda text, n: text[: max(0, n) * CHARS_PER_TOKEN],
                        context_window=int(window))


def approximate_count(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _llama_counter(entry: Any) -> TokenCounter:
    from engine.providers.registry import get_provider

    provider: Any = get_provider("llamacpp")
    loaded = provider.load(entry.model_name, entry.options)
    llama, lock = loaded.llama, loaded.lock

    def tokens(text: str) -> list[int]:
        with lock:
            return list(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def count(text: str) -> int:
        return len(tokens(text)) if text else 0

    def cut(text: str, n: int) -> str:
        ids = tokens(text)
        if len(ids) <= n:
            return text
        with lock:
            head = llama.detokenize(ids[: max(0, n)]).decode("utf-8", errors="ignore")
        while head and count(head) > n:  # detokenizing and re-tokenizing can merge differently
            head = head[:-1]
        return str(head)

    return TokenCounter(exact=True, how=f"exact (llama.cpp tokenizer, {entry.model_name})", count=count, cut=cut,
                        context_window=int(llama.n_ctx()))
