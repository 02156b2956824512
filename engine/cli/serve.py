"""`engine serve WORKFLOW...`: workflows over HTTP (see engine.http)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from engine.api import Engine
from engine.errors import UserError
from engine.http import create_app
from engine.http_guard import DEFAULT_MAX_BODY, TENANT_HEADER


@click.command("serve")
@click.argument("workflows", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--max-body", default=DEFAULT_MAX_BODY, show_default=True, type=click.IntRange(1),
              help="Largest request body in bytes (413 above).")
@click.option("--tenant-header", default=TENANT_HEADER, show_default=True, help="The header naming the tenant.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Worker processes (uvicorn), all logging to the one configured store.")
def serve_cmd(workflows: tuple[Path, ...], host: str, port: int, max_body: int, tenant_header: str,
              workers: int = 1) -> None:
    """Serve WORKFLOWS: POST /workflows/NAME/run with JSON inputs; OpenAPI at /docs. Set
    ENGINE_SERVE_TOKEN to require `Authorization: Bearer <token>` on every request."""
    try:
        import uvicorn
    except ImportError as e:
        raise UserError("engine serve needs FastAPI and uvicorn: pip install 'engine[serve]'") from e
    token = os.environ.get("ENGINE_SERVE_TOKEN") or None
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host} without ENGINE_SERVE_TOKEN: anyone who reaches the port "
                   f"can run these workflows (and spend on their models)", err=True)
    if workers > 1:  # each worker process builds its app (and store connection) from the environment
        for w in workflows:
            if not w.is_file():
                raise UserError(f"no workflow file '{w}'")
        os.environ.update({"ENGINE_SERVE_WORKFLOWS": os.pathsep.join(str(w.resolve()) for w in workflows),
                           "ENGINE_SERVE_MAX_BODY": str(max_body), "ENGINE_SERVE_TENANT_HEADER": tenant_header})
        import inspect

        extra: dict[str, Any] = {}  # a worker importing the engine on a busy host can miss uvicorn's 5 s health check
        if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
            extra["timeout_worker_healthcheck"] = 60
        uvicorn.run("engine.http:app_from_env", factory=True, host=host, port=port, workers=workers, **extra)
        return
    engine = Engine()
    app = create_app(engine, list(workflows), max_body=max_body, token=token, tenant_header=tenant_header)
    uvicorn.run(app, host=host, port=port)
