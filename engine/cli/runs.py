"""`engine runs list` and `engine runs show RUN_ID`."""

from __future__ import annotations

import click
from rich.table import Table

from engine.cli.types import COUNT
from engine.cli.render import dump_json, fmt_cost, out_console, step_table
from engine.config import load_config
from engine.errors import UserError
from engine.lineage import with_links
from engine.runner import open_store


@click.group("runs")
def runs_group() -> None:
    """Inspect the run log."""


@click.command("list")
@click.option("--workflow", "-w", help="Only runs of this workflow.")
@click.option("--limit", "-n", type=COUNT, default=20, show_default=True)
def list_cmd(workflow: str | None, limit: int) -> None:
    """The latest runs."""
    rows = open_store(load_config().store_url()).runs(workflow=workflow, limit=limit)
    table = Table(show_edge=False)
    for col in ("run", "workflow", "status", "started (UTC)", "tokens", "cost", "ms"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("tokens", "cost", "ms") else "left")
    for r in rows:
        table.add_row(r["id"][:12], r["workflow"], r["status"], r["started_at"][:19].replace("T", " "),
                      f"{r['tokens_in'] or 0}/{r['tokens_out'] or 0}", fmt_cost(r["cost"]),
                      f"{r['latency_ms'] or 0:.0f}")
    out_console.print(table)


@click.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The whole record as JSON.")
def show_cmd(run_id: str, as_json: bool) -> None:
    """One run: inputs, outputs, steps and llm calls (a unique id prefix is enough)."""
    store = open_store(load_config().store_url())
    run = store.run(run_id)
    if run is None:
        raise UserError(f"no run matches '{run_id}'")
    run = with_links(store, run)
    if as_json:
        click.echo(dump_json(run))
        return
    out_console.print(f"[bold]{run['workflow']}[/] run {run['id']} · {run['status']} · {run['started_at']}")
    if run["parent"]:
        out_console.print(f"parent: run {run['parent']['id']} step {run['parent']['step']}")
    out_console.print(f"inputs: {dump_json(run['inputs'])}")
    out_console.print(step_table(run["steps"]))
    for child in run["children"]:
        out_console.print(f"  child run {child['id']} ({child['workflow']}, {child['status']}) "
                          f"from step {child['step']} {fmt_cost(child['cost'])}", soft_wrap=True)
    order = {s["step_id"]: i for i, s in enumerate(run["steps"])}  # parallel steps: calls grouped by step
    for call in sorted(run["llm_calls"], key=lambda c: (order.get(str(c["step_id"]).split(".")[0], len(order)),
                                                        c["id"])):
        why = f" -> {call['reason']}" if call.get("reason") else ""
        trust = f" · {call['trust']}" + (f" by {call['verified_by']}" if call.get("verified_by") else "") if (
            call.get("trust")) else ""
        purpose = f" ({call['purpose']})" if call.get("purpose") else ""
        conf = f" confidence {call['confidence']:.2f}" if call.get("confidence") is not None else ""
        batch = f" (provider batch {call['provider_batch']})" if call.get("provider_batch") else ""
        out_console.print(f"  call {call['step_id']} {call['tier']}/{call['model']} #{call['attempt']}{purpose}: "
                          f"{call['outcome']}{trust}{conf}{why} {fmt_cost(call['cost'])}{batch} "
                          f"{call['error'] or ''}".rstrip(), soft_wrap=True)
    out_console.print(f"cost {fmt_cost(run['cost'])} · all-premium baseline {fmt_cost(run.get('baseline_cost'))}")
    if run["error"]:
        out_console.print(f"error: {run['error']}")
    out_console.print(f"outputs: {dump_json(run['outputs'])}")


runs_group.add_command(list_cmd)
runs_group.add_command(show_cmd)
