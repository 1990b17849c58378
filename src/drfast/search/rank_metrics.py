"""Rank metrics from exact corpus ranks (`SearchResult.pos_ranks`): the fast path used during training.

They need only the exact corpus rank of each relevant document, and agree with the official
trec_eval numbers (`drfast.eval.trec.evaluate`) whenever the scores have no ties (the index breaks
ties by row, trec_eval by document id).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from drfast.common.arrays import to_numpy
from drfast.common.checks import check_choice
from drfast.common.csr import check_offsets, row_of_each
from drfast.common.errors import UsageError


DEFAULT_CUTOFFS = {"MRR": (10, 100), "nDCG": (10,), "R": (100,)}


def metrics_from_ranks(pos_offsets: Any, pos_ranks: Any, pos_gains: Any = None, cutoffs=None, over: str = "all"):
    """Per-query MRR@k, nDCG@k, R@k (and P@k) from the exact corpus rank of every relevant document.

    Definitions are trec_eval's: reciprocal rank of the best relevant doc if within k; nDCG with gain =
    relevance and discount log2(rank + 1), ideal DCG from the gains sorted descending, both cut at k;
    recall = #relevant within k / #relevant.

    Parameters
    ----------
    pos_offsets : array or tensor, int [B+1]
        CSR offsets, e.g. ``SearchResult.pos_offsets``.
    pos_ranks : array or tensor, int [nnz]
        1-based ranks, distinct within a query, e.g. ``SearchResult.pos_ranks``.
    pos_gains : array or tensor, int [nnz], optional
        Graded relevance > 0 (None: all 1).
    cutoffs : dict, optional
        ``{"MRR" | "nDCG" | "R" | "P": cutoffs}``, default
        ``{"MRR": (10, 100), "nDCG": (10,), "R": (100,)}``.
    over : {"all", "with_positives"}
        A query with no positives scores 0 and is still counted (trec_eval -c), so the means average
        over all B queries; ``"with_positives"`` averages over the queries that have a positive
        instead (what a training log wants).

    Returns
    -------
    means : dict
        ``{"MRR@10": float, ...}``.
    per_query : dict
        ``{"MRR@10": float64 [B], ...}``.

    Notes
    -----
    Arrays may be numpy or torch (any device).

    Examples
    --------
    >>> import numpy as np, drfast
    >>> means, per_query = drfast.metrics_from_ranks(np.array([0, 1, 3]), np.array([1, 3, 20]),
    ...                                              cutoffs={"MRR": (10,)})
    >>> means  # query 0: its positive at rank 1; query 1: the best of its two at rank 3
    {'MRR@10': 0.6666666666666666}
    >>> per_query["MRR@10"]
    array([1.        , 0.33333333])
    """
    check_choice(over, "over", ("all", "with_positives"))
    offsets, ranks = to_numpy(pos_offsets), to_numpy(pos_ranks)
    gains = np.ones(len(ranks), np.int64) if pos_gains is None else to_numpy(pos_gains)
    for name, arr in (("pos_offsets", offsets), ("pos_ranks", ranks), ("pos_gains", gains)):
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise UsageError(name, f"expected a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    nnz = len(ranks)
    check_offsets(offsets, nnz, "pos_offsets")
    if len(gains) != nnz:
        raise UsageError("pos_gains", f"length {len(gains)} != len(pos_ranks) {nnz}")
    if nnz and ranks.min() < 1:
        raise UsageError("pos_ranks", "ranks are 1-based")
    if nnz and gains.min() < 1:
        raise UsageError("pos_gains", "positives have relevance > 0 (leave judged non-relevant docs out)")
    cutoffs = DEFAULT_CUTOFFS if cutoffs is None else cutoffs
    unknown = set(cutoffs) - {"MRR", "nDCG", "R", "P"}
    if unknown:
        raise UsageError("cutoffs", f"unknown measures {sorted(unknown)}; use MRR, nDCG, R, P")

    B = len(offsets) - 1
    counts = np.diff(offsets)
    qidx = row_of_each(offsets)  # query of every positive
    r = ranks.astype(np.float64)
    g = gains.astype(np.float64)

    best = np.full(B, np.inf)
    np.minimum.at(best, qidx, r)  # rank of the best positive; inf for queries without any
    # Ideal ranking: each query's gains sorted descending, placed at ranks 1, 2, ...
    order = np.lexsort((-g, qidx))  # qidx is already grouped, so this sorts within each query
    ideal_rank = np.arange(nnz) - offsets[qidx] + 1.0
    ideal_gain = g[order]

    def per_query_sum(weights):
        return np.bincount(qidx, weights=weights, minlength=B)

    def safe_div(num, den):
        return np.divide(num, den, out=np.zeros(B), where=den > 0)

    per_query = {}
    for kind, ks in cutoffs.items():
        for k in ks:
            if int(k) < 1:
                raise UsageError("cutoffs", f"{kind} cutoff must be >= 1, got {k}")
            k = int(k)
            if kind == "MRR":
                v = np.where(best <= k, 1.0 / best, 0.0)
            elif kind == "nDCG":
                dcg = per_query_sum(np.where(r <= k, g / np.log2(r + 1.0), 0.0))
                idcg = per_query_sum(np.where(ideal_rank <= k, ideal_gain / np.log2(ideal_rank + 1.0), 0.0))
                v = safe_div(dcg, idcg)
            elif kind == "R":
                v = safe_div(per_query_sum((r <= k).astype(np.float64)), counts.astype(np.float64))
            else:  # P
                v = per_query_sum((r <= k).astype(np.float64)) / k
            per_query[f"{kind}@{k}"] = v
    counted = counts > 0 if over == "with_positives" else np.ones(B, bool)
    means = {name: float(v[counted].mean()) if counted.any() else 0.0 for name, v in per_query.items()}
    return means, per_query


def mean_mrr(pos_offsets: Any, pos_ranks: Any, k: int = 10) -> float:
    """MRR@k over the queries that have a positive (0.0 when none has): the training logs' `mrr10`."""
    return metrics_from_ranks(pos_offsets, pos_ranks, cutoffs={"MRR": (k,)}, over="with_positives")[0][f"MRR@{k}"]

