"""The exact two-stage search (first_pass="int8" / "bf16"): bit-identical to the exact scan on every
input, and the first-pass bounds never violated, even on inputs built to be their worst case."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drfast
from drfast.search import first_pass as TS
from drfast.search import two_stage_torch
from reference import first_pass_reference, integer_embeddings, random_positives

FIELDS = ("ids", "scores", "pos_offsets", "pos_ids", "pos_scores", "pos_ranks", "pair_weights")
VARIANTS = [("int8", True), ("int8", False), ("bf16", True)]  # (kind, refine); bf16 has no refinement


def assert_identical(res, ref):
    for f in FIELDS:
        a, b = getattr(res, f), getattr(ref, f)
        if b is None:
            assert a is None, f
            continue
        a, b = (x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (a, b))
        assert a.dtype == b.dtype and a.shape == b.shape, f
        assert np.array_equal(a, b), f"{f} differs"


def run_both(docs, queries, k, positives, cutoff, kind, refine, backend=None):
    ref = drfast.FlatIndex(docs).search(queries, k=k, positives=positives, cutoff=cutoff, backend=backend)
    idx = drfast.FlatIndex(docs, first_pass=kind, refine=refine)
    res = idx.search(queries, k=k, positives=positives, cutoff=cutoff, backend=backend)
    return res, ref, idx


def make_docs(rng, family, N, d, dtype):
    if family == "gaussian":
        x = rng.standard_normal((N, d))
    elif family == "integer":  # many exact ties
        x = rng.integers(-3, 4, (N, d)).astype(np.float64)
    elif family == "duplicates":  # a few distinct rows repeated: ties everywhere, at the k-th place too
        base = rng.standard_normal((max(1, N // 7), d))
        x = base[rng.integers(0, base.shape[0], N)]
    elif family == "spiky":  # one huge coordinate per row: the worst case of a per-row scale
        x = rng.standard_normal((N, d)) * 1e-3
        x[np.arange(N), rng.integers(0, d, N)] = rng.choice([-1, 1], N) * 10.0 ** rng.uniform(0, 3, N)
    elif family == "norms":  # norms from 1e-6 to 1e6
        x = rng.standard_normal((N, d)) * 10.0 ** rng.uniform(-6, 6, (N, 1))
    elif family == "negative":  # all scores negative against positive queries
        x = -np.abs(rng.standard_normal((N, d)))
    elif family == "anisotropic":  # a shared direction and a few dominant ones, like real embeddings
        mean = rng.standard_normal(d)
        basis = rng.standard_normal((min(8, d), d))
        x = 0.5 * mean + rng.standard_normal((N, basis.shape[0])) @ basis + 0.1 * rng.standard_normal((N, d))
    else:
        raise ValueError(family)
    with np.errstate(over="ignore"):  # fp16 overflow of the widest norms: replaced by the caller
        return x.astype(dtype)


FAMILIES = ["gaussian", "integer", "duplicates", "spiky", "norms", "negative", "anisotropic"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), N=st.integers(1, 3000), d=st.integers(1, 140), B=st.integers(1, 20),
       k=st.integers(1, 60), family=st.sampled_from(FAMILIES), dtype=st.sampled_from([np.float32, np.float16]),
       variant=st.sampled_from(VARIANTS), cutoff=st.sampled_from([None, 1, 10]))
def test_bit_identical_to_exact_scan(seed, N, d, B, k, family, dtype, variant, cutoff):
    rng = np.random.default_rng(seed)
    docs = make_docs(rng, family, N, d, dtype)
    if not np.isfinite(docs).all():  # fp16 overflow of the widest norms
        docs = np.nan_to_num(docs, posinf=1e4, neginf=-1e4).astype(dtype)
    queries = rng.standard_normal((B, d)).astype(np.float32)
    if family == "negative":
        queries = np.abs(queries)
    if family == "integer":
        queries = rng.integers(-3, 4, (B, d)).astype(np.float32)
    positives = random_positives(rng, B, N)
    res, ref, _ = run_both(docs, queries, k, positives, cutoff, *variant)
    assert_identical(res, ref)


@pytest.mark.parametrize("kind,refine", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_duplicates_at_the_kth_place(rng, kind, refine, dtype):
    # 30 copies of the same row straddle the k-th place: the lower rows must win.
    N, d, k = 500, 64, 20
    docs = rng.standard_normal((N, d)).astype(dtype) * 0.1
    top = rng.standard_normal(d).astype(dtype)
    rows = np.sort(rng.choice(N, 30, replace=False))
    docs[rows] = top
    q = top.astype(np.float32)[None, :].repeat(3, 0)
    res, ref, _ = run_both(docs, q, k, [rows[[0, 29]].tolist(), [int(rows[25])], []], 5, kind, refine)
    assert_identical(res, ref)
    np.testing.assert_array_equal(res.ids[0], rows[:k])


@pytest.mark.parametrize("kind,refine", VARIANTS)
def test_k_larger_than_n_and_all_ties(kind, refine):
    docs = np.ones((37, 5), np.float32)
    res, ref, _ = run_both(docs, np.ones((3, 5), np.float32), 40, [[0, 36], [], [17]], 3, kind, refine)
    assert_identical(res, ref)
    np.testing.assert_array_equal(res.ids[:, 37:], -1)
    np.testing.assert_array_equal(res.pos_ranks, [1, 37, 18])


@pytest.mark.parametrize("kind,refine", VARIANTS)
@pytest.mark.parametrize("threads", [1, 2])
def test_thousands_of_identical_rows(rng, kind, refine, threads):
    # Every interval equal: candidate buffers cannot be pruned by bounds and fall back to exact
    # compaction (lower rows first), many times over.
    docs = np.repeat(rng.standard_normal((3, 24)).astype(np.float32), [1500, 1500, 1000], axis=0)
    docs = docs[rng.permutation(4000)]
    q = rng.standard_normal((4, 24)).astype(np.float32)
    old = drfast.get_num_threads()
    try:
        drfast.set_num_threads(threads)
        res, ref, _ = run_both(docs, q, 7, [[0, 3999], [5], [], [2000]], 10, kind, refine)
    finally:
        drfast.set_num_threads(old)
    assert_identical(res, ref)


@pytest.mark.parametrize("kind,refine", VARIANTS)
def test_zero_vectors(kind, refine):
    docs = np.zeros((50, 16), np.float32)
    docs[7] = 1.0
    queries = np.zeros((2, 16), np.float32)
    queries[1, 3] = -2.0
    res, ref, _ = run_both(docs, queries, 10, [[7, 8], [49]], 4, kind, refine)
    assert_identical(res, ref)


@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_same_errors_as_exact_scan(kind):
    docs = np.ones((10, 4), np.float32)
    for bad in (np.zeros((0, 4), np.float32),):  # zero rows: the same error at construction
        with pytest.raises(ValueError) as exact:
            drfast.FlatIndex(bad)
        with pytest.raises(ValueError) as two:
            drfast.FlatIndex(bad, first_pass=kind)
        assert str(exact.value) == str(two.value)
    idx, ex = drfast.FlatIndex(docs, first_pass=kind), drfast.FlatIndex(docs)
    for args in [dict(queries=np.zeros((0, 4), np.float32)), dict(queries=np.ones((1, 3), np.float32)),
                 dict(queries=np.ones((1, 4), np.float32), k=0),
                 dict(queries=np.ones((1, 4), np.float32), positives=[[10]]),
                 dict(queries=np.full((1, 4), np.nan, np.float32))]:
        errs = []
        for index in (ex, idx):
            with pytest.raises((ValueError, TypeError)) as e:
                index.search(**args)
            errs.append((type(e.value), str(e.value)))
        assert errs[0] == errs[1], args


@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_overflowing_scores_fall_back_to_the_exact_scan(kind):
    docs = np.full((4, 8), 1e30, np.float32)
    idx = drfast.FlatIndex(docs, first_pass=kind)
    with pytest.raises(ValueError, match="overflow"):
        idx.search(np.full((1, 8), 1e30, np.float32), k=2)
    assert idx.last_search_stats is None


def test_rejects_unknown_kind_and_large_int8_dim():
    with pytest.raises(ValueError, match="first_pass"):
        drfast.FlatIndex(np.ones((2, 4), np.float32), first_pass="int4")
    assert TS.parse_first_pass("none") is None and TS.parse_first_pass(None) is None
    assert TS.parse_first_pass("AUTO") == TS.resolve_auto()
    assert TS.parse_first_pass("bf16") == "bf16"


def test_auto_follows_the_cpu():
    kinds = TS.fast_kinds()
    auto = TS.resolve_auto()
    assert auto == ("int8" if "int8" in kinds else "bf16" if "bf16" in kinds else None)
    assert drfast.FlatIndex(np.ones((3, 4), np.float32), first_pass="auto").first_pass_kind == auto


@pytest.mark.parametrize("kind,refine", VARIANTS)
def test_every_simd_level_gives_the_same_results_and_work(rng, kind, refine):
    docs = rng.standard_normal((3000, 100)).astype(np.float32)
    q = rng.standard_normal((9, 100)).astype(np.float32)
    pos = random_positives(rng, 9, 3000)
    idx = drfast.FlatIndex(docs, first_pass=kind, refine=refine)
    level = drfast.simd_level()
    ref = idx.search(q, k=30, positives=pos, cutoff=10)
    work = idx.last_search_stats
    try:
        for other in drfast.search.supported_simd_levels():  # each with its own first-pass table (avx2:
            drfast.set_simd_level(other)                      # the AVX2 one, test_first_pass_kernels.py)
            assert_identical(idx.search(q, k=30, positives=pos, cutoff=10), ref)
            if kind == "int8":  # int32 sums: the same bounds, so the same work, on every level
                np.testing.assert_array_equal(idx.last_search_stats.pos_rescored, work.pos_rescored)
    finally:
        drfast.set_simd_level(level)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts(rng, threads):
    docs = rng.standard_normal((5000, 48)).astype(np.float32)
    q = rng.standard_normal((5, 48)).astype(np.float32)
    pos = random_positives(rng, 5, 5000)
    old = drfast.get_num_threads()
    try:
        drfast.set_num_threads(threads)
        res, ref, _ = run_both(docs, q, 50, pos, 10, "int8", True)
        assert_identical(res, ref)
    finally:
        drfast.set_num_threads(old)


def test_stats_and_memory(rng):
    N, d = 4000, 96
    docs = rng.standard_normal((N, d)).astype(np.float32)
    q = rng.standard_normal((4, d)).astype(np.float32)
    pos = [[1, 2], [3], [], [4000 - 1]]
    idx = drfast.FlatIndex(docs, first_pass="int8")
    idx.search(q, k=10, positives=pos)
    s = idx.last_search_stats
    assert s.rows_scanned == N and s.refined.shape == (4,) and s.pos_rescored.shape == (4,)
    assert (s.rescored <= 2 * N).all()
    # codes + residual codes (d padded to 128 bytes) + 7 floats and 2 int32 per row
    assert idx.first_pass_bytes == N * (2 * 128 + 7 * 4 + 2 * 4)
    assert drfast.FlatIndex(docs, first_pass="int8", refine=False).first_pass_bytes == N * (128 + 3 * 4 + 4)
    assert drfast.FlatIndex(docs, first_pass="bf16").first_pass_bytes == N * (2 * 96 + 3 * 4)  # 96 bf16 = 192 bytes, no padding
    assert drfast.FlatIndex(docs).first_pass_bytes == 0


@pytest.mark.parametrize("kind,refine", VARIANTS)
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_keeps_the_first_pass(tmp_path, rng, kind, refine, mmap):
    docs = rng.standard_normal((700, 40)).astype(np.float16)
    idx = drfast.FlatIndex(docs, first_pass=kind, refine=refine)
    idx.save(tmp_path / "ix")
    back = drfast.load_index(tmp_path / "ix", mmap=mmap)
    assert back.first_pass_kind == kind and back.first_pass_bytes == idx.first_pass_bytes
    q = rng.standard_normal((3, 40)).astype(np.float32)
    assert_identical(back.search(q, k=9, positives=[[1], [], [699]], cutoff=3),
                     drfast.FlatIndex(docs).search(q, k=9, positives=[[1], [], [699]], cutoff=3))
    assert back.last_search_stats is not None


def test_saved_index_without_first_pass_loads_as_before(tmp_path, rng):
    docs = rng.standard_normal((20, 8)).astype(np.float32)
    drfast.FlatIndex(docs).save(tmp_path / "ix")
    assert drfast.load_index(tmp_path / "ix").first_pass_kind is None


# ---- the torch path ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind,refine", VARIANTS)
@pytest.mark.parametrize("chunk_rows", [7, 1000, None])
def test_torch_path_exact_on_integer_data(rng, kind, refine, chunk_rows):
    # Integer data: every path's arithmetic is exact, so the torch two-stage path equals the native scan.
    N, d, B = 2500, 33, 6
    docs = integer_embeddings(rng, (N, d), np.float32)
    q = integer_embeddings(rng, (B, d), np.float32)
    pos = random_positives(rng, B, N)
    ref = drfast.FlatIndex(docs).search(q, k=40, positives=pos, cutoff=10)
    idx = drfast.FlatIndex(docs, first_pass=kind, refine=refine)
    res = idx.search(torch.from_numpy(q), k=40, positives=pos, cutoff=10, backend="torch", chunk_rows=chunk_rows)
    assert_identical(res, ref)


@pytest.mark.parametrize("kind,refine", VARIANTS)
def test_torch_path_float_data_matches_the_torch_exact_path(rng, kind, refine):
    # Float data: ids, ranks and the positives' scores equal the exact torch path's (its top-k scores
    # come from a chunked matmul, whose rounding the pair scorer cannot reproduce bit for bit).
    N, d, B = 4000, 64, 5
    docs = rng.standard_normal((N, d)).astype(np.float32)
    q = rng.standard_normal((B, d)).astype(np.float32)
    pos = random_positives(rng, B, N)
    ref = drfast.FlatIndex(docs).search(q, k=25, positives=pos, backend="torch")
    res = drfast.FlatIndex(docs, first_pass=kind, refine=refine).search(q, k=25, positives=pos, backend="torch")
    np.testing.assert_array_equal(res.pos_scores, ref.pos_scores)
    np.testing.assert_array_equal(res.pos_ranks, ref.pos_ranks)
    # Two rows whose scores lie within the matmul's rounding may come in either order (seen with
    # DRFAST_SEED=3325945812 on an AVX2 CPU): ids may differ only where the exact scores are that close.
    exact = q.astype(np.float64) @ docs.T.astype(np.float64)
    b, j = np.nonzero(res.ids != ref.ids)
    gap = np.abs(exact[b, res.ids[b, j]] - exact[b, ref.ids[b, j]])
    assert (gap <= 1e-5 * np.maximum(1.0, np.abs(exact[b, ref.ids[b, j]]))).all(), (b, j, gap)
    np.testing.assert_allclose(res.scores, ref.scores, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("kind,refine", VARIANTS)
def test_gpu_torch_path_exact_on_integer_data(rng, kind, refine):
    N, d, B = 5000, 64, 20
    docs = integer_embeddings(rng, (N, d), np.float32)
    q = integer_embeddings(rng, (B, d), np.float32)
    pos = random_positives(rng, B, N)
    ref = drfast.FlatIndex(docs).search(q, k=50, positives=pos, cutoff=10)
    idx = drfast.FlatIndex(docs, first_pass=kind, refine=refine).to("cuda")
    res = idx.search(torch.from_numpy(q).cuda(), k=50, positives=pos, cutoff=10)
    assert_identical(res, ref)


# ---- the bounds against their worst case ----------------------------------------------------

def adversarial(rng, N, d, kind):
    """Rows with one huge coordinate or widely spread magnitudes, and queries aligned with the rows'
    quantization errors (the direction that makes |q . (x - x^)| equal its Cauchy-Schwarz bound)."""
    x = rng.standard_normal((N, d)) * 10.0 ** rng.uniform(-3, 3, (N, 1))
    spike = rng.random(N) < 0.3
    x[spike, rng.integers(0, d, spike.sum())] *= 1e3
    x = x.astype(np.float32)
    xt = torch.from_numpy(x).double()
    xh = TS.quantize_int8(xt)[2] if kind == "int8" else TS.quantize_bf16(xt)[1]
    err = (xt - xh).numpy()
    B = 64
    picks = rng.integers(0, N, B)
    q = err[picks] / np.maximum(np.linalg.norm(err[picks], axis=1, keepdims=True), 1e-30)
    q[: B // 2] += rng.standard_normal((B // 2, d)) * 1e-3 * rng.random((B // 2, 1))  # a quantization error of q too
    q = q * 10.0 ** rng.uniform(-2, 2, (B, 1))
    return x, q.astype(np.float32)


@pytest.mark.parametrize("kind", ["int8", "bf16"])
@pytest.mark.parametrize("d", [1, 5, 64, 768])
def test_build_matches_the_float64_reference(rng, kind, d):
    """The numba build equals the torch formulation: codes, sums and scales bit for bit; the rounded-up
    norms within one float32 step (float64 summation order), and never below the reference's norm."""
    x, _ = adversarial(rng, 3000, d, kind)
    x[:7] = 0.0                                      # zero rows: scale 0, codes 0
    x[7:20] *= np.float32(1e-38)                     # bf16 flush-to-zero and denormal float32 values
    x[20:40] = np.round(x[20:40])                    # exact halves and integers: round-half-even cases
    x[40:60] = (rng.integers(-2, 3, (20, d)) * 0.5 * 127 / 2).astype(np.float32)
    for emb in (x, np.clip(x, -6e4, 6e4).astype(np.float16)):
        ref = first_pass_reference(emb, kind, refine=True)
        data = TS.build_first_pass(emb, kind, refine=True, chunk_rows=1024)
        assert np.array_equal(data.codes, ref["codes"])
        names = [("stats", data.stats)] + ([("res_stats", data.res_stats)] if kind == "int8" else [])
        if kind == "int8":
            assert np.array_equal(data.sums, ref["sums"]) and np.array_equal(data.res_sums, ref["res_sums"])
            assert np.array_equal(data.res_codes, ref["res_codes"])
        for name, got in names:
            want = ref[name]
            assert np.array_equal(got[0], want[0]), f"{name}: scales differ"
            step = np.abs(np.nextafter(want[1:], np.float32(np.inf)) - want[1:])
            assert np.all(np.abs(got[1:] - want[1:]) <= step), f"{name}: norms beyond one float32 step"


@pytest.mark.parametrize("kind", ["int8", "bf16"])
@pytest.mark.parametrize("d", [3, 64, 768])
def test_bound_never_violated(rng, kind, d):
    # Every (query, row) score the native exact scan computes lies in the first pass's [lo, hi] and,
    # for int8, in the refinement's [lo2, hi2]: 64 x N pairs per case, millions over the cases.
    N = {3: 40_000, 64: 20_000, 768: 4000}[d]
    x, q = adversarial(rng, N, d, kind)
    data = TS.build_first_pass(x, kind, refine=True)
    qc = TS.prepare_queries(q, data)
    fp = TS.TorchFirstPass(data, qc, torch.device("cpu"))
    lo, hi, I = fp.bounds(0, N)
    s = torch.from_numpy(drfast.FlatIndex(x).search(q, k=N).scores)  # every score, sorted per query
    order = torch.from_numpy(drfast.FlatIndex(x).search(q, k=N).ids)
    lo, hi = lo.gather(1, order), hi.gather(1, order)
    assert bool((lo <= s).all() and (s <= hi).all()), "first-pass bound violated"
    tightness = float(((s - (lo + hi) / 2).abs() / ((hi - lo) / 2)).max())
    assert tightness <= 1.0
    if kind == "int8":
        b = torch.arange(q.shape[0]).repeat_interleave(N)
        r = order.reshape(-1)
        lo2, hi2 = two_stage_torch.batched(fp.refine, b.numel(), b, r, I.gather(1, order).reshape(-1))
        sd = s.reshape(-1).double()
        assert bool((lo2 <= sd).all() and (sd <= hi2).all()), "refined bound violated"
        assert float((hi2 - lo2).mean()) < float((hi - lo).double().mean()) / 20  # and much tighter


def test_first_pass_built_into_files_is_used_as_given(rng, tmp_path):
    """build_first_pass(alloc=...) writes into the caller's arrays (here memory-mapped files), and a
    FlatIndex takes that copy as it is: same results as building it in memory; other rows refused."""
    x = rng.standard_normal((3000, 40)).astype(np.float16)
    q = rng.standard_normal((6, 40)).astype(np.float32)

    def alloc(name, shape, dtype):
        return np.lib.format.open_memmap(tmp_path / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)

    data = TS.build_first_pass(x, "int8", alloc=alloc)
    assert isinstance(data.codes, np.memmap)
    pos = random_positives(rng, 6, 3000)
    got = drfast.FlatIndex(x, first_pass=data).search(q, k=30, positives=pos, cutoff=10)
    want = drfast.FlatIndex(x, first_pass="int8").search(q, k=30, positives=pos, cutoff=10)
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.pos_ranks, want.pos_ranks)
    with pytest.raises(ValueError, match="first_pass: .* does not belong to 2999 rows"):
        drfast.FlatIndex(x[:2999], first_pass=data)


def test_int8_lean_is_int8_without_the_refinement_codes(rng):
    x = rng.standard_normal((4000, 48)).astype(np.float16)
    q = rng.standard_normal((5, 48)).astype(np.float32)
    pos = random_positives(rng, 5, 4000)
    lean, full = drfast.FlatIndex(x, first_pass="int8-lean"), drfast.FlatIndex(x, first_pass="int8")
    assert lean.first_pass_kind == "int8" and not lean.first_pass_data.refine and full.first_pass_data.refine
    assert lean.first_pass_bytes < full.first_pass_bytes
    want = drfast.FlatIndex(x).search(q, k=25, positives=pos, cutoff=10)
    got = lean.search(q, k=25, positives=pos, cutoff=10)
    for field in ("ids", "scores", "pos_scores", "pos_ranks", "pair_weights"):
        assert np.array_equal(getattr(got, field), getattr(want, field)), field
    assert TS.parse_first_pass("INT8-lean") == "int8" and not TS.first_pass_refines("int8-lean")
    assert TS.first_pass_refines("int8") and TS.first_pass_refines(None)
