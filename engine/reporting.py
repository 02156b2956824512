"""Cost accounting over the run log: `build_report(store, ReportFilter(...))`.

A report covers the llm steps of the runs that match the filter (workflow, step, time range,
tags) and sums, per group: steps, calls made, cost, tokens in/out, cache-read tokens, fallbacks
(calls that moved to another model: provider error, cooldown, budget), escalations (tiers climbed)
and the baseline (what the steps would have cost sent straight to the dearest tier). Groups:
workflow, step, tier, model, source (what served the step: `llm:<tier>`, `batch:<tier>` when a
provider batch answered it at the batch rate, or a server such as `cache` / `lookup`), trust (of the
answer: reference, verified, labelled, unverified; see `engine.quality.trust`), and `tag:<name>` for
any run tag. The timeline (cost by source per day, or
per hour over short ranges) feeds the chart of `engine report --html`.

`served` says, per step, what share of the answers was served at each trust level and by each
source (llm, cache, lookup, script, classifier, label): how much of the traffic nobody checked.

Reference checks of cheap tiers (and spot checks, and judge calls) are real spend that served no
step: they are summed apart, as the source "quality checks" and `totals["quality_checks_cost"]`,
and `quality` holds each step and tier's agreement with the reference (`engine quality`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from engine.errors import ReportError
from engine.store import reports

DIMENSIONS = ("workflow", "step", "tier", "model", "source", "trust")
QUALITY_SOURCE = "quality checks"
METRICS = ("steps", "calls", "cost", "baseline_cost", "tokens_in", "tokens_out", "cached_tokens",
           "fallbacks", "escalations")
_RELATIVE = re.compile(r"^(\d+)([mhdw])$")


def parse_time(value: str | None, *, now: datetime | None = None) -> str | None:
    """ISO date/time, or a span back from now (`30m`, `24h`, `7d`, `2w`), as an ISO UTC string."""
    if value is None:
        return None
    now = now or datetime.now(timezone.utc)
    match = _RELATIVE.match(value.strip())
    if match:
        n, unit = int(match.group(1)), match.group(2)
        delta = {"m": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n),
                 "w": timedelta(weeks=n)}[unit]
        return (now - delta).isoformat(timespec="microseconds")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ReportError(f"'{value}' is not a time: use ISO (2025-06-01, 2025-06-01T12:00) or 30m/24h/7d/2w") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat(timespec="microseconds")


@dataclass
class ReportFilter:
    workflow: str | None = None
    step: str | None = None
    since: str | None = None
    """ISO time or a span back from now (7d)."""
    until: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Report:
    filter: ReportFilter
    totals: dict[str, float]
    """runs, steps, calls, cost, baseline_cost, savings, tokens, cached_tokens, fallbacks, escalations"""
    groups: dict[str, list[dict[str, Any]]]
    """dimension -> rows (`key` plus every metric), dearest first."""
    timeline: list[dict[str, Any]]
    """rows of {bucket, source, cost}, in time order."""
    bucket: str
    """day | hour"""
    quality: list[dict[str, Any]] = field(default_factory=list)
    """Per step and tier: sampled, agreed, agreement, Wilson bounds, state (engine.quality.report)."""
    served: list[dict[str, Any]] = field(default_factory=list)
    """Per step: answers by trust level and by source (`served_shares`): how much nobody checked."""

    @property
    def runs(self) -> int:
        return int(self.totals.get("runs", 0))

    def to_dict(self) -> dict[str, Any]:
        return {"filter": vars(self.filter), "totals": self.totals, "groups": self.groups,
                "timeline": self.timeline, "bucket": self.bucket, "quality": self.quality, "served": self.served}


def _source(row: dict[str, Any]) -> str:
    served = row.get("served_by")
    if served == "llm":
        return f"{'batch' if row.get('batched') else 'llm'}:{row.get('tier') or '?'}"
    return served or ("failed" if row.get("status") == "failed" else "-")


def _key(row: dict[str, Any], dim: str) -> str:
    if dim == "source":
        return _source(row)
    if dim == "model":
        return f"{row['provider']}:{row['model']}" if row.get("model") else "-"
    if dim.startswith("tag:"):
        tags = row.get("tags")
        value = tags.get(dim[4:]) if isinstance(tags, dict) else None
        return "-" if value is None else str(value)
    if dim == "step":
        return str(row.get("step_id") or "-")
    if dim == "trust":
        return str(row.get("trust") or ("-" if row.get("served_by") != "llm" else "unverified"))
    return str(row.get(dim) or "-")


def build_report(store: Any, flt: ReportFilter | None = None, by: tuple[str, ...] | list[str] = DIMENSIONS) -> Report:
    """Sum the matching llm steps by each dimension in `by` (see the module docstring)."""
    flt = flt or ReportFilter()
    for dim in by:
        if dim not in DIMENSIONS and not (dim.startswith("tag:") and len(dim) > 4):
            raise ReportError(f"cannot group by '{dim}' (use {', '.join(DIMENSIONS)} or tag:NAME)")
    since, until = parse_time(flt.since), parse_time(flt.until)
    rows = reports.llm_steps(store, workflow=flt.workflow, step_id=flt.step, since=since, until=until, tags=flt.tags)

    totals: dict[str, float] = defaultdict(float)
    groups: dict[str, dict[str, dict[str, float]]] = {dim: defaultdict(lambda: defaultdict(float)) for dim in by}
    for row in rows:
        metrics: dict[str, float] = {
            "steps": 1, "calls": row["calls"] or 0, "cost": row["cost"] or 0.0,
            "baseline_cost": row["baseline_cost"] or 0.0, "tokens_in": row["tokens_in"] or 0,
            "tokens_out": row["tokens_out"] or 0, "cached_tokens": row["cached_tokens"] or 0,
            "fallbacks": row["fallbacks"] or 0, "escalations": max(0, row["escalations"] or 0)}
        for name, value in metrics.items():
            totals[name] += value
        for dim in by:
            group = groups[dim][_key(row, dim)]
            for name, value in metrics.items():
                group[name] += value
    totals["runs"] = len({r["run_id"] for r in rows})
    checks = reports.check_calls(store, workflow=flt.workflow, step_id=flt.step, since=since, until=until,
                                 tags=flt.tags)
    totals["quality_checks"] = len(checks)
    totals["quality_checks_cost"] = sum(c["cost"] or 0.0 for c in checks)
    totals["savings"] = totals["baseline_cost"] - totals["cost"] - totals["quality_checks_cost"]
    if checks and "source" in groups:
        group = groups["source"][QUALITY_SOURCE]
        group["calls"] += len(checks)
        group["cost"] += totals["quality_checks_cost"]
        group["tokens_in"] += sum(c["tokens_in"] or 0 for c in checks)
        group["tokens_out"] += sum(c["tokens_out"] or 0 for c in checks)

    out_groups: dict[str, list[dict[str, Any]]] = {}
    for dim, table in groups.items():
        rows_out: list[dict[str, Any]] = [{"key": key, **{m: values[m] for m in METRICS}}
                                          for key, values in table.items()]
        out_groups[dim] = sorted(rows_out, key=lambda r: (-r["cost"], -r["steps"], r["key"]))
    span = (_parse(rows[-1]["started_at"]) - _parse(rows[0]["started_at"])) if rows else timedelta(0)
    bucket = "hour" if span < timedelta(days=2) else "day"
    cut = 13 if bucket == "hour" else 10
    timeline: dict[tuple[str, str], float] = defaultdict(float)
    for row in rows:
        timeline[(row["started_at"][:cut], _source(row))] += row["cost"] or 0.0
    for c in checks:
        timeline[(c["created_at"][:cut], QUALITY_SOURCE)] += c["cost"] or 0.0
    from engine.quality.report import quality_rows

    quality = quality_rows(store, workflow=flt.workflow, step_id=flt.step)
    return Report(flt, dict(totals), out_groups,
                  [{"bucket": b, "source": s, "cost": c} for (b, s), c in sorted(timeline.items())], bucket,
                  quality, served_shares(rows))


TRUST_LEVELS = ("reference", "verified", "labelled", "unverified")
SOURCES = ("llm", "cache", "lookup", "script", "classifier", "label")


def served_shares(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (workflow, step) of answered llm steps: how many answers were served at each trust level
    (`trust`: counts, `trust_share`: shares) and by each source (`source`, `source_share`), so a
    glance tells how much of the traffic nobody checked. An answer with no trust recorded counts
    as unverified."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if row.get("status") != "ok":
            continue
        entry = table.setdefault((row["workflow"], row["step_id"]), {
            "workflow": row["workflow"], "step_id": row["step_id"], "answers": 0,
            "trust": dict.fromkeys(TRUST_LEVELS, 0), "source": dict.fromkeys(SOURCES, 0)})
        entry["answers"] += 1
        trust = row.get("trust") if row.get("trust") in TRUST_LEVELS else "unverified"
        entry["trust"][trust] += 1
        source = row.get("served_by") or "llm"
        entry["source"][source] = entry["source"].get(source, 0) + 1
    out = []
    for key in sorted(table):
        entry = table[key]
        n = entry["answers"]
        entry["trust_share"] = {k: v / n for k, v in entry["trust"].items()}
        entry["source_share"] = {k: v / n for k, v in entry["source"].items()}
        out.append(entry)
    return out


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)
