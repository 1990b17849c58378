"""Bad input gets a ValueError/TypeError naming the argument, never a crash or a wrong answer."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drfast
from drfast.search.fused import unchecked_native_search
from reference import reference_search


@pytest.fixture
def idx():
    return drfast.FlatIndex(np.arange(40, dtype=np.float32).reshape(10, 4))


Q = np.ones((2, 4), np.float32)


@pytest.mark.parametrize("emb,exc,match", [
    (np.ones((3, 4), np.float64), TypeError, "emb: expected dtype float32 or float16"),
    (np.ones((3, 4), np.int32), TypeError, "emb: expected dtype"),
    (np.ones(4, np.float32), ValueError, r"emb: expected shape \[N, d\]"),
    (np.ones((0, 4), np.float32), ValueError, "N = 0"),
    (np.ones((3, 0), np.float32), ValueError, "dimension d"),
    (np.array([[1.0, np.nan]], np.float32), ValueError, "emb: contains NaN or Inf"),
    (np.array([[1.0, np.inf]], np.float16), ValueError, "emb: contains NaN or Inf"),
    ([[1.0, 2.0]], TypeError, "emb: expected a numpy array or torch tensor"),
])
def test_bad_embeddings(emb, exc, match):
    with pytest.raises(exc, match=match):
        drfast.FlatIndex(emb)


@pytest.mark.parametrize("queries,exc,match", [
    (np.ones((2, 4), np.float64), TypeError, "queries: expected dtype float32"),
    (torch.ones(2, 4, dtype=torch.float16), TypeError, "queries: expected dtype float32"),
    (np.ones(4, np.float32), ValueError, r"queries: expected shape \[B, 4\]"),
    (np.ones((2, 5), np.float32), ValueError, "queries: expected dimension 4"),
    (np.ones((0, 4), np.float32), ValueError, "B = 0"),
    (np.array([[1, 2, np.nan, 4]], np.float32), ValueError, "queries: contains NaN or Inf"),
    (np.array([[1, 2, -np.inf, 4]], np.float32), ValueError, "queries: contains NaN or Inf"),
    ("abc", TypeError, "queries: expected a numpy array"),
])
def test_bad_queries(idx, queries, exc, match):
    with pytest.raises(exc, match=match):
        idx.search(queries, k=3)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(k=0), ValueError, "k: must be >= 1"),
    (dict(k=-3), ValueError, "k: must be >= 1"),
    (dict(k=2.5), TypeError, "k: expected an int"),
    (dict(k=True), TypeError, "k: expected an int"),
    (dict(k=3, cutoff=0), ValueError, "cutoff: must be >= 1"),
    (dict(k=3, cutoff="10"), TypeError, "cutoff: expected an int"),
    (dict(k=3, positives=[[1], [10]]), ValueError, "positives: row id 10 is out of range"),
    (dict(k=3, positives=[[-1], []]), ValueError, "positives: row id -1 is out of range"),
    (dict(k=3, positives=[[2, 2], []]), ValueError, "positives: row 2 is listed twice for query 0"),
    (dict(k=3, positives=[[1]]), ValueError, r"positives: expected one list per query \(B = 2\)"),
    (dict(k=3, positives=[[1.5], []]), TypeError, "positives\\[0\\]: expected integer row ids"),
    (dict(k=3, positives=(np.array([0, 1]), np.array([1]))), ValueError, "positives offsets: expected B \\+ 1"),
    (dict(k=3, positives=(np.array([0, 2, 1]), np.array([1]))), ValueError, "positives offsets: must start at 0"),
    (dict(k=3, positives=(np.array([0, 1, 3]), np.array([1, 2]))), ValueError, "end at len"),
    (dict(k=3, positives=5), TypeError, "positives: expected a list of lists"),
    (dict(k=3, backend="gpu"), ValueError, "backend: expected one of"),
    (dict(k=3, backend="cuda"), ValueError, "backend: 'cuda' needs the index on a CUDA device"),
])
def test_bad_search_arguments(idx, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        idx.search(Q, **kwargs)


def test_overflow_is_reported_not_returned():
    idx = drfast.FlatIndex(np.full((3, 4), 3e38, np.float32))
    with pytest.raises(ValueError, match="overflowed float32"):
        idx.search(np.full((1, 4), 3e38, np.float32), k=2)


def outputs(B, k, nnz):
    return (np.empty((B, k), np.int64), np.empty((B, k), np.float32), np.empty(nnz, np.float32),
            np.empty(nnz, np.int64))


OFFSETS, ONE_POS = np.array([0, 1, 1], np.int64), np.array([0], np.int64)
Q, DOCS = np.ones((2, 4), np.float32), np.ones((5, 4), np.float32)
LUTS, CODES = np.ones((2, 3, 256), np.float32), np.zeros((5, 3), np.uint8)


@pytest.mark.parametrize("kind,args,match", [
    ("flat", (Q, DOCS, 3, OFFSETS, np.array([7]), 0, *outputs(2, 3, 1)), "pos_ids: row id out of range"),
    ("flat", (Q, np.ones((5, 3), np.float32), 3, OFFSETS, ONE_POS, 0, *outputs(2, 3, 1)), "docs: dimension differs"),
    ("flat", (Q, DOCS, 4, OFFSETS, ONE_POS, 0, *outputs(2, 3, 1)), "ids: expected shape"),
    ("flat", (Q.astype(np.float64), DOCS, 3, OFFSETS, ONE_POS, 0, *outputs(2, 3, 1)), "queries: wrong dtype"),
    ("flat", (Q, DOCS, 3, OFFSETS, ONE_POS, 5, *outputs(2, 3, 1)), "pair_weights: required"),
    ("flat", (np.ones((2, 8), np.float32)[:, ::2], DOCS, 3, OFFSETS, ONE_POS, 0, *outputs(2, 3, 1)),
     "must be C-contiguous"),
    ("flat", (Q, DOCS, 3, np.array([0, 1, 2]), ONE_POS, 0, *outputs(2, 3, 1)), "pos_ids: length differs"),
    ("flat", (Q, DOCS, 3, np.array([0, 2, 1]), ONE_POS, 0, *outputs(2, 3, 1)), "must be non-decreasing"),
    ("flat", (Q, DOCS, 0, OFFSETS, ONE_POS, 0, *outputs(2, 0, 1)), "k must be >= 1"),
    ("pq", (np.ones((2, 3, 255), np.float32), CODES, 3, OFFSETS, ONE_POS, 0, *outputs(2, 3, 1)),
     r"luts: expected shape \[B, m, 256\]"),
    ("pq", (LUTS, np.zeros((5, 4), np.uint8), 3, OFFSETS, ONE_POS, 0, *outputs(2, 3, 1)), "codes: expected shape"),
    ("pq", (LUTS, CODES.astype(np.int8), 3, OFFSETS, ONE_POS, 0, *outputs(2, 3, 1)), "codes: wrong dtype"),
    ("pq", (LUTS, CODES, 3, OFFSETS, np.array([5]), 0, *outputs(2, 3, 1)), "pos_ids: row id out of range"),
])
def test_bindings_reject_bad_buffers(kind, args, match):
    # The bindings' own checks stop what drfast.search.validate would have caught: no call can crash.
    with pytest.raises(ValueError, match=match):
        unchecked_native_search(kind, *args)


def test_bindings_accept_good_buffers():
    # The same door with valid arrays runs the kernel (so the rejections above are the checks' doing).
    ids, scores, pos_scores, pos_ranks = out = outputs(2, 3, 1)
    unchecked_native_search("flat", np.eye(2, 4, dtype=np.float32), np.eye(5, 4, dtype=np.float32), 3, OFFSETS,
                            ONE_POS, 0, *out)
    np.testing.assert_array_equal(ids, [[0, 1, 2], [1, 0, 2]])
    np.testing.assert_array_equal(pos_ranks, [1])
    unchecked_native_search("pq", LUTS, CODES, 3, OFFSETS, ONE_POS, 0, *out)
    np.testing.assert_array_equal(ids, [[0, 1, 2]] * 2)
    np.testing.assert_array_equal(scores, np.full((2, 3), 3.0))


# --- property-based: random shapes, random (sometimes bad) inputs ------------------------------

@st.composite
def search_case(draw):
    N = draw(st.integers(1, 60))
    d = draw(st.integers(1, 40))
    B = draw(st.integers(1, 12))
    k = draw(st.integers(1, N + 5))
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    docs = rng.integers(-2, 3, size=(N, d)).astype(dtype)
    queries = rng.integers(-2, 3, size=(B, d)).astype(np.float32)
    positives = [sorted(rng.choice(N, size=int(rng.integers(0, min(N, 3) + 1)), replace=False).tolist())
                 for _ in range(B)]
    cutoff = draw(st.one_of(st.none(), st.integers(1, 20)))
    corruption = draw(st.sampled_from(
        [None, "nan_query", "dim", "dtype", "k", "pos_range", "pos_dup", "pos_len", "cutoff", "rank"]))
    return docs, queries, k, positives, cutoff, corruption


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(search_case())
def test_property_valid_inputs_match_reference_and_bad_inputs_raise(case):
    docs, queries, k, positives, cutoff, corruption = case
    N, d = docs.shape
    idx = drfast.FlatIndex(docs)
    if corruption is None:
        res = idx.search(queries, k=k, positives=positives, cutoff=cutoff)
        ref = reference_search(queries, docs, k, positives, cutoff)
        np.testing.assert_array_equal(res.ids, ref["ids"])
        np.testing.assert_array_equal(res.scores, ref["scores"].astype(np.float32))
        np.testing.assert_array_equal(res.pos_ranks, ref["pos_ranks"])
        if cutoff:
            np.testing.assert_allclose(res.pair_weights, ref["pair_weights"], rtol=1e-6, atol=0)
        return
    if corruption == "nan_query":
        queries[0, 0] = np.nan
    elif corruption == "dim":
        queries = np.ones((queries.shape[0], d + 1), np.float32)
    elif corruption == "dtype":
        queries = queries.astype(np.float64)
    elif corruption == "k":
        k = -k
    elif corruption == "pos_range":
        positives[0] = positives[0] + [N]
    elif corruption == "pos_dup":
        positives[0] = [0, 0]
    elif corruption == "pos_len":
        positives = positives + [[0]]
    elif corruption == "cutoff":
        cutoff = 0
    elif corruption == "rank":
        queries = queries[0]
    with pytest.raises((ValueError, TypeError)):
        idx.search(queries, k=k, positives=positives, cutoff=cutoff)


# --- k, cutoff and the forms of `positives` ------------------------------------------------------

def test_k_may_exceed_n_by_a_bounded_padding(idx):
    from drfast.search.validate import MAX_K_PADDING

    res = idx.search(Q, k=10 + MAX_K_PADDING)
    assert res.ids.shape == (2, 10 + MAX_K_PADDING) and (res.ids[:, 10:] == -1).all()
    with pytest.raises(ValueError, match=r"^k: must be <= N \+ 65536 = 65546 \(the index has N = 10 rows"):
        idx.search(Q, k=11 + MAX_K_PADDING)
    with pytest.raises(ValueError, match="^k: must be <="):
        idx.search(Q, k=10**30, backend="torch")


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_a_cutoff_beyond_n_and_k_weighs_like_n(idx, backend):
    expected = idx.search(Q, k=12, positives=[[1], [2, 3]], cutoff=12, backend=backend)
    got = idx.search(Q, k=12, positives=[[1], [2, 3]], cutoff=10**30, backend=backend)
    for field, value in vars(expected).items():
        np.testing.assert_array_equal(getattr(got, field), value, err_msg=field)


def test_a_pair_of_python_lists_is_refused_as_ambiguous(idx):
    # With B == 2, ([0, 2], [5, 7]) could be per-query lists or CSR offsets and ids: neither is guessed.
    with pytest.raises(TypeError, match=r"^positives: a tuple of two items is read as a CSR pair .* got \(list, list\)"):
        idx.search(Q, k=3, positives=([0, 2], [5, 7]))
    with pytest.raises(TypeError, match="positives: a tuple of two items"):
        idx.search(Q, k=3, positives=(np.array([0, 1, 2]), [5, 7]))


def test_the_two_forms_of_positives():
    idx = drfast.FlatIndex(np.arange(40, dtype=np.float32).reshape(10, 4))
    q3 = np.ones((3, 4), np.float32)
    lists = idx.search(Q, k=3, positives=[[0, 2], [5, 7]], cutoff=3)
    as_arrays = idx.search(Q, k=3, positives=[np.array([0, 2]), np.array([5, 7])], cutoff=3)  # a list: per query
    csr = idx.search(Q, k=3, positives=(np.array([0, 2, 4]), np.array([0, 2, 5, 7], np.int32)), cutoff=3)
    csr_torch = idx.search(Q, k=3, positives=(torch.tensor([0, 2, 4]), torch.tensor([0, 2, 5, 7])), cutoff=3)
    for other in (as_arrays, csr, csr_torch):
        for field, value in vars(lists).items():
            np.testing.assert_array_equal(getattr(other, field), value, err_msg=field)
    # A tuple of any other length is still one entry per query.
    np.testing.assert_array_equal(idx.search(q3, k=3, positives=([1], [], [2, 3])).pos_ids, [1, 2, 3])
    # Two arrays meant as per-query lists are read as a CSR pair, and the error says so.
    with pytest.raises(ValueError, match=r"expected B \+ 1 = 3 entries, got 2 \(a tuple of two arrays is read as a CSR"):
        idx.search(Q, k=3, positives=(np.array([0, 2]), np.array([5, 7])))


# --- other inputs that used to give an unclear error or a wrong answer ----------------------------

def test_queries_on_an_unsupported_device(idx):
    with pytest.raises(ValueError, match="^queries: expected a tensor on the CPU or a CUDA device, got device meta"):
        idx.search(torch.ones(2, 4, device="meta"), k=3)


def test_ragged_positives_name_the_argument(idx):
    with pytest.raises(ValueError, match=r"^positives\[0\]: expected a 1-D sequence of integer row ids"):
        idx.search(Q, k=3, positives=[[[1], [2, 3]], []])


def test_read_only_strided_and_narrow_integer_inputs(idx):
    expected = idx.search(Q, k=4, positives=[[1], [2, 3]], cutoff=3)
    q = np.repeat(Q, 2, axis=1)[:, ::2]  # strided
    offsets, ids = np.array([0, 1, 3], np.int32), np.array([1, 2, 3], np.uint8)
    for a in (q, offsets, ids):
        a.setflags(write=False)
    for queries in (q, np.asfortranarray(Q), torch.from_numpy(Q.T.copy()).T):
        got = idx.search(queries, k=4, positives=(offsets, ids), cutoff=3)
        for field, value in vars(expected).items():
            np.testing.assert_array_equal(np.asarray(getattr(got, field)), value, err_msg=field)


def test_set_num_threads_bounds():
    with pytest.raises(ValueError, match="^n: must be <= 2147483647"):
        drfast.set_num_threads(2**40)


def test_outputs_that_cannot_be_addressed_are_a_memory_error():
    # N = 2**60 zero-stride rows (never scanned): B x k outputs would exceed the address space.
    docs = np.lib.stride_tricks.as_strided(np.ones(1, np.float32), shape=(2**60, 1), strides=(0, 0))
    with pytest.raises(MemoryError, match=rf"^search: out of memory for B=2 queries and k={2**60} "):
        drfast.search.flat_search(np.ones((2, 1), np.float32), docs, k=2**60)


def test_nan_in_a_float16_memmap_is_refused(tmp_path):
    emb = np.lib.format.open_memmap(tmp_path / "emb.npy", mode="w+", dtype=np.float16, shape=(70000, 2))
    emb[:] = 1
    emb[69999, 1] = np.nan  # in the second chunk of the finiteness check
    emb.flush()
    with pytest.raises(ValueError, match="^emb: contains NaN or Inf"):
        drfast.FlatIndex(np.load(tmp_path / "emb.npy", mmap_mode="r"))
