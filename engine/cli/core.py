"""`engine run`, `engine validate`, `engine schema`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from engine.cli.types import COUNT, SECONDS
from engine.cli.render import dump_json, err_console, escape_control, fmt_cost, step_notes, step_table
from engine.inputs import check_text, parse_cli_inputs, parse_inputs_json, parse_tags
from engine.errors import UserError
from engine.runner import run_workflow
from engine.spec import load_workflow, workflow_json_schema
from engine.spec.graph import mermaid


@click.command("run")
@click.argument("workflow", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input", "-i", "pairs", multiple=True, metavar="KEY=VALUE", help="An input value (repeatable).")
@click.option("--inputs-json", metavar="JSON", help="All inputs as a JSON object.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Tag the run (repeatable).")
@click.option("--tenant", help="Tenant key: cached answers are never shared across tenants.")
@click.option("--quiet", "-q", is_flag=True, help="No summary on stderr.")
@click.option("--inputs", "batch_inputs", type=click.Path(dir_okay=False, path_type=Path),
              help="Batch: a JSONL file, one object of inputs per line.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Batch: where result lines go (default: INPUTS.results.jsonl).")
@click.option("--concurrency", "-c", type=COUNT, default=8, show_default=True, help="Batch: items run at once (with --executor ray: per node).")
@click.option("--resume", is_flag=False, flag_value="latest", default=None, metavar="[BATCH_ID]",
              help="Batch: finish an interrupted batch (default: the latest over these files).")
@click.option("--batch-id", help="Batch: name a new batch.")
@click.option("--id-field", default="id", show_default=True, help="Batch: the input field that identifies an item.")
@click.option("--executor", type=click.Choice(["threads", "ray"]), default="threads", show_default=True,
              help="Batch: run items on threads in this process, or on one Ray actor per node (pip install 'engine[ray]').")
@click.option("--address", metavar="ADDRESS",
              help="Batch with --executor ray: an existing Ray cluster (ray://host:10001 or auto); default a local Ray.")
@click.option("--provider-batch", is_flag=True,
              help="Batch: send llm calls through the providers' batch APIs (OpenAI, Anthropic) at the batch rate.")
@click.option("--realtime-retries", is_flag=True,
              help="Provider batch: re-asks and escalations go out in real time, not as the next batch round.")
@click.option("--max-wait", metavar="DURATION",
              help="Provider batch: wait at most this long (90s, 30m, 6h), then cancel and finish in real time.")
@click.option("--poll-interval", type=SECONDS, default=30.0, show_default=True, metavar="SECONDS",
              help="Provider batch: seconds between polls of an open provider batch.")
def run_cmd(workflow: Path, pairs: tuple[str, ...], inputs_json: str | None, tags: tuple[str, ...],
            tenant: str | None, quiet: bool, batch_inputs: Path | None, output: Path | None, concurrency: int,
            resume: str | None, batch_id: str | None, id_field: str, provider_batch: bool, realtime_retries: bool,
            max_wait: str | None, poll_interval: float, executor: str = "threads",
            address: str | None = None) -> None:
    """Run WORKFLOW: outputs as JSON on stdout, a summary on stderr. With --inputs, run it over
    every line of a JSONL file (see engine.batch); with --provider-batch, through the providers'
    batch APIs (see engine.provider_batch)."""
    for flag, value in (("--tenant", tenant), ("--batch-id", batch_id), ("--id-field", id_field)):
        check_text(flag, value)
    if batch_inputs is not None:
        from engine.cli.batch import provider_batch_options, run_batch_cli

        options = provider_batch_options(provider_batch, realtime_retries, max_wait, poll_interval)
        return run_batch_cli(workflow, batch_inputs, output, concurrency, resume, batch_id, id_field, quiet,
                             options, executor=executor, address=address)
    if provider_batch or realtime_retries or max_wait:
        raise UserError("--provider-batch, --realtime-retries and --max-wait need a batch run (--inputs FILE)")
    if executor != "threads" or address:
        raise UserError("--executor and --address need a batch run (--inputs FILE)")
    wf = load_workflow(workflow)
    inputs = parse_inputs_json(inputs_json) if inputs_json else {}
    inputs.update(parse_cli_inputs(wf, list(pairs)))
    tag_map = parse_tags(tags)
    result = run_workflow(wf, inputs, tags=tag_map, raise_on_error=False, tenant=tenant)
    if not quiet:
        err_console.print(step_table([asdict(s) for s in result.steps],
                                     title=f"{result.workflow} · run {result.run_id[:12]}"))
        for note in step_notes([asdict(s) for s in result.steps]):
            err_console.print(escape_control(note), soft_wrap=True)
        err_console.print(f"total: {result.tokens_in}/{result.tokens_out} tokens, {fmt_cost(result.cost)} "
                          f"(all-premium baseline {fmt_cost(result.baseline_cost)}), {result.latency_ms:.0f} ms")
    if not result.ok:
        click.echo(f"error: {escape_control(str(result.error))}", err=True)
        raise SystemExit(1)
    click.echo(dump_json(result.outputs))


@click.command("validate")
@click.argument("workflows", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--graph", is_flag=True, help="Print each workflow's step graph as Mermaid text instead.")
def validate_cmd(workflows: tuple[Path, ...], graph: bool) -> None:
    """Check workflow files; print every problem with file:line:column."""
    for path in workflows:
        wf = load_workflow(path)
        if graph:
            click.echo(escape_control(f"%% {path} ({wf.name} v{wf.version})\n{mermaid(wf)}"), nl=False)
        else:
            click.echo(escape_control(f"ok: {path} ({wf.name} v{wf.version}, {len(wf.steps)} steps)"))


@click.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of the workflow format (for editor completion)."""
    click.echo(dump_json(workflow_json_schema()))
