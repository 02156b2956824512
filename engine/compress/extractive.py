"""Query-aware extractive compression: keep the sentences most relevant to the step's question.

The input is split into paragraphs (blank lines) and sentences; the question and every sentence
and paragraph are embedded once (the cache's embedders, `engine.cache.embedders`); a sentence
scores the mean of its own cosine similarity to the question and its paragraph's, so a sentence
that names nothing from the question but sits in a relevant paragraph (the second hop of a
multi-hop question) still ranks. The score is averaged with the same score for the query moved
toward its two most similar paragraphs (pseudo-relevance feedback, no extra embedding), which
lifts paragraphs that the relevant ones point to. Sentences are taken best first while they fit the token budget,
then put back in their original order; when not even one fits, the most relevant one goes out
alone (a sentence is never cut). No model call; one embedding batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCES = re.compile(r"(?<=[.!?。])\s+")
PARAGRAPH_WEIGHT = 0.5
"""The share of a sentence's score that is its paragraph's relevance."""
FEEDBACK_PARAGRAPHS = 2
"""Paragraphs whose mean vector the query is moved toward (pseudo-relevance feedback)."""


@dataclass(frozen=True)
class Sentence:
    text: str
    paragraph: int


def split_sentences(text: str) -> list[Sentence]:
    """The sentences of `text`, each with its paragraph's index (paragraphs: blank lines; a
    single newline inside a paragraph also ends a sentence)."""
    out: list[Sentence] = []
    for p, para in enumerate(x.strip() for x in _PARAGRAPHS.split(text) if x.strip()):
        for line in para.splitlines():
            out.extend(Sentence(s.strip(), p) for s in _SENTENCES.split(line) if s.strip())
    return out


def join_sentences(sentences: list[Sentence]) -> str:
    """Sentences of one paragraph joined by a space, paragraphs by a blank line."""
    parts: list[str] = []
    last = None
    for s in sentences:
        if parts:
            parts.append(" " if s.paragraph == last else "\n\n")
        parts.append(s.text)
        last = s.paragraph
    return "".join(parts)


def scores(query: str, sentences: list[Sentence], embedder: Any) -> np.ndarray:
    """Each sentence's relevance to `query` (see the module docstring)."""
    paragraphs: dict[int, list[str]] = {}
    for s in sentences:
        paragraphs.setdefault(s.paragraph, []).append(s.text)
    order = sorted(paragraphs)
    vectors = embedder.embed([query, *(s.text for s in sentences), *(" ".join(paragraphs[p]) for p in order)])
    q = vectors[0]
    sents, paras = vectors[1:1 + len(sentences)], vectors[1 + len(sentences):]
    where = np.asarray([order.index(s.paragraph) for s in sentences])

    def relevance(query: np.ndarray) -> np.ndarray:
        return np.asarray((1 - PARAGRAPH_WEIGHT) * (sents @ query) + PARAGRAPH_WEIGHT * (paras @ query)[where])

    # feedback: the query moved toward its best paragraphs finds what they lead to (a second hop)
    best = paras[np.argsort(-(paras @ q))[:FEEDBACK_PARAGRAPHS]]
    moved = q + best.mean(axis=0)
    moved = moved / max(float(np.linalg.norm(moved)), 1e-12)
    return np.asarray((relevance(q) + relevance(moved)) / 2, dtype=np.float32)


def extract(text: str, query: str, budget: int, count: Callable[[str], int], embedder: Any) -> str:
    """The most relevant sentences of `text` that fit `budget` tokens, in their original order."""
    sentences = split_sentences(text)
    if not sentences:
        return text
    relevance = scores(query, sentences, embedder)
    sizes = [count(s.text) + 1 for s in sentences]  # +1: the separator
    kept: set[int] = set()
    used = 0
    for i in sorted(range(len(sentences)), key=lambda i: (-relevance[i], i)):
        if used + sizes[i] <= budget:
            kept.add(i)
            used += sizes[i]
    out = join_sentences([sentences[i] for i in sorted(kept)])
    while len(kept) > 1 and count(out) > budget:  # separators tokenised differently: drop the weakest
        kept.discard(min(kept, key=lambda i: (relevance[i], -i)))
        out = join_sentences([sentences[i] for i in sorted(kept)])
    if not kept:  # sentences are never cut: the most relevant one goes out even over the budget
        out = sentences[int(np.argmax(relevance))].text
    return out
