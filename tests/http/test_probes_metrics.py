"""`engine serve`'s operator endpoints: /metrics (Prometheus text: runs, calls, tokens, cost, answers
by source and trust, check queue, errors by kind), /healthz (process up) and /readyz (the store
answers), the probes without the bearer token."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from engine import Engine, telemetry
from engine.http import create_app
from engine.store import SQLiteStore

WORKFLOW = """\
name: label
inputs: {text: {type: string}}
steps:
  - id: ask
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: standard
      retries: 0
      cache: true
      prompt: "Label: {{ text }}"
      schema: {type: object, properties: {label: {type: string}}, required: [label]}
      max_tokens: 20
"""


def _samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value of each sample line of a Prometheus text exposition."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def test_metrics_count_runs_calls_tokens_cost_answers_and_errors(project, fake, tmp_path):
    telemetry.disable_metrics()  # counters of this app's runs only
    wf = project(WORKFLOW)
    fake.enqueue({"label": "spam"}, "not json")
    app = create_app(Engine(store=tmp_path / "s.db"), [wf])
    try:
        with TestClient(app, base_url="http://localhost") as client:
            assert client.post("/workflows/label/run", json={"text": "win money"}).status_code == 200
            assert client.post("/workflows/label/run", json={"text": "win money"}).status_code == 200  # cached
            assert client.post("/workflows/label/run", json={"text": "hello"}).status_code == 500  # invalid
            response = client.get("/metrics")
    finally:
        telemetry.disable_metrics()
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert "# TYPE engine_runs_total counter" in text
    samples = _samples(text)
    assert samples['engine_runs_total{workflow="label",status="ok"}'] == 2
    assert samples['engine_runs_total{workflow="label",status="failed"}'] == 1
    assert samples['engine_llm_calls_total{workflow="label",tier="standard",model="medium",outcome="valid"}'] == 1
    assert samples['engine_llm_calls_total{workflow="label",tier="standard",model="medium",outcome="invalid"}'] == 1
    assert samples['engine_answers_total{workflow="label",source="llm",trust="unverified"}'] == 1
    assert samples['engine_answers_total{workflow="label",source="cache",trust="unverified"}'] == 1
    assert samples['engine_errors_total{kind="invalid_output"}'] == 1
    assert samples['engine_errors_total{kind="step_llm"}'] == 1
    tokens_in = samples['engine_tokens_total{workflow="label",model="medium",direction="input"}']
    assert tokens_in > 0 and samples['engine_tokens_total{workflow="label",model="medium",direction="output"}'] > 0
    assert samples['engine_cost_usd_total{workflow="label"}'] > 0  # the fake tier's prices
    assert samples['engine_run_duration_seconds_count{workflow="label"}'] == 3
    assert samples["engine_check_queue_pending"] >= 0 and "engine_check_queue_dropped_total" in samples
    for line in text.splitlines():  # every sample line parses as the exposition format
        assert line.startswith("#") or re.fullmatch(r'[a-z_]+(\{([a-z_]+="[^"]*",?)+\})? [0-9.e+-]+', line), line


def test_healthz_and_readyz_need_no_token_and_readyz_reaches_the_store(project, tmp_path):
    wf = project(WORKFLOW)
    store = SQLiteStore(tmp_path / "s.db")
    app = create_app(Engine(store=store), [wf], token="s3cret", metrics=False)
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["stores"] == 1
        assert client.get("/workflows").status_code == 401  # the API still needs the token
        assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 404  # off
        store.close()  # the store no longer answers: not ready, still alive
        down = client.get("/readyz")
        assert down.status_code == 503 and "the store did not answer" in down.json()["error"]
        assert client.get("/healthz").status_code == 200
    with TestClient(app, base_url="http://evil.example") as other:
        assert other.get("/healthz").status_code == 421  # the Host check still applies


def test_metrics_need_the_token_when_one_is_set(project, tmp_path):
    wf = project(WORKFLOW)
    app = create_app(Engine(store=tmp_path / "s.db"), [wf], token="s3cret")
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/metrics").status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and "engine_runs_total" in ok.text
