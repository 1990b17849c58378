"""Speed of the pairwise-error statistics and of the exact ranks they need.

    python -m pytest benchmarks/bench_stats.py -q              # statistics on 500k queries; ranks at N=100k
    python -m pytest benchmarks/bench_stats.py -q --runslow    # also ranks at N=1M

1. drfast.eval.error_stats.error_statistics (numba) vs the same computation vectorised in numpy and as a plain
   Python loop (tests/reference.py), on 500k queries with 1-5 positives each (distinct ranks in a 1M
   corpus, log-uniform like a real model's). Also the numba kernel's compile time in a fresh process
   and its load time from the disk cache in the next one.
2. `drfast errors`' rank computation (the fused search with k=1, in batches of 64) vs what a faiss user
   has to do for exact ranks: IndexFlatIP.search at depth N (its BLAS path), then find each positive.
The ratio table is printed by conftest.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import faiss
import numpy as np
import pytest

import drfast
from benchmarks.benchutil import faiss_blas, gaussian_rows
from drfast.eval import error_stats as stats
from drfast.eval.error_stats import exact_positive_ranks
from reference import reference_error_summary, reference_pairwise_errors  # tests/reference.py (pytest.ini pythonpath)

QUERIES, CORPUS, K = 500_000, 1_000_000, 200
STATS_CASE = f"stats Q={QUERIES // 1000}k"


@pytest.fixture(scope="module")
def ranks():
    """CSR of 1-5 distinct ranks per query: gaps log-uniform in [1, 1e5] accumulated within each query."""
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 6, QUERIES)
    offsets = np.zeros(QUERIES + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    gaps = (10 ** rng.uniform(0, 5, offsets[-1])).astype(np.int64) + 1
    running = np.cumsum(gaps)
    ranks = running - np.repeat(running[offsets[:-1]] - gaps[offsets[:-1]], counts)
    for q in range(QUERIES):  # positives come in qrels order, not rank order
        rng.shuffle(ranks[offsets[q]:offsets[q + 1]])
    assert ranks.max() <= CORPUS
    stats.compile_kernel()
    return offsets, ranks


def python_loop(offsets, ranks):
    total, topk = reference_pairwise_errors(offsets, ranks, K)
    return reference_error_summary(total, topk, K, stats.HARDEST_FRACTIONS)


@pytest.mark.parametrize("method", ["numba", "numpy", "python"])
def test_statistics(benchmark, record, ranks, method):
    offsets, pos_ranks = ranks
    if method == "python":
        out = benchmark.pedantic(python_loop, args=(offsets, pos_ranks), rounds=1, iterations=1)
        summary = out
    else:
        out = benchmark(stats.error_statistics, offsets, pos_ranks, K, CORPUS, backend=method)
        summary = out["summary"]
    expected = stats.error_statistics(offsets, pos_ranks, K, CORPUS, backend="numpy")["summary"]
    assert summary == expected
    name = {"numba": "drfast stats (numba)", "numpy": "numpy vectorised", "python": "python loop"}[method]
    record(STATS_CASE, name, "drfast" if method == "numba" else "baseline")


def test_compile_time(record):
    """The kernel's first compile in a fresh process, then its load from numba's cache in the next."""
    script = "from drfast.eval import error_stats; print(error_stats.compile_kernel())"
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold, warm = (float(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                                           text=True, check=True).stdout) for _ in range(2))
    record("stats compile", "numba cache load (next process)", "drfast", seconds=warm)
    record("stats compile", "numba compile (first process)", "other", seconds=cold)


# (N, queries): faiss at depth N costs about 0.2 s per query per 100k rows here, so fewer queries at 1M
RANK_CASES = [pytest.param((100_000, 256), id="100k"), pytest.param((1_000_000, 32), id="1M", marks=pytest.mark.slow)]
D = 768


@pytest.fixture(scope="module", params=RANK_CASES)
def corpus(request):
    n, n_queries = request.param
    emb = gaussian_rows(n)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((n_queries, D), dtype=np.float32)
    positives = [sorted(rng.choice(n, size=int(rng.integers(1, 6)), replace=False).tolist())
                 for _ in range(n_queries)]
    faiss_index = faiss.IndexFlatIP(D)
    faiss_index.add(emb)
    size = f"{n // 10**6}M" if n >= 10**6 else f"{n // 1000}k"
    yield dict(n=n, name=f"ranks N={size} Q={n_queries}", index=drfast.FlatIndex(emb), faiss=faiss_index,
               q=q, positives=positives)


def faiss_ranks(index, q, positives, batch_size=16):
    """Exact ranks the faiss way: the whole ranking (k = N), then each positive's position in it.
    Batches of 16 queries keep the [batch, N] result arrays at 16 * N * 12 bytes."""
    out = []
    with faiss_blas():
        for start in range(0, len(q), batch_size):
            _, ids = index.search(q[start:start + batch_size], index.ntotal)
            for row, pos in zip(ids, positives[start:start + batch_size]):
                position = np.empty(index.ntotal, np.int64)
                position[row] = np.arange(1, index.ntotal + 1)
                out.extend(position[pos])
    return np.array(out, np.int64)


@pytest.mark.parametrize("method", ["drfast", "faiss"])
def test_exact_ranks(benchmark, record, corpus, method):
    if method == "drfast":
        _, ranks = benchmark.pedantic(exact_positive_ranks, args=(corpus["index"], corpus["q"], corpus["positives"]),
                                      rounds=3, iterations=1, warmup_rounds=1)
    else:
        ranks = benchmark.pedantic(faiss_ranks, args=(corpus["faiss"], corpus["q"], corpus["positives"]),
                                   rounds=1, iterations=1)
    _, ref = exact_positive_ranks(corpus["index"], corpus["q"], corpus["positives"])
    # gaussian data has no exact ties; BLAS and drfast sum in different orders, so near-ties may swap
    assert np.abs(ranks - ref).max() <= max(1, corpus["n"] // 100_000)
    name = {"drfast": "drfast errors ranks (k=1)", "faiss": "faiss IndexFlatIP k=N (BLAS)"}[method]
    record(corpus["name"], name, "drfast" if method == "drfast" else "baseline")
