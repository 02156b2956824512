"""`engine promotions ...`: review what the log says can graduate out of the LLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from engine.cli.types import COUNT
from engine.cli.render import dump_json, escape_control, fmt_cost, out_console
from engine.promotion import review
from engine.promotion.records import Promotion
from engine.promotion.sandbox import isolation_problem


def _short(value: Any, width: int = 60) -> str:
    text = escape_control(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return text if len(text) <= width else text[: width - 1] + "…"


def _savings(p: Promotion) -> str:
    s = p.savings or {}
    if not s:
        return "-"
    return f"{s.get('tokens_per_month', 0):,} tokens, {fmt_cost(s.get('dollars_per_month'))} /month"


def _trust(v: dict[str, Any]) -> str:
    trust = v.get("trust") or {}
    shown = ", ".join(f"{level} {n}" for level, n in trust.items() if n)
    return f"evidence {v.get('evidence', 'any')}" + (f" ({shown})" if shown else "")


def _summary(p: Promotion) -> str:
    v = p.verification or {}
    if p.kind == "lookup":
        return (f"{len(p.payload.get('rows', []))} rows, min agreement {v.get('min_agreement', 0):.0%}; "
                + _trust(v))
    if p.kind == "lora":
        b, a = v.get("before") or {}, v.get("after") or {}
        return (f"LoRA for tier {v.get('tier')} ({v.get('base')}): validation {b.get('agree', 0)}/{b.get('pairs', 0)} "
                f"-> {a.get('agree', 0)}/{a.get('pairs', 0)} with the adapter; {v.get('train_pairs', 0)} trusted pairs")
    if p.kind == "router":
        held = v.get("held_out") or {}
        if v.get("threshold") is None:
            return (f"no signal: every input goes up (no cheap call); {v.get('examples', 0)} examples, "
                    f"'{v.get('cheap_tier')}' agreed {v.get('base_agreement', 0):.1%}")
        agreement = held.get("agreement")
        return (f"held out: sends {held.get('coverage', 0):.1%} to '{v.get('cheap_tier')}' at "
                f"{agreement if agreement is not None else 0:.1%} agreement (target "
                f"{v.get('target_agreement', 0):.0%}); {v.get('examples', 0)} examples")
    if p.kind == "classifier":
        held = v.get("held_out") or {}
        if not v.get("passed"):
            return f"{v.get('pairs', 0)} pairs, {v.get('labels', 0)} labels; not calibrated; " + _trust(v)
        return (f"held-out precision {held.get('precision', 0):.1%}, coverage {held.get('coverage', 0):.1%} "
                f"({'margin' if v.get('score') == 'margin' else 'p'} >= {v.get('threshold', 0):.3f}); "
                f"{v.get('pairs', 0)} pairs, {v.get('labels', 0)} labels; "
                + _trust(v))
    return (f"agreement {v.get('agreement', 0):.1%}, coverage {v.get('coverage', 0):.1%}, "
            f"{v.get('failures', 0)} failures; " + _trust(v))


def _as_dict(p: Promotion) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(p)


def _table(promotions: list[Promotion], title: str) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col in ("id", "step", "kind", "status", "what", "est. savings"):
        table.add_column(col, no_wrap=col in ("id", "kind"))
    for p in promotions:
        table.add_row(p.id, f"{p.workflow}/{p.step_id}", p.kind, p.status + (" (shadow)" if p.shadow else ""),
                      _summary(p), _savings(p))
    return table


def _render_changes(detail: review.Detail) -> None:
    for change in detail.changes:
        out_console.print(Syntax(change.diff(detail.root) or "(no change)", "diff", theme="ansi_dark",
                                 word_wrap=True))


def _sandbox_note(promotions: list[Promotion] | None = None) -> None:
    """Say why scripts cannot run here (the sandbox fails closed), when it matters."""
    if promotions is not None and not any(p.kind == "script" for p in promotions):
        return
    problem = isolation_problem()
    if problem:
        out_console.print(f"[yellow]scripts do not run on this machine: {problem}. Script promotions are "
                          f"neither verified nor served (the llm answers).[/yellow]")


@click.group("promotions")
def promotions_group() -> None:
    """Mine the log, propose lookups and scripts, accept or reject them, watch them serve."""


@promotions_group.command("propose")
@click.argument("workflow", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--step", help="Only this llm step.")
@click.option("--scripts/--no-scripts", default=True, help="Ask the strong tier to write scripts.")
@click.option("--script-tier", help="The tier that writes scripts (default: promote.script_tier, else premium).")
@click.option("--classifiers/--no-classifiers", default=True,
              help="Train classifiers for steps with closed outputs (promote.classifier).")
@click.option("--routers/--no-routers", default=True,
              help="Train learned routers for steps with route: or tier: auto.")
def propose_cmd(workflow: Path | None, step: str | None, scripts: bool, script_tier: str | None,
                classifiers: bool, routers: bool) -> None:
    """Mine the log of WORKFLOW (default: every logged workflow) and record proposals."""
    store = review.open_review_store(workflow)
    if scripts:
        _sandbox_note()
    for name, report in review.propose(store, workflow, step=step, scripts=scripts, script_tier=script_tier,
                                       classifiers=classifiers, routers=routers):
        if report.proposed:
            out_console.print(_table(report.proposed, f"{name}: proposed"))
        if report.unverified:
            out_console.print(_table(report.unverified, f"{name}: failed verification (not proposed)"))
            for p in report.unverified:
                out_console.print(f"  {p.id}: {p.reason}")
        for note in report.notes:
            out_console.print(f"[dim]{name}: {note}[/dim]")
        if not report.proposed:
            out_console.print(f"{name}: nothing new to propose")


@promotions_group.command("list")
@click.option("--workflow", help="Only this workflow (by name).")
@click.option("--status", help="Only this status (proposed, accepted, rejected, demoted, stale, unverified).")
@click.option("--all", "all_", is_flag=True, help="Include superseded proposals.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def list_cmd(workflow: str | None, status: str | None, all_: bool, as_json: bool) -> None:
    """List promotions."""
    found = review.list_promotions(review.open_review_store(), workflow=workflow, status=status, all_=all_)
    if as_json:
        click.echo(dump_json([_as_dict(p) for p in found]))
        return
    if not found:
        out_console.print("no promotions")
        return
    out_console.print(_table(found, "promotions"))
    _sandbox_note(found)


@promotions_group.command("show")
@click.argument("promotion_id")
@click.option("--rows", type=COUNT, default=20, show_default=True, help="Lookup rows / examples to show.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout (every row).")
def show_cmd(promotion_id: str, rows: int, as_json: bool) -> None:
    """Evidence, examples, the table or code, the verification report, savings and the diff."""
    detail = review.show(review.open_review_store(), promotion_id)
    p = detail.promotion
    if as_json:
        click.echo(dump_json({**_as_dict(p), "checks": detail.checks, "events": detail.events}))
        return
    head = Table.grid(padding=(0, 2))
    for label, value in (("id", p.id), ("step", f"{p.workflow}/{p.step_id}"), ("kind", p.kind),
                         ("status", p.status + (" (shadow)" if p.shadow else "")),
                         ("hashes", f"prompt {p.prompt_hash} · schema {p.schema_hash}"),
                         ("verification", _summary(p)), ("est. savings", _savings(p)),
                         ("artifact", p.artifact or "-"), ("reason", p.reason or "-")):
        head.add_row(f"[bold]{label}[/bold]", value)
    out_console.print(Panel(head, title=f"promotion {p.id}", expand=False))
    if (p.verification or {}).get("warning"):
        out_console.print(f"[bold yellow]warning:[/bold yellow] {p.verification['warning']}")
    _sandbox_note([p])
    if p.kind == "lookup":
        table = Table(title="rows (evidence)", title_justify="left", show_edge=False, pad_edge=False)
        for col in ("input", "output", "calls", "ref", "verified", "labels", "unverified", "agreement", "tokens",
                    "cost", "last seen"):
            table.add_column(col, justify="left" if col in ("input", "output", "last seen") else "right")
        for r in p.payload.get("rows", [])[:rows]:
            e = r["evidence"]
            t = e.get("trust") or {}
            table.add_row(_short(r["input"]), _short(r["output"], 40), str(e["calls"]), str(t.get("reference", 0)),
                          str(t.get("verified", 0)), str(t.get("labelled", 0)), str(t.get("unverified", "-")),
                          f"{e['agreement']:.0%}", str(e["tokens"]), fmt_cost(e["cost"]),
                          (e.get("last_seen") or "")[:19])
        out_console.print(table)
        extra = len(p.payload.get("rows", [])) - rows
        if extra > 0:
            out_console.print(f"[dim]… {extra} more rows[/dim]")
    elif p.kind == "classifier":
        _render_classifier(p, rows)
    elif p.kind == "router":
        _render_router(p)
    elif p.kind == "lora":
        v = p.verification
        losses = v.get("losses") or [0.0]
        out_console.print(f"adapter {p.payload.get('file')} ({p.payload.get('bytes', 0) / 1e6:.1f} MB), settings "
                          f"{_short(p.payload.get('settings'), 120)}; loss {losses[0]:.3f} -> {losses[-1]:.3f} over "
                          f"{len(losses)} steps; GGUF load {v.get('load_s')} s, training {v.get('train_s')} s")
    else:
        writer = p.payload.get("writer", {})
        out_console.print(f"written by {writer.get('model')} ({writer.get('tokens_in', 0)}/"
                          f"{writer.get('tokens_out', 0)} tokens, {fmt_cost(writer.get('cost'))}) from "
                          f"{len(p.payload.get('examples', []))} examples:")
        for ex in p.payload.get("examples", [])[:rows]:
            out_console.print(f"  {_short(ex['input'])} -> {_short(ex['output'], 40)}")
        out_console.print(Syntax(p.payload.get("code", ""), "python", theme="ansi_dark"))
        v = p.verification
        report = Table(title="verification on every logged input", title_justify="left", show_edge=False)
        for col in ("set", "inputs", "answered", "agree", "agreement", "coverage", "failures"):
            report.add_column(col, justify="left" if col == "set" else "right")
        for name, s in (("all", v), ("held-out", v.get("held_out", {}))):
            report.add_row(name, str(s.get("pairs", 0)), str(s.get("answered", 0)), str(s.get("agree", 0)),
                           f"{s.get('agreement', 0):.1%}", f"{s.get('coverage', 0):.1%}", str(s.get("failures", 0)))
        out_console.print(report)
        for m in v.get("mismatches", [])[:5]:
            out_console.print(f"  [red]mismatch[/red] {_short(m['input'])}: expected {_short(m['expected'], 30)}, "
                              f"got {_short(m['got'], 30)}")
        for e in v.get("errors", [])[:5]:
            out_console.print(f"  [red]error[/red] {_short(e['input'])}: {_short(e['error'])}")
    for mode, s in detail.checks.items():
        out_console.print(f"{mode} checks: {s['agree']}/{s['checks']} agree")
    if detail.changes:
        out_console.print("[bold]accepting writes:[/bold]")
        _render_changes(detail)
    if detail.events:
        out_console.print("history: " + " → ".join(f"{e['event']} ({e['created_at'][:19]})" for e in detail.events))


def _render_router(p: Promotion) -> None:
    v = p.verification
    held = v.get("held_out") or {}
    out_console.print(f"embedder {v.get('embedder')}, logistic regression C={v.get('C')} on P('{v.get('cheap_tier')}' "
                      f"agrees with the reference); {v.get('examples', 0)} examples ({_short(v.get('evidence'))}), "
                      f"{v.get('agree', 0)} agreed ({v.get('base_agreement', 0):.1%}); target agreement "
                      f"{v.get('target_agreement', 0):.1%}; {v.get('folds', 0)} folds")
    if v.get("threshold") is None:
        out_console.print(f"[yellow]no usable signal[/yellow]: {p.reason or 'every input goes up'}")
    else:
        agreement = held.get("agreement")
        out_console.print(f"threshold P(agree) >= {v['threshold']:.4f}; held out (each fold at the threshold the "
                          f"other folds calibrate): {held.get('routed_cheap', 0)} of {held.get('examples', 0)} "
                          f"sent to the cheap tier ({held.get('coverage', 0):.1%}), agreeing "
                          f"{agreement if agreement is not None else 0:.1%}")
    if p.payload.get("retrain_of"):
        out_console.print(f"a new version of {p.payload['retrain_of']} (retrained on new evidence)")


_SCORE_NAMES = {"margin": "top probability's lead over the runner-up", "top": "top probability"}


def _render_classifier(p: Promotion, rows: int) -> None:
    v = p.verification
    model = p.payload.get("model") or {}
    out_console.print(f"embedder {v.get('embedder')}, logistic regression C={v.get('C')}, trained on "
                      f"{v.get('pairs', 0)} trusted pairs ({v.get('labels', 0)} labels); target precision "
                      f"{v.get('target_precision', 0):.1%}; threshold "
                      f"{model.get('threshold', v.get('threshold', 0)):.4f} on the "
                      f"{_SCORE_NAMES.get(model.get('score', 'top'), model.get('score'))} (calibrated on "
                      f"{v.get('calibration_pairs', 0)} out-of-fold answers: {v.get('folds', 0)} folds, "
                      f"{v.get('repeats', 1)} deal(s))")
    if p.payload.get("retrain_of"):
        out_console.print(f"a new version of {p.payload['retrain_of']} (retrained on new trusted evidence)")
    report = Table(title="held-out trusted pairs (each fold judged by a model and a threshold that never saw it)",
                   title_justify="left",
                   show_edge=False)
    for col in ("set", "pairs", "served", "correct", "precision", "coverage", "accuracy, never abstaining"):
        report.add_column(col, justify="left" if col == "set" else "right")
    for name, s in (("report", v.get("held_out") or {}), ("calibration", v.get("calibration") or {})):
        if s:
            report.add_row(name, str(s.get("pairs", 0)), str(s.get("served", 0)), str(s.get("correct", 0)),
                           f"{s.get('precision', 0):.1%}", f"{s.get('coverage', 0):.1%}",
                           f"{s.get('accuracy_without_abstaining', 0):.1%}")
    out_console.print(report)
    held = v.get("held_out") or {}
    per_label = held.get("per_label") or {}
    if per_label:
        table = Table(title="confusion summary (held-out, per expected answer)", title_justify="left",
                      show_edge=False, pad_edge=False)
        for col in ("answer", "support", "served", "correct", "served as it"):
            table.add_column(col, justify="left" if col == "answer" else "right")
        ranked = sorted(per_label.items(), key=lambda kv: (kv[1]["correct"] - kv[1]["served"], -kv[1]["support"]))
        for label, r in ranked[:rows]:
            table.add_row(_short(label, 50), str(r["support"]), str(r["served"]), str(r["correct"]),
                          str(r["predicted_as"]))
        out_console.print(table)
        if len(ranked) > rows:
            out_console.print(f"[dim]… {len(ranked) - rows} more answers[/dim]")
    for c in held.get("confusions", [])[:5]:
        out_console.print(f"  [red]confused[/red] {_short(c['expected'], 40)} served as {_short(c['got'], 40)}: {c['n']}")
    if p.reason and not v.get("passed"):
        out_console.print(f"[yellow]{p.reason}[/yellow]")


@promotions_group.command("accept")
@click.argument("promotion_id")
@click.option("--dry-run", is_flag=True, help="Show the diff without writing anything.")
def accept_cmd(promotion_id: str, dry_run: bool) -> None:
    """Write the artifact beside the workflow and link it to the step."""
    detail = review.accept(review.open_review_store(), promotion_id, dry_run=dry_run)
    _render_changes(detail)
    p = detail.promotion
    verb = "would accept" if dry_run else "accepted"
    out_console.print(f"{verb} {p.id}: {p.workflow}/{p.step_id} now served by {p.kind}"
                      + (f" ({p.artifact})" if p.artifact else ""))


@promotions_group.command("reject")
@click.argument("promotion_id")
@click.option("--reason", required=True, help="Why (remembered; the same proposal is not made again).")
def reject_cmd(promotion_id: str, reason: str) -> None:
    """Reject a proposal; it is remembered with the reason."""
    p = review.reject(review.open_review_store(), promotion_id, reason)
    out_console.print(f"rejected {p.id}: {reason}")


@promotions_group.command("shadow")
@click.argument("promotion_id")
@click.option("--off", is_flag=True, help="Stop shadowing.")
def shadow_cmd(promotion_id: str, off: bool) -> None:
    """Run a proposal alongside the llm (agreement recorded, outputs unchanged)."""
    p = review.set_shadow(review.open_review_store(), promotion_id, not off)
    out_console.print(f"{p.id}: shadow {'on' if p.shadow else 'off'}")


@promotions_group.command("verify")
@click.argument("promotion_id")
def verify_cmd(promotion_id: str) -> None:
    """Re-verify a stale or demoted artifact on the calls logged under the step's current prompt."""
    report = review.reverify(review.open_review_store(), promotion_id)
    verdict = "[green]passed[/green]: serving again" if report["passed"] else "[red]failed[/red]: still not serving"
    out_console.print(f"{verdict} (agreement {report['agreement']:.1%} on {report['answered']} of "
                      f"{report['pairs']} inputs, threshold {report['threshold']:.0%})")


@promotions_group.command("status")
@click.option("--workflow", help="Only this workflow (by name).")
def status_cmd(workflow: str | None) -> None:
    """What is materialized, what it serves, shadow and spot-check agreement, demotions."""
    rows = review.status(review.open_review_store(), workflow=workflow)
    if not rows:
        out_console.print("nothing materialized or in shadow")
        return
    table = Table(title="promotion status", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("id", "step", "kind", "status", "serves", "spot agree", "shadow agree"):
        table.add_column(col, justify="right" if col in ("serves",) else "left",
                         no_wrap=col in ("id", "spot agree", "shadow agree"))

    def rate(s: dict[str, int]) -> str:
        return f"{s['agree']}/{s['checks']}" if s["checks"] else "-"

    for r in rows:
        p = r.promotion
        style = {"demoted": "red", "stale": "yellow", "accepted": "green"}.get(p.status, "")
        table.add_row(p.id, f"{p.workflow}/{p.step_id}", p.kind, f"[{style}]{p.status}[/{style}]" if style
                      else p.status, str(r.serves), rate(r.spot), rate(r.shadow))
    out_console.print(table)
    _sandbox_note([r.promotion for r in rows])
    for r in rows:
        if r.demoted_reason:
            out_console.print(f"{r.promotion.id} {r.promotion.status}: {r.demoted_reason}")
