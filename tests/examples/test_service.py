"""The example FastAPI service: started on 127.0.0.1, hit with concurrent requests."""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
import threading
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

from engine.providers.fake import FakeProvider
from engine.providers.registry import register_provider, unregister_provider

ROOT = Path(__file__).resolve().parents[2]
TICKETS = {
    "Where is my new card? It has not arrived.": "card_arrival",
    "Someone stole my card": "lost_or_stolen_card",
    "What exchange rate do you use?": "exchange_rate",
    "I want my money back for this purchase": "request_refund",
}


def load_example():
    spec = importlib.util.spec_from_file_location("example_service", ROOT / "examples" / "service" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def triage_model():
    lock = threading.Lock()
    inflight = [0]

    def respond(request):
        with lock:
            inflight[0] += 1
            provider.max_inflight = max(provider.max_inflight, inflight[0])
        try:
            time.sleep(0.02)
        finally:
            with lock:
                inflight[0] -= 1
        ticket = request.messages[-1]["content"].removeprefix("Customer message: ")
        return {"intent": TICKETS[ticket]}

    provider = FakeProvider(responder=respond)
    provider.max_inflight = 0  # the most model calls seen at once
    register_provider("fake", provider)
    yield provider
    unregister_provider("fake")


@pytest.fixture
def server(project, triage_model, tmp_path):
    project("name: unused\nsteps: []\n")  # only for the engine.yaml it writes: local -> fake
    app = load_example().create_app(warm=False, store=tmp_path / "service.db")
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", tmp_path / "service.db"
    srv.should_exit = True
    thread.join(timeout=10)


def test_concurrent_requests_threads_and_asyncio(server, triage_model):
    base, db = server
    tickets = list(TICKETS) * 12

    def post(ticket: str) -> dict:
        with httpx.Client(base_url=base, timeout=30) as client:
            response = client.post("/triage", json={"ticket": ticket})
            assert response.status_code == 200, response.text
            return response.json()

    with ThreadPoolExecutor(16) as pool:
        threaded = list(pool.map(post, tickets))

    async def burst() -> list[dict]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            responses = await asyncio.gather(*(client.post("/triage", json={"ticket": t}) for t in tickets))
        assert all(r.status_code == 200 for r in responses)
        return [r.json() for r in responses]

    triage_model.max_inflight = 0
    concurrent = asyncio.run(burst())
    for results in (threaded, concurrent):
        assert [r["intent"] for r in results] == [TICKETS[t] for t in tickets]
        assert results[0]["team"] == "cards_logistics" and results[0]["served_by"]["classify"] == "llm"
    assert triage_model.max_inflight > 1  # the 20 ms model calls overlapped (not a wall-clock bound)
    deadline = time.monotonic() + 5  # rows are written behind: another connection sees them within ~50 ms
    while True:
        conn = sqlite3.connect(db)
        runs = conn.execute("SELECT count(*), count(DISTINCT id) FROM runs WHERE status = 'ok'").fetchone()
        conn.close()
        if runs == (2 * len(tickets), 2 * len(tickets)) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert runs == (2 * len(tickets), 2 * len(tickets))


def test_bad_request_is_rejected(server):
    base, _ = server
    response = httpx.post(f"{base}/triage", json={"ticket": ""})
    assert response.status_code == 422
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
