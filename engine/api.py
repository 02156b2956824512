"""The embeddable runner: an `Engine` is configured once and reused by a service.

    engine = Engine()                                  # or Engine(config=..., store="runs.db")
    engine.load("workflows/triage.yaml")               # loaded, validated, cached (by path and name)
    result = engine.run("support_triage", {"ticket": "my card is lost"})
    result = await engine.arun("support_triage", {...})          # from asyncio code
    results = engine.run_many("support_triage", items, concurrency=8)   # in order

- Workflows are loaded once and cached; a changed file is reloaded on next use.
- Thread-safe and asyncio-safe: `run` may be called from many threads at once; `arun` runs on the
  caller's event loop (provider calls are awaited: the SDKs' async clients for cloud tiers, a
  dedicated worker thread per local model, a worker thread for sync-only plugins), so thousands
  of runs overlap on one loop.
- One store per file per process (one connection behind a lock; WAL and a busy timeout between
  processes), so concurrent runs never lose rows or fail with "database is locked". Log rows are
  written behind by one thread per store; `close()` flushes them (so do exit and SIGTERM).
- Providers are process-wide singletons: the local model is loaded once (`warm` loads it up
  front) and shared; llama.cpp calls are serialized per model, cloud providers run concurrently.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

from engine.config import EngineConfig
from engine.errors import EngineError, UserError
from engine.providers.calls import SYNC_EXECUTOR
from engine.providers.registry import get_provider
from engine.runner import RunResult, arun_workflow, open_store, run_workflow
from engine.serving import Server
from engine.spec.loader import load_workflow
from engine.spec.models import Workflow
from engine.store import Store
from engine.store.writer import flush_all

WorkflowRef = str | Path | Workflow | dict[str, Any]


def failed_result(workflow: str, error: BaseException | str) -> RunResult:
    """A failed `RunResult` for an item that never started (bad inputs, unknown workflow)."""
    return RunResult(run_id="", workflow=workflow, status="failed", outputs={}, steps=[], error=str(error))


class Engine:
    """A configured, reusable runner (see the module docstring)."""

    def __init__(self, *, config: EngineConfig | None = None, store: str | Path | Store | bool | None = True,
                 servers: list[Server] | None = None, max_workers: int = 64):
        """`config`: tiers and store for every workflow (default: looked up per workflow, as the
        CLI does). `store`: True = the configured store, a path, a postgresql:// URL or a `Store`, or
        False/None to log nothing. `servers`: answer llm steps before the tiers (default: each
        workflow's `default_servers`). `max_workers`: the thread pool on which `arun` runs the
        calls of sync-only providers (async-native ones are awaited on the loop)."""
        self.config = config
        self.servers = servers
        self._store: Store | bool | None = (
            open_store(store) if isinstance(store, (str, Path)) else store)
        self._workflows: dict[Path, tuple[int, Workflow]] = {}
        self._by_name: dict[str, Path | Workflow] = {}
        self._lock = threading.RLock()
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="engine")

    # --- workflows ------------------------------------------------------------------------------

    def load(self, source: WorkflowRef) -> Workflow:
        """Load (or fetch from the cache) a workflow by path, dict or object; it can then be run
        by its name too. A file that changed since it was loaded is reloaded."""
        if isinstance(source, Workflow):
            with self._lock:
                self._by_name[source.name] = source
            return source
        if isinstance(source, dict):
            wf = load_workflow(source, config=self.config)
            with self._lock:
                self._by_name[wf.name] = wf
            return wf
        if isinstance(source, str) and source in self._by_name and not Path(source).is_file():
            named = self._by_name[source]
            return named if isinstance(named, Workflow) else self.load(named)
        path = Path(source).resolve()
        with self._lock:
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                known = ", ".join(sorted(self._by_name)) or "none loaded"
                raise UserError(f"no workflow file or loaded workflow named '{source}' (loaded: {known})") from None
            cached = self._workflows.get(path)
            if cached is None or cached[0] != mtime:
                cached = (mtime, load_workflow(path, config=self.config))
                self._workflows[path] = cached
                self._by_name[cached[1].name] = path
            return cached[1]

    workflow = load

    def store_for(self, workflow: Workflow) -> Store | None:
        """The store runs of `workflow` are logged to."""
        if self._store is True:
            config = self.config or workflow.config
            return open_store(config.store_url())
        return self._store or None

    def warm(self, workflow: WorkflowRef) -> None:
        """Load every local (llama.cpp) model the workflow's tiers use, once, up front."""
        wf = self.load(workflow)
        config = (self.config or wf.config).with_tiers(wf.tiers)
        from engine.quality.spec import resolve_policy

        tiers = {t for s in wf.steps if s.llm is not None for t in resolve_policy(s.llm, config).chain}
        for tier in sorted(tiers):
            for entry in config.chain(tier):
                if entry.provider == "llamacpp":
                    get_provider("llamacpp").load(entry.model_name, entry.options)  # type: ignore[attr-defined]

    # --- runs -----------------------------------------------------------------------------------

    def run(self, workflow: WorkflowRef, inputs: dict[str, Any] | None = None, *,
            tags: dict[str, Any] | None = None, raise_on_error: bool = False,
            tenant: str | None = None, provider_batch: Any = None) -> RunResult:
        """Run once. By default a failed run comes back with status 'failed' (and bad inputs
        raise `InputError`); with `raise_on_error` a failed step raises its `StepError`.
        `tenant`: cached answers are never shared across tenants (see `run_workflow`)."""
        wf = self.load(workflow)
        return run_workflow(wf, inputs, config=self.config, store=self.store_for(wf), tags=tags,
                            raise_on_error=raise_on_error, servers=self.servers, tenant=tenant,
                            provider_batch=provider_batch)

    async def arun(self, workflow: WorkflowRef, inputs: dict[str, Any] | None = None, *,
                   tags: dict[str, Any] | None = None, raise_on_error: bool = False,
                   tenant: str | None = None) -> RunResult:
        """`run` on the caller's event loop (see `arun_workflow`): safe to await from many tasks."""
        wf = self.load(workflow)
        token = SYNC_EXECUTOR.set(self._executor)  # sync-only providers run on this engine's pool
        try:
            return await arun_workflow(wf, inputs, config=self.config, store=self.store_for(wf), tags=tags,
                                       raise_on_error=raise_on_error, servers=self.servers, tenant=tenant)
        finally:
            SYNC_EXECUTOR.reset(token)

    def run_many(self, workflow: WorkflowRef, items: Iterable[dict[str, Any]], *, concurrency: int = 8,
                 tags: dict[str, Any] | None = None) -> list[RunResult]:
        """Run every item (at most `concurrency` at once); results in input order. An item that
        fails, bad inputs included, gives a failed result; it never stops the others."""
        wf = self.load(workflow)
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="engine-many") as pool:
            return list(pool.map(lambda item: self.try_run(wf, item, tags=tags), items))

    async def arun_many(self, workflow: WorkflowRef, items: Iterable[dict[str, Any]], *, concurrency: int = 8,
                        tags: dict[str, Any] | None = None) -> list[RunResult]:
        wf = self.load(workflow)
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(item: dict[str, Any]) -> RunResult:
            async with gate:
                return await self.atry_run(wf, item, tags=tags)

        return list(await asyncio.gather(*(one(item) for item in items)))

    def try_run(self, workflow: WorkflowRef, inputs: dict[str, Any] | None, *,
                tags: dict[str, Any] | None = None, provider_batch: Any = None) -> RunResult:
        """`run` that never raises for one item: errors come back as a failed result."""
        name = workflow.name if isinstance(workflow, Workflow) else str(workflow)
        try:
            return self.run(workflow, inputs, tags=tags, provider_batch=provider_batch)
        except EngineError as e:
            return failed_result(name, e)
        except Exception as e:  # noqa: BLE001 - one bad item must not sink the rest
            return failed_result(name, f"internal error: {type(e).__name__}: {e}")

    async def atry_run(self, workflow: WorkflowRef, inputs: dict[str, Any] | None, *,
                       tags: dict[str, Any] | None = None) -> RunResult:
        """`arun` that never raises for one item: errors come back as a failed result."""
        name = workflow.name if isinstance(workflow, Workflow) else str(workflow)
        try:
            return await self.arun(workflow, inputs, tags=tags)
        except EngineError as e:
            return failed_result(name, e)
        except Exception as e:  # noqa: BLE001 - one bad item must not sink the rest
            return failed_result(name, f"internal error: {type(e).__name__}: {e}")

    # --- lifecycle ------------------------------------------------------------------------------

    def feedback(self, run_id: str, step: str, *, ok: bool = False, output: Any = None,
                 workflow: WorkflowRef | None = None) -> dict[str, Any]:
        """A person's verdict on the answer a run's llm step served: `ok=True` confirms it,
        `output=` gives the right answer (checked against the step's schema). Labels outrank
        every tier. Raises `FeedbackError` (a `UserError`) and writes nothing when the run or
        step is unknown or the output fails the schema."""
        from engine.quality.feedback import FeedbackError, give_feedback

        if workflow is not None:
            stores = [self.store_for(self.load(workflow))]
        elif self._store not in (True, False, None):
            stores = [self._store]  # type: ignore[list-item]
        elif self._store is True:  # the run is in the store of one of the loaded workflows
            from engine.config import load_config

            with self._lock:
                named = list(self._by_name.values())
            stores = [self.store_for(w if isinstance(w, Workflow) else self.load(w)) for w in named]
            stores.append(open_store((self.config or load_config()).store_url()))
        else:
            stores = []
        found: list[Store] = [s for s in stores if s is not None]
        if not found:
            raise FeedbackError("this engine logs nothing (store=False): there are no runs to give feedback on")
        store = next((s for s in found if s.run(run_id) is not None), found[0])
        return give_feedback(store, run_id, step, ok=ok, output=output, source="api")

    def flush(self) -> None:
        """Commit every queued log row of every store (see `engine.store.writer`)."""
        flush_all()

    def close(self) -> None:
        """Finish runs in flight and the quality checks they queued, then flush the store's
        queued writes."""
        from engine.quality.monitor import drain

        self._executor.shutdown(wait=True)
        drain()
        flush_all()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
