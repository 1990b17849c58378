"""The native fused search against the numpy reference."""
import numpy as np
import pytest
import torch

import drfast
from reference import integer_embeddings, random_positives, reference_search

# (B, N, d, k): d from 1 to 1024, N from 1 to 100k, B from 1 to 64, k from 1 to N + 5;
# B and N off the 8 x 2 tile, d off the 16-lane width, k past N.
SHAPES = [
    (1, 1, 1, 1), (1, 1, 7, 6), (3, 2, 16, 7), (5, 9, 33, 3), (8, 128, 64, 128), (9, 129, 17, 134),
    (17, 300, 100, 50), (32, 1000, 768, 200), (64, 513, 1024, 40), (2, 100_000, 12, 30),
    (33, 20_000, 48, 1),
]
DTYPES = [np.float32, np.float16]


def check_exact(res, ref, cutoff):
    np.testing.assert_array_equal(res.ids, ref["ids"])
    np.testing.assert_array_equal(res.scores, ref["scores"].astype(np.float32))
    np.testing.assert_array_equal(res.pos_ids, ref["pos_ids"])
    np.testing.assert_array_equal(res.pos_scores, ref["pos_scores"].astype(np.float32))
    np.testing.assert_array_equal(res.pos_ranks, ref["pos_ranks"])
    if cutoff:
        # float32 1/r differences vs the float64 reference: a few ulps, and zeros exactly zero.
        np.testing.assert_allclose(res.pair_weights, ref["pair_weights"], rtol=1e-6, atol=0)
    else:
        assert res.pair_weights is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,d,k", SHAPES)
def test_exact_on_integer_data(rng, B, N, d, k, dtype):
    # Integer embeddings: exact scores and many real ties, so ids and ranks must match exactly.
    docs = integer_embeddings(rng, (N, d), dtype)
    queries = integer_embeddings(rng, (B, d), np.float32)
    positives = random_positives(rng, B, N)
    cutoff = int(rng.integers(1, 12))
    res = drfast.FlatIndex(docs).search(queries, k=k, positives=positives, cutoff=cutoff)
    check_exact(res, reference_search(queries, docs, k, positives, cutoff), cutoff)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_rows_tie(rng, dtype):
    # Every score equal: the order is the row order and ranks are the row positions.
    N, B = 37, 3
    docs = np.ones((N, 5), dtype)
    positives = [[0, 36], [], [17]]
    res = drfast.FlatIndex(docs).search(np.ones((B, 5), np.float32), k=40, positives=positives, cutoff=3)
    np.testing.assert_array_equal(res.ids[:, :N], np.tile(np.arange(N), (B, 1)))
    np.testing.assert_array_equal(res.ids[:, N:], -1)
    assert np.all(res.scores[:, N:] == -np.inf)
    np.testing.assert_array_equal(res.pos_ranks, [1, 37, 18])
    check_exact(res, reference_search(np.ones((B, 5)), docs, 40, positives, 3), 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,d,k", [(7, 5000, 768, 200), (32, 20_000, 96, 100), (1, 3, 1, 5)])
def test_random_float_data_close_to_reference(rng, B, N, d, k, dtype):
    docs = rng.standard_normal((N, d)).astype(dtype)
    queries = rng.standard_normal((B, d)).astype(np.float32)
    positives = random_positives(rng, B, N)
    res = drfast.FlatIndex(docs).search(queries, k=k, positives=positives, cutoff=10)
    ref = reference_search(queries, docs, k, positives, 10)
    kept = min(k, N)
    tol = 1e-5 * np.sqrt(d) * np.abs(ref["scores"][:, :kept]).max() + 1e-6
    np.testing.assert_allclose(res.scores[:, :kept], ref["scores"][:, :kept], rtol=0, atol=tol)
    np.testing.assert_allclose(res.pos_scores, ref["pos_scores"], rtol=0, atol=tol)
    # The returned rows really have those scores, in order.
    S = queries.astype(np.float64) @ docs.astype(np.float64).T
    np.testing.assert_allclose(np.take_along_axis(S, res.ids[:, :kept], 1), res.scores[:, :kept], atol=tol)
    assert np.all(np.diff(res.scores[:, :kept], axis=1) <= 0)
    # Ranks differ from the float64 ones only by rows within rounding of the positive's score.
    qi = np.repeat(np.arange(B), [len(p) for p in positives])
    near = np.array([np.sum(np.abs(S[b] - S[b, p]) <= 2 * tol) for b, p in zip(qi, res.pos_ids)])
    assert np.all(np.abs(res.pos_ranks - ref["pos_ranks"]) <= near)


def test_positive_scores_equal_scan_scores_bitwise(rng):
    # With k = N every row's scan score is returned: a positive's own score must be the
    # identical float, whatever tile shape computed it (B and N off the tile grid, d off 16).
    B, N, d = 11, 301, 77
    docs = rng.standard_normal((N, d)).astype(np.float32)
    queries = rng.standard_normal((B, d)).astype(np.float32)
    positives = [list(range(N))] * B
    res = drfast.FlatIndex(docs).search(queries, k=N, positives=positives)
    for b in range(B):
        by_row = np.empty(N, np.float32)
        by_row[res.ids[b]] = res.scores[b]
        np.testing.assert_array_equal(res.pos_scores[b * N:(b + 1) * N], by_row)
        # And ranks are the positions in the kernel's own order.
        np.testing.assert_array_equal(res.pos_ranks[b * N + res.ids[b]], np.arange(1, N + 1))


@pytest.fixture
def search_at_level():
    """search_at_level(level, index, *args, **kw): index.search run with the CPU kernels at `level`."""
    before = drfast.simd_level()

    def search(level, index, *args, **kwargs):
        drfast.set_simd_level(level)
        assert drfast.simd_level() == level
        return index.search(*args, **kwargs)

    yield search
    drfast.set_simd_level(before)


FASTER_LEVELS = [level for level in drfast.search.supported_simd_levels() if level != "generic"]


@pytest.mark.parametrize("level", FASTER_LEVELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_instruction_set_matches_generic_flat(rng, search_at_level, level, dtype):
    # The canonical lane arithmetic makes every level bit-identical to the plain C++ one, on float
    # data where any other summation order would round differently. B, N, d off the tiles and lanes.
    B, N, d = 9, 700, 45
    docs = rng.standard_normal((N, d)).astype(dtype)
    queries = rng.standard_normal((B, d)).astype(np.float32)
    args = (queries, 50, random_positives(rng, B, N, max_per_query=6), 10)
    idx = drfast.FlatIndex(docs)
    expected = search_at_level("generic", idx, *args)
    got = search_at_level(level, idx, *args)
    for field, value in vars(expected).items():
        np.testing.assert_array_equal(getattr(got, field), value, err_msg=field)


@pytest.mark.parametrize("level", FASTER_LEVELS)
def test_every_instruction_set_matches_generic_pq(rng, search_at_level, level):
    B, N, m = 5, 777, 6
    centroids = rng.standard_normal((m, 256, 3)).astype(np.float32)
    codes = rng.integers(0, 256, size=(N, m)).astype(np.uint8)
    queries = rng.standard_normal((B, 3 * m)).astype(np.float32)
    args = (queries, 30, random_positives(rng, B, N, max_per_query=6), 5)
    idx = drfast.PQIndex(centroids, codes)
    expected = search_at_level("generic", idx, *args)
    got = search_at_level(level, idx, *args)
    for field, value in vars(expected).items():
        np.testing.assert_array_equal(getattr(got, field), value, err_msg=field)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_count_does_not_change_results(rng, threads):
    docs = integer_embeddings(rng, (5000, 24), np.float32)
    queries = integer_embeddings(rng, (6, 24), np.float32)
    positives = random_positives(rng, 6, 5000)
    before = drfast.get_num_threads()
    try:
        drfast.set_num_threads(threads)
        res = drfast.FlatIndex(docs).search(queries, k=300, positives=positives, cutoff=5)
    finally:
        drfast.set_num_threads(before)
    check_exact(res, reference_search(queries, docs, 300, positives, 5), 5)


def test_csr_positives_equal_list_positives(rng):
    docs = integer_embeddings(rng, (400, 8), np.float32)
    queries = integer_embeddings(rng, (4, 8), np.float32)
    positives = [[3, 1], [], [399], [0, 5, 7]]
    idx = drfast.FlatIndex(docs)
    a = idx.search(queries, k=10, positives=positives, cutoff=10)
    offsets = np.array([0, 2, 2, 3, 6])
    b = idx.search(queries, k=10, positives=(offsets, np.array([3, 1, 399, 0, 5, 7])), cutoff=10)
    for field, value in vars(a).items():
        np.testing.assert_array_equal(getattr(b, field), value)
    np.testing.assert_array_equal(a.pos_ids, [3, 1, 399, 0, 5, 7])  # the order given


def test_no_positives_and_no_cutoff(rng):
    docs = integer_embeddings(rng, (50, 3), np.float32)
    res = drfast.FlatIndex(docs).search(integer_embeddings(rng, (2, 3), np.float32), k=4)
    assert res.pos_ids.shape == (0,) and res.pos_ranks.shape == (0,) and res.pair_weights is None
    np.testing.assert_array_equal(res.pos_offsets, [0, 0, 0])


def test_torch_queries_give_torch_results(rng):
    docs = integer_embeddings(rng, (300, 16), np.float32)
    queries = integer_embeddings(rng, (5, 16), np.float32)
    positives = random_positives(rng, 5, 300)
    idx = drfast.FlatIndex(torch.from_numpy(docs))
    q = torch.from_numpy(queries).requires_grad_()
    res = idx.search(q, k=20, positives=positives, cutoff=10)
    assert isinstance(res.ids, torch.Tensor) and res.ids.dtype == torch.int64
    assert isinstance(res.pair_weights, torch.Tensor) and res.pair_weights.dtype == torch.float32
    ref = reference_search(queries, docs, 20, positives, 10)
    np.testing.assert_array_equal(res.ids.numpy(), ref["ids"])
    np.testing.assert_array_equal(res.pos_ranks.numpy(), ref["pos_ranks"])


def test_non_contiguous_inputs_are_copied(rng):
    docs = integer_embeddings(rng, (200, 10), np.float32)
    queries = integer_embeddings(rng, (10, 6), np.float32)
    docs_view, q_view = docs[:, ::2], queries[::2, :5]
    res = drfast.FlatIndex(docs_view).search(q_view, k=7, positives=[[1]] * 5, cutoff=3)
    check_exact(res, reference_search(q_view, docs_view, 7, [[1]] * 5, 3), 3)
