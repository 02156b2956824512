"""`engine serve` hardening: body limit (413), bearer token (401), tenant header, failed runs are
non-2xx with the same body, hostile bodies are 400 and never 500, strings sanitised for the store."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from engine import Engine
from engine.http import create_app
from engine.runner import open_store

WORKFLOW = """\
name: greet
inputs: {who: {type: string, minLength: 1}}
steps:
  - id: hello
    inputs: {who: "{{ inputs.who }}"}
    script: helpers.py:hello
"""
HELPERS = {"helpers.py": "def hello(who):\n    if who == 'boom':\n        raise ValueError('no')\n"
                         "    return {'text': 'hi ' + who}\n"}


@pytest.fixture
def app_for(project, tmp_path):
    def make(**kwargs):
        path = project(WORKFLOW, files=HELPERS)
        return TestClient(create_app(Engine(store=tmp_path / "s.db"), [path], **kwargs)), tmp_path / "s.db"

    return make


def test_body_over_the_limit_is_413_and_not_stored(app_for) -> None:
    client, db = app_for(max_body=1000)
    with client:
        big = client.post("/workflows/greet/run", content=json.dumps({"who": "x" * 5000}),
                          headers={"content-type": "application/json"})
        assert big.status_code == 413 and "limit of 1,000 bytes" in big.json()["detail"]

        def chunks():
            for _ in range(10):
                yield b" " * 500  # no Content-Length: streamed, counted as it arrives

        streamed = client.post("/workflows/greet/run", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert client.post("/workflows/greet/run", json={"who": "ada"}).status_code == 200
    assert len(open_store(db).runs()) == 1


def test_default_limit_is_one_megabyte(app_for) -> None:
    client, _ = app_for()
    with client:
        body = json.dumps({"who": "x" * (1024 * 1024)})
        assert client.post("/workflows/greet/run", content=body,
                           headers={"content-type": "application/json"}).status_code == 413


def test_failed_run_is_non_2xx_with_the_same_body(app_for) -> None:
    client, _ = app_for()
    with client:
        failed = client.post("/workflows/greet/run", json={"who": "boom"})
        body = failed.json()
        assert failed.status_code == 500 and body["status"] == "failed" and "ValueError: no" in body["error"]
        assert set(body) == set(client.post("/workflows/greet/run", json={"who": "ada"}).json())


def test_tenant_comes_from_the_header(app_for) -> None:
    client, db = app_for()
    with client:
        ok = client.post("/workflows/greet/run", json={"who": "ada"}, headers={"X-Engine-Tenant": "acme-1"})
        assert ok.status_code == 200
        bad = client.post("/workflows/greet/run", json={"who": "ada"}, headers={"X-Engine-Tenant": "a b\x7f"})
        assert bad.status_code == 400 and "X-Engine-Tenant" in bad.json()["detail"]
    runs = open_store(db).runs()
    assert [r["tags"].get("tenant") for r in runs] == ["acme-1"]


@pytest.mark.parametrize("body, status", [
    (b'{"who": "\\ud800 lone surrogate"}', 200),
    (b"[" * 100_000 + b"]" * 100_000, 400),
    (b'{"who": NaN}', 400),
    (b"\xff\xfe not utf-8", 400),
    (b"[1, 2]", 422),
    (b"{not json", 400),
])
def test_hostile_bodies_never_give_500(app_for, body: bytes, status: int) -> None:
    client, db = app_for()
    with client:
        reply = client.post("/workflows/greet/run", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    if status == 200:
        assert reply.json()["outputs"]["hello"]["text"] == "hi \ufffd lone surrogate"
        stored = open_store(db).runs()[0]
        assert stored["inputs"] == {"who": "\ufffd lone surrogate"}


def test_bearer_token(app_for) -> None:
    client, _ = app_for(token="s3cret-token")
    with client:
        assert client.get("/workflows").status_code == 401
        assert client.post("/workflows/greet/run", json={"who": "ada"}).status_code == 401
        wrong = client.post("/workflows/greet/run", json={"who": "ada"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = client.post("/workflows/greet/run", json={"who": "ada"},
                         headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and ok.json()["outputs"] == {"hello": {"text": "hi ada"}}


def test_serve_reads_the_token_from_the_environment(project, monkeypatch) -> None:
    import uvicorn

    from engine.cli import cli
    from click.testing import CliRunner

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port: seen.update(app=app, host=host))
    monkeypatch.setenv("ENGINE_SERVE_TOKEN", "from-env")
    path = project(WORKFLOW, files=HELPERS)
    result = CliRunner().invoke(cli, ["serve", str(path), "--max-body", "2048"])
    assert result.exit_code == 0, result.output
    with TestClient(seen["app"]) as client:
        assert client.get("/workflows").status_code == 401
        assert client.get("/workflows", headers={"Authorization": "Bearer from-env"}).status_code == 200
        assert client.post("/workflows/greet/run", content=b" " * 3000,
                           headers={"Authorization": "Bearer from-env"}).status_code == 413
