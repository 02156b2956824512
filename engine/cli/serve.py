"""`engine serve WORKFLOW...` (workflows over HTTP, see engine.http) and `engine ui` (the review
console alone, see engine.ui)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from engine.api import Engine
from engine.errors import UserError
from engine.http_guard import DEFAULT_MAX_BODY, LOCAL_HOSTS, TENANT_HEADER, normal_host

_LOCAL = ("127.0.0.1", "localhost", "::1")
_WILDCARD = ("0.0.0.0", "::", "[::]", "")
_ALLOWED_HOSTS_ENV = "ENGINE_SERVE_ALLOWED_HOSTS"


def _allowed_hosts(host: str, given: tuple[str, ...]) -> tuple[str, ...]:
    """The Host allow-list: --allowed-host, else ENGINE_SERVE_ALLOWED_HOSTS (comma-separated), else
    the localhost names plus the address listened on (unless that is a wildcard)."""
    from engine.http import allowed_hosts_from
    from engine.http_guard import allowed_name

    source = "--allowed-host" if given else _ALLOWED_HOSTS_ENV
    try:
        if given:
            return tuple(allowed_name(h) for h in given)
        if os.environ.get(_ALLOWED_HOSTS_ENV, "").strip():
            return tuple(allowed_name(h) for h in allowed_hosts_from(os.environ[_ALLOWED_HOSTS_ENV]))
    except ValueError as e:
        raise UserError(f"{source}: {e}") from None
    if host in _WILDCARD:
        click.echo(f"warning: listening on {host or 'every address'}, but only requests for localhost names are "
                   "answered: name this server with --allowed-host (or ENGINE_SERVE_ALLOWED_HOSTS)", err=True)
        return LOCAL_HOSTS
    name = normal_host(host if host.count(":") < 2 else f"[{host}]")
    return LOCAL_HOSTS if name in LOCAL_HOSTS else (*LOCAL_HOSTS, name)


_allowed_host_option = click.option(
    "--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
    help="A name this server answers for in the Host header (repeatable; any port; '*' for any). "
         "Default: ENGINE_SERVE_ALLOWED_HOSTS, else localhost, 127.0.0.1, [::1] and the --host address.")


def _serve(app: object, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port)  # type: ignore[arg-type]


def _token(host: str, what: str) -> str | None:
    token = os.environ.get("ENGINE_SERVE_TOKEN") or None
    if token is None and host not in _LOCAL:
        click.echo(f"warning: serving on {host} without ENGINE_SERVE_TOKEN: anyone who reaches the port "
                   f"can {what}", err=True)
    return token


def _needs_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UserError("engine serve needs FastAPI and uvicorn: pip install 'engine[serve]'") from e


@click.command("serve")
@click.argument("workflows", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--max-body", default=DEFAULT_MAX_BODY, show_default=True, type=click.IntRange(1),
              help="Largest request body in bytes (413 above).")
@click.option("--tenant-header", default=TENANT_HEADER, show_default=True, help="The header naming the tenant.")
@click.option("--ui", is_flag=True, help="Also serve the review console under /ui.")
@click.option("--read-only", is_flag=True,
              help="Nothing can be written: no feedback, no console action; workflows still run.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Worker processes (uvicorn), all logging to the one configured store.")
@_allowed_host_option
def serve_cmd(workflows: tuple[Path, ...], host: str, port: int, max_body: int, tenant_header: str, ui: bool,
              read_only: bool, workers: int = 1, allowed_hosts: tuple[str, ...] = ()) -> None:
    """Serve WORKFLOWS: POST /workflows/NAME/run with JSON inputs; OpenAPI at /docs. Set
    ENGINE_SERVE_TOKEN to require `Authorization: Bearer <token>` on every request (the console
    asks for the same token once and keeps a session cookie)."""
    _needs_serve_extra()
    from engine.http import create_app
    from engine.promotion.review import open_review_store

    token = _token(host, "run these workflows (and spend on their models)")
    hosts = _allowed_hosts(host, allowed_hosts)
    if workers > 1 and ui:
        raise UserError("--ui serves the console from one process: drop --workers, or run `engine ui` beside it")
    if workers > 1:  # each worker process builds its app (and store connection) from the environment
        for w in workflows:
            if not w.is_file():
                raise UserError(f"no workflow file '{w}'")
        os.environ.update({"ENGINE_SERVE_WORKFLOWS": os.pathsep.join(str(w.resolve()) for w in workflows),
                           "ENGINE_SERVE_MAX_BODY": str(max_body), "ENGINE_SERVE_TENANT_HEADER": tenant_header,
                           _ALLOWED_HOSTS_ENV: ",".join(hosts), "ENGINE_SERVE_READ_ONLY": "1" if read_only else ""})
        import inspect

        import uvicorn

        extra: dict[str, Any] = {}  # a worker importing the engine on a busy host can miss uvicorn's 5 s health check
        if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
            extra["timeout_worker_healthcheck"] = 60
        uvicorn.run("engine.http:app_from_env", factory=True, host=host, port=port, workers=workers, **extra)
        return
    engine = Engine()
    store = open_review_store(workflows[0]) if ui else None
    app = create_app(engine, list(workflows), max_body=max_body, token=token, tenant_header=tenant_header,
                     console_store=store, read_only=read_only, allowed_hosts=hosts)
    if ui:
        click.echo(f"review console: http://{host}:{port}/ui" + (" (read-only)" if read_only else ""), err=True)
    _serve(app, host, port)


@click.command("ui")
@click.option("--workflow", "-w", type=click.Path(dir_okay=False, path_type=Path),
              help="Use this workflow's store (default: the configured store).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--read-only", is_flag=True, help="Show everything, change nothing.")
@_allowed_host_option
def ui_cmd(workflow: Path | None, host: str, port: int, read_only: bool, allowed_hosts: tuple[str, ...] = ()) -> None:
    """The review console alone, under /ui: proposals, the labelling queue, quality and cost.
    ENGINE_SERVE_TOKEN, when set, is asked for once (as for engine serve)."""
    _needs_serve_extra()
    from engine.http import create_app
    from engine.promotion.review import open_review_store

    token = _token(host, "label answers and accept promotions")
    app = create_app(Engine(), [], token=token, console_store=open_review_store(workflow), read_only=read_only,
                     allowed_hosts=_allowed_hosts(host, allowed_hosts))
    click.echo(f"review console: http://{host}:{port}/ui" + (" (read-only)" if read_only else ""), err=True)
    _serve(app, host, port)
