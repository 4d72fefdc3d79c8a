"""The peer Elasticsearch is compared with (issue 24, item 3): the same stored vectors, row filters
and users, searched by FAISS HNSW with the filter inside the graph walk, and by numpy's exact scan
(the ground truth, and the limit a scan can reach).

Inputs, as the benchmark has them:
- ``vectors``: the stored item vectors, float32, n x d, unit length (after the project's
  inner-product reduction, ``facetrec.serving.mips.item_vectors``), so inner product ranks as Elasticsearch's
  ``dot_product`` does;
- ``masks``: row id -> boolean mask over the n items (the row's filter with the user filters applied);
- ``queries``: user query vectors, float32, u x d, unit (``facetrec.serving.mips.knn_query``);
- ``seen``: per user, the item indices (0..n-1) to exclude (or None).

Costs are **CPU milliseconds per query** on one thread (``time.thread_time`` around each query,
FAISS's OpenMP and numpy's OpenBLAS held to one thread while timing), comparable with a per-row
CPU cost of Elasticsearch. ``clock="wall"`` gives wall milliseconds instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from typing import Callable, Iterator, Mapping, Sequence

import faiss
import numpy as np

Seen = Sequence[np.ndarray | Sequence[int] | None] | None

# --------------------------------------------------------------------------------------------
# one thread while timing
# --------------------------------------------------------------------------------------------

_BLAS_SYMBOLS = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                 ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                 ("openblas_get_num_threads", "openblas_set_num_threads"))


def _loaded_openblas() -> list[tuple[Callable[[], int], Callable[[int], None]]]:
    """(get, set) thread-count functions of every OpenBLAS loaded in this process (numpy's
    ``scipy_openblas64_`` and FAISS's own), found through ``/proc/self/maps``."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return []
    paths = {p for p in paths if "openblas" in p.rsplit("/", 1)[-1].lower() and ".so" in p}
    found = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _BLAS_SYMBOLS:
            get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and set_ is not None:
                get.restype = ctypes.c_int
                set_.argtypes = [ctypes.c_int]
                found.append((get, set_))
                break
    return found


@contextlib.contextmanager
def one_thread() -> Iterator[bool]:
    """FAISS's OpenMP and every loaded OpenBLAS on one thread inside the block, restored after.
    Yields whether numpy's BLAS was found and limited (when False, a per-query CPU reading may
    miss BLAS helper threads: use ``clock="wall"`` on an idle machine)."""
    omp = faiss.omp_get_max_threads()
    blas = _loaded_openblas()
    before = [get() for get, _ in blas]
    faiss.omp_set_num_threads(1)
    for _, set_ in blas:
        set_(1)
    try:
        yield bool(blas)
    finally:
        faiss.omp_set_num_threads(omp)
        for (_, set_), n in zip(blas, before):
            set_(n)


def _clock(clock: str) -> Callable[[], float]:
    if clock == "cpu":
        return time.thread_time
    if clock == "wall":
        return time.perf_counter
    raise ValueError(f"clock must be 'cpu' or 'wall', not {clock!r}")


def _seen_of(seen: Seen, i: int) -> np.ndarray:
    if seen is None or seen[i] is None:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(seen[i], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# FAISS HNSW, filter inside the walk
# --------------------------------------------------------------------------------------------

class FaissPeer:
    """``faiss.IndexHNSWFlat`` over ``vectors`` with the inner-product metric, built once.

    ``m``: graph links per node (HNSW M); ``ef_construction``: the build's candidate list;
    ``threads``: OpenMP threads for the build (searches are timed on one thread). ``build_s``:
    wall seconds of the build (``index.add``)."""

    def __init__(self, vectors: np.ndarray, m: int = 16, ef_construction: int = 100, threads: int = 1):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.vectors.ndim != 2:
            raise ValueError("vectors must be n x d")
        self.n, self.d = self.vectors.shape
        self.m, self.ef_construction = m, ef_construction
        self.index = faiss.IndexHNSWFlat(self.d, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        omp = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
        try:
            t0 = time.perf_counter()
            self.index.add(self.vectors)
            self.build_s = time.perf_counter() - t0
        finally:
            faiss.omp_set_num_threads(omp)

    def bitmap(self, row_mask: np.ndarray) -> np.ndarray:
        """The row's mask as FAISS's bitmap (bit i of byte i >> 3 is item i, little bit order)."""
        mask = np.asarray(row_mask, dtype=bool)
        if mask.shape != (self.n,):
            raise ValueError(f"row mask has shape {mask.shape}, expected ({self.n},)")
        return np.packbits(mask, bitorder="little")

    def search(self, row_mask: np.ndarray, queries: np.ndarray, k: int, ef: int, seen: Seen = None,
               clock: str = "cpu", warmup: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
        """The top ``k`` of each query among the items of ``row_mask`` less that user's ``seen``,
        by HNSW with the filter inside the walk (``SearchParametersHNSW(efSearch=ef,
        sel=IDSelectorBitmap)``: filtered-out nodes are walked through but never returned).

        Returns (item indices per query, best first, at most ``k``, int64; cost per query in
        milliseconds, float64 array of length u). The cost covers, per query, copying the row's
        bitmap and clearing the seen items in it, and the search; the row's bitmap itself is made
        once per row (as a cached filter would be). ``warmup``: run the first query once, untimed,
        before timing (the first call pays page faults and lazy set-up)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        row_bits = self.bitmap(row_mask)
        tick = _clock(clock)

        def one(i: int) -> tuple[np.ndarray, float]:
            excluded = _seen_of(seen, i)
            t0 = tick()
            bits = row_bits.copy()
            if excluded.size:
                np.bitwise_and.at(bits, excluded >> 3, ~np.left_shift(1, excluded & 7).astype(np.uint8))
            selector = faiss.IDSelectorBitmap(bits.size, faiss.swig_ptr(bits))  # n: bytes of the bitmap
            params = faiss.SearchParametersHNSW(efSearch=int(ef), sel=selector)
            _, found = self.index.search(queries[i:i + 1], k, params=params)
            spent = (tick() - t0) * 1000.0
            return found[0][found[0] >= 0].astype(np.int64), spent

        with one_thread():
            if warmup and len(queries):
                one(0)
            results = [one(i) for i in range(len(queries))]
        return [r[0] for r in results], np.array([r[1] for r in results], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# numpy exact
# --------------------------------------------------------------------------------------------

def _drop_sorted(sorted_idx: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """``sorted_idx`` without the values in ``excluded`` (binary search, then one copy)."""
    pos = np.searchsorted(sorted_idx, excluded)
    inside = pos < sorted_idx.size
    pos, excluded = pos[inside], excluded[inside]
    return np.delete(sorted_idx, np.unique(pos[sorted_idx[pos] == excluded]))


def numpy_exact(vectors: np.ndarray, row_mask: np.ndarray, queries: np.ndarray, k: int, seen: Seen = None,
                clock: str = "cpu", warmup: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    """The exact top ``k`` per query by inner product among ``row_mask`` less that user's seen
    items: the ground truth, and the cost of a plain exact scan.

    Returns (item indices per query, best first, int64; cost per query in milliseconds). Timed per
    query: removing the seen items from the row's item list, gathering those items' vectors (as a
    scan reads them), the scores, the top k (``argpartition`` then a sort). The row's item list
    (``flatnonzero`` of the mask) is made once per row. Ties are broken by item index.
    ``warmup``: one untimed scan of the row first (page faults, lazy set-up)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    row_idx = np.flatnonzero(np.asarray(row_mask, dtype=bool))
    tick = _clock(clock)

    def one(i: int) -> tuple[np.ndarray, float]:
        excluded = _seen_of(seen, i)
        t0 = tick()
        idx = _drop_sorted(row_idx, excluded) if excluded.size else row_idx
        scores = vectors[idx] @ queries[i]
        part = np.argpartition(-scores, k - 1)[:k] if idx.size > k else np.arange(idx.size)
        order = part[np.lexsort((idx[part], -scores[part]))]
        spent = (tick() - t0) * 1000.0
        return idx[order].astype(np.int64), spent

    with one_thread():
        if warmup and len(queries):
            one(0)
        results = [one(i) for i in range(len(queries))]
    return [r[0] for r in results], np.array([r[1] for r in results], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# frontier and the ratio
# --------------------------------------------------------------------------------------------

def id_recall(found: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (1 for a query whose truth is empty)."""
    values = [len(set(f.tolist()) & set(t.tolist())) / len(t) if len(t) else 1.0 for f, t in zip(found, truth)]
    return float(np.mean(values)) if values else float("nan")


def score_recall(vectors: np.ndarray, queries: np.ndarray, found: Sequence[np.ndarray],
                 truth: Sequence[np.ndarray]) -> float:
    """Mean over queries of (sum of found scores) / (sum of exact scores): how much of the best
    attainable score the answer keeps, blind to near-ties (scores are inner products of unit
    vectors; 1 for an empty truth)."""
    values = []
    for q, f, t in zip(np.atleast_2d(queries), found, truth):
        best = float((vectors[t] @ q).sum()) if len(t) else 0.0
        got = float((vectors[f] @ q).sum()) if len(f) else 0.0
        values.append(got / best if best else 1.0)
    return float(np.mean(values)) if values else float("nan")


def frontier(peer: FaissPeer, masks: Mapping[str, np.ndarray], queries: np.ndarray, seen: Seen, k: int,
             efs: Sequence[int] = (50, 100, 300, 1000, 3000),
             truth: Mapping[str, Sequence[np.ndarray]] | None = None,
             clock: str = "cpu") -> dict[str, list[dict]]:
    """FAISS's recall-cost frontier per row: row id -> one point per ``ef`` (ascending), each
    ``{"ef", "ms_per_query", "id_recall", "score_recall"}``: ``ms_per_query`` the mean cost per
    query in milliseconds (``FaissPeer.search``), the recalls against numpy's exact top ``k``
    (``truth[row]`` when given, else computed here with ``numpy_exact``)."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    out: dict[str, list[dict]] = {}
    for row, mask in masks.items():
        exact = truth[row] if truth is not None else numpy_exact(peer.vectors, mask, queries, k, seen)[0]
        points = []
        for ef in sorted(efs):
            found, ms = peer.search(mask, queries, k, ef, seen, clock=clock)
            points.append({"ef": int(ef), "ms_per_query": float(ms.mean()),
                           "id_recall": id_recall(found, exact),
                           "score_recall": score_recall(peer.vectors, queries, found, exact)})
        out[row] = points
    return out


def peer_ratio(es_cost_ms: float, es_recall: float, frontier_points: Sequence[Mapping]) -> tuple[float, int, bool]:
    """Elasticsearch's cost for a row over FAISS's at equal recall.

    ``es_cost_ms``: Elasticsearch's cost for the row per query (ms, same unit as the points');
    ``es_recall``: its id recall on the same users; ``frontier_points``: that row's points from
    ``frontier``. Returns (``es_cost_ms / ms_per_query`` at the smallest ef whose ``id_recall``
    is at least ``es_recall``, that ef, True); when no ef reaches it, the ratio at the largest ef
    tried, that ef, and False (FAISS is then less accurate at every ef: say so)."""
    points = sorted(frontier_points, key=lambda p: p["ef"])
    if not points:
        raise ValueError("peer_ratio needs at least one frontier point")
    reached = [p for p in points if p["id_recall"] >= es_recall - 1e-12]
    point, ok = (reached[0], True) if reached else (points[-1], False)
    cost = float(point["ms_per_query"])
    return (es_cost_ms / cost if cost > 0 else float("inf")), int(point["ef"]), ok
