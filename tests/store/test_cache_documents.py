"""A cache entry's JSON documents are stored alike by both backends: a NUL inside an answer or an
input (PostgreSQL's jsonb refuses the `\\u0000` escape) becomes U+FFFD, as in every other JSON
column, instead of failing the write."""

from __future__ import annotations

import numpy as np

from engine.cache.store import cache_store
from engine.store.opening import open_store


def test_an_answer_with_a_nul_is_stored_and_served(store_url):
    store = open_store(store_url)
    cache = cache_store(store)
    row = {"workflow": "wf", "step_id": "s", "namespace": "n", "sem_namespace": "sem", "prompt_hash": "p",
           "schema_hash": "k", "model_key": "m", "tier": "local", "embedder": "vectors",
           "input_key": "a", "input": {"text": "a\x00b"}, "output": {"l": "sp\x00am", "b": 1},
           "answer_key": "spam"}
    cache.put(row, np.array([1.0, 0.0, 0.0]))
    entry = cache.get("n", "a")
    assert entry is not None
    assert entry.output == {"b": 1, "l": "sp\ufffdam"}
    assert entry.input == {"text": "a\ufffdb"}
    store.close()
