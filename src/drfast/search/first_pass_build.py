"""Building the first-pass copy of an index's rows (drfast.search.first_pass): one numba kernel,
parallel over rows, that quantises each row and computes its bound statistics in a single visit.

The arithmetic is that of the float64 torch formulation in first_pass's docstring (and in
tests/reference.py, the reference it is tested against): codes from float32 arithmetic, x^ = a * code
exact in float64, norms as float64 sums inflated by (d + 64) 2^-52 and rounded up to float32. Only
the order of the float64 sums differs, which the inflation covers. Compiled on first use and cached
on disk by numba.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_INF32 = np.float32(np.inf)
_F127 = np.float32(127.0)
_BF16_FLUSH = 2.0 ** -126


@njit(cache=True, inline="always")
def _up32(v, inflate):
    """A float64 norm inflated by `inflate`, rounded up to float32."""
    v = v * inflate
    f = np.float32(v)
    if np.float64(f) < v:
        f = np.nextafter(f, _INF32)
    return f


@njit(cache=True, inline="always")
def _round_half_even(c):
    r = math.floor(c)
    frac = c - r
    if frac > 0.5 or (frac == 0.5 and r % 2.0 == 1.0):
        r += 1.0
    return min(max(r, -127.0), 127.0)


@njit(cache=True, inline="always")
def _int8_row(x32, d, codes_out, xh):
    """Per-row scale a = max|x| / 127 (float32), codes round(x / a) in [-127, 127], xh = a * code
    (exact in float64). Returns (a, sum of codes)."""
    amax = np.float32(0.0)
    for j in range(d):
        v = abs(x32[j])
        if v > amax:
            amax = v
    a = np.float32(amax / _F127)
    total = 0
    for j in range(d):
        code = _round_half_even(np.float64(np.float32(x32[j] / a))) if a > 0 else 0.0
        codes_out[j] = np.int8(code)
        total += np.int32(code)
        xh[j] = np.float64(a) * code
    return a, total


@njit(parallel=True, cache=True)
def _build_int8(x, g, inflate, refine, codes, stats, sums, res_codes, res_stats, res_sums, xn_out):
    n, d = x.shape
    for i in prange(n):
        row = x[i]
        xh = np.empty(d, np.float64)
        a, total = _int8_row(row, d, codes[i], xh)
        sums[i] = total
        s_x = 0.0
        s_diff = 0.0
        s_xh = 0.0
        for j in range(d):
            v = np.float64(row[j])
            s_x += v * v
            s_diff += (v - xh[j]) ** 2
            s_xh += xh[j] * xh[j]
        xn = math.sqrt(s_x)
        xn_out[i] = xn
        stats[0, i] = a
        stats[1, i] = _up32(math.sqrt(s_diff) + g * xn, inflate)
        stats[2, i] = _up32(math.sqrt(s_xh), inflate)
        if refine:
            r32 = np.empty(d, np.float32)
            for j in range(d):
                r32[j] = np.float32(np.float64(row[j]) - xh[j])
            rh = np.empty(d, np.float64)
            a2, total2 = _int8_row(r32, d, res_codes[i], rh)
            res_sums[i] = total2
            s_diff2 = 0.0
            s_xh2 = 0.0
            s_rh = 0.0
            for j in range(d):
                xh2 = xh[j] + rh[j]
                s_diff2 += (np.float64(row[j]) - xh2) ** 2
                s_xh2 += xh2 * xh2
                s_rh += rh[j] * rh[j]
            res_stats[0, i] = a2
            res_stats[1, i] = _up32(math.sqrt(s_diff2) + g * xn, inflate)
            res_stats[2, i] = _up32(math.sqrt(s_xh2), inflate)
            res_stats[3, i] = _up32(math.sqrt(s_rh), inflate)


@njit(parallel=True, cache=True)
def _build_bf16(x, g, inflate, codes, stats, xn_out):
    """bfloat16 rounding to nearest even (torch's), values below 2^-126 flushed to zero."""
    n, d = x.shape
    bits = x.view(np.uint32)
    for i in prange(n):
        s_x = 0.0
        s_diff = 0.0
        s_xh = 0.0
        out = np.empty(1, np.uint32)
        for j in range(d):
            u = bits[i, j]
            hi = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            out[0] = hi << np.uint32(16)
            xb = np.float64(out.view(np.float32)[0])
            if abs(xb) < _BF16_FLUSH:
                xb = 0.0
                hi = np.uint32(0)
            codes[i, j] = np.uint16(hi)
            v = np.float64(x[i, j])
            s_x += v * v
            s_diff += (v - xb) ** 2
            s_xh += xb * xb
        xn = math.sqrt(s_x)
        xn_out[i] = xn
        stats[0, i] = 1.0
        stats[1, i] = _up32(math.sqrt(s_diff) + g * xn, inflate)
        stats[2, i] = _up32(math.sqrt(s_xh), inflate)


def build_rows(x32: np.ndarray, kind: str, g: float, refine: bool, codes, stats, sums, res_codes, res_stats,
               res_sums) -> float:
    """Fills rows [0, n) of the output views from the float32 rows `x32` ([n, d], C-contiguous);
    returns the largest row norm ||x|| (float64)."""
    n, d = x32.shape
    inflate = 1.0 + (d + 64) * 2.0 ** -52
    xn = np.empty(n, np.float64)
    if kind == "int8":
        if not refine:  # never touched; the first pass's own arrays keep one compiled signature
            res_codes, res_stats, res_sums = codes, stats, sums
        _build_int8(x32, g, inflate, refine, codes, stats, sums, res_codes, res_stats, res_sums, xn)
    else:
        _build_bf16(x32, g, inflate, codes, stats, xn)
    return float(xn.max()) if n else 0.0
