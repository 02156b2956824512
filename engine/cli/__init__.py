"""The `engine` command line: thin. Each command parses, makes one library call, renders.

Exit codes: 0 ok; 1 a run failed; 2 a user error (bad YAML, bad input, bad config, bad flag).
Errors print one readable message; `--debug` shows the traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from engine.errors import EngineError, UserError
from engine.cli.render import escape_control

from engine.cli.core import run_cmd, schema_cmd, validate_cmd
from engine.cli.report import report_cmd
from engine.cli.promotions import promotions_group
from engine.cli.runs import runs_group
from engine.cli.cache import cache_group
from engine.cli.serve import serve_cmd, ui_cmd
from engine.cli.skills import skills_group
from engine.cli.quality import feedback_cmd, quality_group
from engine.cli.training import distill_cmd, export_cmd


class EngineGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        debug = ctx.params.get("debug") or "--debug" in sys.argv
        try:
            return super().invoke(ctx)
        except EngineError as e:
            if debug:
                raise
            click.echo(f"error: {escape_control(str(e))}", err=True)
            ctx.exit(2 if isinstance(e, UserError) else 1)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - never a traceback without --debug
            if debug:
                raise
            click.echo(f"internal error: {type(e).__name__}: {escape_control(str(e))} "
                       f"(run with --debug for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=EngineGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="engine")
def cli(debug: bool) -> None:
    """engine: declarative LLM workflows that graduate solved work out of the LLM."""


cli.add_command(run_cmd)
cli.add_command(validate_cmd)
cli.add_command(schema_cmd)
cli.add_command(runs_group)
cli.add_command(report_cmd)
cli.add_command(promotions_group)
cli.add_command(cache_group)
cli.add_command(skills_group)
cli.add_command(serve_cmd)
cli.add_command(ui_cmd)
cli.add_command(feedback_cmd)
cli.add_command(quality_group)
cli.add_command(export_cmd)
cli.add_command(distill_cmd)


def main() -> None:
    cli(prog_name="engine")
