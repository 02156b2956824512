"""Numbered schema migrations (simonw/llm style): one list for both backends. Each names its
version (`NNN_what`, unique), runs once, in version order, and is recorded in `_migrations` by
either store. Later features append their own; never edit one that has shipped.

A migration is written against `engine.store.schema.Schema`: `db.table(name).create(...)`,
`.create_index(...)`, `.add_column(...)` with Python types, spelled per backend from the store's
`Dialect`, and `db.execute(sql)` for anything else. Where the dialects differ, a migration asks
`db.dialect` (`engine.store.dialect`). A JSON document column is declared `dict` (jsonb on
PostgreSQL, TEXT on SQLite) and named in `engine.store.base.JSON_COLUMNS`, which both stores
decode by (the columns from before `087_jsonb_documents` were declared `str`; that migration made
them jsonb)."""

from __future__ import annotations

from typing import Callable

from engine.clock import now_iso
from engine.store.dialect import POSTGRES
from engine.store.schema import Schema

Migration = Callable[[Schema], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(name: str) -> Callable[[Migration], Migration]:
    version = name.split("_", 1)[0]
    if len(version) != 3 or not version.isdigit() or any(n.split("_", 1)[0] == version for n, _ in MIGRATIONS):
        raise ValueError(f"a migration's name starts with its own three-digit version: '{name}'")

    def register(fn: Migration) -> Migration:
        MIGRATIONS.append((name, fn))
        return fn

    return register


def migrate(db: Schema) -> None:
    """Apply pending migrations to a SQLite store. Each runs in its own `BEGIN IMMEDIATE`
    transaction, which takes the database's write lock first, so two processes opening a new
    store at once cannot both apply one (the second sees it done and skips it). (The PostgreSQL
    store applies them under an advisory lock: `engine.store.postgres`.)"""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    for name, fn in sorted(MIGRATIONS, key=lambda m: m[0]):
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", [name]).fetchone() is None:
                fn(db)
                db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", [name, now_iso()])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


@migration("001_runs_steps_calls")
def m001(db: Schema) -> None:
    db.table("runs").create(
        {
            "id": str, "workflow": str, "workflow_version": str, "workflow_path": str,
            "status": str, "inputs": str, "outputs": str, "error": str, "tags": str,
            "tokens_in": int, "tokens_out": int, "cost": float, "latency_ms": float,
            "started_at": str, "ended_at": str,
        },
        pk="id",
    )
    db.table("runs").create_index(["workflow", "started_at"])
    db.table("steps").create(
        {
            "id": int, "run_id": str, "step_id": str, "kind": str, "status": str, "served_by": str,
            "tier": str, "provider": str, "model": str, "attempts": int,
            "tokens_in": int, "tokens_out": int, "cost": float, "latency_ms": float,
            "output": str, "error": str, "validation_errors": str, "started_at": str,
        },
        pk="id", foreign_keys=[("run_id", "runs", "id")],
    )
    db.table("steps").create_index(["run_id"])
    db.table("llm_calls").create(
        {
            "id": int, "run_id": str, "step_execution_id": int, "workflow": str, "step_id": str,
            "prompt_hash": str, "schema_hash": str, "input_hash": str, "input": str,
            "tier": str, "provider": str, "model": str, "attempt": int,
            "tokens_in": int, "tokens_out": int, "cached_tokens": int, "cost": float,
            "latency_ms": float, "finish_reason": str, "outcome": str, "output": str, "raw_output": str,
            "error": str, "created_at": str,
        },
        pk="id",
    )
    db.table("llm_calls").create_index(["workflow", "step_id", "prompt_hash", "schema_hash", "input_hash"])
    db.table("llm_calls").create_index(["run_id"])


@migration("010_cost_accounting")
def m010(db: Schema) -> None:
    """Why each call moved on (fallback, cooldown, budget, reask, escalate); the
    all-premium baseline cost of steps and runs; indexes for daily budgets and the report."""
    db.table("llm_calls").add_column("reason", str)
    db.table("steps").add_column("baseline_cost", float)
    db.table("runs").add_column("baseline_cost", float)
    db.table("llm_calls").create_index(["created_at"])
    db.table("llm_calls").create_index(["provider", "model", "created_at"])
    db.table("runs").create_index(["started_at"])


@migration("020_cache")
def m020(db: Schema) -> None:
    db.table("cache_entries").create(
        {
            "id": int, "workflow": str, "step_id": str, "namespace": str, "sem_namespace": str,
            "tenant": str, "prompt_hash": str, "schema_hash": str, "model_key": str, "input_key": str,
            "input": str, "text": str, "output": str, "answer_key": str, "tier": str, "provider": str,
            "model": str, "tokens_in": int, "tokens_out": int, "cost": float, "run_id": str,
            "created": float, "created_at": str, "hits": int, "last_hit_at": str, "embedder": str,
            "vector": bytes,
        },
        pk="id",
    )
    db.table("cache_entries").create_index(["namespace", "input_key"], unique=True)
    db.table("cache_entries").create_index(["sem_namespace", "id"])
    db.table("cache_entries").create_index(["workflow", "step_id"])
    db.table("cache_events").create(
        {
            "id": int, "run_id": str, "workflow": str, "step_id": str, "tenant": str, "kind": str,
            "outcome": str, "entry_id": int, "similarity": float, "tokens_saved": int,
            "cost_saved": float, "created_at": str,
        },
        pk="id",
    )
    db.table("cache_events").create_index(["workflow", "step_id"])
    db.table("cache_events").create_index(["run_id"])


@migration("030_promotions")
def m030(db: Schema) -> None:
    db.table("promotions").create(
        {
            "id": str, "workflow": str, "workflow_path": str, "step_id": str, "kind": str, "status": str,
            "prompt_hash": str, "schema_hash": str, "fingerprint": str, "payload": str,
            "verification": str, "savings": str, "shadow": int, "artifact": str, "version": int,
            "reason": str, "created_at": str, "decided_at": str,
        },
        pk="id",
    )
    db.table("promotions").create_index(["workflow", "step_id", "status"])
    db.table("promotions").create_index(["fingerprint"])
    db.table("promotion_checks").create(
        {
            "id": int, "promotion_id": str, "mode": str, "input_hash": str, "served_output": str,
            "llm_output": str, "agree": int, "created_at": str,
        },
        pk="id",
    )
    db.table("promotion_checks").create_index(["promotion_id", "mode", "id"])
    db.table("promotion_events").create(
        {"id": int, "promotion_id": str, "event": str, "detail": str, "created_at": str}, pk="id",
    )
    db.table("promotion_events").create_index(["promotion_id"])


@migration("040_batches")
def m040(db: Schema) -> None:
    """Batch runs (engine.batch): one row per batch; an item is done when its run, tagged
    {"batch": id, "item": n}, has finished, so completion is recorded atomically with the run."""
    db.table("batches").create(
        {
            "id": str, "workflow": str, "workflow_path": str, "inputs_path": str, "inputs_sha256": str,
            "output_path": str, "total": int, "status": str, "created_at": str, "updated_at": str,
        },
        pk="id",
    )
    db.execute(f"CREATE INDEX IF NOT EXISTS runs_batch ON runs ({db.dialect.json_get('tags', 'batch')})")


@migration("050_quality")
def m050(db: Schema) -> None:
    """Provenance and trust on every logged answer; people's feedback; the cheap-tier
    quality monitor's checks, tier states and decisions (see engine.quality)."""
    db.table("llm_calls").add_column("trust", str)       # reference | verified | labelled | unverified
    db.table("llm_calls").add_column("verified_by", str)  # who confirmed it: reference:<tier> | person
    db.table("llm_calls").add_column("purpose", str)      # run (NULL) | quality_check | spot_check | judge
    db.table("llm_calls").add_column("confidence", float)
    db.table("steps").add_column("trust", str)
    db.table("steps").add_column("confidence", float)
    db.table("feedback").create(
        {
            "id": int, "workflow": str, "step_id": str, "run_id": str, "schema_hash": str,
            "prompt_hash": str, "input_hash": str, "input": str, "output": str, "kind": str,
            "source": str, "created_at": str,
        },
        pk="id",
    )
    db.table("feedback").create_index(["workflow", "step_id", "schema_hash"])
    db.table("quality_checks").create(
        {
            "id": int, "workflow": str, "step_id": str, "tier": str, "model": str, "run_id": str,
            "input_hash": str, "mode": str, "status": str, "served": int, "confidence": float,
            "cheap_output": str, "reference_output": str, "reference_tier": str, "cost": float,
            "reason": str, "created_at": str,
        },
        pk="id",
    )
    db.table("quality_checks").create_index(["workflow", "step_id", "tier", "id"])
    db.table("quality_state").create(
        {
            "workflow": str, "step_id": str, "tier": str, "state": str, "since": str,
            "epoch_check_id": int, "reason": str, "updated_at": str,
        },
        pk=("workflow", "step_id", "tier"),
    )
    db.table("quality_events").create(
        {"id": int, "workflow": str, "step_id": str, "tier": str, "event": str, "detail": str,
         "created_at": str},
        pk="id",
    )
    db.table("quality_events").create_index(["workflow", "step_id"])


@migration("060_provider_batches")
def m060(db: Schema) -> None:
    """Provider batch APIs (engine.provider_batch): the provider batches a batch run
    submitted and every request in them, so a resumed run polls the same provider batches instead
    of paying twice; `llm_calls.provider_batch` names the batch request that answered a call."""
    db.table("provider_batch_jobs").create(
        {
            "id": str, "batch_id": str, "round": int, "provider": str, "model": str, "route_key": str,
            "provider_job_id": str, "input_file_id": str, "state": str, "status": str, "counts": str,
            "requests": int, "output_file_id": str, "error_file_id": str, "error": str,
            "created_at": str, "submitted_at": str, "ended_at": str, "updated_at": str,
        },
        pk="id",
    )
    db.table("provider_batch_jobs").create_index(["batch_id", "state"])
    db.table("provider_batch_requests").create(
        {
            "custom_id": str, "batch_id": str, "job_id": str, "item": int, "run_id": str, "step_id": str,
            "tier": str, "fingerprint": str, "leader": str, "state": str, "result": str, "error": str,
            "fallback": str,
            "created_at": str, "updated_at": str,
        },
        pk="custom_id",
    )
    db.table("provider_batch_requests").create_index(["job_id"])
    db.table("provider_batch_requests").create_index(["batch_id", "item"])
    db.table("llm_calls").add_column("provider_batch", str)
    db.table("llm_calls").create_index(["provider_batch"])


@migration("070_pgvector")
def m070(db: Schema) -> None:
    """On PostgreSQL the semantic cache's vectors also live in a pgvector column, searched
    through an HNSW index per dimension (created with the first vector of that size; see
    engine.store.postgres). SQLite keeps the float32 blob and the in-memory index."""
    if db.dialect is POSTGRES:
        db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        db.execute("ALTER TABLE cache_entries ADD COLUMN embedding vector")


@migration("080_trusted_caches")
def m080(db: Schema) -> None:
    """Provenance on cache entries and the check queue's figures (see engine.cache, engine.quality).

    `cache_entries`: the entry's trust level (reference | verified | labelled | unverified), what
    settled it (`check:<id>`, `label:<id>`), the input hash of the call that wrote it (labels and
    checks find entries by it), and for an exact copy left by a semantic hit the entry it copied.
    `quality_checks.verdict_ms`: time from the answer to its verdict. `quality_state.escalated_at`:
    when the tier was last escalated past (its unverified cache entries from before are not served);
    `strikes`: escalations since the tier last passed probation (each doubles the cool-off).
    `check_queue`: per process and step, checks queued, dropped and the queue's peak."""
    entries = db.table("cache_entries")
    entries.add_column("trust", str)
    entries.add_column("settled_by", str)
    entries.add_column("input_hash", str)
    entries.add_column("source_entry", int)
    entries.create_index(["workflow", "step_id", "input_hash"])
    entries.create_index(["source_entry"])
    db.table("cache_events").add_column("trust", str)
    db.table("quality_checks").add_column("verdict_ms", float)
    db.table("quality_state").add_column("escalated_at", str)
    db.table("quality_state").add_column("strikes", int)
    db.table("check_queue").create(
        {"process": str, "workflow": str, "step_id": str, "submitted": int, "dropped": int, "pending": int,
         "peak": int, "updated_at": str},
        pk=("process", "workflow", "step_id"),
    )
@migration("085_leases_and_fallback_answers")
def m085(db: Schema) -> None:
    """Never paying twice. `leases`: advisory locks held in the store (engine.store.leases), one
    row per name with its owner and expiry: a batch run being worked on, a cache key being filled
    (engine.cache.flight). `provider_batch_requests.fallback_result`: the real-time answer a
    request got when its provider batch did not answer it, so a resume replays it."""
    db.table("leases").create(
        {"name": str, "owner": str, "host": str, "pid": int, "acquired_at": str, "expires": float},
        pk="name",
    )
    db.table("provider_batch_requests").add_column("fallback_result", str)
    db.table("provider_batch_requests").add_column("fallback_run", str)


JSON_DOCUMENTS = {
    "runs": ("inputs", "outputs", "tags"), "steps": ("output", "validation_errors"),
    "llm_calls": ("input", "output"), "cache_entries": ("input", "output"), "feedback": ("input", "output"),
    "quality_checks": ("cheap_output", "reference_output"),
}
"""The JSON document columns (engine.store.base.JSON_COLUMNS) of each table."""


@migration("087_jsonb_documents")
def m087(db: Schema) -> None:
    """On PostgreSQL the JSON documents become native `jsonb` (SQLite keeps JSON text). A stored
    value that is not JSON (none is written so) is kept as a JSON string rather than failing."""
    if db.dialect is not POSTGRES:
        return
    db.execute("CREATE OR REPLACE FUNCTION pg_temp.engine_jsonb(doc text) RETURNS jsonb LANGUAGE plpgsql "
               "IMMUTABLE AS $$ BEGIN RETURN doc::jsonb; EXCEPTION WHEN others THEN RETURN to_jsonb(doc); END $$")
    for table, columns in JSON_DOCUMENTS.items():
        db.execute(f"ALTER TABLE {table} " + ", ".join(
            f"ALTER COLUMN {c} TYPE {POSTGRES.json_type} USING pg_temp.engine_jsonb({c}::text)" for c in columns))


@migration("090_router")
def m090(db: Schema) -> None:
    """Learned routers (engine.quality.router). `steps.routed`: what the step's router decided
    before the call (cheap | up), so `engine quality` can show the router's coverage."""
    db.table("steps").add_column("routed", str)


@migration("095_partial_indexes")
def m095(db: Schema) -> None:
    """Index only the rows that have the field: most runs are not batch items (`runs_batch`, on
    `tags.batch`) and most calls went through no provider batch (`provider_batch`), and every
    insert paid for the NULL entry. A lookup by value (`= ?`) implies the field is there, so both
    planners still use them."""
    batch = db.dialect.json_get("tags", "batch")
    db.execute("DROP INDEX IF EXISTS runs_batch")
    db.execute(f"CREATE INDEX IF NOT EXISTS runs_batch ON runs ({batch}) WHERE {batch} IS NOT NULL")
    db.execute("DROP INDEX IF EXISTS idx_llm_calls_provider_batch")
    db.execute("CREATE INDEX IF NOT EXISTS idx_llm_calls_provider_batch ON llm_calls (provider_batch) "
               "WHERE provider_batch IS NOT NULL")
