"""`--executor ray`: items as Ray tasks on a local Ray (num_cpus=2), workers writing to a shared
PostgreSQL store; the output file and its order identical to the thread executor's; resume after a
SIGKILL of the whole batch runs every item exactly once; the local tier served by a per-node actor;
a clear error without Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import pgserve
from echoproject import finished_per_item, project
from engine import Engine
from engine.batch import run_batch
from engine.cli import cli
from engine.errors import UserError
from engine.executors.ray import start as start_ray

ray = __import__("ray")  # in the dev extra: a missing Ray fails here, never skips

# Asks xdist (--dist loadgroup) to keep this module on one worker, so that one Ray cluster serves it;
# where its tests still land on two workers, each starts its own (the fixture is module-scoped).
pytestmark = [pytest.mark.xdist_group("ray"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                         "ignore::ResourceWarning", "ignore::UserWarning",
                                         "ignore::pytest.PytestUnraisableExceptionWarning")]



@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (about 4 s to start on an idle machine; Ray gives its raylet
    30 s, which a loaded machine can miss: then once more)."""
    for attempt in range(2):
        try:
            start_ray(None, 2)  # as `--executor ray --workers 2` starts it
            break
        except Exception:
            ray.shutdown()
            if attempt:
                raise
    yield ray
    ray.shutdown()


def test_a_local_ray_runs_its_workers_at_the_drivers_priority(ray_session):
    """Ray's workers run at niceness 15 by default, behind the driver, Ray's daemons and the store's
    server; the Ray the engine starts runs them at the driver's, as the thread executor runs."""

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)
    assert "RAY_worker_niceness" not in os.environ  # set for the start only


def _items(path: Path, n: int) -> Path:
    lines = [json.dumps({"id": f"i{i}", "text": f"item {i}"}) for i in range(n)]
    lines.insert(3, "{not json")  # a bad line stays an error of its own line, in place
    path.write_text("\n".join(lines) + "\n")
    return path


def _strip(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "run_id"} for line in path.read_text().splitlines()]


def test_ray_output_matches_the_thread_executor(ray_session, engine_home):
    url = pgserve.fresh_database()
    wf = project(engine_home, url)
    items = _items(engine_home / "items.jsonl", 12)

    class Seen:
        def __init__(self):
            self.done = []

        def start(self, summary):
            pass

        def advance(self, summary, line):
            self.done.append(summary.done)

    seen = Seen()
    with Engine() as engine:
        threads = run_batch(engine, wf, items, engine_home / "threads.jsonl", concurrency=4, batch_id="t")
        on_ray = run_batch(engine, wf, items, engine_home / "ray.jsonl", concurrency=4, batch_id="r",
                           executor="ray", observer=seen)
    assert threads.ok == on_ray.ok == 12 and threads.failed == on_ray.failed == 1
    assert _strip(engine_home / "ray.jsonl") == _strip(engine_home / "threads.jsonl")
    assert _strip(engine_home / "ray.jsonl")[3]["status"] == "failed"
    assert seen.done == list(range(1, 14))  # the bar advanced once per finished task (and the bad line)
    # the runs were written by the Ray workers (other processes) into the shared Postgres store
    assert finished_per_item(url, "r") == {i: 1 for i in range(13) if i != 3}
    pids = {json.loads(line)["run_id"] for line in (engine_home / "ray.jsonl").read_text().splitlines()[:1]}
    assert pids


def test_ray_batch_sigkilled_midway_then_resumed_runs_every_item_once(ray_session, engine_home):
    url = pgserve.fresh_database()
    wf = project(engine_home, url, delay_ms=300)
    n = 24
    items = engine_home / "items.jsonl"
    items.write_text("".join(json.dumps({"id": i, "text": f"t{i}"}) + "\n" for i in range(n)))
    out = engine_home / "out.jsonl"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "engine"), "run", str(wf), "--inputs", str(items),
                             "--output", str(out), "--executor", "ray", "--batch-id", "k", "-c", "2", "-q",
                             "--address", ray_session.get_runtime_context().gcs_address],  # the module's Ray
                            cwd=engine_home, env=env, start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if out.exists() and len(out.read_text().splitlines()) >= 4:
            break
        if proc.poll() is not None:
            pytest.fail(f"the batch ended before it was killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, mid-batch
    proc.wait()
    time.sleep(2)  # Ray kills a dead driver's workers; a task already past its run finishes it first
    done_before = finished_per_item(url, "k")
    assert 4 <= len(done_before) < n
    with Engine() as engine:
        summary = run_batch(engine, wf, items, out, concurrency=2, resume="k", executor="ray")
    assert summary.resumed == len(done_before) and summary.ok == n
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(n))
    assert finished_per_item(url, "k") == {i: 1 for i in range(n)}  # no item lost or done twice


def test_missing_ray_is_a_clear_error(engine_home, monkeypatch, tmp_path):
    wf = project(engine_home, str(tmp_path / "e.db"))
    items = _items(engine_home / "items.jsonl", 2)
    monkeypatch.setitem(sys.modules, "ray", None)
    with Engine() as engine, pytest.raises(UserError, match=r"pip install 'engine\[ray\]'"):
        run_batch(engine, wf, items, engine_home / "o.jsonl", executor="ray")
    result = CliRunner().invoke(cli, ["run", str(wf), "--inputs", str(items), "--executor", "ray"])
    assert result.exit_code == 2 and "engine[ray]" in result.output
    assert not (engine_home / "o.jsonl").exists()


@pytest.mark.model
def test_local_tier_is_served_by_one_model_actor_per_node(ray_session, engine_home, tmp_path):
    (engine_home / "engine.yaml").write_text(f'store: "{tmp_path / "e.db"}"\nquality: {{sample: 0}}\n')
    (engine_home / "say.yaml").write_text(textwrap.dedent("""\
        name: say
        inputs: {text: {type: string}}
        steps:
          - id: say
            inputs: {text: "{{ inputs.text }}"}
            llm:
              tier: local
              prompt: "Reply with a JSON object with a key word: {{ text }}"
              schema: {type: object}
              max_tokens: 16
              retries: 0
        outputs:
          reply: "{{ steps.say.output }}"
        """))
    items = engine_home / "items.jsonl"
    items.write_text('{"text": "hello"}\n{"text": "bye"}\n')
    with Engine() as engine:
        summary = run_batch(engine, engine_home / "say.yaml", items, engine_home / "o.jsonl", executor="ray")
    assert summary.done == 2
    node = ray.get_runtime_context().get_node_id()
    actor = ray.get_actor(f"engine-local-{node}", namespace="engine")
    assert actor is not None


def test_the_node_workers_are_made_at_start_and_serve_the_next_batches(ray_session, engine_home, tmp_path,
                                                                      monkeypatch):
    """The engine makes a node's worker when it starts or joins Ray (its process and imports overlap
    the driver's set-up) and keeps it for the next batch, which gets a fresh Engine: its own store,
    directory and ENGINE_* variables."""
    from engine.executors import ray as executor

    start_ray(None, 2)
    workers = dict(executor._pool.actors)
    assert set(workers) == {ray.get_runtime_context().get_node_id()}  # one per node, made at start
    first_db, second_db = tmp_path / "first.db", tmp_path / "second.db"
    wf = project(engine_home, str(first_db))
    items = engine_home / "items.jsonl"
    items.write_text("".join(json.dumps({"id": i, "text": f"t{i}"}) + "\n" for i in range(6)))
    with Engine() as engine:
        first = run_batch(engine, wf, items, engine_home / "one.jsonl", concurrency=2, executor="ray", batch_id="a")
    assert executor._pool.actors == workers  # kept, not ended
    other = tmp_path / "other"
    other.mkdir()
    wf2 = project(other, str(second_db))
    monkeypatch.chdir(other)
    with Engine() as engine:
        second = run_batch(engine, wf2, items, other / "two.jsonl", concurrency=3, executor="ray", batch_id="a")
    assert executor._pool.actors == workers  # the same actor ran both batches
    assert first.ok == second.ok == 6
    assert set(first.nodes.values()) == set(second.nodes.values()) == {6}
    # each batch's runs went to its own store, from its own directory's engine.yaml
    assert finished_per_item(str(first_db), "a") == {i: 1 for i in range(6)}
    assert finished_per_item(str(second_db), "a") == {i: 1 for i in range(6)}
    executor.release_workers()
    assert executor._pool.actors == {}
