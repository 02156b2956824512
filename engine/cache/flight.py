"""Single-flight for cache misses: callers that miss one exact-cache key at the same time make one
provider call, and the others are served the entry it fills.

    outcome = yield from single_flight(ctx, call, lambda: answer_calls(ctx, call))   # ExactCacheServer.around_calls

`answer_calls` (the cache and other servers, else the tiers; see `engine.steps.llm`) runs for one
caller of a key at a time:

- in this process, through a flight per key: the first caller to miss leads; threads and asyncio
  tasks that miss the same key meanwhile wait for it (a thread blocks, a task awaits: the wait is
  yielded like a provider call, see `engine.providers.calls`), then look the key up again and are
  served the entry it filled;
- across processes, through a lease on the key in the store (`engine.store.leases`): the leader
  holds it while it asks; another process's leader waits until it is released (or expires), then
  looks the key up again.

A key with an entry already in the store (not expired) takes no flight at all: hits never wait
(and a key seen filled once is not looked up again by the flight, only by the cache itself).
When the leader fills nothing (its call failed, or another server answered it), the next waiter
leads in turn. Only steps the exact cache serves take flights, and never in a provider-batch run,
whose batcher already sends identical requests once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextvars import ContextVar
from typing import Any, Callable, TypeVar

from engine.cache import keys
from engine.providers.calls import ProviderCalls
from engine.steps.base import StepContext
from engine.steps.llm import LLMCall
from engine.store import cache as cache_tables
from engine.store import leases

T = TypeVar("T")

LEASE_TTL_S = 120.0
"""A key's lease in the store expires this long after it was taken (a leader that died)."""
POLL_S = 0.05
"""How often a process waiting on another process's lease looks again."""

_leading: ContextVar[frozenset[str]] = ContextVar("engine_flights_leading", default=frozenset())
"""The keys the current thread or task leads (a nested ask of one of them passes through)."""


class _Flight:
    """One key in flight in this process: landed once its leader is done."""

    def __init__(self) -> None:
        self.landed = threading.Event()
        self.lock = threading.Lock()
        self.callbacks: list[Callable[[], None]] = []

    def land(self) -> None:
        with self.lock:
            self.landed.set()
            callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()

    def on_land(self, callback: Callable[[], None]) -> None:
        with self.lock:
            if not self.landed.is_set():
                self.callbacks.append(callback)
                return
        callback()


_flights: dict[str, _Flight] = {}
_flights_lock = threading.Lock()


class _WaitFor:
    """Yielded in place of a provider: waits until the flight lands (blocking the thread in
    `complete`, awaiting on the loop in `acomplete`)."""

    def __init__(self, flight: _Flight):
        self.flight = flight

    def complete(self, request: Any) -> None:
        self.flight.landed.wait()

    async def acomplete(self, request: Any) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not done.done():
                done.set_result(None)

        def wake() -> None:
            loop.call_soon_threadsafe(settle)

        self.flight.on_land(wake)
        await done


class _Pause:
    """Yielded in place of a provider: a short wait between looks at another process's lease."""

    def complete(self, request: Any) -> None:
        time.sleep(POLL_S)

    async def acomplete(self, request: Any) -> None:
        await asyncio.sleep(POLL_S)


def flight_key(ctx: StepContext, call: LLMCall) -> tuple[str, str, float | None] | None:
    """(namespace, input key, ttl) of the call's exact-cache entry, or None: no flight. Asked by the
    exact cache's `around_calls`, so only steps the exact cache serves take flights."""
    if ctx.store is None or ctx.provider_batch is not None:
        return None
    spec = keys.settings(call)
    if not spec.enabled:
        return None
    return keys.namespace(ctx, call, spec), keys.input_key(call, spec), spec.ttl


_filled_keys: dict[str, float] = {}
"""Keys this process saw filled (local key -> the entry's creation time): looked up once, not on
every hit. A key whose caller was not served from the cache after all is forgotten."""
FILLED_KEYS = 65536


def _filled(store: Any, local: str, namespace: str, input_key: str, ttl: float | None) -> bool:
    created = _filled_keys.get(local)
    if created is None:
        row = cache_tables.entry(store, namespace, input_key)
        if row is None:
            return False
        created = float(row["created"] or 0)
        if len(_filled_keys) >= FILLED_KEYS:
            _filled_keys.clear()
        _filled_keys[local] = created
    return ttl is None or time.time() - created <= ttl


def single_flight(ctx: StepContext, call: LLMCall, answer: Callable[[], ProviderCalls[T]]) -> ProviderCalls[T]:
    """`answer()`, run by one caller of the call's exact-cache key at a time (module docstring)."""
    key = flight_key(ctx, call)
    if key is None:
        return (yield from answer())
    namespace, input_key, ttl = key
    name = f"cache:{namespace}:{input_key}"
    local = f"{id(ctx.store)}|{name}"
    leading = _leading.get()
    if local in leading:  # asked again inside its own flight: it must not wait on itself
        return (yield from answer())
    while True:
        if _filled(ctx.store, local, namespace, input_key, ttl):
            outcome = yield from answer()  # a hit: no flight
            if getattr(outcome, "served_by", None) != "cache":  # the entry was gone or refused after all
                _filled_keys.pop(local, None)
            return outcome
        with _flights_lock:
            flight = _flights.get(local)
            lead = flight is None
            if lead:
                flight = _flights[local] = _Flight()
        assert flight is not None
        if not lead:
            yield _WaitFor(flight), None  # type: ignore[misc]
            continue  # look again: served the entry it filled, or lead in turn
        _leading.set(leading | {local})
        try:
            lease = leases.try_acquire(ctx.store, name, ttl_s=LEASE_TTL_S)
            while lease is None:  # another process fills the key
                yield _Pause(), None  # type: ignore[misc]
                if _filled(ctx.store, local, namespace, input_key, ttl):
                    break
                lease = leases.try_acquire(ctx.store, name, ttl_s=LEASE_TTL_S)
            try:
                return (yield from answer())
            finally:
                if lease is not None:
                    lease.release()
        finally:
            _leading.set(leading)
            with _flights_lock:
                _flights.pop(local, None)
            flight.land()
