"""Batch checkpoints in the store: the `batches` table (one row per `engine run --inputs` batch) and
the runs tagged `{"batch": id, "item": index}` that say which items are done.

An item is done exactly when its run finished (`ok` or `failed`); `engine.batch` decides what to
run again and rebuilds the output file from `finished_runs`.
"""

from __future__ import annotations

from typing import Any

from engine.clock import now_iso


def create(store: Any, row: dict[str, Any]) -> None:
    """Record a new batch (its id, workflow, files, input digest and total), written at once."""
    store.insert_now("batches", {**row, "created_at": now_iso(), "updated_at": now_iso()}, returning=False)


def exists(store: Any, batch_id: str) -> bool:
    return bool(store.query("SELECT id FROM batches WHERE id = ?", [batch_id]))


def by_id_or_prefix(store: Any, batch_id: str) -> list[dict[str, Any]]:
    """The batch with this id, or every batch whose id starts with it."""
    return store.query("SELECT * FROM batches WHERE id = ? OR id LIKE ?", [batch_id, batch_id + "%"])


def latest(store: Any, inputs_path: str, output_path: str) -> dict[str, Any] | None:
    """The latest batch over these input and output files."""
    rows = store.query("SELECT * FROM batches WHERE inputs_path = ? AND output_path = ? "
                       "ORDER BY created_at DESC LIMIT 1", [inputs_path, output_path])
    return rows[0] if rows else None


def reopen(store: Any, batch_id: str) -> None:
    """A batch resumed: its runs a crash cut short (still `running`) become `interrupted`, as they
    will never finish, and the batch is `running` again; both in one transaction."""
    field_sql, field_params = store.json_field("tags", "batch")
    with store.transaction() as tx:
        tx.execute(f"UPDATE runs SET status = 'interrupted' WHERE status = 'running' AND {field_sql} = ?",
                   [*field_params, batch_id])
        tx.execute("UPDATE batches SET status = 'running', updated_at = ? WHERE id = ?", [now_iso(), batch_id])


def finish(store: Any, batch_id: str, status: str) -> None:
    """`done`, or `interrupted` when items are left."""
    store.update("batches", batch_id, {"status": status, "updated_at": now_iso()})


def finished_runs(store: Any, batch_id: str) -> list[dict[str, Any]]:
    """The batch's finished runs (ok or failed), oldest first: id, status, outputs, error, tags, cost."""
    field_sql, field_params = store.json_field("tags", "batch")
    return store.query(
        f"SELECT id, status, outputs, error, tags, cost FROM runs WHERE {field_sql} = ? "
        "AND status IN ('ok', 'failed') ORDER BY started_at", [*field_params, batch_id])
