"""Stage-wise execution of a batch run: items run until they wait on a provider batch; when no
item can run any more, one round of provider batches goes out.

Each item runs in its own thread, through the same runner as a real-time run: scripts,
decisions, caches, promoted lookups and artifacts answer first; local and other real-time models
answer at once (at most `concurrency` items run at a time; a parked item gives its slot up).
Only the calls a `ProviderBatcher` routes park their item. When every started item is finished
or parked, `ProviderBatcher.run_round` submits and waits; then the woken items go on to their
next step, or park again on a re-ask, an escalation or a later llm step (the next round).

At most `window` items are in flight at once (threads parked on a round), so very large inputs go
out in successive waves of provider batches of up to `window` requests per step.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

from engine.provider_batch.batcher import BatchAborted, ProviderBatcher

WINDOW = 4096
"""Items in flight at once (each parked item holds a thread)."""


def run_stages(batcher: ProviderBatcher, items: Iterable[Any], work: Callable[[Any], None], *,
               concurrency: int = 8, window: int | None = None, index: Callable[[Any], int] = lambda i: i.index,
               should_stop: Callable[[], bool] | None = None) -> bool:
    """Run `work(item)` for every item, stage-wise (see the module docstring). Returns True when
    it stopped early (`should_stop`); Ctrl-C aborts the parked items and re-raises."""
    window = window or WINDOW
    batcher.slots = threading.Semaphore(max(1, concurrency))
    batcher.resume_jobs()
    pending = iter(items)
    remaining = True
    stopped = False
    threads: list[threading.Thread] = []

    def body(item: Any) -> None:
        batcher.enter(index(item))
        try:
            work(item)
        except BatchAborted:
            pass  # the run stays unfinished: --resume runs the item again
        finally:
            batcher.leave()

    def room() -> bool:
        return remaining and not stopped and batcher.in_flight < window

    try:
        while True:
            if should_stop is not None and not stopped and should_stop():
                stopped = True
            with batcher.cond:
                while room():
                    item = next(pending, None)
                    if item is None:
                        remaining = False
                        break
                    batcher.in_flight += 1
                    batcher.runnable += 1
                    thread = threading.Thread(target=body, args=(item,), name=f"batch-item-{index(item)}", daemon=True)
                    threads.append(thread)
                    thread.start()
                batcher.cond.wait_for(lambda: batcher.runnable == 0 or room(), timeout=0.5)
                if room():
                    continue  # fill the window before a round: fewer, fuller provider batches
                quiet = batcher.runnable == 0
                idle = batcher.in_flight == 0
            if not quiet:
                continue
            if stopped:
                batcher.abort()
                if idle:
                    break
                continue
            if batcher.has_work():
                batcher.run_round()
            elif idle and not remaining:
                break
    except BaseException:
        batcher.abort()
        raise
    finally:
        for thread in threads:
            thread.join()
    return stopped
