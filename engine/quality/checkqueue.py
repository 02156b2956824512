"""Reference checks off the request path, at service speed.

Each `CheckQueue` runs its checks on an asyncio loop of its own (one daemon thread), awaiting the
providers' `acomplete`, at most `check_concurrency` at once, from a bounded queue of
`max_pending` checks (queued plus running). The overflow policy is explicit: a check that finds
the queue full is dropped at once, never waited for, so the request path never blocks on checks;
every drop is counted. Per process and step the figures (checks submitted, dropped, pending, the
queue's peak) are saved to the store's `check_queue` table about once a second and when the queue
drains, so `engine quality` in another process shows them.

One queue per (check_concurrency, max_pending) pair in a process; `drain()` waits for all of them
(the CLI, `Engine.close()` and interpreter exit do).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from engine.providers.calls import ProviderCalls, adrive
from engine.store import quality as quality_store

log = logging.getLogger("engine.quality")
SAVE_EVERY_S = 1.0
PROCESS = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class CheckJob:
    """One reference check to run off the request path."""

    store: Any
    workflow: str
    step_id: str
    calls: Callable[[], ProviderCalls[Any]]
    """Builds the check's provider calls (`engine.quality.cascade.check_calls`)."""
    concurrency: int = 8
    max_pending: int = 1000


@dataclass
class _Counts:
    store: Any
    workflow: str
    step_id: str
    submitted: int = 0
    dropped: int = 0
    pending: int = 0
    peak: int = 0


class CheckQueue:
    """A bounded queue of checks run concurrently on an event loop thread (see the module doc)."""

    def __init__(self, concurrency: int, max_pending: int):
        self.concurrency, self.max_pending = max(1, concurrency), max(1, max_pending)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.pending = 0
        self.peak = 0
        self.submitted = 0
        self.dropped = 0
        self._counts: dict[tuple[int, str, str], _Counts] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._saved_at = 0.0
        self._dirty = False

    def submit(self, job: CheckJob) -> bool:
        """Queue `job`; False (and counted as dropped) when `max_pending` checks are already queued."""
        with self._lock:
            counts = self._counts.get((id(job.store), job.workflow, job.step_id))
            if counts is None:
                counts = self._counts[(id(job.store), job.workflow, job.step_id)] = _Counts(
                    job.store, job.workflow, job.step_id)
            counts.submitted += 1
            self.submitted += 1
            self._dirty = True
            if self.pending >= self.max_pending:
                counts.dropped += 1
                self.dropped += 1
                return False
            self.pending += 1
            counts.pending += 1
            self.peak = max(self.peak, self.pending)
            counts.peak = max(counts.peak, counts.pending)
            loop = self._start_loop()
        loop.call_soon_threadsafe(self._spawn, job, counts)
        return True

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="engine-quality", daemon=True).start()
            self._loop = loop
        return self._loop

    def _spawn(self, job: CheckJob, counts: _Counts) -> None:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.concurrency)
        asyncio.get_running_loop().create_task(self._run(job, counts))

    async def _run(self, job: CheckJob, counts: _Counts) -> None:
        assert self._semaphore is not None
        try:
            async with self._semaphore:
                await adrive(job.calls())
        except Exception:  # noqa: BLE001 - a check never fails a run; what the reference said is logged by it
            log.warning("a quality check of %s/%s failed", job.workflow, job.step_id, exc_info=True)
        finally:
            with self._lock:
                self.pending -= 1
                counts.pending -= 1
                self._dirty = True
                idle = self.pending == 0
                due = idle or time.monotonic() - self._saved_at >= SAVE_EVERY_S
            if due:
                self.save()
            if idle:
                with self._lock:
                    self._idle.notify_all()

    def save(self) -> None:
        """Write this process's figures to each store that queued checks."""
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            self._saved_at = time.monotonic()
            rows: dict[int, tuple[Any, list[dict[str, Any]]]] = {}
            for c in self._counts.values():
                rows.setdefault(id(c.store), (c.store, []))[1].append(
                    {"process": PROCESS, "workflow": c.workflow, "step_id": c.step_id, "submitted": c.submitted,
                     "dropped": c.dropped, "pending": c.pending, "peak": c.peak})
        for store, batch in rows.values():
            try:
                quality_store.save_queue(store, batch)
            except Exception:  # noqa: BLE001 - a closed store: the figures are only lost, never the checks
                log.debug("could not save the check queue's figures", exc_info=True)

    def wait(self, timeout: float | None) -> int:
        """Wait until nothing is pending (or `timeout`); returns what is still pending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self.pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._idle.wait(left)
            pending = self.pending
        self.save()
        return pending

    def figures(self) -> dict[str, int]:
        with self._lock:
            return {"pending": self.pending, "peak": self.peak, "submitted": self.submitted,
                    "dropped": self.dropped, "concurrency": self.concurrency, "max_pending": self.max_pending}


_queues: dict[tuple[int, int], CheckQueue] = {}
_queues_lock = threading.Lock()


def queue_for(concurrency: int, max_pending: int) -> CheckQueue:
    with _queues_lock:
        queue = _queues.get((concurrency, max_pending))
        if queue is None:
            queue = _queues[(concurrency, max_pending)] = CheckQueue(concurrency, max_pending)
        return queue


def submit(job: CheckJob) -> bool:
    """Queue a check off the request path; False when its queue was full (the check is dropped)."""
    return queue_for(job.concurrency, job.max_pending).submit(job)


def drain(timeout: float | None = 120.0) -> int:
    """Wait for every queued check; returns how many were still pending at the timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    left = 0
    with _queues_lock:
        queues = list(_queues.values())
    for queue in queues:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        left += queue.wait(remaining)
    return left


def figures() -> dict[str, int]:
    """This process's check queues, summed: pending, peak, submitted, dropped."""
    with _queues_lock:
        queues = list(_queues.values())
    total = {"pending": 0, "peak": 0, "submitted": 0, "dropped": 0}
    for q in queues:
        f = q.figures()
        for k in total:
            total[k] += f[k]
    return total
