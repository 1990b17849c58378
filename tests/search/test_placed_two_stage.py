"""The placed two-stage search (FlatIndex(first_pass=..., first_pass_device=...)): first pass and bounds
with torch ops on the copy's device, the undecided rows scored on the host by the native exact scan's
pair scorer. Bit-identical to the native exact scan (ids, scores, ranks, weights) on every input; the
CPU runs the same code as a GPU (first_pass_device="cpu"), the GPU tests are marked `gpu`."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drfast
from reference import random_positives

FIELDS = ("ids", "scores", "pos_offsets", "pos_ids", "pos_scores", "pos_ranks", "pair_weights")
VARIANTS = [("int8", True), ("int8", False), ("bf16", True)]


def assert_identical(res, ref):
    for f in FIELDS:
        a, b = getattr(res, f), getattr(ref, f)
        assert (a is None) == (b is None), f
        if a is not None:
            a = a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            assert a.dtype == np.asarray(b).dtype and np.array_equal(a, b), f"{f} differs"


def make_docs(rng, family, N, d, dtype):
    if family == "gaussian":
        x = rng.standard_normal((N, d))
    elif family == "integer":  # exact ties everywhere
        x = rng.integers(-3, 4, (N, d)).astype(np.float64)
    elif family == "duplicates":  # repeated rows: ties at the k-th place and around the positives
        base = rng.standard_normal((max(1, N // 7), d))
        x = base[rng.integers(0, base.shape[0], N)]
    else:  # "norms": row norms over twelve orders of magnitude
        x = rng.standard_normal((N, d)) * 10.0 ** rng.uniform(-6, 6, (N, 1))
    with np.errstate(over="ignore"):  # fp16 overflow of the widest norms: replaced by the caller
        return x.astype(dtype)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), N=st.integers(1, 2500), d=st.integers(1, 100), B=st.integers(1, 12),
       k=st.integers(1, 40), family=st.sampled_from(["gaussian", "integer", "duplicates", "norms"]),
       dtype=st.sampled_from([np.float32, np.float16]), variant=st.sampled_from(VARIANTS),
       cutoff=st.sampled_from([None, 1, 10]), chunk=st.sampled_from([None, 777]),
       depth_extra=st.sampled_from([None, 0, 25]))
def test_bit_identical_to_the_native_exact_scan(seed, N, d, B, k, family, dtype, variant, cutoff, chunk,
                                                depth_extra):
    rng = np.random.default_rng(seed)
    docs = make_docs(rng, family, N, d, dtype)
    if not np.isfinite(docs).all():  # fp16 overflow of the widest norms
        docs = np.nan_to_num(docs, posinf=1e4, neginf=-1e4).astype(dtype)
    queries = rng.standard_normal((B, d)).astype(np.float32)
    if family == "integer":
        queries = rng.integers(-3, 4, (B, d)).astype(np.float32)
    positives = random_positives(rng, B, N, max_per_query=4)
    depth = None if depth_extra is None else max(k, cutoff or 0) + depth_extra
    kind, refine = variant
    ref = drfast.FlatIndex(docs).search(queries, k, positives, cutoff, rank_depth=depth)
    placed = drfast.FlatIndex(docs, first_pass=kind, refine=refine, first_pass_device="cpu")
    backend, chunk_rows = ("torch", chunk) if chunk else (None, None)
    res = placed.search(queries, k, positives, cutoff, backend=backend, chunk_rows=chunk_rows, rank_depth=depth)
    assert_identical(res, ref)
    assert res.rank_depth == depth


def test_the_copy_is_torch_and_the_rows_are_read_only_where_undecided(rng):
    docs = rng.standard_normal((5000, 48)).astype(np.float32)
    queries = rng.standard_normal((4, 48)).astype(np.float32)
    index = drfast.FlatIndex(docs, first_pass="int8", first_pass_device="cpu")
    assert isinstance(index.first_pass_data.codes, torch.Tensor) and isinstance(index.emb, np.ndarray)
    res = index.search(queries, 10, [[1], [2, 3], [], [4999]], cutoff=10)
    assert_identical(res, drfast.FlatIndex(docs).search(queries, 10, [[1], [2, 3], [], [4999]], cutoff=10))
    stats = index.last_search_stats
    assert stats.rows_scanned == 5000 and (stats.rescored < 500).all()  # few exact recomputations


def test_torch_queries_and_given_positive_scores(rng):
    docs = rng.integers(-2, 3, (900, 16)).astype(np.float32)
    q = rng.integers(-2, 3, (3, 16)).astype(np.float32)
    index = drfast.FlatIndex(docs, first_pass="int8", first_pass_device="cpu")
    res = index.search(torch.from_numpy(q), 7, [[0, 5], [6], [899]])
    assert isinstance(res.ids, torch.Tensor)
    assert_identical(res, drfast.FlatIndex(docs).search(q, 7, [[0, 5], [6], [899]]))


def test_refuses_rows_on_a_device_or_no_first_pass(rng):
    docs = rng.standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(drfast.UsageError) as e:
        drfast.FlatIndex(docs, first_pass_device="cpu")
    assert e.value.param == "first_pass_device"
    with pytest.raises(drfast.UsageError) as e:
        drfast.FlatIndex(docs, first_pass="int8", first_pass_device="no-such-device")
    assert e.value.param == "first_pass_device"


@pytest.mark.gpu
@pytest.mark.parametrize("kind, refine", VARIANTS)
def test_gpu_first_pass_host_rows_bit_identical(rng, kind, refine):
    docs = rng.standard_normal((20000, 64)).astype(np.float32)
    queries = rng.standard_normal((16, 64)).astype(np.float32)
    positives = random_positives(rng, 16, 20000, max_per_query=3)
    index = drfast.FlatIndex(docs, first_pass=kind, refine=refine, first_pass_device="cuda")
    assert index.first_pass_data.codes.is_cuda
    for depth in (None, 50):
        ref = drfast.FlatIndex(docs).search(queries, 20, positives, 10, rank_depth=depth)
        assert_identical(index.search(queries, 20, positives, 10, rank_depth=depth), ref)
