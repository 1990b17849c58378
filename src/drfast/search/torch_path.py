"""The torch reference path of the fused search: chunked matmul + top-k + rank counting.

Runs on any torch device and is the GPU default until the CUDA kernel has been checked on real
hardware. Same outputs and tie rules as the native kernel. For PQ indexes the scores are the
kernel's to the bit. For flat indexes a positive's score comes from its own dot product, so its
rounding can differ from the chunked matmul's: the positive itself is never counted above itself,
but near-ties within that rounding may be ranked differently from the native kernel (exact on
integer-valued data).
"""
from __future__ import annotations

import torch

from drfast.search.result import SearchResult

DEFAULT_CHUNK = 65536


def ordered_topk(scores: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k of each row by (score descending, row ascending)."""
    by_row = torch.argsort(rows, dim=1, stable=True)
    scores, rows = scores.gather(1, by_row), rows.gather(1, by_row)
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, by_score), rows.gather(1, by_score)


def chunk_topk(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k columns of s by (score desc, column asc), exact at ties on the boundary."""
    if k >= s.shape[1]:
        cols = torch.arange(s.shape[1], device=s.device).expand_as(s)
        return ordered_topk(s, cols, k)
    vals, cols = s.topk(k, dim=1)
    if bool(((s >= vals[:, -1:]).sum(1) > k).any()):
        # A tie straddles the boundary and topk picks among it arbitrarily: a stable sort
        # of the chunk (columns already ascending) keeps the lower columns.
        vals, cols = torch.sort(s, dim=1, descending=True, stable=True)
        vals, cols = vals[:, :k], cols[:, :k]
    return vals, cols


def pair_weights(ids: torch.Tensor, pos_query: torch.Tensor, pos_ids: torch.Tensor, pos_ranks: torch.Tensor,
                 cutoff: int) -> torch.Tensor:
    """ΔMRR weight |rr(rank_p) - rr(j + 1)| of every (positive, candidate j); 0 for positives and padding."""
    B, k = ids.shape
    dev = ids.device

    def rr(rank: torch.Tensor) -> torch.Tensor:
        return torch.where(rank <= cutoff, 1.0 / rank.float(), torch.zeros((), device=dev))

    hit = (ids[pos_query] == pos_ids[:, None]).to(torch.int32)          # [nnz, k]
    is_positive = torch.zeros(B, k, dtype=torch.int32, device=dev).index_add_(0, pos_query, hit) > 0
    blocked = (is_positive | (ids < 0))[pos_query]
    w = (rr(pos_ranks)[:, None] - rr(torch.arange(1, k + 1, device=dev))[None, :]).abs()
    return w.masked_fill(blocked, 0.0)


class FlatChunkScorer:
    """Inner products with a [N, d] float32/float16 matrix."""

    def __init__(self, queries: torch.Tensor, docs: torch.Tensor):
        self.queries, self.docs = queries, docs
        self.ntotal = docs.shape[0]

    def chunk(self, start: int, end: int) -> torch.Tensor:
        return self.queries @ self.docs[start:end].float().T

    def pairs(self, query: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (self.queries[query] * self.docs[rows].float()).sum(-1)


class PQChunkScorer:
    """Sums of lookup-table entries luts [B, m, 256] over codes [N, m], added in sub-quantizer
    order exactly as the native kernel does, so scores and ranks match it bit for bit."""

    def __init__(self, luts: torch.Tensor, codes: torch.Tensor):
        self.luts, self.codes = luts, codes
        self.ntotal = codes.shape[0]

    def chunk(self, start: int, end: int) -> torch.Tensor:
        codes = self.codes[start:end].long()
        s = torch.zeros(self.luts.shape[0], codes.shape[0], device=self.luts.device)
        for j in range(codes.shape[1]):
            s = s + self.luts[:, j, codes[:, j]]
        return s

    def pairs(self, query: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        codes = self.codes[rows].long()
        s = torch.zeros(rows.shape[0], device=self.luts.device)
        for j in range(codes.shape[1]):
            s = s + self.luts[query, j, codes[:, j]]
        return s


@torch.no_grad()
def torch_search(scorer, B: int, k: int, pos_offsets: torch.Tensor, pos_ids: torch.Tensor, cutoff: int,
                 chunk_rows: int | None = None, pos_scores: torch.Tensor | None = None) -> SearchResult:
    """Validated inputs on one device; `scorer` is a FlatChunkScorer or PQChunkScorer. Scores
    `chunk_rows` rows at a time (None: DEFAULT_CHUNK), merging each chunk's top-k into the running one.
    pos_scores: the positives' scores given (then pos_ids may lie outside [0, N) and are never read)."""
    N, dev = scorer.ntotal, pos_offsets.device
    chunk = DEFAULT_CHUNK if chunk_rows is None else chunk_rows
    kept = min(k, N)
    pos_query = torch.repeat_interleave(torch.arange(B, device=dev), pos_offsets.diff())
    pos_scores = scorer.pairs(pos_query, pos_ids) if pos_scores is None else pos_scores.clone()
    counts = torch.zeros(pos_ids.shape[0], dtype=torch.int64, device=dev)
    best_s = torch.empty(B, 0, device=dev)
    best_r = torch.empty(B, 0, dtype=torch.int64, device=dev)
    for start in range(0, N, chunk):
        s = scorer.chunk(start, min(N, start + chunk))                     # [B, c]
        rows = torch.arange(start, start + s.shape[1], device=dev)
        if pos_ids.numel():
            g, sp, p = s[pos_query], pos_scores[:, None], pos_ids[:, None]
            before = ((g > sp) | ((g == sp) & (rows < p))) & (rows != p)
            counts += before.sum(1)
        vals, cols = chunk_topk(s, min(kept, s.shape[1]))
        best_s, best_r = ordered_topk(torch.cat([best_s, vals], 1), torch.cat([best_r, cols + start], 1), kept)
    ids = torch.full((B, k), -1, dtype=torch.int64, device=dev)
    scores = torch.full((B, k), float("-inf"), device=dev)
    ids[:, :kept], scores[:, :kept] = best_r, best_s
    ranks = counts + 1
    weights = pair_weights(ids, pos_query, pos_ids, ranks, cutoff) if cutoff else None
    return SearchResult(ids=ids, scores=scores, pos_offsets=pos_offsets, pos_ids=pos_ids, pos_scores=pos_scores,
                        pos_ranks=ranks, pair_weights=weights)
