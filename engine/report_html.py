"""`engine report --html`: one self-contained HTML file (tables, and an inline SVG chart of cost
by source over time). No scripts, no external assets."""

from __future__ import annotations

from html import escape
from typing import Any

from engine.reporting import Report

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac"]
COLUMNS = [("steps", "steps"), ("calls", "calls"), ("cost", "cost"), ("baseline_cost", "baseline"),
           ("tokens_in", "tokens in"), ("tokens_out", "tokens out"), ("cached_tokens", "cache-read"),
           ("fallbacks", "fallbacks"), ("escalations", "escalations")]


def _usd(value: float) -> str:
    return f"${value:,.6f}".rstrip("0").rstrip(".") if value else "$0"


def _cell(name: str, value: Any) -> str:
    return _usd(value) if name in ("cost", "baseline_cost") else f"{int(value):,}"


def chart_svg(report: Report, width: int = 880, height: int = 300) -> str:
    """Stacked bars: cost per time bucket, one colour per source."""
    buckets = sorted({r["bucket"] for r in report.timeline})
    sources = sorted({r["source"] for r in report.timeline})
    if not buckets:
        return '<p class="empty">No llm steps in this range.</p>'
    cost = {(r["bucket"], r["source"]): r["cost"] for r in report.timeline}
    totals = [sum(cost.get((b, s), 0.0) for s in sources) for b in buckets]
    top = max(totals) or 1.0
    left, bottom, plot_h = 70, 40, height - 70
    step = (width - left - 20) / len(buckets)
    bar = max(2.0, step * 0.7)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="cost by source over time">',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#888"/>']
    for i in range(5):
        value = top * i / 4
        y = height - bottom - plot_h * i / 4
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_usd(value)}</text>'
                     f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#eee"/>')
    for i, b in enumerate(buckets):
        x = left + i * step + (step - bar) / 2
        y = float(height - bottom)
        for j, s in enumerate(sources):
            h = plot_h * cost.get((b, s), 0.0) / top
            if h <= 0:
                continue
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(b)} · {escape(s)}: '
                         f'{_usd(cost.get((b, s), 0.0))}</title></rect>')
        if len(buckets) <= 16 or i % max(1, len(buckets) // 12) == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                         f'font-size="11">{escape(b[5:] if report.bucket == "day" else b[5:].replace("T", " "))}</text>')
    for j, s in enumerate(sources):
        parts.append(f'<rect x="{left + j * 140}" y="6" width="12" height="12" fill="{PALETTE[j % len(PALETTE)]}"/>'
                     f'<text x="{left + j * 140 + 16}" y="16" font-size="12">{escape(s)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def agreement_svg(report: Report, width: int = 880) -> str:
    """Horizontal bars: each cheap tier's agreement with the reference, with its Wilson interval."""
    rows = [q for q in report.quality if q["sampled"]]
    if not rows:
        return '<p class="empty">No reference checks yet.</p>'
    left, bar_h, gap = 260, 18, 10
    height = 30 + len(rows) * (bar_h + gap)
    scale = width - left - 60
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="agreement per tier">']
    for i, q in enumerate(rows):
        y = 10 + i * (bar_h + gap)
        agree = q["agreement"]
        low, high = 1 - q["disagreement_high"], 1 - q["disagreement_low"]
        colour = {"escalated": "#e15759", "probation": "#edc948"}.get(q["state"], "#59a14f")
        label = f"{q['step_id']} · {q['tier']} ({q['state']})"
        parts.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end" font-size="12">{escape(label)}</text>'
                     f'<rect x="{left}" y="{y}" width="{scale * agree:.1f}" height="{bar_h}" fill="{colour}">'
                     f'<title>{escape(label)}: {q["agreed"]}/{q["sampled"]} agree</title></rect>'
                     f'<line x1="{left + scale * low:.1f}" y1="{y + bar_h / 2}" x2="{left + scale * high:.1f}" '
                     f'y2="{y + bar_h / 2}" stroke="#222" stroke-width="2"/>'
                     f'<text x="{left + scale * agree + 6:.1f}" y="{y + 13}" font-size="12">{agree:.1%}</text>')
    parts.append("</svg>")
    return "".join(parts)


TRUST_COLOURS = {"reference": "#4e79a7", "verified": "#59a14f", "labelled": "#b07aa1", "unverified": "#e15759"}


def served_svg(report: Report, width: int = 880) -> str:
    """One stacked bar per step: the share of its answers served at each trust level (unverified
    in red), labelled with the share nobody checked and the sources that served it."""
    rows = report.served
    if not rows:
        return '<p class="empty">No answers yet.</p>'
    left, bar_h, gap = 260, 18, 12
    height = 40 + len(rows) * (bar_h + gap)
    scale = width - left - 220
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="answers by trust level per step">']
    for j, (level, colour) in enumerate(TRUST_COLOURS.items()):
        parts.append(f'<rect x="{left + j * 110}" y="4" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{left + j * 110 + 16}" y="14" font-size="12">{level}</text>')
    for i, r in enumerate(rows):
        y = 26 + i * (bar_h + gap)
        x = float(left)
        label = f"{r['workflow']}/{r['step_id']} ({r['answers']})"
        parts.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end" font-size="12">{escape(label)}</text>')
        for level, colour in TRUST_COLOURS.items():
            share = r["trust_share"][level]
            if share <= 0:
                continue
            parts.append(f'<rect x="{x:.1f}" y="{y}" width="{scale * share:.1f}" height="{bar_h}" fill="{colour}">'
                         f'<title>{escape(level)}: {r["trust"][level]} ({share:.1%})</title></rect>')
            x += scale * share
        sources = ", ".join(f"{k} {v:.0%}" for k, v in r["source_share"].items() if v > 0)
        parts.append(f'<text x="{left + scale + 8}" y="{y + 13}" font-size="12">unverified '
                     f'{r["trust_share"]["unverified"]:.1%} · {escape(sources)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Report) -> str:
    t = report.totals
    flt = report.filter
    scope = ", ".join(f"{k}={v}" for k, v in [("workflow", flt.workflow), ("step", flt.step), ("since", flt.since),
                                              ("until", flt.until)] if v)
    scope = ", ".join(x for x in [scope, ", ".join(f"tag {k}={v}" for k, v in flt.tags.items())] if x) or "all runs"
    sections = []
    for dim, rows in report.groups.items():
        head = "".join(f"<th>{escape(label)}</th>" for _, label in COLUMNS)
        body = "".join(
            f"<tr><td>{escape(str(r['key']))}</td>" + "".join(f"<td>{_cell(n, r[n])}</td>" for n, _ in COLUMNS) + "</tr>"
            for r in rows)
        sections.append(f"<h2>By {escape(dim)}</h2><table><tr><th>{escape(dim)}</th>{head}</tr>{body}</table>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>engine cost report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.totals span {{ margin-right: 1.5rem; }}
</style></head><body>
<h1>engine cost report</h1>
<p>{escape(scope)}</p>
<p class="totals"><span>runs <b>{int(t.get('runs', 0))}</b></span><span>llm steps <b>{int(t.get('steps', 0))}</b></span>
<span>calls <b>{int(t.get('calls', 0))}</b></span><span>cost <b>{_usd(t.get('cost', 0.0))}</b></span>
<span>all-premium baseline <b>{_usd(t.get('baseline_cost', 0.0))}</b></span>
<span>quality checks <b>{_usd(t.get('quality_checks_cost', 0.0))}</b></span>
<span>saved <b>{_usd(t.get('savings', 0.0))}</b></span>
<span>cache-read tokens <b>{int(t.get('cached_tokens', 0)):,}</b></span>
<span>fallbacks <b>{int(t.get('fallbacks', 0))}</b></span><span>escalations <b>{int(t.get('escalations', 0))}</b></span></p>
<h2>Cost by source over time (per {escape(report.bucket)})</h2>
{chart_svg(report)}
<h2>Answers by trust level and source, per step</h2>
{served_svg(report)}
<h2>Agreement of cheap tiers with the reference</h2>
{agreement_svg(report)}
{''.join(sections)}
</body></html>
"""
