"""Rendering helpers shared by CLI commands (rich tables on stderr/stdout)."""

from __future__ import annotations

import json
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


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


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
            s["step_id"], s["status"], s.get("served_by") or "-", model, s.get("trust") or "-",
            str(s.get("attempts") or 0),
            f"{s.get('tokens_in') or 0}/{s.get('tokens_out') or 0}", fmt_cost(s.get("cost")),
            f"{s.get('latency_ms') or 0:.1f}",
        )
    return table
