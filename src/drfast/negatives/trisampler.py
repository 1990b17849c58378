"""TriSampler (Yang, Shao, Dong, Tang, AAAI'24, arXiv:2402.11855): negatives in a quasi-triangular region.

What the published description fixes (read from the arXiv:2402.11855 abstract and the paper summary at
sciencestack.ai/paper/2402.11855; the full method section was not available to check against):

* candidates are the current model's top-K retrieved documents for the query;
* the quasi-triangular principle keeps a candidate d- only when the angular gap
  theta = | acos(s(q,d+) / (|q| |d+|)) - acos(s(q,d-) / (|q| |d-|)) |  is within a boundary of 60 degrees;
* inside the region two sampling distributions are used:
  p(d-) ∝ exp(-(s- - s+)^2 / 4)  over the top-K  (s- = s(q,d-), s+ = s(q,d+)), and the positive-assisted
  p(d-) ∝ ReLU(s(d+,d-) - s(q,d-)).

Choices made here where the description is open (every one is a `TriSamplerConfig` field):

* Scores: s is the inner product the index ranks by; `score_scale` (default 1) multiplies every score
  before both terms, so a model trained with a similarity scale (e.g. 20 for normalised embeddings) can
  use the scale its loss sees. With score_scale = 1 and unit vectors, (s- - s+)^2 / 4 <= 1 and the exp
  term is almost flat; tau = 4 was set for the paper's unnormalised (DPR/coCondenser-style) dot products.
* Angle boundary: inclusive (theta <= max_angle_deg), computed in float64 with cosines clamped to
  [-1, 1]; no tolerance. Candidates, queries or positives of zero norm have no angle: such candidates
  (and every candidate of such a query) are outside the region.
* How the two terms combine (`combine`, weight `positive_weight` = w in [0, 1]):
  - "mixture" (default): p = (1 - w) * E / sum(E) + w * R / sum(R) over the admissible candidates,
    E = exp(-(c (s- - s+))^2 / tau), R = ReLU(c (s(d+,d-) - s(q,d-))). The paper presents the two as
    separate distributions; normalising each and mixing keeps w meaning "share of the probability mass
    from the positive-assisted term" whatever the score scale (R is linear in the scores, E is not),
    and keeps the exp term's full support: R is zero for every candidate closer (by inner product) to q
    than to d+, which for a hard negative is the common case, so a product would throw most of the
    region away and often leave a row with one or no candidate.
  - "product": p ∝ E * R^w (w = 1: the plain product; R^0 = 1). Candidates with R = 0 get zero.
  - w = 0 switches the positive-assisted term off in both modes.
  In both modes a row whose R is zero for every admissible candidate falls back to E alone: the
  positive-assisted term is a preference inside the region, not part of its definition (the angle is).
* Admissible = cand_mask True, finite embedding, inside the angular region. Rows without an admissible
  candidate get all-zero probabilities and are flagged (`return_empty=True`).
* Sampling: without replacement with `torch.multinomial` when a row has more than n candidates of
  nonzero probability; a row with m <= n such candidates takes all m (the only possible draw without
  replacement), ordered by probability, and the n - m remaining slots are filled per `fill`:
  "pad" (default) writes -1; "top" takes the highest-scoring mask-admissible candidates outside the
  region (the ADORE/STAR-style hard negatives), then -1 if even those run out.
* `trisample` masks every listed positive of a query, and uses the first listed positive as d+
  (the caller orders the list to choose). Scores are recomputed from `index.reconstruct` vectors so that
  s+ and s- come from the same vectors (for a PQIndex: the decoded ones).
* n_negatives defaults to 7 (a group of 8 with the positive); the paper's value is not used here.
* Randomness: an explicit torch.Generator wins; else `seed` (int) seeds a fresh generator per call
  (reproducible calls, but the same stream every call: pass one generator across training steps);
  else (seed None) torch's global RNG.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from drfast.common.checks import check_choice, check_float, check_int, check_optional_int
from drfast.common.errors import UsageError
from drfast.index.protocol import Index

__all__ = ["TriSamplerConfig", "trisampler_probabilities", "sample_negatives", "trisample"]


@dataclass
class TriSamplerConfig:
    """TriSampler's settings; each fixes one choice the published description leaves open (see the
    module docstring).

    Parameters
    ----------
    max_angle_deg : float
        Bound on the angular gap ``|∠(q,d+) - ∠(q,d-)|`` of an admissible negative (the paper: 60°).
    tau : float
        Temperature of ``exp(-(s- - s+)^2 / tau)`` (the paper: 4).
    positive_weight : float
        Weight w of the positive-assisted ReLU term, in [0, 1]; 0 switches it off.
    combine : {"mixture", "product"}
        ``"mixture"``: ``(1 - w) E / ΣE + w R / ΣR``; ``"product"``: ``E * R^w``.
    score_scale : float
        Scores are multiplied by this before both terms.
    n_negatives : int
        Negatives per query.
    fill : {"pad", "top"}
        When fewer than n are admissible: pad with -1, or take the top-scoring candidates outside
        the region.
    seed : int, optional
        None: torch's global RNG; an int: a fresh generator per call.
    """
    max_angle_deg: float = 60.0    # bound on |∠(q,d+) - ∠(q,d-)| (the paper: 60°)
    tau: float = 4.0               # exp(-(s- - s+)^2 / tau) (the paper: 4)
    positive_weight: float = 0.5   # w of the positive-assisted ReLU term; 0 switches it off
    combine: str = "mixture"       # "mixture": (1-w) E/ΣE + w R/ΣR; "product": E * R^w
    score_scale: float = 1.0       # scores are multiplied by this before both terms
    n_negatives: int = 7           # negatives per query
    fill: str = "pad"              # fewer admissible than n: "pad" with -1, or "top" out-of-region
    seed: Optional[int] = None     # None: torch's global RNG; int: a fresh generator per call

    def check(self) -> None:
        check_float(self.max_angle_deg, "max_angle_deg", 0.0, 180.0)
        check_float(self.tau, "tau", 0.0, min_inclusive=False)
        check_float(self.positive_weight, "positive_weight", 0.0, 1.0)
        check_choice(self.combine, "combine", ("mixture", "product"))
        check_float(self.score_scale, "score_scale", 0.0, min_inclusive=False)
        check_int(self.n_negatives, "n_negatives", 1)
        check_choice(self.fill, "fill", ("pad", "top"))
        check_optional_int(self.seed, "seed")


def _float_tensor(x: Any, name: str, ndim: int) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise UsageError(name, f"expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise UsageError(name, f"expected {ndim} dimensions, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise UsageError(name, f"expected a floating-point dtype, got {x.dtype}")
    return x.detach()


def _region_and_scores(q, pos, cand, cand_mask, config):
    """Shared core: admissible mask [B, K], s(q,d-) [B, K] and the other inputs, all float64."""
    q = _float_tensor(q, "q", 2)
    pos = _float_tensor(pos, "pos", 2)
    cand = _float_tensor(cand, "cand", 3)
    B, d = q.shape
    if pos.shape != (B, d):
        raise UsageError("pos", f"expected shape {(B, d)} (one positive per query), got {tuple(pos.shape)}")
    if cand.shape[0] != B or cand.shape[2] != d:
        raise UsageError("cand", f"expected shape [{B}, K, {d}], got {tuple(cand.shape)}")
    K = cand.shape[1]
    if isinstance(cand_mask, np.ndarray):
        cand_mask = torch.from_numpy(cand_mask)
    if not isinstance(cand_mask, torch.Tensor) or cand_mask.dtype != torch.bool:
        raise UsageError("cand_mask", "expected a bool numpy array or torch tensor")
    if cand_mask.shape != (B, K):
        raise UsageError("cand_mask", f"expected shape {(B, K)}, got {tuple(cand_mask.shape)}")
    if not (torch.isfinite(q).all() and torch.isfinite(pos).all()):
        raise UsageError("q/pos", "embeddings must be finite")
    dev = q.device
    # float64: acos is ill-conditioned near 0° and the boundary test is exact, so rounding matters here.
    q, pos, cand = q.double(), pos.to(dev).double(), cand.to(dev).double()
    cand_mask = cand_mask.to(dev)
    finite = torch.isfinite(cand).all(dim=2)
    cand = torch.where(finite.unsqueeze(2), cand, torch.zeros((), dtype=cand.dtype, device=dev))  # padding may be NaN

    s_neg = torch.bmm(cand, q.unsqueeze(2)).squeeze(2)               # s(q, d-)   [B, K]
    s_pd = torch.bmm(cand, pos.unsqueeze(2)).squeeze(2)              # s(d+, d-)  [B, K]
    s_pos = (q * pos).sum(1, keepdim=True)                           # s(q, d+)   [B, 1]
    nq, npos, nc = q.norm(dim=1, keepdim=True), pos.norm(dim=1, keepdim=True), cand.norm(dim=2)
    ok = (nq > 0) & (npos > 0) & (nc > 0)                            # zero vectors have no angle
    tiny = torch.finfo(torch.float64).tiny
    ang_pos = torch.rad2deg(torch.acos((s_pos / (nq * npos).clamp_min(tiny)).clamp(-1.0, 1.0)))
    ang_neg = torch.rad2deg(torch.acos((s_neg / (nq * nc).clamp_min(tiny)).clamp(-1.0, 1.0)))
    in_region = (ang_pos - ang_neg).abs() <= config.max_angle_deg
    admissible = cand_mask & finite & ok & in_region
    return admissible, s_neg, s_pd, s_pos


def trisampler_probabilities(q: Any, pos: Any, cand: Any, cand_mask: Any,
                             config: Optional[TriSamplerConfig] = None, return_empty: bool = False):
    """TriSampler sampling probabilities over each query's K candidates.

    q [B, d], pos [B, d] (one positive per query), cand [B, K, d], cand_mask [B, K] bool (False for
    padding and for the query's own positives). Returns probs [B, K] float64 on q's device, each row
    summing to 1 over its admissible candidates and 0 elsewhere; rows with no admissible candidate are
    all zeros. With return_empty=True returns (probs, empty) where empty [B] bool flags those rows.
    """
    config = config or TriSamplerConfig()
    config.check()
    admissible, s_neg, s_pd, s_pos = _region_and_scores(q, pos, cand, cand_mask, config)
    c, w = config.score_scale, config.positive_weight
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=s_neg.device)

    # Exp term in log space, normalised per row: an un-shifted exp underflows to an all-zero row
    # when every candidate is far from s+ (large scores, small tau).
    log_e = torch.where(admissible, -((c * (s_neg - s_pos)) ** 2) / config.tau, neg_inf)
    empty = ~admissible.any(dim=1)
    p_exp = torch.softmax(log_e, dim=1).nan_to_num(0.0)              # all -inf rows -> NaN -> 0

    r = torch.where(admissible, torch.relu(c * (s_pd - s_neg)), torch.zeros_like(s_neg))
    has_r = (r > 0).any(dim=1, keepdim=True)                         # else: fall back to the exp term
    if w == 0.0:
        probs = p_exp
    elif config.combine == "mixture":
        p_r = r / r.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        probs = torch.where(has_r, (1.0 - w) * p_exp + w * p_r, p_exp)
    else:
        log_prod = torch.where(r > 0, log_e + w * torch.log(r.clamp_min(torch.finfo(torch.float64).tiny)), neg_inf)
        p_prod = torch.softmax(log_prod, dim=1).nan_to_num(0.0)
        probs = torch.where(has_r, p_prod, p_exp)
    return (probs, empty) if return_empty else probs


def sample_negatives(probs: Any, n: int, generator: Optional[torch.Generator] = None,
                     fallback_scores: Any = None) -> torch.Tensor:
    """n candidate positions per row [B, n] (int64), drawn without replacement with probability ∝ probs.

    A row with more than n nonzero probabilities is sampled with torch.multinomial (sequential draws
    without replacement). A row with m <= n takes all m (ordered by probability, descending); its other
    n - m slots get the highest `fallback_scores` [B, K] among the positions not yet taken whose score is
    finite (pass -inf to exclude a position), or -1 when fallback_scores is None or runs out.
    """
    probs = _float_tensor(probs, "probs", 2)
    check_int(n, "n", 1)
    n = int(n)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise UsageError("generator", f"expected a torch.Generator or None, got {type(generator).__name__}")
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise UsageError("probs", "must be finite and >= 0")
    B, K = probs.shape
    dev = probs.device
    out = torch.full((B, n), -1, dtype=torch.int64, device=dev)
    if B == 0 or K == 0:
        return out
    support = (probs > 0).sum(dim=1)
    big = support > n
    if big.any():
        # One batched call for every row with enough support (rows need not sum to 1).
        out[big] = torch.multinomial(probs[big], n, replacement=False, generator=generator)
    small = ~big
    if small.any():
        # Without replacement the draw is the whole support: take it deterministically, no loop.
        p = probs[small]
        kk = min(n, K)
        top_p, top_i = p.topk(kk, dim=1)
        top_i = torch.where(top_p > 0, top_i, torch.full_like(top_i, -1))
        if fallback_scores is not None:
            fb = _float_tensor(fallback_scores, "fallback_scores", 2)
            if fb.shape != (B, K):
                raise UsageError("fallback_scores", f"expected shape {(B, K)}, got {tuple(fb.shape)}")
            fb = fb[small.to(fb.device)].to(dev).double()
            # Taken and NaN positions -> -inf (nan_to_num would also turn -inf into a finite value).
            fb = torch.where((p > 0) | fb.isnan(), torch.full_like(fb, float("-inf")), fb)
            fb_s, fb_i = fb.topk(kk, dim=1)                          # best not-yet-taken positions
            fb_i = torch.where(torch.isfinite(fb_s), fb_i, torch.full_like(fb_i, -1))
            m = (top_p > 0).sum(dim=1, keepdim=True)                 # taken from the support
            slot = torch.arange(kk, device=dev).unsqueeze(0)
            take = (slot - m).clamp(min=0)                           # slot j >= m gets fallback j - m
            top_i = torch.where(slot < m, top_i, fb_i.gather(1, take))
        out[small, :kk] = top_i
    return out


def _positive_lists(positives_rows: Any, B: int) -> list:
    if isinstance(positives_rows, (np.ndarray, torch.Tensor)):
        positives_rows = positives_rows.tolist()
    if not isinstance(positives_rows, Sequence) or len(positives_rows) != B:
        raise UsageError("positives_rows", f"expected {B} entries (one per query)")
    lists = []
    for b, p in enumerate(positives_rows):
        p = [p] if isinstance(p, (int, np.integer)) and not isinstance(p, bool) else list(p)
        if not p:
            raise UsageError("positives_rows", f"query {b} has no positive")
        lists.append([int(x) for x in p])
    return lists


def trisample(index: Index, q_emb: Any, positives_rows: Any, k: int = 200,
              config: Optional[TriSamplerConfig] = None,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """TriSampler negatives: each query's negatives drawn inside the quasi-triangular region.

    One fused ``index.search(q, k, positives)`` gives each query's top-k; every listed positive is
    masked out, the first listed positive of each query is d+, and vectors come from
    ``index.reconstruct``. The module docstring gives every choice the published description leaves
    open.

    Parameters
    ----------
    index : Index
        The index to draw from.
    q_emb : array or tensor, float32 [B, d]
        Query embeddings.
    positives_rows : sequence
        Per query, a row id or a list of row ids.
    k : int
        The depth of the candidate list.
    config : TriSamplerConfig, optional
        The sampler's settings (default: ``TriSamplerConfig()``).
    generator : torch.Generator, optional
        The random source (else ``config.seed``, else torch's global RNG).

    Returns
    -------
    torch.Tensor, int64 [B, n]
        Index row ids; -1 where a query runs short.
    """
    config = config or TriSamplerConfig()
    config.check()
    check_int(k, "k", 1)
    q = _float_tensor(q_emb, "q_emb", 2).float()
    B = q.shape[0]
    pos_lists = _positive_lists(positives_rows, B)
    res = index.search(q, k=int(k), positives=pos_lists)
    ids = torch.as_tensor(res.ids).to(q.device)                      # [B, k'], -1 padding when k > N
    kk = ids.shape[1]

    # Positives padded to [B, P] with -1 so "is a positive" is one broadcast compare, not a loop.
    P = max(len(p) for p in pos_lists)
    pos_pad = torch.tensor([p + [-1] * (P - len(p)) for p in pos_lists], dtype=torch.int64, device=q.device)
    is_pos = (ids.unsqueeze(2) == pos_pad.unsqueeze(1)).any(dim=2)
    cand_mask = (ids >= 0) & ~is_pos

    cand = index.reconstruct(ids.clamp(min=0).reshape(-1).cpu()).to(q.device).view(B, kk, -1)
    pos = index.reconstruct(pos_pad[:, 0].cpu()).to(q.device)
    probs = trisampler_probabilities(q, pos, cand, cand_mask, config)

    fallback = None
    if config.fill == "top":
        # Out-of-region but otherwise valid candidates, ranked by the model's score.
        s = torch.bmm(cand.double(), q.double().unsqueeze(2)).squeeze(2)
        fallback = torch.where(cand_mask, s, torch.full_like(s, float("-inf")))
    if generator is None and config.seed is not None:
        generator = torch.Generator(device=probs.device).manual_seed(config.seed)
    pick = sample_negatives(probs, config.n_negatives, generator, fallback)
    return torch.where(pick >= 0, ids.gather(1, pick.clamp(min=0)), torch.full_like(pick, -1))
