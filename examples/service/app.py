"""An example service that embeds the engine: support-ticket triage over HTTP.

    uvicorn examples.service.app:app --port 8000      (from the repository root)
    curl -s localhost:8000/triage -H 'content-type: application/json' -d '{"ticket": "my card is lost"}'

One `Engine` is created at start-up and shared by every request: the workflow is loaded and
validated once, the local model is loaded once (`warm`) and shared, requests run concurrently on
the engine's thread pool (`arun`), and every run is logged to one store.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from engine import Engine, InputError

WORKFLOW = Path(__file__).resolve().parents[1] / "support_triage" / "workflow.yaml"


class Ticket(BaseModel):
    ticket: str = Field(min_length=1, examples=["I lost my card yesterday"])


class Triage(BaseModel):
    intent: str
    team: str
    run_id: str
    served_by: dict[str, str | None]
    latency_ms: float


def create_app(workflow: Path = WORKFLOW, *, warm: bool = True, **engine_options: Any) -> FastAPI:
    engine = Engine(**engine_options)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine.load(workflow)
        if warm:
            engine.warm(workflow)
        yield
        engine.close()

    app = FastAPI(title="support triage", lifespan=lifespan)

    @app.post("/triage", response_model=Triage)
    async def triage(body: Ticket) -> Triage:
        try:
            result = await engine.arun(workflow, {"ticket": body.ticket})
        except InputError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None
        if not result.ok:
            raise HTTPException(status_code=502, detail=result.error)
        return Triage(intent=result.outputs["intent"], team=result.outputs["team"], run_id=result.run_id,
                      served_by={s.step_id: s.served_by for s in result.steps},
                      latency_ms=round(result.latency_ms, 2))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


app = create_app()
