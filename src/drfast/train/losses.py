"""Pairwise training losses: ADORE's LambdaLoss-weighted RankNet, and plain RankNet (for STAR).

ADORE (Zhan et al., SIGIR'21, "Optimizing Dense Retrieval Model Training with Hard Negatives", sec. 6.2)
trains the query encoder on the top-k documents the current query embedding retrieves from a fixed
index. For every pair (relevant document p, retrieved non-relevant document n) of a query it adds the
RankNet loss log(1 + exp(s_n - s_p)), weighted by the LambdaLoss weight |ΔMRR| = |rr(rank_p) - rr(rank_n)|
(rr(r) = 1/r up to the metric cutoff, 0 beyond it).

How the reference implementation does it
----------------------------------------
Reference: jingtaozhan/DRhard, ``adore/train.py`` (commit 2371126bbf84436388b215210cd8001db25cf4b4),
``metric_weights`` (lines 85-91) and the per-query loop of ``train`` (lines 194-242). Per query:

* the candidate list is the faiss top-k (``neg_topk``, default 200); ``target_labels`` marks which of them
  are relevant (line 200);
* only if *no* relevant document was retrieved, all relevant documents are appended after the top-k
  (lines 209-211). So relevant documents outside the top-k are used only when none is inside it; when
  some are inside, the unretrieved ones are ignored.  (Here: ``only_if_unretrieved=True``.)
* the pairs are all (relevant, non-relevant) pairs of that list (lines 214-219). Both orientations are
  summed, each multiplied by the symmetric weight matrix ``|rr(i) - rr(j)|`` built from *list positions*
  with rr zeroed from ``metric_cut`` on (lines 85-91, 234-237);
* normalisation: the weighted sum is divided by ``num_pairs = 2 * num_pos_pairs`` (lines 216, 220, 238),
  i.e. by the number of (relevant, non-relevant) pairs of the list *whatever their weight*: pairs whose
  weight is 0 (both ends beyond ``metric_cut``) **do count** in the denominator. Since each unordered pair
  appears twice in the sum and twice in ``num_pairs``, this is the weighted mean of the single-orientation
  RankNet term over all pairs;
* the per-query losses are summed and divided by the batch size (and the accumulation steps) (line 241).
  Every query there has a positive (``assert num_pos_pairs > 0``, line 218), so this is a mean over the
  queries; we average over the queries that have at least one pair (queries without positives, common in
  BEIR, contribute nothing), and leave gradient accumulation to the trainer.

Differences, on purpose:

* Sign. In that commit lines 229-230 compute ``C_pos`` and ``C_neg`` with the *same* sign,
  ``log(1 + exp(y_i - y_j))``, so for a pair (p, n) it sums softplus(s_p - s_n) + softplus(s_n - s_p), which
  is minimised at s_p = s_n -- it pulls the positive towards the negative. An earlier version of the same
  file (the one with ``--init_path`` and ``sigma = 1``) has ``C_pos = log(1 + exp(-sigma * (y_i - y_j)))``,
  i.e. the usual RankNet, which is also the paper's formula. We implement the paper / earlier version:
  softplus(scale * (s_n - s_p)).
* Ranks. The reference weights an appended (unretrieved) positive by its *list position* k + 1 + i; drfast's
  ``pair_weights`` use its exact corpus rank. Both give rr = 0, hence identical weights, whenever the cutoff
  is <= k (ADORE's setting: ``--metric_cut 200`` with ``--neg_topk 200``); they differ only with no cutoff.
* The reference gathers embeddings of all k ids; drfast pads with -1 when k > N, and padded candidates are
  never paired.

``normalizer="pairs"`` (default) follows the reference's denominator; ``normalizer="nonzero"`` divides by the
number of pairs with a positive weight instead (the two agree whenever cutoff >= k, where no
(positive, non-positive) pair has weight 0).

Inputs come from ``drfast``'s fused search (see ``results.SearchResult`` and docs/concepts/fused-search.md):
``ids`` [B, k], CSR ``pos_offsets`` [B+1] / ``pos_ids`` [nnz], ``pair_weights`` [nnz, k] (0 where the candidate
is a positive of the query or padding). Everything is vectorised over the batch; memory is O(nnz * k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from drfast.common.arrays import as_tensor
from drfast.common.checks import describe
from drfast.common.csr import row_of_each
from drfast.common.errors import UsageError, UsageTypeError

__all__ = ["adore_loss", "ranknet_loss"]

NORMALIZERS = ("pairs", "nonzero")


# ----------------------------------------------------------------------------------------------- checks
def _scores(x: Any, name: str, ndim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise UsageTypeError(name, f"expected a torch tensor (scores must carry gradients), got {describe(x)}")
    if not x.is_floating_point():
        raise UsageTypeError(name, f"expected a floating point dtype, got {x.dtype}")
    if x.dim() != ndim:
        raise UsageError(name, f"expected a {ndim}-D tensor, got shape {tuple(x.shape)}")
    return x


def _float_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = as_tensor(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise UsageTypeError(name, f"expected a float tensor or numpy array, got {describe(x)}")
    if not x.is_floating_point():
        raise UsageTypeError(name, f"expected a floating point dtype, got {x.dtype}")
    return x


def _int_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = as_tensor(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise UsageTypeError(name, f"expected an integer torch tensor or numpy array, got {describe(x)}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise UsageTypeError(name, f"expected an integer dtype, got {x.dtype}")
    return x.detach().to(device=device, dtype=torch.int64)


def _bool_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = as_tensor(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise UsageTypeError(name, f"expected a bool torch tensor or numpy array, got {describe(x)}")
    if x.dtype != torch.bool:
        raise UsageTypeError(name, f"expected dtype bool, got {x.dtype}")
    return x.detach().to(device)


def _scale(score_scale: Any) -> float:
    if isinstance(score_scale, bool) or not isinstance(score_scale, (int, float, np.integer, np.floating)):
        raise UsageTypeError("score_scale", f"expected a number, got {type(score_scale).__name__}")
    s = float(score_scale)
    if not math.isfinite(s) or s <= 0:
        raise UsageError("score_scale", f"must be finite and > 0, got {score_scale}")
    return s


def _compute_dtype(*xs: torch.Tensor) -> torch.dtype:
    dt = xs[0].dtype
    for x in xs[1:]:
        dt = torch.promote_types(dt, x.dtype)
    return torch.float32 if dt in (torch.float16, torch.bfloat16) else dt


# ------------------------------------------------------------------------------------------------ ADORE
def adore_loss(
    cand_scores: torch.Tensor,
    pos_scores: torch.Tensor,
    pos_offsets: Any,
    pair_weights: Any,
    score_scale: float = 1.0,
    only_if_unretrieved: bool = False,
    pos_in_topk: Optional[Any] = None,
    *,
    ids: Optional[Any] = None,
    pos_ids: Optional[Any] = None,
    normalizer: str = "pairs",
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """ADORE's ΔMRR-weighted RankNet loss over a batch of B queries (see the module docstring).

    Parameters
    ----------
    cand_scores : torch.Tensor, float [B, k]
        ``<q_b, doc(ids[b, j])>``, with gradients (values at padded slots are ignored; they may be -inf).
    pos_scores : torch.Tensor, float [nnz]
        ``<q_b, doc(p)>`` for every positive, in CSR order, with gradients.
    pos_offsets : array or tensor, int [B+1]
        CSR offsets over the positives.
    pair_weights : array or tensor, float [nnz, k]
        ``|rr(rank_p) - rr(j + 1)|``, >= 0 (0 where candidate j is a positive or padding).
    score_scale : float
        RankNet's sigma: the pair term is ``softplus(score_scale * (s_cand - s_pos))``.
    only_if_unretrieved : bool
        False: every positive of the query is paired with the candidates. True: the reference's
        choice -- only the positives inside the top-k, or all of them (weighted with their exact
        ranks) when the query has none inside.
    pos_in_topk : array or tensor, bool [nnz], optional
        Which positives are among the query's top-k ids; computed from ``ids`` and ``pos_ids`` when
        None (only needed with ``only_if_unretrieved=True``).
    ids, pos_ids : array or tensor, int [B, k] and int [nnz], keyword-only
        From the search; needed by ``normalizer="pairs"`` and to compute ``pos_in_topk``.
    normalizer : {"pairs", "nonzero"}
        ``"pairs"`` (reference): divide a query's weighted sum by its number of (used positive,
        non-positive non-padding candidate) pairs, zero-weight pairs included; ``"nonzero"``: divide
        by its number of pairs with weight > 0.

    Returns
    -------
    loss : torch.Tensor
        The mean, over the queries with at least one pair, of the per-query normalised sums (a zero
        tensor still connected to the inputs when no query has a pair).
    stats : dict
        Floats ``pairs`` (pairs in the denominators), ``nonzero_pairs``, ``mean_weight`` (over the
        counted pairs), ``queries_with_pairs``, ``frac_queries_with_pairs``, ``positives_used``.

    Raises
    ------
    UsageError, UsageTypeError
        An argument of the wrong type, shape, device or value, named in the message.
    """
    batch = _check_adore_inputs(cand_scores, pos_scores, pos_offsets, pair_weights, score_scale,
                                _Optional(only_if_unretrieved, pos_in_topk, ids, pos_ids, normalizer))
    return _adore_loss(batch, only_if_unretrieved, normalizer)


@dataclass(frozen=True)
class _Optional:
    """adore_loss's optional arguments, as given."""

    only_if_unretrieved: bool
    pos_in_topk: Any
    ids: Any
    pos_ids: Any
    normalizer: str


@dataclass(frozen=True)
class _AdoreBatch:
    """adore_loss's inputs once checked: all on cand_scores' device, ids int64, weights detached in the
    compute dtype."""

    cand_scores: torch.Tensor
    pos_scores: torch.Tensor
    offsets: torch.Tensor
    weights: torch.Tensor
    ids: Optional[torch.Tensor]
    pos_ids: Optional[torch.Tensor]
    pos_in_topk: Optional[torch.Tensor]
    scale: float
    dtype: torch.dtype


def _check_adore_inputs(cand_scores: Any, pos_scores: Any, pos_offsets: Any, pair_weights: Any, score_scale: Any,
                        opt: _Optional) -> _AdoreBatch:
    """Every check of adore_loss, in the order its messages have always come in."""
    cand_scores = _scores(cand_scores, "cand_scores", 2)
    pos_scores = _scores(pos_scores, "pos_scores", 1)
    if opt.normalizer not in NORMALIZERS:
        raise UsageError("normalizer", f"expected one of {NORMALIZERS}, got {opt.normalizer!r}")
    scale = _scale(score_scale)
    device = cand_scores.device
    if pos_scores.device != device:
        raise UsageError("pos_scores", f"on {pos_scores.device}, but cand_scores is on {device}")
    B, k = cand_scores.shape
    offsets, nnz = _check_offsets(pos_offsets, B, device)
    if pos_scores.shape[0] != nnz:
        raise UsageError("pos_scores", f"expected shape [nnz] = [{nnz}] (nnz = pos_offsets[-1]), "
                         f"got {tuple(pos_scores.shape)}")
    pair_weights = _float_tensor(pair_weights, "pair_weights")
    if tuple(pair_weights.shape) != (nnz, k):
        raise UsageError("pair_weights", f"expected shape [nnz, k] = [{nnz}, {k}], got {tuple(pair_weights.shape)}")
    ids = _optional_of_shape(opt.ids, "ids", _int_tensor, device, (B, k), f"[B, k] = [{B}, {k}] (cand_scores' shape)")
    pos_ids = _optional_of_shape(opt.pos_ids, "pos_ids", _int_tensor, device, (nnz,), f"[nnz] = [{nnz}]")
    pos_in_topk = _optional_of_shape(opt.pos_in_topk, "pos_in_topk", _bool_tensor, device, (nnz,), f"[nnz] = [{nnz}]")
    need_ids = opt.normalizer == "pairs" or (opt.only_if_unretrieved and pos_in_topk is None)
    if need_ids and (ids is None or pos_ids is None):
        missing = "ids" if ids is None else "pos_ids"
        why = "normalizer='pairs'" if opt.normalizer == "pairs" else "only_if_unretrieved=True without pos_in_topk"
        raise UsageError(missing, f"required with {why} (pass the search result's ids and pos_ids)")
    dtype = _compute_dtype(cand_scores, pos_scores)
    w = pair_weights.detach().to(device=device, dtype=dtype)
    w_bad = torch.stack([(~torch.isfinite(w)).any(), (w < 0).any()]).tolist()
    if w_bad[0]:
        raise UsageError("pair_weights", "contains NaN or Inf")
    if w_bad[1]:
        raise UsageError("pair_weights", "contains negative weights")
    return _AdoreBatch(cand_scores, pos_scores, offsets, w, ids, pos_ids, pos_in_topk, scale, dtype)


def _check_offsets(pos_offsets: Any, B: int, device: torch.device) -> Tuple[torch.Tensor, int]:
    """CSR offsets [B+1] starting at 0, non-decreasing -> (int64 offsets on `device`, nnz)."""
    offsets = _int_tensor(pos_offsets, "pos_offsets", device)
    if offsets.dim() != 1 or offsets.shape[0] != B + 1:
        raise UsageError("pos_offsets", f"expected shape [B+1] = [{B + 1}] (B = cand_scores.shape[0]), "
                         f"got {tuple(offsets.shape)}")
    counts = offsets[1:] - offsets[:-1]
    first, nnz = (int(v) for v in torch.stack([offsets[0], offsets[-1]]).tolist())
    if first != 0 or bool((counts < 0).any()):
        raise UsageError("pos_offsets", "must start at 0 and be non-decreasing")
    return offsets, nnz


def _optional_of_shape(x: Any, name: str, convert, device: torch.device, shape: Tuple[int, ...],
                       shown: str) -> Optional[torch.Tensor]:
    """None, or `x` converted (`_int_tensor` / `_bool_tensor`) and checked to have `shape`."""
    if x is None:
        return None
    x = convert(x, name, device)
    if tuple(x.shape) != shape:
        raise UsageError(name, f"expected shape {shown}, got {tuple(x.shape)}")
    return x


def _adore_loss(b: _AdoreBatch, only_if_unretrieved: bool, normalizer: str) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The loss itself, on checked inputs (see adore_loss)."""
    B, k = b.cand_scores.shape
    device, dtype, w = b.cand_scores.device, b.dtype, b.weights
    zero = torch.zeros((), dtype=dtype, device=device)
    # Query of every positive: [nnz].
    qidx = row_of_each(b.offsets)
    # match[i, j]: candidate j of positive i's query is positive i itself.
    match = b.ids[qidx] == b.pos_ids[:, None] if b.ids is not None and b.pos_ids is not None else None

    # Which positives take part.
    if only_if_unretrieved:
        pos_in_topk = match.any(dim=1) if b.pos_in_topk is None else b.pos_in_topk
        retrieved_in_query = torch.zeros(B, dtype=torch.int64, device=device)
        retrieved_in_query.index_add_(0, qidx, pos_in_topk.to(torch.int64))
        used = pos_in_topk | (retrieved_in_query[qidx] == 0)
    else:
        used = torch.ones(w.shape[0], dtype=torch.bool, device=device)

    # Which (positive, candidate) pairs count.
    if normalizer == "pairs":
        # A candidate is paired when it is a real row (not -1 padding) and not a positive of its query:
        # the reference's (relevant, non-relevant) pairs, whatever their weight.
        cand_is_pos = torch.zeros(B, k, dtype=torch.int64, device=device)
        cand_is_pos.index_add_(0, qidx, match.to(torch.int64))
        cand_ok = (b.ids >= 0) & (cand_is_pos == 0)
        mask = used[:, None] & cand_ok[qidx]
    else:
        mask = used[:, None] & (w > 0)

    # Masked entries are replaced before softplus so that -inf / garbage scores at padded or positive slots
    # give neither NaN values nor NaN gradients.
    diff = (b.cand_scores.to(dtype)[qidx] - b.pos_scores.to(dtype)[:, None]) * b.scale
    diff = torch.where(mask, diff, zero)
    term = torch.where(mask, w * F.softplus(diff), zero)

    q_sum = torch.zeros(B, dtype=dtype, device=device).index_add(0, qidx, term.sum(dim=1))
    pair_count = mask.sum(dim=1)
    q_cnt = torch.zeros(B, dtype=torch.int64, device=device).index_add(0, qidx, pair_count)
    per_query = q_sum / q_cnt.clamp(min=1).to(dtype)  # 0 for queries without pairs
    n_q = (q_cnt > 0).sum()
    loss = per_query.sum() / n_q.clamp(min=1).to(dtype)
    return loss, _adore_stats(mask, w, pair_count, n_q, used, B)


def _adore_stats(mask: torch.Tensor, w: torch.Tensor, pair_count: torch.Tensor, n_q: torch.Tensor,
                 used: torch.Tensor, B: int) -> Dict[str, float]:
    with torch.no_grad():
        n_pairs = pair_count.sum()
        nonzero = (mask & (w > 0)).sum()
        w_sum = torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device)).sum()
        vals = torch.stack([
            n_pairs.to(torch.float64), nonzero.to(torch.float64), w_sum.to(torch.float64),
            n_q.to(torch.float64), used.sum().to(torch.float64),
        ]).tolist()
    return {
        "pairs": vals[0],
        "nonzero_pairs": vals[1],
        "mean_weight": vals[2] / vals[0] if vals[0] > 0 else 0.0,
        "queries_with_pairs": vals[3],
        "frac_queries_with_pairs": vals[3] / B if B > 0 else 0.0,
        "positives_used": vals[4],
    }


# ---------------------------------------------------------------------------------------------- RankNet
def ranknet_loss(
    pos_scores: torch.Tensor,
    neg_scores: torch.Tensor,
    mask: Optional[Any] = None,
    score_scale: float = 1.0,
) -> torch.Tensor:
    r"""Plain RankNet: mean over the unmasked pairs of ``log(1 + exp(score_scale * (s_neg - s_pos)))``.

    Parameters
    ----------
    pos_scores : torch.Tensor, float [\*S]
        One positive score per row.
    neg_scores : torch.Tensor, float [\*S, n] or [\*S]
        The negatives of that row (or one negative per positive).
    mask : bool array or tensor of neg_scores' shape, optional
        True where the pair counts (default: all pairs).
    score_scale : float
        RankNet's sigma.

    Returns
    -------
    torch.Tensor
        A 0-d tensor; 0 (still connected to the inputs) when no pair is unmasked.

    Raises
    ------
    UsageError, UsageTypeError
        An argument of the wrong type, shape or value, named in the message.

    Examples
    --------
    >>> import torch, drfast
    >>> pos = torch.tensor([1.0, 0.0])
    >>> neg = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    >>> round(float(drfast.ranknet_loss(pos, neg)), 4)  # (softplus(-1) + 3 softplus(0)) / 4
    0.5982
    """
    if not isinstance(pos_scores, torch.Tensor):
        raise UsageTypeError("pos_scores", f"expected a torch tensor, got {describe(pos_scores)}")
    if not isinstance(neg_scores, torch.Tensor):
        raise UsageTypeError("neg_scores", f"expected a torch tensor, got {describe(neg_scores)}")
    for name, x in (("pos_scores", pos_scores), ("neg_scores", neg_scores)):
        if not x.is_floating_point():
            raise UsageTypeError(name, f"expected a floating point dtype, got {x.dtype}")
    scale = _scale(score_scale)
    if neg_scores.dim() == pos_scores.dim() + 1 and neg_scores.shape[:-1] == pos_scores.shape:
        pos = pos_scores.unsqueeze(-1)
    elif neg_scores.shape == pos_scores.shape:
        pos = pos_scores
    else:
        raise UsageError("neg_scores", f"expected shape {tuple(pos_scores.shape)} + (n,) or "
                         f"{tuple(pos_scores.shape)} (pos_scores' shape), got {tuple(neg_scores.shape)}")
    if neg_scores.device != pos_scores.device:
        raise UsageError("neg_scores", f"on {neg_scores.device}, but pos_scores is on {pos_scores.device}")
    if mask is None:
        mask = torch.ones(neg_scores.shape, dtype=torch.bool, device=neg_scores.device)
    else:
        mask = _bool_tensor(mask, "mask", neg_scores.device)
        if mask.shape != neg_scores.shape:
            raise UsageError("mask", f"expected neg_scores' shape {tuple(neg_scores.shape)}, got {tuple(mask.shape)}")
    dtype = _compute_dtype(pos_scores, neg_scores)
    zero = torch.zeros((), dtype=dtype, device=neg_scores.device)
    diff = torch.where(mask, (neg_scores.to(dtype) - pos.to(dtype)) * scale, zero)
    term = torch.where(mask, F.softplus(diff), zero)
    return term.sum() / mask.sum().clamp(min=1).to(dtype)
