"""The fused PQ search against a numpy reference built from the same codes and centroids, and faiss."""
import numpy as np
import pytest
import torch

import drfast
from reference import random_positives, reference_weights


def reference_pq(queries, centroids, codes, k, positives, cutoff, rotation=None):
    """Full [B, N] ADC scores in float64 from the decoded rows, then the contract's outputs."""
    m, _, dsub = centroids.shape
    decoded = np.concatenate([centroids[j][codes[:, j]] for j in range(m)], axis=1).astype(np.float64)
    q = np.asarray(queries, np.float64)
    if rotation is not None:
        q = q @ np.asarray(rotation, np.float64).T
    S = q @ decoded.T
    B, N = S.shape
    rows = np.arange(N)
    ids = np.full((B, k), -1, np.int64)
    scores = np.full((B, k), -np.inf)
    for b in range(B):
        order = np.lexsort((rows, -S[b]))[:k]
        ids[b, :len(order)], scores[b, :len(order)] = order, S[b, order]
    pos_ranks = np.array([1 + np.sum((S[b] > S[b, p]) | ((S[b] == S[b, p]) & (rows < p)))
                          for b, ps in enumerate(positives) for p in ps], np.int64)
    pos_scores = np.array([S[b, p] for b, ps in enumerate(positives) for p in ps])
    out = dict(ids=ids, scores=scores, pos_ranks=pos_ranks, pos_scores=pos_scores, S=S)
    if cutoff:
        out["pair_weights"] = reference_weights(ids, positives, pos_ranks, cutoff)
    return out


def integer_pq(rng, N, m, dsub, B):
    """Small-integer centroids and queries: every table entry and sum is exact, ties are real."""
    centroids = rng.integers(-2, 3, size=(m, 256, dsub)).astype(np.float32)
    codes = rng.integers(0, 256, size=(N, m)).astype(np.uint8)
    queries = rng.integers(-2, 3, size=(B, m * dsub)).astype(np.float32)
    return centroids, codes, queries


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("B,N,m,dsub,k", [(1, 1, 1, 1, 1), (3, 7, 2, 3, 12), (9, 300, 4, 2, 50),
                                           (32, 5000, 16, 2, 200), (5, 1000, 96, 1, 64), (17, 513, 8, 4, 513)])
def test_exact_on_integer_tables(rng, backend, B, N, m, dsub, k):
    centroids, codes, queries = integer_pq(rng, N, m, dsub, B)
    positives = random_positives(rng, B, N)
    idx = drfast.PQIndex(centroids, codes)
    res = idx.search(queries, k=k, positives=positives, cutoff=10, backend=backend)
    ref = reference_pq(queries, centroids, codes, k, positives, 10)
    np.testing.assert_array_equal(res.ids, ref["ids"])
    np.testing.assert_array_equal(res.scores, ref["scores"].astype(np.float32))
    np.testing.assert_array_equal(res.pos_scores, ref["pos_scores"].astype(np.float32))
    np.testing.assert_array_equal(res.pos_ranks, ref["pos_ranks"])
    np.testing.assert_allclose(res.pair_weights, ref["pair_weights"], rtol=1e-6, atol=0)


def test_native_and_torch_paths_bit_identical_on_float_tables(rng):
    centroids = rng.standard_normal((12, 256, 4)).astype(np.float32)
    codes = rng.integers(0, 256, size=(3000, 12)).astype(np.uint8)
    queries = rng.standard_normal((7, 48)).astype(np.float32)
    positives = random_positives(rng, 7, 3000)
    idx = drfast.PQIndex(centroids, codes)
    a = idx.search(queries, k=100, positives=positives, cutoff=10)
    b = idx.search(queries, k=100, positives=positives, cutoff=10, backend="torch")
    for field, value in vars(a).items():
        np.testing.assert_array_equal(getattr(b, field), value, err_msg=field)


@pytest.mark.parametrize("opq", [False, True])
def test_trained_index_matches_reconstruction_and_faiss(rng, opq):
    import faiss

    n, d, m = 4000, 32, 8
    emb = rng.standard_normal((n, d)).astype(np.float32)
    idx = drfast.PQIndex.train(emb, m=m, seed=int(rng.integers(1000)), opq=opq)
    assert idx.codes.dtype == np.uint8 and idx.codes.shape == (n, m)
    queries = rng.standard_normal((6, d)).astype(np.float32)
    positives = random_positives(rng, 6, n)
    res = idx.search(queries, k=50, positives=positives, cutoff=10)
    # Scores are inner products with the decoded rows, up to float rounding.
    rows = np.concatenate([np.asarray(p, np.int64) for p in positives])
    qi = np.repeat(np.arange(6), [len(p) for p in positives])
    rec = idx.reconstruct(rows).numpy()
    np.testing.assert_allclose(res.pos_scores, np.einsum("nd,nd->n", queries[qi], rec), atol=1e-4)
    ref = reference_pq(queries, idx.centroids.numpy(), idx.codes, 50, positives, 10, idx.rotation)
    np.testing.assert_allclose(res.scores, ref["scores"], atol=1e-4)
    assert np.abs(res.pos_ranks - ref["pos_ranks"]).max() <= 1
    if not opq:
        # faiss IndexPQ on the same codebooks and codes gives the same top-k except at float ties.
        fidx = faiss.IndexPQ(d, m, 8, faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(idx.centroids.numpy().ravel(), fidx.pq.centroids)
        fidx.is_trained = True
        fidx.add(idx.reconstruct(np.arange(n)).numpy())  # decoded rows re-encode to the same codes
        assert np.array_equal(faiss.vector_to_array(fidx.codes).reshape(n, m), idx.codes)
        f_scores, f_ids = fidx.search(queries, 50)
        same = res.ids == f_ids
        assert np.all(same | (np.abs(res.scores - f_scores) <= 1e-4))  # differ only at float ties
        assert same.mean() > 0.95


def test_reconstruct_is_differentiable_in_the_centroids(rng):
    centroids = torch.tensor(rng.standard_normal((4, 256, 2)), dtype=torch.float32, requires_grad=True)
    codes = rng.integers(0, 256, size=(10, 4)).astype(np.uint8)
    idx = drfast.PQIndex(centroids, codes)
    idx.centroids.requires_grad_(True)
    x = idx.reconstruct([0, 3])
    assert x.shape == (2, 8)
    x.sum().backward()
    assert idx.centroids.grad is not None and idx.centroids.grad.abs().sum() > 0


@pytest.mark.parametrize("opq", [False, True])
def test_save_load_roundtrip(tmp_path, rng, opq):
    emb = rng.standard_normal((600, 16)).astype(np.float16)
    idx = drfast.PQIndex.train(emb, m=4, opq=opq, doc_ids=[f"d{i}" for i in range(600)])
    idx.save(tmp_path / "pq")
    loaded = drfast.load_index(tmp_path / "pq")
    assert isinstance(loaded, drfast.PQIndex) and loaded.doc_ids == idx.doc_ids
    assert (loaded.rotation is not None) == opq
    q = rng.standard_normal((3, 16)).astype(np.float32)
    a = idx.search(q, k=20, positives=[[1], [], [2, 3]], cutoff=10)
    b = loaded.search(q, k=20, positives=[[1], [], [2, 3]], cutoff=10)
    for field, value in vars(a).items():
        np.testing.assert_array_equal(getattr(b, field), value)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(m=5), ValueError, "m: must be a positive divisor of the dimension 16"),
    (dict(m=0), ValueError, "m: must be >= 1"),
    (dict(m=4, nbits=4), ValueError, "nbits: only 8-bit codes"),
])
def test_bad_training_arguments(rng, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        drfast.PQIndex.train(rng.standard_normal((300, 16)).astype(np.float32), **kwargs)


def test_bad_index_arguments_and_queries(rng):
    with pytest.raises(ValueError, match="PQ training needs at least 256 rows"):
        drfast.PQIndex.train(rng.standard_normal((100, 8)).astype(np.float32), m=2)
    with pytest.raises(TypeError, match="codes: expected dtype uint8"):
        drfast.PQIndex(np.zeros((2, 256, 4), np.float32), np.zeros((5, 2), np.int64))
    with pytest.raises(ValueError, match="codes: expected shape"):
        drfast.PQIndex(np.zeros((2, 256, 4), np.float32), np.zeros((5, 3), np.uint8))
    with pytest.raises(ValueError, match="centroids: expected shape"):
        drfast.PQIndex(np.zeros((2, 16, 4), np.float32), np.zeros((5, 2), np.uint8))
    idx = drfast.PQIndex(np.zeros((2, 256, 4), np.float32), np.zeros((5, 2), np.uint8))
    with pytest.raises(ValueError, match="queries: expected dimension 8"):
        idx.search(np.ones((1, 7), np.float32), k=3)
    with pytest.raises(ValueError, match="positives: row id 5 is out of range"):
        idx.search(np.ones((1, 8), np.float32), k=3, positives=[[5]])
    with pytest.raises(ValueError, match="k: must be >= 1"):
        idx.search(np.ones((1, 8), np.float32), k=0)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"seed": -1}, ValueError, "seed: must be >= 0"),
    ({"seed": 2**40}, ValueError, "seed: must be <= 2147483647"),
    ({"seed": 1.5}, TypeError, "seed: expected an integer"),
    ({"max_train": 100}, ValueError, "max_train: must be >= 256"),
    ({"m": 3}, ValueError, "m: must be a positive divisor of the dimension 8"),
    ({"m": True}, TypeError, "m: expected an integer"),
    ({"nbits": 4}, ValueError, "nbits: only 8-bit codes"),
    ({"opq": "yes"}, TypeError, "opq: expected True or False"),
])
def test_train_arguments_are_checked(kwargs, error, message):
    emb = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    with pytest.raises(error, match=message):
        drfast.PQIndex.train(emb, **{"m": 2, **kwargs})


def test_numpy_integer_m_and_list_codes():
    emb = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    with pytest.warns(UserWarning):
        idx = drfast.PQIndex.train(emb, m=np.int64(2), max_train=300)
    assert idx.m == 2
    with pytest.raises(TypeError, match=r"codes: expected a uint8 numpy array or torch tensor \[N, 2\], got list"):
        drfast.PQIndex(idx.centroids, idx.codes.tolist())
    with pytest.raises(ValueError, match="centroids: contains NaN"):
        drfast.PQIndex(torch.full((2, 256, 4), float("nan")), idx.codes)


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_codes_and_centroids_changed_after_construction_are_checked(rng, backend):
    # Training may replace codes or update centroids in place; a search never reads them blindly.
    centroids, codes, queries = integer_pq(rng, 300, 3, 2, 4)
    idx = drfast.PQIndex(centroids, codes)
    idx.codes = codes.astype(np.int64) + 200  # values past 255 would index past the lookup tables
    with pytest.raises(TypeError, match=r"^index.codes: expected dtype uint8 \(8-bit codes 0..255\), got int64"):
        idx.search(queries, k=5, backend=backend)
    idx.codes = codes[:, :2].copy()  # m no longer the centroids'
    with pytest.raises(ValueError, match=r"^index.codes: expected shape \[N >= 1, m=3\]"):
        idx.search(queries, k=5, backend=backend)
    idx.codes = codes
    with torch.no_grad():
        idx.centroids[0, int(codes[0, 0]), 0] = float("nan")  # row 0 would silently drop out of the top-k
    with pytest.raises(ValueError, match="^index.centroids: the lookup tables"):
        idx.search(queries, k=5, backend=backend)


@pytest.mark.parametrize("n, d, max_train, param", [
    (300, 384, 65536, "emb"),      # the probe's case: faiss aborted (heap overflow in OPQMatrix::train)
    (271, 272, 65536, "emb"),      # one row short
    (600, 384, 300, "max_train"),  # enough rows, too few of them sampled for training
])
def test_opq_with_fewer_training_rows_than_dimensions_is_refused_before_faiss(n, d, max_train, param):
    """faiss's OPQMatrix::train needs n >= d training rows (its [n, d] buffer receives a [d, d] product);
    fewer must give a UsageError saying how many, not a SIGABRT inside faiss."""
    emb = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    with pytest.raises(drfast.UsageError, match=rf"at least as many rows as dimensions \({d}\)") as info:
        drfast.PQIndex.train(emb, m=8, opq=True, max_train=max_train)
    assert info.value.param == param
