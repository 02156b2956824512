"""The quality tables in the store: checks, tier states, decisions, people's feedback, and the
trust column of logged answers."""

from __future__ import annotations

from typing import Any

from engine.store.migrations import _now
from engine.store.base import clean_text, dump as _dump

ACTIVE, ESCALATED, PROBATION = "active", "escalated", "probation"


def _insert(store: Any, table: str, row: dict[str, Any]) -> int:
    return store.insert_now(table, row)  # text made storable, written at once (not behind)


# --- checks -------------------------------------------------------------------------------------

def record_check(store: Any, *, workflow: str, step_id: str, tier: str, model: str | None, run_id: str | None,
                 input_hash: str, mode: str, status: str, served: bool, confidence: float | None,
                 cheap_output: Any, reference_output: Any, reference_tier: str | None, cost: float,
                 reason: str | None = None) -> int:
    """One comparison of a cheap tier's answer with the reference's. `status`: agree | disagree |
    skipped (the reference could not answer). `served`: the cheap answer was (or would have been)
    returned; answers escalated for low confidence are recorded with served=0 (free calibration)."""
    return _insert(store, "quality_checks", {
        "workflow": workflow, "step_id": step_id, "tier": tier, "model": model, "run_id": run_id,
        "input_hash": input_hash, "mode": mode, "status": status, "served": int(served),
        "confidence": confidence, "cheap_output": _dump(cheap_output), "reference_output": _dump(reference_output),
        "reference_tier": reference_tier, "cost": cost, "reason": reason, "created_at": _now()})


def checks(store: Any, workflow: str, step_id: str, tier: str, *, after_id: int = 0,
           limit: int | None = None) -> list[dict[str, Any]]:
    """Checks of one step and tier after `after_id`, newest first."""
    sql = ("SELECT id, status, served, confidence, mode, created_at FROM quality_checks WHERE workflow = ? "
           "AND step_id = ? AND tier = ? AND id > ? ORDER BY id DESC")
    params: list[Any] = [workflow, step_id, tier, after_id]
    if limit is not None:
        sql, params = sql + " LIMIT ?", [*params, limit]
    return store.query(sql, params)


def served_counts(store: Any, workflow: str, step_id: str, tier: str, after_id: int) -> tuple[int, int]:
    """(served checks that ran, of which disagreed) after `after_id`: what decides a tier's state."""
    rows = store.query("SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN status = 'disagree' THEN 1 ELSE 0 END), 0) AS k FROM quality_checks "
                       "WHERE workflow = ? AND step_id = ? AND tier = ? AND id > ? AND served = 1 "
                       "AND status != 'skipped'", [workflow, step_id, tier, after_id])
    return int(rows[0]["n"]), int(rows[0]["k"])


def summary(store: Any, workflow: str | None = None, step_id: str | None = None) -> list[dict[str, Any]]:
    """Per (workflow, step, tier): sampled, agreed, skipped, check cost; served checks only count
    toward agreement."""
    where: list[str] = []
    params: list[Any] = []
    if workflow:
        where, params = [*where, "workflow = ?"], [*params, workflow]
    if step_id:
        where, params = [*where, "step_id = ?"], [*params, step_id]
    sql = ("SELECT workflow, step_id, tier, "
           "SUM(CASE WHEN status != 'skipped' AND served = 1 THEN 1 ELSE 0 END) AS sampled, "
           "SUM(CASE WHEN status = 'agree' AND served = 1 THEN 1 ELSE 0 END) AS agreed, "
           "SUM(CASE WHEN status = 'skipped' THEN 1 ELSE 0 END) AS skipped, "
           "SUM(CASE WHEN status != 'skipped' AND served = 0 THEN 1 ELSE 0 END) AS escalation_checks, "
           "SUM(COALESCE(cost, 0)) AS cost FROM quality_checks"
           + (" WHERE " + " AND ".join(where) if where else "") + " GROUP BY workflow, step_id, tier "
           "ORDER BY workflow, step_id, tier")
    return store.query(sql, params)


# --- tier states --------------------------------------------------------------------------------

def get_state(store: Any, workflow: str, step_id: str, tier: str) -> dict[str, Any]:
    rows = store.query("SELECT * FROM quality_state WHERE workflow = ? AND step_id = ? AND tier = ?",
                       [workflow, step_id, tier])
    return rows[0] if rows else {"workflow": workflow, "step_id": step_id, "tier": tier, "state": ACTIVE,
                                 "since": None, "epoch_check_id": 0, "reason": None}


def all_states(store: Any) -> list[dict[str, Any]]:
    return store.query("SELECT * FROM quality_state ORDER BY workflow, step_id, tier")


def set_state(store: Any, workflow: str, step_id: str, tier: str, state: str, reason: str) -> None:
    """Move a tier to `state`; checks before this moment no longer count (a new epoch)."""
    now = _now()
    with store.transaction() as tx:
        rows = tx.query("SELECT COALESCE(MAX(id), 0) AS m FROM quality_checks")
        epoch = int(rows[0]["m"]) if rows else 0
        tx.execute(
            "INSERT INTO quality_state (workflow, step_id, tier, state, since, epoch_check_id, reason, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (workflow, step_id, tier) DO UPDATE SET "
            "state = excluded.state, since = excluded.since, epoch_check_id = excluded.epoch_check_id, "
            "reason = excluded.reason, updated_at = excluded.updated_at",
            [workflow, step_id, tier, state, now, epoch, reason, now])
    add_event(store, workflow, step_id, tier, state, reason)


def add_event(store: Any, workflow: str, step_id: str, tier: str, event: str, detail: str | None) -> None:
    _insert(store, "quality_events", {"workflow": workflow, "step_id": step_id, "tier": tier, "event": event,
                                      "detail": detail, "created_at": _now()})


def events(store: Any, workflow: str | None = None) -> list[dict[str, Any]]:
    where, params = ("WHERE workflow = ?", [workflow]) if workflow else ("", [])
    return store.query(f"SELECT * FROM quality_events {where} ORDER BY id", params)


def step_runs_since(store: Any, workflow: str, step_id: str, since: str) -> int:
    rows = store.query("SELECT COUNT(*) AS n FROM steps s JOIN runs r ON r.id = s.run_id WHERE r.workflow = ? "
                       "AND s.step_id = ? AND s.started_at > ?", [workflow, step_id, since])
    return int(rows[0]["n"]) if rows else 0


# --- trust of logged answers --------------------------------------------------------------------

def mark_verified(store: Any, run_id: str, step_id: str, verified_by: str) -> None:
    """The valid answer a run's step served was confirmed (by the reference or a person)."""
    with store.transaction() as tx:
        tx.execute(
            "UPDATE llm_calls SET trust = 'verified', verified_by = ? WHERE run_id = ? AND step_id = ? "
            "AND outcome = 'valid' AND purpose IS NULL AND trust = 'unverified' "
            "AND COALESCE(reason, '') != 'low_confidence'", [verified_by, run_id, step_id])
        tx.execute(
            "UPDATE steps SET trust = 'verified' WHERE run_id = ? AND step_id = ? AND trust = 'unverified'",
            [run_id, step_id])


# --- people's feedback --------------------------------------------------------------------------

def record_feedback(store: Any, rows: list[dict[str, Any]]) -> int:
    """Insert feedback rows in one transaction (all or nothing)."""
    now = _now()
    with store.transaction() as tx:
        for row in rows:
            full = {**row, "input": _dump(row["input"]), "output": _dump(row["output"]),
                    "created_at": row.get("created_at") or now}
            tx.execute(f"INSERT INTO feedback ({', '.join(full)}) VALUES ({', '.join('?' * len(full))})",
                       [clean_text(v) for v in full.values()])
    return len(rows)


def labels(store: Any, workflow: str, step_id: str, schema_hash: str) -> list[dict[str, Any]]:
    """People's labels for a step under its current schema, oldest first."""
    return store.query("SELECT * FROM feedback WHERE workflow = ? AND step_id = ? AND schema_hash = ? ORDER BY id",
                       [workflow, step_id, schema_hash])
