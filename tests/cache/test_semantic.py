"""The semantic cache: threshold boundaries, the margin safeguard, similarity recorded, tenants,
only the dynamic input embedded, and two threads filling one store at once."""

from __future__ import annotations

import math
import threading

import pytest

from engine import run_workflow
from engine.cache import cache_store
from engine.config import load_config
from engine.errors import ProviderUnavailableError
from engine.runner import open_store

from cache_helpers import label_workflow, labeller

SEMANTIC = "        semantic: {{threshold: {t}, margin: {m}, embedder: vectors}}\n"


def semantic_workflow(threshold: float = 0.75, margin: float = 0.0) -> str:
    return label_workflow(cache=SEMANTIC.format(t=threshold, m=margin))


def at(cosine: float) -> list[float]:
    """A vector with the given cosine to [1, 0, 0]."""
    return [cosine, math.sqrt(1 - cosine * cosine), 0.0]


def store():
    return open_store(load_config().store_path())


def test_hit_records_similarity_and_source_entry(project, fake, vectors):
    embedder = vectors({"win a prize": [1.0, 0.0, 0.0], "you won a prize": at(0.875)})
    fake.enqueue({"label": "spam"})
    wf = project(semantic_workflow(threshold=0.8))
    first = run_workflow(wf, {"text": "win a prize"})
    near = run_workflow(wf, {"text": "you won a prize"})
    step = near.step("classify")
    assert near.outputs == {"label": "spam"} and len(fake.requests) == 1
    assert step.served_by == "cache" and step.tokens_in == 0
    assert step.cache["kind"] == "semantic"
    assert step.cache["similarity"] == pytest.approx(0.875)
    assert step.cache["entry_text"] == "win a prize"
    event = store().query("SELECT * FROM cache_events WHERE run_id = ? AND kind = 'semantic'", [near.run_id])[0]
    assert event["outcome"] == "hit" and event["similarity"] == pytest.approx(0.875)
    entry = store().query("SELECT run_id, text FROM cache_entries WHERE id = ?", [event["entry_id"]])[0]
    assert entry == {"run_id": first.run_id, "text": "win a prize"}
    assert embedder.seen == ["win a prize", "you won a prize"]  # only the dynamic input, never the prompt


@pytest.mark.parametrize("threshold, served_by", [(0.75, "cache"), (0.7500001, "llm"), (0.74, "cache")])
def test_threshold_boundary_is_inclusive(project, fake, vectors, threshold, served_by):
    vectors({"a": [1.0, 0.0, 0.0], "b": at(0.75)})
    fake.enqueue({"label": "spam"}, {"label": "ham"})
    wf = project(semantic_workflow(threshold=threshold))
    run_workflow(wf, {"text": "a"})
    assert run_workflow(wf, {"text": "b"}).step("classify").served_by == served_by


def test_below_threshold_miss_records_best_similarity(project, fake, vectors):
    vectors({"a": [1.0, 0.0, 0.0], "b": at(0.5)})
    fake.enqueue({"label": "spam"}, {"label": "ham"})
    wf = project(semantic_workflow(threshold=0.75))
    run_workflow(wf, {"text": "a"})
    miss = run_workflow(wf, {"text": "b"})
    event = store().query("SELECT * FROM cache_events WHERE run_id = ? AND kind = 'semantic'", [miss.run_id])[0]
    assert event["outcome"] == "miss" and event["similarity"] == pytest.approx(0.5)


def test_margin_refuses_when_a_different_answer_is_close(project, fake, vectors):
    # q is 0.9 from "spam-ish" and 0.87 from "ham-ish": too close to call with margin 0.05
    vectors({"spam-ish": [1.0, 0.0, 0.0], "ham-ish": [0.0, 1.0, 0.0], "q": [0.9, 0.87, 0.0],
             "far": [0.0, 0.0, 1.0]})
    fake.responder = labeller({"spam-ish": "spam", "ham-ish": "ham", "q": "ham", "far": "ham"})
    wf = project(semantic_workflow(threshold=0.8, margin=0.05))
    run_workflow(wf, {"text": "spam-ish"})
    run_workflow(wf, {"text": "ham-ish"})
    assert run_workflow(wf, {"text": "q"}).step("classify").served_by == "llm"
    plain = project(semantic_workflow(threshold=0.8, margin=0.0), name="plain.yaml")
    run_workflow(plain, {"text": "spam-ish"}, tenant="t2")  # a fresh namespace
    run_workflow(plain, {"text": "ham-ish"}, tenant="t2")
    served = run_workflow(plain, {"text": "q"}, tenant="t2")  # without the margin: the nearest, "spam" (wrong)
    assert served.step("classify").served_by == "cache" and served.outputs == {"label": "spam"}


def test_semantic_namespaces_isolate_tenants(project, fake, vectors):
    vectors({"a": [1.0, 0.0, 0.0], "b": at(0.99)})
    fake.enqueue({"label": "spam"}, {"label": "ham"})
    wf = project(semantic_workflow(threshold=0.9))
    run_workflow(wf, {"text": "a"}, tenant="acme")
    other = run_workflow(wf, {"text": "b"}, tenant="globex")
    assert other.step("classify").served_by == "llm" and other.outputs == {"label": "ham"}
    assert run_workflow(wf, {"text": "b"}, tenant="acme").outputs == {"label": "spam"}


def test_semantic_hit_is_revalidated_against_a_changed_schema(project, fake, vectors):
    vectors({"a": [1.0, 0.0, 0.0], "b": at(0.99)})
    fake.enqueue({"label": "spam"}, {"label": "junk"})
    run_workflow(project(semantic_workflow(threshold=0.9)), {"text": "a"})
    changed = label_workflow(cache=SEMANTIC.format(t=0.9, m=0), labels="[junk, ham]")
    assert run_workflow(project(changed), {"text": "b"}).outputs == {"label": "junk"}


def test_embedder_failure_falls_through_to_the_tiers(project, fake, vectors):
    embedder = vectors({})

    def broken(texts):
        raise ProviderUnavailableError("down")

    embedder.embed = broken
    fake.enqueue({"label": "spam"}, {"label": "ham"})
    wf = project(semantic_workflow())
    assert run_workflow(wf, {"text": "a"}).outputs == {"label": "spam"}
    assert run_workflow(wf, {"text": "b"}).outputs == {"label": "ham"}
    assert run_workflow(wf, {"text": "a"}).step("classify").served_by == "cache"  # the exact cache still works
    outcomes = [r["outcome"] for r in store().query("SELECT outcome FROM cache_events WHERE kind = 'semantic'")]
    assert outcomes == ["error", "error"]


def test_two_threads_filling_at_once_stay_consistent(project, fake, vectors):
    texts = [f"text {i}" for i in range(40)]
    vectors({t: [math.cos(i * 0.3), math.sin(i * 0.3), 0.0] for i, t in enumerate(texts)})
    truth = {t: ("spam" if i % 2 else "ham") for i, t in enumerate(texts)}
    fake.responder = labeller(truth)
    wf = project(semantic_workflow(threshold=0.9999))
    errors: list[BaseException] = []

    def fill(order: list[str]) -> None:
        try:
            for t in order:
                assert run_workflow(wf, {"text": t}).outputs == {"label": truth[t]}
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=fill, args=(texts,)), threading.Thread(target=fill, args=(texts[::-1],))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = store().query("SELECT id, input, output FROM cache_entries")
    assert len(rows) == len(texts) == len({r["input"]["text"] for r in rows})
    for r in rows:
        assert r["output"] == {"label": truth[r["input"]["text"]]}
    cache = cache_store(store())
    (index,) = cache.indexes.values()
    assert len(index) == len(texts) and index.max_id == max(r["id"] for r in rows)
    before = len(fake.requests)
    for t in texts:
        assert run_workflow(wf, {"text": t}).step("classify").served_by == "cache"
    assert len(fake.requests) == before


def test_default_embedder_end_to_end(project, fake):
    """`semantic: true` with the defaults: all-MiniLM-L6-v2 from its package, threshold 0.90, margin 0.12."""
    fake.responder = labeller({"I lost my card": "ham", "I have lost my card": "spam",
                               "What is the exchange rate for euros?": "spam"})
    wf = project(label_workflow(cache="        semantic: true\n"))
    run_workflow(wf, {"text": "I lost my card"})
    near = run_workflow(wf, {"text": "I have lost my card"})
    assert near.step("classify").served_by == "cache" and near.outputs == {"label": "ham"}
    assert 0.9 <= near.step("classify").cache["similarity"] < 1.0
    far = run_workflow(wf, {"text": "What is the exchange rate for euros?"})
    assert far.step("classify").served_by == "llm"


def test_semantic_hit_leaves_an_exact_entry_for_its_text(project, fake, vectors):
    embedder = vectors({"win a prize": [1.0, 0.0, 0.0], "you won a prize": at(0.9)})
    fake.enqueue({"label": "spam"})
    wf = project(semantic_workflow(threshold=0.8))
    run_workflow(wf, {"text": "win a prize"})
    assert run_workflow(wf, {"text": "you won a prize"}).step("classify").cache["kind"] == "semantic"
    again = run_workflow(wf, {"text": "you won a prize"}).step("classify")
    assert again.served_by == "cache" and again.cache["kind"] == "exact"  # by the exact key this time
    assert embedder.seen == ["win a prize", "you won a prize"]  # and without embedding it again
    rows = store().query("SELECT input_key, vector IS NULL AS no_vector FROM cache_entries ORDER BY id")
    assert len(rows) == 2 and rows[1]["no_vector"] == 1  # the exact entry adds nothing to the index
    assert len(fake.requests) == 1
