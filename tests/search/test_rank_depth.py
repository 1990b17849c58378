"""rank_depth=D: every backend (native, torch, the two-stage search in C++ and in torch) gives ranks
exact up to D and D + 1 beyond, with ids, scores and pair weights unchanged; checked against the numpy
reference with its ranks clamped, on tie-heavy integer data and on float data."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drfast
from reference import integer_embeddings, random_positives, reference_search

# (first_pass, refine, backend): the exact scans and the two-stage search, native and torch
BACKENDS = [(None, True, "native"), (None, True, "torch"), ("int8", True, "native"), ("int8", False, "native"),
            ("bf16", True, "native"), ("int8", True, "torch"), ("bf16", True, "torch")]
FIELDS = ("ids", "scores", "pos_offsets", "pos_ids", "pos_scores", "pos_ranks", "pair_weights")


def search(docs, queries, k, positives, cutoff, depth, first_pass, refine, backend):
    index = drfast.FlatIndex(docs, first_pass=first_pass, refine=refine)
    return index.search(queries, k=k, positives=positives, cutoff=cutoff, backend=backend, rank_depth=depth)


def assert_same(res, ref):
    for f in FIELDS:
        a, b = getattr(res, f), getattr(ref, f)
        assert (a is None) == (b is None), f
        if a is not None:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f)


@pytest.mark.parametrize("first_pass, refine, backend", BACKENDS)
@pytest.mark.parametrize("N, k, cutoff, depth", [
    (1, 1, None, 1),            # a single row, D = k
    (1, 4, 2, 4),               # k > N
    (300, 5, None, 5),          # D = k
    (300, 5, 10, 10),           # D = cutoff
    (300, 5, 3, 300),           # D = N: nothing is clamped
    (300, 320, 3, 400),         # k > N, D > N
    (2500, 20, 10, 23),         # several blocks of the first pass
])
def test_matches_the_clamped_reference(rng, first_pass, refine, backend, N, k, cutoff, depth):
    docs = integer_embeddings(rng, (N, 24), np.float32, -2, 2)  # ties everywhere, scores exact in float32
    queries = integer_embeddings(rng, (9, 24), np.float32, -2, 2)
    positives = random_positives(rng, 9, N, max_per_query=4)
    positives[0] = []  # a query without positives
    res = search(docs, queries, k, positives, cutoff, depth, first_pass, refine, backend)
    ref = reference_search(queries, docs, k, positives, cutoff)
    np.testing.assert_array_equal(res.ids, ref["ids"])
    np.testing.assert_array_equal(res.scores, ref["scores"].astype(np.float32))
    np.testing.assert_array_equal(res.pos_scores, ref["pos_scores"].astype(np.float32))
    np.testing.assert_array_equal(res.pos_ranks, np.minimum(ref["pos_ranks"], depth + 1))
    if cutoff:
        np.testing.assert_allclose(res.pair_weights, ref["pair_weights"], rtol=1e-6, atol=0)
    assert res.rank_depth == depth
    if depth < N:  # the case does clamp something, else the test could not fail on a missing clamp
        assert (res.pos_ranks == depth + 1).any() or not (ref["pos_ranks"] > depth).any()


@pytest.mark.parametrize("first_pass, refine", [("int8", True), ("int8", False), ("bf16", True)])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), N=st.integers(1, 2000), d=st.integers(1, 64), k=st.integers(1, 30),
       extra=st.integers(0, 40), cutoff=st.sampled_from([None, 1, 10]))
def test_two_stage_bit_identical_to_the_clamped_exact_scan(first_pass, refine, seed, N, d, k, extra, cutoff):
    rng = np.random.default_rng(seed)
    docs = rng.standard_normal((N, d)).astype(np.float32)
    queries = rng.standard_normal((6, d)).astype(np.float32)
    positives = random_positives(rng, 6, N, max_per_query=5)
    depth = max(k, cutoff or 0) + extra
    full = drfast.FlatIndex(docs).search(queries, k, positives, cutoff)
    exact = drfast.FlatIndex(docs).search(queries, k, positives, cutoff, rank_depth=depth)
    two = search(docs, queries, k, positives, cutoff, depth, first_pass, refine, "native")
    assert_same(exact, two)
    np.testing.assert_array_equal(exact.pos_ranks, np.minimum(full.pos_ranks, depth + 1))
    for f in ("ids", "scores", "pos_scores", "pair_weights"):  # unchanged by the depth
        a, b = getattr(full, f), getattr(exact, f)
        assert (a is None and b is None) or np.array_equal(a, b), f


def test_pq_backends_clamp_alike(rng):
    emb = rng.standard_normal((1500, 32)).astype(np.float32)
    index = drfast.PQIndex.train(emb, m=8, nbits=8, seed=0)
    queries = rng.standard_normal((7, 32)).astype(np.float32)
    positives = random_positives(rng, 7, 1500, max_per_query=5)
    full = index.search(queries, 10, positives, 5)
    for backend in ("native", "torch"):
        res = index.search(queries, 10, positives, 5, backend=backend, rank_depth=12)
        np.testing.assert_array_equal(res.pos_ranks, np.minimum(full.pos_ranks, 13))
        np.testing.assert_array_equal(res.ids, full.ids)
        np.testing.assert_array_equal(res.pair_weights, full.pair_weights)
        assert res.rank_depth == 12
    assert (full.pos_ranks > 13).any()


def test_torch_queries_give_torch_results_and_none_means_full_depth(rng):
    docs = rng.standard_normal((400, 16)).astype(np.float32)
    q = torch.from_numpy(rng.standard_normal((3, 16)).astype(np.float32))
    res = drfast.FlatIndex(docs).search(q, 5, [[1, 2], [3], [399]], rank_depth=5)
    assert isinstance(res.pos_ranks, torch.Tensor) and int(res.pos_ranks.max()) <= 6
    assert drfast.FlatIndex(docs).search(q, 5, [[1, 2], [3], [399]]).rank_depth is None


def test_deep_positives_cost_little_work(rng):
    """The two-stage kernel stops refining / rescoring a positive once its rank is proven past D."""
    N, d = 30000, 32
    docs = rng.standard_normal((N, d)).astype(np.float32)
    queries = rng.standard_normal((4, d)).astype(np.float32)
    scores = queries @ docs.T
    positives = [np.argsort(-s)[N // 2 : N // 2 + 3].tolist() for s in scores]  # mid-ranked: dense bands
    index = drfast.FlatIndex(docs, first_pass="int8")
    full = index.search(queries, 10, positives)
    full_work = index.last_search_stats.pos_refined.sum() + index.last_search_stats.pos_rescored.sum()
    res = index.search(queries, 10, positives, rank_depth=10)
    work = index.last_search_stats.pos_refined.sum() + index.last_search_stats.pos_rescored.sum()
    assert (res.pos_ranks == 11).all() and (full.pos_ranks > 1000).all()
    assert full_work > 1000 and work * 20 < full_work, (work, full_work)


@pytest.mark.parametrize("bad, error", [(4, drfast.UsageError), (0, drfast.UsageError), (True, TypeError),
                                        (7.0, TypeError)])
def test_rejects_a_depth_below_k_or_the_cutoff(rng, bad, error):
    docs = rng.standard_normal((50, 8)).astype(np.float32)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    for first_pass in (None, "int8"):
        with pytest.raises(error) as e:
            drfast.FlatIndex(docs, first_pass=first_pass).search(q, 5, [[1], [2]], rank_depth=bad)
        assert e.value.param == "rank_depth"
    with pytest.raises(drfast.UsageError, match="cutoff"):
        drfast.FlatIndex(docs).search(q, 5, [[1], [2]], cutoff=10, rank_depth=8)
