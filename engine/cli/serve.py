"""`engine serve WORKFLOW...`: workflows over HTTP (see engine.http)."""

from __future__ import annotations

from pathlib import Path

import click

from engine.api import Engine
from engine.errors import UserError
from engine.http import create_app


@click.command("serve")
@click.argument("workflows", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
def serve_cmd(workflows: tuple[Path, ...], host: str, port: int) -> None:
    """Serve WORKFLOWS: POST /workflows/NAME/run with JSON inputs; OpenAPI at /docs."""
    try:
        import uvicorn
    except ImportError as e:
        raise UserError("engine serve needs FastAPI and uvicorn: pip install 'engine[serve]'") from e
    engine = Engine()
    uvicorn.run(create_app(engine, list(workflows)), host=host, port=port)
