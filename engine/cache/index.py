"""An in-memory matrix of unit float32 vectors for one semantic namespace, and the decision rule.

`search` takes the dot product of the query with every row (one BLAS matrix-vector product:
about 10 ms at 100k x 384 on one core) and serves the nearest entry only when
  - its similarity is at or above the threshold, and
  - every entry with a *different* answer is at least `margin` less similar (the margin
    safeguard: near the boundary between two answers, nothing is served).
Rows are appended as entries are written; the SQLite row stays the source of truth.

Past `ANN_MIN` rows (and with `faiss-cpu` installed: the `ann` extra), `search` asks an
approximate index first (`engine.cache.ann.IVFIndex`: an inverted file over k-means cells,
searched with `nprobe` cells) for the nearest `k` rows, and applies the same rule to them: a
hit needs the best row at or above the threshold and either a row with another answer among the
`k` (then its similarity decides the margin) or the `k`-th row already `margin` below the best
(then no other answer can be nearer). When neither holds, a second approximate search restricted
to rows with another answer (a bitmap selector) finds the nearest conflicting row. The matrix stays the source for the exact path and for rebuilds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Match:
    entry_id: int
    similarity: float
    conflicting: float | None
    """Similarity of the nearest entry with a different answer (None when there is none)."""


@dataclass(frozen=True)
class Decision:
    match: Match | None
    """The entry to serve, or None."""
    best: float | None
    """The best similarity seen (for the miss record)."""
    reason: str
    """hit | empty | below_threshold | ambiguous"""


ANN_MIN = 50_000
_NONE = object()
"""Rows from which the approximate index is used (below it one matrix product is under ~2 ms)."""


class VectorIndex:
    def __init__(self, ann_min: int | None = None) -> None:
        self.ann_min = ANN_MIN if ann_min is None else ann_min
        self._ann: Any = None
        self._no_ann = False
        self.lock = threading.RLock()
        self.n = 0
        self.max_id = 0
        """The highest entry id loaded from SQLite (set by `CacheStore.index`)."""
        self._matrix: np.ndarray | None = None
        self._version = 0
        """Bumped when a row's answer or vector changes in place (see `_others_bitmap`)."""
        self._bitmaps: dict[int, Any] = {}
        self._bitmaps_key: tuple[int, int] = (-1, -1)
        self._ids = np.zeros(0, dtype=np.int64)
        self._codes = np.zeros(0, dtype=np.int32)
        self._answer_codes: dict[str, int] = {}
        self._row_of: dict[int, int] = {}

    def __len__(self) -> int:
        return self.n

    def _code(self, answer_key: str) -> int:
        return self._answer_codes.setdefault(answer_key, len(self._answer_codes))

    def add(self, ids: list[int], answer_keys: list[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        with self.lock:
            fresh = [i for i, eid in enumerate(ids) if eid not in self._row_of]
            for i, eid in enumerate(ids):
                if eid in self._row_of:  # re-written entry: new answer and vector in place
                    row = self._row_of[eid]
                    assert self._matrix is not None
                    self._matrix[row] = vectors[i]
                    self._codes[row] = self._code(answer_keys[i])
                    self._version += 1
                    if self._ann is not None:
                        self._ann.update(row, self._matrix[row])
            if not fresh:
                return
            need = self.n + len(fresh)
            if self._matrix is None or need > len(self._matrix):
                cap = max(need, 2 * (0 if self._matrix is None else len(self._matrix)), 256)
                matrix = np.zeros((cap, vectors.shape[1]), dtype=np.float32)
                ids_arr, codes = np.zeros(cap, dtype=np.int64), np.full(cap, -1, dtype=np.int32)
                if self._matrix is not None:
                    matrix[: self.n], ids_arr[: self.n], codes[: self.n] = (
                        self._matrix[: self.n], self._ids[: self.n], self._codes[: self.n])
                self._matrix, self._ids, self._codes = matrix, ids_arr, codes
            first = self.n
            for i in fresh:
                self._matrix[self.n] = vectors[i]
                self._ids[self.n] = ids[i]
                self._codes[self.n] = self._code(answer_keys[i])
                self._row_of[ids[i]] = self.n
                self.n += 1
            self._grow_ann(first)

    def _grow_ann(self, first: int) -> None:
        """Build the approximate index once past `ann_min` rows (rebuilt when the rows have grown
        4x since it was trained); otherwise add the new rows to it."""
        if self.n < self.ann_min or self._no_ann:
            return
        from engine.cache import ann

        assert self._matrix is not None
        if self._ann is None or self.n >= 4 * self._ann.trained_on:
            self._ann = ann.build(self._matrix[: self.n])
            self._no_ann = self._ann is None  # faiss is not installed: exact search at every size
        else:
            self._ann.add(self._matrix[first: self.n], first)

    def relabel(self, entry_id: int, answer_key: str) -> None:
        """An entry's answer changed (a check or label corrected it): its row keeps its vector."""
        with self.lock:
            row = self._row_of.get(entry_id)
            if row is not None:
                self._codes[row] = self._code(answer_key)
                self._version += 1

    def remove(self, entry_id: int) -> None:
        with self.lock:
            row = self._row_of.pop(entry_id, None)
            if row is not None and self._matrix is not None:
                self._matrix[row] = 0.0
                self._codes[row] = -1
                self._version += 1

    def similarities(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarities, entry ids, answer codes) of every row; -1 codes are removed rows."""
        with self.lock:
            if self._matrix is None or self.n == 0:
                empty = np.zeros(0)
                return empty.astype(np.float32), empty.astype(np.int64), empty.astype(np.int32)
            sims = self._matrix[: self.n] @ np.asarray(query, dtype=np.float32).reshape(-1)
            return sims, self._ids[: self.n].copy(), self._codes[: self.n].copy()

    def search(self, query: np.ndarray, threshold: float, margin: float = 0.0) -> Decision:
        if self._ann is not None:
            with self.lock:
                decided = self._ann_search(np.asarray(query, dtype=np.float32).reshape(-1), threshold, margin)
            if decided is not None:
                return decided
        return self.exact_search(query, threshold, margin)

    def _ann_search(self, query: np.ndarray, threshold: float, margin: float) -> Decision | None:
        """The rule over the approximate nearest rows, or None to leave it to the exact product."""
        coarse = self._ann.coarse(query)
        sims, rows = self._ann.search(query, min(32, self.n), coarse)
        keep = rows >= 0
        sims, rows = sims[keep], rows[keep]
        codes = self._codes[rows]
        live = codes >= 0
        if not live.any():
            return None
        top = int(np.argmax(live))  # results come sorted by similarity: the first live row
        best = float(sims[top])
        if best < threshold:
            return Decision(None, best, "below_threshold")
        others = live & (codes != codes[top])
        conflicting = float(sims[others].max()) if others.any() else None
        if conflicting is None and margin > 0 and float(sims[-1]) >= best - margin:
            # every near row has the best one's answer: ask for the nearest row with another answer
            bitmap = self._others_bitmap(int(codes[top]))
            found = self._ann.nearest_among(query, bitmap, self.n, coarse) if bitmap is not None else None
            conflicting = None if found is None else found[0]
        match = Match(int(self._ids[rows[top]]), best, conflicting)
        if margin > 0 and conflicting is not None and best - conflicting < margin:
            return Decision(None, best, "ambiguous")
        return Decision(match, best, "hit")

    def _others_bitmap(self, code: int) -> np.ndarray | None:
        """The live rows whose answer is not `code`, packed for faiss's selector; kept per answer
        until the rows change (an O(rows) mask per lookup took about a millisecond at 1M rows)."""
        key = (self.n, self._version)
        if self._bitmaps_key != key:
            self._bitmaps, self._bitmaps_key = {}, key
        bitmap = self._bitmaps.get(code, _NONE)
        if bitmap is _NONE:
            codes = self._codes[: self.n]
            allowed = (codes >= 0) & (codes != code)
            bitmap = np.packbits(allowed, bitorder="little") if allowed.any() else None
            if len(self._bitmaps) > 1024:
                self._bitmaps.clear()
            self._bitmaps[code] = bitmap
        return bitmap  # type: ignore[return-value]

    def exact_search(self, query: np.ndarray, threshold: float, margin: float = 0.0) -> Decision:
        """The rule over every row (one matrix-vector product)."""
        sims, ids, codes = self.similarities(query)
        live = codes >= 0
        if not live.any():
            return Decision(None, None, "empty")
        sims = np.where(live, sims, -np.inf)
        top = int(np.argmax(sims))
        best = float(sims[top])
        if best < threshold:
            return Decision(None, best, "below_threshold")
        others = sims[live & (codes != codes[top])]
        conflicting = float(others.max()) if others.size else None
        match = Match(int(ids[top]), best, conflicting)
        if margin > 0 and conflicting is not None and best - conflicting < margin:
            return Decision(None, best, "ambiguous")
        return Decision(match, best, "hit")
