"""Single-flight for cache misses (engine.cache.flight): threads and asyncio tasks of one process
that miss one exact-cache key at once make one provider call; the others are served its entry."""

from __future__ import annotations

import asyncio
import threading

from engine import Engine

from cache_helpers import label_workflow

N = 8

SLOW_CONFIG = """
tiers:
  local:
    - model: fake:small
      input_price: 0.1
      output_price: 0.2
      options: {delay_ms: 150}
"""


def _run_threads(engine: Engine, wf, inputs: list[dict[str, str]]) -> list:
    results: list = [None] * len(inputs)

    def one(i: int) -> None:
        results[i] = engine.try_run(wf, inputs[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_threads_missing_one_key_make_one_call(project, fake):
    fake.responder = lambda request: {"label": "spam"}
    wf = project(label_workflow(), config=SLOW_CONFIG)
    engine = Engine()
    try:
        results = _run_threads(engine, wf, [{"text": "buy now"}] * N)
    finally:
        engine.close()
    assert len(fake.requests) == 1
    assert [r.outputs for r in results] == [{"label": "spam"}] * N
    served = sorted(r.step("classify").served_by for r in results)
    assert served == ["cache"] * (N - 1) + ["llm"]


def test_asyncio_tasks_missing_one_key_make_one_call(project, fake):
    fake.responder = lambda request: {"label": "ham"}
    wf = project(label_workflow(), config=SLOW_CONFIG)
    engine = Engine()

    async def main() -> list:
        return await asyncio.gather(*(engine.arun(wf, {"text": "see you"}) for _ in range(N)))

    try:
        results = asyncio.run(main())
    finally:
        engine.close()
    assert len(fake.requests) == 1
    assert [r.outputs for r in results] == [{"label": "ham"}] * N


def test_distinct_keys_do_not_wait_on_each_other(project, fake):
    fake.responder = lambda request: {"label": "spam" if "buy" in request.messages[-1]["content"] else "ham"}
    wf = project(label_workflow(), config=SLOW_CONFIG)
    engine = Engine()
    try:
        results = _run_threads(engine, wf, [{"text": f"buy {i}"} for i in range(4)] * 2)
    finally:
        engine.close()
    assert len(fake.requests) == 4  # one per key
    assert all(r.outputs == {"label": "spam"} for r in results)


def test_a_failed_leader_hands_the_key_on_and_steps_without_cache_never_wait(project, fake):
    fake.enqueue("not a label", "still not a label")  # the leader's answers (ask, re-ask) are invalid: it fills nothing
    fake.responder = lambda request: {"label": "spam"}
    wf = project(label_workflow(), config=SLOW_CONFIG)
    engine = Engine()
    try:
        results = _run_threads(engine, wf, [{"text": "buy now"}] * 4)
    finally:
        engine.close()
    ok = [r for r in results if r.ok]
    assert len(ok) == 3 and len(fake.requests) == 3  # the next caller led in turn, and filled the key

    uncached = project(label_workflow(cache=None), name="plain.yaml", config=SLOW_CONFIG)
    before = len(fake.requests)
    engine = Engine()
    try:
        _run_threads(engine, uncached, [{"text": "buy now"}] * 3)
    finally:
        engine.close()
    assert len(fake.requests) - before == 3  # no cache, no flight: every call goes out
