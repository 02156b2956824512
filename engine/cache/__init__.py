"""Caching of llm steps: exact repeats and near-duplicates served at zero tokens, safely.

    keys.py       what an entry is keyed on (workflow, step, prompt/schema hashes, models, tenant)
    store.py      entries (with float32 vectors) and lookup events in the SQLite store
    index.py      the in-memory vector matrix and the threshold + margin decision
    embedders.py  minilm (offline, `engine[semantic]`), hash, openai:MODEL; pluggable
    exact.py      `ExactCacheServer`   (on for every llm step unless `cache: false`)
    semantic.py   `SemanticCacheServer` (steps with `cache: {semantic: ...}`)

Both are `engine.serving.Server`s; `cache_servers` gives the ones a workflow needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.cache.embedders import (Embedder, HashEmbedder, MiniLMEmbedder, OpenAIEmbedder, get_embedder,
                                    register_embedder, unregister_embedder)
from engine.cache.exact import ExactCacheServer
from engine.cache.semantic import SemanticCacheServer
from engine.cache.store import CacheStore, cache_store

if TYPE_CHECKING:
    from engine.spec.models import LLMSpec, Workflow
    from engine.store import Store


def _llm_specs(workflow: Workflow) -> list[LLMSpec]:
    specs: list[LLMSpec] = []
    for step in workflow.steps:
        if step.llm is not None:
            specs.append(step.llm)
        elif step.decision is not None and getattr(step.decision.on_miss, "llm", None) is not None:
            specs.append(step.decision.on_miss.llm)  # type: ignore[union-attr]
    return specs


def cache_servers(workflow: Workflow, store: Store) -> list[Any]:
    """Exact first, then semantic (only when a step asks for it)."""
    specs = _llm_specs(workflow)
    servers: list[Any] = []
    if any(s.cache is not None and s.cache.enabled for s in specs):
        servers.append(ExactCacheServer(store))
    if any(s.cache is not None and s.cache.enabled and s.cache.semantic is not None for s in specs):
        servers.append(SemanticCacheServer(store))
    return servers


__all__ = ["CacheStore", "Embedder", "ExactCacheServer", "HashEmbedder", "MiniLMEmbedder", "OpenAIEmbedder",
           "SemanticCacheServer", "cache_servers", "cache_store", "get_embedder", "register_embedder",
           "unregister_embedder"]
