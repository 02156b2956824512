"""`engine serve`: workflows over HTTP, a thin layer over `Engine` (needs the `serve` extra).

    GET  /workflows              name, version, description and input schema of each workflow
    POST /workflows/{name}/run   JSON inputs in; {run_id, status, outputs, error, ...} out:
                                 200 when the run succeeded, 500 with the same body when it
                                 failed, 422 when the inputs fail the workflow's input schemas,
                                 400 for a malformed body or tenant, 413 for a body over the limit,
                                 401 without the bearer token (when ENGINE_SERVE_TOKEN is set)

The tenant comes from the `X-Engine-Tenant` header. Guards: engine.http_guard.

Each workflow gets its own route, so the OpenAPI schema (/openapi.json, /docs) shows its inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import http_guard
from engine.api import Engine
from engine.errors import InputError, UserError
from engine.runner import RunResult

FAILED_RUN_STATUS = 500


def result_body(result: RunResult) -> dict[str, Any]:
    return {
        "run_id": result.run_id, "workflow": result.workflow, "status": result.status,
        "outputs": result.outputs, "error": result.error, "tokens_in": result.tokens_in,
        "tokens_out": result.tokens_out, "cost": result.cost, "latency_ms": round(result.latency_ms, 2),
        "served_by": {s.step_id: s.served_by for s in result.steps},
    }


def create_app(engine: Engine, workflows: list[str | Path], *, max_body: int = http_guard.DEFAULT_MAX_BODY,
               token: str | None = None, tenant_header: str = http_guard.TENANT_HEADER) -> Any:
    """The app; `max_body` bytes per request (413 above), `token` required as a bearer token
    when given, the tenant read from `tenant_header`."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
    except ImportError as e:  # pragma: no cover - depends on the install
        raise UserError("engine serve needs FastAPI and uvicorn: pip install 'engine[serve]'") from e

    app = FastAPI(title="engine", description="Workflows over HTTP: JSON in, JSON out.")
    http_guard.install(app, max_body=max_body, token=token)
    loaded = [engine.load(w) for w in workflows]

    @app.get("/workflows")
    def list_workflows() -> list[dict[str, Any]]:
        return [{"name": w.name, "version": w.version, "description": w.description,
                 "inputs": {"type": "object", "properties": w.inputs, "required": list(w.inputs)}}
                for w in loaded]

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
