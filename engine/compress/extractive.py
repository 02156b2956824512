"""Query-aware extractive compression: keep the sentences most relevant to the step's question.

The input is split into paragraphs (blank lines) and sentences. Only the sentences and the question
are embedded (the cache's embedders, `engine.cache.embedders`), each sentence once per process (an
in-memory cache keyed by embedder and text), cut to `MAX_WORDS` words and sent in batches of
similar length, so that one long sentence does not pad the whole batch; a paragraph's vector is the
mean of its sentences'. A sentence scores, in two hops:

1. **first hop**: its own relevance to the question and its paragraph's, each the mean of an
   embedding cosine and a BM25 score of the question's words (both scaled to the best in the
   input), so an exact name the question mentions counts as much as a paraphrase; a paragraph
   also scores the share of the names (capitalised words, numbers) in its first `HEAD_WORDS`
   words (a title, the subject of its first sentence) that the question names;
2. **second hop**: the question is expanded by the best `SEED_SENTENCES` sentences of each of
   the best `SEEDS` paragraphs (the bridge of a multi-hop question: "the woman who portrayed X"
   becomes "... Shirley Temple ..."), and each paragraph is scored again: cosine and BM25 to the
   expanded query, plus the share of its first words' names that those sentences name. The final
   score adds the second hop's paragraph score, weighted `HOP_WEIGHT`.

Selection: sentences are taken best first while they fit the token budget; when a sentence is taken,
its paragraph's first sentence (which names the entity the rest speaks of) goes in with it if both
fit. The kept sentences are put back in their original order (paragraph breaks kept); when not even
one fits, the most relevant one goes out alone (a sentence is never cut). No model call: one
embedding batch of the sentences not seen before, and arithmetic.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCES = re.compile(r"(?<=[.!?。])\s+")
_WORDS = re.compile(r"\w+")
_NAMES = re.compile(r"\b[A-Z0-9][\w'’-]*")
_STOP = frozenset("""a an the of in on at to for from by with and or but nor is are was were be been being am as
that this these those which who whom whose what when where why how did does do done has have had having it its
his her hers their theirs they he she them him we you your our i me my than then there here into about after
before over under also not no yes so if same both either neither other another such more most much many any
some one ones can could will would shall should may might must s""".split())

MAX_WORDS = 64
"""Words of a sentence that are embedded (the rest rarely changes the vector and costs a padded batch)."""
BATCH = 16
"""Texts per embedding call, sorted by length (little padding)."""
CACHE_SIZE = 20_000
"""Sentence vectors kept per process (least recently used out first)."""
PARAGRAPH_WEIGHT = 0.5
"""The share of a sentence's first-hop score that is its paragraph's relevance."""
LEXICAL_WEIGHT = 0.5
"""The share of each relevance that is BM25 (the rest: embedding cosine)."""
SEEDS = 2
"""Paragraphs whose best sentences expand the query for the second hop."""
HOP_WEIGHT = 0.5
"""Weight of the second hop's paragraph score in a sentence's final score."""
HEAD_WORDS = 5
"""Words at the start of a paragraph that name what it is about (a title, the subject of its first sentence)."""
TITLE_WEIGHT = 0.5
"""Weight of the share of a paragraph's head names that the query names (first hop)."""
SEED_SENTENCES = 2
"""Best sentences of each seed paragraph that expand the query."""


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


# --- embeddings -------------------------------------------------------------------------------------

_cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_cache_lock = threading.Lock()


def _clip(text: str) -> str:
    words = text.split()
    return text if len(words) <= MAX_WORDS else " ".join(words[:MAX_WORDS])


def embed(texts: list[str], embedder: Any) -> np.ndarray:
    """Unit vectors of `texts` (each cut to `MAX_WORDS` words), from the cache where seen before;
    the others are embedded in batches of similar length."""
    name = str(getattr(embedder, "name", type(embedder).__name__))
    clipped = [_clip(t) for t in texts]
    found: dict[str, np.ndarray] = {}
    with _cache_lock:
        for t in clipped:
            vector = _cache.get((name, t))
            if vector is not None:
                _cache.move_to_end((name, t))
                found[t] = vector
    missing = sorted({t for t in clipped if t not in found}, key=len)
    for start in range(0, len(missing), BATCH):
        chunk = missing[start:start + BATCH]
        found.update(zip(chunk, np.asarray(embedder.embed(chunk), dtype=np.float32)))
    with _cache_lock:
        for t in missing:
            _cache[(name, t)] = found[t]
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return np.asarray([found[t] for t in clipped], dtype=np.float32)


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


# --- lexical ----------------------------------------------------------------------------------------

def terms(text: str) -> list[str]:
    """Lower-cased content words."""
    return [w for w in _WORDS.findall(text.lower()) if w not in _STOP]


def names(text: str) -> set[str]:
    """Lower-cased capitalised words and numbers (what names an entity), stop words out."""
    return {w.lower() for w in _NAMES.findall(text) if w.lower() not in _STOP}


def bm25(query: list[str], docs: list[list[str]], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """BM25 of each doc (a list of terms) for the query terms, idf over `docs`."""
    n = len(docs)
    if not n or not query:
        return np.zeros(n, dtype=np.float32)
    df: dict[str, int] = {}
    for d in docs:
        for t in set(d):
            df[t] = df.get(t, 0) + 1
    avg = max(sum(len(d) for d in docs) / n, 1e-9)
    wanted = set(query)
    out = np.zeros(n, dtype=np.float32)
    for i, d in enumerate(docs):
        tf: dict[str, int] = {}
        for t in d:
            if t in wanted:
                tf[t] = tf.get(t, 0) + 1
        score = 0.0
        for t, f in tf.items():
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            score += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avg))
        out[i] = score
    return out


def _scaled(x: np.ndarray) -> np.ndarray:
    """`x` clipped at 0 and divided by its maximum (all zeros stay zeros)."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0, None)
    top = float(x.max()) if x.size else 0.0
    return x / top if top > 0 else x


# --- scoring ----------------------------------------------------------------------------------------

def scores(query: str, sentences: list[Sentence], embedder: Any) -> np.ndarray:
    """Each sentence's relevance to `query` (see the module docstring)."""
    vectors = embed([query, *(s.text for s in sentences)], embedder)
    q, sents = vectors[0], vectors[1:]
    order = sorted({s.paragraph for s in sentences})
    where = np.asarray([order.index(s.paragraph) for s in sentences])
    members = [np.flatnonzero(where == j) for j in range(len(order))]
    paras = np.stack([sents[m].mean(axis=0) for m in members])
    paras = paras / np.maximum(np.linalg.norm(paras, axis=1, keepdims=True), 1e-12)
    lead = [int(m[0]) for m in members]

    sentence_terms = [terms(s.text) for s in sentences]
    paragraph_terms = [[t for i in m for t in sentence_terms[i]] for m in members]
    query_terms = terms(query)
    heads = [names(" ".join(sentences[i].text.split()[:HEAD_WORDS])) for i in lead]

    def relevance(cosine: np.ndarray, lexical: np.ndarray) -> np.ndarray:
        return np.asarray((1 - LEXICAL_WEIGHT) * _scaled(cosine) + LEXICAL_WEIGHT * _scaled(lexical))

    def named(wanted: set[str]) -> np.ndarray:
        return np.asarray([len(wanted & h) / max(len(h), 1) for h in heads], dtype=np.float32)

    query_names = names(query)
    sentence_rel = relevance(sents @ q, bm25(query_terms, sentence_terms))
    paragraph_rel = relevance(paras @ q, bm25(query_terms, paragraph_terms)) + TITLE_WEIGHT * named(query_names)
    first = (1 - PARAGRAPH_WEIGHT) * sentence_rel + PARAGRAPH_WEIGHT * paragraph_rel[where]

    # second hop: the best sentences of the best paragraphs expand the query
    best_paragraphs = [int(j) for j in np.argsort(-paragraph_rel, kind="stable")[:SEEDS]]
    seeds = [int(i) for j in best_paragraphs
             for i in members[j][np.argsort(-first[members[j]], kind="stable")[:SEED_SENTENCES]]]
    expanded = q + sents[seeds].mean(axis=0)
    expanded = expanded / max(float(np.linalg.norm(expanded)), 1e-12)
    bridge: set[str] = set().union(*(names(sentences[i].text) for i in seeds)) - query_names
    hop = relevance(paras @ expanded, bm25(query_terms + [t for i in seeds for t in sentence_terms[i]],
                                           paragraph_terms)) + _scaled(named(bridge))
    return np.asarray(first + HOP_WEIGHT * hop[where], dtype=np.float32)


def extract(text: str, query: str, budget: int, count: Callable[[str], int], embedder: Any) -> str:
    """The most relevant sentences of `text` that fit `budget` tokens, in their original order."""
    sentences = split_sentences(text)
    if not sentences:
        return text
    relevance = scores(query, sentences, embedder)
    sizes = [count(s.text) + 1 for s in sentences]  # +1: the separator
    lead: dict[int, int] = {}
    for i, s in enumerate(sentences):
        lead.setdefault(s.paragraph, i)
    kept: set[int] = set()
    used = 0
    for i in sorted(range(len(sentences)), key=lambda i: (-relevance[i], i)):
        if i in kept:
            continue
        first = lead[sentences[i].paragraph]
        if first not in kept and first != i and used + sizes[i] + sizes[first] <= budget:
            kept.update((first, i))
            used += sizes[i] + sizes[first]
        elif used + sizes[i] <= budget:
            kept.add(i)
            used += sizes[i]
    out = join_sentences([sentences[i] for i in sorted(kept)])
    while len(kept) > 1 and count(out) > budget:  # separators tokenised differently: drop the weakest
        kept.discard(min(kept, key=lambda i: (relevance[i], -i)))
        out = join_sentences([sentences[i] for i in sorted(kept)])
    if not kept:  # sentences are never cut: the most relevant one goes out even over the budget
        out = sentences[int(np.argmax(relevance))].text
    return out
