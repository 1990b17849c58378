"""The only Python caller of the native module: validates every argument and picks the backend.

Arguments are validated by `drfast.search.validate`; this module runs the chosen backend on
poisoned outputs and returns the results in the kind of the queries (numpy, or torch on their device).
`unchecked_native_search` is the one door to the kernels that skips that validation (tests of the
bindings' own checks only).
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any

import numpy as np
import torch

from drfast import _C
from drfast.common.errors import UsageError, UsageTypeError
from drfast.search.validate import (check_chunk_rows, check_codes, check_cutoff, check_given_scores, check_k,
                                    check_positives, check_queries)
from drfast.search.result import SearchResult
from drfast.search.runtime import fork_safe
from drfast.search.torch_path import FlatChunkScorer, PQChunkScorer, torch_search

BACKENDS = ("native", "cuda", "torch")
_POISON_ID = np.iinfo(np.int64).min


def choose_backend(backend: str | None, on_cuda: bool) -> str:
    if backend is None:
        if not on_cuda:
            return "native"
        # The torch path stays the GPU default until the CUDA kernel is validated on hardware.
        return "cuda" if os.environ.get("DRFAST_CUDA_KERNEL") == "1" else "torch"
    if backend not in BACKENDS:
        raise UsageError("backend", f"expected one of {BACKENDS} or None, got {backend!r}")
    if backend == "native" and on_cuda:
        raise UsageError("backend", "'native' runs on the CPU but the index is on a CUDA device; use 'cuda' or 'torch'")
    if backend == "cuda" and not on_cuda:
        raise UsageError("backend", "'cuda' needs the index on a CUDA device (index.to('cuda'))")
    if backend == "cuda" and not _C.built_with_cuda:
        raise UsageError("backend", "'cuda' is not available: drfast was built without CUDA (DRFAST_CUDA=OFF or no toolkit)")
    return backend


def _finite(x: Any) -> bool:
    return bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else bool(np.isfinite(x).all())


def _check_overflow(result: SearchResult, kept: int) -> None:
    # NaN here also catches any output the kernel failed to write (outputs are poisoned with NaN).
    if not (_finite(result.scores[:, :kept]) and _finite(result.pos_scores)):
        raise UsageError("queries/index", "inner products overflowed float32 (scores are NaN or Inf); rescale the embeddings")


def _prepare(queries: Any, dim: int, N: int, k: Any, positives: Any, cutoff: Any, backend: str | None,
             on_cuda: bool, chunk_rows: Any, pos_scores: Any = None):
    """Validated (queries, k, cutoff, (offsets, ids), backend, chunk_rows); with `pos_scores` (the
    positives' scores given) the positive ids need not lie in [0, N) and the scores are checked too."""
    queries = check_queries(queries, dim)
    k = check_k(k, N)
    cutoff = check_cutoff(cutoff, N, k)
    positives = check_positives(positives, queries.shape[0], N, in_range=pos_scores is None)
    backend = choose_backend(backend, on_cuda)
    if pos_scores is not None:
        check_given_scores(pos_scores, positives[1].shape[0], cutoff)
        if backend == "cuda":
            raise NotImplementedError("pos_scores: the CUDA kernel does not take given positive scores yet "
                                      "(the sharded search); use backend='torch' on a GPU")
    return queries, k, cutoff, positives, backend, check_chunk_rows(chunk_rows, backend)


@contextlib.contextmanager
def _memory_guard(B: int, k: int, nnz: int, cutoff: int):
    """Any failed allocation of a search (outputs, native working memory, torch chunks) as one
    MemoryError saying what the search needs; checked once before anything is allocated."""
    out_bytes = B * k * 12 + nnz * 28 + (nnz * k * 4 if cutoff else 0)
    outputs = "ids and scores [B, k]" + (f", pair_weights [nnz={nnz}, k]" if cutoff else "")
    message = (f"search: out of memory for B={B} queries and k={k} (outputs: {out_bytes / 2**30:.2f} GiB for "
               f"{outputs}; working memory grows with B, k, the threads and d); lower k or search fewer queries "
               "at a time")
    if out_bytes > sys.maxsize:
        raise MemoryError(message)
    try:
        yield
    except MemoryError as e:  # numpy, and std::bad_alloc from the native kernels
        raise MemoryError(message) from e
    except RuntimeError as e:  # torch's CPU allocator (CUDA's out-of-memory error passes through as is)
        if "can't allocate memory" not in str(e):
            raise
        raise MemoryError(message) from e


def _run_native(kernel, B: int, k: int, offsets: np.ndarray, ids: np.ndarray, cutoff: int) -> SearchResult:
    """Allocates poisoned outputs, runs `kernel(*outputs)` and returns them."""
    nnz = ids.shape[0]
    result = SearchResult(
        ids=np.full((B, k), _POISON_ID, np.int64), scores=np.full((B, k), np.nan, np.float32),
        pos_offsets=offsets, pos_ids=ids, pos_scores=np.full(nnz, np.nan, np.float32),
        pos_ranks=np.full(nnz, _POISON_ID, np.int64),
        pair_weights=np.full((nnz, k), np.nan, np.float32) if cutoff else None)
    kernel(result.ids, result.scores, result.pos_scores, result.pos_ranks, result.pair_weights)
    return result


def _finish(result: SearchResult, kept: int, queries: Any) -> SearchResult:
    """Overflow check, then results in the kind (numpy / torch on the queries' device) of the queries."""
    _check_overflow(result, kept)
    if isinstance(queries, torch.Tensor):
        return SearchResult(**{f: None if v is None else torch.as_tensor(v).to(queries.device)
                               for f, v in vars(result).items()})
    return SearchResult(**{f: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for f, v in vars(result).items()})


def _numpy(x: Any) -> np.ndarray:
    return np.ascontiguousarray(x.cpu().numpy() if isinstance(x, torch.Tensor) else x)


@fork_safe
def flat_search(queries: Any, docs: Any, k: Any, positives: Any = None, cutoff: Any = None,
                backend: str | None = None, chunk_rows: int | None = None, pos_scores: Any = None) -> SearchResult:
    """Fused search of queries against a validated [N, d] document matrix (see FlatIndex.search).
    chunk_rows: rows scored per step by the torch backend (default torch_path.DEFAULT_CHUNK).
    pos_scores: float32 [nnz], the positives' scores given (the sharded search, see
    index/sharded.py): no positive row is read, positive ids may lie outside [0, N) (compared with
    the rows by id alone), and no cutoff; not with the CUDA kernel (NotImplementedError)."""
    N, d = docs.shape
    on_cuda = isinstance(docs, torch.Tensor) and docs.is_cuda
    queries, k, cutoff, (offsets, ids), backend, chunk_rows = _prepare(queries, d, N, k, positives, cutoff,
                                                                       backend, on_cuda, chunk_rows, pos_scores)
    with _memory_guard(queries.shape[0], k, ids.shape[0], cutoff):
        result = _flat_backend(queries, docs, k, offsets, ids, cutoff, backend, chunk_rows, pos_scores)
    return _finish(result, min(k, N), queries)


def _flat_backend(queries, docs, k, offsets, ids, cutoff, backend, chunk_rows, pos_scores=None) -> SearchResult:
    B = queries.shape[0]
    if backend == "native":
        q, docs_np = _numpy(queries), docs.cpu().numpy() if isinstance(docs, torch.Tensor) else docs
        given = None if pos_scores is None else _numpy(pos_scores)
        result = _run_native(lambda *out: _C.flat_search(q, docs_np, k, offsets, ids, cutoff, *out, given),
                             B, k, offsets, ids, cutoff)
    else:
        docs = as_tensor(docs)
        q = as_tensor(queries).to(docs.device).contiguous()
        off_t, ids_t = torch.from_numpy(offsets).to(docs.device), torch.from_numpy(ids).to(docs.device)
        if backend == "torch":
            given = None if pos_scores is None else as_tensor(pos_scores).to(docs.device)
            result = torch_search(FlatChunkScorer(q, docs), B, k, off_t, ids_t, cutoff, chunk_rows, given)
        else:
            result = _cuda_search(q, docs, k, off_t, ids_t, cutoff)
    return result


@fork_safe
def pq_search(queries: Any, index: Any, k: Any, positives: Any = None, cutoff: Any = None,
              backend: str | None = None, chunk_rows: int | None = None, pos_scores: Any = None,
              luts: Any = None) -> SearchResult:
    """Fused search over a PQIndex's codes [N, m] from the [B, m, 256] float32 lookup tables
    `index.lookup_tables(queries)` computes on the codes' device (see PQIndex.search).
    chunk_rows: rows scored per step by the torch backend (default torch_path.DEFAULT_CHUNK).
    pos_scores: the positives' scores given, as in flat_search. luts: the lookup tables given
    (torch [B, m, 256] float32, from index.lookup_tables; the sharded search); `queries` then only
    says the kind of the results and may be None (torch results on the tables' device)."""
    codes = check_codes(index.codes, index.m)
    N = codes.shape[0]
    on_cuda = isinstance(codes, torch.Tensor) and codes.is_cuda
    if luts is not None:
        luts = check_luts(luts, index.m)
        queries = torch.zeros(luts.shape[0], index.dim, device=luts.device) if queries is None else queries
    queries, k, cutoff, (offsets, ids), backend, chunk_rows = _prepare(queries, index.dim, N, k, positives,
                                                                       cutoff, backend, on_cuda, chunk_rows,
                                                                       pos_scores)
    with _memory_guard(queries.shape[0], k, ids.shape[0], cutoff):
        result = _pq_backend(queries, index, codes, k, offsets, ids, cutoff, backend, chunk_rows, pos_scores, luts)
    return _finish(result, min(k, N), queries)


def check_luts(luts: Any, m: int) -> torch.Tensor:
    """Given lookup tables: a float32 torch tensor [B, m, 256] with B == the queries' (finiteness: _pq_backend)."""
    if not isinstance(luts, torch.Tensor) or luts.dtype != torch.float32:
        raise UsageTypeError("luts", f"expected a float32 torch tensor [B, {m}, 256], got {type(luts).__name__}")
    if luts.ndim != 3 or luts.shape[1] != m or luts.shape[2] != 256:
        raise UsageError("luts", f"expected shape [B, {m}, 256], got {tuple(luts.shape)}")
    return luts.contiguous()


def _pq_backend(queries, index, codes, k, offsets, ids, cutoff, backend, chunk_rows, pos_scores=None,
                luts=None) -> SearchResult:
    B = queries.shape[0]
    device = codes.device if isinstance(codes, torch.Tensor) else torch.device("cpu")
    if luts is None:
        luts = index.lookup_tables(as_tensor(queries).to(device))
    elif luts.shape[0] != B:
        raise UsageError("luts", f"expected {B} tables (one per query), got {luts.shape[0]}")
    else:
        luts = luts.to(device)
    if not _finite(luts):  # else rows behind a NaN table entry silently drop out of the top-k and the ranks
        raise UsageError("index.centroids", "the lookup tables <query, centroid> are NaN or Inf "
                         "(the centroids contain NaN or Inf, or the products overflow float32)")
    if backend == "native":
        luts_np, codes_np = _numpy(luts), _numpy(codes)
        given = None if pos_scores is None else _numpy(pos_scores)
        result = _run_native(lambda *out: _C.pq_search(luts_np, codes_np, k, offsets, ids, cutoff, *out, given),
                             B, k, offsets, ids, cutoff)
    else:
        off_t, ids_t = torch.from_numpy(offsets).to(device), torch.from_numpy(ids).to(device)
        if backend == "torch":
            given = None if pos_scores is None else as_tensor(pos_scores).to(device)
            result = torch_search(PQChunkScorer(luts, as_tensor(codes)), B, k, off_t, ids_t, cutoff, chunk_rows,
                                  given)
        else:
            result = _cuda_pq_search(luts, codes.contiguous(), k, off_t, ids_t, cutoff)
    return result


def as_tensor(x: Any) -> torch.Tensor:
    """A torch view of a numpy array (zero-copy, memmaps too), or the tensor itself."""
    if isinstance(x, torch.Tensor):
        return x
    with warnings.catch_warnings():  # read-only memmaps are only read here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(x)


def _cuda_outputs(B: int, k: int, offsets: torch.Tensor, ids: torch.Tensor, cutoff: int) -> SearchResult:
    dev, nnz = ids.device, ids.shape[0]
    return SearchResult(
        ids=torch.full((B, k), _POISON_ID, dtype=torch.int64, device=dev),
        scores=torch.full((B, k), float("nan"), device=dev),
        pos_offsets=offsets, pos_ids=ids,
        pos_scores=torch.full((nnz,), float("nan"), device=dev),
        pos_ranks=torch.full((nnz,), _POISON_ID, dtype=torch.int64, device=dev),
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
            entry(_numpy(scores_of), rows.cpu().numpy() if isinstance(rows, torch.Tensor) else rows, offsets, ids, out)
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
