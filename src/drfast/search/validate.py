"""Validation of every search argument: shapes, dtypes, finiteness, id ranges. Errors name the argument.

Inputs may be numpy arrays or torch tensors. Non-contiguous inputs are copied (never rejected).
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np
import torch

from drfast.common.checks import as_int64_vector, check_int, describe


def check_embeddings(emb: Any, name: str = "emb") -> Any:
    """A [N, d] float32/float16 matrix with N, d >= 1 and finite values, as a contiguous numpy array or tensor."""
    if isinstance(emb, torch.Tensor):
        emb = emb.detach()
        ok_dtypes = (torch.float32, torch.float16)
    elif isinstance(emb, np.ndarray):
        ok_dtypes = (np.float32, np.float16)
    else:
        raise TypeError(f"{name}: expected a numpy array or torch tensor of shape [N, d], got {describe(emb)}")
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
        raise TypeError(f"queries: expected a numpy array or torch tensor of shape [B, {dim}], got {describe(queries)}")
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


def check_k(k: Any) -> int:
    return check_int(k, "k", 1)


def check_cutoff(cutoff: Any) -> int:
    """0 means no pair weights."""
    return 0 if cutoff is None else check_int(cutoff, "cutoff", 1)


def check_chunk_rows(chunk_rows: Any, backend: str) -> int | None:
    """None (the torch path's default) or rows per chunk (>= 1) of the torch path, the only chunked backend."""
    if chunk_rows is None:
        return None
    if backend != "torch":
        raise ValueError(f"chunk_rows: only the torch backend scans in chunks, got backend {backend!r}")
    return check_int(chunk_rows, "chunk_rows", 1)


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
        raise TypeError(f"positives: expected a list of lists of row ids or a CSR pair (offsets, ids), got {describe(positives)}")
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
