"""`engine serve --workers 3` against one store, SQLite or PostgreSQL: requests spread over the
worker processes, every run logged (no lost rows, no "database is locked")."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from engine.runner import open_store

WORKFLOW = """\
name: greet
inputs: {who: {type: string, minLength: 1}}
steps:
  - id: hello
    inputs: {who: "{{ inputs.who }}"}
    script: helpers.py:hello
outputs:
  pid: "{{ steps.hello.output.pid }}"
"""
HELPERS = "import os\ndef hello(who):\n    return {'text': 'hi ' + who, 'pid': os.getpid()}\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_workers_share_one_store(store_url, engine_home, tmp_path):
    (engine_home / "engine.yaml").write_text(f'store: "{store_url}"\nquality: {{sample: 0}}\n')
    (engine_home / "helpers.py").write_text(HELPERS)
    (engine_home / "greet.yaml").write_text(WORKFLOW)
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "engine"), "serve", "greet.yaml", "--workers", "3",
                             "--port", str(port)], cwd=engine_home, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"}, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/workflows", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.3)

        def post(i: int) -> httpx.Response:
            with httpx.Client(timeout=60) as client:
                return client.post(f"{base}/workflows/greet/run", json={"who": f"w{i}"})

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(post, range(240)))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # uvicorn shuts its workers down; each flushes its queue
        proc.wait(timeout=60)
        log.close()
    assert [r.status_code for r in replies] == [200] * 240
    pids = {r.json()["outputs"]["pid"] for r in replies}
    assert len(pids) >= 2  # served by several worker processes
    text = (tmp_path / "serve.log").read_text()
    assert "locked" not in text, text[-3000:]
    store = open_store(store_url)
    assert store.query("SELECT COUNT(*) AS n FROM runs WHERE status = 'ok'")[0]["n"] == 240
    assert store.query("SELECT COUNT(*) AS n FROM steps")[0]["n"] == 240
    ids = {r.json()["run_id"] for r in replies}
    assert len(ids) == 240
