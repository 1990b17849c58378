"""The plumbing every search entry of `drfast.search` shares: which backend runs (native CPU kernels,
the CUDA kernel, or the torch path), the validated request, one guard for running out of memory,
poisoned native outputs, and the finishing step (overflow check, the rank depth, results in the
kind of the queries). The exact scans (search.fused), the two-stage search (search.two_stage) and the
sharded index build on these public names only.

(`csrc/cpu/isa_dispatch.cpp` is the native counterpart one level down: it chooses the instruction
set of the CPU kernels.)
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from drfast import _C
from drfast.common.arrays import as_tensor, to_numpy
from drfast.common.errors import UsageError
from drfast.search.result import SearchResult
from drfast.search.validate import (check_chunk_rows, check_cutoff, check_given_scores, check_k, check_positives,
                                    check_queries, check_rank_depth)

BACKENDS = ("native", "cuda", "torch")
POISON_ID = np.iinfo(np.int64).min


def choose_backend(backend: Optional[str], on_cuda: bool) -> str:
    """The backend to run: `backend` checked against where the index lives, or the default there."""
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


@dataclass(frozen=True)
class SearchRequest:
    """One search's arguments as the caller gave them (see FlatIndex.search); `validate` checks them.

    pos_scores: float32 [nnz], the positives' scores given (the sharded search): positive ids may then
    lie outside [0, N) and no cutoff. rank_depth: None (full depth) or D >= max(k, cutoff)."""

    queries: Any
    k: Any
    positives: Any = None
    cutoff: Any = None
    backend: Optional[str] = None
    chunk_rows: Optional[int] = None
    pos_scores: Any = None
    rank_depth: Any = None


@dataclass(frozen=True)
class ValidRequest:
    """A validated SearchRequest against N rows: `queries` checked (numpy or torch, as given), k >= 1,
    cutoff 0 for none, the positives as a CSR pair (offsets [B + 1], ids [nnz] int64 numpy), the
    backend chosen, rank_depth None or an int. `given` keeps the caller's queries, whose kind (numpy,
    or torch on a device) the results take."""

    queries: Any
    k: int
    cutoff: int
    offsets: np.ndarray
    ids: np.ndarray
    backend: str
    chunk_rows: Optional[int]
    pos_scores: Any
    rank_depth: Optional[int]
    given: Any

    @property
    def B(self) -> int:
        return int(self.queries.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.ids.shape[0])


def validate(request: SearchRequest, dim: int, N: int, on_cuda: bool) -> ValidRequest:
    """Every argument of `request` checked for an index of N rows of dimension `dim` (living on a
    CUDA device when `on_cuda`); raises UsageError / UsageTypeError naming the argument."""
    queries = check_queries(request.queries, dim)
    k = check_k(request.k, N)
    cutoff = check_cutoff(request.cutoff, N, k)
    depth = check_rank_depth(request.rank_depth, k, cutoff)
    given_scores = request.pos_scores
    offsets, ids = check_positives(request.positives, queries.shape[0], N, in_range=given_scores is None)
    backend = choose_backend(request.backend, on_cuda)
    if given_scores is not None:
        check_given_scores(given_scores, ids.shape[0], cutoff)
        if backend == "cuda":
            raise NotImplementedError("pos_scores: the CUDA kernel does not take given positive scores yet "
                                      "(the sharded search); use backend='torch' on a GPU")
    return ValidRequest(queries, k, cutoff, offsets, ids, backend, check_chunk_rows(request.chunk_rows, backend),
                        given_scores, depth, request.queries)


@contextlib.contextmanager
def memory_guard(req: ValidRequest):
    """Any failed allocation of a search (outputs, native working memory, torch chunks) as one
    MemoryError saying what the search needs; checked once before anything is allocated."""
    B, k, nnz, cutoff = req.B, req.k, req.nnz, req.cutoff
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


def run_native(kernel: Callable[..., Any], req: ValidRequest) -> SearchResult:
    """Allocates poisoned outputs, runs `kernel(ids, scores, pos_scores, pos_ranks, pair_weights)`
    (a native entry filling them) and returns them."""
    B, k, nnz = req.B, req.k, req.nnz
    result = SearchResult(
        ids=np.full((B, k), POISON_ID, np.int64), scores=np.full((B, k), np.nan, np.float32),
        pos_offsets=req.offsets, pos_ids=req.ids, pos_scores=np.full(nnz, np.nan, np.float32),
        pos_ranks=np.full(nnz, POISON_ID, np.int64),
        pair_weights=np.full((nnz, k), np.nan, np.float32) if req.cutoff else None)
    kernel(result.ids, result.scores, result.pos_scores, result.pos_ranks, result.pair_weights)
    return result


def finite(x: Any) -> bool:
    return bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else bool(np.isfinite(x).all())


def clamp_ranks(ranks: Any, depth: Optional[int]) -> Any:
    """Ranks deeper than `depth` reported as depth + 1 (None: as they are)."""
    if depth is None:
        return ranks
    if isinstance(ranks, torch.Tensor):
        return ranks.clamp(max=depth + 1)
    return np.minimum(ranks, depth + 1)


def finish(result: SearchResult, req: ValidRequest, N: int) -> SearchResult:
    """Overflow check, ranks clamped at the request's depth, then results in the kind (numpy / torch
    on the queries' device) of the caller's queries; `rank_depth` recorded."""
    # NaN here also catches any output the kernel failed to write (outputs are poisoned with NaN).
    if not (finite(result.scores[:, :min(req.k, N)]) and finite(result.pos_scores)):
        raise UsageError("queries/index", "inner products overflowed float32 (scores are NaN or Inf); rescale the embeddings")
    fields = {f: v for f, v in vars(result).items() if f != "rank_depth"}
    fields["pos_ranks"] = clamp_ranks(fields["pos_ranks"], req.rank_depth)
    if isinstance(req.given, torch.Tensor):
        fields = {f: None if v is None else as_tensor(v).to(req.given.device) for f, v in fields.items()}
    else:
        fields = {f: None if v is None else to_numpy(v) for f, v in fields.items()}
    return SearchResult(**fields, rank_depth=req.rank_depth)


def on_device(req: ValidRequest, device: torch.device):
    """(queries, offsets, ids, pos_scores) of a validated request as torch tensors on `device`
    (the torch and CUDA backends); pos_scores None when not given."""
    q = as_tensor(req.queries).to(device).contiguous()
    off_t, ids_t = torch.from_numpy(req.offsets).to(device), torch.from_numpy(req.ids).to(device)
    given = None if req.pos_scores is None else as_tensor(req.pos_scores).to(device)
    return q, off_t, ids_t, given


def host_arrays(req: ValidRequest):
    """(queries, pos_scores) of a validated request as C-contiguous numpy arrays (the native kernels);
    pos_scores None when not given."""
    given = None if req.pos_scores is None else to_numpy(req.pos_scores, contiguous=True)
    return to_numpy(req.queries, contiguous=True), given
