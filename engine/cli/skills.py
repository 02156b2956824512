"""`engine skills list | show | test | new`."""

from __future__ import annotations

import json
from pathlib import Path

import click
import yaml
from rich.table import Table

from engine.cli.render import out_console
from engine.config import load_config
from engine.errors import EngineError, UserError
from engine.skills import SkillIndex, find_skills, new_skill, parse_ref
from engine.skills.testing import test_skill
from engine.skills.expand import skill_step
from engine.skills.models import Skill


def _index() -> SkillIndex:
    return find_skills(Path.cwd(), load_config())


def _resolve(index: SkillIndex, ref: str) -> Skill:
    try:
        name, version = parse_ref(ref)
        return index.load(name, version)
    except (ValueError, LookupError) as e:
        raise UserError(str(e)) from None


@click.group("skills")
def skills_group() -> None:
    """Reusable, versioned steps: list, show, test and scaffold them."""


@skills_group.command("list")
def list_cmd() -> None:
    """Every skill in every library, latest version's description."""
    index = _index()
    table = Table(show_edge=False, title_justify="left",
                  title=" · ".join(f"{r.label}: {r.path}" for r in index.roots) or "no skill library found")
    for col in ("skill", "versions", "kind", "library", "description"):
        table.add_column(col)
    for name in index.names():
        versions = index.versions(name)
        try:
            skill = index.load(name)
            kind, description = str(skill.kind), skill.description
        except EngineError as e:
            kind, description = "error", str(e).splitlines()[0]
        table.add_row(name, ", ".join(f"@{v}" for v in versions), kind,
                      index.entry(name).library.label, description)
    out_console.print(table)
    for entry in index.shadowed:
        out_console.print(f"[dim]shadowed: {entry.name}@{entry.version} in {entry.path}[/]")


@skills_group.command("show")
@click.argument("ref", metavar="NAME[@VERSION]")
def show_cmd(ref: str) -> None:
    """A skill's inputs, params, defaults, prompt (params filled in) and how to use it."""
    skill = _resolve(_index(), ref)
    out_console.print(f"[bold]{skill.ref}[/] ({skill.kind}) · {skill.path}")
    out_console.print(skill.description)
    out_console.print(f"inputs: {json.dumps(skill.inputs, ensure_ascii=False)}")
    out_console.print(f"params (defaults): {json.dumps(skill.params, ensure_ascii=False)}")
    out_console.print(f"overridable with `with:`: {', '.join(skill.overridable())}")
    try:
        step = skill_step(skill, "example", {n: f"{{{{ inputs.{n} }}}}" for n in skill.inputs}, {})
    except ValueError as e:  # a template file it cannot read, a params template over its budget
        raise UserError(f"{skill.path}: {e}") from None
    body = step.get("llm") or step.get("script")
    out_console.print("as a plain step (defaults):", highlight=False)
    out_console.print(yaml.safe_dump(body, sort_keys=False, allow_unicode=True).rstrip(), markup=False)
    usage = {"id": skill.name, "uses": skill.ref, "inputs": {n: "..." for n in skill.inputs},
             "with": dict(list(skill.params.items())[:1])}
    out_console.print("usage:", highlight=False)
    out_console.print(yaml.safe_dump([usage], sort_keys=False, allow_unicode=True).rstrip(), markup=False)
    out_console.print(f"{len(skill.tests)} test case(s)")


@skills_group.command("test")
@click.argument("refs", nargs=-1, metavar="[NAME[@VERSION]]...")
@click.option("--local", is_flag=True, help="Answer llm skills with the bundled local model, not fake replies.")
def test_cmd(refs: tuple[str, ...], local: bool) -> None:
    """Run the test cases of the named skills (default: every version of every skill)."""
    index = _index()
    skills = [_resolve(index, r) for r in refs] if refs else [index.load(e.name, e.version) for e in index.all()]
    table = Table(show_edge=False)
    for col in ("skill", "case", "result", "detail"):
        table.add_column(col)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for skill in skills:
        for r in test_skill(skill, "local" if local else "fake"):
            counts[r.status] += 1
            style = {"passed": "green", "failed": "red", "skipped": "yellow"}[r.status]
            table.add_row(r.skill, r.case, f"[{style}]{r.status}[/]", r.message)
    out_console.print(table)
    click.echo(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    if counts["failed"]:
        raise SystemExit(1)


@skills_group.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(["llm", "script"]), default="llm", show_default=True)
@click.option("--group", default="custom", show_default=True, help="Folder under skills/ to put it in.")
@click.option("--description", "-d", default="TODO: what this skill does, in one line.")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=Path("skills"),
              show_default=True, help="The library folder.")
def new_cmd(name: str, kind: str, group: str, description: str, root: Path) -> None:
    """Scaffold skill NAME (v1 with a passing test), or the next version of an existing one."""
    path = new_skill(name, root, kind=kind, group=group, description=description)  # type: ignore[arg-type]
    click.echo(f"created {path} (run: engine skills test {name})")
