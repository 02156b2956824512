"""`engine serve`'s app: one route per workflow, its inputs in the OpenAPI schema."""

from __future__ import annotations

from fastapi.testclient import TestClient

from engine import Engine
from engine.http import create_app

WORKFLOW = """\
name: greet
description: Say hello.
inputs: {who: {type: string, minLength: 1}}
steps:
  - id: hello
    inputs: {who: "{{ inputs.who }}"}
    script: helpers.py:hello
"""


def test_serve_app_runs_workflows_and_documents_inputs(project, tmp_path):
    path = project(WORKFLOW, files={"helpers.py": "def hello(who):\n    return {'text': 'hi ' + who}\n"})
    app = create_app(Engine(store=tmp_path / "s.db"), [path])
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/workflows").json()[0]["name"] == "greet"
        schema = client.get("/openapi.json").json()
        body = schema["paths"]["/workflows/greet/run"]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["properties"] == {"who": {"type": "string", "minLength": 1}}
        ok = client.post("/workflows/greet/run", json={"who": "ada"}).json()
        assert ok["status"] == "ok" and ok["outputs"] == {"hello": {"text": "hi ada"}} and ok["run_id"]
        bad = client.post("/workflows/greet/run", json={"who": ""})
        assert bad.status_code == 422 and "input 'who'" in bad.json()["detail"]
