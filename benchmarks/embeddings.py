"""Synthetic corpora for the two-stage search benchmark: iid Gaussian unit vectors, and anisotropic,
clustered embeddings shaped like real dense-retrieval ones.

`realistic_rows` (case (b) of the two-stage issue), unit-norm rows built from
- a shared direction (every embedding model has one): random pairs have cosine ~0.3;
- a low-rank part in `rank` = 48 directions with geometrically decaying variances, which carries
  most of the remaining variance (real embeddings have a few dozen dominant principal components);
- cluster structure: each row belongs to one of `clusters` = 2000 topics (a topic offset in the
  low-rank space), so neighbours are much closer than random pairs;
- isotropic noise in all d dimensions (the long tail of the spectrum);
- near-duplicates: 2% of the rows are copies of another row plus 1e-3 noise (boilerplate pages).
Queries come from the same distribution. `positives_at_depths` then picks, per query, the row at
a given exact rank, with ranks spread geometrically from 1 to N/2: positives at every depth.
"""
from __future__ import annotations

import numpy as np
import torch

from benchmarks.benchutil import B, D


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


class RealisticSpace:
    """The generator's fixed parameters (mean direction, basis, topics) for one seed."""

    def __init__(self, d: int = D, seed: int = 0, rank: int = 48, clusters: int = 2000):
        g = torch.Generator().manual_seed(seed)
        self.g, self.d, self.rank = g, d, rank
        self.mean = _unit(torch.randn(1, d, generator=g))[0]
        self.basis = torch.linalg.qr(torch.randn(d, rank, generator=g))[0].T      # [rank, d] orthonormal
        self.scales = 0.9 ** torch.arange(rank, dtype=torch.float32)              # decaying spectrum
        self.topics = torch.randn(clusters, rank, generator=g) * self.scales * 1.2

    def sample(self, n: int) -> torch.Tensor:
        g = self.g
        topic = self.topics[torch.randint(0, self.topics.shape[0], (n,), generator=g)]
        low = (topic + torch.randn(n, self.rank, generator=g) * self.scales) @ self.basis
        low = 0.84 * _unit(low)                                    # ~70% of the non-shared energy
        noise = 0.5 * _unit(torch.randn(n, self.d, generator=g))
        # mean weight 0.66 against ||low + noise|| ~ 1: random pairs at cosine ~0.3
        return _unit(0.66 * self.mean + low + noise)


def realistic_rows(n: int, d: int = D, seed: int = 0, dtype=np.float32, chunk: int = 1 << 16, dup: float = 0.02,
                   out: np.ndarray | None = None):
    """[n, d] unit-norm anisotropic clustered rows (see the module docstring) and the generator's space;
    written into `out` when given (e.g. a memory-mapped .npy larger than memory)."""
    space = RealisticSpace(d, seed)
    out = np.empty((n, d), dtype) if out is None else out
    for i in range(0, n, chunk):
        out[i : i + chunk] = space.sample(min(chunk, n - i)).numpy()
    rng = np.random.default_rng(seed + 7)
    copies = rng.choice(n, int(dup * n), replace=False)
    sources = rng.integers(0, n, copies.shape[0])
    near = out[sources].astype(np.float32) + 1e-3 * rng.standard_normal((copies.shape[0], d), dtype=np.float32)
    out[copies] = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(dtype)
    return out, space


def gaussian_unit_rows(n: int, d: int = D, seed: int = 0, dtype=np.float32, chunk: int = 1 << 16) -> np.ndarray:
    """[n, d] iid Gaussian directions (unit norm)."""
    g = torch.Generator().manual_seed(seed)
    out = np.empty((n, d), dtype)
    for i in range(0, n, chunk):
        out[i : i + chunk] = _unit(torch.randn(min(chunk, n - i), d, generator=g)).numpy()
    return out


@torch.no_grad()
def positives_at_depths(q: np.ndarray, docs: np.ndarray, seed: int = 0, chunk: int = 1 << 16):
    """One positive per query at exact depths geometrically spaced from 1 to N/2 (a [B, N] float32
    score matrix is built here, in the benchmark only). Returns (CSR positives, target depths)."""
    N = docs.shape[0]
    qt = torch.from_numpy(q)
    s = torch.cat([qt @ torch.from_numpy(docs[i : i + chunk]).float().T for i in range(0, N, chunk)], 1)
    depths = np.unique(np.round(np.geomspace(1, max(1, N // 2), q.shape[0])).astype(np.int64))
    depths = np.resize(depths, q.shape[0])
    rng = np.random.default_rng(seed)
    rng.shuffle(depths)
    order = torch.argsort(s, dim=1, descending=True)
    pos = order[torch.arange(q.shape[0]), torch.from_numpy(depths - 1)].numpy().astype(np.int64)
    return (np.arange(q.shape[0] + 1, dtype=np.int64), pos), depths


def make_case(kind: str, n: int, dtype=np.float32, seed: int = 0):
    """(docs, queries [B, D] float32, positives, depths) for kind "gaussian" or "realistic"."""
    if kind == "gaussian":
        docs = gaussian_unit_rows(n, dtype=dtype, seed=seed)
        q = gaussian_unit_rows(B, seed=seed + 1)
    else:
        docs, space = realistic_rows(n, dtype=dtype, seed=seed)
        q = space.sample(B).numpy()
    positives, depths = positives_at_depths(q, docs, seed)
    return docs, q, positives, depths
