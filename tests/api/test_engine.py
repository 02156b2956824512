"""The embeddable `Engine`: caching, run_many, and concurrency against one store."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine import Engine, InputError
from engine.providers.fake import FakeProvider
from engine.providers.registry import register_provider, unregister_provider
from engine.store import SQLiteStore

WORKFLOW = """\
name: echo
inputs: {n: {type: integer}}
steps:
  - id: double
    inputs: {n: "{{ inputs.n }}"}
    script: helpers.py:double
  - id: label
    inputs: {n: "{{ steps.double.output }}"}
    llm:
      tier: standard
      prompt: "n={{ n }}"
      schema: {type: object, properties: {n: {type: integer}}, required: [n]}
      max_tokens: 10
outputs:
  n: "{{ steps.label.output.n }}"
"""
FILES = {"helpers.py": "def double(n):\n    return n * 2\n"}


@pytest.fixture
def echo() -> FakeProvider:
    """Answers {"n": <the number in the prompt>} after a short sleep, so calls overlap."""

    def respond(request):
        time.sleep(0.002)
        return {"n": int(request.messages[-1]["content"].split("=")[1])}

    provider = FakeProvider(responder=respond)
    register_provider("fake", provider)
    yield provider
    unregister_provider("fake")


def counts(db_path) -> dict[str, int]:
    conn = sqlite3.connect(db_path)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("runs", "steps", "llm_calls")}
    finally:
        conn.close()


def test_workflows_are_cached_by_path_and_name_and_reloaded_when_changed(project, echo):
    path = project(WORKFLOW, files=FILES)
    engine = Engine(store=False)
    first = engine.load(path)
    assert engine.load(str(path)) is first and engine.load("echo") is first
    assert engine.run("echo", {"n": 2}).outputs == {"n": 4}
    path.write_text(WORKFLOW.replace("name: echo", "name: echo2"))
    import os
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert engine.load(path).name == "echo2"
    with pytest.raises(InputError):
        engine.run(path, {"n": "x"})


def test_run_many_keeps_order_and_reports_errors_per_item(project, echo):
    engine = Engine(store=False)
    items = [{"n": i} for i in range(20)] + [{"n": "bad"}, {"m": 1}]
    results = engine.run_many(project(WORKFLOW, files=FILES), items, concurrency=8)
    assert [r.outputs.get("n") for r in results[:20]] == [2 * i for i in range(20)]
    assert [r.status for r in results[20:]] == ["failed", "failed"]
    assert "input 'n'" in results[20].error and "unknown input(s) m" in results[21].error


def test_many_threads_one_store_no_lost_rows(project, echo, tmp_path):
    db = tmp_path / "runs.db"
    engine = Engine(store=db)
    path = project(WORKFLOW, files=FILES)
    barrier = threading.Barrier(16)

    def worker(k: int) -> list[int]:
        barrier.wait()
        return [engine.run(path, {"n": k * 100 + i}).outputs["n"] for i in range(15)]

    with ThreadPoolExecutor(16) as pool:
        outs = [n for chunk in pool.map(worker, range(16)) for n in chunk]
    assert sorted(outs) == sorted(2 * (k * 100 + i) for k in range(16) for i in range(15))
    engine.flush()  # rows are written behind: another connection sees them once flushed
    assert counts(db) == {"runs": 240, "steps": 480, "llm_calls": 240}


def test_many_asyncio_tasks_one_store(project, echo, tmp_path):
    db = tmp_path / "runs.db"
    engine = Engine(store=db, max_workers=32)
    path = project(WORKFLOW, files=FILES)

    async def main() -> list[int]:
        results = await asyncio.gather(*(engine.arun(path, {"n": i}) for i in range(200)))
        many = await engine.arun_many(path, [{"n": i} for i in range(50)], concurrency=16)
        return [r.outputs["n"] for r in [*results, *many]]

    outs = asyncio.run(main())
    assert outs == [2 * i for i in range(200)] + [2 * i for i in range(50)]
    engine.close()  # flushes the written-behind rows
    assert counts(db) == {"runs": 250, "steps": 500, "llm_calls": 250}


def test_two_connections_to_one_file_do_not_lock(project, echo, tmp_path):
    """Separate SQLiteStore objects (separate connections, as separate processes would have)."""
    db = tmp_path / "runs.db"
    engines = [Engine(store=SQLiteStore(db)) for _ in range(3)]
    path = project(WORKFLOW, files=FILES)
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(lambda i: engines[i % 3].run(path, {"n": i}), range(150)))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    for engine in engines:
        engine.close()
    assert counts(db) == {"runs": 150, "steps": 300, "llm_calls": 150}
    rows = SQLiteStore(db).query("SELECT count(*) AS n FROM runs WHERE status = 'ok'")
    assert rows[0]["n"] == 150


@pytest.mark.model
def test_local_model_is_loaded_once_and_shared(project):
    from engine.providers.registry import get_provider

    path = project("""\
        name: yesno
        inputs: {q: {type: string}}
        steps:
          - id: answer
            inputs: {q: "{{ inputs.q }}"}
            llm:
              prompt: "Answer yes or no: {{ q }}"
              schema: {type: object, properties: {a: {enum: ["yes", "no"]}}, required: [a]}
              max_tokens: 12
        """, config="tiers: {local: [{model: 'llamacpp:smollm2', options: {n_ctx: 1024}}]}\n")
    engine = Engine(store=False)
    engine.warm(path)
    provider = get_provider("llamacpp")
    loaded = dict(provider._models)
    results = engine.run_many(path, [{"q": f"is {i} even?"} for i in range(4)], concurrency=4)
    assert all(r.ok for r in results), [r.error for r in results]
    assert provider._models == loaded and len(loaded) >= 1
