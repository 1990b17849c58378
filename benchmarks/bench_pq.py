"""Speed of drfast's fused PQ search vs faiss IndexPQ plus the pass a faiss user needs for exact ranks.

    python -m pytest benchmarks/bench_pq.py -q              # N=100k
    python -m pytest benchmarks/bench_pq.py -q --runslow    # also N=1M

B=32, d=768, m=96 (8-bit codes, 8 dims per sub-vector), k=200, cutoff=10, one positive per query.
Centroids and codes are random (speed does not depend on how they were trained); faiss gets the
very same codebooks and codes. The ratio table is printed by conftest.py.
"""
from __future__ import annotations

from types import SimpleNamespace

import faiss
import numpy as np
import pytest
import torch

import drfast
from benchmarks.benchutil import B, CUTOFF, D, K, check_agrees, make_inputs

M = 96
CHUNK = 65536

CASES = [
    pytest.param(100_000, id="100k"),
    pytest.param(1_000_000, id="1M", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=CASES)
def case(request):
    n = request.param
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((M, 256, D // M)).astype(np.float32)
    codes = rng.integers(0, 256, size=(n, M), dtype=np.uint8)
    q, positives = make_inputs(n)
    idx = drfast.PQIndex(centroids, codes)
    ref = idx.search(q, k=K, positives=positives, cutoff=CUTOFF)
    size = f"{n // 10**6}M" if n >= 10**6 else f"{n // 1000}k"
    yield SimpleNamespace(n=n, name=f"PQ m={M} N={size}", idx=idx, q=q, positives=positives, pos=positives[1],
                          centroids=centroids, codes=codes, ref=ref)


@torch.no_grad()
def pq_positive_ranks(index, q: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The extra pass a faiss user needs: decode the codes chunk by chunk (faiss sa_decode), score
    them with a torch matmul and count the rows above each positive (ties: lower row first).
    Faster here than summing lookup-table entries with torch gathers."""
    qt, p = torch.from_numpy(q), torch.from_numpy(pos)[:, None]
    sp = (qt * torch.from_numpy(index.reconstruct_batch(pos))).sum(1, keepdim=True)
    counts = torch.zeros(len(pos), dtype=torch.int64)
    for start in range(0, index.ntotal, CHUNK):
        n = min(CHUNK, index.ntotal - start)
        s = qt @ torch.from_numpy(index.reconstruct_n(start, n)).T
        rows = torch.arange(start, start + n)
        counts += (((s > sp) | ((s == sp) & (rows < p))) & (rows != p)).sum(1)
    return (counts + 1).numpy()


def method_drfast(c):
    return (lambda: c.idx.search(c.q, k=K, positives=c.positives, cutoff=CUTOFF)), \
        (lambda r: (r.ids, r.pos_ranks)), "drfast fused PQ", "drfast"


def _faiss_index(c):
    index = faiss.IndexPQ(D, M, 8, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(c.centroids.ravel(), index.pq.centroids)
    index.is_trained = True
    faiss.copy_array_to_vector(c.codes.ravel(), index.codes)
    index.ntotal = c.n
    return index


def method_faiss_ranks(c):
    index = _faiss_index(c)

    def run():
        _, ids = index.search(c.q, K)
        return ids, pq_positive_ranks(index, c.q, c.pos)

    return run, (lambda r: r), "faiss IndexPQ + rank pass", "baseline"


def method_faiss_only(c):
    index = _faiss_index(c)
    # No ranks: checked on ids only (ranks taken from drfast so the check passes on them).
    return (lambda: index.search(c.q, K)[1]), (lambda ids: (ids, c.ref.pos_ranks)), \
        "faiss IndexPQ alone (no ranks)", "other"


def method_torch(c):
    return (lambda: c.idx.search(c.q, k=K, positives=c.positives, cutoff=CUTOFF, backend="torch")), \
        (lambda r: (r.ids, r.pos_ranks)), "drfast torch path (LUT gathers)", "baseline"


NOTES = (  # printed under this suite's ratio table (conftest.py)
    f"B={B} d={D} m={M} (8-bit codes) k={K} cutoff={CUTOFF}, 1 positive/query; random codebooks and codes.",
    "faiss IndexPQ alone = top-k without the positives' ranks: less work than the others, not a baseline.",
)

METHODS = {"drfast": method_drfast, "faiss_ranks": method_faiss_ranks, "faiss_only": method_faiss_only,
           "torch": method_torch}


@pytest.mark.parametrize("method", list(METHODS))
def test_pq_search(benchmark, record, case, method):
    run, extract, label, kind = METHODS[method](case)
    benchmark.group = case.name
    benchmark.extra_info["method"] = label
    # the torch path takes ~10 s a call at N=100k: one round, after no warm-up, is enough for its ratio
    rounds, warmup = (1, 0) if method == "torch" else (2 if case.n >= 10**6 else 3, 1)
    out = benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1)
    check_agrees(*extract(out), case.ref)
    record(case.name, label, kind)
