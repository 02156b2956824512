"""Async SDK clients, one per event loop, closed when their loop shuts down.

An `httpx` async connection pool belongs to the loop it was opened on: reused from another loop
its connections fail, and left open when `asyncio.run` ends they leak sockets. So every async SDK
client is built per (loop, settings) and, when the engine built its HTTP client itself, closed by
a small async generator parked on that loop: `asyncio.run` (and any loop shut down with
`shutdown_asyncgens`) finalises it, and its `finally` awaits `client.close()` while the loop still
runs. An injected HTTP client belongs to its owner and is never closed here.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, AsyncGenerator, Callable


async def _closer(client: Any, forget: Callable[[], None]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        forget()  # the generator holds its loop (its finalizer hook): drop the loop's entry
        await client.close()


class LoopClients:
    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, tuple[Any, Any]]] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()

    async def get(self, key: Any, make: Callable[[], Any], *, owned: bool) -> Any:
        """The client for `key` on the running loop, made on first use; `owned`: the engine made
        its HTTP client, so the loop's shutdown closes it."""
        loop = asyncio.get_running_loop()
        clients = self._by_loop.get(loop)
        if clients is None:
            with self._lock:
                clients = self._by_loop.setdefault(loop, {})
        hit = clients.get(key)
        if hit is not None:
            return hit[0]
        client = make()
        keeper = None
        if owned:
            keeper = _closer(client, lambda: self._forget(loop))
            await keeper.__anext__()  # parked: the loop's shutdown_asyncgens closes it
        clients[key] = (client, keeper)  # the loop holds async generators weakly: keep it here
        return client

    def _forget(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._by_loop.pop(loop, None)
