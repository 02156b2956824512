"""One llm step, two ways to wait: the run logic is written once, as a generator that yields each
provider call it needs, and driven either synchronously or on an event loop.

    def steps() -> ProviderCalls[StepOutcome]:        # engine.steps.llm.ask_tiers_calls, ...
        completion = yield provider, request          # an error is thrown back in at the yield
        ...
        return outcome

    drive(steps())          # sync: provider.complete(request)
    await adrive(steps())   # async: await provider.acomplete(request), on the caller's loop

`acomplete(provider, request)` is the one place a provider is awaited: a provider with
`async def acomplete` is awaited directly; one with only `complete` (a sync-only plugin) runs on
a worker thread, so the event loop never blocks on it.

A computation may also yield `(FANOUT, Fanout(...))`: a group of sub-computations to run at the
same time (independent steps, `for_each` items, chunks). `drive` runs them on threads, `adrive`
as tasks on the loop; either way the list of their results comes back, in the group's order.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import inspect
import threading
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from contextvars import ContextVar
from typing import Any, Callable, Generator, Sequence, TypeVar, overload

from engine.providers.base import Completion, CompletionRequest

T = TypeVar("T")
ProviderCalls = Generator[tuple[Any, CompletionRequest], Completion, T]
"""A computation that yields (provider, request) and is sent back the provider's Completion."""


FANOUT: Any = object()
"""Yielded in place of a provider: the request is a `Fanout` and the answer the list of results."""


@dataclass
class Fanout:
    """Sub-computations to run concurrently. `tasks[i]()` makes the i-th computation; it is
    called (started) only once every index in `after[i]` has finished, and at most `limit` run
    at once. A task that raises fails the group: no new task starts, the running ones finish, and
    the first error in task order is raised at the yield. `stop(i, result)` may end the group
    early the same way (no new task starts); the results of tasks never started are None."""

    tasks: Sequence[Callable[..., ProviderCalls[Any]]]
    """Called with no arguments (a lambda's defaults bind the task's own values)."""
    after: list[set[int]] = field(default_factory=list)
    limit: int = 0
    """0: no limit."""
    stop: Callable[[int, Any], bool] | None = None

    def ready(self, done: set[int], started: set[int]) -> list[int]:
        """Every task that may start now, in index order (a full scan: the drivers use `schedule`)."""
        after = self.after or [set()] * len(self.tasks)
        return [i for i in range(len(self.tasks)) if i not in started and after[i] <= done]

    def schedule(self) -> Schedule:
        return Schedule(self)


class IndexedTasks(Sequence[Callable[[], ProviderCalls[Any]]]):
    """`n` tasks made on demand: `tasks[i]()` is `make(i)`. For a fan-out over many items, so
    that no closure per item is built (and kept) before the items run."""

    def __init__(self, make: Callable[[int], ProviderCalls[Any]], n: int):
        self._make, self._n = make, n

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> Callable[[], ProviderCalls[Any]]: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Callable[[], ProviderCalls[Any]]]: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return functools.partial(self._make, i % self._n)


class Schedule:
    """Which of a `Fanout`'s tasks may start, lowest index first. Linear in all: without `after`
    a cursor walks the tasks once; with it, each task counts its unfinished dependencies and
    joins a heap of ready tasks when the count reaches zero."""

    def __init__(self, group: Fanout):
        n = len(group.tasks)
        self._next = 0
        self._n = n
        self._heap: list[int] | None = None
        if group.after:
            self._waiting = [0] * n
            self._dependents: list[list[int]] = [[] for _ in range(n)]
            for i, deps in enumerate(group.after[:n]):
                for d in deps:
                    self._waiting[i] += 1
                    if 0 <= d < n:
                        self._dependents[d].append(i)
            self._heap = [i for i in range(n) if self._waiting[i] == 0]
            heapq.heapify(self._heap)

    def take(self) -> int | None:
        """The lowest-index task that may start now (marked started), or None."""
        if self._heap is None:
            if self._next >= self._n:
                return None
            self._next += 1
            return self._next - 1
        return heapq.heappop(self._heap) if self._heap else None

    def finish(self, i: int) -> None:
        """Task `i` has finished: the tasks waiting only on it may start."""
        if self._heap is None:
            return
        for j in self._dependents[i]:
            self._waiting[j] -= 1
            if self._waiting[j] == 0:
                heapq.heappush(self._heap, j)


def drive(calls: ProviderCalls[T]) -> T:
    """Run `calls`, answering each request with the provider's blocking `complete`."""
    try:
        provider, request = next(calls)
        while True:
            try:
                completion: Any = (provider.complete(request) if provider is not FANOUT
                                   else _drive_fanout(request))  # type: ignore[arg-type]
            except BaseException as e:  # noqa: BLE001 - thrown back in at the yield
                provider, request = calls.throw(e)
            else:
                provider, request = calls.send(completion)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def adrive(calls: ProviderCalls[T]) -> T:
    """Run `calls` on the running event loop, awaiting each provider call (`acomplete`)."""
    try:
        provider, request = next(calls)
        while True:
            try:
                completion: Any = (await acomplete(provider, request) if provider is not FANOUT
                                   else await _adrive_fanout(request))  # type: ignore[arg-type]
            except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - thrown back in at the yield
                provider, request = calls.throw(e)
            else:
                provider, request = calls.send(completion)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


SYNC_EXECUTOR: ContextVar[Executor | None] = ContextVar("engine_sync_executor", default=None)
"""Where sync-only providers run under an event loop (None: the loop's default executor).
`Engine.arun` sets its own pool here (`Engine(max_workers=...)`)."""

_native: dict[type, bool] = {}


def has_acomplete(provider: Any) -> bool:
    """Whether the provider is async-native (its class defines a coroutine `acomplete`)."""
    cls = type(provider)
    native = _native.get(cls)
    if native is None:
        native = _native[cls] = inspect.iscoroutinefunction(getattr(cls, "acomplete", None))
    return native or inspect.iscoroutinefunction(getattr(provider, "acomplete", None))


async def acomplete(provider: Any, request: CompletionRequest) -> Completion:
    """Await one call: `provider.acomplete` when it has one, else `complete` on a worker thread."""
    if has_acomplete(provider):
        return await provider.acomplete(request)  # type: ignore[no-any-return]
    return await asyncio.get_running_loop().run_in_executor(SYNC_EXECUTOR.get(), provider.complete, request)


def _drive_fanout(group: Fanout) -> list[Any]:
    """A `Fanout` on threads. Tasks are started (claimed, up to `limit`) under one lock whenever
    one finishes, as the scan-and-start loop did: every task ready at that moment starts, even if
    another then fails. Workers take claimed tasks and drive them; this thread only waits."""
    n = len(group.tasks)
    results: list[Any] = [None] * n
    errors: dict[int, BaseException] = {}
    schedule = group.schedule()
    limit = group.limit or n
    changed = threading.Condition()
    claimed: deque[int] = deque()
    running = 0  # claimed and not yet finished
    halted = False

    def claim() -> None:  # holding `changed`
        nonlocal running
        while not halted and running < limit:
            i = schedule.take()
            if i is None:
                break
            claimed.append(i)
            running += 1

    def work() -> None:
        nonlocal running, halted
        while True:
            with changed:
                while not claimed:
                    if running == 0:  # nothing runs, so nothing more can start: the group is done
                        changed.notify_all()
                        return
                    changed.wait()
                i = claimed.popleft()
            try:
                result = drive(group.tasks[i]())
                error: BaseException | None = None
            except BaseException as e:  # noqa: BLE001 - raised below, in task order
                result, error = None, e
            with changed:
                running -= 1
                schedule.finish(i)
                if error is not None:
                    errors[i] = error
                    halted = True
                else:
                    results[i] = result
                    if group.stop is not None and group.stop(i, result):
                        halted = True
                claim()
                changed.notify_all()

    claim()
    workers = [threading.Thread(target=work, name=f"engine-fanout-{k}", daemon=True)
               for k in range(max(1, min(limit, n)))]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except BaseException:  # interrupted while waiting: start nothing more
        with changed:
            halted = True
            running -= len(claimed)
            claimed.clear()
            changed.notify_all()
        raise
    if errors:
        raise errors[min(errors)]
    return results


async def _adrive_fanout(group: Fanout) -> list[Any]:
    """A `Fanout` as tasks on the running loop."""
    n = len(group.tasks)
    results: list[Any] = [None] * n
    errors: dict[int, BaseException] = {}
    schedule = group.schedule()
    running: dict[asyncio.Task[Any], int] = {}
    limit = group.limit or n
    halted = False
    try:
        while True:
            while not halted and len(running) < limit:
                i = schedule.take()
                if i is None:
                    break
                running[asyncio.ensure_future(adrive(group.tasks[i]()))] = i
            if not running:
                break
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(finished, key=running.__getitem__):
                i = running.pop(task)
                schedule.finish(i)
                try:
                    results[i] = task.result()
                except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - raised below, in task order
                    errors[i] = e
                    halted = True
                    continue
                if group.stop is not None and group.stop(i, results[i]):
                    halted = True
    except asyncio.CancelledError:
        for task in running:
            task.cancel()
        raise
    if errors:
        raise errors[min(errors)]
    return results


def gather_calls(group: Fanout, *, concurrent: bool = True) -> ProviderCalls[list[Any]]:
    """Run a `Fanout`: concurrently through the driver (yielded), or, with `concurrent=False` or
    a limit of 1, inline on the caller's thread, one task at a time in index order among those
    ready (same results, same error rule)."""
    if concurrent and group.limit != 1 and len(group.tasks) > 1:
        results: list[Any] = yield FANOUT, group  # type: ignore[misc,assignment]
        return results
    out: list[Any] = [None] * len(group.tasks)
    schedule = group.schedule()
    while True:
        i = schedule.take()
        if i is None:
            return out
        out[i] = yield from group.tasks[i]()
        schedule.finish(i)
        if group.stop is not None and group.stop(i, out[i]):
            return out
