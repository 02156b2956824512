"""`engine report`: cost, calls, tokens, cache reads, fallbacks and escalations from the run log."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from engine.cli.render import dump_json, fmt_cost, out_console
from engine.config import load_config
from engine.report_html import COLUMNS, render_html
from engine.errors import ReportError
from engine.reporting import DIMENSIONS, ReportFilter, build_report
from engine.runner import open_store


@click.command("report")
@click.option("--workflow", "-w", help="Only this workflow.")
@click.option("--step", "-s", help="Only this step id.")
@click.option("--since", help="From: ISO date/time, or 30m / 24h / 7d / 2w back from now.")
@click.option("--until", help="Up to (exclusive): ISO date/time or a span back from now.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Only runs with this tag (repeatable).")
@click.option("--by", "by", multiple=True, metavar="DIMENSION",
              help=f"Group by ({', '.join(DIMENSIONS)}, tag:NAME); repeatable. Default: all of them.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write an HTML report with a chart of cost by source over time.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
def report_cmd(workflow: str | None, step: str | None, since: str | None, until: str | None,
               tags: tuple[str, ...], by: tuple[str, ...], html_path: Path | None, as_json: bool) -> None:
    """What llm steps cost, and what served them."""
    pairs = [tag.split("=", 1) for tag in tags]
    for tag, pair in zip(tags, pairs):
        if len(pair) != 2:
            raise ReportError(f"--tag wants KEY=VALUE, got '{tag}'")
    flt = ReportFilter(workflow=workflow, step=step, since=since, until=until,
                       tags={key: value for key, value in pairs})
    report = build_report(open_store(load_config().store_url()), flt, by or DIMENSIONS)
    if html_path is not None:
        html_path.write_text(render_html(report), encoding="utf-8")
    if as_json:
        click.echo(dump_json(report.to_dict()))
        return
    t = report.totals
    console = out_console if out_console.is_terminal else Console(highlight=False, width=160)
    console.print(
        f"[bold]{int(t.get('runs', 0))}[/] runs · {int(t.get('steps', 0))} llm steps · {int(t.get('calls', 0))} calls · "
        f"cost [bold]{fmt_cost(t.get('cost'))}[/] · all-premium baseline {fmt_cost(t.get('baseline_cost'))} · "
        f"quality checks {fmt_cost(t.get('quality_checks_cost'))} ({int(t.get('quality_checks', 0))} calls) · "
        f"saved {fmt_cost(t.get('savings'))}")
    for dim, rows in report.groups.items():
        table = Table(title=f"by {dim}", title_justify="left", show_edge=False)
        table.add_column(dim, no_wrap=True)
        for _, label in COLUMNS:
            table.add_column(label, justify="right")
        for r in rows:
            table.add_row(str(r["key"]), *[fmt_cost(r[n]) if n in ("cost", "baseline_cost") else f"{int(r[n]):,}"
                                           for n, _ in COLUMNS])
        console.print(table)
    if report.quality:
        table = Table(title="agreement with the reference (engine quality)", title_justify="left", show_edge=False)
        for col in ("step", "tier", "sampled", "agreed", "agreement", "disagreement (Wilson 95%)", "skipped",
                    "state"):
            table.add_column(col, justify="left" if col in ("step", "tier", "state") else "right")
        for q in report.quality:
            table.add_row(f"{q['workflow']}/{q['step_id']}", q["tier"], str(q["sampled"]), str(q["agreed"]),
                          f"{q['agreement']:.1%}" if q["sampled"] else "-",
                          f"{q['disagreement_low']:.1%} – {q['disagreement_high']:.1%}" if q["sampled"] else "-",
                          str(q["skipped"]), q["state"])
        console.print(table)
    if report.served:
        table = Table(title="answers by trust level and source (how much nobody checked)", title_justify="left",
                      show_edge=False)
        for col in ("step", "answers", "reference", "verified", "labelled", "unverified", "sources"):
            table.add_column(col, justify="left" if col in ("step", "sources") else "right")
        for r in report.served:
            table.add_row(f"{r['workflow']}/{r['step_id']}", str(r["answers"]),
                          *[f"{r['trust_share'][k]:.1%}" for k in ("reference", "verified", "labelled", "unverified")],
                          ", ".join(f"{k} {v:.1%}" for k, v in r["source_share"].items() if v > 0))
        console.print(table)
    if html_path is not None:
        console.print(f"wrote {html_path}")
