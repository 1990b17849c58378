"""The only Python caller of the native module: validates every argument and picks the backend.

Inputs may be numpy arrays or torch tensors. Non-contiguous inputs are copied (never rejected).
Errors name the argument and what was expected.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence, Tuple

import numpy as np
import torch

from . import _C
from .results import SearchResult
from .torch_search import FlatChunkScorer, PQChunkScorer, torch_search

BACKENDS = ("native", "cuda", "torch")
_POISON_ID = np.iinfo(np.int64).min


def _describe(x: Any) -> str:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__module__.split('.')[0]} array of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def check_embeddings(emb: Any, name: str = "emb") -> Any:
    """A [N, d] float32/float16 matrix with N, d >= 1 and finite values, as a contiguous numpy array or tensor."""
    if isinstance(emb, torch.Tensor):
        emb = emb.detach()
        ok_dtypes = (torch.float32, torch.float16)
    elif isinstance(emb, np.ndarray):
        ok_dtypes = (np.float32, np.float16)
    else:
        raise TypeError(f"{name}: expected a numpy array or torch tensor of shape [N, d], got {_describe(emb)}")
    if emb.dtype not in ok_dtypes:
        raise TypeError(f"{name}: expected dtype float32 or float16, got {emb.dtype} (convert with .astype(np.float32))")
    if emb.ndim != 2:
        raise ValueError(f"{name}: expected shape [N, d], got {tuple(emb.shape)}")
    if emb.shape[0] == 0:
        raise ValueError(f"{name}: the index needs at least one row (N = 0)")
    if emb.shape[1] == 0:
        raise ValueError(f"{name}: the embedding dimension d must be >= 1")
    finite = torch.isfinite(emb).all().item() if isinstance(emb, torch.Tensor) else _all_finite(emb)
    if not finite:
        raise ValueError(f"{name}: contains NaN or Inf")
    return emb.contiguous() if isinstance(emb, torch.Tensor) else np.ascontiguousarray(emb)


def _all_finite(a: np.ndarray, chunk_rows: int = 1 << 16) -> bool:
    # Chunked so that checking a large memmap never allocates a full boolean copy.
    return all(np.isfinite(a[i : i + chunk_rows]).all() for i in range(0, a.shape[0], chunk_rows))


def check_queries(queries: Any, dim: int) -> Any:
    if isinstance(queries, torch.Tensor):
        queries = queries.detach()
        if queries.dtype != torch.float32:
            raise TypeError(f"queries: expected dtype float32, got {queries.dtype} (use queries.float())")
    elif isinstance(queries, np.ndarray):
        if queries.dtype != np.float32:
            raise TypeError(f"queries: expected dtype float32, got {queries.dtype} (use .astype(np.float32))")
    else:
        raise TypeError(f"queries: expected a numpy array or torch tensor of shape [B, {dim}], got {_describe(queries)}")
    if queries.ndim != 2:
        raise ValueError(f"queries: expected shape [B, {dim}], got {tuple(queries.shape)}")
    if queries.shape[0] == 0:
        raise ValueError("queries: the batch is empty (B = 0)")
    if queries.shape[1] != dim:
        raise ValueError(f"queries: expected dimension {dim} (the index's), got shape {tuple(queries.shape)}")
    finite = torch.isfinite(queries).all().item() if isinstance(queries, torch.Tensor) else np.isfinite(queries).all()
    if not finite:
        raise ValueError("queries: contains NaN or Inf")
    return queries


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """An integer argument (bools refused) of at least `minimum`, as int; the error names `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    return int(k)


def check_cutoff(cutoff: Any) -> int:
    """0 means no pair weights."""
    if cutoff is None:
        return 0
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, np.integer)):
        raise TypeError(f"cutoff: expected an int or None, got {type(cutoff).__name__}")
    if cutoff < 1:
        raise ValueError(f"cutoff: must be >= 1 (or None for no pair weights), got {cutoff}")
    return int(cutoff)


def as_int64_vector(x: Any, name: str, what: str = "integer row ids") -> np.ndarray:
    """A 1-D integer array or tensor (or an empty list) as contiguous int64 numpy; errors name `name`."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {x.shape}")
    if x.size and not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name}: expected {what}, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.int64)


def check_positives(positives: Any, B: int, N: int) -> Tuple[np.ndarray, np.ndarray]:
    """CSR (offsets int64 [B+1], ids int64 [nnz]) from a list of lists or a CSR pair; validated."""
    if positives is None:
        return np.zeros(B + 1, np.int64), np.zeros(0, np.int64)
    if isinstance(positives, tuple) and len(positives) == 2 and not isinstance(positives[0], (list, tuple)):
        offsets = as_int64_vector(positives[0], "positives offsets")
        ids = as_int64_vector(positives[1], "positives ids")
        if offsets.shape[0] != B + 1:
            raise ValueError(f"positives offsets: expected B + 1 = {B + 1} entries, got {offsets.shape[0]}")
        if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != ids.shape[0]:
            raise ValueError(
                "positives offsets: must start at 0, never decrease and end at len(ids) "
                f"(= {ids.shape[0]}), got {offsets.tolist() if B < 20 else '...'}")
    elif isinstance(positives, Sequence) and not isinstance(positives, (str, bytes)):
        if len(positives) != B:
            raise ValueError(f"positives: expected one list per query (B = {B}), got {len(positives)}")
        lists = [as_int64_vector(p, f"positives[{i}]") for i, p in enumerate(positives)]
        offsets = np.zeros(B + 1, np.int64)
        np.cumsum([len(p) for p in lists], out=offsets[1:])
        ids = np.concatenate(lists) if lists else np.zeros(0, np.int64)
    else:
        raise TypeError(f"positives: expected a list of lists of row ids or a CSR pair (offsets, ids), got {_describe(positives)}")
    if ids.size:
        bad = (ids < 0) | (ids >= N)
        if bad.any():
            raise ValueError(f"positives: row id {ids[bad][0]} is out of range [0, {N})")
        query = np.repeat(np.arange(B), np.diff(offsets))
        order = np.lexsort((ids, query))
        dup = (query[order][1:] == query[order][:-1]) & (ids[order][1:] == ids[order][:-1])
        if dup.any():
            j = order[1:][dup][0]
            raise ValueError(f"positives: row {ids[j]} is listed twice for query {query[j]}")
    return offsets, ids


def choose_backend(backend: str | None, on_cuda: bool) -> str:
    if backend is None:
        if not on_cuda:
            return "native"
        # The torch path stays the GPU default until the CUDA kernel is validated on hardware.
        return "cuda" if os.environ.get("DRFAST_CUDA_KERNEL") == "1" else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None, got {backend!r}")
    if backend == "native" and on_cuda:
        raise ValueError("backend: 'native' runs on the CPU but the index is on a CUDA device; use 'cuda' or 'torch'")
    if backend == "cuda" and not on_cuda:
        raise ValueError("backend: 'cuda' needs the index on a CUDA device (index.to('cuda'))")
    if backend == "cuda" and not _C.built_with_cuda:
        raise ValueError("backend: 'cuda' is not available: drfast was built without CUDA (DRFAST_CUDA=OFF or no toolkit)")
    return backend


def _finite(x: Any) -> bool:
    return bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else bool(np.isfinite(x).all())


def _check_overflow(result: SearchResult, kept: int) -> None:
    # NaN here also catches any output the kernel failed to write (outputs are poisoned with NaN).
    if not (_finite(result.scores[:, :kept]) and _finite(result.pos_scores)):
        raise ValueError("queries/index: inner products overflowed float32 (scores are NaN or Inf); rescale the embeddings")


def _prepare(queries: Any, dim: int, N: int, k: Any, positives: Any, cutoff: Any, backend: str | None,
             on_cuda: bool):
    """Validated (queries, k, cutoff, (offsets, ids), backend)."""
    queries = check_queries(queries, dim)
    k, cutoff = check_k(k), check_cutoff(cutoff)
    return queries, k, cutoff, check_positives(positives, queries.shape[0], N), choose_backend(backend, on_cuda)


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


def flat_search(queries: Any, docs: Any, k: Any, positives: Any = None, cutoff: Any = None,
                backend: str | None = None) -> SearchResult:
    """Fused search of queries against a validated [N, d] document matrix (see FlatIndex.search)."""
    N, d = docs.shape
    on_cuda = isinstance(docs, torch.Tensor) and docs.is_cuda
    queries, k, cutoff, (offsets, ids), backend = _prepare(queries, d, N, k, positives, cutoff, backend, on_cuda)
    B = queries.shape[0]
    if backend == "native":
        q, docs_np = _numpy(queries), docs.cpu().numpy() if isinstance(docs, torch.Tensor) else docs
        result = _run_native(lambda *out: _C.flat_search(q, docs_np, k, offsets, ids, cutoff, *out),
                             B, k, offsets, ids, cutoff)
    else:
        docs = _as_tensor(docs)
        q = _as_tensor(queries).to(docs.device).contiguous()
        off_t, ids_t = torch.from_numpy(offsets).to(docs.device), torch.from_numpy(ids).to(docs.device)
        if backend == "torch":
            result = torch_search(FlatChunkScorer(q, docs), B, k, off_t, ids_t, cutoff)
        else:
            result = _cuda_search(q, docs, k, off_t, ids_t, cutoff)
    return _finish(result, min(k, N), queries)


def pq_search(queries: Any, index: Any, k: Any, positives: Any = None, cutoff: Any = None,
              backend: str | None = None) -> SearchResult:
    """Fused search over a PQIndex's codes [N, m] from the [B, m, 256] float32 lookup tables
    `index.lookup_tables(queries)` computes on the codes' device (see PQIndex.search)."""
    codes = index.codes
    N = codes.shape[0]
    on_cuda = isinstance(codes, torch.Tensor) and codes.is_cuda
    queries, k, cutoff, (offsets, ids), backend = _prepare(queries, index.dim, N, k, positives, cutoff,
                                                           backend, on_cuda)
    B = queries.shape[0]
    device = codes.device if isinstance(codes, torch.Tensor) else torch.device("cpu")
    luts = index.lookup_tables(_as_tensor(queries).to(device))
    if backend == "native":
        luts_np, codes_np = _numpy(luts), _numpy(codes)
        result = _run_native(lambda *out: _C.pq_search(luts_np, codes_np, k, offsets, ids, cutoff, *out),
                             B, k, offsets, ids, cutoff)
    else:
        off_t, ids_t = torch.from_numpy(offsets).to(device), torch.from_numpy(ids).to(device)
        if backend == "torch":
            result = torch_search(PQChunkScorer(luts, _as_tensor(codes)), B, k, off_t, ids_t, cutoff)
        else:
            result = _cuda_pq_search(luts, codes.contiguous(), k, off_t, ids_t, cutoff)
    return _finish(result, min(k, N), queries)


def _as_tensor(x: Any) -> torch.Tensor:
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
