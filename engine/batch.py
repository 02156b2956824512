"""Batch runs: one workflow over every line of a JSONL file, N at a time, resumable.

    engine run workflow.yaml --inputs items.jsonl --output results.jsonl --concurrency 8
    engine run workflow.yaml --inputs items.jsonl --output results.jsonl --resume      # after a crash

- Each non-blank input line is one item: a JSON object of inputs. Fields the workflow does not
  declare as inputs (labels, notes) are ignored; the one named by `id_field` ("id") is the item's
  id, echoed in its result.
- The output has exactly one line per item, in input order:
  `{"index": 0, "id": ..., "status": "ok", "outputs": {...}, "run_id": ...}` or
  `{"index": 3, "status": "failed", "error": "...", "run_id": ...}` (bad JSON, bad inputs and
  failed steps are errors of their line; the batch goes on).
- Resumable: every run is tagged `{"batch": id, "item": index}` in the store, and an item is done
  exactly when its run has finished (one UPDATE), so a crash (even SIGKILL) loses nothing and
  `--resume` re-runs only items without a finished run. The output file is rebuilt from the store.
  Runs the crash cut short are marked `interrupted`. One process at a time works on a batch: it
  holds the batch's lease in the store (`engine.store.leases`), and a `--resume` started while
  another process still runs the batch is refused (exit 2).
- Concurrency: up to N runs at once on one event loop (`Engine.arun`): cloud providers' async
  clients see up to N calls at once; llama.cpp (local tier) calls go to the model's dedicated
  worker thread, one at a time.
- Executors: `threads` (above) or `ray` (`--executor ray [--address ...]`: one actor per node
  running chunks of items, N at once each, writing to the shared store; see
  `engine.executors.ray`). Same output file, order and resume semantics.
- Provider batches (`provider_batch=ProviderBatchOptions(...)`, `--provider-batch`): the run goes
  stage-wise, on N worker threads, and the calls that can wait go through the providers' batch
  APIs at the batch rate (see `engine.provider_batch`).
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from engine.api import Engine, failed_result
from engine.errors import UserError
from engine.executors.items import BatchItem, read_items, result_line, served_labels
from engine.runner import RunResult
from engine.spec.models import Workflow
from engine.store import Store, checkpoints, leases
from engine.store.leases import Lease
from engine.store.ledger import Ledger


@dataclass
class BatchSummary:
    batch_id: str
    total: int
    ok: int = 0
    failed: int = 0
    resumed: int = 0
    """Items already done by an earlier attempt (not run again)."""
    cost: float = 0.0
    served: Counter[str] = field(default_factory=Counter)
    """What served the steps: 'llm/<tier>', 'script', 'decision', 'cache', ..."""
    elapsed_s: float = 0.0
    interrupted: bool = False
    provider_batch: Any = None
    """`engine.provider_batch.BatchState` in a provider-batch run: round, stage, batches, fallbacks."""
    nodes: Counter[str] = field(default_factory=Counter)
    """`--executor ray`: items finished per Ray node (by node id)."""
    retried: int = 0
    """`--executor ray`: items sent to another worker after theirs was lost."""
    recovered: int = 0
    """`--executor ray`: items of a lost worker whose runs had finished (taken from the store)."""

    @property
    def done(self) -> int:
        return self.ok + self.failed


class BatchObserver(Protocol):
    def start(self, summary: BatchSummary) -> None: ...

    def advance(self, summary: BatchSummary, line: dict[str, Any]) -> None: ...


class _OrderedWriter:
    """Writes result lines in input order as soon as every earlier line is written."""

    def __init__(self, path: Path, total: int):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = path.open("w", encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write the results to '{path}': {e.strerror or e}") from None
        self.pending: dict[int, dict[str, Any]] = {}
        self.next = 0
        self.total = total
        self.lock = threading.Lock()

    def put(self, line: dict[str, Any]) -> None:
        with self.lock:
            self.pending[line["index"]] = line
            while self.next in self.pending:
                self.file.write(json.dumps(self.pending.pop(self.next), ensure_ascii=False, default=str) + "\n")
                self.next += 1
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _finished_runs(store: Store, batch_id: str) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    for row in checkpoints.finished_runs(store, batch_id):
        done.setdefault(int(row["tags"]["item"]), row)
    return done


LEASE_TTL_S = 60.0
"""A batch run's lease in the store expires this long after its holder stops renewing it."""


def _claim(store: Store, batch_id: str) -> Lease:
    """The lease on a batch run: one process at a time works on it (a second `--resume` while the
    first still runs would run and pay for its items twice). Renewed until released."""
    lease = leases.try_acquire(store, f"batch:{batch_id}", ttl_s=LEASE_TTL_S)
    if lease is None:
        row = leases.holder(store, f"batch:{batch_id}") or {}
        raise UserError(f"batch {batch_id} is being run by another process ({leases.describe(row)}); "
                        "wait for it to finish, or stop it, then resume")
    lease.keep_alive()
    return lease


def _open_batch(store: Store, workflow: Workflow, inputs: Path, output: Path, total: int,
                batch_id: str | None, resume: str | bool) -> tuple[str, bool, Lease]:
    """(batch id, resuming?, the batch's lease). `resume`: False, True (the latest batch of these
    files) or an id."""
    digest = _sha256(inputs)
    if resume:
        if isinstance(resume, str):
            rows = checkpoints.by_id_or_prefix(store, resume)
            if len(rows) != 1:
                raise UserError(f"no batch matches '{resume}'")
            row = rows[0]
        else:
            latest = checkpoints.latest(store, str(inputs), str(output))
            if latest is None:
                raise UserError(f"no earlier batch over {inputs} -> {output} to resume; run without --resume")
            row = latest
        if row["inputs_sha256"] != digest:
            raise UserError(f"batch {row['id']}: {inputs} changed since the batch started; start a new batch")
        if row["workflow"] != workflow.name:
            raise UserError(f"batch {row['id']} ran workflow '{row['workflow']}', not '{workflow.name}'")
        lease = _claim(store, str(row["id"]))  # before its runs are marked: the holder may still run them
        try:
            checkpoints.reopen(store, row["id"])  # runs a crash cut short will never finish: interrupted
        except BaseException:
            lease.release()
            raise
        return str(row["id"]), True, lease
    new_id = batch_id or uuid.uuid4().hex[:12]
    if checkpoints.exists(store, new_id):
        raise UserError(f"batch '{new_id}' exists: resume it with --resume {new_id}")
    checkpoints.create(store, {
        "id": new_id, "workflow": workflow.name, "workflow_path": str(workflow.path or ""),
        "inputs_path": str(inputs), "inputs_sha256": digest, "output_path": str(output), "total": total,
        "status": "running"})
    return new_id, False, _claim(store, new_id)


def _marks_batch(engine: Engine, wf: Workflow) -> bool:
    """Whether any model the workflow may use is marked `batch: true` in its tiers."""
    tiers = (engine.config or wf.config).with_tiers(wf.tiers).tiers
    return any(entry.batch for chain in tiers.values() for entry in chain)


async def _run_items(engine: Engine, wf: Workflow, bid: str, todo: list[BatchItem], concurrency: int,
                     record: Callable[..., None], should_stop: Callable[[], bool] | None,
                     summary: BatchSummary) -> None:
    """Run the items on one event loop, at most `concurrency` at once (async-native runs: provider
    calls are awaited, local-model calls go to the model's worker thread)."""
    window = asyncio.Semaphore(concurrency)

    async def work(item: BatchItem) -> None:
        try:
            if item.error is not None:
                result = failed_result(wf.name, item.error)
            else:
                result = await engine.atry_run(wf, item.inputs, tags={"batch": bid, "item": item.index})
            record(result_line(item, result), result.cost, served_labels(result))
        finally:
            window.release()

    interrupted = False

    def on_sigint() -> None:  # Ctrl-C: start nothing new, let the runs in flight finish and be recorded
        nonlocal interrupted
        interrupted = True

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        handling = True
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals here
        handling = False
    tasks: list[asyncio.Task[None]] = []
    try:
        for item in todo:
            if interrupted or (should_stop is not None and should_stop()):
                summary.interrupted = True
                break
            await window.acquire()
            if interrupted:
                window.release()
                summary.interrupted = True
                break
            tasks.append(asyncio.create_task(work(item)))
        await asyncio.gather(*tasks)
    finally:
        if handling:
            loop.remove_signal_handler(signal.SIGINT)
    if interrupted:
        raise KeyboardInterrupt


def run_batch(engine: Engine, workflow: str | Path | Workflow, inputs: Path, output: Path, *,
              concurrency: int = 8, batch_id: str | None = None, resume: str | bool = False,
              id_field: str = "id", observer: BatchObserver | None = None,
              should_stop: Callable[[], bool] | None = None, provider_batch: Any = None,
              executor: str = "threads", address: str | None = None, workers: int | None = None) -> BatchSummary:
    """Run `workflow` over every line of `inputs`, writing one result line per item to `output`.
    `provider_batch` (`engine.provider_batch.ProviderBatchOptions`) runs it stage-wise with
    provider batch APIs. `executor`: "threads" or "ray" (`address`: an existing Ray cluster;
    `workers`: CPUs of a local Ray)."""
    from engine.executors import EXECUTORS

    if executor not in EXECUTORS:
        raise UserError(f"unknown executor '{executor}' (use {' or '.join(EXECUTORS)})")
    if executor == "ray":
        from engine.executors.ray import start

        start(address, workers)  # a clear error before anything is written when Ray is missing
    wf = engine.load(workflow)
    store = engine.store_for(wf)
    if store is None:
        raise UserError("a batch needs the store (it records which items are done)")
    inputs, output = inputs.resolve(), output.resolve()
    items = read_items(inputs, wf, id_field)
    bid, _resuming, lease = _open_batch(store, wf, inputs, output, len(items), batch_id, resume)
    try:
        return _run_claimed(engine, wf, store, inputs, output, items, bid, _resuming, concurrency=concurrency,
                            observer=observer, should_stop=should_stop, provider_batch=provider_batch,
                            executor=executor, address=address, workers=workers)
    finally:
        lease.release()


def _run_claimed(engine: Engine, wf: Workflow, store: Store, inputs: Path, output: Path, items: list[BatchItem],
                 bid: str, _resuming: bool, *, concurrency: int, observer: BatchObserver | None,
                 should_stop: Callable[[], bool] | None, provider_batch: Any, executor: str, address: str | None,
                 workers: int | None) -> BatchSummary:
    """`run_batch` once the batch is open and this process holds its lease."""
    summary = BatchSummary(batch_id=bid, total=len(items))
    done = _finished_runs(store, bid)
    writer = _OrderedWriter(output, len(items))
    lock = threading.Lock()
    started = time.perf_counter()

    def record(line: dict[str, Any], cost: float, served: list[str], resumed: bool = False) -> None:
        with lock:
            summary.ok += line["status"] == "ok"
            summary.failed += line["status"] != "ok"
            summary.resumed += resumed
            summary.cost += cost
            summary.served.update(served)
            summary.elapsed_s = time.perf_counter() - started
        writer.put(line)
        if observer is not None and not resumed:
            observer.advance(summary, line)

    todo: list[BatchItem] = []
    for item in items:
        row = done.get(item.index)
        if row is None:
            todo.append(item)
            continue
        previous = RunResult(run_id=row["id"], workflow=wf.name, status=row["status"],
                             outputs=row["outputs"] or {}, steps=[], error=row["error"])
        record(result_line(item, previous), 0.0, [], resumed=True)
    if observer is not None:
        observer.start(summary)

    batcher = None
    if executor == "ray" and (provider_batch is not None or _marks_batch(engine, wf)):
        from engine.provider_batch import batch_options

        if batch_options(provider_batch, marked=_marks_batch(engine, wf), resumed=False) is not None:
            raise UserError("provider batches (--provider-batch, batch: true) run with the threads executor, "
                            "not --executor ray")
    if executor != "ray" and (provider_batch is not None or _resuming or _marks_batch(engine, wf)):
        from engine.provider_batch import ProviderBatcher, batch_options

        options = batch_options(provider_batch, marked=_marks_batch(engine, wf),
                                resumed=_resuming and Ledger(store, bid).any_jobs())
        if options is not None:
            on_state = getattr(observer, "status", None)
            batcher = ProviderBatcher(store, bid, options,
                                      on_state=(lambda _state: on_state(summary)) if on_state is not None else None)
            summary.provider_batch = batcher.state

    def work(item: BatchItem) -> None:
        if item.error is not None:
            result = failed_result(wf.name, item.error)
        else:
            result = engine.try_run(wf, item.inputs, tags={"batch": bid, "item": item.index},
                                    provider_batch=batcher)
        record(result_line(item, result), result.cost, served_labels(result))

    try:
        if executor == "ray":
            from engine.executors.ray import run_items

            if wf.path is None:
                raise UserError("--executor ray runs workflows from files (workers load them by path)")
            readable = [item for item in todo if item.error is None]
            for item in todo:
                if item.error is not None:
                    record(result_line(item, failed_result(wf.name, item.error)), 0.0, [])

            def recover(lost: list[BatchItem]) -> set[int]:
                """Items of a lost Ray worker whose runs finished anyway: recorded from the store."""
                rows = _finished_runs(store, bid)
                found = set()
                for item in lost:
                    row = rows.get(item.index)
                    if row is not None:
                        previous = RunResult(run_id=row["id"], workflow=wf.name, status=row["status"],
                                             outputs=row["outputs"] or {}, steps=[], error=row["error"])
                        record(result_line(item, previous), float(row.get("cost") or 0.0), [])
                        found.add(item.index)
                return found

            summary.interrupted, stats = run_items(
                workflow_path=str(wf.path), store_url=getattr(store, "url", None) or str(store.path),  # type: ignore[attr-defined]
                batch_id=bid, todo=readable, record=record, concurrency=concurrency, should_stop=should_stop,
                address=address, workers=workers, recover=recover)
            summary.nodes, summary.retried, summary.recovered = stats.nodes, stats.retried, stats.recovered
        elif batcher is not None:
            from engine.provider_batch import run_stages

            summary.interrupted = run_stages(batcher, todo, work, concurrency=concurrency, should_stop=should_stop)
        else:
            asyncio.run(_run_items(engine, wf, bid, todo, max(1, concurrency), record, should_stop, summary))
    finally:
        writer.close()
        summary.elapsed_s = time.perf_counter() - started
        complete = summary.done == summary.total
        checkpoints.finish(store, bid, "done" if complete else "interrupted")
    return summary
