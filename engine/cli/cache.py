"""`engine cache stats`, `engine cache clear [--step ...]`, `engine cache inspect`."""

from __future__ import annotations

import json

import click
from rich.table import Table

from engine.cache import cache_store
from engine.cache.store import CacheStore
from engine.cli.types import COUNT
from engine.cli.render import dump_json, fmt_cost, out_console
from engine.config import load_config
from engine.runner import open_store


def _cache() -> CacheStore:
    return cache_store(open_store(load_config().store_url()))


@click.group("cache")
def cache_group() -> None:
    """Inspect and clear the exact and semantic caches of llm steps."""


@click.command("stats")
@click.option("--workflow", "-w", help="Only this workflow.")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def stats_cmd(workflow: str | None, as_json: bool) -> None:
    """Entries (by trust level), hits (of them unverified), entries bypassed as untrusted, hit rate,
    tokens and dollars saved, by step."""
    rows = _cache().stats(workflow)
    if as_json:
        click.echo(dump_json(rows))
        return
    table = Table(show_edge=False)
    for col in ("workflow", "step", "entries", "by trust", "lookups", "exact hits", "semantic hits",
                "unverified hits", "bypassed", "hit rate", "tokens saved", "saved"):
        table.add_column(col, justify="left" if col in ("workflow", "step", "by trust") else "right")
    for r in rows:
        by_trust = ", ".join(f"{k} {v}" for k, v in sorted(r["entries_by_trust"].items())) or "-"
        table.add_row(r["workflow"], r["step_id"], str(r["entries"]), by_trust, str(r["lookups"]),
                      str(r["exact_hits"]), str(r["semantic_hits"]), str(r["unverified_hits"]), str(r["bypassed"]),
                      f"{r['hit_rate']:.1%}", str(r["tokens_saved"]), fmt_cost(r["cost_saved"]))
    out_console.print(table if rows else "the cache is empty")


@click.command("clear")
@click.option("--workflow", "-w", help="Only this workflow's entries.")
@click.option("--step", "-s", help="Only this step's entries.")
def clear_cmd(workflow: str | None, step: str | None) -> None:
    """Delete cached entries (all of them, or one workflow's or step's)."""
    removed = _cache().clear(workflow=workflow, step_id=step)
    out_console.print(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'}")


@click.command("inspect")
@click.option("--run", "run_id", help="Only hits of this run (an id prefix is enough).")
@click.option("--workflow", "-w", help="Only this workflow.")
@click.option("--step", "-s", help="Only this step.")
@click.option("--limit", "-n", type=COUNT, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def inspect_cmd(run_id: str | None, workflow: str | None, step: str | None, limit: int, as_json: bool) -> None:
    """Recent cache hits and the entries they were served from."""
    rows = _cache().hits(run_id=run_id, workflow=workflow, step_id=step, limit=limit)
    if as_json:
        click.echo(dump_json(rows))
        return
    if not rows:
        out_console.print("no cache hits recorded")
    for r in rows:
        similarity = "" if r["similarity"] is None else f" similarity {r['similarity']:.3f}"
        out_console.print(f"[bold]{r['workflow']}.{r['step_id']}[/] run {r['run_id'][:12]} · {r['kind']} hit"
                          f"{similarity} · served {r['trust'] or 'unverified'} · {r['created_at'][:19]}",
                          soft_wrap=True)
        if r["entry_output"] is None:
            out_console.print(f"  entry {r['entry_id']}: (cleared since)")
            continue
        cached_input = r["entry_text"] or json.dumps(r["entry_input"], ensure_ascii=False)
        settled = f", settled by {r['entry_settled_by']}" if r["entry_settled_by"] else ""
        out_console.print(f"  entry {r['entry_id']} (tier {r['entry_tier'] or '-'}, now {r['entry_trust'] or 'unverified'}"
                          f"{settled}; from run {(r['entry_run_id'] or '-')[:12]}, "
                          f"{r['entry_created_at'][:19]}, {r['entry_hits']} hits)", soft_wrap=True)
        out_console.print(f"  input:  {cached_input}", soft_wrap=True, markup=False)
        out_console.print(f"  output: {json.dumps(r['entry_output'], ensure_ascii=False)}", soft_wrap=True,
                          markup=False)


cache_group.add_command(stats_cmd)
cache_group.add_command(clear_cmd)
cache_group.add_command(inspect_cmd)
