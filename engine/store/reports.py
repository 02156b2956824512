"""Reads over the run log for accounting: the llm steps a cost report sums (`engine.reporting`),
the spending that budgets check (`engine.budgets`), and the child runs of a run
(`engine.lineage`). Filters are optional; times are ISO UTC strings; run tags are matched
through the store's `json_field`, whatever the dialect.
"""

from __future__ import annotations

from typing import Any

_STEPS_SQL = """
WITH c AS (
  SELECT step_execution_id AS sid,
         SUM(CASE WHEN outcome != 'skipped' THEN 1 ELSE 0 END) AS calls,
         SUM(COALESCE(cached_tokens, 0)) AS cached_tokens,
         SUM(CASE WHEN reason IN ('fallback', 'cooldown', 'budget') THEN 1 ELSE 0 END) AS fallbacks,
         COUNT(DISTINCT tier) - 1 AS escalations,
         MAX(CASE WHEN outcome = 'valid' AND provider_batch IS NOT NULL THEN 1 ELSE 0 END) AS batched
  FROM llm_calls WHERE step_execution_id IS NOT NULL GROUP BY step_execution_id
)
SELECT s.id, s.run_id, s.step_id, s.status, s.served_by, s.tier, s.provider, s.model, s.cost, s.trust,
       s.baseline_cost, s.tokens_in, s.tokens_out, s.started_at, r.workflow, r.tags,
       c.calls, c.cached_tokens, c.fallbacks, c.escalations, c.batched
FROM steps s JOIN runs r ON r.id = s.run_id LEFT JOIN c ON c.sid = s.id
WHERE (s.kind = 'llm' OR s.served_by = 'llm')
"""


def _tag_filters(store: Any, sql: str, params: list[Any], tags: dict[str, str]) -> tuple[str, list[Any]]:
    for tag, wanted in tags.items():
        field_sql, field_params = store.json_field("r.tags", tag)
        sql, params = sql + f" AND {field_sql} = ?", [*params, *field_params, wanted]
    return sql, params


def llm_steps(store: Any, *, workflow: str | None = None, step_id: str | None = None, since: str | None = None,
              until: str | None = None, tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The llm steps (run by an llm, or served in place of one) of the matching runs, by start
    time, each with its run's workflow and tags and, from its llm calls: calls made, cached
    tokens, fallbacks, escalations (tiers climbed) and whether a provider batch answered it."""
    sql, params = _filtered(store, _STEPS_SQL, ("r.workflow", "s.step_id", "s.started_at"),
                            workflow, step_id, since, until, tags)
    return store.query(sql + " ORDER BY s.started_at", params)


def check_calls(store: Any, *, workflow: str | None = None, step_id: str | None = None, since: str | None = None,
                until: str | None = None, tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The calls that served no step (reference checks, spot checks, judge calls) and were made:
    cost, tokens_in, tokens_out, created_at."""
    sql = ("SELECT c.cost, c.tokens_in, c.tokens_out, c.created_at FROM llm_calls c LEFT JOIN runs r "
           "ON r.id = c.run_id WHERE c.purpose IS NOT NULL AND c.outcome != 'skipped'")
    sql, params = _filtered(store, sql, ("c.workflow", "c.step_id", "c.created_at"),
                            workflow, step_id, since, until, tags)
    return store.query(sql, params)


def _filtered(store: Any, sql: str, columns: tuple[str, str, str], workflow: str | None, step_id: str | None,
              since: str | None, until: str | None, tags: dict[str, str] | None) -> tuple[str, list[Any]]:
    """`sql` narrowed to a workflow, a step, a time window and tags; `columns`: the workflow, step
    id and time columns to filter on."""
    workflow_col, step_col, time_col = columns
    params: list[Any] = []
    for clause, value in ((f" AND {workflow_col} = ?", workflow), (f" AND {step_col} = ?", step_id),
                          (f" AND {time_col} >= ?", since), (f" AND {time_col} < ?", until)):
        if value:
            sql, params = sql + clause, [*params, value]
    return _tag_filters(store, sql, params, tags or {})


# --- spending (budgets) -------------------------------------------------------------------------

def run_spend(store: Any, run_id: str, *, flush: bool = True) -> float:
    """USD the run's llm calls cost so far. `flush=False`: without writing the log queue first."""
    return _sum(store, "SELECT SUM(cost) AS s FROM llm_calls WHERE run_id = ?", [run_id], flush)


def day_spend(store: Any, day: str, *, workflow: str | None = None, provider: str | None = None,
              model: str | None = None, tier: str | None = None, flush: bool = True) -> float:
    """USD of the llm calls made on a UTC day (`2025-06-01`), of one workflow, one provider's model,
    or one tier when given."""
    sql = "SELECT SUM(cost) AS s FROM llm_calls WHERE created_at >= ? AND created_at < ?"
    params: list[Any] = [day, day + "T99"]
    if workflow is not None:
        sql, params = sql + " AND workflow = ?", [*params, workflow]
    if provider is not None or model is not None:
        sql, params = sql + " AND provider = ? AND model = ?", [*params, provider, model]
    if tier is not None:
        sql, params = sql + " AND tier = ?", [*params, tier]
    return _sum(store, sql, params, flush)


def _sum(store: Any, sql: str, params: list[Any], flush: bool) -> float:
    rows = store.query(sql, params) if flush else store.query(sql, params, flush=False)
    return float(rows[0]["s"] or 0.0) if rows else 0.0


# --- lineage ------------------------------------------------------------------------------------

def child_runs(store: Any, run_id: str) -> list[dict[str, Any]]:
    """The runs tagged `parent_run: run_id` (id, workflow, status, cost, tags, started_at), by start."""
    field_sql, field_params = store.json_field("tags", "parent_run")
    return store.query(f"SELECT id, workflow, status, cost, tags, started_at FROM runs WHERE {field_sql} = ? "
                       "ORDER BY started_at, id", [*field_params, run_id])


def ping(store: Any) -> None:
    """One round trip to the database (readiness probes): raises when the store cannot answer."""
    store.query("SELECT 1 AS one")
