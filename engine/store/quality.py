"""The quality tables in the store: checks, tier states, decisions, people's feedback, the trust
column of logged answers, and the reads behind the labelling queue (`engine.quality.queue`).

`quality_state.state` is one of ACTIVE, ESCALATED, PROBATION (what each means, and when a tier
moves between them, is `engine.quality.monitor`'s); a tier without a row is ACTIVE."""

from __future__ import annotations

from typing import Any

from engine.clock import now_iso
from engine.store.base import clean_text, dump as _dump

ACTIVE, ESCALATED, PROBATION = "active", "escalated", "probation"


def _insert(store: Any, table: str, row: dict[str, Any]) -> int:
    return store.insert_now(table, row)  # text made storable, written at once (not behind)


# --- checks -------------------------------------------------------------------------------------

def record_check(store: Any, *, workflow: str, step_id: str, tier: str, model: str | None, run_id: str | None,
                 input_hash: str, mode: str, status: str, served: bool, confidence: float | None,
                 cheap_output: Any, reference_output: Any, reference_tier: str | None, cost: float,
                 reason: str | None = None, verdict_ms: float | None = None) -> int:
    """One comparison of a cheap tier's answer with the reference's. `status`: agree | disagree |
    skipped (the reference could not answer). `served`: the cheap answer was (or would have been)
    returned; answers escalated for low confidence are recorded with served=0 (free calibration).
    `verdict_ms`: time from the answer to this verdict."""
    return _insert(store, "quality_checks", {
        "workflow": workflow, "step_id": step_id, "tier": tier, "model": model, "run_id": run_id,
        "input_hash": input_hash, "mode": mode, "status": status, "served": int(served),
        "confidence": confidence, "cheap_output": _dump(cheap_output), "reference_output": _dump(reference_output),
        "reference_tier": reference_tier, "cost": cost, "reason": reason, "verdict_ms": verdict_ms,
        "created_at": now_iso()})


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


def verdict_times(store: Any, workflow: str | None = None, limit: int = 2000) -> list[dict[str, Any]]:
    """Per (workflow, step): the answer-to-verdict times (ms) of the latest `limit` checks that ran."""
    where, params = ("AND workflow = ?", [workflow]) if workflow else ("", [])
    return store.query(
        "SELECT workflow, step_id, verdict_ms FROM quality_checks WHERE verdict_ms IS NOT NULL "
        f"AND status != 'skipped' {where} ORDER BY id DESC LIMIT ?", [*params, limit])


# --- the check queue ----------------------------------------------------------------------------

def save_queue(store: Any, rows: list[dict[str, Any]]) -> None:
    """Upsert the check queue's figures of one process (`process`, workflow, step_id, submitted,
    dropped, pending, peak), queued for the store's writer."""
    now = now_iso()
    for r in rows:
        store.enqueue(
            "INSERT INTO check_queue (process, workflow, step_id, submitted, dropped, pending, peak, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (process, workflow, step_id) DO UPDATE SET "
            "submitted = excluded.submitted, dropped = excluded.dropped, pending = excluded.pending, "
            "peak = excluded.peak, updated_at = excluded.updated_at",
            [r["process"], r["workflow"], r["step_id"], r["submitted"], r["dropped"], r["pending"], r["peak"], now])


def queue_rows(store: Any, workflow: str | None = None) -> list[dict[str, Any]]:
    """Every process's check-queue figures (per step), newest first."""
    where, params = ("WHERE workflow = ?", [workflow]) if workflow else ("", [])
    return store.query(f"SELECT * FROM check_queue {where} ORDER BY updated_at DESC", params)


# --- tier states --------------------------------------------------------------------------------

def get_state(store: Any, workflow: str, step_id: str, tier: str) -> dict[str, Any]:
    rows = store.query("SELECT * FROM quality_state WHERE workflow = ? AND step_id = ? AND tier = ?",
                       [workflow, step_id, tier])
    return rows[0] if rows else {"workflow": workflow, "step_id": step_id, "tier": tier, "state": ACTIVE,
                                 "since": None, "epoch_check_id": 0, "reason": None, "escalated_at": None,
                                 "strikes": 0}


def all_states(store: Any) -> list[dict[str, Any]]:
    return store.query("SELECT * FROM quality_state ORDER BY workflow, step_id, tier")


def set_state(store: Any, workflow: str, step_id: str, tier: str, state: str, reason: str) -> None:
    """Move a tier to `state`; checks before this moment no longer count (a new epoch)."""
    now = now_iso()
    with store.transaction() as tx:
        rows = tx.query("SELECT COALESCE(MAX(id), 0) AS m FROM quality_checks")
        epoch = int(rows[0]["m"]) if rows else 0
        escalated = now if state == ESCALATED else None
        tx.execute(
            "INSERT INTO quality_state (workflow, step_id, tier, state, since, epoch_check_id, reason, updated_at, "
            "escalated_at, strikes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (workflow, step_id, tier) "
            "DO UPDATE SET state = excluded.state, since = excluded.since, epoch_check_id = excluded.epoch_check_id, "
            "reason = excluded.reason, updated_at = excluded.updated_at, "
            "escalated_at = COALESCE(excluded.escalated_at, quality_state.escalated_at), "
            "strikes = CASE WHEN excluded.state = 'escalated' THEN COALESCE(quality_state.strikes, 0) + 1 "
            "WHEN excluded.state = 'active' THEN 0 ELSE COALESCE(quality_state.strikes, 0) END",
            [workflow, step_id, tier, state, now, epoch, reason, now, escalated, 1 if state == ESCALATED else 0])
    add_event(store, workflow, step_id, tier, state, reason)


def add_event(store: Any, workflow: str, step_id: str, tier: str, event: str, detail: str | None) -> None:
    _insert(store, "quality_events", {"workflow": workflow, "step_id": step_id, "tier": tier, "event": event,
                                      "detail": detail, "created_at": now_iso()})


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

LABELS_GENERATION = [0]
"""Bumped by every feedback write in this process (what serves artifacts re-reads the labels)."""


def record_feedback(store: Any, rows: list[dict[str, Any]]) -> int:
    """Insert feedback rows in one transaction (all or nothing); each row gets its `id`. Returns
    how many were written."""
    now = now_iso()
    with store.transaction() as tx:
        for row in rows:
            full = {k: v for k, v in row.items() if k != "id"}
            full.update(input=_dump(row["input"]), output=_dump(row["output"]),
                        created_at=row.get("created_at") or now)
            (inserted,) = tx.query(f"INSERT INTO feedback ({', '.join(full)}) VALUES ({', '.join('?' * len(full))}) "
                                   "RETURNING id", [clean_text(v) for v in full.values()])
            row["id"] = int(inserted["id"])
    LABELS_GENERATION[0] += 1
    return len(rows)


def tier_checks(store: Any, workflow: str, step_id: str, tier: str) -> list[dict[str, Any]]:
    """The checks of a tier's answers that ran (agree | disagree; served, escalated or not), oldest
    first: what a learned router trains on (`engine.promotion.router_proposal`)."""
    return store.query("SELECT id, input_hash, status FROM quality_checks WHERE workflow = ? AND step_id = ? "
                       "AND tier = ? AND status IN ('agree', 'disagree') ORDER BY id", [workflow, step_id, tier])


def tier_answers(store: Any, workflow: str, step_id: str, tier: str, prompt_hash: str,
                 schema_hash: str) -> list[dict[str, Any]]:
    """A tier's valid answers to the step's own requests (and to a router's exploration) under a
    prompt/schema, oldest first."""
    return store.query("SELECT input_hash, input, output FROM llm_calls WHERE workflow = ? AND step_id = ? AND tier = ? "
                       "AND prompt_hash = ? AND schema_hash = ? AND outcome = 'valid' "
                       "AND COALESCE(purpose, 'router_explore') = 'router_explore' ORDER BY id",
                       [workflow, step_id, tier, prompt_hash, schema_hash])


def routed_counts(store: Any, workflow: str, step_id: str) -> dict[str, int]:
    """routed (cheap | up) -> ok executions of the step a learned router decided."""
    rows = store.query("SELECT s.routed AS routed, COUNT(*) AS n FROM steps s JOIN runs r ON r.id = s.run_id "
                       "WHERE r.workflow = ? AND s.step_id = ? AND s.status = 'ok' AND s.routed IS NOT NULL "
                       "GROUP BY s.routed", [workflow, step_id])
    return {r["routed"]: int(r["n"]) for r in rows}


def labels(store: Any, workflow: str, step_id: str, schema_hash: str) -> list[dict[str, Any]]:
    """People's labels for a step under its current schema, oldest first."""
    return store.query("SELECT * FROM feedback WHERE workflow = ? AND step_id = ? AND schema_hash = ? ORDER BY id",
                       [workflow, step_id, schema_hash])


# --- the labelling queue ------------------------------------------------------------------------

def feedback_keys(store: Any) -> list[dict[str, Any]]:
    """(workflow, step_id, run_id, input_hash) of every feedback row: what people labelled."""
    return store.query("SELECT workflow, step_id, run_id, input_hash FROM feedback")


_CANDIDATE_COLUMNS = (
    "SELECT s.run_id, s.step_id, r.workflow, r.workflow_path, s.output, s.served_by, s.trust, "
    "s.confidence, s.id AS step_row, (SELECT c.input_hash FROM llm_calls c WHERE c.run_id = s.run_id "
    "AND c.step_id = s.step_id AND c.purpose IS NULL ORDER BY c.id LIMIT 1) AS input_hash ")


def queue_candidates(store: Any, workflow: str | None, *, low_confidence: float, unverified: str,
                     scan: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The ok llm steps worth a person's look, newest first, at most `scan` of each kind:
    (those a reference check disagreed with, those answered or escalated below `low_confidence`,
    those whose trust is `unverified`). Each with its run's workflow and the input hash of its call."""
    where, params = "", []
    if workflow:
        where, params = " AND r.workflow = ?", [workflow]
    llm_ok = " s.kind = 'llm' AND s.status = 'ok'" + where
    base = _CANDIDATE_COLUMNS + "FROM steps s JOIN runs r ON r.id = s.run_id WHERE" + llm_ok
    # from the (few) disagreeing checks to their steps, not a check lookup per step
    disagreements = store.query(
        _CANDIDATE_COLUMNS + "FROM (SELECT DISTINCT run_id, step_id FROM quality_checks WHERE status = 'disagree') q "
        "JOIN steps s ON s.run_id = q.run_id AND s.step_id = q.step_id JOIN runs r ON r.id = s.run_id "
        "WHERE" + llm_ok + " ORDER BY s.id DESC LIMIT ?", [*params, scan])
    low = store.query(
        base + " AND s.served_by = 'llm' AND (s.confidence < ? OR EXISTS (SELECT 1 FROM llm_calls c WHERE "
               "c.run_id = s.run_id AND c.step_id = s.step_id AND c.reason = 'low_confidence')) "
               "ORDER BY s.id DESC LIMIT ?", [*params, low_confidence, scan])
    rest = store.query(base + " AND s.served_by = 'llm' AND COALESCE(s.trust, ?) = ? ORDER BY s.id DESC LIMIT ?",
                       [*params, unverified, unverified, scan])
    return disagreements, low, rest


def checks_of_runs(store: Any, run_ids: list[str]) -> list[dict[str, Any]]:
    """The checks that ran (not skipped) for these runs, oldest first: the reference's answers."""
    if not run_ids:
        return []
    return store.query("SELECT run_id, step_id, tier, reference_tier, reference_output, status FROM "
                       f"quality_checks WHERE status != 'skipped' AND run_id IN ({', '.join('?' * len(run_ids))}) "
                       "ORDER BY id", run_ids)


def valid_answers(store: Any, run_id: str, step_id: str) -> list[dict[str, Any]]:
    """Every valid answer logged for a run's step (served, escalated, checks), oldest first."""
    return store.query("SELECT tier, model, output, trust, confidence, purpose, reason, outcome, input "
                       "FROM llm_calls WHERE run_id = ? AND step_id = ? AND outcome = 'valid' ORDER BY id",
                       [run_id, step_id])


def recent_feedback(store: Any, limit: int) -> list[dict[str, Any]]:
    """The latest feedback rows, newest first, with the trust and output of the step they are about."""
    return store.query("SELECT f.id, f.workflow, f.step_id, f.run_id, f.kind, f.output, f.source, f.created_at, "
                       "s.trust AS step_trust, s.output AS served FROM feedback f LEFT JOIN steps s ON "
                       "s.run_id = f.run_id AND s.step_id = f.step_id ORDER BY f.id DESC LIMIT ?", [limit])


def skipped_reasons(store: Any, workflow: str, step_id: str, limit: int = 3) -> list[str]:
    """Why the step's latest skipped checks were skipped (the reference could not answer), newest first."""
    rows = store.query("SELECT reason FROM quality_checks WHERE workflow = ? AND step_id = ? AND status = 'skipped' "
                       "ORDER BY id DESC LIMIT ?", [workflow, step_id, limit])
    return [r["reason"] for r in rows if r["reason"]]
