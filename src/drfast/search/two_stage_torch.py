"""The two-stage search with torch ops, chunk by chunk, on any device (search.two_stage runs it; the
algorithm is the native kernel's, see search.two_stage's docstring).

Exact scores come from the `pairs(query, rows)` of a scorer:
- torch_path.FlatChunkScorer: the rows on the first pass's device, scored by torch (an index moved to
  a GPU: bit-identical to the torch exact path on exactly representable data);
- HostPairScorer: the rows on the host (numpy, memmap), scored by the native exact scan's own pair
  scorer, so that results are bit-identical to the native exact scan while the first pass (and its
  copy of the rows) lives on another device (FlatIndex(first_pass_device=...)).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from drfast import _C
from drfast.common.arrays import to_numpy
from drfast.search.first_pass import FirstPassData, QueryCodes, TorchFirstPass
from drfast.search.native import WORK_PER_POSITIVE, WORK_PER_QUERY
from drfast.search.result import SearchResult
from drfast.search.torch_path import DEFAULT_CHUNK, chunk_topk, ordered_topk, pair_weights

REFINED, RESCORED_TOPK, RESCORED_RANKS = (WORK_PER_QUERY[c] for c in ("refined", "rescored_topk", "rescored_ranks"))
POS_REFINED, POS_RESCORED = (WORK_PER_POSITIVE[c] for c in ("refined", "rescored"))
PAIR_BATCH = 16384
DENSE_REFINE = 32  # the second bound of > 1/32 of a chunk's pairs: residual products by matmul, once


def batched(fn, n: int, *arrays):
    """fn over pair batches of PAIR_BATCH (bounded memory), results concatenated."""
    if n <= PAIR_BATCH:
        return fn(*arrays)
    parts = [fn(*(a[i : i + PAIR_BATCH] for a in arrays)) for i in range(0, n, PAIR_BATCH)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts))
    return torch.cat(parts)


class HostPairScorer:
    """Exact scores of (query, row) pairs against host rows [N, d] float32/float16 (numpy or
    memmap) by the native exact scan's pair scorer (_C.flat_score_positives), returned as float32
    tensors on `device`: bit-identical to the scores flat_search gives those pairs."""

    def __init__(self, queries: np.ndarray, docs: np.ndarray, device: torch.device):
        self.queries, self.docs, self.device = queries, docs, device
        self.ntotal = docs.shape[0]

    def pairs(self, query: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        n = query.shape[0]
        if n == 0:
            return torch.empty(0, device=self.device)
        q, r = to_numpy(query), to_numpy(rows)
        order = np.argsort(q, kind="stable")  # the kernel takes the pairs as a CSR over the queries
        offsets = np.zeros(self.queries.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(q, minlength=self.queries.shape[0]), out=offsets[1:])
        scores = np.empty(n, np.float32)
        _C.flat_score_positives(self.queries, self.docs, offsets, np.ascontiguousarray(r[order]), scores)
        out = np.empty(n, np.float32)
        out[order] = scores
        return torch.from_numpy(out).to(self.device)


class TorchTwoStage:
    """One torch two-stage search: the running top-k (exact scores), the positives' rank counts and
    the work counters, advanced one chunk of rows at a time by `chunk`."""

    def __init__(self, scorer: Any, fp: TorchFirstPass, B: int, kept: int, pos_offsets: torch.Tensor,
                 pos_ids: torch.Tensor, pos_scores: Optional[torch.Tensor], depth: Optional[int]):
        dev = pos_offsets.device
        self.scorer, self.fp, self.B, self.kept, self.depth = scorer, fp, B, kept, depth
        self.pos_offsets, self.pos_ids = pos_offsets, pos_ids
        self.pos_query = torch.repeat_interleave(torch.arange(B, device=dev), pos_offsets.diff())
        self.pos_scores = scorer.pairs(self.pos_query, pos_ids) if pos_scores is None else pos_scores.clone()
        nnz = pos_ids.shape[0]
        self.counts = torch.zeros(nnz, dtype=torch.int64, device=dev)
        self.work_q = torch.zeros(B, len(WORK_PER_QUERY), dtype=torch.int64, device=dev)
        self.work_p = torch.zeros(nnz, len(WORK_PER_POSITIVE), dtype=torch.int64, device=dev)
        self.best_s = torch.empty(B, 0, device=dev)
        self.best_r = torch.empty(B, 0, dtype=torch.int64, device=dev)

    def chunk(self, start: int, end: int) -> None:
        lo, hi, I = self.fp.bounds(start, end)
        self._residual = None  # the chunk's residual products, when many pairs need them
        self._topk(start, end, lo, hi, I)
        if self.pos_ids.numel():
            self._ranks(start, end, lo, hi, I)

    def _topk(self, start: int, end: int, lo: torch.Tensor, hi: torch.Tensor, I: Optional[torch.Tensor]) -> None:
        B, kept, dev = self.B, self.kept, lo.device
        ninf = torch.full((B,), float("-inf"), device=dev)
        # T (k-th exact score so far, earlier rows: strict) and L (k-th lower bound among these rows
        # and the current best: ties may favour this chunk's rows, so >=).
        T = self.best_s[:, kept - 1] if self.best_s.shape[1] == kept else ninf
        pool = torch.cat([self.best_s, lo], 1)
        L = pool.topk(kept, dim=1).values[:, -1] if pool.shape[1] >= kept else ninf
        bi, ci = ((hi > T[:, None]) & (hi >= L[:, None])).nonzero(as_tuple=True)
        if self.fp.data.refine and bi.numel():
            self.work_q[:, REFINED] += torch.bincount(bi, minlength=B)
            _, hi2 = self._refine(bi, ci, start, end, I)
            keep = (hi2 > T[bi].double()) & (hi2 >= L[bi].double())
            bi, ci = bi[keep], ci[keep]
        self.work_q[:, RESCORED_TOPK] += torch.bincount(bi, minlength=B)
        dense = torch.full((B, end - start), float("-inf"), device=dev)
        if bi.numel():
            dense[bi, ci] = batched(self.scorer.pairs, bi.numel(), bi, ci + start)
        vals, cols = chunk_topk(dense, min(kept, end - start))
        self.best_s, self.best_r = ordered_topk(torch.cat([self.best_s, vals], 1),
                                                torch.cat([self.best_r, cols + start], 1), kept)

    def _ranks(self, start: int, end: int, lo: torch.Tensor, hi: torch.Tensor, I: Optional[torch.Tensor]) -> None:
        nnz, pq, dev = self.pos_ids.shape[0], self.pos_query, lo.device
        lg, hg, sp = lo[pq], hi[pq], self.pos_scores[:, None]
        self.counts += (lg > sp).sum(1)
        rows = torch.arange(start, end, device=dev)
        band = (lg <= sp) & (hg >= sp) & (rows[None, :] != self.pos_ids[:, None])
        if self.depth is not None:  # rows proven before it show the rank past the depth: it is done
            band &= (self.counts < self.depth)[:, None]
        pi, ci = band.nonzero(as_tuple=True)
        if self.fp.data.refine and pi.numel():
            self.work_p[:, POS_REFINED] += torch.bincount(pi, minlength=nnz)
            lo2, hi2 = self._refine(pq[pi], ci, start, end, I)
            spd = self.pos_scores[pi].double()
            self.counts += torch.bincount(pi[lo2 > spd], minlength=nnz)
            und = (lo2 <= spd) & (hi2 >= spd)
            pi, ci = pi[und], ci[und]
        self.work_p[:, POS_RESCORED] += torch.bincount(pi, minlength=nnz)
        if pi.numel():
            s = batched(self.scorer.pairs, pi.numel(), pq[pi], ci + start)
            spi, r = self.pos_scores[pi], ci + start
            before = (s > spi) | ((s == spi) & (r < self.pos_ids[pi]))
            self.counts += torch.bincount(pi[before], minlength=nnz)

    def _refine(self, b: torch.Tensor, c: torch.Tensor, start: int, end: int, I: torch.Tensor):
        """Second bounds of pairs (query b, row start + c) of this chunk."""
        if b.numel() * DENSE_REFINE < self.B * (end - start):
            return batched(self.fp.refine, b.numel(), b, c + start, I[b, c])
        if self._residual is None:
            self._residual = self.fp.residual_products(start, end)
        i12, i21 = self._residual
        return batched(self.fp.refine, b.numel(), b, c + start, I[b, c], i12[b, c], i21[b, c])

    def result(self, k: int, cutoff: int) -> SearchResult:
        B, kept, dev = self.B, self.kept, self.best_s.device
        ids = torch.full((B, k), -1, dtype=torch.int64, device=dev)
        scores = torch.full((B, k), float("-inf"), device=dev)
        ids[:, :kept], scores[:, :kept] = self.best_r, self.best_s
        ranks = self.counts + 1
        if self.depth is not None:
            ranks = ranks.clamp(max=self.depth + 1)
        weights = pair_weights(ids, self.pos_query, self.pos_ids, ranks, cutoff) if cutoff else None
        return SearchResult(ids=ids, scores=scores, pos_offsets=self.pos_offsets, pos_ids=self.pos_ids,
                            pos_scores=self.pos_scores, pos_ranks=ranks, pair_weights=weights)

    def work(self) -> tuple:
        """(work per query [B, 3], work per positive [nnz, 2]) as int64 numpy arrays."""
        work_q = self.work_q.clone()
        if self.pos_ids.numel():  # the positives' work counts for their queries too
            for q_col, p_col in ((REFINED, POS_REFINED), (RESCORED_RANKS, POS_RESCORED)):
                work_q[:, q_col].index_add_(0, self.pos_query, self.work_p[:, p_col])
        return to_numpy(work_q), to_numpy(self.work_p)


@torch.no_grad()
def torch_two_stage(scorer: Any, data: FirstPassData, qc: QueryCodes, B: int, k: int, cutoff: int,
                    positives: tuple, chunk_rows: Optional[int] = None, depth: Optional[int] = None):
    """(SearchResult, work per query, work per positive) of the two-stage search of B queries with
    torch ops on the device of the positives' CSR. positives: (offsets, ids, given scores or None) as
    tensors on that device; depth: the rank depth (None: full)."""
    offsets, ids, given = positives
    fp = TorchFirstPass(data, qc, offsets.device)
    run = TorchTwoStage(scorer, fp, B, min(k, scorer.ntotal), offsets, ids, given, depth)
    chunk = DEFAULT_CHUNK if chunk_rows is None else chunk_rows
    for start in range(0, scorer.ntotal, chunk):
        run.chunk(start, min(scorer.ntotal, start + chunk))
    return (run.result(k, cutoff), *run.work())
