"""The result of a fused search."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class SearchResult:
    """Outputs of ``index.search``; arrays are numpy for numpy queries, torch tensors for torch queries.

    Attributes
    ----------
    ids, scores : [B, k]
        Top-k rows by score (descending, ties by lower row); -1 / -inf padding when k > N.
    pos_offsets : [B+1]
        CSR offsets over the positives, in the order given.
    pos_ids : [nnz]
        Positive row ids.
    pos_scores : [nnz]
        Each positive's score, computed exactly as the scan computes it.
    pos_ranks : [nnz]
        1-based rank over the whole corpus: ``1 + #{r : s_r > s_p or (s_r == s_p and r < p)}``.
    pair_weights : [nnz, k] or None
        ΔMRR weight of (positive, candidate) pairs, only when a cutoff is given.
    rank_depth : int or None
        None: pos_ranks over the whole corpus; D: ranks exact up to D, deeper ones reported as D + 1.
    """

    ids: Any
    scores: Any
    pos_offsets: Any
    pos_ids: Any
    pos_scores: Any
    pos_ranks: Any
    pair_weights: Optional[Any] = None
    rank_depth: Optional[int] = None
