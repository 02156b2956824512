"""`engine serve`: workflows over HTTP, a thin layer over `Engine` (needs the `serve` extra).

    GET  /workflows              name, version, description and input schema of each workflow
    POST /workflows/{name}/run   JSON inputs in; {run_id, status, outputs, error, ...} out:
                                 200 when the run succeeded, 500 with the same body when it
                                 failed, 422 when the inputs fail the workflow's input schemas,
                                 400 for a malformed body or tenant, 413 for a body over the limit,
                                 422 for one nesting over 64 levels, 415 for a body that is not
                                 application/json, 401 without the bearer token (when
                                 ENGINE_SERVE_TOKEN is set), 421 for a Host not allowed
    POST /feedback               {run_id, step, ok: true} or {run_id, step, output}: a person's
                                 verdict on a run's llm step (404 unknown run or step, 422 an
                                 output that fails the step's schema; nothing written then;
                                 403 under `read_only`)

    GET  /ui/...                 the review console (`engine serve --ui`; see engine.ui)
    GET  /metrics                Prometheus metrics of this process's runs (engine.telemetry.metrics)
                                 and its quality check queue
    GET  /healthz                200 while the process is up (no token needed)
    GET  /readyz                 200 when every store the workflows log to answers a query, else 503
                                 (no token needed)

The tenant comes from the `X-Engine-Tenant` header. Guards: engine.http_guard.

Each workflow gets its own route, so the OpenAPI schema (/openapi.json, /docs) shows its inputs.
"""

from __future__ import annotations

import os

from pathlib import Path
from typing import Any

from engine import http_guard
from engine.api import Engine
from engine.errors import InputError, UserError
from engine.runner import RunResult
from engine.store import reports as store_reports

FAILED_RUN_STATUS = 500


def result_body(result: RunResult) -> dict[str, Any]:
    return {
        "run_id": result.run_id, "workflow": result.workflow, "status": result.status,
        "outputs": result.outputs, "error": result.error, "tokens_in": result.tokens_in,
        "tokens_out": result.tokens_out, "cost": result.cost, "latency_ms": round(result.latency_ms, 2),
        "served_by": {s.step_id: s.served_by for s in result.steps},
        "trust": {s.step_id: s.trust for s in result.steps if s.trust},
    }


def app_from_env() -> Any:
    """The app of one `engine serve --workers N` worker process: each builds its own Engine (its
    own store connection or pool) from what the parent put in the environment."""
    workflows: list[str | Path] = [w for w in os.environ["ENGINE_SERVE_WORKFLOWS"].split(os.pathsep) if w]
    return create_app(Engine(), workflows, max_body=int(os.environ["ENGINE_SERVE_MAX_BODY"]),
                      token=os.environ.get("ENGINE_SERVE_TOKEN") or None,
                      tenant_header=os.environ["ENGINE_SERVE_TENANT_HEADER"],
                      allowed_hosts=allowed_hosts_from(os.environ.get(ALLOWED_HOSTS_ENV, "")),
                      read_only=os.environ.get("ENGINE_SERVE_READ_ONLY") == "1")


ALLOWED_HOSTS_ENV = "ENGINE_SERVE_ALLOWED_HOSTS"


def allowed_hosts_from(value: str) -> tuple[str, ...]:
    """The Host allow-list from a comma-separated list (ENGINE_SERVE_ALLOWED_HOSTS): the localhost
    names when empty."""
    hosts = tuple(h.strip() for h in value.split(",") if h.strip())
    return hosts or http_guard.LOCAL_HOSTS


def create_app(engine: Engine, workflows: list[str | Path], *, max_body: int = http_guard.DEFAULT_MAX_BODY,
               token: str | None = None, tenant_header: str = http_guard.TENANT_HEADER,
               console_store: Any = None, read_only: bool = False,
               allowed_hosts: tuple[str, ...] = http_guard.LOCAL_HOSTS, metrics: bool = True) -> Any:
    """The app; `max_body` bytes per request (413 above), `token` required as a bearer token
    when given, the tenant read from `tenant_header`, the Host header one of `allowed_hosts`
    (names, any port; `*`: any). With `console_store`, the review console (engine.ui) is served
    under /ui over that store. `read_only`: nothing can be written (feedback and every console
    action are refused with 403); workflows still run. `metrics`: count runs for /metrics."""
    try:
        from fastapi import FastAPI, HTTPException, Request
        from fastapi.responses import JSONResponse
    except ImportError as e:  # pragma: no cover - depends on the install
        raise UserError("engine serve needs FastAPI and uvicorn: pip install 'engine[serve]'") from e

    app = FastAPI(title="engine", description="Workflows over HTTP: JSON in, JSON out.")
    exempt: tuple[str, ...] = ()
    if console_store is not None:
        from engine.ui import PREFIX, add_console

        exempt = (PREFIX + "/",)  # the console checks the token (or its session) and CSRF itself
        add_console(app, console_store, read_only=read_only, token=token)
    exempt += PROBES  # probes carry no token; the Host check still applies
    http_guard.install(app, max_body=max_body, token=token, allowed_hosts=allowed_hosts, exempt=exempt)
    loaded = [engine.load(w) for w in workflows]
    add_probes(app, engine, loaded, console_store, metrics)

    @app.get("/workflows")
    def list_workflows() -> list[dict[str, Any]]:
        return [{"name": w.name, "version": w.version, "description": w.description,
                 "inputs": {"type": "object", "properties": w.inputs, "required": list(w.inputs)}}
                for w in loaded]

    feedback_schema = {
        "type": "object", "required": ["run_id", "step"],
        "properties": {"run_id": {"type": "string"}, "step": {"type": "string"},
                       "ok": {"type": "boolean", "description": "the answer was right"},
                       "output": {"description": "the right answer (must pass the step's schema)"}}}

    async def feedback(request: Request) -> dict[str, Any]:
        import asyncio

        from engine.quality.feedback import FeedbackError

        if read_only:
            raise HTTPException(status_code=403, detail="this server is read-only (--read-only): no feedback")
        try:
            body = http_guard.parse_body(await request.body())
        except http_guard.BadRequest as e:
            raise HTTPException(status_code=e.status, detail=e.detail) from None
        if not isinstance(body, dict):
            raise HTTPException(status_code=422, detail="the body must be a JSON object")
        run_id, step = body.get("run_id"), body.get("step")
        if not isinstance(run_id, str) or not isinstance(step, str):
            raise HTTPException(status_code=422, detail="run_id and step (strings) are required")
        ok = body.get("ok") is True
        if ok == ("output" in body):
            raise HTTPException(status_code=422, detail="give exactly one of ok: true or output")
        try:
            row = await asyncio.to_thread(engine.feedback, run_id, step, ok=ok, output=body.get("output"))
        except FeedbackError as e:
            status = 404 if str(e).startswith(("no run", "workflow '")) else 422
            raise HTTPException(status_code=status, detail=str(e)) from None
        return {"workflow": row["workflow"], "step": row["step_id"], "run_id": row["run_id"], "kind": row["kind"],
                "output": row["output"]}

    feedback.__annotations__["request"] = Request  # FastAPI resolves it here, not as a string
    app.post("/feedback", summary="A person's label for a run's llm step (outranks every tier)",
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"application/json": {"schema": feedback_schema}}}})(feedback)

    for wf in loaded:
        schema = {"type": "object", "properties": wf.inputs,
                  "required": [n for n, s in wf.inputs.items() if "default" not in s]}

        def make(name: str) -> Any:
            async def run(request: Request) -> Any:
                try:
                    inputs = http_guard.parse_body(await request.body())
                    tenant = http_guard.tenant_from(request.headers, tenant_header)
                except http_guard.BadRequest as e:
                    return JSONResponse({"detail": e.detail}, status_code=e.status)
                if not isinstance(inputs, dict):
                    return JSONResponse({"detail": "the body must be a JSON object of inputs"}, status_code=422)
                try:
                    result = await engine.arun(name, inputs, tenant=tenant)
                except InputError as e:
                    return JSONResponse({"detail": str(e)}, status_code=422)
                return JSONResponse(result_body(result), status_code=200 if result.ok else FAILED_RUN_STATUS)

            run.__annotations__["request"] = Request  # FastAPI resolves it here, not as a string
            return run

        app.post(f"/workflows/{wf.name}/run", summary=wf.description or f"Run {wf.name}",
                 openapi_extra={"requestBody": {"required": True,
                                                "content": {"application/json": {"schema": schema}}}})(make(wf.name))
    return app


PROBES = ("/healthz/", "/readyz/")


def add_probes(app: Any, engine: Engine, loaded: list[Any], console_store: Any, metrics: bool) -> None:
    """/healthz, /readyz and (with `metrics`) /metrics."""
    import asyncio

    from fastapi.responses import JSONResponse, PlainTextResponse

    import engine.telemetry as telemetry

    counters = telemetry.enable_metrics() if metrics else None
    stores: list[Any] = []
    for wf in loaded:
        store = engine.store_for(wf)
        if store is not None and all(store is not s for s in stores):
            stores.append(store)
    if console_store is not None and all(console_store is not s for s in stores):
        stores.append(console_store)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Any:
        try:
            for store in stores:
                await asyncio.wait_for(asyncio.to_thread(store_reports.ping, store), timeout=5.0)
        except Exception as e:  # noqa: BLE001 - any failure to answer means not ready
            return JSONResponse({"status": "unavailable", "error": f"the store did not answer: "
                                                                    f"{type(e).__name__}: {e}"}, status_code=503)
        return {"status": "ready", "stores": len(stores)}

    if counters is not None:
        @app.get("/metrics", include_in_schema=False)
        def prometheus() -> Any:
            from engine.quality.checkqueue import figures

            queue = figures()
            gauges = {"engine_check_queue_pending": queue["pending"], "engine_check_queue_peak": queue["peak"],
                      "engine_check_queue_submitted_total": queue["submitted"],
                      "engine_check_queue_dropped_total": queue["dropped"]}
            return PlainTextResponse(counters.exposition(gauges),
                                     media_type="text/plain; version=0.0.4; charset=utf-8")
