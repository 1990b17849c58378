"""The first pass of the exact two-stage search (search.two_stage): the low-precision copy of an
index's rows (FirstPassData, built by build_first_pass with the numba kernels of
search.first_pass_build), the queries' codes (prepare_queries), and the proven bounds on every
(query, row) score that the native kernel (csrc/cpu/two_stage.cpp) and the torch path
(TorchFirstPass) compute from them.

Kinds ("first_pass"): "int8" (per-row scale; AVX-512 VNNI, else AVX2), "bf16" (AVX512_BF16), "auto" (the best
kind this CPU runs fast, else None = the exact scan only; int8 on a GPU first_pass_device; an int8
choice drops its refinement codes, "int8-lean", when they would not fit in memory beside the rows'
page cache: resolve_auto_spec). `parse_first_pass` is the spec helper for CLI flags
(``--first-pass auto|int8|int8-lean|bf16|none``).

The bound
---------
Notation: q a query, x a row (the stored float32/float16 values), s = fl(q . x) the score the exact
scan computes, t = q . x the real inner product, u = 2^-24, gamma(n) = n u / (1 - n u).

1. Exact-score rounding. Any fp32 evaluation of a d-term dot product (any order, fused or not) has
   |s - t| <= gamma(d) sum |q_i x_i| <= gamma(d + 8) ||q|| ||x||  (Cauchy-Schwarz). The native scan's
   16-lane FMA chains need only gamma(d / 16 + 4); the torch path's matmul/sum any order.
2. Quantization. With approximations q^ of q and x^ of x,
   q . x - q^ . x^ = q . (x - x^) + (q - q^) . x^,  so  |t - q^ . x^| <= ||q|| ||x - x^|| + ||q - q^|| ||x^||.
   int8: x^ = a_r x8 (a_r = max|x| / 127 as a float32, x8 in [-127, 127]), q^ = c_b q8 likewise.
   bf16: x^, q^ the bfloat16 roundings (values below 2^-126 flushed to 0, so no denormal inputs).
3. The estimate. int8: I = q8 . x8 is exact in int32 (d <= 65536); est = fl(fl(fl(I) a_r) c_b) is
   within gamma(3) |q^ . x^| <= gamma(3) ||q^|| ||x^|| of q^ . x^. bf16: products of two bf16 are exact in
   fp32, the fp32 sum (any order) is within gamma(d + 64) ||q^|| ||x^||.
4. Per row we store (rounded up to float32, after float64 sums inflated by (d + 64) 2^-52)
       e_r = ||x - x^|| + gamma(d + 8) ||x||,   m_r = ||x^||,
   per query (computed at search time the same way)
       alpha_b = ||q||,   beta_b = ||q - q^|| + g ||q^||,   g = 16 u (int8) or gamma(dp + 64) + 16 u (bf16),
   and the kernel computes delta = fl(fl(fl(alpha e + beta m) + eta) * (1 + 2^-16)), lo = fl(est - delta),
   hi = fl(est + delta). The four roundings of delta lose at most a factor (1 - u)^4 < 1 / (1 + 2^-16),
   and forming est -+ delta errs by at most u (|est| + delta); g's extra 12 u ||q^|| ||x^|| >= u |est| + the
   estimate's own rounding pays for the latter. eta = 2^-100 absorbs underflow (at most 2d + 64
   operations, each off by at most 2^-126 absolutely, with bf16's flush-to-zero). Hence
       lo <= s <= hi   for every (query, row), with s the exact scan's own score.
   Overflow is excluded up front: when max alpha * max(||x||, m) >= 2^100 the search runs the exact scan.
5. The second, tighter bound (int8 "refine", used only on undecided rows before any exact
   recomputation): residual codes r8 of x - x^ (scale a2) and q8' of q - q^ (scale c2) give
   x^2 = x^ + a2 r8, q^2 = q^ + c2 q8', and
       q^2 . x^2 = c a I11 + c a2 I12 + c2 a I21 + c2 a2 I22   (I.. exact int32 dot products).
   The estimate E2 drops the last term (|c2 a2 I22| <= ||c2 q8'|| ||a2 r8|| = w2 n2) and
       |s - E2| <= alpha e2 + beta2 m2 + w2 n2,   e2 = ||x - x^2|| + gamma(d + 8) ||x||, m2 = ||x^2||,
   beta2 = ||q - q^2||; E2 and the bound are evaluated in float64 with a relative slack of 2^-40 on
   (alpha + beta1 + w2)(m1 + n2) >= the sum of the three terms' magnitudes. It is ~100x tighter
   than the first bound, so a positive deep in the ranking (where the first bound leaves a band of
   many rows undecided) needs few exact recomputations.

Choosing a kind: int8 + refinement costs 2 bytes per element beyond the exact rows (+50% of fp32
storage, +100% of fp16) and is the fastest kind on AVX-512 VNNI and on AVX2; refine=False halves that and pays
with more exact recomputations around deep positives; bf16 costs 2 bytes per element.
"""
from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from drfast import _C
from drfast.common.arrays import as_tensor, to_numpy
from drfast.common.errors import UsageError
from drfast.common.memory import detect_gpu_memory, detect_host_memory
from drfast.search.first_pass_build import build_rows
from drfast.search.native import FIRST_PASS_ALIGN

KINDS = ("int8", "bf16")
CHOICES = ("auto", "int8", "int8-lean", "bf16", "none")  # int8-lean: int8 without the refinement codes
U = 2.0 ** -24
SLACK = float(np.float32(1.0 + 2.0 ** -16))
ETA = float(np.float32(2.0 ** -100))
ALIGN = FIRST_PASS_ALIGN  # bytes each code row is padded to a multiple of (kFpAlign)
MAX_INT8_DIM = 65536
OVERFLOW_LIMIT = 2.0 ** 100
BUILD_CHUNK = 16384  # rows per float32 conversion (50 MB at d = 768)


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


def fast_kinds() -> tuple:
    """First-pass kinds with a fast native kernel on this CPU at the active SIMD level."""
    s = _C.fast_first_pass_kinds()
    return tuple(s.split(",")) if s else ()


def resolve_auto() -> Optional[str]:
    """"auto": int8 with AVX-512 VNNI (4x the fp32 multiply-adds per instruction, a quarter of the
    bytes), else bf16 with AVX512_BF16, else None: the exact scan. AVX2 has an int8 table (vpmaddwd on
    codes widened to int16), but it does as many multiply-adds per instruction as the fp32 scan's FMAs:
    on a Zen 3 the two-stage search took 0.65x the exact scan's time at ADORE's rank depth and 0.9-1.3x
    at full depth (1M rows), so there it is an explicit choice (first_pass="int8"), not auto's."""
    kinds = fast_kinds()
    return "int8" if "int8" in kinds else "bf16" if "bf16" in kinds else None


def parse_first_pass(spec: Any) -> Optional[str]:
    """None / "none" -> None, "int8" / "bf16" -> itself, "int8-lean" -> "int8" (see
    first_pass_refines), "auto" -> resolve_auto(). For CLI flags (``--first-pass
    auto|int8|int8-lean|bf16|none``) and FlatIndex(first_pass=...)."""
    if spec is None:
        return None
    if not isinstance(spec, str) or spec.strip().lower() not in CHOICES:
        raise UsageError("first_pass", f"expected one of {CHOICES} or None, got {spec!r}")
    spec = spec.strip().lower()
    if spec == "none":
        return None
    return resolve_auto() if spec == "auto" else "int8" if spec == "int8-lean" else spec


def first_pass_refines(spec: Any) -> bool:
    """False for "int8-lean": the int8 copy without its refinement (residual) codes, 1 byte per
    dimension per row instead of 2, paid for with more exact recomputations around deep positives;
    the better choice when RAM cannot hold the full copy beside the exact rows' page cache."""
    return not (isinstance(spec, str) and spec.strip().lower() == "int8-lean")


AUTO_MARGIN = 0.05  # of the memory "auto" sizes against: what it leaves free (the memory plan's SAFETY_MARGIN)


def first_pass_bytes(docs: int, dim: int, kind: str, refine: bool = True) -> int:
    """Bytes of the FirstPassData of `docs` rows: int8 codes N x dp, stats 3N float32, sums N int32
    (+ with refine: residual codes N x dp int8, 4N float32, N int32); bf16: N x dp x 2 + 3N float32
    (dp = padded_dim(d, kind)). The memory plan's sizes; tests compare them with built copies."""
    dp = padded_dim(dim, kind)
    if kind == "int8":
        return docs * (dp + 12 + 4) + (docs * (dp + 16 + 4) if refine else 0)
    return docs * (dp * 2 + 12)


def resolve_auto_spec(docs: int, dim: int, rows_bytes: int = 0, device: Any = None,
                      memory: Optional[int] = None) -> Optional[str]:
    """What first_pass="auto" means for `docs` x `dim` rows whose first pass runs on `device`, as a
    spec ("int8", "int8-lean", "bf16" or None). On the CPU (`device` None or a CPU): the kind this CPU
    runs fast (resolve_auto); on a CUDA device: "int8" (torch._int_mm). An int8 copy keeps its
    refinement codes only when they fit: on the CPU, the rows' page cache `rows_bytes` (memory-mapped
    rows: the exact rescoring reads them at random, and rows pushed out of the cache are read from disk
    at every step) plus the whole copy within `memory` (default: the host's available RAM) less
    AUTO_MARGIN; on a GPU, the whole copy within `memory` (default: the device's free memory) less
    AUTO_MARGIN. Otherwise "int8-lean" (half the copy)."""
    dev = torch.device("cpu" if device is None else device)
    on_gpu = dev.type == "cuda"
    kind = "int8" if on_gpu else resolve_auto()
    if kind != "int8":
        return kind
    if memory is None:
        memory = detect_gpu_memory(dev) if on_gpu else detect_host_memory()
    need = first_pass_bytes(docs, dim, "int8", True) + (0 if on_gpu else rows_bytes)
    return "int8" if need <= memory * (1 - AUTO_MARGIN) else "int8-lean"


def file_backed(a: Any) -> bool:
    """Whether the numpy array `a` (or an array it views) is a memory-mapped file."""
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap):
            return True
        a = a.base
    return isinstance(a, mmap.mmap)


def resolve_first_pass(spec: Any, emb: Any, device: Any = None) -> Tuple[Optional[str], bool]:
    """(kind, refine) of FlatIndex(emb, first_pass=spec, first_pass_device=device): as
    parse_first_pass / first_pass_refines, "auto" by resolve_auto_spec, the rows counted in the page
    cache when `emb` is a memory-mapped file (rows already in RAM are not available memory anyway)."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        N, d = emb.shape
        rows_bytes = int(emb.nbytes) if file_backed(emb) else 0
        spec = resolve_auto_spec(N, d, rows_bytes, device)
    return parse_first_pass(spec), first_pass_refines(spec)


def padded_dim(d: int, kind: str) -> int:
    esize = 1 if kind == "int8" else 2
    return -(-d * esize // ALIGN) * ALIGN // esize


def up32(v: torch.Tensor, d: int) -> torch.Tensor:
    """float64 values (norms from float64 sums) inflated by (d + 64) 2^-52, rounded up to float32."""
    v = v * (1.0 + (d + 64) * 2.0 ** -52)
    f = v.float()
    return torch.where(f.double() < v, torch.nextafter(f, torch.full_like(f, math.inf)), f)


def quantize_int8(x: torch.Tensor):
    """float64 [n, d] -> (float32 scale [n], float64 codes in [-127, 127] [n, d], float64 x^ = scale * codes).
    The codes may come from any rounding (float32 here, for speed): the bounds use x^ as it is."""
    x32 = x.float()
    a = x32.abs().amax(1) / 127
    codes = torch.round(x32 / torch.where(a > 0, a, 1.0)[:, None]).clamp_(-127, 127)
    zero = a == 0
    if bool(zero.any()):
        codes[zero] = 0
    codes = codes.double()
    return a, codes, a.double()[:, None] * codes  # a * code: 24 + 7 bits, exact in float64


def quantize_bf16(x: torch.Tensor):
    """float64 [n, d] -> (bf16 tensor [n, d], float64 x^): round to nearest, values below 2^-126 flushed."""
    xb = x.float().bfloat16()
    xb[xb.abs() < 2.0 ** -126] = 0
    return xb, xb.double()


def _rows_float32(emb: Any, rows: slice) -> np.ndarray:
    """Rows of a numpy array, memmap or torch tensor (any device) as float32 numpy (exact from fp16)."""
    if isinstance(emb, torch.Tensor):
        return emb[rows].to("cpu", torch.float32).numpy()
    return np.asarray(emb[rows], dtype=np.float32)


def row_norms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=1)


@dataclass
class FirstPassData:
    """The first-pass copy of an index's rows (numpy arrays on the CPU, torch tensors on a device).

    codes   [N, dp] int8 (kind int8) or uint16 bf16 bits; dp = d padded to 64 bytes
    stats   [3, N] float32: a (int8 scale; 1 for bf16), e = ||x - x^|| + gamma ||x||, m = ||x^|| (rounded up)
    sums    [N] int32: sum of each row's int8 codes ([0] for bf16)
    res_codes, res_stats [4, N] (a2, e2, m2, n2), res_sums: the int8 refinement (None without)
    max_norm: max over rows of ||x||, m, m2 (the overflow guard)
    """

    kind: str
    dim: int
    codes: Any
    stats: Any
    sums: Any
    res_codes: Any = None
    res_stats: Any = None
    res_sums: Any = None
    max_norm: float = 0.0

    @property
    def refine(self) -> bool:
        return self.res_codes is not None

    @property
    def nbytes(self) -> int:
        """Extra memory of the first-pass copy (bytes)."""
        return int(sum(a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size()
                       for a in self.arrays().values()))

    def arrays(self) -> Dict[str, Any]:
        out = {"fp_codes": self.codes, "fp_stats": self.stats, "fp_sums": self.sums}
        if self.refine:
            out.update(fp_res_codes=self.res_codes, fp_res_stats=self.res_stats, fp_res_sums=self.res_sums)
        return out

    def meta(self) -> dict:
        return {"kind": self.kind, "refine": self.refine, "max_norm": self.max_norm}

    def check_rows(self, shape: tuple) -> None:
        """Refuses a copy built for other rows than an [N, d] matrix of `shape` (shapes only)."""
        N, d = shape
        dp = padded_dim(d, self.kind) if self.kind in KINDS else -1
        shapes = [a.shape for a in self.arrays().values()]
        want = [(N, dp), (3, N), (N if self.kind == "int8" else 0,)]
        if self.refine:
            want += [(N, dp), (4, N), (N,)]
        if self.dim != d or [tuple(s) for s in shapes] != want:
            raise UsageError("first_pass", f"a {self.kind} copy with arrays of shapes {shapes} (dim {self.dim}) does "
                             f"not belong to {N} rows of dimension {d}")

    @classmethod
    def from_arrays(cls, meta: dict, dim: int, arrays: Dict[str, Any]) -> "FirstPassData":
        return cls(kind=meta["kind"], dim=dim, codes=arrays["fp_codes"], stats=arrays["fp_stats"],
                   sums=arrays["fp_sums"], res_codes=arrays.get("fp_res_codes"),
                   res_stats=arrays.get("fp_res_stats"), res_sums=arrays.get("fp_res_sums"),
                   max_norm=float(meta["max_norm"]))

    def to(self, device: torch.device) -> "FirstPassData":
        """On the CPU as numpy arrays (the native kernel's), elsewhere as torch tensors."""
        def move(a):
            if a is None:
                return None
            if device.type == "cpu":
                return to_numpy(a)
            return as_tensor(a).to(device)
        return FirstPassData(self.kind, self.dim, *(move(a) for a in (self.codes, self.stats, self.sums,
                                                                       self.res_codes, self.res_stats,
                                                                       self.res_sums)), self.max_norm)

    def placed_on(self, device: Any) -> "FirstPassData":
        """As torch tensors on `device`, the CPU included: the copy the placed two-stage search scans
        with torch ops there while the exact rows stay on the host (FlatIndex(first_pass_device=...))."""
        device = torch.device(device)
        return FirstPassData(self.kind, self.dim, *(None if a is None else as_tensor(a).to(device)
                                                    for a in (self.codes, self.stats, self.sums, self.res_codes,
                                                              self.res_stats, self.res_sums)), self.max_norm)


def build_first_pass(emb: Any, kind: str, refine: bool = True, chunk_rows: int = BUILD_CHUNK,
                     alloc: Optional[Callable[[str, tuple, Any], Any]] = None) -> FirstPassData:
    """The first-pass copy of a validated [N, d] float32/float16 matrix (numpy, memmap or tensor),
    built in chunks of rows by a numba kernel (search.first_pass_build). refine: also the int8 residual
    codes (second bound). alloc(name, shape, dtype) gives each output array (default: zeroed memory;
    e.g. numpy.lib.format.open_memmap files, to build a copy larger than memory), named as in
    FirstPassData.arrays(); it must return zeros (the code rows' padding is never written)."""
    if kind not in KINDS:
        raise UsageError("first_pass", f"expected one of {KINDS}, got {kind!r}")
    N, d = emb.shape
    if kind == "int8" and d > MAX_INT8_DIM:
        raise UsageError("first_pass", f"int8 supports d <= {MAX_INT8_DIM} (exact int32 sums), got d = {d}; use 'bf16'")
    refine = refine and kind == "int8"
    dp = padded_dim(d, kind)
    g = gamma(d + 8)
    alloc = alloc or (lambda name, shape, dtype: np.zeros(shape, dtype))
    codes = alloc("fp_codes", (N, dp), np.int8 if kind == "int8" else np.uint16)
    stats = alloc("fp_stats", (3, N), np.float32)
    sums = alloc("fp_sums", (N if kind == "int8" else 0,), np.int32)
    res_codes = alloc("fp_res_codes", (N, dp), np.int8) if refine else None
    res_stats = alloc("fp_res_stats", (4, N), np.float32) if refine else None
    res_sums = alloc("fp_res_sums", (N,), np.int32) if refine else None
    max_norm = 0.0
    for i in range(0, N, chunk_rows):
        j = slice(i, min(N, i + chunk_rows))
        x32 = np.ascontiguousarray(_rows_float32(emb, j))
        xn = build_rows(x32, kind, g, refine, codes[j], stats[:, j], sums[j] if kind == "int8" else None,
                        res_codes[j] if refine else None, res_stats[:, j] if refine else None,
                        res_sums[j] if refine else None)
        norms = [xn, stats[2, j].max(initial=0.0)] + ([res_stats[2, j].max(initial=0.0)] if refine else [])
        max_norm = max(max_norm, *(float(n) for n in norms))
    return FirstPassData(kind, d, codes, stats, sums, res_codes, res_stats, res_sums, max_norm)


@dataclass
class QueryCodes:
    """A batch of queries prepared for the first pass (numpy, float32 parameters rounded up)."""
    codes: np.ndarray            # [B, dp] uint8 (q8 + 128) or uint16 bf16 bits
    params: np.ndarray           # [B, 3] float32: c, alpha, beta
    signed: Optional[np.ndarray] = None   # [B, dp] int8 q8 (the torch path's _int_mm operand)
    res_codes: Optional[np.ndarray] = None  # [B, dp] uint8 (q8' + 128)
    res_signed: Optional[np.ndarray] = None
    res_params: Optional[np.ndarray] = None  # [B, 4] float32: c2, beta1, beta2, w2


def prepare_queries(queries: Any, data: FirstPassData) -> QueryCodes:
    q = as_tensor(queries).to("cpu", torch.float64)
    B, d = q.shape
    dp = padded_dim(d, data.kind)
    alpha = up32(row_norms(q), d)
    if data.kind == "int8":
        c, q8, qh = quantize_int8(q)
        beta = up32(row_norms(q - qh) + 16 * U * row_norms(qh), d)
        signed = np.zeros((B, dp), np.int8)
        signed[:, :d] = q8.to(torch.int8).numpy()
        out = QueryCodes((signed.astype(np.int16) + 128).astype(np.uint8),
                         torch.stack([c, alpha, beta], 1).numpy(), signed)
        if data.refine:
            c2, r8, rh = quantize_int8(q - qh)
            res_signed = np.zeros((B, dp), np.int8)
            res_signed[:, :d] = r8.to(torch.int8).numpy()
            out.res_signed = res_signed
            out.res_codes = (res_signed.astype(np.int16) + 128).astype(np.uint8)
            out.res_params = torch.stack([c2, beta, up32(row_norms(q - qh - rh), d), up32(row_norms(rh), d)], 1).numpy()
        return out
    qb, qh = quantize_bf16(q)
    g = gamma(dp + 64) + 16 * U
    beta = up32(row_norms(q - qh) + g * row_norms(qh), d)
    codes = np.zeros((B, dp), np.uint16)
    codes[:, :d] = qb.view(torch.int16).numpy().view(np.uint16)
    return QueryCodes(codes, torch.stack([torch.ones(B), alpha, beta], 1).numpy())


def overflow_risk(qc: QueryCodes, data: FirstPassData) -> bool:
    """True when the bounds' float32 arithmetic could overflow (then the exact scan runs instead)."""
    qmax = float(qc.params[:, 1:].max())
    if qc.res_params is not None:
        qmax = max(qmax, float(qc.res_params[:, 1:].max()))
    big = max(qmax, 1.0) * max(data.max_norm, 1.0)
    return not math.isfinite(big) or big >= OVERFLOW_LIMIT



def exact_dtype(dp: int) -> torch.dtype:
    """The float type in which any sum of dp products of two int8 codes in [-127, 127] is exact
    (every partial sum an integer of magnitude < 2^24 for float32, < 2^53 for float64)."""
    return torch.float32 if dp * 127 * 127 < 2**24 else torch.float64


class TorchFirstPass:
    """The first and second bounds of chunks of rows as torch ops on `device` (the torch two-stage
    path): int8 products by torch._int_mm on CUDA, elsewhere (CPU: torch._int_mm is a slow reference
    loop there) by float matmuls of the codes, exact as the int32 sums are (`exact_dtype`); bf16
    products as float32 products of bf16 values (the bound's step 3)."""

    def __init__(self, data: FirstPassData, qc: QueryCodes, device: torch.device):
        t = lambda a: None if a is None else as_tensor(a).to(device)
        self.data, self.device = data, device
        self.int8 = data.kind == "int8"
        self.codes, self.stats, self.res_codes, self.res_stats = t(data.codes), t(data.stats), t(data.res_codes), t(data.res_stats)
        p = t(qc.params)
        self.c, self.alpha, self.beta = p[:, 0], p[:, 1], p[:, 2]
        self.B = p.shape[0]
        if self.int8:
            self.q8 = t(qc.signed)
            # torch._int_mm wants more than 16 rows on CUDA and multiples of 8: pad the batch.
            self.q8_mm = torch.zeros(max(self.B, 17) + (-max(self.B, 17)) % 8, self.q8.shape[1], dtype=torch.int8,
                                     device=device)
            self.q8_mm[: self.B] = self.q8
            # Products of codes in [-127, 127] summed over dp terms: exact in this float type.
            self.exact = exact_dtype(self.q8.shape[1])
            self.q8_float = self.q8.to(self.exact)
            if data.refine:
                self.q8r = t(qc.res_signed)
                rp = t(qc.res_params).double()
                self.c2, self.beta1, self.beta2, self.w2 = rp[:, 0], rp[:, 1], rp[:, 2], rp[:, 3]
        else:
            self.qb = t(qc.codes.view(np.int16)).view(torch.bfloat16).float()

    def bounds(self, start: int, end: int):
        """(lo, hi, I) [B, c] for rows [start, end); I the int8 dot products (None for bf16)."""
        codes = self.codes[start:end]
        a, e, m = self.stats[0, start:end], self.stats[1, start:end], self.stats[2, start:end]
        if self.int8:
            n = codes.shape[0]
            pad = (-n) % 8
            x = codes if not pad else torch.cat([codes, codes.new_zeros(pad, codes.shape[1])])
            if self.device.type == "cuda":
                I = torch._int_mm(self.q8_mm, x.T)[: self.B, :n]
            else:  # integer-valued sums below 2^24 (float32) or 2^53 (float64): the same I
                I = self.q8_float @ codes.to(self.exact).T
            est = (I.float() * a[None, :]) * self.c[:, None]
        else:
            I = None
            est = self.qb @ codes.view(torch.bfloat16).float().T
        delta = ((self.alpha[:, None] * e[None, :] + self.beta[:, None] * m[None, :]) + ETA) * SLACK
        return est - delta, est + delta, I

    def int8_products(self, q8: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """q8 [B, dp] @ rows [n, dp]^T of int8 codes, exactly: torch._int_mm on CUDA, else in `exact`."""
        if self.device.type != "cuda":
            return q8.to(self.exact) @ rows.to(self.exact).T
        pad_q, pad_r = max(q8.shape[0], 17) + (-max(q8.shape[0], 17)) % 8, (-rows.shape[0]) % 8
        q = torch.cat([q8, q8.new_zeros(pad_q - q8.shape[0], q8.shape[1])]) if pad_q > q8.shape[0] else q8
        x = torch.cat([rows, rows.new_zeros(pad_r, rows.shape[1])]) if pad_r else rows
        return torch._int_mm(q, x.T)[: q8.shape[0], : rows.shape[0]]

    def residual_products(self, start: int, end: int) -> tuple:
        """(I12, I21) [B, c] for rows [start, end): q8 . r8 and q8' . x8 of every pair, exact (the
        second bound of many pairs of a chunk at once)."""
        return (self.int8_products(self.q8, self.res_codes[start:end]),
                self.int8_products(self.q8r, self.codes[start:end]))

    def refine(self, b: torch.Tensor, r: torch.Tensor, i11: torch.Tensor, i12: Optional[torch.Tensor] = None,
               i21: Optional[torch.Tensor] = None):
        """Second bound (float64 lo2, hi2) of pairs (b, r), as in csrc/cpu/two_stage.cpp; i12 / i21:
        the pairs' residual products when computed already (residual_products)."""
        if i12 is None:
            x8, r8 = self.codes[r].to(self.exact), self.res_codes[r].to(self.exact)
            i12 = (self.q8_float[b] * r8).sum(1)  # exact (see exact_dtype)
            i21 = (self.q8r[b].to(self.exact) * x8).sum(1)
        i12, i21 = i12.double(), i21.double()
        s = self.stats[:, r].double()
        s2 = self.res_stats[:, r].double()
        c, c2, a, a2 = self.c[b].double(), self.c2[b], s[0], s2[0]
        est = c * a * i11.double() + c * a2 * i12 + c2 * a * i21
        alpha = self.alpha[b].double()
        rel = 2.0 ** -40
        delta = (alpha * s2[1] + self.beta2[b] * s2[2] + self.w2[b] * s2[3]
                 + rel * (alpha + self.beta1[b] + self.w2[b]) * (s[2] + s2[3]) + ETA) * (1 + rel)
        return est - delta, est + delta


