"""drfast.stats: pairwise errors (numba and numpy) against a plain-Python reference and the search itself."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import drfast
from drfast.eval import error_stats as stats
from reference import (integer_embeddings, random_positives, reference_error_summary, reference_pairwise_errors,
                       reference_search)

BACKENDS = ("numba", "numpy")


def ragged_ranks(rng, n_queries, n_docs, max_per_query=6, long_queries=0):
    """Distinct 1-based ranks per query, in random order: queries with no positive, rank 1, adjacent
    ranks; `long_queries` queries get more than 32 positives (the kernel's sorting path)."""
    counts = rng.integers(0, max_per_query + 1, n_queries)
    counts[rng.choice(n_queries, size=long_queries, replace=False)] = rng.integers(33, 80, long_queries)
    counts = np.minimum(counts, n_docs)
    offsets = np.zeros(n_queries + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    ranks = np.concatenate([rng.permutation(np.concatenate([[1], rng.choice(np.arange(2, n_docs + 1), n_docs - 1,
                                                                            replace=False)]))[:c]
                            if c else np.zeros(0, np.int64) for c in counts] + [np.zeros(0, np.int64)])
    return offsets, ranks.astype(np.int64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_docs,long_queries", [(1, 0), (7, 0), (300, 0), (5000, 4)])
def test_per_query_errors_match_python_loop(rng, backend, n_docs, long_queries):
    offsets, ranks = ragged_ranks(rng, 300, n_docs, long_queries=long_queries)
    k = int(rng.integers(1, 50))
    total, topk = stats.pairwise_errors(offsets, ranks, k=k, n_docs=n_docs, backend=backend)
    ref_total, ref_topk = reference_pairwise_errors(offsets, ranks, k)
    assert total.dtype == np.int64 and topk.dtype == np.int64
    np.testing.assert_array_equal(total, ref_total)
    np.testing.assert_array_equal(topk, ref_topk)


@pytest.mark.parametrize("backend", BACKENDS)
def test_summary_matches_python_reference(rng, backend):
    offsets, ranks = ragged_ranks(rng, 500, int(rng.integers(50, 100_000)), long_queries=3)
    k = int(rng.integers(1, 300))
    fractions = (0.01, 0.1, 0.25, 0.5, 1.0)
    out = stats.error_statistics(offsets, ranks, k=k, fractions=fractions, backend=backend)
    total, topk = reference_pairwise_errors(offsets, ranks, k)
    has = np.diff(offsets) > 0
    expected = reference_error_summary([t for t, h in zip(total, has) if h], [t for t, h in zip(topk, has) if h],
                                       k, fractions)
    assert out["summary"] == expected
    assert stats.summarize(out["total"][has], out["topk"][has], k, fractions) == expected


def test_errors_are_the_wrongly_ordered_pairs_of_the_search(rng):
    """End to end on a tie-heavy index: the errors from the kernel's ranks equal a brute-force count
    of (positive, negative) pairs with the negative ranked above (score, then lower row)."""
    N, d, B, k = int(rng.integers(1, 400)), 8, 24, int(rng.integers(1, 30))
    docs = integer_embeddings(rng, (N, d), np.float32, -1, 1)
    queries = integer_embeddings(rng, (B, d), np.float32, -1, 1)
    positives = random_positives(rng, B, N, max_per_query=5)
    res = drfast.FlatIndex(docs).search(queries, k=min(5, N), positives=positives)
    total, topk = stats.pairwise_errors(res.pos_offsets, res.pos_ranks, k=k, n_docs=N)
    S = queries.astype(np.float64) @ docs.astype(np.float64).T
    rows = np.arange(N)
    for b, ps in enumerate(positives):
        negatives = np.setdiff1d(rows, ps)
        above = [int(np.sum((S[b, negatives] > S[b, p]) | ((S[b, negatives] == S[b, p]) & (negatives < p))))
                 for p in ps]
        assert total[b] == sum(above)
        assert topk[b] == sum(min(a, k) for a in above)
    np.testing.assert_array_equal(res.pos_ranks, reference_search(queries, docs, 1, positives)["pos_ranks"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases(backend):
    # no query; only queries without positives; a single-row corpus; every positive on top
    empty = stats.error_statistics(np.zeros(1, np.int64), np.zeros(0, np.int64), backend=backend)
    assert empty["total"].shape == (0,) and empty["summary"]["queries"] == 0
    assert empty["summary"]["mean_total_errors"] == 0.0
    none = stats.error_statistics(np.zeros(4, np.int64), np.zeros(0, np.int64), backend=backend)
    np.testing.assert_array_equal(none["total"], [0, 0, 0])
    assert none["summary"]["queries"] == 0
    single = stats.pairwise_errors([0, 1, 1], [1], n_docs=1, backend=backend)
    np.testing.assert_array_equal(single[0], [0, 0])
    top = stats.error_statistics([0, 3], [3, 1, 2], backend=backend)  # in any order: no pair is wrong
    assert top["total"][0] == 0 and top["summary"]["distribution"]["total"][0]["queries"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_example_and_bin_edges(backend):
    # query 0: positives at 3 and 5 -> 2 + 3 = 5 errors; top-2: 2 + 2 = 4
    # query 1: one positive at 11 -> 10 errors (bin [10, 100)); query 2: at 10 -> 9 (bin [1, 10))
    # query 3: at 10**12 + 1 -> 10**12 errors (bin [1e12, 1e13)), top-2: 2
    out = stats.error_statistics([0, 2, 3, 4, 5], [5, 3, 11, 10, 10 ** 12 + 1], k=2, backend=backend)
    np.testing.assert_array_equal(out["total"], [5, 10, 9, 10 ** 12])
    np.testing.assert_array_equal(out["topk"], [4, 2, 2, 2])
    s = out["summary"]
    assert s["mean_total_errors"] == (5 + 10 + 9 + 10 ** 12) / 4 and s["mean_topk_errors"] == 10 / 4
    bins = {(b["low"], b["high"]): b["queries"] for b in s["distribution"]["total"]}
    assert bins[(1, 10)] == 2 and bins[(10, 100)] == 1 and bins[(10 ** 12, 10 ** 13)] == 1
    assert len(s["distribution"]["total"]) == 14 and len(s["distribution"]["topk"]) == 2
    assert s["hardest_share"]["total"]["25%"] == 10 ** 12 / (10 ** 12 + 24)


def test_hardest_share_counts_ceil_of_the_fraction():
    values = np.arange(1, 1001)  # 10% of 1000 is exactly 100 queries; 0.15% of 1000 rounds up to 2
    shares = stats.hardest_share(values, (0.1, 0.0015, 1.0))
    whole = values.sum()
    assert shares == {"10%": values[-100:].sum() / whole, "0.15%": (999 + 1000) / whole, "100%": 1.0}
    assert stats.hardest_share(np.zeros(5, np.int64)) == {f"{f * 100:g}%": 0.0 for f in stats.HARDEST_FRACTIONS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_is_named(backend):
    with pytest.raises(ValueError, match="query 1 has two positives with the same rank"):
        stats.pairwise_errors([0, 1, 3], [4, 2, 2], backend=backend)
    long = np.arange(1, 41)
    long[-1] = 1
    with pytest.raises(ValueError, match="query 0 has two positives with the same rank"):
        stats.pairwise_errors([0, 40], long, backend=backend)
    with pytest.raises(ValueError, match="query 0 has a rank below 1"):
        stats.pairwise_errors([0, 2], [0, 3], backend=backend)
    with pytest.raises(ValueError, match="query 1 has a rank above n_docs"):
        stats.pairwise_errors([0, 1, 2], [2, 9], n_docs=5, backend=backend)
    with pytest.raises(ValueError, match="pos_offsets decreasing"):
        stats.pairwise_errors([0, 2, 1, 3], [1, 2, 3], backend=backend)
    with pytest.raises(ValueError, match="pos_offsets: expected int64 \\[Q\\+1\\]"):
        stats.pairwise_errors([0, 2], [1, 2, 3], backend=backend)
    with pytest.raises(TypeError, match="pos_ranks: expected an integer array, got dtype float64"):
        stats.pairwise_errors([0, 1], [1.0], backend=backend)
    with pytest.raises(ValueError, match="pos_ranks: expected a 1-D"):
        stats.pairwise_errors([0, 1], [[1]], backend=backend)
    with pytest.raises(ValueError, match="k: must be >= 1"):
        stats.pairwise_errors([0, 1], [1], k=0, backend=backend)
    with pytest.raises(ValueError, match="fractions"):
        stats.error_statistics([0, 1], [1], fractions=(0.0,), backend=backend)
    with pytest.raises(ValueError, match="backend"):
        stats.pairwise_errors([0, 1], [1], backend="cuda")
    with pytest.raises(ValueError, match="topk <= total"):
        stats.summarize([1, 2], [2, 2])


def test_accepts_torch_tensors_from_a_search_result(rng):
    torch = pytest.importorskip("torch")
    offsets, ranks = ragged_ranks(rng, 50, 100)
    a = stats.pairwise_errors(torch.from_numpy(offsets), torch.from_numpy(ranks))
    b = stats.pairwise_errors(offsets, ranks)
    np.testing.assert_array_equal(a[0], b[0])


def test_compiled_kernel_is_cached_for_the_next_process(tmp_path):
    """A second process loads the kernel from numba's disk cache instead of compiling it."""
    script = textwrap.dedent("""
        from drfast.eval import error_stats as stats
        seconds = stats.compile_kernel()
        kernel = stats._errors_kernel
        print(len(kernel.stats.cache_hits), len(kernel.stats.cache_misses), seconds)
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
            .stdout.split() for _ in range(2)]
    (hits1, misses1, _), (hits2, misses2, _) = runs
    assert (hits1, misses1) == ("0", "1"), runs
    assert (hits2, misses2) == ("1", "0"), runs
