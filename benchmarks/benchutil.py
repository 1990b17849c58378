"""Shared data generation and baseline implementations for the drfast speed benchmarks."""
from __future__ import annotations

import contextlib

import faiss
import numpy as np
import torch

B, D, K, CUTOFF = 32, 768, 200, 10
CHUNK = 65536  # rows per matmul chunk in the hand-written baselines (same as drfast's torch path)


def gaussian_rows(n: int, d: int = D, seed: int = 0, dtype=np.float32, chunk: int = 1 << 16) -> np.ndarray:
    """[n, d] standard normal rows (fp16: the fp32 draws rounded), generated in chunks so a 4M-row
    matrix needs no second full-size copy. torch.randn: ~2x faster than numpy here, seed-stable."""
    g = torch.Generator().manual_seed(seed)
    out = np.empty((n, d), dtype)
    for i in range(0, n, chunk):
        part = torch.randn(min(chunk, n - i), d, generator=g)
        out[i : i + len(part)] = part.numpy()  # casts to fp16 when asked
    return out


def make_inputs(n: int, seed: int = 0):
    """Queries [B, D] fp32 and one random positive row per query (as CSR offsets, ids)."""
    rng = np.random.default_rng(seed + 1)
    q = rng.standard_normal((B, D), dtype=np.float32)
    pos = rng.choice(n, size=B, replace=False).astype(np.int64)
    return q, (np.arange(B + 1, dtype=np.int64), pos)


def _count_before(s: torch.Tensor, sp: torch.Tensor, p: torch.Tensor, start: int) -> torch.Tensor:
    """Per positive: rows of this chunk ranked before it (higher score, or equal score and lower row)."""
    rows = torch.arange(start, start + s.shape[1])
    return (((s > sp) | ((s == sp) & (rows < p))) & (rows != p)).sum(1)


@torch.no_grad()
def positive_ranks(q: np.ndarray, docs32: torch.Tensor, pos: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """The extra pass a faiss user needs: exact 1-based ranks of one positive per query, chunked."""
    qt, p = torch.from_numpy(q), torch.from_numpy(pos)[:, None]
    sp = (qt * docs32[p[:, 0]]).sum(1, keepdim=True)
    counts = torch.zeros(len(pos), dtype=torch.int64)
    for start in range(0, docs32.shape[0], chunk):
        counts += _count_before(qt @ docs32[start : start + chunk].T, sp, p, start)
    return (counts + 1).numpy()


@torch.no_grad()
def torch_loop(q: np.ndarray, docs: torch.Tensor, pos: np.ndarray, k: int = K, chunk: int = CHUNK):
    """Minimal chunked matmul + topk + rank count (one positive per query); returns (ids, ranks).

    Unlike drfast's torch backend it does not enforce the lower-row tie rule inside topk and
    computes no pair weights: the cheapest loop that still gives top-k and exact ranks.
    """
    qt, p = torch.from_numpy(q), torch.from_numpy(pos)[:, None]
    sp = (qt * docs[p[:, 0]].float()).sum(1, keepdim=True)
    counts = torch.zeros(len(pos), dtype=torch.int64)
    best_s, best_i = torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.int64)
    for start in range(0, docs.shape[0], chunk):
        s = qt @ docs[start : start + chunk].float().T
        counts += _count_before(s, sp, p, start)
        v, i = s.topk(min(k, s.shape[1]), dim=1)
        best_s, j = torch.cat([best_s, v], 1).topk(min(k, best_s.shape[1] + v.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, j)
    return best_i.numpy(), (counts + 1).numpy()


def check_agrees(ids, ranks, ref) -> None:
    """Baseline top-k ids / positive ranks vs drfast's: >= 99% equal ids, and ranks equal up to
    the rows that are near-ties under another float summation order (BLAS vs drfast's lanes):
    random gaussian data has no exact ties, but at N=1M a few rows fall within rounding."""
    same = float((np.asarray(ids) == ref.ids).mean())
    assert same >= 0.99, f"only {same:.2%} of top-k ids agree with drfast"
    n = int(ref.ids.max()) + 1
    off = int(np.abs(np.asarray(ranks) - ref.pos_ranks).max())
    assert off <= max(1, n // 100_000), f"positive ranks differ from drfast's by up to {off}"


@contextlib.contextmanager
def faiss_blas(enabled: bool = True):
    """Force faiss's BLAS path for flat search (threshold 1), restored afterwards. faiss 1.15's default
    threshold is 128000 queries, so a batch of 32 otherwise takes the per-query SIMD loop
    (``exhaustive_inner_product_seq``). IndexPQ does not consult this threshold (its lookup tables are
    built the same way either way)."""
    if not enabled:
        yield
        return
    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 1
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = old
