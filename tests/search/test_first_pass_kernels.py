"""The first-pass kernel tables of the two-stage search (csrc/cpu/first_pass.inc), each SIMD level's
table against a plain numpy reference, bit for bit: int8 bounds, the refinement's dot products,
select_band and count_above. Shapes off every tile (d not a multiple of 16/64, B not a multiple of
the query tile, nb not a multiple of the row tile or the block) and extreme codes."""
import numpy as np
import pytest

import drfast
from drfast import _C
from drfast.search import first_pass as TS

ALIGN = _C.first_pass_align
BLOCK = _C.first_pass_block_rows
LEVELS = drfast.search.supported_simd_levels()


@pytest.fixture(params=LEVELS)
def level(request):
    old = drfast.simd_level()
    drfast.set_simd_level(request.param)
    yield request.param
    drfast.set_simd_level(old)


def int8_first_pass(rng, B, N, d, extreme):
    """Random int8 first-pass arrays in the kernels' layout (rows zero-padded to dp columns)."""
    dp = -(-d // ALIGN) * ALIGN
    codes = np.zeros((N, dp), np.int8)
    qcodes = rng.integers(0, 256, (B, dp), dtype=np.uint8)  # padding of the queries: anything
    if extreme:  # the ends of both ranges, where a saturating int16 path would break
        codes[:, :d] = rng.choice(np.array([-128, 127, -127, 0], np.int8), (N, d))
        qcodes[:, :d] = rng.choice(np.array([0, 255, 1, 254], np.uint8), (B, d))
    else:
        codes[:, :d] = rng.integers(-128, 128, (N, d), dtype=np.int8)
    # magnitudes from 1 down to where alpha * e and beta * m meet eta = 2^-100 and the order of the
    # delta formula's additions shows in the rounding
    stats = (rng.random((3, N)) * np.exp2(rng.choice([-60, -52, -3, 0, 10], (3, N)))).astype(np.float32)
    qparams = (rng.random((B, 3)) * np.exp2(rng.choice([-48, -40, 0, 3], (B, 3)))).astype(np.float32)
    sums = codes.sum(1, dtype=np.int64).astype(np.int32)
    return dict(kind=0, qcodes=qcodes, qparams=qparams, codes=codes, stats=stats, sums=sums)


def reference_bounds(fp, r0, nb):
    """The bound arithmetic in float32, in the kernels' order (numpy float32 rounds as the CPU does)."""
    rows = slice(r0, r0 + nb)
    raw = fp["qcodes"].astype(np.int64) @ fp["codes"][rows].astype(np.int64).T
    i = raw - 128 * fp["sums"][rows].astype(np.int64)
    assert np.abs(i).max(initial=0) < 2**31
    a, e, m = (s[rows] for s in fp["stats"])
    c, al, be = (fp["qparams"][:, j : j + 1] for j in range(3))
    est = (i.astype(np.float32) * a) * c
    delta = ((al * e + be * m) + np.float32(TS.ETA)) * np.float32(TS.SLACK)
    return est - delta, est + delta


@pytest.mark.parametrize("B,N,d,r0,nb", [
    (1, 1, 1, 0, 1),            # one row, one column
    (5, 250, 100, 0, 250),      # B off the 4- and 8-query tiles, nb past one block and off the 3-row tile
    (9, 500, 768, 7, 487),      # a block boundary away from the start
    (4, 300, 64, 3, 241),
    (7, 10, 1000, 2, 8),        # few rows, d off 16 and 64
    (3, 50, 17, 49, 1),         # B under every tile, a single row
    (6, 20, 33, 5, 0),          # no rows
])
@pytest.mark.parametrize("extreme", [False, True])
def test_int8_bounds_bit_identical_to_the_reference(level, rng, B, N, d, r0, nb, extreme):
    fp = int8_first_pass(rng, B, N, d, extreme)
    lo, hi = _C.first_pass_bounds(fp, d, r0, nb)
    ref_lo, ref_hi = reference_bounds(fp, r0, nb)
    assert lo.shape == (B, nb) and hi.shape == (B, nb)
    np.testing.assert_array_equal(lo, ref_lo)
    np.testing.assert_array_equal(hi, ref_hi)


def test_int8_delta_in_the_kernels_order(level, rng):
    """alpha * e and beta * m near eta = 2^-100 and zero rows (est = 0, lo = -delta): another order
    of the delta formula's additions, or a fused multiply-add, changes ~10-30% of these bounds."""
    B, N, d = 8, 480, 100
    fp = int8_first_pass(rng, B, N, d, extreme=False)
    fp["codes"][::2] = 0
    fp["sums"] = fp["codes"].sum(1, dtype=np.int64).astype(np.int32)
    fp["stats"][1:] = rng.random((2, N)) * np.float32(2.0**-52)
    fp["qparams"][:, 1:] = rng.random((B, 2)) * np.float32(2.0**-48)
    lo, hi = _C.first_pass_bounds(fp, d, 0, N)
    ref_lo, ref_hi = reference_bounds(fp, 0, N)
    np.testing.assert_array_equal(lo, ref_lo)
    np.testing.assert_array_equal(hi, ref_hi)


def test_int8_bounds_of_the_largest_sums(level):
    """Every product at its extreme (255 x -128) over 16384 columns: raw sums near -2^29 in int32."""
    d = 16384
    fp = int8_first_pass(np.random.default_rng(0), 5, 7, d, extreme=False)
    fp["codes"][:] = -128
    fp["codes"][1] = 127
    fp["qcodes"][:] = 255
    fp["sums"] = fp["codes"].sum(1, dtype=np.int64).astype(np.int32)
    lo, hi = _C.first_pass_bounds(fp, d, 0, 7)
    ref_lo, ref_hi = reference_bounds(fp, 0, 7)
    np.testing.assert_array_equal(lo, ref_lo)
    np.testing.assert_array_equal(hi, ref_hi)


@pytest.mark.parametrize("n,m,length", [(1, 1, 64), (30, 13, 128), (40, 8, 768), (9, 3, 64), (5, 0, 64),
                                        (300, 77, 1024)])
def test_refine_dots_are_exact(level, rng, n, m, length):
    u1, u2 = (rng.choice(np.array([0, 255, 128, 3], np.uint8), length) for _ in range(2))
    s1, s2 = (rng.integers(-128, 128, (n, length), dtype=np.int8) for _ in range(2))
    s1[0], s2[0] = -128, 127
    idx = rng.integers(0, n, m).astype(np.int32)
    idx[: min(m, 2)] = 0  # repeated rows
    d12, d21 = _C.first_pass_refine_dots(u1, u2, s1, s2, idx)
    np.testing.assert_array_equal(d12, s1[idx].astype(np.int64) @ u1.astype(np.int64))
    np.testing.assert_array_equal(d21, s2[idx].astype(np.int64) @ u2.astype(np.int64))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 17, 240])
def test_select_band_and_count_above(level, rng, n):
    values = np.array([-1.0, 0.0, 0.5, 1.0, 2.0], np.float32)  # ties with x on both ends of the band
    lo = rng.choice(values, n)
    hi = lo + rng.choice(values[1:], n)
    for x in (0.5, 1.0, -3.0, 5.0):
        idx, above = _C.first_pass_band(lo, hi, np.float32(x))
        np.testing.assert_array_equal(idx, np.flatnonzero((lo <= x) & (hi >= x)).astype(np.int32))
        assert above == int((lo > x).sum())


def test_the_table_follows_the_simd_level(level):
    """Every level but generic has a native int8 table (AVX2, or VNNI at avx512 where the CPU has it); only
    VNNI's is fast enough for first_pass="auto"."""
    table, kinds = _C.first_pass_kernels(), _C.fast_first_pass_kinds()
    if level == "generic":
        assert (table, kinds) == ("generic", "")
    elif table == "avx2":
        assert kinds == ""
    else:
        assert level == "avx512" and table.startswith("avx512") and "int8" in kinds.split(",")


def test_hooks_reject_bad_arguments():
    fp = int8_first_pass(np.random.default_rng(0), 2, 5, 10, extreme=False)
    with pytest.raises(ValueError, match="r0, nb"):
        _C.first_pass_bounds(fp, 10, 3, 5)
    u = np.zeros(64, np.uint8)
    s = np.zeros((2, 64), np.int8)
    with pytest.raises(ValueError, match="idx"):
        _C.first_pass_refine_dots(u, u, s, s, np.array([2], np.int32))
    with pytest.raises(ValueError, match="first_pass_align"):
        _C.first_pass_refine_dots(u[:32], u[:32], s[:, :32].copy(), s[:, :32].copy(), np.array([0], np.int32))
