"""The cache tables in the store (migration 020): `cache_entries`, one row per (namespace,
normalised input), and `cache_events`, one row per lookup.

An entry's `output` and `input` are JSON text and its embedding a float32 blob (`vector`); on
PostgreSQL the embedding also goes into a pgvector column, searched by HNSW (`nearest`), and
`searches_vectors(store)` says so. Entries are written at once (an upsert: two threads filling one
key leave one row); lookup events and hit counters are queued for the store's writer thread.
`engine.cache.store.CacheStore` builds entries and the in-memory vector index over these calls.
"""

from __future__ import annotations

import json
from typing import Any

from engine.clock import now_iso

COLUMNS = ("id", "workflow", "step_id", "output", "answer_key", "tier", "provider", "model", "tokens_in",
           "tokens_out", "cost", "created", "text", "input", "trust", "settled_by", "source_entry")
"""The columns of an entry that `entry` and `entry_by_id` read."""
_COLUMNS = ", ".join(COLUMNS)
_EVENT_SQL = ("INSERT INTO cache_events (run_id, workflow, step_id, tenant, kind, outcome, entry_id, similarity, "
              "tokens_saved, cost_saved, created_at, trust) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_HIT_SQL = "UPDATE cache_entries SET hits = hits + 1, last_hit_at = ? WHERE id = ?"


def searches_vectors(store: Any) -> bool:
    """Whether the store finds nearest entries itself (pgvector on PostgreSQL); otherwise the
    cache keeps the vectors in memory (`vectors_after`)."""
    return store.dialect == "postgresql"


# --- entries ------------------------------------------------------------------------------------

def entry(store: Any, namespace: str, input_key: str) -> dict[str, Any] | None:
    """The entry for (namespace, input_key), JSON columns as text; no wait for the log queue."""
    return store.execute_returning(
        f"SELECT {_COLUMNS} FROM cache_entries WHERE namespace = ? AND input_key = ?", [namespace, input_key])


def entry_by_id(store: Any, entry_id: int) -> dict[str, Any] | None:
    return store.execute_returning(
        f"SELECT {_COLUMNS} FROM cache_entries WHERE id = ?", [entry_id])


def put_entry(store: Any, row: dict[str, Any], vector: Any = None) -> int:
    """Insert or replace the entry for (row's namespace, input_key), keeping its hit count; returns
    its id. `row` holds the stored values (JSON as text, `vector` as a blob); `vector`, the
    embedding, also goes into pgvector where the store searches vectors itself."""
    cols = list(row)
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in ("namespace", "input_key", "hits"))
    returned = store.execute_returning(
        f"INSERT INTO cache_entries ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
        f"ON CONFLICT(namespace, input_key) DO UPDATE SET {updates} RETURNING id", [row[c] for c in cols])
    assert returned is not None
    entry_id = int(returned["id"])
    if vector is not None and searches_vectors(store):
        store.set_vector(entry_id, vector)
    return entry_id


def delete_entry(store: Any, entry_id: int) -> None:
    store.execute("DELETE FROM cache_entries WHERE id = ?", [entry_id], flush=False)


# --- settling entries: checks and labels ---------------------------------------------------------

_SAME_CALL = "workflow = ? AND step_id = ? AND prompt_hash = ? AND schema_hash = ? AND input_hash = ?"


def entries_for(store: Any, workflow: str, step_id: str, prompt_hash: str | None, schema_hash: str | None,
                input_hash: str) -> list[dict[str, Any]]:
    """Every entry (any tenant, any model chain) written for this call: id, answer_key, trust, tier,
    sem_namespace. `prompt_hash` None: any prompt (labels are about the input and schema)."""
    where = _SAME_CALL if prompt_hash is not None else _SAME_CALL.replace("prompt_hash = ? AND ", "")
    params = [workflow, step_id, *([prompt_hash] if prompt_hash is not None else []), schema_hash, input_hash]
    return store.query(f"SELECT id, answer_key, trust, tier, sem_namespace FROM cache_entries WHERE {where}", params)


def settle_entry(store: Any, entry_id: int, *, trust: str, settled_by: str, output: str | None = None,
                 answer_key: str | None = None, tier: str | None = None, provider: str | None = None,
                 model: str | None = None, only_unverified: bool = True) -> bool:
    """Give an entry its verdict: `trust` and what settled it, and with `output` (JSON text) the
    trusted answer in place of its own. `only_unverified` (checks): leave entries that are already
    trusted alone, so a check never overwrites a label; labels pass False (the latest label wins).
    True when the row changed."""
    sets: list[str] = ["trust = ?", "settled_by = ?"]
    params: list[Any] = [trust, settled_by]
    if output is not None:
        sets += ["output = ?", "answer_key = ?", "tier = ?", "provider = ?", "model = ?"]
        params += [output, answer_key, tier, provider, model]
    guard = " AND COALESCE(trust, 'unverified') = 'unverified'" if only_unverified else ""
    return bool(store.execute(f"UPDATE cache_entries SET {', '.join(sets)} WHERE id = ?{guard}",
                              [*params, entry_id], flush=False))


def delete_copies_of(store: Any, entry_ids: list[int]) -> list[dict[str, Any]]:
    """Delete the exact copies that semantic hits made of these entries (their answers were served
    on similarity alone); returns the deleted rows' id and sem_namespace."""
    if not entry_ids:
        return []
    marks = ", ".join("?" for _ in entry_ids)
    rows = store.query(f"SELECT id, sem_namespace FROM cache_entries WHERE source_entry IN ({marks})", entry_ids,
                       flush=False)
    if rows:
        store.execute(f"DELETE FROM cache_entries WHERE source_entry IN ({marks})", entry_ids, flush=False)
    return rows


def trust_counts(store: Any, workflow: str | None = None) -> list[dict[str, Any]]:
    """Per (workflow, step_id, trust): entries."""
    where, params = ("WHERE workflow = ?", [workflow]) if workflow else ("", [])
    return store.query(
        "SELECT workflow, step_id, COALESCE(trust, 'unverified') AS trust, COUNT(*) AS n FROM cache_entries "
        f"{where} GROUP BY workflow, step_id, COALESCE(trust, 'unverified')", params)


def delete_entries(store: Any, workflow: str | None = None, step_id: str | None = None) -> int:
    """Delete the entries of a workflow and/or step (all, with neither); returns how many."""
    clauses, params = [], []
    for col, val in (("workflow", workflow), ("step_id", step_id)):
        if val is not None:
            clauses.append(f"{col} = ?")
            params.append(val)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return int(store.execute(f"DELETE FROM cache_entries {where}", params, flush=False))


def vectors_after(store: Any, sem_namespace: str, after_id: int) -> list[tuple[int, str, bytes]]:
    """(id, answer_key, vector blob) of the namespace's entries with id > after_id, by id."""
    rows = store.query(
        "SELECT id, answer_key, vector FROM cache_entries WHERE sem_namespace = ? AND id > ? "
        "AND vector IS NOT NULL ORDER BY id", [sem_namespace, after_id], flush=False)
    return [(r["id"], r["answer_key"], r["vector"]) for r in rows]


def nearest(store: Any, sem_namespace: str, vector: Any, *, other_than: str | None = None) -> list[dict[str, Any]]:
    """The namespace's entry nearest to `vector` (id, answer_key, similarity), searched by the store
    (see `searches_vectors`); `other_than`: the nearest whose answer key differs."""
    return store.nearest(sem_namespace, vector, other_than=other_than)


# --- events -------------------------------------------------------------------------------------

def record_lookup(store: Any, *, run_id: str, workflow: str, step_id: str, tenant: str | None, kind: str,
                  outcome: str, entry_id: int | None, similarity: float | None, tokens_saved: int,
                  cost_saved: float, hit: bool, trust: str | None = None) -> None:
    """Queue one lookup event (with the trust level of the entry a hit served), and for a hit the
    entry's counter update, for the writer thread."""
    now = now_iso()
    store.enqueue(_EVENT_SQL, [run_id, workflow, step_id, tenant, kind, outcome, entry_id, similarity,
                               tokens_saved, cost_saved, now, trust])
    if hit and entry_id is not None:
        store.enqueue(_HIT_SQL, [now, entry_id])


# --- tools (engine cache stats / inspect) -------------------------------------------------------

def entry_counts(store: Any, workflow: str | None = None) -> list[dict[str, Any]]:
    """Per (workflow, step_id): entries, and of those with a vector."""
    where, params = ("WHERE workflow = ?", [workflow]) if workflow else ("", [])
    return store.query(
        "SELECT workflow, step_id, COUNT(*) AS entries, SUM(CASE WHEN vector IS NOT NULL THEN 1 ELSE 0 END) "
        f"AS vectors FROM cache_entries {where} GROUP BY workflow, step_id", params)


def event_counts(store: Any, workflow: str | None = None) -> list[dict[str, Any]]:
    """Per (workflow, step_id): exact lookups, exact and semantic hits, tokens and cost saved."""
    where, params = ("WHERE workflow = ?", [workflow]) if workflow else ("", [])
    return store.query(
        "SELECT workflow, step_id, SUM(CASE WHEN kind = 'exact' THEN 1 ELSE 0 END) AS lookups, "
        "SUM(CASE WHEN outcome = 'hit' AND kind = 'exact' THEN 1 ELSE 0 END) AS exact_hits, "
        "SUM(CASE WHEN outcome = 'hit' AND kind = 'semantic' THEN 1 ELSE 0 END) AS semantic_hits, "
        "SUM(CASE WHEN outcome = 'hit' AND COALESCE(trust, 'unverified') = 'unverified' THEN 1 ELSE 0 END) "
        "AS unverified_hits, SUM(CASE WHEN outcome = 'untrusted' THEN 1 ELSE 0 END) AS bypassed, "
        "SUM(tokens_saved) AS tokens_saved, SUM(cost_saved) AS cost_saved "
        f"FROM cache_events {where} GROUP BY workflow, step_id", params)


def hits(store: Any, *, run_id: str | None = None, workflow: str | None = None, step_id: str | None = None,
         limit: int = 20) -> list[dict[str, Any]]:
    """Recent hits (newest first; `run_id` may be a prefix) joined with the entry each was served
    from (the entry may be gone since): entry_input and entry_output decoded."""
    clauses, params = ["ev.outcome = 'hit'"], []
    for col, val in (("ev.run_id", run_id), ("ev.workflow", workflow), ("ev.step_id", step_id)):
        if val is not None:
            clauses.append(f"{col} LIKE ?" if col == "ev.run_id" else f"{col} = ?")
            params.append(val + "%" if col == "ev.run_id" else val)
    rows = store.query(
        "SELECT ev.id AS event_id, ev.run_id, ev.workflow, ev.step_id, ev.tenant, ev.kind, ev.similarity, "
        "ev.tokens_saved, ev.cost_saved, ev.created_at, ev.entry_id, e.text AS entry_text, ev.trust, "
        "e.trust AS entry_trust, e.settled_by AS entry_settled_by, e.tier AS entry_tier, "
        "e.input AS entry_input, e.output AS entry_output, e.run_id AS entry_run_id, "
        "e.created_at AS entry_created_at, e.hits AS entry_hits "
        "FROM cache_events ev LEFT JOIN cache_entries e ON e.id = ev.entry_id "
        f"WHERE {' AND '.join(clauses)} ORDER BY ev.id DESC LIMIT ?", [*params, limit])
    for row in rows:
        for key in ("entry_input", "entry_output"):
            row[key] = json.loads(row[key]) if row[key] is not None else None
    return rows
