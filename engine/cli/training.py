"""`engine export` (trusted pairs as fine-tuning JSONL) and `engine distill` (a LoRA adapter for the
local tier)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from engine.cli.render import dump_json, escape_control, out_console

_WORKFLOW = click.option("--workflow", "-w", required=True, type=click.Path(dir_okay=False, path_type=Path),
                         help="The workflow the step belongs to (its store holds the log).")


@click.command("export")
@click.argument("step")
@_WORKFLOW
@click.option("--format", "fmt", type=click.Choice(["openai", "chat"]), default="openai", show_default=True,
              help="openai: chat fine-tuning messages; chat: trl SFTTrainer prompt/completion messages.")
@click.option("--val", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share held out as validation (stratified by answer).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (default: export/WORKFLOW/STEP).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The summary as JSON on stdout.")
def export_cmd(step: str, workflow: Path, fmt: str, val: float, out: Path | None, seed: int, as_json: bool) -> None:
    """Write STEP's trusted input/answer pairs as JSONL for fine-tuning (train + validation)."""
    from engine.export import export_step
    from engine.promotion.review import open_review_store
    from engine.spec.loader import load_workflow

    result = export_step(load_workflow(workflow), open_review_store(workflow), step, fmt=fmt, val=val, out=out,
                         seed=seed)
    if as_json:
        click.echo(dump_json(result.summary()))
        return
    table = Table(title=f"{result.workflow}/{result.step}: trusted pairs per answer", title_justify="left",
                  show_edge=False, pad_edge=False)
    for col in ("answer", "train", "val"):
        table.add_column(col, justify="left" if col == "answer" else "right")
    for label, n in result.labels.items():
        table.add_row(escape_control(label), str(n["train"]), str(n["val"]))
    table.add_row("[bold]total[/bold]", str(result.counts["train"]), str(result.counts["val"]))
    out_console.print(table)
    trust = ", ".join(f"{k} {v}" for k, v in result.trust.items() if v)
    out_console.print(f"wrote {', '.join(str(p) for p in result.files.values())} ({result.format} format; "
                      f"{result.counts['duplicates']} duplicates dropped; evidence: {trust})")
