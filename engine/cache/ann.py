"""The approximate nearest-neighbour index behind large semantic namespaces (`VectorIndex` uses
it past `ANN_MIN` rows): faiss's inverted file (`IndexIVFFlat`, inner product on unit vectors).

Why faiss IVF: `faiss-cpu` ships manylinux wheels (no compiler at install, unlike hnswlib's
source build), and an inverted file trains in seconds and adds rows at memory speed, where an
HNSW graph took minutes per 100k rows of 384 dimensions on this machine. sqlite-vec's `vec0`
is an exact scan, which is what this replaces. `nlist` (about 4 * sqrt(rows) cells) and
`nprobe` (cells searched per query) trade recall for time; the decision rule above it escalates
to more neighbours and finally to the exact matrix product when the neighbours cannot decide.

Without faiss (`pip install 'engine[ann]'`), the exact matrix product is used at every size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

NPROBE = 16


class IVFIndex:
    def __init__(self, index: Any, quantizer: Any, trained_on: int):
        self.index = index
        self.quantizer = quantizer  # the index points into it: keep it alive
        self.trained_on = trained_on

    def add(self, vectors: np.ndarray, first_row: int) -> None:
        _all_threads()
        rows = np.arange(first_row, first_row + len(vectors), dtype=np.int64)
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), rows)

    def update(self, row: int, vector: np.ndarray) -> None:
        """A re-written entry: its row's vector changed."""
        ids = np.array([row], dtype=np.int64)
        self.index.remove_ids(ids)
        self.index.add_with_ids(np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32), ids)

    def coarse(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The query's `nprobe` nearest cells (distances, cell ids): computed once and shared by a
        lookup's two searches (about 0.2 ms of 1.5 at 1M rows)."""
        _one_thread()
        return self.quantizer.search(_row(query), self.index.nprobe)  # type: ignore[no-any-return]

    def search(self, query: np.ndarray, k: int,
               coarse: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, rows) of the approximate k nearest, best first; rows -1 past the end."""
        _one_thread()
        if coarse is None:
            sims, rows = self.index.search(_row(query), k)
        else:
            sims, rows = self.index.search_preassigned(_row(query), k, coarse[1], coarse[0])
        return sims[0], rows[0]

    def nearest_among(self, query: np.ndarray, allowed: np.ndarray, n_rows: int | None = None,
                      coarse: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, int] | None:
        """(similarity, row) of the approximate nearest row where `allowed[row]` (a bool mask over
        the rows, or that mask already packed little-endian with `n_rows` given), or None: e.g. the
        nearest row with another answer than the best one."""
        import faiss

        if n_rows is None:
            n_rows, bitmap = len(allowed), np.packbits(allowed, bitorder="little")
        else:
            bitmap = allowed
        params = faiss.SearchParametersIVF()
        params.sel = faiss.IDSelectorBitmap(n_rows, faiss.swig_ptr(bitmap))
        params.nprobe = self.index.nprobe
        _one_thread()
        x = _row(query)
        raw = getattr(self.index, "search_preassigned_c", None)  # faiss's own call, which takes params
        if coarse is None or raw is None:
            sims, rows = self.index.search(x, 1, params=params)
        else:
            cell_dist, cells = (np.ascontiguousarray(a) for a in coarse)
            sims, rows = np.empty((1, 1), dtype=np.float32), np.empty((1, 1), dtype=np.int64)
            raw(1, faiss.swig_ptr(x), 1, faiss.swig_ptr(cells), faiss.swig_ptr(cell_dist), faiss.swig_ptr(sims),
                faiss.swig_ptr(rows), False, params, None)
        return None if rows[0][0] < 0 else (float(sims[0][0]), int(rows[0][0]))


def _row(query: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)


_threads: list[int] = []


def _one_thread() -> None:
    """One query is searched on the calling thread alone. faiss's OpenMP team costs more than it
    saves on a single vector: at 1M rows, the restricted search took 8.5 ms p50 on two threads and
    2.3 ms on one (2-core machine; OpenMP's setting is per calling thread, `_all_threads` restores it)."""
    import faiss

    if not _threads:
        _threads.append(faiss.omp_get_max_threads())
    faiss.omp_set_num_threads(1)


def _all_threads() -> None:
    """Training and adding many vectors: every thread again (this thread may have searched)."""
    if _threads:
        import faiss

        faiss.omp_set_num_threads(_threads[0])


def available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def build(matrix: np.ndarray, nprobe: int = NPROBE, seed: int = 0) -> IVFIndex | None:
    """Train an inverted file on (a sample of) `matrix` and add every row; None without faiss."""
    try:
        import faiss
    except ImportError:
        return None
    _all_threads()
    n, dims = matrix.shape
    nlist = int(min(8192, max(64, 4 * math.sqrt(n))))
    quantizer = faiss.IndexFlatIP(dims)
    index = faiss.IndexIVFFlat(quantizer, dims, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = matrix
    if n > 40 * nlist:
        sample = matrix[np.random.default_rng(seed).choice(n, 40 * nlist, replace=False)]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.nprobe = nprobe
    index.add_with_ids(np.ascontiguousarray(matrix, dtype=np.float32), np.arange(n, dtype=np.int64))
    return IVFIndex(index, quantizer, n)
