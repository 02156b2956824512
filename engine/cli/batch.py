"""`engine run WORKFLOW --inputs items.jsonl`: the batch form of `engine run`, with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, \
    TimeRemainingColumn
from rich.console import RenderableType
from rich.text import Text

from engine.api import Engine
from engine.batch import BatchSummary, run_batch
from engine.cli.render import err_console, fmt_cost
from engine.errors import UserError
from engine.provider_batch import BatchState, ProviderBatchOptions


class StagedProgress(Progress):
    """The bar, plus a second line for a provider-batch run's stage and batch states."""

    stage = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.stage:
            yield Text(self.stage, style="cyan", overflow="ellipsis", no_wrap=True)


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} items/s" if speed else "- items/s")


def served_text(summary: BatchSummary) -> str:
    return " · ".join(f"{k} {v}" for k, v in summary.served.most_common(4)) or "-"


def stage_text(state: BatchState | None) -> str:
    """Provider batches: the stage, each open batch's state and counts, items waiting, fallbacks."""
    if state is None:
        return ""
    parts = [state.stage]
    for job in state.jobs[-3:]:
        counts = job.get("counts") or {}
        done = counts.get("completed", counts.get("succeeded", 0)) + counts.get("failed", counts.get("errored", 0))
        parts.append(f"{job['model']} {job['status']} {done}/{job['requests']}")
    if state.fallbacks:
        parts.append("real-time fallbacks: " + ", ".join(f"{k} {v}" for k, v in state.fallbacks.items()))
    return " · ".join(parts)


def provider_batch_options(enabled: bool, realtime_retries: bool, max_wait: str | None,
                           poll_interval: float) -> ProviderBatchOptions:
    """The CLI's provider-batch flags. Without --provider-batch only models marked `batch: true`
    in engine.yaml go through batch APIs (the flags still apply to them)."""
    from engine.spec.cache import parse_duration

    try:
        wait = parse_duration(max_wait)
    except ValueError as e:
        raise UserError(f"--max-wait: {e}") from None
    if poll_interval <= 0:
        raise UserError("--poll-interval must be positive")
    return ProviderBatchOptions(all_models=enabled, realtime_retries=realtime_retries, max_wait_s=wait,
                                poll_s=poll_interval)


class ProgressObserver:
    """Bar, M/N, rate, ETA, cost so far and what served the steps."""

    def __init__(self, progress: StagedProgress):
        self.progress = progress
        self.task: Any = None

    def start(self, summary: BatchSummary) -> None:
        self.task = self.progress.add_task(f"batch {summary.batch_id}", total=summary.total,
                                           completed=summary.done, cost=fmt_cost(summary.cost), served="-",
                                           failed=summary.failed)
        self.progress.stage = stage_text(summary.provider_batch)

    def advance(self, summary: BatchSummary, line: dict[str, Any]) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=summary.done, cost=fmt_cost(summary.cost),
                                 served=served_text(summary), failed=summary.failed)
            self.progress.stage = stage_text(summary.provider_batch)

    def status(self, summary: BatchSummary) -> None:
        """A provider batch changed state (submitted, polled, ended)."""
        self.progress.stage = stage_text(summary.provider_batch)
        self.progress.refresh()


def run_batch_cli(workflow: Path, inputs: Path, output: Path | None, concurrency: int, resume: str | None,
                  batch_id: str | None, id_field: str, quiet: bool,
                  provider_batch: ProviderBatchOptions | None = None, executor: str = "threads",
                  address: str | None = None) -> None:
    output = output or inputs.with_name(inputs.stem + ".results.jsonl")
    progress = StagedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                              TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[cost]}"),
                              TextColumn("[red]{task.fields[failed]} failed[/]"), TextColumn("{task.fields[served]}"),
                              console=err_console, disable=quiet)
    engine = Engine()
    resume_arg: str | bool = False if resume is None else (True if resume == "latest" else resume)
    try:
        with progress:
            summary = run_batch(engine, workflow, inputs, output, concurrency=concurrency, batch_id=batch_id,
                                resume=resume_arg, id_field=id_field, observer=ProgressObserver(progress),
                                provider_batch=provider_batch, executor=executor, address=address)
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
        if summary.nodes:
            err_console.print(f"ray: items per node: {', '.join(f'{n[:8]} {c}' for n, c in summary.nodes.most_common())}"
                              f"{f'; {summary.retried} retried after a lost worker' if summary.retried else ''}")
        state = summary.provider_batch
        if state is not None:
            err_console.print(
                f"provider batches: {len(state.jobs)} polled in {state.round} round(s); {state.batched} answers "
                f"from batches, {state.replayed} replayed from the ledger; real-time fallbacks: "
                f"{', '.join(f'{k} {v}' for k, v in state.fallbacks.items()) or 'none'}")
    if summary.failed:
        raise SystemExit(1)
