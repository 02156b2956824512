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
"""

from __future__ import annotations

import asyncio
import inspect
from concurrent.futures import Executor
from contextvars import ContextVar
from typing import Any, Generator, TypeVar

from engine.providers.base import Completion, CompletionRequest

T = TypeVar("T")
ProviderCalls = Generator[tuple[Any, CompletionRequest], Completion, T]
"""A computation that yields (provider, request) and is sent back the provider's Completion."""


def drive(calls: ProviderCalls[T]) -> T:
    """Run `calls`, answering each request with the provider's blocking `complete`."""
    try:
        provider, request = next(calls)
        while True:
            try:
                completion = provider.complete(request)
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
                completion = await acomplete(provider, request)
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
