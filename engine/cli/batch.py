"""`engine run WORKFLOW --inputs items.jsonl`: the batch form of `engine run`, with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, \
    TimeRemainingColumn
from rich.text import Text

from engine.api import Engine
from engine.batch import BatchSummary, run_batch
from engine.cli.render import err_console, fmt_cost


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} items/s" if speed else "- items/s")


def served_text(summary: BatchSummary) -> str:
    return " · ".join(f"{k} {v}" for k, v in summary.served.most_common(4)) or "-"


class ProgressObserver:
    """Bar, M/N, rate, ETA, cost so far and what served the steps."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task: Any = None

    def start(self, summary: BatchSummary) -> None:
        self.task = self.progress.add_task(f"batch {summary.batch_id}", total=summary.total,
                                           completed=summary.done, cost=fmt_cost(summary.cost), served="-",
                                           failed=summary.failed)

    def advance(self, summary: BatchSummary, line: dict[str, Any]) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=summary.done, cost=fmt_cost(summary.cost),
                                 served=served_text(summary), failed=summary.failed)


def run_batch_cli(workflow: Path, inputs: Path, output: Path | None, concurrency: int, resume: str | None,
                  batch_id: str | None, id_field: str, quiet: bool) -> None:
    output = output or inputs.with_name(inputs.stem + ".results.jsonl")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[cost]}"),
                        TextColumn("[red]{task.fields[failed]} failed[/]"), TextColumn("{task.fields[served]}"),
                        console=err_console, disable=quiet)
    engine = Engine()
    resume_arg: str | bool = False if resume is None else (True if resume == "latest" else resume)
    try:
        with progress:
            summary = run_batch(engine, workflow, inputs, output, concurrency=concurrency, batch_id=batch_id,
                                resume=resume_arg, id_field=id_field, observer=ProgressObserver(progress))
    except KeyboardInterrupt:
        click.echo("interrupted: finished items are saved; continue with --resume", err=True)
        raise SystemExit(130) from None
    finally:
        engine.close()
    if not quiet:
        err_console.print(
            f"batch {summary.batch_id}: {summary.total} items, {summary.ok} ok, {summary.failed} failed"
            f"{f', {summary.resumed} already done' if summary.resumed else ''}; {fmt_cost(summary.cost)}; "
            f"{summary.elapsed_s:.1f} s; served: {served_text(summary)}; results: {output}")
    if summary.failed:
        raise SystemExit(1)
