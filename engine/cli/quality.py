"""`engine feedback ...` (people's labels) and `engine quality ...` (the cheap-tier monitor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from engine.cli.render import dump_json, fmt_cost, out_console
from engine.errors import UserError


def _store(workflow: Path | None = None) -> Any:
    from engine.promotion.review import open_review_store

    return open_review_store(workflow)


@click.command("feedback")
@click.argument("args", nargs=-1, required=True)
@click.option("--ok", is_flag=True, help="Confirm the answer the step gave in that run.")
@click.option("--output", "output_json", metavar="JSON", help="The right answer (must pass the step's schema).")
@click.option("--workflow", "-w", type=click.Path(dir_okay=False, path_type=Path),
              help="import: the workflow the labels belong to.")
@click.option("--step", help="import: the llm step labelled (default: the workflow's only llm step).")
@click.option("--field", default="expected", show_default=True, help="import: the field holding the expected output.")
def feedback_cmd(args: tuple[str, ...], ok: bool, output_json: str | None, workflow: Path | None,
                 step: str | None, field: str) -> None:
    """Label answers; a person's label outranks every tier.

    \b
      engine feedback RUN_ID STEP --ok              the answer was right
      engine feedback RUN_ID STEP --output JSON     this is the right answer
      engine feedback import labels.jsonl -w WF     inputs plus "expected", one per line
    """
    from engine.quality.feedback import give_feedback, import_labels

    if args[0] == "import":
        if len(args) != 2 or workflow is None:
            raise UserError("usage: engine feedback import LABELS.jsonl --workflow WF.yaml [--step STEP]")
        from engine.spec.loader import load_workflow

        wf = load_workflow(workflow)
        n = import_labels(wf, _store(workflow), Path(args[1]), step=step, field=field)
        out_console.print(f"imported {n} labels for {wf.name}")
        return
    if len(args) != 2:
        raise UserError("usage: engine feedback RUN_ID STEP (--ok | --output JSON)")
    output: Any = None
    if output_json is not None:
        try:
            output = json.loads(output_json)
        except ValueError as e:
            raise UserError(f"--output is not JSON: {e}") from None
    if ok == (output_json is not None):
        raise UserError("give exactly one of --ok or --output JSON")
    row = give_feedback(_store(), args[0], args[1], ok=ok, output=output)
    verb = "confirmed" if ok else "labelled"
    out_console.print(f"{verb} {row['workflow']}/{row['step_id']} in run {args[0][:12]}: "
                      f"{json.dumps(row['output'], ensure_ascii=False)}")


@click.group("quality", invoke_without_command=True)
@click.option("--workflow", "-w", help="Only this workflow (by name).")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
@click.pass_context
def quality_group(ctx: click.Context, workflow: str | None, as_json: bool) -> None:
    """Agreement of cheap tiers with the reference, per step and tier, and their state; the
    background check queue (queued, dropped, pending, peak) and the time from answer to verdict;
    learned routers: coverage (share sent to the cheap tier) and agreement on routed answers."""
    if ctx.invoked_subcommand is not None:
        return
    from engine.quality.report import quality_rows, router_rows

    store = _store()
    rows = quality_rows(store, workflow=workflow)
    routers = router_rows(store, workflow=workflow)
    for r in rows:  # a router belongs to its step's cheapest tier's row
        found = [x for x in routers if (x["workflow"], x["step_id"], x["tier"]) == (r["workflow"], r["step_id"], r["tier"])]
        if found:
            r["router"] = found[-1]
    if as_json:
        click.echo(dump_json(rows))
        return
    if not rows:
        out_console.print("no quality checks yet (set quality.reference, or give a step more than one tier)")
        return
    table = Table(title="cheap-tier quality (vs the reference)", title_justify="left", show_edge=False,
                  pad_edge=False)
    for col in ("step", "tier", "sampled", "agreed", "agreement", "disagreement (Wilson 95%)", "skipped",
                "escalation checks", "check cost", "state"):
        table.add_column(col, justify="left" if col in ("step", "tier", "state") else "right")
    for r in rows:
        style = {"escalated": "red", "probation": "yellow", "active": "green"}.get(r["state"], "")
        table.add_row(f"{r['workflow']}/{r['step_id']}", r["tier"], str(r["sampled"]), str(r["agreed"]),
                      f"{r['agreement']:.1%}" if r["sampled"] else "-",
                      f"{r['disagreement_low']:.1%} – {r['disagreement_high']:.1%}" if r["sampled"] else "-",
                      str(r["skipped"]), str(r["escalation_checks"]), fmt_cost(r["cost"]),
                      f"[{style}]{r['state']}[/{style}]" if style else r["state"])
    out_console.print(table)
    steps = {(r["workflow"], r["step_id"]): r for r in rows}
    for (wf, step), r in steps.items():
        if r["checks_submitted"] or r["verdict_p50_ms"] is not None:
            timing = (f"; answer to verdict p50 {r['verdict_p50_ms']:.0f} ms, p95 {r['verdict_p95_ms']:.0f} ms"
                      if r["verdict_p50_ms"] is not None else "")
            out_console.print(f"{wf}/{step} background checks: {r['checks_submitted']} queued, "
                              f"{r['checks_dropped']} dropped (queue full), {r['checks_pending']} pending, "
                              f"peak {r['checks_peak']}{timing}")
    for r in rows:
        if r["state"] != "active" and r.get("reason"):
            out_console.print(f"{r['workflow']}/{r['step_id']} {r['tier']} {r['state']}: {r['reason']}")
    if routers:
        _print_routers(routers)


def _print_routers(routers: list[dict[str, Any]]) -> None:
    table = Table(title="learned routers (before the cheapest tier)", title_justify="left", show_edge=False,
                  pad_edge=False)
    for col in ("step", "router", "tier", "decided", "coverage", "routed checks", "agreement", "target", "status"):
        table.add_column(col, justify="left" if col in ("step", "router", "tier", "status") else "right")
    for r in routers:
        table.add_row(f"{r['workflow']}/{r['step_id']}", f"{r['id']} v{r['version']}", str(r["tier"]),
                      str(r["decided"]), f"{r['coverage']:.1%}", str(r["checks"]),
                      f"{r['agreement']:.1%}" if r["agreement"] is not None else "-",
                      f"{r['target_agreement']:.0%}" if r["target_agreement"] is not None else "-", r["status"])
    out_console.print(table)
    for r in routers:
        if r["threshold"] is None:
            out_console.print(f"{r['workflow']}/{r['step_id']} router {r['id']}: no signal in its evidence, "
                              f"every input goes up")
        if r["status"] == "demoted" and r.get("reason"):
            out_console.print(f"{r['workflow']}/{r['step_id']} router {r['id']} demoted: {r['reason']}")


@quality_group.command("reset")
@click.option("--workflow", "-w", help="Only this workflow (by name).")
@click.option("--step", help="Only this step.")
@click.option("--tier", help="Only this tier.")
def reset_cmd(workflow: str | None, step: str | None, tier: str | None) -> None:
    """Try escalated tiers again now, under heavier sampling (probation)."""
    from engine.quality.monitor import monitor_for

    moved = monitor_for(_store()).reset(workflow, step, tier)
    out_console.print(f"{moved} tier(s) on probation" if moved else "nothing to reset")
