"""The approximate index behind large semantic namespaces: same decisions as the exact rule."""

from __future__ import annotations

import numpy as np
import pytest

from engine.cache import ann
from engine.cache.index import VectorIndex

pytestmark = pytest.mark.skipif(not ann.available(), reason="needs faiss-cpu (the ann extra, in dev)")


def clustered(n: int, dims: int = 64, clusters: int = 40, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dims)).astype(np.float32)
    which = rng.integers(0, clusters, n)
    x = centres[which] + rng.normal(scale=0.35, size=(n, dims)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, [f"answer-{c}" for c in which]


def filled(n: int, ann_min: int) -> tuple[VectorIndex, np.ndarray]:
    x, answers = clustered(n)
    index = VectorIndex(ann_min=ann_min)
    half = n // 2
    index.add(list(range(1, half + 1)), answers[:half], x[:half])
    index.add(list(range(half + 1, n + 1)), answers[half:], x[half:])  # added after the build
    return index, x


def test_switches_to_the_approximate_index_past_the_threshold():
    small, _ = filled(500, ann_min=1000)
    assert small._ann is None
    large, _ = filled(3000, ann_min=1000)
    assert large._ann is not None and large._ann.index.ntotal == 3000


def test_decisions_match_the_exact_rule():
    index, x = filled(6000, ann_min=1000)
    rng = np.random.default_rng(1)
    queries = x[rng.integers(0, len(x), 300)] + rng.normal(scale=0.05, size=(300, x.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    same = 0
    served = 0
    for q in queries:
        fast, exact = index.search(q, 0.8, 0.05), index.exact_search(q, 0.8, 0.05)
        a = fast.match.entry_id if fast.match else None
        b = exact.match.entry_id if exact.match else None
        same += a == b
        served += b is not None
    assert served > 100  # the queries do hit
    assert same / len(queries) >= 0.98


def test_removed_rows_are_never_served():
    index, x = filled(3000, ann_min=1000)
    target = 1234
    assert index.search(x[target - 1], 0.99).match.entry_id == target
    index.remove(target)
    decision = index.search(x[target - 1], 0.99)
    assert decision.match is None or decision.match.entry_id != target


def test_the_nearest_other_answer_follows_removals_and_rewrites():
    """When every near row shares the best answer, the nearest row with another answer comes from
    a per-answer selector kept between lookups; removing or re-writing rows must refresh it."""
    rng = np.random.default_rng(3)
    dims = 32
    a = rng.normal(size=dims).astype(np.float32)
    b = a + rng.normal(scale=0.5, size=dims).astype(np.float32)
    rows = np.concatenate([a + rng.normal(scale=0.02, size=(1500, dims)).astype(np.float32),
                           b + rng.normal(scale=0.02, size=(1500, dims)).astype(np.float32)])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    index = VectorIndex(ann_min=1000)
    index.add(list(range(1, 3001)), ["A"] * 1500 + ["B"] * 1500, rows)
    index._ann.index.nprobe = index._ann.index.nlist  # every cell: this tests the selector, not recall
    query = a / np.linalg.norm(a)
    first = index.search(query, 0.5, 0.05)
    assert first.match is not None and first.match.conflicting is not None  # found among the B rows
    # every cell probed: the same nearest B row as the exact product (float32 sums may differ in order)
    assert first.match.conflicting == pytest.approx(index.exact_search(query, 0.5, 0.05).match.conflicting, abs=1e-6)
    for entry in range(1501, 3001):  # every B row goes
        index.remove(entry)
    assert index.search(query, 0.5, 0.05).match.conflicting is None
    index.add([1501], ["B"], query.reshape(1, -1))  # re-written in place: a B row right on the query
    decision = index.search(query, 0.5, 0.05)
    assert decision.match is None and decision.reason == "ambiguous"


def test_one_query_searches_on_one_thread_and_builds_use_them_all():
    """faiss's OpenMP team costs more than it saves on one vector: searches run on the calling
    thread alone, training and adding get every thread back (the setting is per thread)."""
    import faiss

    full = faiss.omp_get_max_threads()
    index, x = filled(3000, ann_min=1000)
    index.search(x[0], threshold=0.9, margin=0.1)
    assert faiss.omp_get_max_threads() == 1
    more, answers = clustered(200, seed=1)
    index.add(list(range(3001, 3201)), answers, more)
    assert faiss.omp_get_max_threads() == max(full, ann._threads[0])
    assert index.search(more[0], threshold=0.9, margin=0.1).match is not None


def test_shared_coarse_cells_give_the_same_rows_as_separate_searches():
    """A lookup's two searches share the query's coarse cells; the rows found must not change."""
    index, x = filled(4000, ann_min=1000)
    ivf = index._ann
    assert hasattr(ivf.index, "search_preassigned_c")  # the shared-cells path runs (not the fallback)
    codes = index._codes[: index.n]
    for q in x[:40]:
        coarse = ivf.coarse(q)
        plain_sims, plain_rows = ivf.search(q, 32)
        sims, rows = ivf.search(q, 32, coarse)
        assert list(rows) == list(plain_rows) and np.allclose(sims, plain_sims)
        allowed = codes != codes[rows[0]]
        assert ivf.nearest_among(q, allowed, coarse=coarse) == ivf.nearest_among(q, allowed)
