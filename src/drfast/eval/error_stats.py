"""Pairwise-error statistics of a ranking over the whole corpus (ADORE paper, sec. 4).

Input: each query's positives with their exact 1-based corpus ranks, as the fused search returns them
(`SearchResult.pos_offsets`, `.pos_ranks`; a rank counts every row that scores higher, or equal with a
lower row id, other positives included; see docs/concepts/fused-search.md). For a query whose
positives rank r_1 < r_2 < ... < r_n, the i-th positive is out of order with e_i = r_i - i negatives:
  total pairwise errors = sum_i e_i            (Eq. 3/5: all (positive, negative) pairs in the wrong order)
  top-K pairwise errors = sum_i min(e_i, K)    (Eq. 6)
Aggregates (over the queries that have positives): the means (the paper's Table 1), the distribution
over decade bins of errors with each bin's share of the queries and of all errors (Figure 3), and the
share of all errors that the hardest x% of queries contribute.

The per-query pass and the binning run in one numba kernel (parallel over chunks of queries), compiled
on first use and cached on disk (numba's cache: beside this file, or NUMBA_CACHE_DIR), so a later
process loads it instead of compiling; `backend="numpy"` is the vectorised numpy version of the same.
"""
from __future__ import annotations

import math
import time
from typing import Dict, Sequence, Tuple

import numba
import numpy as np
from numba import njit, prange

from drfast.common.checks import as_int64_vector, check_int
from drfast.common.csr import offsets_of, row_of_each
from drfast.common.errors import UsageError
from drfast.index.protocol import Index

HARDEST_FRACTIONS = (0.01, 0.05, 0.10, 0.25, 0.50)
KINDS = ("total", "topk")
_MAX_BINS = 20  # decades of an int64: 0, [1, 10), [10, 100), ..., [1e18, 2^63)
_PROBLEMS = {1: "a rank below 1", 2: "two positives with the same rank (a duplicate positive?)",
             3: "pos_offsets decreasing", 4: "a rank above n_docs"}


# ---- the numba kernel ------------------------------------------------------------------------------
# Bin b of a count v >= 0 holds [10^(b-1), 10^b), bin 0 holds 0: the number of powers of ten <= v.
_POW10 = np.array([10 ** i for i in range(_MAX_BINS - 1)], dtype=np.int64)


@njit(cache=True, inline="always")
def _decade(v):
    b = 0  # comparisons, not divisions by 10: a division costs tens of cycles, and this runs twice a query
    while b < _POW10.shape[0] and v >= _POW10[b]:
        b += 1
    return b


@njit(cache=True, parallel=True)
def _errors_kernel(offsets, ranks, k, n_docs, n_chunks, total, topk, hist, problem):
    """total/topk [Q], hist [chunk, kind, (queries, errors), bin] and problem [chunk, (query, code)]."""
    n_queries = offsets.shape[0] - 1
    per_chunk = (n_queries + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        for q in range(c * per_chunk, min((c + 1) * per_chunk, n_queries)):
            a, b = offsets[q], offsets[q + 1]
            total[q] = 0
            topk[q] = 0
            if b < a:
                problem[c, 0], problem[c, 1] = q, 3
                break
            if b == a:
                continue
            t, tk, bad = 0, 0, 0
            if b - a <= 32:  # the usual case: count the positives above each one; no sort, no allocation
                for i in range(a, b):
                    r = ranks[i]
                    above, same = 0, 0
                    for j in range(a, b):  # branch-free: ranks compare at random, a branch would mispredict
                        above += ranks[j] < r
                        same += ranks[j] == r
                    if same > 1:
                        bad = 2
                    e = r - 1 - above
                    t += e
                    tk += min(e, k)
                    if r < 1:
                        bad = 1
                    elif n_docs > 0 and r > n_docs:
                        bad = 4
            else:
                srt = np.sort(ranks[a:b])
                for i in range(b - a):
                    r = srt[i]
                    e = r - 1 - i
                    t += e
                    tk += min(e, k)
                    if i > 0 and r == srt[i - 1]:
                        bad = 2
                if srt[0] < 1:
                    bad = 1
                elif n_docs > 0 and srt[b - a - 1] > n_docs:
                    bad = 4
            if bad:
                problem[c, 0], problem[c, 1] = q, bad
                break
            total[q], topk[q] = t, tk
            bt, bk = _decade(t), _decade(tk)
            hist[c, 0, 0, bt] += 1
            hist[c, 0, 1, bt] += t
            hist[c, 1, 0, bk] += 1
            hist[c, 1, 1, bk] += tk


def compile_kernel() -> float:
    """Compiles (or loads from the cache) the numba kernel now; returns the seconds it took."""
    t0 = time.perf_counter()
    pairwise_errors(np.array([0, 1], np.int64), np.array([1], np.int64))
    return time.perf_counter() - t0


# ---- per-query errors ------------------------------------------------------------------------------
def _inputs(pos_offsets, pos_ranks, k) -> Tuple[np.ndarray, np.ndarray, int]:
    offsets, ranks = _int64_vector(pos_offsets, "pos_offsets"), _int64_vector(pos_ranks, "pos_ranks")
    if offsets.shape[0] < 1 or offsets[0] != 0 or offsets[-1] != ranks.shape[0]:
        raise UsageError("pos_offsets", f"expected int64 [Q+1] CSR offsets from 0 to len(pos_ranks)="
                         f"{ranks.shape[0]}, got {offsets.shape[0]} values"
                         + (f" from {offsets[0]} to {offsets[-1]}" if offsets.shape[0] else ""))
    return offsets, ranks, check_int(k, "k", 1)


def _int64_vector(x, name: str) -> np.ndarray:
    return as_int64_vector(x, name, "an integer array")


def _raise_problem(query: int, code: int) -> None:
    raise UsageError("pos_ranks", f"query {query} has {_PROBLEMS[code]}; expected the distinct 1-based corpus "
                     "ranks of each query's positives (SearchResult.pos_ranks)")


def _numba_pass(offsets, ranks, k, n_docs):
    n_queries = offsets.shape[0] - 1
    n_chunks = max(1, min(n_queries, 8 * numba.get_num_threads()))  # a few chunks per thread balance the load
    total = np.empty(n_queries, np.int64)
    topk = np.empty(n_queries, np.int64)
    hist = np.zeros((n_chunks, 2, 2, _MAX_BINS), np.int64)
    problem = np.full((n_chunks, 2), -1, np.int64)
    _errors_kernel(offsets, ranks, np.int64(k), np.int64(n_docs), n_chunks, total, topk, hist, problem)
    bad = np.flatnonzero(problem[:, 0] >= 0)
    if bad.size:
        _raise_problem(int(problem[bad[0], 0]), int(problem[bad[0], 1]))
    return total, topk, hist.sum(0)


def _numpy_pass(offsets, ranks, k, n_docs):
    """The same per-query errors and decade histogram, vectorised: one sort of (query, rank) keys."""
    counts = np.diff(offsets)
    if (counts < 0).any():
        _raise_problem(int(np.flatnonzero(counts < 0)[0]), 3)
    n_queries = counts.shape[0]
    total = np.zeros(n_queries, np.int64)
    topk = np.zeros(n_queries, np.int64)
    if ranks.size == 0:
        return total, topk, np.zeros((2, 2, _MAX_BINS), np.int64)
    query = row_of_each(offsets)
    for code, bad in ((1, ranks < 1), (4, (ranks > n_docs) if n_docs > 0 else None)):
        if bad is not None and bad.any():
            _raise_problem(int(query[np.argmax(bad)]), code)
    stride = np.int64(ranks.max()) + 1
    keys = np.sort(query * stride + ranks)   # each query's ranks ascending, queries in order
    sorted_ranks = keys - query * stride
    dup = keys[1:] == keys[:-1]
    if dup.any():
        _raise_problem(int(query[1:][dup][0]), 2)
    position = np.arange(ranks.size, dtype=np.int64) - np.repeat(offsets[:-1], counts)
    errors = sorted_ranks - 1 - position
    has = counts > 0
    starts = offsets[:-1][has]
    total[has] = np.add.reduceat(errors, starts)
    topk[has] = np.add.reduceat(np.minimum(errors, k), starts)
    return total, topk, _decade_histogram(total[has], topk[has])


def _decade_histogram(total, topk) -> np.ndarray:
    """[kind, (queries, errors), bin] as the kernel builds it."""
    hist = np.zeros((2, 2, _MAX_BINS), np.int64)
    for kind, values in enumerate((total, topk)):
        bins = np.searchsorted(_POW10, values, side="right")
        hist[kind, 0] = np.bincount(bins, minlength=_MAX_BINS)
        np.add.at(hist[kind, 1], bins, values)  # exact int64 sums (bincount's weights are float64)
    return hist


def _pass(pos_offsets, pos_ranks, k, n_docs, backend):
    offsets, ranks, k = _inputs(pos_offsets, pos_ranks, k)
    n_docs = check_int(n_docs, "n_docs", 0)  # 0: no upper bound to check
    if backend == "numba":
        total, topk, hist = _numba_pass(offsets, ranks, k, n_docs)
    elif backend == "numpy":
        total, topk, hist = _numpy_pass(offsets, ranks, k, n_docs)
    else:
        raise UsageError("backend", f"expected 'numba' or 'numpy', got {backend!r}")
    return offsets, total, topk, hist, k


def pairwise_errors(pos_offsets, pos_ranks, k: int = 200, n_docs: int = 0,
                    backend: str = "numba") -> Tuple[np.ndarray, np.ndarray]:
    """Per-query (total, top-k) pairwise errors, int64 [Q] each (0 for a query without positives).

    A positive at rank r with i - 1 other positives above it is out of order with e = r - i
    negatives; a query's total errors are the sum of e over its positives, its top-k errors the sum
    of min(e, k) (the ADORE paper's Eq. 5 and 6).

    Parameters
    ----------
    pos_offsets : array or tensor, int [Q+1]
        CSR offsets.
    pos_ranks : array or tensor, int [nnz]
        Distinct 1-based corpus ranks of each query's positives.
    k : int
        The depth of the top-k errors.
    n_docs : int
        When > 0, also checks that no rank exceeds it.
    backend : {"numba", "numpy"}
        The numba kernel (compiled on first use, cached on disk) or the same computation vectorised
        in numpy.

    Returns
    -------
    total, topk : numpy.ndarray, int64 [Q]

    Raises
    ------
    UsageError
        Duplicate or out-of-range ranks, naming the query.

    Examples
    --------
    >>> import numpy as np, drfast
    >>> drfast.pairwise_errors(np.array([0, 1, 3]), np.array([1, 3, 20]), k=10, backend="numpy")
    (array([ 0, 20]), array([ 0, 12]))
    """
    _, total, topk, _, _ = _pass(pos_offsets, pos_ranks, k, n_docs, backend)
    return total, topk


# ---- aggregates -----------------------------------------------------------------------------------
def error_statistics(pos_offsets, pos_ranks, k: int = 200, n_docs: int = 0,
                     fractions: Sequence[float] = HARDEST_FRACTIONS, backend: str = "numba") -> Dict:
    """Per-query errors and their aggregates in one pass.

    Parameters
    ----------
    pos_offsets, pos_ranks, k, n_docs, backend
        As in `pairwise_errors`.
    fractions : sequence of float
        The shares of hardest queries whose share of all errors the summary reports.

    Returns
    -------
    dict
        ``{"total": int64 [Q], "topk": int64 [Q], "summary": {...}}``, the summary covering the
        queries that have positives (see `summarize`): ``queries``, ``k``, ``mean_total_errors``,
        ``mean_topk_errors``, the sums, the distribution over decade bins and ``hardest_share``.

    Examples
    --------
    >>> import numpy as np, drfast
    >>> out = drfast.error_statistics(np.array([0, 1, 3]), np.array([1, 3, 20]), k=10, backend="numpy")
    >>> out["total"], out["topk"], out["summary"]["mean_total_errors"]
    (array([ 0, 20]), array([ 0, 12]), 10.0)
    """
    offsets, total, topk, hist, k = _pass(pos_offsets, pos_ranks, k, n_docs, backend)
    has = offsets[1:] > offsets[:-1]
    with_pos = (total, topk) if has.all() else (total[has], topk[has])  # no copy in the usual case
    return {"total": total, "topk": topk, "summary": _summary(*with_pos, hist, k, fractions)}


def summarize(total, topk, k: int = 200, fractions: Sequence[float] = HARDEST_FRACTIONS) -> Dict:
    """Aggregates of per-query error counts (queries with positives only):
    {"queries", "k", "mean_total_errors", "mean_topk_errors", "total_errors", "topk_errors",
     "distribution": {"total": [bin, ...], "topk": [...]}, "hardest_share": {"total": {...}, "topk": {...}}}.
    A bin is {"low", "high", "queries", "query_share", "errors", "error_share"} over errors in
    [low, high) (the first bin is exactly 0); hardest_share maps "1%" to the share of all errors from
    the ceil(1% of queries) queries with the most errors of that kind."""
    total, topk = _int64_vector(total, "total"), _int64_vector(topk, "topk")
    if total.shape != topk.shape:
        raise UsageError("topk", f"expected the shape of total {list(total.shape)}, got {list(topk.shape)}")
    if (total < 0).any() or (topk < 0).any() or (topk > total).any():
        raise UsageError("total, topk", "expected counts with 0 <= topk <= total")
    return _summary(total, topk, _decade_histogram(total, topk), k, fractions)


def _summary(total, topk, hist, k, fractions) -> Dict:
    fractions = _check_fractions(fractions)
    n = int(total.shape[0])
    sums = {"total": int(total.sum()), "topk": int(topk.sum())}
    out = {"queries": n, "k": int(k),
           "mean_total_errors": sums["total"] / n if n else 0.0,
           "mean_topk_errors": sums["topk"] / n if n else 0.0,
           "total_errors": sums["total"], "topk_errors": sums["topk"],
           "distribution": {}, "hardest_share": {}}
    for kind, values in zip(KINDS, (total, topk)):
        out["distribution"][kind] = _bins(hist[KINDS.index(kind)], n, sums[kind])
        out["hardest_share"][kind] = hardest_share(values, fractions)
    return out


def _bins(hist, n: int, errors: int) -> list:
    used = np.flatnonzero(hist[0])
    last = int(used[-1]) if used.size else 0
    bins = []
    for b in range(last + 1):
        low, high = (0, 1) if b == 0 else (10 ** (b - 1), 10 ** b)
        queries, errs = int(hist[0, b]), int(hist[1, b])
        bins.append({"low": low, "high": high, "queries": queries, "query_share": queries / n if n else 0.0,
                     "errors": errs, "error_share": errs / errors if errors else 0.0})
    return bins


def hardest_share(values, fractions: Sequence[float] = HARDEST_FRACTIONS) -> Dict[str, float]:
    """{"1%": share of sum(values) from the ceil(1% * n) largest values, ...}, in O(n)."""
    values = _int64_vector(values, "values")
    fractions = _check_fractions(fractions)
    n, whole = values.shape[0], int(values.sum())
    if n == 0:
        return {_percent(f): 0.0 for f in fractions}
    share = {}
    top = values
    # Largest share first, each partition on the previous one's top part only: about 2n work in all,
    # where one np.partition with several kth costs 10x more.
    for f in sorted(set(fractions), reverse=True):
        m = min(n, math.ceil(f * n - 1e-9))  # -1e-9: 10% of 1000 queries is exactly 100, not 101
        if m < top.shape[0]:
            top = np.partition(top, top.shape[0] - m)[top.shape[0] - m:]
        share[f] = int(top.sum()) / whole if whole else 0.0
    return {_percent(f): share[f] for f in fractions}


def _check_fractions(fractions) -> Tuple[float, ...]:
    out = tuple(float(f) for f in fractions)
    if not all(0 < f <= 1 for f in out):
        raise UsageError("fractions", f"expected shares of the queries in (0, 1], got {list(fractions)!r}")
    return out


def _percent(f: float) -> str:
    return f"{f * 100:g}%"


def exact_positive_ranks(index: Index, query_embeddings, positives_rows: Sequence[Sequence[int]],
                         batch_size: int = 64, steps: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(pos_offsets int64 [Q+1], pos_ranks int64 [nnz]): each positive's 1-based rank over the whole index,
    from fused searches of `batch_size` queries (memory O(batch_size * block), never [Q, N]).
    steps: search at least this many times, with empty batches past the end (a ShardedIndex's search
    is collective: every rank must call it equally often, also with fewer queries or none)."""
    emb = np.ascontiguousarray(query_embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(positives_rows):
        raise UsageError("query_embeddings", f"expected shape [{len(positives_rows)}, d] (one row per positives "
                         f"list), got {list(emb.shape)}")
    offsets = offsets_of(positives_rows)
    ranks = np.empty(int(offsets[-1]), np.int64)
    n = len(positives_rows)
    for start in range(0, max(n, steps * batch_size), batch_size):
        start, end = min(start, n), min(start + batch_size, n)
        res = index.search(emb[start:end], k=1, positives=[list(p) for p in positives_rows[start:end]])
        ranks[offsets[start]:offsets[end]] = np.asarray(res.pos_ranks)
    return offsets, ranks
