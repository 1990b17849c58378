"""faiss interop: load_faiss_index / to_faiss round trips, and drfast's search against faiss's own
search on the same index (Flat IP, PQ, OPQ+PQ, IVF1-PQ), with faiss's decoded rows as the reference."""
import functools
import gc

import numpy as np
import pytest

import drfast

faiss = pytest.importorskip("faiss")

N, D, M, B, K = 10_000, 32, 8, 1000, 50  # N >= 39 * 256: faiss's k-means trains without warnings
IP = faiss.METRIC_INNER_PRODUCT
# Gaussian rows (off-centre, so that an IVF coarse centroid is far from 0) and queries: float32 ties
# in the top-k are rare, and where they happen the comparisons below allow them to be swapped.
_rng = np.random.default_rng(1234)
X = _rng.standard_normal((N, D)).astype(np.float32) + 0.3
Q = _rng.standard_normal((B, D)).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    # faiss's OpenMP k-means slows down by 10x and more on a busy machine; these indexes are small
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@functools.cache
def build(kind):
    """A faiss inner-product index of `kind` over X, trained and filled by faiss (built once)."""
    if kind == "flat":
        index = faiss.IndexFlatIP(D)
    elif "ivf1" in kind:
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(D), D, 1, M, 8, IP)
    else:
        index = faiss.IndexPQ(D, M, 8, IP)
    if kind != "flat":  # fewer k-means / OPQ iterations than faiss's defaults: codebook quality is
        index.pq.cp.niter = 10  # not what these tests measure, and training dominates their time
    if kind.startswith("opq"):
        opq = faiss.OPQMatrix(D, M)
        opq.niter, opq.niter_pq_0 = 4, 10
        index = faiss.IndexPreTransform(opq, index)
    index.train(X)
    index.add(X)
    return index


def faiss_rows(index):
    """Every row as faiss decodes it (in the original space), float64: the independent reference."""
    index = faiss.clone_index(index)  # the direct map reconstruct_n needs stays on the copy
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
    return index.reconstruct_n(0, index.ntotal).astype(np.float64)


def assert_same_search(res, Dist, Ids, S, tol):
    """drfast's result equals faiss's: scores up to `tol`; ids identical except swaps between rows
    whose exact scores are within `tol` (float32 rounding decides those)."""
    np.testing.assert_allclose(res.scores, Dist, rtol=0, atol=tol)
    b, j = np.nonzero(res.ids != Ids)
    gap = np.abs(S[b, res.ids[b, j]] - S[b, Ids[b, j]])
    assert (gap <= tol).all(), f"ids differ beyond float rounding at {list(zip(b, j))[:5]}, gaps {gap.max()}"
    return int((res.ids == Ids).all(axis=1).sum())


@pytest.mark.parametrize("kind", ["flat", "pq", "opq", "ivf1", "opq_ivf1"])
def test_search_matches_faiss(kind):
    q, index = Q, build(kind)
    idx = drfast.load_faiss_index(index)
    assert type(idx) is (drfast.FlatIndex if kind == "flat" else drfast.PQIndex)
    assert (idx.ntotal, idx.dim) == (N, D)
    if kind != "flat":
        assert (idx.rotation is not None) == kind.startswith("opq")

    rows = faiss_rows(index)
    np.testing.assert_allclose(idx.reconstruct(np.arange(N)).numpy(), rows, rtol=0, atol=1e-5)
    if "ivf1" in kind:  # the residuals' coarse centroid is large enough for a missing fold to show
        assert np.abs(faiss.extract_index_ivf(index).quantizer.reconstruct(0)).max() > 0.1
    S = q.astype(np.float64) @ rows.T
    tol = 1e-5 * np.abs(S).max()

    Dist, Ids = index.search(q, K)
    rng = np.random.default_rng(0)
    positives = [[int(Ids[b, 0]), int(Ids[b, 7])] for b in range(B)]
    for ps in positives:  # and one random row (most of them far down the ranking)
        ps.append(next(r for r in map(int, rng.integers(N, size=10)) if r not in ps))
    res = idx.search(q, k=K, positives=positives)
    identical = assert_same_search(res, Dist, Ids, S, tol)
    print(f"{kind}: ids identical on {identical}/{B} queries, max |score diff| {np.abs(res.scores - Dist).max():.2e}")
    assert identical >= 0.95 * B

    # positive ranks: consistent with the exact scores over the whole corpus, with faiss's own
    # ranking where no near-tie blurs it, and with drfast's top-k
    b = np.repeat(np.arange(B), 3)
    p = np.asarray(positives).reshape(-1)
    s_p = S[b, p]
    np.testing.assert_allclose(res.pos_scores, s_p, rtol=0, atol=tol)
    lo = 1 + (S[b] > s_p[:, None] + tol).sum(axis=1)
    hi = (S[b] >= s_p[:, None] - tol).sum(axis=1)
    assert ((lo <= res.pos_ranks) & (res.pos_ranks <= hi)).all()
    faiss_rank = np.tile([1, 8, 0], B)
    clear = (faiss_rank > 0) & (lo == hi)
    np.testing.assert_array_equal(res.pos_ranks[clear], faiss_rank[clear])
    in_top = res.pos_ranks <= K
    np.testing.assert_array_equal(res.ids[b[in_top], res.pos_ranks[in_top] - 1], p[in_top])


def test_ivf1_without_residual_and_with_permuted_ids():
    x, q = X, Q
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(D), D, 1, M, 8, IP)
    index.by_residual = False
    index.pq.cp.niter = 10
    index.train(x)
    perm = np.random.default_rng(5).permutation(N)
    index.add_with_ids(x, perm)  # list order != id order: drfast rows must follow the ids
    idx = drfast.load_faiss_index(index)
    rows = faiss_rows(index)  # reconstruct(i) is by faiss id
    np.testing.assert_allclose(idx.reconstruct(np.arange(N)).numpy(), rows, rtol=0, atol=1e-5)
    Dist, Ids = index.search(q, K)
    S = q.astype(np.float64) @ rows.T
    assert_same_search(idx.search(q, k=K), Dist, Ids, S, 1e-5 * np.abs(S).max())


@pytest.mark.parametrize("bad_ids", ["duplicate", "out_of_range"])
def test_ivf1_refuses_ids_that_are_not_a_permutation(bad_ids):
    index = faiss.clone_index(build("ivf1"))
    index.reset()
    ids = np.arange(N)
    ids[1] = 0 if bad_ids == "duplicate" else N + 10
    index.add_with_ids(X, ids)
    with pytest.raises(ValueError, match=r"not a permutation of 0\.\.9999"):
        drfast.load_faiss_index(index)


@pytest.mark.filterwarnings("ignore:PQ codebooks trained on")
@pytest.mark.parametrize("opq", [False, True])
def test_pq_round_trip(opq):
    idx = drfast.PQIndex.train(X, m=M, opq=opq, seed=3, max_train=2048)
    out = idx.to_faiss()
    assert type(out).__name__ == ("IndexPreTransform" if opq else "IndexPQ")
    back = drfast.load_faiss_index(out)
    assert back.centroids.equal(idx.centroids)
    np.testing.assert_array_equal(back.codes, idx.codes)
    assert (back.rotation is None) if not opq else back.rotation.equal(idx.rotation)
    np.testing.assert_array_equal(back.reconstruct(np.arange(N)).numpy(), idx.reconstruct(np.arange(N)).numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_flat_round_trip(dtype):
    x, q = X, Q
    idx = drfast.FlatIndex(x.astype(dtype))
    back = drfast.load_faiss_index(idx.to_faiss())
    np.testing.assert_array_equal(back.emb, x.astype(dtype).astype(np.float32))
    np.testing.assert_array_equal(back.search(q[:50], k=K).ids, idx.search(q[:50], k=K).ids)


@pytest.mark.parametrize("kind", ["flat", "opq", "ivf1"])
@pytest.mark.parametrize("mmap", [True, False])
def test_read_from_file(tmp_path, kind, mmap):
    q, index = Q, build(kind)
    faiss.write_index(index, str(tmp_path / "f.index"))
    ids = [f"d{i}" for i in range(N)]
    idx = drfast.load_faiss_index(tmp_path / "f.index", doc_ids=ids, mmap=mmap)
    assert idx.doc_ids == ids
    gc.collect()  # the file's faiss index lives on only through the views drfast holds
    expected = drfast.load_faiss_index(index).search(q[:100], k=K)
    res = idx.search(q[:100], k=K)
    np.testing.assert_array_equal(res.ids, expected.ids)
    np.testing.assert_array_equal(res.scores, expected.scores)


def test_object_is_copied_path_is_viewed(tmp_path):
    index = faiss.IndexFlatIP(D)
    index.add(X)
    idx = drfast.load_faiss_index(index)
    index.reset()  # the caller may change its own index: drfast's copy is unaffected
    np.testing.assert_array_equal(idx.emb, X)
    faiss.write_index(build("flat"), str(tmp_path / "f.index"))
    viewed = drfast.load_faiss_index(tmp_path / "f.index").emb
    assert not viewed.flags.owndata and not viewed.flags.writeable


def test_doc_ids_length_checked():
    index = faiss.IndexFlatIP(D)
    index.add(X[:100])
    with pytest.raises(ValueError, match=r"doc_ids: expected 100 ids \(one per row\), got 99"):
        drfast.load_faiss_index(index, doc_ids=[str(i) for i in range(99)])


def test_trivial_id_map_is_unwrapped():
    x = X
    index = faiss.IndexIDMap(faiss.IndexFlatIP(D))
    index.add_with_ids(x[:100], np.arange(100))
    np.testing.assert_array_equal(drfast.load_faiss_index(index).emb, x[:100])


def id_map_with_offset_ids():
    index = faiss.IndexIDMap(faiss.IndexFlatIP(D))
    index.add_with_ids(X[:100], np.arange(100) + 7)
    return index


def skewed_linear_transform():
    transform = faiss.LinearTransform(D, D, False)
    faiss.copy_array_to_vector(np.eye(D, dtype=np.float32).ravel() * 2, transform.A)
    transform.is_trained = True
    return faiss.IndexPreTransform(transform, faiss.IndexPQ(D, M, 8, IP))


# Layouts are refused before their rows are read, so most of these can stay empty.
UNSUPPORTED = {
    "hnsw": (lambda: faiss.IndexHNSWFlat(D, 16, IP), TypeError,
             r"faiss\.IndexHNSWFlat is not supported; supported: IndexFlatIP, IndexPQ, IndexIVFPQ with one list"),
    "flat_l2": (lambda: faiss.IndexFlatL2(D), TypeError, r"faiss\.IndexFlatL2 is not supported"),
    "sq8": (lambda: faiss.index_factory(D, "SQ8", IP), TypeError, r"faiss\.IndexScalarQuantizer is not supported"),
    "pq_l2": (lambda: faiss.IndexPQ(D, M, 8), ValueError, r"faiss\.IndexPQ uses L2; only METRIC_INNER_PRODUCT"),
    "pq_4bit": (lambda: faiss.IndexPQ(D, M, 4, IP), ValueError, r"faiss\.IndexPQ has 4-bit codes; only 8-bit"),
    "ivf4": (lambda: faiss.index_factory(D, f"IVF4,PQ{M}", IP), ValueError,
             r"faiss\.IndexIVFPQ with nlist=4 is not supported"),
    "pca": (lambda: faiss.index_factory(D, f"PCA{D},PQ{M}", IP), TypeError,
            r"IndexPreTransform with \[faiss\.PCAMatrix\] is not supported"),
    "not_orthogonal": (skewed_linear_transform, ValueError, r"faiss\.LinearTransform is not orthogonal"),
    "opq_flat": (lambda: faiss.IndexPreTransform(faiss.downcast_VectorTransform(build("opq").chain.at(0)),
                                                 faiss.IndexFlatIP(D)),
                 TypeError, r"an OPQMatrix before faiss\.IndexFlatIP"),
    "id_map": (id_map_with_offset_ids, ValueError, r"faiss\.IndexIDMap with ids other than 0\.\.N-1"),
    "empty": (lambda: faiss.IndexFlatIP(D), ValueError, r"faiss\.IndexFlatIP holds no vectors"),
    "not_faiss": (lambda: X, TypeError, "expected a faiss index or a path, got ndarray"),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_indexes_give_clear_errors(case):
    make, error, message = UNSUPPORTED[case]
    with pytest.raises(error, match=message):
        drfast.load_faiss_index(make())


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        drfast.load_faiss_index(tmp_path / "missing.index")
    (tmp_path / "junk.index").write_bytes(b"not a faiss index at all")
    with pytest.raises(ValueError, match="is not a readable faiss index"):
        drfast.load_faiss_index(tmp_path / "junk.index")
