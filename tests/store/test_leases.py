"""Advisory leases in the store (engine.store.leases), on SQLite and on a real PostgreSQL: one
holder at a time, across connections; expired leases and leases of dead processes are taken over."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from engine.runner import open_store
from engine.store import leases


@pytest.fixture
def stores(store_url: str):
    """Two stores on one database: two processes' connections."""
    a, b = open_store(store_url), open_store(store_url)
    yield a, b
    a.close()
    b.close()


def test_one_holder_at_a_time_across_connections(stores):
    a, b = stores
    first = leases.try_acquire(a, "batch:x", ttl_s=60)
    assert first is not None
    assert leases.try_acquire(b, "batch:x", ttl_s=60) is None
    assert leases.try_acquire(a, "batch:x", ttl_s=60) is None  # another owner in the same process too
    row = leases.holder(b, "batch:x")
    assert row is not None and row["owner"] == first.owner
    assert leases.try_acquire(b, "batch:y", ttl_s=60) is not None  # other names are free
    assert first.renew()
    first.release()
    assert leases.holder(b, "batch:x") is None
    second = leases.try_acquire(b, "batch:x", ttl_s=60)
    assert second is not None and second.owner != first.owner
    assert not first.renew()  # released: the old owner cannot renew the new owner's lease
    first.release()  # and releasing again leaves the new owner's lease alone
    assert leases.holder(a, "batch:x")["owner"] == second.owner


def test_an_expired_lease_is_taken_over_and_its_old_owner_knows(stores):
    a, b = stores
    stale = leases.try_acquire(a, "key", ttl_s=-1)  # expired from the start: a holder that stopped renewing
    assert stale is not None
    fresh = leases.try_acquire(b, "key", ttl_s=60)
    assert fresh is not None
    assert not stale.renew()
    stale.release()
    assert leases.holder(a, "key")["owner"] == fresh.owner


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(stores):
    a, b = stores
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)
    a.execute("INSERT INTO leases (name, owner, host, pid, acquired_at, expires) VALUES (?, ?, ?, ?, ?, ?)",
              ["batch:z", f"{leases.HOST}:{dead_pid}:gone", leases.HOST, dead_pid, "then", time.time() + 3600])
    taken = leases.try_acquire(b, "batch:z", ttl_s=60)
    assert taken is not None
    # a live holder on another host is never taken over before its lease expires
    a.execute("INSERT INTO leases (name, owner, host, pid, acquired_at, expires) VALUES (?, ?, ?, ?, ?, ?)",
              ["batch:w", "elsewhere:1:x", "elsewhere", 1, "then", time.time() + 3600])
    assert leases.try_acquire(b, "batch:w", ttl_s=60) is None


FLIGHT_WORKFLOW = """\
name: label
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: cloud
      prompt: "Label this: {{ text }}"
      schema: {type: object, properties: {label: {enum: [spam, ham]}}, required: [label], additionalProperties: false}
      max_tokens: 20
      cache: true
outputs:
  label: "{{ steps.classify.output.label }}"
"""


def test_processes_missing_one_key_make_one_call_through_the_store(store_url, engine_home, monkeypatch):
    """Several processes miss the cache on one input at once: the one holding the key's lease
    calls the provider, the others wait for it and are served its entry."""
    import os

    from engine.testing.batch_servers import FakeProviderServer

    with FakeProviderServer(lambda messages, model: {"label": "spam"}, latency_s=2.0) as server:
        (engine_home / "engine.yaml").write_text(
            f"tiers:\n  cloud:\n    - model: openai:gpt-4o-mini\n      options: {{base_url: \"{server.base_url}/v1\"}}\n")
        wf = engine_home / "flight.yaml"
        wf.write_text(FLIGHT_WORKFLOW)
        env = {**os.environ, "ENGINE_DB": store_url, "OPENAI_API_KEY": "sk-test-key-for-the-fake"}
        procs = [subprocess.Popen([sys.executable, "-m", "engine", "run", str(wf), "-i", "text=buy now"],
                                  cwd=engine_home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]
        outs = [p.communicate(timeout=180) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
        assert all('"spam"' in out for out, _ in outs)
        assert server.counters.realtime_calls == 1
    store = open_store(store_url)
    try:
        served = sorted(r["served_by"] for r in store.query("SELECT served_by FROM steps WHERE step_id = 'classify'"))
        assert served == ["cache"] * 3 + ["llm"]
        assert store.query("SELECT * FROM leases") == []  # every lease released
    finally:
        store.close()
