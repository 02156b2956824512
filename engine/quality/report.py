"""The quality table behind `engine quality`, `engine report` and the HTML report: per step and
tier, how many served answers were checked, how many agreed, Wilson bounds, and the tier's state;
per step, the background check queue (submitted, dropped, pending, peak, summed over the
processes that saved figures) and the p50/p95 time from an answer to its verdict."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.quality.stats import wilson_bounds
from engine.store import quality as quality_store


def quality_rows(store: Any, *, workflow: str | None = None, step_id: str | None = None,
                 confidence: float = 0.95) -> list[dict[str, Any]]:
    states = {(s["workflow"], s["step_id"], s["tier"]): s for s in quality_store.all_states(store)}
    out = []
    seen = set()
    for r in quality_store.summary(store, workflow, step_id):
        key = (r["workflow"], r["step_id"], r["tier"])
        seen.add(key)
        sampled, agreed = int(r["sampled"] or 0), int(r["agreed"] or 0)
        low, high = wilson_bounds(sampled - agreed, sampled, confidence)
        state = states.get(key, {})
        out.append({"workflow": r["workflow"], "step_id": r["step_id"], "tier": r["tier"], "sampled": sampled,
                    "agreed": agreed, "agreement": agreed / sampled if sampled else 0.0,
                    "disagreement_low": low, "disagreement_high": high, "skipped": int(r["skipped"] or 0),
                    "escalation_checks": int(r["escalation_checks"] or 0), "cost": float(r["cost"] or 0.0),
                    "state": state.get("state", quality_store.ACTIVE), "reason": state.get("reason"),
                    "since": state.get("since")})
    for key, state in states.items():
        if key in seen or (workflow and key[0] != workflow) or (step_id and key[1] != step_id):
            continue
        out.append({"workflow": key[0], "step_id": key[1], "tier": key[2], "sampled": 0, "agreed": 0,
                    "agreement": 0.0, "disagreement_low": 0.0, "disagreement_high": 1.0, "skipped": 0,
                    "escalation_checks": 0, "cost": 0.0, "state": state["state"], "reason": state.get("reason"),
                    "since": state.get("since")})
    queues = check_queue_figures(store, workflow)
    for row in out:
        row.update(queues.get((row["workflow"], row["step_id"]), _NO_QUEUE))
    return out


_NO_QUEUE = {"checks_submitted": 0, "checks_dropped": 0, "checks_pending": 0, "checks_peak": 0,
             "verdict_p50_ms": None, "verdict_p95_ms": None}


def check_queue_figures(store: Any, workflow: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (workflow, step): checks submitted, dropped, pending and the queue's peak (summed over
    processes), and the p50/p95 answer-to-verdict time of the latest checks."""
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    for r in quality_store.queue_rows(store, workflow):
        f = figures.setdefault((r["workflow"], r["step_id"]), dict(_NO_QUEUE))
        f["checks_submitted"] += int(r["submitted"] or 0)
        f["checks_dropped"] += int(r["dropped"] or 0)
        f["checks_pending"] += int(r["pending"] or 0)
        f["checks_peak"] += int(r["peak"] or 0)
    times: dict[tuple[str, str], list[float]] = {}
    for r in quality_store.verdict_times(store, workflow):
        times.setdefault((r["workflow"], r["step_id"]), []).append(float(r["verdict_ms"]))
    for key, values in times.items():
        f = figures.setdefault(key, dict(_NO_QUEUE))
        f["verdict_p50_ms"] = float(np.percentile(values, 50))
        f["verdict_p95_ms"] = float(np.percentile(values, 95))
    return figures


def router_rows(store: Any, *, workflow: str | None = None) -> list[dict[str, Any]]:
    """Per learned router (accepted or demoted; `engine.quality.router`): its coverage (the share
    of the step's routed executions it sent to the cheap tier) and the agreement of the reference
    checks of those routed answers (the monitor samples them like any cheap answer)."""
    from engine.promotion import records
    from engine.store import promotions as promotion_store

    out = []
    for p in records.find(store, workflow=workflow, kind="router", status=("accepted", "demoted")):
        counts = quality_store.routed_counts(store, p.workflow, p.step_id)
        decided = sum(counts.values())
        checks = promotion_store.check_stats(store, p.id).get("routed", {"checks": 0, "agree": 0})
        model = (p.payload.get("model") or {})
        out.append({"workflow": p.workflow, "step_id": p.step_id, "id": p.id, "version": p.version,
                    "status": p.status, "tier": model.get("cheap_tier"), "threshold": model.get("threshold"),
                    "target_agreement": model.get("target_agreement"), "embedder": model.get("embedder"),
                    "decided": decided, "routed_cheap": counts.get("cheap", 0), "routed_up": counts.get("up", 0),
                    "coverage": counts.get("cheap", 0) / decided if decided else 0.0,
                    "checks": checks["checks"], "agreed": checks["agree"],
                    "agreement": checks["agree"] / checks["checks"] if checks["checks"] else None,
                    "reason": p.reason})
    return out
