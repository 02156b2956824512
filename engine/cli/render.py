"""Rendering helpers shared by CLI commands (rich tables on stderr/stdout)."""

from __future__ import annotations

import json
import re
from typing import Any

from rich.console import Console
from rich.table import Table

def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:  # piped or captured: don't squeeze tables into 80 columns
        console.width = max(console.width, 140)
    return console


err_console = _console(stderr=True)
out_console = _console(stderr=False)


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def escape_control(text: str) -> str:
    """Text safe to print on a terminal: control characters (ESC sequences, C1, bidi overrides,
    lone surrogates) shown as escapes instead of acting on the terminal. Newlines and tabs stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def dump_json(value: Any) -> str:
    """JSON for the terminal (strings' C1/bidi controls escaped too; JSON escapes C0 itself)."""
    return escape_control(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def fmt_cost(cost: float | None) -> str:
    return "$0" if not cost else f"${cost:.6f}".rstrip("0")


def step_table(steps: list[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title, show_edge=False, pad_edge=False, title_justify="left")
    for col in ("step", "status", "served by", "tier/model", "trust", "calls", "tokens", "cost", "ms"):
        table.add_column(col, no_wrap=True,
                         justify="right" if col in ("calls", "tokens", "cost", "ms") else "left")
    for s in steps:
        model = "/".join(x for x in (s.get("tier"), s.get("model")) if x) or "-"
        table.add_row(
            escape_control(s["step_id"]), s["status"], s.get("served_by") or "-", escape_control(model),
            s.get("trust") or "-", str(s.get("attempts") or 0),
            f"{s.get('tokens_in') or 0}/{s.get('tokens_out') or 0}", fmt_cost(s.get("cost")),
            f"{s.get('latency_ms') or 0:.1f}",
        )
    return table


def step_notes(steps: list[dict[str, Any]]) -> list[str]:
    """One line per fan-out, long input or sub-workflow run, under the step table."""
    notes = []
    for s in steps:
        items = s.get("items")
        if items is not None:
            failed = sum(1 for i in items if i.get("status") == "failed")
            notes.append(f"{s['step_id']}: for_each over {len(items)} item(s)" + (f", {failed} failed" if failed else ""))
        context = s.get("context")
        if context:
            how = f"{context['tokens']} tokens ({context['counting']})"
            if context.get("truncated"):
                notes.append(f"{s['step_id']}: input '{context['input']}' TRUNCATED from {how} to "
                             f"{context.get('kept_tokens')}")
            elif context.get("chunks"):
                notes.append(f"{s['step_id']}: input '{context['input']}' {how} split into {context['chunks']} "
                             f"chunks, reduced in {context.get('reduce_rounds', 0)} round(s)")
        for child in s.get("child_runs") or []:
            notes.append(f"{s['step_id']}: sub-workflow run {child}")
    return notes
