"""Exact search below the fp32 floor: a low-precision first pass with proven error bounds, then
exact rescoring of the rows the bounds cannot decide. Results are bit-identical to the exact scan.

Kinds ("first_pass"): "int8" (per-row scale, AVX-512 VNNI), "bf16" (AVX512_BF16), "auto" (the best
kind this CPU runs fast, else None = the exact scan only). `parse_first_pass` is the spec helper
for CLI flags (``--first-pass auto|int8|bf16|none``).

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

The algorithm (csrc/cpu/two_stage.cpp; the torch path below does the same in chunks)
-------------------------------------------------------------------------------------------
Top-k: per query (and CPU thread) the rows with hi >= L are candidates, L being the k-th largest
lower bound among the candidates so far (k distinct rows score >= L, so a row with hi < L cannot
enter the top-k; every row whose lo exceeds L is itself a candidate, so no other row could raise L).
A candidate is refined (int8) and kept as its interval; at the end the candidates are pruned with
the final L and the survivors, about k, are scored with the exact scan's pair scorer (bit-identical
scores) and ordered as the exact scan orders them. (When ties make the intervals unprunable, a
buffer is scored exactly and compacted like the exact scan's TopKBuffer.)
Ranks: a row with lo > s_p ranks before positive p, one with hi < s_p after it; rows with
lo <= s_p <= hi are refined, then scored exactly and counted with the tie rule by row id.
Memory stays O(B (k + block)) per thread; nothing of size [B, N] is built.

Choosing a kind: int8 + refinement costs 2 bytes per element beyond the exact rows (+50% of fp32
storage, +100% of fp16) and is the fastest on AVX-512 VNNI; refine=False halves that and pays
with more exact recomputations around deep positives; bf16 costs 2 bytes per element.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from drfast import _C
from drfast.common.errors import UsageError
from drfast.search import dispatch as D
from drfast.search.first_pass_build import build_rows
from drfast.search.runtime import fork_safe
from drfast.search.result import SearchResult
from drfast.search.torch_path import DEFAULT_CHUNK, FlatChunkScorer, chunk_topk, ordered_topk, pair_weights

KINDS = ("int8", "bf16")
CHOICES = ("auto", "int8", "int8-lean", "bf16", "none")  # int8-lean: int8 without the refinement codes
U = 2.0 ** -24
SLACK = float(np.float32(1.0 + 2.0 ** -16))
ETA = float(np.float32(2.0 ** -100))
ALIGN = 64  # bytes per padded code row chunk (csrc/cpu/first_pass_kernels.h kFpAlign)
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
    """"auto": int8 with AVX-512 VNNI (4x the fp32 multiply-adds per instruction, a quarter of
    the bytes), else bf16 with AVX512_BF16, else None (the exact scan: AVX2 and generic CPUs run
    the first pass no faster than the fp32 scan they would avoid)."""
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


def padded_dim(d: int, kind: str) -> int:
    esize = 1 if kind == "int8" else 2
    return -(-d * esize // ALIGN) * ALIGN // esize


def _up32(v: torch.Tensor, d: int) -> torch.Tensor:
    """float64 values (norms from float64 sums) inflated by (d + 64) 2^-52, rounded up to float32."""
    v = v * (1.0 + (d + 64) * 2.0 ** -52)
    f = v.float()
    return torch.where(f.double() < v, torch.nextafter(f, torch.full_like(f, math.inf)), f)


def _int8(x: torch.Tensor):
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


def _bf16(x: torch.Tensor):
    """float64 [n, d] -> (bf16 tensor [n, d], float64 x^): round to nearest, values below 2^-126 flushed."""
    xb = x.float().bfloat16()
    xb[xb.abs() < 2.0 ** -126] = 0
    return xb, xb.double()


def _rows_float32(emb: Any, rows: slice) -> np.ndarray:
    """Rows of a numpy array, memmap or torch tensor (any device) as float32 numpy (exact from fp16)."""
    if isinstance(emb, torch.Tensor):
        return emb[rows].to("cpu", torch.float32).numpy()
    return np.asarray(emb[rows], dtype=np.float32)


def _norm(x: torch.Tensor) -> torch.Tensor:
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
                return a.cpu().numpy() if isinstance(a, torch.Tensor) else a
            return D.as_tensor(a).to(device)
        return FirstPassData(self.kind, self.dim, *(move(a) for a in (self.codes, self.stats, self.sums,
                                                                       self.res_codes, self.res_stats,
                                                                       self.res_sums)), self.max_norm)


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
    q = D.as_tensor(queries).to("cpu", torch.float64)
    B, d = q.shape
    dp = padded_dim(d, data.kind)
    alpha = _up32(_norm(q), d)
    if data.kind == "int8":
        c, q8, qh = _int8(q)
        beta = _up32(_norm(q - qh) + 16 * U * _norm(qh), d)
        signed = np.zeros((B, dp), np.int8)
        signed[:, :d] = q8.to(torch.int8).numpy()
        out = QueryCodes((signed.astype(np.int16) + 128).astype(np.uint8),
                         torch.stack([c, alpha, beta], 1).numpy(), signed)
        if data.refine:
            c2, r8, rh = _int8(q - qh)
            res_signed = np.zeros((B, dp), np.int8)
            res_signed[:, :d] = r8.to(torch.int8).numpy()
            out.res_signed = res_signed
            out.res_codes = (res_signed.astype(np.int16) + 128).astype(np.uint8)
            out.res_params = torch.stack([c2, beta, _up32(_norm(q - qh - rh), d), _up32(_norm(rh), d)], 1).numpy()
        return out
    qb, qh = _bf16(q)
    g = gamma(dp + 64) + 16 * U
    beta = _up32(_norm(q - qh) + g * _norm(qh), d)
    codes = np.zeros((B, dp), np.uint16)
    codes[:, :d] = qb.view(torch.int16).numpy().view(np.uint16)
    return QueryCodes(codes, torch.stack([torch.ones(B), alpha, beta], 1).numpy())


@dataclass
class TwoStageStats:
    """The work of one two-stage search (``index.last_search_stats``).

    rows_scanned: rows of the first pass per query (N); refined [B]: rows given the second bound;
    rescored_topk / rescored_ranks [B]: exact recomputations for the top-k / for the positives'
    ranks; pos_refined / pos_rescored [nnz]: the same per positive (its undecided band);
    first_pass_bytes: the extra memory of the first-pass copy.
    """
    kind: str
    rows_scanned: int
    refined: np.ndarray
    rescored_topk: np.ndarray
    rescored_ranks: np.ndarray
    pos_refined: np.ndarray
    pos_rescored: np.ndarray
    first_pass_bytes: int
    extra: dict = field(default_factory=dict)

    @property
    def rescored(self) -> np.ndarray:
        """Exact recomputations per query."""
        return self.rescored_topk + self.rescored_ranks


def overflow_risk(qc: QueryCodes, data: FirstPassData) -> bool:
    """True when the bounds' float32 arithmetic could overflow (then the exact scan runs instead)."""
    qmax = float(qc.params[:, 1:].max())
    if qc.res_params is not None:
        qmax = max(qmax, float(qc.res_params[:, 1:].max()))
    big = max(qmax, 1.0) * max(data.max_norm, 1.0)
    return not math.isfinite(big) or big >= OVERFLOW_LIMIT


def native_two_stage(q: np.ndarray, docs: np.ndarray, data: FirstPassData, qc: QueryCodes, k: int,
                     offsets: np.ndarray, ids: np.ndarray, cutoff: int, outputs: tuple,
                     pos_scores: Optional[np.ndarray] = None) -> TwoStageStats:
    """Runs the native kernel into preallocated outputs; returns its work counters. pos_scores: the
    positives' exact scores given (the sharded search; ids may then lie outside [0, N))."""
    B, nnz = q.shape[0], ids.shape[0]
    work_q = np.zeros((B, 3), np.int64)
    work_p = np.zeros((nnz, 2), np.int64)
    refine = None
    if data.refine:
        refine = (qc.res_codes, qc.res_params, data.res_codes, data.res_stats, data.res_sums)
    _C.two_stage_search(q, docs, k, offsets, ids, cutoff, *outputs, 0 if data.kind == "int8" else 1, qc.codes,
                        qc.params, data.codes, data.stats, data.sums, refine, work_q, work_p, pos_scores)
    return _stats(data, docs.shape[0], work_q, work_p)


def _stats(data: FirstPassData, N: int, work_q: np.ndarray, work_p: np.ndarray) -> TwoStageStats:
    return TwoStageStats(data.kind, N, work_q[:, 0], work_q[:, 1], work_q[:, 2], work_p[:, 0], work_p[:, 1],
                         data.nbytes)


# ---- the torch path: the same two-stage algorithm, chunked, on any device ------------------------

PAIR_BATCH = 16384


class _TorchFirstPass:
    """First-pass bounds of a chunk of rows as torch tensors on the rows' device."""

    def __init__(self, data: FirstPassData, qc: QueryCodes, device: torch.device):
        t = lambda a: None if a is None else D.as_tensor(a).to(device)
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
            I = torch._int_mm(self.q8_mm, x.T)[: self.B, :n]
            est = (I.float() * a[None, :]) * self.c[:, None]
        else:
            I = None
            est = self.qb @ codes.view(torch.bfloat16).float().T
        delta = ((self.alpha[:, None] * e[None, :] + self.beta[:, None] * m[None, :]) + ETA) * SLACK
        return est - delta, est + delta, I

    def refine(self, b: torch.Tensor, r: torch.Tensor, i11: torch.Tensor):
        """Second bound (float64 lo2, hi2) of pairs (b, r), as in csrc/cpu/two_stage.cpp."""
        x8, r8 = self.codes[r].long(), self.res_codes[r].long()
        i12 = (self.q8[b].long() * r8).sum(1).double()
        i21 = (self.q8r[b].long() * x8).sum(1).double()
        s = self.stats.double()
        s2 = self.res_stats.double()
        c, c2, a, a2 = self.c[b].double(), self.c2[b], s[0, r], s2[0, r]
        est = c * a * i11.double() + c * a2 * i12 + c2 * a * i21
        alpha = self.alpha[b].double()
        rel = 2.0 ** -40
        delta = (alpha * s2[1, r] + self.beta2[b] * s2[2, r] + self.w2[b] * s2[3, r]
                 + rel * (alpha + self.beta1[b] + self.w2[b]) * (s[2, r] + s2[3, r]) + ETA) * (1 + rel)
        return est - delta, est + delta


def _batched(fn, n: int, *arrays):
    """fn over pair batches of PAIR_BATCH (bounded memory), results concatenated."""
    if n <= PAIR_BATCH:
        return fn(*arrays)
    parts = [fn(*(a[i : i + PAIR_BATCH] for a in arrays)) for i in range(0, n, PAIR_BATCH)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts))
    return torch.cat(parts)


@torch.no_grad()
def torch_two_stage(scorer, data: FirstPassData, qc: QueryCodes, B: int, k: int, pos_offsets: torch.Tensor,
                    pos_ids: torch.Tensor, cutoff: int, chunk_rows: Optional[int] = None,
                    pos_scores: Optional[torch.Tensor] = None):
    """The two-stage search with torch ops, chunk by chunk (`scorer` a torch_path.FlatChunkScorer:
    exact scores come from its `pairs`, as the torch path's positive scores do; or `pos_scores`, given).
    Returns (SearchResult, TwoStageStats)."""
    N, dev = scorer.ntotal, pos_offsets.device
    chunk = DEFAULT_CHUNK if chunk_rows is None else chunk_rows
    kept = min(k, N)
    fp = _TorchFirstPass(data, qc, dev)
    refine = data.refine
    nnz = pos_ids.shape[0]
    pos_query = torch.repeat_interleave(torch.arange(B, device=dev), pos_offsets.diff())
    pos_scores = scorer.pairs(pos_query, pos_ids) if pos_scores is None else pos_scores.clone()
    counts = torch.zeros(nnz, dtype=torch.int64, device=dev)
    work_q = torch.zeros(B, 3, dtype=torch.int64, device=dev)
    work_p = torch.zeros(nnz, 2, dtype=torch.int64, device=dev)
    best_s = torch.empty(B, 0, device=dev)
    best_r = torch.empty(B, 0, dtype=torch.int64, device=dev)
    ninf = torch.tensor(float("-inf"), device=dev)
    for start in range(0, N, chunk):
        end = min(N, start + chunk)
        lo, hi, I = fp.bounds(start, end)
        c = end - start
        # Top-k: T (k-th exact score so far, earlier rows: strict) and L (k-th lower bound among
        # these rows and the current best: ties may favour this chunk's rows, so >=).
        T = best_s[:, kept - 1] if best_s.shape[1] == kept else ninf.expand(B)
        pool = torch.cat([best_s, lo], 1)
        L = pool.topk(kept, dim=1).values[:, -1] if pool.shape[1] >= kept else ninf.expand(B)
        cand = (hi > T[:, None]) & (hi >= L[:, None])
        bi, ci = cand.nonzero(as_tuple=True)
        if refine and bi.numel():
            work_q[:, 0] += torch.bincount(bi, minlength=B)
            _, hi2 = _batched(fp.refine, bi.numel(), bi, ci + start, I[bi, ci])
            keep = (hi2 > T[bi].double()) & (hi2 >= L[bi].double())
            bi, ci = bi[keep], ci[keep]
        work_q[:, 1] += torch.bincount(bi, minlength=B)
        dense = torch.full((B, c), float("-inf"), device=dev)
        if bi.numel():
            dense[bi, ci] = _batched(scorer.pairs, bi.numel(), bi, ci + start)
        vals, cols = chunk_topk(dense, min(kept, c))
        best_s, best_r = ordered_topk(torch.cat([best_s, vals], 1), torch.cat([best_r, cols + start], 1), kept)
        # Ranks.
        if nnz:
            lg, hg, sp = lo[pos_query], hi[pos_query], pos_scores[:, None]
            counts += (lg > sp).sum(1)
            rows = torch.arange(start, end, device=dev)
            band = (lg <= sp) & (hg >= sp) & (rows[None, :] != pos_ids[:, None])
            pi, ci = band.nonzero(as_tuple=True)
            if refine and pi.numel():
                work_p[:, 0] += torch.bincount(pi, minlength=nnz)
                lo2, hi2 = _batched(fp.refine, pi.numel(), pos_query[pi], ci + start, I[pos_query[pi], ci])
                spd = pos_scores[pi].double()
                counts += torch.bincount(pi[lo2 > spd], minlength=nnz)
                und = (lo2 <= spd) & (hi2 >= spd)
                pi, ci = pi[und], ci[und]
            work_p[:, 1] += torch.bincount(pi, minlength=nnz)
            if pi.numel():
                s = _batched(scorer.pairs, pi.numel(), pos_query[pi], ci + start)
                spi, r = pos_scores[pi], ci + start
                before = (s > spi) | ((s == spi) & (r < pos_ids[pi]))
                counts += torch.bincount(pi[before], minlength=nnz)
    if nnz:
        work_q[:, 0] += torch.zeros(B, dtype=torch.int64, device=dev).index_add_(0, pos_query, work_p[:, 0])
        work_q[:, 2] += torch.zeros(B, dtype=torch.int64, device=dev).index_add_(0, pos_query, work_p[:, 1])
    ids = torch.full((B, k), -1, dtype=torch.int64, device=dev)
    scores = torch.full((B, k), float("-inf"), device=dev)
    ids[:, :kept], scores[:, :kept] = best_r, best_s
    ranks = counts + 1
    weights = pair_weights(ids, pos_query, pos_ids, ranks, cutoff) if cutoff else None
    result = SearchResult(ids=ids, scores=scores, pos_offsets=pos_offsets, pos_ids=pos_ids, pos_scores=pos_scores,
                          pos_ranks=ranks, pair_weights=weights)
    return result, _stats(data, N, work_q.cpu().numpy(), work_p.cpu().numpy())


@fork_safe
def two_stage_search(queries: Any, docs: Any, data: FirstPassData, k: Any, positives: Any = None,
                     cutoff: Any = None, backend: Optional[str] = None, chunk_rows: Optional[int] = None,
                     pos_scores: Any = None):
    """(SearchResult, TwoStageStats or None): bit-identical to dispatch.flat_search(queries, docs, ...)
    with the native backend (the exact scan runs instead, stats None, when the bounds could overflow).
    pos_scores: the positives' exact scores given, as in dispatch.flat_search (the sharded search)."""
    N, d = docs.shape
    on_cuda = isinstance(docs, torch.Tensor) and docs.is_cuda
    queries_v, k, cutoff, (offsets, ids), backend, chunk_rows = D._prepare(queries, d, N, k, positives, cutoff,
                                                                            backend, on_cuda, chunk_rows, pos_scores)
    B = queries_v.shape[0]
    qc = prepare_queries(queries_v, data)
    if overflow_risk(qc, data):
        return D.flat_search(queries, docs, k, positives, cutoff or None, backend, chunk_rows, pos_scores), None
    with D._memory_guard(B, k, ids.shape[0], cutoff):
        result, stats = _two_stage_backend(queries_v, docs, data, qc, k, offsets, ids, cutoff, backend, chunk_rows,
                                           pos_scores)
    return D._finish(result, min(k, N), queries), stats


def _two_stage_backend(queries_v, docs, data, qc, k, offsets, ids, cutoff, backend, chunk_rows, pos_scores=None):
    B = queries_v.shape[0]
    if backend == "native":
        q = D._numpy(queries_v)
        docs_np = docs.cpu().numpy() if isinstance(docs, torch.Tensor) else docs
        data_np = data.to(torch.device("cpu"))
        given = None if pos_scores is None else D._numpy(pos_scores)
        box = {}
        result = D._run_native(lambda *out: box.setdefault("s", native_two_stage(q, docs_np, data_np, qc, k, offsets,
                                                                                 ids, cutoff, out, given)),
                               B, k, offsets, ids, cutoff)
        return result, box["s"]
    # on a GPU ("cuda" or "torch") the two-stage search is the torch path (torch._int_mm / bf16 matmul)
    docs_t = D.as_tensor(docs)
    q = D.as_tensor(queries_v).to(docs_t.device).contiguous()
    off_t, ids_t = torch.from_numpy(offsets).to(docs_t.device), torch.from_numpy(ids).to(docs_t.device)
    given = None if pos_scores is None else D.as_tensor(pos_scores).to(docs_t.device)
    return torch_two_stage(FlatChunkScorer(q, docs_t), data, qc, B, k, off_t, ids_t, cutoff, chunk_rows, given)
