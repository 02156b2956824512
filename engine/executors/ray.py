"""The Ray executor of batch runs: `engine run WF --inputs items.jsonl --executor ray [--address ...]`.

    driver (engine.batch)                        one ItemWorker actor per node (with a CPU)
      items ──▶ chunks, to the least-loaded actor ─▶ run_chunk: `Engine.arun` per item on the
      ray.wait ◀── [(index, line, cost, served)] ◀─  actor's event loop, `concurrency` at once,
      ordered output file, progress bar               runs written to the shared store, one flush
                                                      per chunk; llamacpp ──▶ LocalModel actor

- Each worker is an async actor pinned to its node (`ItemWorker`), holding one `Engine` for the
  batch (workflows, providers and store connections reused). The workers are made when the engine
  starts or joins Ray (`start`), so their processes start and import the engine while the driver
  reads the items and opens the store, and they stay up for the driver's next batches (a service
  running batches, a resume) with a fresh `Engine` each; `release_workers()` ends them, and so
  does the driver's exit. It runs the items of the chunks it is
  sent concurrently on the async-native path, at most `concurrency` runs at once (per actor, like
  the thread executor's window in one process); the driver keeps four times that in flight per
  actor (items done wait for their chunk's flush), so an actor never idles between chunks. An
  I/O-bound step (a cloud API) thus runs `concurrency` calls at once per node instead of one per
  Ray task. Chunks that finish while a flush runs share the next one.
- Runs are tagged `{"batch": id, "item": n}` and written by the actors to the store the driver
  uses: the shared PostgreSQL on a cluster (a SQLite file works on one machine). The driver never
  writes runs; it orders the results (same output file and order as the thread executor) and feeds
  the progress bar as chunks finish.
- A lost actor or node (raylet killed, machine gone): the items of its unfinished chunks that have
  a finished run in the store are taken from there; the others go to the surviving actors (a
  retry). With no actor left the batch stops with an error, and `--resume` runs what is left.
  Either way every item is done exactly once. Resume is the store's, unchanged: an item is done
  when its run has finished.
- The local tier (llama.cpp) is a Ray actor per node (`LocalModel`, named
  `engine-local-<node id>`) holding the model; workers on that node send it their local-tier calls,
  so a node loads the model once.
- `address`: an existing cluster (`ray://host:10001` or `auto`); by default a local Ray with
  `workers` CPUs (the machine's CPUs when not given), whose workers run at the driver's priority
  (Ray's default niceness for workers is 15; for a cluster, `RAY_worker_niceness=0 ray start ...`).
The workflow file, its scripts and engine.yaml must be readable at the same paths on every node.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from engine.errors import UserError
from engine.executors.items import BatchItem, result_line, served_labels

_local_proxy_installed = False
WORKER_NICENESS = "RAY_worker_niceness"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'engine[ray]' (or run with --executor threads)") \
            from None
    return ray


def start(address: str | None, workers: int | None) -> Any:
    """Connect to `address`, or start a local Ray with `workers` CPUs (reused when already up)."""
    ray = _ray()
    if ray.is_initialized():
        warm_workers(ray)
        return ray
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False,
                              "log_to_driver": False, "logging_level": "ERROR"}
    if address:
        kwargs["address"] = address
    elif workers:
        # A fresh local Ray with that many CPUs, even where another cluster on this machine left
        # its address behind (Ray would otherwise try to join it, and refuse `num_cpus`).
        kwargs["address"] = "local"
        kwargs["num_cpus"] = workers
    # Ray runs its workers at niceness 15, below the driver, its own daemons and the store's server.
    # An engine worker is the batch's whole work: a Ray started here runs them at the driver's
    # priority, as the thread executor's threads run (RAY_worker_niceness, when set, wins; a
    # cluster started with `ray start` takes it from that command's environment).
    set_niceness = not address and WORKER_NICENESS not in os.environ
    if set_niceness:
        os.environ[WORKER_NICENESS] = str(os.nice(0))
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
    finally:
        if set_niceness:
            os.environ.pop(WORKER_NICENESS, None)
    warm_workers(ray)
    return ray


class LocalModelProxy:
    """Registered as the `llamacpp` provider in Ray workers: calls go to the node's model actor,
    created (or found) on the first call, so a batch that never asks the local tier starts no
    model process."""

    name = "llamacpp"

    def __init__(self, node: str):
        self.node = node
        self._actor: Any = None
        self._lock = threading.Lock()

    def actor(self) -> Any:
        with self._lock:
            if self._actor is None:
                import ray
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                actor_cls = ray.remote(num_cpus=0)(LocalModel)
                self._actor = actor_cls.options(
                    name=f"engine-local-{self.node}", namespace="engine", get_if_exists=True, lifetime="detached",
                    scheduling_strategy=NodeAffinitySchedulingStrategy(self.node, soft=False)).remote()
            return self._actor

    def complete(self, request: Any) -> Any:
        import ray

        return ray.get(self.actor().complete.remote(request))


class LocalModel:
    """Holds the node's llama.cpp provider (its models loaded once); one call at a time."""

    def __init__(self) -> None:
        from engine.providers.llamacpp import LlamaCppProvider

        self.provider = LlamaCppProvider()

    def complete(self, request: Any) -> Any:
        return self.provider.complete(request)


def _install_local_proxy() -> None:
    """In a worker: send local-tier calls to this node's `LocalModel` actor (made on first use)."""
    global _local_proxy_installed
    if _local_proxy_installed:
        return
    import ray

    from engine.providers.registry import register_provider

    register_provider("llamacpp", LocalModelProxy(ray.get_runtime_context().get_node_id()))
    _local_proxy_installed = True


Outcome = tuple[int, dict[str, Any], float, list[str]]
"""(item index, result line, cost, served labels): one item's result, from an actor."""


class ItemWorker:
    """A Ray actor (async, one per node): runs chunks of items, `concurrency` at once, on the
    async-native path, logging their runs to the shared store. Made when the engine starts or
    joins Ray (`warm_workers`) and kept for the driver's later batches: a batch pays for its
    process and the engine's imports only when no worker is up yet."""

    def __init__(self) -> None:
        import engine.api  # noqa: F401 - imported now, while the driver sets up, not with the first chunk
        import ray

        _install_local_proxy()
        self.node = ray.get_runtime_context().get_node_id()
        self.run: Any = None  # the `run_items` call whose job is set up
        self.engine: Any = None
        self.job: dict[str, Any] = {}
        self.env_set: list[str] = []
        self.gate: asyncio.Semaphore | None = None
        self.flushing: asyncio.Lock | None = None
        self.asked = 0  # flushes asked for
        self.covered = 0  # the asks the last finished flush covered

    def node_id(self) -> str:
        return str(self.node)

    def _set_up(self, job: dict[str, Any]) -> None:
        """A batch's job (its store, directory, ENGINE_* variables, concurrency): a fresh `Engine`
        per batch, as a worker made for it would have."""
        from engine.api import Engine

        if self.engine is not None:
            self.engine.close()
        for key in self.env_set:  # the previous batch's variables
            os.environ.pop(key, None)
        for key, value in job["env"].items():
            os.environ[key] = value
        self.env_set = list(job["env"])
        os.chdir(job["cwd"])
        self.job = job
        self.engine = Engine(store=job["store"], max_workers=max(64, job["concurrency"]))
        self.gate = asyncio.Semaphore(max(1, job["concurrency"]))
        self.flushing = asyncio.Lock()
        self.asked = self.covered = 0
        self.run = job["run"]

    async def run_chunk(self, job: dict[str, Any], chunk: list[tuple[int, Any, dict[str, Any]]]) -> list[Outcome]:
        if self.run != job["run"]:
            self._set_up(job)
        gate = self.gate
        assert gate is not None
        wf = self.engine.load(job["workflow"])  # once a chunk, not once an item (a path resolve and a stat)

        async def one(index: int, item_id: Any, inputs: dict[str, Any]) -> Outcome:
            async with gate:
                result = await self.engine.atry_run(wf, inputs,
                                                    tags={"batch": job["batch"], "item": index})
            item = BatchItem(index=index, line=0, id=item_id, inputs=inputs)
            return index, result_line(item, result), result.cost, served_labels(result)

        outcomes = list(await asyncio.gather(*(one(*entry) for entry in chunk)))
        await self.flush()  # the chunk's runs are in the store before the driver counts them done
        return outcomes

    async def flush(self) -> None:
        """Commit every run queued so far. Chunks that finish while a flush runs share the next
        one: a flush that starts after a chunk asked covers its runs."""
        store = self.engine.store_for(self.engine.load(self.job["workflow"]))
        if store is None or self.flushing is None:
            return
        self.asked += 1
        mine = self.asked
        async with self.flushing:
            if self.covered >= mine:
                return
            covering = self.asked
            await asyncio.to_thread(store.flush)
            self.covered = covering


class _Pool:
    """The driver's `ItemWorker`s, one per node, for the Ray it is connected to. A batch takes the
    pool for its run (a second batch running at the same time in this process makes workers of its
    own, and ends them after)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cluster: Any = None  # which Ray connection the actors belong to
        self.actors: dict[str, Any] = {}  # node id -> actor
        self.busy = False

    def _cluster(self, ray: Any) -> Any:
        ctx = ray.get_runtime_context()
        return (ctx.gcs_address, ctx.get_job_id(), ctx.get_node_id())

    def fill(self, ray: Any) -> dict[str, Any]:
        """An actor for each alive node with a CPU (made where missing; actors of a previous Ray
        connection or of nodes gone are dropped). Returns node id -> actor."""
        cluster = self._cluster(ray)
        if cluster != self.cluster:
            self.cluster, self.actors = cluster, {}
        nodes = _nodes(ray)
        self.actors = {node: actor for node, actor in self.actors.items() if node in nodes}
        for node in nodes:
            if node not in self.actors:
                self.actors[node] = _new_worker(ray, node)
        return dict(self.actors)

    def drop(self, actor: Any) -> None:
        self.actors = {node: a for node, a in self.actors.items() if a is not actor}


_pool = _Pool()


def _new_worker(ray: Any, node: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # async actor: `max_concurrency` bounds the chunks it holds at once (the driver keeps at most
    # four times the concurrency in items in flight); the gate bounds the runs
    worker_cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0, max_concurrency=1000)(ItemWorker)
    return worker_cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()


def warm_workers(ray: Any, *, wait: bool = False) -> None:
    """Make the node workers now (their processes start and import the engine while the driver
    reads the items and opens the store), unless a batch holds the pool; `wait`: until each
    answers."""
    with _pool.lock:
        actors = [] if _pool.busy else list(_pool.fill(ray).values())
    if wait and actors:
        ray.get([actor.node_id.remote() for actor in actors])


def release_workers() -> None:
    """End the pooled workers (the next batch makes new ones)."""
    import ray

    with _pool.lock:
        actors, _pool.actors = list(_pool.actors.values()), {}
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone
            pass


@dataclass
class RayStats:
    """What the Ray executor did: items finished per node; of a lost actor's items, those sent to
    another actor (`retried`) and those found finished in the store (`recovered`)."""
    nodes: Counter[str]
    retried: int = 0
    recovered: int = 0
    lost_actors: int = 0


def _nodes(ray: Any) -> list[str]:
    """Alive nodes with at least one CPU (an actor each)."""
    return [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]


def chunk_size(concurrency: int) -> int:
    """Items per chunk: twice an actor's concurrency (at least 1, at most 128). With four times
    the concurrency in flight, two chunks per actor: while one waits for its flush, the other's
    items keep the gate full, and every chunk costs one round trip and one commit (measured on
    2 cores at concurrency 64: chunks of 128 ran 0.75x to 0.93x the threads' rate, chunks of 32
    0.76x to 0.88x, one chunk of 256 in flight 0.70x to 0.75x)."""
    return max(1, min(128, 2 * concurrency))


def run_items(*, workflow_path: str, store_url: str, batch_id: str, todo: list[Any],
              record: Callable[..., None], concurrency: int, should_stop: Callable[[], bool] | None,
              address: str | None, workers: int | None,
              recover: Callable[[list[Any]], set[int]] | None = None, max_retries: int = 2) -> tuple[bool, RayStats]:
    """Run `todo` (engine.batch.BatchItem, all readable) on one `ItemWorker` per node;
    `record(line, cost, served)` for each item as its chunk finishes. `recover(items)` records the
    items that have a finished run in the store and returns their indexes (used for the chunks of a
    lost actor). Returns (stopped early, stats)."""
    ray = start(address, workers)
    env = {k: v for k, v in os.environ.items() if k.startswith("ENGINE_")}
    per_actor = max(1, concurrency)
    job = {"workflow": workflow_path, "store": store_url, "batch": batch_id, "cwd": os.getcwd(), "env": env,
           "concurrency": per_actor, "run": uuid.uuid4().hex}  # `run`: this call (a resume reuses the batch id)
    size = chunk_size(per_actor)
    # items in flight per actor: the runs going on plus those done and waiting for their chunk's
    # flush (a commit takes about as long as a cloud call), so the actor's gate stays full
    window = 4 * per_actor
    with _pool.lock:
        pooled = not _pool.busy  # else another batch of this process holds it: workers of our own
        _pool.busy = True
        node_workers = _pool.fill(ray) if pooled else {node: _new_worker(ray, node) for node in _nodes(ray)}
    try:
        if not node_workers:
            raise UserError("the Ray cluster has no node with a CPU to run the batch's workers")
        return _drive(ray, job, todo, node_workers, size, window, record, should_stop, recover, max_retries)
    except BaseException:  # Ctrl-C, an error: chunks were cut off, so these workers are not reused
        _end(ray, node_workers.values())
        raise
    finally:
        if pooled:
            with _pool.lock:
                _pool.busy = False
        else:
            _end(ray, node_workers.values())


def _drive(ray: Any, job: dict[str, Any], todo: list[Any], workers: dict[str, Any], size: int, window: int,
           record: Callable[..., None], should_stop: Callable[[], bool] | None,
           recover: Callable[[list[Any]], set[int]] | None, max_retries: int) -> tuple[bool, RayStats]:
    """Feed the node `workers` chunks of `todo` until every item is recorded (or the batch stops)."""
    actors: dict[Any, int] = {actor: 0 for actor in workers.values()}  # actor -> items in flight
    node_of = {actor: node for node, actor in workers.items()}
    stats = RayStats(nodes=Counter())
    pending: dict[Any, tuple[Any, list[Any]]] = {}  # ref -> (actor, chunk items)
    queue = list(reversed(todo))
    tries: Counter[int] = Counter()
    stopped = False

    last_error: list[str] = []

    def lost(actor: Any, chunk: list[Any], error: BaseException) -> None:
        last_error[:] = [f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"]
        if actor in actors:
            del actors[actor]
            stats.lost_actors += 1
            with _pool.lock:
                _pool.drop(actor)
        done = recover(chunk) if recover is not None else set()
        stats.recovered += len(done)
        again = [item for item in chunk if item.index not in done]
        for item in again:
            tries[item.index] += 1
        if any(tries[item.index] > max_retries for item in again):
            from engine.api import failed_result

            for item in [i for i in again if tries[i.index] > max_retries]:
                record(result_line(item, failed_result("", "ray: the item's worker was lost "
                                                           f"{max_retries + 1} times")), 0.0, [])
            again = [item for item in again if tries[item.index] <= max_retries]
        stats.retried += len(again)
        queue.extend(reversed(again))  # first in line

    try:
        while queue or pending:
            while queue and actors and not stopped:
                actor = min(actors, key=lambda a: actors[a])
                if actors[actor] >= window:
                    break
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                chunk = [queue.pop() for _ in range(min(size, len(queue)))]
                ref = actor.run_chunk.remote(job, [(item.index, item.id, item.inputs) for item in chunk])
                pending[ref] = (actor, chunk)
                actors[actor] += len(chunk)
            if not pending:
                if queue and not actors:  # every worker lost: --resume runs the rest
                    raise UserError(f"every Ray worker was lost ({last_error[0] if last_error else 'no detail'}); "
                                    "finished items are saved: run again with --resume")
                break
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                actor, chunk = pending.pop(ref)
                try:
                    outcomes = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the actor, its node or the chunk call died
                    lost(actor, chunk, e)
                    continue
                actors[actor] -= len(chunk)
                stats.nodes[node_of[actor]] += len(outcomes)
                for _index, line, cost, served in outcomes:
                    record(line, cost, served)
    except BaseException:  # Ctrl-C, an error: cancel what is in flight; finished items are in the store
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return stopped, stats


def _end(ray: Any, actors: Any) -> None:
    """Kill `actors` (and drop them from the pool)."""
    for actor in list(actors):
        with _pool.lock:
            _pool.drop(actor)
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone
            pass
