"""`--executor ray` on a local Ray with two raylets (two nodes on this machine): one actor per node
runs the items, work spreads over both, and killing one raylet mid-batch leaves every item done
exactly once (its items retried on the surviving node or taken from the store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pgserve
from echoproject import finished_per_item, project
from engine import Engine
from engine.batch import run_batch

ray = __import__("ray")  # in the dev extra: a missing Ray fails here, never skips
from ray.cluster_utils import Cluster  # noqa: E402

# One worker runs this module and tests/batch/test_ray_executor.py in turn (--dist loadgroup): two
# Ray clusters started at once on 2 cores can miss Ray's fixed raylet timeouts.
pytestmark = [pytest.mark.xdist_group("ray"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                         "ignore::ResourceWarning", "ignore::UserWarning",
                                         "ignore::pytest.PytestUnraisableExceptionWarning")]



@pytest.fixture
def two_nodes():
    """A head raylet and a second raylet on this machine, one CPU each; the driver connected.
    Ray gives a raylet a fixed 30 s to register, which a loaded machine can miss: then again."""
    if ray.is_initialized():
        ray.shutdown()
    for attempt in range(3):
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
            worker = cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
            break
        except Exception:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            if attempt == 2:
                raise
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


def _items(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": f"t{i}"}) + "\n" for i in range(n)))
    return path


def test_one_actor_per_node_spreads_the_items_over_both_nodes(two_nodes, engine_home):
    url = pgserve.fresh_database()
    wf = project(engine_home, url, delay_ms=20)
    n = 40
    items = _items(engine_home / "items.jsonl", n)
    with Engine() as engine:
        summary = run_batch(engine, wf, items, engine_home / "ray.jsonl", concurrency=4, executor="ray",
                            batch_id="spread")
    assert summary.ok == n and summary.failed == 0
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert set(summary.nodes) == nodes and len(nodes) == 2  # both nodes ran items
    assert sum(summary.nodes.values()) == n
    lines = [json.loads(line) for line in (engine_home / "ray.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(n))
    assert [line["outputs"]["text"] for line in lines] == [f"T{i}" for i in range(n)]
    assert finished_per_item(url, "spread") == {i: 1 for i in range(n)}


def test_a_raylet_killed_mid_batch_leaves_every_item_done_exactly_once(two_nodes, engine_home):
    cluster, worker = two_nodes
    url = pgserve.fresh_database()
    wf = project(engine_home, url, delay_ms=200)
    n = 24
    items = _items(engine_home / "items.jsonl", n)
    worker_node = worker.node_id

    class KillOnFirstItem:
        """Kills the second raylet (and its actor) when the first item is recorded: that node then
        has items in flight (the driver keeps several chunks per actor in flight while items are queued)."""

        killed = False

        def start(self, summary):
            pass

        def advance(self, summary, line):
            if not self.killed:
                self.killed = True
                cluster.remove_node(worker, allow_graceful=False)

    with Engine() as engine:
        summary = run_batch(engine, wf, items, engine_home / "out.jsonl", concurrency=2, executor="ray",
                            batch_id="kill", observer=KillOnFirstItem())
    assert summary.ok == n and summary.failed == 0 and not summary.interrupted
    assert summary.retried + summary.recovered >= 1  # the lost node's items went elsewhere
    assert summary.nodes[worker_node] < n and sum(summary.nodes.values()) + summary.recovered == n
    lines = [json.loads(line) for line in (engine_home / "out.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(n))
    assert all(line["status"] == "ok" for line in lines)
    assert finished_per_item(url, "kill") == {i: 1 for i in range(n)}  # none lost, none done twice
