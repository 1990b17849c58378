"""Validation of every search argument: shapes, dtypes, finiteness, id ranges. Errors name the argument.

Inputs may be numpy arrays or torch tensors (on the CPU or a CUDA device). Non-contiguous and
read-only inputs are fine (copied where needed, never written).
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np
import torch

from drfast.common.checks import as_int64_vector, check_int, describe
from drfast.common.errors import UsageError, UsageTypeError

# k may exceed N (the extra columns are padding: ids -1, scores -inf), by at most this much: a larger
# k is almost certainly a mistake (k=10**9 on 300 rows would allocate 15 GB of padding).
MAX_K_PADDING = 65536


def check_embeddings(emb: Any, name: str = "emb") -> Any:
    """A [N, d] float32/float16 matrix with N, d >= 1 and finite values, as a contiguous numpy array or tensor."""
    if isinstance(emb, torch.Tensor):
        emb = emb.detach()
        ok_dtypes = (torch.float32, torch.float16)
    elif isinstance(emb, np.ndarray):
        ok_dtypes = (np.float32, np.float16)
    else:
        raise UsageTypeError(name, f"expected a numpy array or torch tensor of shape [N, d], got {describe(emb)}")
    if emb.dtype not in ok_dtypes:
        raise UsageTypeError(name, f"expected dtype float32 or float16, got {emb.dtype} (convert with .astype(np.float32))")
    if emb.ndim != 2:
        raise UsageError(name, f"expected shape [N, d], got {tuple(emb.shape)}")
    if emb.shape[0] == 0:
        raise UsageError(name, "the index needs at least one row (N = 0)")
    if emb.shape[1] == 0:
        raise UsageError(name, "the embedding dimension d must be >= 1")
    finite = torch.isfinite(emb).all().item() if isinstance(emb, torch.Tensor) else _all_finite(emb)
    if not finite:
        raise UsageError(name, "contains NaN or Inf")
    return emb.contiguous() if isinstance(emb, torch.Tensor) else np.ascontiguousarray(emb)


def _all_finite(a: np.ndarray, chunk_rows: int = 1 << 16) -> bool:
    # Chunked so that checking a large memmap never allocates a full boolean copy.
    return all(np.isfinite(a[i : i + chunk_rows]).all() for i in range(0, a.shape[0], chunk_rows))


def check_queries(queries: Any, dim: int) -> Any:
    if isinstance(queries, torch.Tensor):
        queries = queries.detach()
        if queries.device.type not in ("cpu", "cuda"):
            raise UsageError("queries", f"expected a tensor on the CPU or a CUDA device, got device {queries.device}")
        if queries.dtype != torch.float32:
            raise UsageTypeError("queries", f"expected dtype float32, got {queries.dtype} (use queries.float())")
    elif isinstance(queries, np.ndarray):
        if queries.dtype != np.float32:
            raise UsageTypeError("queries", f"expected dtype float32, got {queries.dtype} (use .astype(np.float32))")
    else:
        raise UsageTypeError("queries", f"expected a numpy array or torch tensor of shape [B, {dim}], got {describe(queries)}")
    if queries.ndim != 2:
        raise UsageError("queries", f"expected shape [B, {dim}], got {tuple(queries.shape)}")
    if queries.shape[0] == 0:
        raise UsageError("queries", "the batch is empty (B = 0)")
    if queries.shape[1] != dim:
        raise UsageError("queries", f"expected dimension {dim} (the index's), got shape {tuple(queries.shape)}")
    finite = torch.isfinite(queries).all().item() if isinstance(queries, torch.Tensor) else np.isfinite(queries).all()
    if not finite:
        raise UsageError("queries", "contains NaN or Inf")
    return queries


def check_k(k: Any, N: int) -> int:
    """1 <= k <= N + MAX_K_PADDING, checked before anything is allocated."""
    k = check_int(k, "k", 1)
    if k > N + MAX_K_PADDING:
        raise UsageError("k", f"must be <= N + {MAX_K_PADDING} = {N + MAX_K_PADDING} (the index has N = {N} rows; "
                         f"columns past N are only padding), got {k}")
    return k


def check_cutoff(cutoff: Any, N: int, k: int) -> int:
    """0 means no pair weights. A cutoff above max(N, k) weighs exactly like max(N, k) (ranks never
    exceed N, candidate positions never exceed k) and is lowered to it, so it fits every integer type."""
    return 0 if cutoff is None else min(check_int(cutoff, "cutoff", 1), max(N, k))


def check_rank_depth(rank_depth: Any, k: int, cutoff: int) -> int | None:
    """None (ranks over the whole corpus) or D >= max(k, cutoff): ranks exact up to D, deeper ones
    reported as D + 1 (the top-k and the pair weights, which need ranks <= cutoff only, are unchanged)."""
    if rank_depth is None:
        return None
    depth = check_int(rank_depth, "rank_depth", 1)
    if depth < max(k, cutoff):
        raise UsageError("rank_depth", f"must be >= max(k, cutoff) = {max(k, cutoff)} (k = {k}, cutoff = "
                         f"{cutoff or None}), got {depth}")
    return depth


def check_chunk_rows(chunk_rows: Any, backend: str) -> int | None:
    """None (the torch path's default) or rows per chunk (>= 1) of the torch path, the only chunked backend."""
    if chunk_rows is None:
        return None
    if backend != "torch":
        raise UsageError("chunk_rows", f"only the torch backend scans in chunks, got backend {backend!r}")
    return check_int(chunk_rows, "chunk_rows", 1)


def check_codes(codes: Any, m: int) -> Any:
    """A PQ index's codes: [N >= 1, m] uint8, numpy or torch (they may have been replaced since the index was built)."""
    if not isinstance(codes, (np.ndarray, torch.Tensor)):
        raise UsageTypeError("index.codes", f"expected a uint8 numpy array or torch tensor [N, {m}], got {describe(codes)}")
    if codes.dtype not in (np.uint8, torch.uint8):
        raise UsageTypeError("index.codes", f"expected dtype uint8 (8-bit codes 0..255), got {codes.dtype}")
    if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] != m:
        raise UsageError("index.codes", f"expected shape [N >= 1, m={m}] (m from index.centroids), got {tuple(codes.shape)}")
    return codes


def _row_ids(x: Any, name: str) -> np.ndarray:
    try:
        return as_int64_vector(x, name)
    except ValueError as e:  # numpy's own message for ragged input does not name the argument
        if str(e).startswith(f"{name}:"):
            raise
        raise UsageError(name, f"expected a 1-D sequence of integer row ids ({e})") from None


def check_positives(positives: Any, B: int, N: int, in_range: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """CSR (offsets int64 [B+1], ids int64 [nnz]), validated, from either form of `positives`:

    - per-query row ids: a list with one entry per query (a list, tuple or 1-D integer array each);
    - a CSR pair: a tuple (offsets [B+1], ids [nnz]) of two 1-D integer numpy arrays or torch tensors.
    A tuple of exactly two items is always read as a CSR pair, so it must hold two arrays: two Python
    lists would be ambiguous when B == 2 (per-query lists or offsets and ids?) and are refused.
    in_range=False (positives with given scores, the sharded search): ids may lie outside [0, N)
    (rows of other shards, as local ids), still unique within a query.
    """
    if positives is None:
        return np.zeros(B + 1, np.int64), np.zeros(0, np.int64)
    if isinstance(positives, tuple) and len(positives) == 2:
        if not all(isinstance(p, (np.ndarray, torch.Tensor)) for p in positives):
            raise TypeError(
                "positives: a tuple of two items is read as a CSR pair (offsets, ids) and needs two 1-D integer "
                f"numpy arrays or torch tensors, got ({type(positives[0]).__name__}, {type(positives[1]).__name__}); "
                "pass one list of row ids per query as a list")
        offsets = _row_ids(positives[0], "positives offsets")
        ids = _row_ids(positives[1], "positives ids")
        if offsets.shape[0] != B + 1:
            raise ValueError(f"positives offsets: expected B + 1 = {B + 1} entries, got {offsets.shape[0]} (a tuple "
                             "of two arrays is read as a CSR pair (offsets, ids); pass per-query row ids as a list)")
        if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != ids.shape[0]:
            raise ValueError(
                "positives offsets: must start at 0, never decrease and end at len(ids) "
                f"(= {ids.shape[0]}), got {offsets.tolist() if B < 20 else '...'}")
    elif isinstance(positives, Sequence) and not isinstance(positives, (str, bytes)):
        if len(positives) != B:
            raise UsageError("positives", f"expected one list per query (B = {B}), got {len(positives)}")
        lists = [_row_ids(p, f"positives[{i}]") for i, p in enumerate(positives)]
        offsets = np.zeros(B + 1, np.int64)
        np.cumsum([len(p) for p in lists], out=offsets[1:])
        ids = np.concatenate(lists) if lists else np.zeros(0, np.int64)
    else:
        raise UsageTypeError("positives", "expected a list of lists of row ids or a CSR pair (offsets, ids) of two arrays, "
                        f"got {describe(positives)}")
    if ids.size:
        bad = ((ids < 0) | (ids >= N)) if in_range else np.zeros(ids.shape, bool)
        if bad.any():
            raise UsageError("positives", f"row id {ids[bad][0]} is out of range [0, {N})")
        query = np.repeat(np.arange(B), np.diff(offsets))
        order = np.lexsort((ids, query))
        dup = (query[order][1:] == query[order][:-1]) & (ids[order][1:] == ids[order][:-1])
        if dup.any():
            j = order[1:][dup][0]
            raise UsageError("positives", f"row {ids[j]} is listed twice for query {query[j]}")
    return offsets, ids


def check_given_scores(pos_scores: Any, nnz: int, cutoff: int) -> Any:
    """The positives' given scores (the sharded search): float32 [nnz], finite, and no pair weights
    (they would compare the positives with a shard's local top-k)."""
    if not isinstance(pos_scores, (np.ndarray, torch.Tensor)):
        raise UsageTypeError("pos_scores", f"expected a float32 numpy array or torch tensor [nnz={nnz}], got {describe(pos_scores)}")
    if pos_scores.dtype not in (np.float32, torch.float32):
        raise UsageTypeError("pos_scores", f"expected dtype float32, got {pos_scores.dtype}")
    if tuple(pos_scores.shape) != (nnz,):
        raise UsageError("pos_scores", f"expected shape [nnz={nnz}] (one score per positive), got {tuple(pos_scores.shape)}")
    finite = torch.isfinite(pos_scores).all().item() if isinstance(pos_scores, torch.Tensor) else np.isfinite(pos_scores).all()
    if not finite:
        raise UsageError("pos_scores", "contains NaN or Inf")
    if cutoff:
        raise UsageError("pos_scores", "given positive scores cannot be combined with a cutoff (pair weights)")
    return pos_scores
