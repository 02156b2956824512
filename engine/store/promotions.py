"""The promotion tables in the store: proposals (`promotions`), their history (`promotion_events`)
and shadow/spot checks (`promotion_checks`), plus the reads of the run log that promotion needs
(a step's logged calls to mine, how often a step was served by what).

Rows go in and come out as they are stored (JSON columns as text): `engine.promotion.records`
turns them into `Promotion`s and keeps what the statuses mean.
"""

from __future__ import annotations

from typing import Any

from engine.clock import now_iso


# --- promotions ---------------------------------------------------------------------------------

def insert(store: Any, row: dict[str, Any]) -> None:
    store.insert_now("promotions", row, returning=False)


def update(store: Any, promotion_id: str, fields: dict[str, Any]) -> None:
    store.update("promotions", promotion_id, fields)


def by_id_or_prefix(store: Any, promotion_id: str) -> list[dict[str, Any]]:
    """The promotion with this id, or those whose id starts with it (at most two: enough to tell
    a unique prefix from an ambiguous one)."""
    return store.query("SELECT * FROM promotions WHERE id = ? OR id LIKE ? LIMIT 2",
                       [promotion_id, promotion_id + "%"])


def exists(store: Any, promotion_id: str) -> bool:
    return bool(store.query("SELECT id FROM promotions WHERE id = ?", [promotion_id]))


def find(store: Any, *, workflow: str | None = None, step_id: str | None = None,
         statuses: tuple[str, ...] | None = None, kind: str | None = None,
         fingerprint: str | None = None) -> list[dict[str, Any]]:
    """Promotions matching every filter given, oldest first."""
    where, params = [], []
    for column, value in (("workflow", workflow), ("step_id", step_id), ("kind", kind),
                          ("fingerprint", fingerprint)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if statuses is not None:
        where.append(f"status IN ({', '.join('?' for _ in statuses)})")
        params.extend(statuses)
    sql = "SELECT * FROM promotions" + (" WHERE " + " AND ".join(where) if where else "")
    return store.query(sql + " ORDER BY created_at", params)


def statuses(store: Any, workflow: str) -> list[dict[str, Any]]:
    """id, status and shadow flag of every promotion of a workflow."""
    return store.query("SELECT id, status, shadow FROM promotions WHERE workflow = ?", [workflow])


# --- events and checks --------------------------------------------------------------------------

def add_event(store: Any, promotion_id: str, event: str, detail: str | None = None) -> None:
    store.insert_now("promotion_events",
                     {"promotion_id": promotion_id, "event": event, "detail": detail, "created_at": now_iso()})


def events(store: Any, promotion_id: str) -> list[dict[str, Any]]:
    return store.query("SELECT event, detail, created_at FROM promotion_events WHERE promotion_id = ? "
                       "ORDER BY id", [promotion_id])


def add_check(store: Any, promotion_id: str, mode: str, input_hash: str, served_output: str, llm_output: str,
              agree: bool) -> None:
    store.insert_now("promotion_checks", {
        "promotion_id": promotion_id, "mode": mode, "input_hash": input_hash, "served_output": served_output,
        "llm_output": llm_output, "agree": int(agree), "created_at": now_iso()})


def has_check(store: Any, promotion_id: str, mode: str, input_hash: str) -> bool:
    """Whether a check of this mode was recorded for this input."""
    return bool(store.query("SELECT 1 AS x FROM promotion_checks WHERE promotion_id = ? AND mode = ? AND input_hash = ? "
                            "LIMIT 1", [promotion_id, mode, input_hash]))


def recent_checks(store: Any, promotion_id: str, mode: str, window: int) -> list[int]:
    """The agree flags (1/0) of the latest `window` checks in `mode`, newest first."""
    rows = store.query("SELECT agree FROM promotion_checks WHERE promotion_id = ? AND mode = ? "
                       "ORDER BY id DESC LIMIT ?", [promotion_id, mode, window])
    return [int(r["agree"]) for r in rows]


def check_stats(store: Any, promotion_id: str) -> dict[str, dict[str, int]]:
    """mode -> {checks, agree}."""
    rows = store.query("SELECT mode, COUNT(*) AS n, SUM(agree) AS agree FROM promotion_checks "
                       "WHERE promotion_id = ? GROUP BY mode", [promotion_id])
    return {r["mode"]: {"checks": int(r["n"]), "agree": int(r["agree"] or 0)} for r in rows}


# --- the run log, as promotion reads it ---------------------------------------------------------

def serve_counts(store: Any, workflow: str, step_id: str) -> dict[str, int]:
    """served_by -> how many ok executions of the step it served."""
    rows = store.query("SELECT s.served_by AS by, COUNT(*) AS n FROM steps s JOIN runs r ON r.id = s.run_id "
                       "WHERE r.workflow = ? AND s.step_id = ? AND s.status = 'ok' GROUP BY s.served_by",
                       [workflow, step_id])
    return {r["by"]: int(r["n"]) for r in rows}


def served_by_promotion(store: Any, workflow: str, step_id: str, kind: str, promotion_id: str) -> int:
    """Executions of the step served by this promotion (its artifact logs `model` as "<id> v<n>")."""
    rows = store.query("SELECT COUNT(*) AS n FROM steps s JOIN runs r ON r.id = s.run_id WHERE "
                       "r.workflow = ? AND s.step_id = ? AND s.served_by = ? AND s.model LIKE ?",
                       [workflow, step_id, kind, promotion_id + " %"])
    return int(rows[0]["n"]) if rows else 0


def step_calls(store: Any, workflow: str, step_id: str) -> list[dict[str, Any]]:
    """A step's logged llm calls, oldest first, without judge calls (a verdict is no answer):
    what mining groups by input."""
    return store.query(
        "SELECT prompt_hash, schema_hash, input, outcome, output, tokens_in, tokens_out, cost, created_at, "
        "trust, purpose, reason FROM llm_calls WHERE workflow = ? AND step_id = ? "
        "AND COALESCE(purpose, '') != 'judge' ORDER BY id", [workflow, step_id])


def workflow_paths(store: Any) -> list[str]:
    """The workflow files the log has runs of."""
    rows = store.query("SELECT DISTINCT workflow_path FROM runs WHERE workflow_path IS NOT NULL")
    return [r["workflow_path"] for r in rows]
