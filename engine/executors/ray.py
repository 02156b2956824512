"""The Ray executor of batch runs: `engine run WF --inputs items.jsonl --executor ray [--address ...]`.

    driver (engine.batch)                       Ray workers (one per CPU, any node)
      items ──▶ one task per item  ──────────▶  _run_item: a cached Engine per worker process
      ray.wait ◀── (line, cost, served) ◀──────  runs the item, writes its run to the shared store
      ordered output file, progress bar          llamacpp calls ──▶ LocalModel actor of the node

- Items become Ray tasks, at most `concurrency` in flight. Each worker process keeps one `Engine`
  (workflows, providers, store connections reused across tasks) and writes runs tagged
  `{"batch": id, "item": n}` to the store the driver uses: the shared PostgreSQL on a cluster
  (a SQLite file works on one machine). The driver never writes runs; it orders the results
  (same output file and order as the thread executor) and feeds the progress bar as tasks finish.
- Resume is the store's, unchanged: an item is done when its run has finished. A killed driver
  (or worker) loses only unfinished items, which `--resume` runs again.
- The local tier (llama.cpp) is a Ray actor per node (`LocalModel`, named
  `engine-local-<node id>`) holding the model; workers on that node send it their local-tier calls,
  so a node loads the model once instead of once per worker.
- `address`: an existing cluster (`ray://host:10001` or `auto`); by default a local Ray with
  `workers` CPUs (the machine's CPUs when not given).
The workflow file, its scripts and engine.yaml must be readable at the same paths on every node.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from engine.errors import UserError
from engine.executors.items import BatchItem, result_line, served_labels

_engine: Any = None
"""The worker process's Engine (one per Ray worker process, reused by every task)."""
_local_proxy_installed = False


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
        return ray
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False,
                              "log_to_driver": False, "logging_level": "ERROR"}
    if address:
        kwargs["address"] = address
    elif workers:
        kwargs["num_cpus"] = workers
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
    return ray


class LocalModelProxy:
    """Registered as the `llamacpp` provider in Ray workers: calls go to the node's model actor."""

    name = "llamacpp"

    def __init__(self, actor: Any):
        self.actor = actor

    def complete(self, request: Any) -> Any:
        import ray

        return ray.get(self.actor.complete.remote(request))


class LocalModel:
    """Holds the node's llama.cpp provider (its models loaded once); one call at a time."""

    def __init__(self) -> None:
        from engine.providers.llamacpp import LlamaCppProvider

        self.provider = LlamaCppProvider()

    def complete(self, request: Any) -> Any:
        return self.provider.complete(request)


def _install_local_proxy() -> None:
    """In a worker: send local-tier calls to this node's `LocalModel` actor (created on first use)."""
    global _local_proxy_installed
    if _local_proxy_installed:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from engine.providers.registry import register_provider

    node = ray.get_runtime_context().get_node_id()
    actor_cls = ray.remote(num_cpus=0)(LocalModel)
    actor = actor_cls.options(name=f"engine-local-{node}", namespace="engine", get_if_exists=True,
                              lifetime="detached",
                              scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
    register_provider("llamacpp", LocalModelProxy(actor))
    _local_proxy_installed = True


def _run_item(job: dict[str, Any], index: int, item_id: Any, inputs: dict[str, Any]) -> tuple[dict[str, Any], float,
                                                                                           list[str]]:
    """One item, in a Ray worker: run it (logging to the shared store) and return its result line."""
    global _engine
    from engine.api import Engine

    if _engine is None:
        for key, value in job["env"].items():
            os.environ[key] = value
        os.chdir(job["cwd"])
        _install_local_proxy()
        _engine = Engine(store=job["store"])
    result = _engine.try_run(job["workflow"], inputs, tags={"batch": job["batch"], "item": index})
    store = _engine.store_for(_engine.load(job["workflow"]))
    if store is not None:
        store.flush()  # the run is in the store before the driver counts the item done
    item = BatchItem(index=index, line=0, id=item_id, inputs=inputs)
    return result_line(item, result), result.cost, served_labels(result)


def run_items(*, workflow_path: str, store_url: str, batch_id: str, todo: list[Any],
              record: Callable[..., None], concurrency: int, should_stop: Callable[[], bool] | None,
              address: str | None, workers: int | None) -> bool:
    """Run `todo` (engine.batch.BatchItem, all readable) as Ray tasks; `record(line, cost, served)`
    for each as it finishes. Returns True when stopped early (should_stop, Ctrl-C)."""
    ray = start(address, workers)
    task = ray.remote(num_cpus=1, max_retries=0)(_run_item)
    env = {k: v for k, v in os.environ.items() if k.startswith("ENGINE_")}
    job = ray.put({"workflow": workflow_path, "store": store_url, "batch": batch_id, "cwd": os.getcwd(),
                   "env": env})
    window = max(1, concurrency)
    pending: dict[Any, Any] = {}
    queue = list(reversed(todo))
    stopped = False
    try:
        while queue or pending:
            while queue and len(pending) < window and not stopped:
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                item = queue.pop()
                pending[task.remote(job, item.index, item.id, item.inputs)] = item
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                item = pending.pop(ref)
                try:
                    line, cost, served = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a worker died or the task raised: the item failed
                    from engine.api import failed_result

                    line, cost, served = result_line(item, failed_result("", f"ray task failed: {e}")), 0.0, []
                record(line, cost, served)
    except KeyboardInterrupt:  # Ctrl-C: cancel what is in flight; finished items are in the store
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return stopped
