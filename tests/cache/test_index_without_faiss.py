"""Without faiss (the `ann` extra not installed), large semantic namespaces use the exact rule.

Kept apart from test_ann.py, which needs faiss: this must run exactly where faiss is missing. The
test hides faiss from the import system, so it runs (and means the same) with or without it."""

from __future__ import annotations

import sys

import numpy as np

from engine.cache import ann
from engine.cache.index import VectorIndex


def test_without_faiss_the_exact_rule_serves(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    assert not ann.available()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = VectorIndex(ann_min=1000)
    index.add(list(range(1, 1501)), [f"answer-{i % 40}" for i in range(1500)], x[:1500])
    index.add(list(range(1501, 3001)), [f"answer-{i % 40}" for i in range(1500, 3000)], x[1500:])
    assert index._ann is None and index._no_ann
    decision = index.search(x[10], 0.99)
    assert decision.match is not None and decision.match.entry_id == 11
    assert decision == index.exact_search(x[10], 0.99)
