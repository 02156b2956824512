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


@click.command("distill")
@click.argument("step")
@_WORKFLOW
@click.option("--steps", type=click.IntRange(1), default=30, show_default=True, help="Optimizer steps.")
@click.option("--rank", type=click.IntRange(1), default=8, show_default=True, help="LoRA rank.")
@click.option("--alpha", type=click.FloatRange(0, min_open=True), default=16.0, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=2e-4, show_default=True, help="Learning rate.")
@click.option("--batch", type=click.IntRange(1), default=8, show_default=True)
@click.option("--max-len", type=click.IntRange(16), default=1024, show_default=True,
              help="Longest conversation in tokens (longer ones are skipped).")
@click.option("--val", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share of trusted pairs held out to compare the model before and after.")
@click.option("--eval", "eval_n", type=click.IntRange(0), default=50, show_default=True,
              help="Validation pairs answered through llama.cpp before and after.")
@click.option("--tier", default="local", show_default=True, help="The tier whose llamacpp model is adapted.")
@click.option("--seed", type=int, default=0, show_default=True)
def distill_cmd(step: str, workflow: Path, steps: int, rank: int, alpha: float, lr: float, batch: int,
                max_len: int, val: float, eval_n: int, tier: str, seed: int) -> None:
    """Train a LoRA adapter for the local tier on STEP's trusted pairs; propose it for review."""
    from engine.distill import LoraSettings, distill_step
    from engine.promotion.review import open_review_store
    from engine.spec.loader import load_workflow

    p = distill_step(load_workflow(workflow), open_review_store(workflow), step,
                     settings=LoraSettings(steps=steps, rank=rank, alpha=alpha, lr=lr, batch=batch, max_len=max_len,
                                           seed=seed), val=val, eval_n=eval_n, tier=tier)
    v = p.verification
    b, a = v["before"], v["after"]
    losses = v["losses"]
    out_console.print(f"LoRA adapter {p.payload['file']} ({p.payload['bytes'] / 1e6:.1f} MB) for {v['base']} "
                      f"(tier {tier}): {v['train_pairs']} trusted pairs, {len(losses)} steps, loss "
                      f"{losses[0]:.3f} -> {losses[-1]:.3f}; load {v['load_s']} s, train {v['train_s']} s")
    out_console.print(f"validation ({v['evaluated']} pairs, through llama.cpp): base {b['agree']}/{b['pairs']} "
                      f"({b['agreement']:.0%}), with the adapter {a['agree']}/{a['pairs']} ({a['agreement']:.0%})")
    out_console.print(f"proposed {p.id} (kind lora): review with `engine promotions show {p.id}`, serve it with "
                      f"`engine promotions accept {p.id}`" + (f"\n[yellow]{p.reason}[/yellow]" if p.reason else ""))
