"""Cache entries and events in the engine's store (tables from migration 020, read and written
through `engine.store.cache`), SQLite or Postgres.

One row per (namespace, normalised input): the validated answer, what it cost, and for semantic
caching the embedding as a float32 blob (and, on PostgreSQL, a pgvector column searched by HNSW).
Writes are upserts, so two threads filling the same key leave one row. `cache_events` logs every
lookup (hit, miss, expired, invalid) with the entry it served and, for semantic hits, the similarity.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np

from engine.cache.index import Decision, Match, VectorIndex
from engine.store import Store
from engine.store import cache as cache_tables
from engine.store.base import dump
from engine.clock import now_iso


@dataclass
class CacheEntry:
    id: int
    workflow: str
    step_id: str
    output: Any
    answer_key: str
    tier: str | None
    provider: str | None
    model: str | None
    tokens_in: int
    tokens_out: int
    cost: float
    created: float
    text: str | None
    input: Any
    trust: str = "unverified"
    """reference | verified | labelled | unverified (see engine.quality.trust)."""
    settled_by: str | None = None
    """What settled it: `check:<id>` (a reference check), `label:<id>` (a person), None."""
    source_entry: int | None = None
    """An exact copy left by a semantic hit: the entry whose answer it copied."""

    @property
    def age_s(self) -> float:
        return time.time() - self.created


class PgVectorIndex:
    """The semantic index of one namespace on PostgreSQL: pgvector's HNSW index answers the
    nearest entry (and the nearest one with another answer, for the margin); the decision rule is
    `VectorIndex`'s. Entries are added and removed through their rows, so `add`/`remove` do nothing."""

    def __init__(self, store: Any, sem_namespace: str):
        self.store, self.namespace = store, sem_namespace
        self.lock = threading.RLock()
        self.max_id = 0

    def add(self, ids: list[int], answer_keys: list[str], vectors: np.ndarray) -> None:
        pass

    def remove(self, entry_id: int) -> None:
        pass

    def search(self, query: np.ndarray, threshold: float, margin: float = 0.0) -> Decision:
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        top = cache_tables.nearest(self.store, self.namespace, query)
        if not top:
            return Decision(None, None, "empty")
        best = float(top[0]["similarity"])
        if best < threshold:
            return Decision(None, best, "below_threshold")
        other = cache_tables.nearest(self.store, self.namespace, query, other_than=top[0]["answer_key"])
        conflicting = float(other[0]["similarity"]) if other else None
        if margin > 0 and conflicting is not None and best - conflicting < margin:
            return Decision(None, best, "ambiguous")
        return Decision(Match(int(top[0]["id"]), best, conflicting), best, "hit")


def _entry(row: dict[str, Any]) -> CacheEntry:
    return CacheEntry(
        id=row["id"], workflow=row["workflow"], step_id=row["step_id"], output=json.loads(row["output"]),
        answer_key=row["answer_key"], tier=row["tier"], provider=row["provider"], model=row["model"],
        tokens_in=row["tokens_in"] or 0, tokens_out=row["tokens_out"] or 0, cost=row["cost"] or 0.0,
        created=row["created"], text=row["text"], input=json.loads(row["input"]) if row["input"] else None,
        trust=row.get("trust") or "unverified", settled_by=row.get("settled_by"), source_entry=row.get("source_entry"))


_UNSET: Any = object()


class CacheStore:
    """Reads and writes the cache tables of one store (on SQLite: its connection and lock)."""

    def __init__(self, store: Store):
        self.store = store
        self.lock = threading.RLock()
        self.pgvector = cache_tables.searches_vectors(store)
        """The store searches vectors itself (pgvector): nothing held in memory."""
        self.indexes: dict[str, VectorIndex] = {}
        """In-memory vector matrices, one per semantic namespace (see `index`)."""

    def index(self, sem_namespace: str) -> VectorIndex | PgVectorIndex:
        """The namespace's vector index, first loaded from the store, then topped up with newer
        rows; on PostgreSQL the pgvector HNSW index itself (nothing held in memory)."""
        if self.pgvector:
            return PgVectorIndex(self.store, sem_namespace)
        with self.lock:
            index = self.indexes.setdefault(sem_namespace, VectorIndex())
        with index.lock:
            rows = self.vectors_after(sem_namespace, index.max_id)
            if rows:
                index.add([r[0] for r in rows], [r[1] for r in rows],
                          np.stack([np.frombuffer(r[2], dtype=np.float32) for r in rows]))
                index.max_id = rows[-1][0]
        return index

    # --- entries --------------------------------------------------------------------------------

    def get(self, namespace: str, input_key: str) -> CacheEntry | None:
        row = cache_tables.entry(self.store, namespace, input_key)
        return None if row is None else _entry(row)

    def get_by_id(self, entry_id: int) -> CacheEntry | None:
        row = cache_tables.entry_by_id(self.store, entry_id)
        return None if row is None else _entry(row)

    def put(self, row: dict[str, Any], vector: np.ndarray | None = None) -> int:
        """Insert or replace the answer for (namespace, input_key); returns the entry id."""
        vector = None if vector is None else np.asarray(vector, dtype=np.float32)
        return cache_tables.put_entry(self.store, _stored(row, vector), vector)

    def delete(self, entry_id: int) -> None:
        cache_tables.delete_entry(self.store, entry_id)

    def settle(self, *, workflow: str, step_id: str, prompt_hash: str | None, schema_hash: str, input_hash: str,
               answer: Any, trust: str, settled_by: str, checked: Any = _UNSET, tier: str | None = None,
               provider: str | None = None, model: str | None = None) -> list[int]:
        """Apply a verdict to every entry written for this call (every tenant and model chain).

        A check (`checked`: the answer it judged): entries holding that answer become `trust`
        (verified) when `answer` agrees, else take `answer` (the reference's) as trusted; entries
        already trusted are left alone. A label (`checked` unset, `prompt_hash` None: any prompt
        under the schema): every entry takes the label. Exact copies that semantic hits made of a
        corrected entry are deleted. Returns the ids whose answer changed."""
        from engine.cache.keys import answer_key  # keys imports nothing of the store

        new_key = answer_key(answer)
        text = _document(answer)
        changed: list[int] = []
        label = checked is _UNSET
        checked_key = None if label else answer_key(checked)
        for row in cache_tables.entries_for(self.store, workflow, step_id, prompt_hash, schema_hash, input_hash):
            if not label and (row["answer_key"] != checked_key or (row["trust"] or "unverified") != "unverified"):
                continue  # another answer, or one already settled
            if row["answer_key"] == new_key:
                cache_tables.settle_entry(self.store, row["id"], trust=trust, settled_by=settled_by,
                                          only_unverified=not label)
            elif cache_tables.settle_entry(self.store, row["id"], trust=trust, settled_by=settled_by, output=text,
                                           answer_key=new_key, tier=tier, provider=provider, model=model,
                                           only_unverified=not label):
                changed.append(row["id"])
                if row["sem_namespace"]:
                    self._reindex(row["sem_namespace"], row["id"], new_key)
        for gone in cache_tables.delete_copies_of(self.store, changed):
            if gone["sem_namespace"]:
                self._unindex(gone["sem_namespace"], gone["id"])
        return changed

    def evict(self, entry_id: int, sem_namespace: str | None = None) -> None:
        """Delete an entry and the exact copies semantic hits made of it, and drop them from the
        in-memory index."""
        self.delete(entry_id)
        if sem_namespace:
            self._unindex(sem_namespace, entry_id)
        for gone in cache_tables.delete_copies_of(self.store, [entry_id]):
            if gone["sem_namespace"]:
                self._unindex(gone["sem_namespace"], gone["id"])

    def _reindex(self, sem_namespace: str, entry_id: int, new_key: str) -> None:
        """An entry's answer changed: its in-memory vector row takes the new answer key."""
        with self.lock:
            index = self.indexes.get(sem_namespace)
        if index is not None:
            index.relabel(entry_id, new_key)

    def _unindex(self, sem_namespace: str, entry_id: int) -> None:
        with self.lock:
            index = self.indexes.get(sem_namespace)
        if index is not None:
            index.remove(entry_id)

    def vectors_after(self, sem_namespace: str, after_id: int) -> list[tuple[int, str, bytes]]:
        """(id, answer_key, vector blob) of the namespace's entries with id > after_id, by id."""
        return cache_tables.vectors_after(self.store, sem_namespace, after_id)

    # --- events ---------------------------------------------------------------------------------

    def record(self, *, run_id: str, workflow: str, step_id: str, tenant: str | None, kind: str,
               outcome: str, entry: CacheEntry | None = None, similarity: float | None = None) -> None:
        """Queue the lookup event (and a hit's counter update) for the store's writer thread."""
        hit = outcome == "hit" and entry is not None
        cache_tables.record_lookup(
            self.store, run_id=run_id, workflow=workflow, step_id=step_id, tenant=tenant, kind=kind,
            outcome=outcome, entry_id=entry.id if entry else None, similarity=similarity,
            tokens_saved=(entry.tokens_in + entry.tokens_out) if hit and entry else 0,
            cost_saved=entry.cost if hit and entry else 0.0, hit=hit, trust=entry.trust if entry else None)

    # --- tools (engine cache stats / clear / inspect) -------------------------------------------

    def stats(self, workflow: str | None = None) -> list[dict[str, Any]]:
        entries = {(r["workflow"], r["step_id"]): r for r in cache_tables.entry_counts(self.store, workflow)}
        events = {(r["workflow"], r["step_id"]): r for r in cache_tables.event_counts(self.store, workflow)}
        trust: dict[tuple[str, str], dict[str, int]] = {}
        for r in cache_tables.trust_counts(self.store, workflow):
            trust.setdefault((r["workflow"], r["step_id"]), {})[r["trust"]] = int(r["n"])
        rows = []
        for key in sorted(entries.keys() | events.keys()):
            e, v = entries.get(key, {}), events.get(key, {})
            hits = (v.get("exact_hits") or 0) + (v.get("semantic_hits") or 0)
            lookups = v.get("lookups") or 0
            rows.append({"workflow": key[0], "step_id": key[1], "entries": e.get("entries") or 0,
                         "vectors": e.get("vectors") or 0, "lookups": lookups,
                         "exact_hits": v.get("exact_hits") or 0, "semantic_hits": v.get("semantic_hits") or 0,
                         "hit_rate": hits / lookups if lookups else 0.0,
                         "tokens_saved": v.get("tokens_saved") or 0, "cost_saved": v.get("cost_saved") or 0.0,
                         "unverified_hits": v.get("unverified_hits") or 0, "bypassed": v.get("bypassed") or 0,
                         "entries_by_trust": trust.get(key, {})})
        return rows

    def clear(self, workflow: str | None = None, step_id: str | None = None) -> int:
        with self.lock:
            self.indexes.clear()
            return cache_tables.delete_entries(self.store, workflow, step_id)

    def hits(self, *, run_id: str | None = None, workflow: str | None = None, step_id: str | None = None,
             limit: int = 20) -> list[dict[str, Any]]:
        """Recent hits joined with the entry each was served from (the entry may be gone since)."""
        return cache_tables.hits(self.store, run_id=run_id, workflow=workflow, step_id=step_id, limit=limit)


def _document(value: Any) -> str:
    """An entry's JSON document as stored: keys sorted, storable by both backends (a NUL in a
    string becomes U+FFFD: PostgreSQL's jsonb refuses it)."""
    return dump(value, sort_keys=True) or "null"


def _stored(row: dict[str, Any], vector: np.ndarray | None) -> dict[str, Any]:
    """An entry's row as stored: output and input as JSON text, the vector as a float32 blob."""
    data = dict(row)
    data["output"] = _document(data["output"])
    data["input"] = _document(data.get("input"))
    data.setdefault("created", time.time())
    data.setdefault("created_at", now_iso())
    data.setdefault("hits", 0)
    data.setdefault("trust", "unverified")
    if vector is not None:
        data["vector"] = vector.tobytes()
    return data

_cache_stores: WeakKeyDictionary[Store, CacheStore] = WeakKeyDictionary()
_cache_stores_lock = threading.Lock()


def cache_store(store: Store) -> CacheStore:
    """The `CacheStore` of `store` (one per store, so in-memory vector indexes are shared by runs)."""
    with _cache_stores_lock:
        cs = _cache_stores.get(store)
        if cs is None:
            cs = _cache_stores[store] = CacheStore(store)
        return cs
