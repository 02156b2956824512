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
        return TestClient(create_app(Engine(store=tmp_path / "s.db"), [path], **kwargs),
                          base_url="http://localhost"), tmp_path / "s.db"

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
    (b"[" * 100_000 + b"]" * 100_000, 422),
    (b"[" * 65 + b"]" * 65, 422),
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
    with TestClient(seen["app"], base_url="http://localhost") as client:
        assert client.get("/workflows").status_code == 401
        assert client.get("/workflows", headers={"Authorization": "Bearer from-env"}).status_code == 200
        assert client.post("/workflows/greet/run", content=b" " * 3000,
                           headers={"Authorization": "Bearer from-env",
                                    "content-type": "application/json"}).status_code == 413


FOREIGN = "rebound.attacker.example"


def _runs(db) -> int:
    return len(open_store(db).runs()) if db.exists() else 0


@pytest.mark.parametrize("host", [FOREIGN, f"{FOREIGN}:8000", "127.0.0.1.nip.example", "localhost.evil", "",
                                  "localhost:80@rebound.attacker.example", "localhost:x", "[::1]x"])
def test_a_foreign_host_is_refused_before_anything_runs(app_for, host) -> None:
    """DNS rebinding: a page whose name now points at 127.0.0.1 sends its own name as the Host."""
    client, db = app_for()
    with client:
        listed = client.get("/workflows", headers={"host": host})
        ran = client.post("/workflows/greet/run", json={"who": "ada"}, headers={"host": host})
        assert listed.status_code == ran.status_code == 421, ran.text
        assert "does not answer for the host" in ran.json()["detail"]
    assert _runs(db) == 0


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:1234", "[::1]:8000", "[::1]"])
def test_localhost_names_are_answered_on_any_port(app_for, host) -> None:
    client, _ = app_for()
    with client:
        assert client.post("/workflows/greet/run", json={"who": "ada"}, headers={"host": host}).status_code == 200


def test_the_host_allow_list_is_configurable(app_for) -> None:
    client, _ = app_for(allowed_hosts=("api.internal", "10.0.0.7"))
    with client:
        assert client.get("/workflows", headers={"host": "api.internal:8000"}).status_code == 200
        assert client.get("/workflows", headers={"host": "10.0.0.7"}).status_code == 200
        assert client.get("/workflows").status_code == 421


def test_a_request_without_host_is_400() -> None:
    import asyncio

    from engine.http_guard import HostCheck

    async def app(scope, receive, send):  # pragma: no cover - never reached
        raise AssertionError("passed the Host check")

    sent: list = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    asyncio.run(HostCheck(app)({"type": "http", "path": "/workflows", "headers": []}, receive, send))
    assert sent[0]["status"] == 400


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_only_json_bodies_start_runs_or_write_feedback(app_for, content_type) -> None:
    """A page on another site can POST these without a CORS preflight: none may start a run (and
    spend on models) or write a label."""
    client, db = app_for()
    headers = {"content-type": content_type} if content_type else {}
    with client:
        ok = client.post("/workflows/greet/run", json={"who": "ada"})
        assert ok.status_code == 200
        run = client.post("/workflows/greet/run", content=b'{"who": "mallory"}', headers=headers)
        assert run.status_code == 415 and "application/json" in run.json()["detail"]
        empty = client.post("/workflows/greet/run", headers=headers)
        assert empty.status_code == 415
        label = json.dumps({"run_id": ok.json()["run_id"], "step": "hello", "ok": True}).encode()
        feedback = client.post("/feedback", content=label, headers=headers)
        assert feedback.status_code == 415
        json_ok = client.post("/workflows/greet/run", content=b'{"who": "bob"}',
                              headers={"content-type": "Application/JSON; charset=utf-8"})
        assert json_ok.status_code == 200
    assert sorted(r["inputs"]["who"] for r in open_store(db).runs()) == ["ada", "bob"]
    assert open_store(db).query("SELECT COUNT(*) AS n FROM feedback")[0]["n"] == 0


def test_read_only_refuses_feedback(app_for) -> None:
    client, db = app_for(read_only=True)
    with client:
        run = client.post("/workflows/greet/run", json={"who": "ada"})
        assert run.status_code == 200  # workflows still run
        refused = client.post("/feedback", json={"run_id": run.json()["run_id"], "step": "hello", "ok": True})
        assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
    assert open_store(db).query("SELECT COUNT(*) AS n FROM feedback")[0]["n"] == 0


@pytest.mark.parametrize("depth", [65, 3000, 300_000])
def test_deeply_nested_feedback_is_422(app_for, depth) -> None:
    client, db = app_for(max_body=10_000_000)
    with client:
        run = client.post("/workflows/greet/run", json={"who": "ada"}).json()
        body = ('{"run_id": "%s", "step": "hello", "output": ' % run["run_id"]) + "[" * depth + "]" * depth + "}"
        r = client.post("/feedback", content=body.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 422 and "nests deeper than 64 levels" in r.json()["detail"]
    assert open_store(db).query("SELECT COUNT(*) AS n FROM feedback")[0]["n"] == 0


def _serve(monkeypatch, args, env=None):
    import uvicorn

    from click.testing import CliRunner

    from engine.cli import cli

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port: seen.update(app=app, host=host))
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return seen["app"], result.output


def test_serve_allowed_host_option_and_environment(project, monkeypatch) -> None:
    path = project(WORKFLOW, files=HELPERS)
    monkeypatch.delenv("ENGINE_SERVE_ALLOWED_HOSTS", raising=False)
    app, _ = _serve(monkeypatch, ["serve", str(path), "--allowed-host", "api.internal"])
    with TestClient(app, base_url="http://api.internal:8000") as client:
        assert client.get("/workflows").status_code == 200
        assert client.get("/workflows", headers={"host": "localhost"}).status_code == 421
    app, _ = _serve(monkeypatch, ["serve", str(path)], env={"ENGINE_SERVE_ALLOWED_HOSTS": "a.internal, b.internal"})
    with TestClient(app, base_url="http://b.internal") as client:
        assert client.get("/workflows").status_code == 200
        assert client.get("/workflows", headers={"host": FOREIGN}).status_code == 421
    monkeypatch.delenv("ENGINE_SERVE_ALLOWED_HOSTS")
    app, _ = _serve(monkeypatch, ["serve", str(path), "--host", "10.1.2.3"])  # the address listened on
    with TestClient(app, base_url="http://10.1.2.3:8000") as client:
        assert client.get("/workflows").status_code == 200
        assert client.get("/workflows", headers={"host": FOREIGN}).status_code == 421
    app, output = _serve(monkeypatch, ["serve", str(path), "--host", "0.0.0.0"])
    assert "--allowed-host" in output
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/workflows").status_code == 200
        assert client.get("/workflows", headers={"host": FOREIGN}).status_code == 421


@pytest.mark.parametrize("args, env", [(["--allowed-host", "http://api.internal"], {}),
                                       (["--allowed-host", "a b"], {}),
                                       ([], {"ENGINE_SERVE_ALLOWED_HOSTS": "ok.internal,x/y"})])
def test_a_bad_allowed_host_is_one_clear_error(project, monkeypatch, args, env) -> None:
    import uvicorn

    from click.testing import CliRunner

    from engine.cli import cli

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("served despite a bad --allowed-host"))
    monkeypatch.delenv("ENGINE_SERVE_ALLOWED_HOSTS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = project(WORKFLOW, files=HELPERS)
    result = CliRunner().invoke(cli, ["serve", str(path), *args])
    assert result.exit_code == 2, result.output
    assert "is not a host name or IP address" in result.output and "Traceback" not in result.output
    assert ("--allowed-host" if args else "ENGINE_SERVE_ALLOWED_HOSTS") in result.output
