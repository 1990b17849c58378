"""The exact fused scans: `flat_search` and `pq_search` validate every argument (search.validate,
through search.backend) and run the chosen backend (native CPU kernels, the CUDA kernel or the torch
path) on poisoned outputs; results come back in the kind of the queries (numpy, or torch on their
device). `positive_scores` gives the positives' scores alone, bit for bit as a scan computes them.
`unchecked_native_search` is the one door to the kernels that skips validation (tests of the
bindings' own checks only).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from drfast import _C
from drfast.common.arrays import as_tensor, to_numpy
from drfast.common.errors import UsageError, UsageTypeError
from drfast.search.backend import (POISON_ID, SearchRequest, ValidRequest, finish, finite, host_arrays,
                                   memory_guard, on_device, run_native, validate)
from drfast.search.result import SearchResult
from drfast.search.runtime import fork_safe
from drfast.search.torch_path import FlatChunkScorer, PQChunkScorer, torch_search
from drfast.search.validate import check_codes


def flat_search(queries: Any, docs: Any, k: Any, positives: Any = None, cutoff: Any = None,
                backend: str | None = None, chunk_rows: int | None = None, pos_scores: Any = None,
                rank_depth: int | None = None) -> SearchResult:
    """Fused search of queries against a validated [N, d] document matrix (see FlatIndex.search).
    chunk_rows: rows scored per step by the torch backend (default torch_path.DEFAULT_CHUNK).
    pos_scores: float32 [nnz], the positives' scores given (the sharded search, see
    index/sharded.py): no positive row is read, positive ids may lie outside [0, N) (compared with
    the rows by id alone), and no cutoff; not with the CUDA kernel (NotImplementedError).
    rank_depth: None, or D >= max(k, cutoff): ranks exact up to D, deeper ones reported as D + 1."""
    request = SearchRequest(queries, k, positives, cutoff, backend, chunk_rows, pos_scores, rank_depth)
    return flat_search_request(request, docs)


@fork_safe
def flat_search_request(request: SearchRequest, docs: Any) -> SearchResult:
    """flat_search of a SearchRequest (the two-stage search's fallback, the sharded search)."""
    N, d = docs.shape
    req = validate(request, d, N, isinstance(docs, torch.Tensor) and docs.is_cuda)
    with memory_guard(req):
        result = _flat_backend(req, docs)
    return finish(result, req, N)


def _flat_backend(req: ValidRequest, docs: Any) -> SearchResult:
    if req.backend == "native":
        q, given = host_arrays(req)
        docs_np = to_numpy(docs)
        return run_native(lambda *out: _C.flat_search(q, docs_np, req.k, req.offsets, req.ids, req.cutoff, *out,
                                                      given), req)
    docs = as_tensor(docs)
    q, off_t, ids_t, given = on_device(req, docs.device)
    if req.backend == "torch":
        return torch_search(FlatChunkScorer(q, docs), req.B, req.k, off_t, ids_t, req.cutoff, req.chunk_rows, given)
    return _cuda_search(q, docs, req.k, off_t, ids_t, req.cutoff)


def pq_search(queries: Any, index: Any, k: Any, positives: Any = None, cutoff: Any = None,
              backend: str | None = None, chunk_rows: int | None = None, pos_scores: Any = None,
              luts: Any = None, rank_depth: int | None = None) -> SearchResult:
    """Fused search over a PQIndex's codes [N, m] from the [B, m, 256] float32 lookup tables
    `index.lookup_tables(queries)` computes on the codes' device (see PQIndex.search).
    chunk_rows, pos_scores, rank_depth: as in flat_search. luts: the lookup tables given (torch
    [B, m, 256] float32, from index.lookup_tables; the sharded search); `queries` then only says the
    kind of the results and may be None (torch results on the tables' device)."""
    request = SearchRequest(queries, k, positives, cutoff, backend, chunk_rows, pos_scores, rank_depth)
    return pq_search_request(request, index, luts)


@fork_safe
def pq_search_request(request: SearchRequest, index: Any, luts: Any = None) -> SearchResult:
    """pq_search of a SearchRequest (the sharded search)."""
    codes = check_codes(index.codes, index.m)
    N = codes.shape[0]
    if luts is not None:
        luts = check_luts(luts, index.m)
        if request.queries is None:
            request = SearchRequest(torch.zeros(luts.shape[0], index.dim, device=luts.device), *_rest(request))
    req = validate(request, index.dim, N, isinstance(codes, torch.Tensor) and codes.is_cuda)
    with memory_guard(req):
        result = _pq_backend(req, index, codes, luts)
    return finish(result, req, N)


def _rest(request: SearchRequest) -> tuple:
    return (request.k, request.positives, request.cutoff, request.backend, request.chunk_rows, request.pos_scores,
            request.rank_depth)


def check_luts(luts: Any, m: int) -> torch.Tensor:
    """Given lookup tables: a float32 torch tensor [B, m, 256] with B == the queries' (finiteness: _pq_backend)."""
    if not isinstance(luts, torch.Tensor) or luts.dtype != torch.float32:
        raise UsageTypeError("luts", f"expected a float32 torch tensor [B, {m}, 256], got {type(luts).__name__}")
    if luts.ndim != 3 or luts.shape[1] != m or luts.shape[2] != 256:
        raise UsageError("luts", f"expected shape [B, {m}, 256], got {tuple(luts.shape)}")
    return luts.contiguous()


def _pq_backend(req: ValidRequest, index: Any, codes: Any, luts: Any = None) -> SearchResult:
    device = codes.device if isinstance(codes, torch.Tensor) else torch.device("cpu")
    if luts is None:
        luts = index.lookup_tables(as_tensor(req.queries).to(device))
    elif luts.shape[0] != req.B:
        raise UsageError("luts", f"expected {req.B} tables (one per query), got {luts.shape[0]}")
    else:
        luts = luts.to(device)
    if not finite(luts):  # else rows behind a NaN table entry silently drop out of the top-k and the ranks
        raise UsageError("index.centroids", "the lookup tables <query, centroid> are NaN or Inf "
                         "(the centroids contain NaN or Inf, or the products overflow float32)")
    if req.backend == "native":
        luts_np, codes_np = to_numpy(luts, contiguous=True), to_numpy(codes, contiguous=True)
        _, given = host_arrays(req)
        return run_native(lambda *out: _C.pq_search(luts_np, codes_np, req.k, req.offsets, req.ids, req.cutoff,
                                                    *out, given), req)
    _, off_t, ids_t, given = on_device(req, device)
    if req.backend == "torch":
        return torch_search(PQChunkScorer(luts, as_tensor(codes)), req.B, req.k, off_t, ids_t, req.cutoff,
                            req.chunk_rows, given)
    return _cuda_pq_search(luts, codes.contiguous(), req.k, off_t, ids_t, req.cutoff)


def _cuda_outputs(B: int, k: int, offsets: torch.Tensor, ids: torch.Tensor, cutoff: int) -> SearchResult:
    dev, nnz = ids.device, ids.shape[0]
    return SearchResult(
        ids=torch.full((B, k), POISON_ID, dtype=torch.int64, device=dev),
        scores=torch.full((B, k), float("nan"), device=dev),
        pos_offsets=offsets, pos_ids=ids,
        pos_scores=torch.full((nnz,), float("nan"), device=dev),
        pos_ranks=torch.full((nnz,), POISON_ID, dtype=torch.int64, device=dev),
        pair_weights=torch.full((nnz, k), float("nan"), device=dev) if cutoff else None)


def _output_pointers(res: SearchResult) -> tuple:
    return (res.ids.data_ptr(), res.scores.data_ptr(), res.pos_scores.data_ptr(), res.pos_ranks.data_ptr(),
            res.pair_weights.data_ptr() if res.pair_weights is not None else 0)


def _cuda_search(q: torch.Tensor, docs: torch.Tensor, k: int, offsets: torch.Tensor, ids: torch.Tensor,
                 cutoff: int) -> SearchResult:
    res = _cuda_outputs(q.shape[0], k, offsets, ids, cutoff)
    stream = torch.cuda.current_stream(q.device).cuda_stream
    _C.flat_search_cuda(q.data_ptr(), q.shape[0], q.shape[1], docs.data_ptr(), docs.shape[0],
                        docs.dtype == torch.float16, k, offsets.data_ptr(), ids.data_ptr(), cutoff,
                        *_output_pointers(res), stream)
    return res


def _cuda_pq_search(luts: torch.Tensor, codes: torch.Tensor, k: int, offsets: torch.Tensor, ids: torch.Tensor,
                    cutoff: int) -> SearchResult:
    res = _cuda_outputs(luts.shape[0], k, offsets, ids, cutoff)
    stream = torch.cuda.current_stream(luts.device).cuda_stream
    _C.pq_search_cuda(luts.data_ptr(), luts.shape[0], luts.shape[1], codes.data_ptr(), codes.shape[0], k,
                      offsets.data_ptr(), ids.data_ptr(), cutoff, *_output_pointers(res), stream)
    return res


def positive_scores(kind: str, scores_of: Any, rows: Any, offsets: np.ndarray, ids: np.ndarray,
                    backend: str) -> torch.Tensor:
    """float32 [nnz]: the scores the search of `backend` gives these positives, bit for bit (its own
    pair scorer) without scanning: kind "flat" (scores_of = validated queries [B, d], rows = docs
    [N, d]) or "pq" (scores_of = luts [B, m, 256] float32 tensor, rows = codes [N, m]). offsets/ids:
    a validated CSR with ids in [0, N). A torch tensor on the rows' device (the sharded search's
    owner scores; a two-stage index's exact scores are its flat scores)."""
    if backend == "cuda":
        raise NotImplementedError("backend: the CUDA kernel has no positive-scoring entry yet (the sharded "
                                  "search); use backend='torch' on a GPU")
    B = scores_of.shape[0]
    if backend == "native":
        out = np.full(ids.shape[0], np.nan, np.float32)
        if ids.shape[0]:
            entry = _C.flat_score_positives if kind == "flat" else _C.pq_score_positives
            entry(to_numpy(scores_of, contiguous=True), to_numpy(rows), offsets, ids, out)
        return torch.from_numpy(out)
    rows_t = as_tensor(rows)
    dev = rows_t.device
    scorer = (FlatChunkScorer(as_tensor(scores_of).to(dev).contiguous(), rows_t) if kind == "flat"
              else PQChunkScorer(as_tensor(scores_of).to(dev), rows_t))
    off_t, ids_t = torch.from_numpy(offsets).to(dev), torch.from_numpy(ids).to(dev)
    pos_query = torch.repeat_interleave(torch.arange(B, device=dev), off_t.diff())
    with torch.no_grad():
        return scorer.pairs(pos_query, ids_t)


def unchecked_native_search(kind: str, *args: Any) -> None:
    """The native CPU kernel `kind` ("flat" or "pq") called as is: NO Python-side validation.

    Only for tests of the bindings' own last-line checks (csrc/bindings.cpp), which must reject bad
    arrays with a ValueError rather than crash; everything else goes through flat_search / pq_search.
    args: ("flat") queries, docs, k, pos_offsets, pos_ids, cutoff, ids, scores, pos_scores, pos_ranks
    [, pair_weights]; ("pq") the same with luts [B, m, 256] and codes [N, m] for queries and docs.
    """
    {"flat": _C.flat_search, "pq": _C.pq_search}[kind](*args)
