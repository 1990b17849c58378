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

Inputs come from ``drfast``'s fused search (see ``results.SearchResult`` and the "Contracts" of DESIGN.md):
``ids`` [B, k], CSR ``pos_offsets`` [B+1] / ``pos_ids`` [nnz], ``pair_weights`` [nnz, k] (0 where the candidate
is a positive of the query or padding). Everything is vectorised over the batch; memory is O(nnz * k).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from drfast.common.csr import row_of_each
from drfast.common.errors import UsageError, UsageTypeError

__all__ = ["adore_loss", "ranknet_loss"]

NORMALIZERS = ("pairs", "nonzero")


# ----------------------------------------------------------------------------------------------- checks
def _describe(x: Any) -> str:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__module__.split('.')[0]} array of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _scores(x: Any, name: str, ndim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise UsageTypeError(name, f"expected a torch tensor (scores must carry gradients), got {_describe(x)}")
    if not x.is_floating_point():
        raise UsageTypeError(name, f"expected a floating point dtype, got {x.dtype}")
    if x.dim() != ndim:
        raise UsageError(name, f"expected a {ndim}-D tensor, got shape {tuple(x.shape)}")
    return x


def _int_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise UsageTypeError(name, f"expected an integer torch tensor or numpy array, got {_describe(x)}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise UsageTypeError(name, f"expected an integer dtype, got {x.dtype}")
    return x.detach().to(device=device, dtype=torch.int64)


def _bool_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise UsageTypeError(name, f"expected a bool torch tensor or numpy array, got {_describe(x)}")
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

    cand_scores   float [B, k]   <q_b, doc(ids[b, j])>, with gradients (values at padded slots are ignored,
                                 they may be -inf)
    pos_scores    float [nnz]    <q_b, doc(p)> for every positive, in CSR order, with gradients
    pos_offsets   int   [B+1]    CSR offsets over the positives
    pair_weights  float [nnz, k] |rr(rank_p) - rr(j + 1)|, >= 0 (0 where candidate j is a positive or padding)
    score_scale   RankNet's sigma: the pair term is softplus(score_scale * (s_cand - s_pos))
    only_if_unretrieved
                  False: every positive of the query is paired with the candidates.
                  True: the reference's choice -- only the positives inside the top-k, or all of them
                  (weighted with their exact ranks) when the query has none inside.
    pos_in_topk   bool [nnz]: which positives are among the query's top-k ids; computed from ``ids`` and
                  ``pos_ids`` when None (only needed with ``only_if_unretrieved=True``)
    ids, pos_ids  int [B, k] / int [nnz] from the search (keyword-only); needed by ``normalizer="pairs"``
                  and to compute ``pos_in_topk``
    normalizer    "pairs" (reference): divide a query's weighted sum by its number of
                  (used positive, non-positive non-padding candidate) pairs, zero-weight pairs included;
                  "nonzero": divide by its number of pairs with weight > 0.

    Returns ``(loss, stats)``: loss is the mean, over the queries with at least one pair, of the per-query
    normalised sums (a zero tensor still connected to the inputs when no query has a pair); stats has floats
    ``pairs`` (pairs in the denominators), ``nonzero_pairs``, ``mean_weight`` (over the counted pairs),
    ``queries_with_pairs``, ``frac_queries_with_pairs``, ``positives_used``.
    """
    cand_scores = _scores(cand_scores, "cand_scores", 2)
    pos_scores = _scores(pos_scores, "pos_scores", 1)
    if normalizer not in NORMALIZERS:
        raise UsageError("normalizer", f"expected one of {NORMALIZERS}, got {normalizer!r}")
    scale = _scale(score_scale)
    device = cand_scores.device
    if pos_scores.device != device:
        raise UsageError("pos_scores", f"on {pos_scores.device}, but cand_scores is on {device}")
    B, k = cand_scores.shape

    offsets = _int_tensor(pos_offsets, "pos_offsets", device)
    if offsets.dim() != 1 or offsets.shape[0] != B + 1:
        raise UsageError("pos_offsets", f"expected shape [B+1] = [{B + 1}] (B = cand_scores.shape[0]), "
                         f"got {tuple(offsets.shape)}")
    counts = offsets[1:] - offsets[:-1]
    first, nnz = (int(v) for v in torch.stack([offsets[0], offsets[-1]]).tolist())
    if first != 0 or bool((counts < 0).any()):
        raise UsageError("pos_offsets", "must start at 0 and be non-decreasing")
    if pos_scores.shape[0] != nnz:
        raise UsageError("pos_scores", f"expected shape [nnz] = [{nnz}] (nnz = pos_offsets[-1]), "
                         f"got {tuple(pos_scores.shape)}")

    if isinstance(pair_weights, np.ndarray):
        pair_weights = torch.from_numpy(np.ascontiguousarray(pair_weights))
    if not isinstance(pair_weights, torch.Tensor):
        raise UsageTypeError("pair_weights", f"expected a float tensor or numpy array, got {_describe(pair_weights)}")
    if not pair_weights.is_floating_point():
        raise UsageTypeError("pair_weights", f"expected a floating point dtype, got {pair_weights.dtype}")
    if tuple(pair_weights.shape) != (nnz, k):
        raise UsageError("pair_weights", f"expected shape [nnz, k] = [{nnz}, {k}], got {tuple(pair_weights.shape)}")

    if ids is not None:
        ids = _int_tensor(ids, "ids", device)
        if tuple(ids.shape) != (B, k):
            raise UsageError("ids", f"expected shape [B, k] = [{B}, {k}] (cand_scores' shape), got {tuple(ids.shape)}")
    if pos_ids is not None:
        pos_ids = _int_tensor(pos_ids, "pos_ids", device)
        if tuple(pos_ids.shape) != (nnz,):
            raise UsageError("pos_ids", f"expected shape [nnz] = [{nnz}], got {tuple(pos_ids.shape)}")
    if pos_in_topk is not None:
        pos_in_topk = _bool_tensor(pos_in_topk, "pos_in_topk", device)
        if tuple(pos_in_topk.shape) != (nnz,):
            raise UsageError("pos_in_topk", f"expected shape [nnz] = [{nnz}], got {tuple(pos_in_topk.shape)}")

    need_ids = normalizer == "pairs" or (only_if_unretrieved and pos_in_topk is None)
    if need_ids and (ids is None or pos_ids is None):
        missing = "ids" if ids is None else "pos_ids"
        why = "normalizer='pairs'" if normalizer == "pairs" else "only_if_unretrieved=True without pos_in_topk"
        raise ValueError(f"{missing}: required with {why} (pass the search result's ids and pos_ids)")

    dtype = _compute_dtype(cand_scores, pos_scores)
    w = pair_weights.detach().to(device=device, dtype=dtype)
    w_bad = torch.stack([(~torch.isfinite(w)).any(), (w < 0).any()]).tolist()
    if w_bad[0]:
        raise UsageError("pair_weights", "contains NaN or Inf")
    if w_bad[1]:
        raise UsageError("pair_weights", "contains negative weights")

    # Query of every positive: [nnz].
    qidx = row_of_each(offsets)

    # match[i, j]: candidate j of positive i's query is positive i itself.
    match = ids[qidx] == pos_ids[:, None] if ids is not None and pos_ids is not None else None

    # Which positives take part.
    if only_if_unretrieved:
        if pos_in_topk is None:
            pos_in_topk = match.any(dim=1)
        retrieved_in_query = torch.zeros(B, dtype=torch.int64, device=device)
        retrieved_in_query.index_add_(0, qidx, pos_in_topk.to(torch.int64))
        used = pos_in_topk | (retrieved_in_query[qidx] == 0)
    else:
        used = torch.ones(nnz, dtype=torch.bool, device=device)

    # Which (positive, candidate) pairs count.
    if normalizer == "pairs":
        # A candidate is paired when it is a real row (not -1 padding) and not a positive of its query:
        # the reference's (relevant, non-relevant) pairs, whatever their weight.
        cand_is_pos = torch.zeros(B, k, dtype=torch.int64, device=device)
        cand_is_pos.index_add_(0, qidx, match.to(torch.int64))
        cand_ok = (ids >= 0) & (cand_is_pos == 0)
        mask = used[:, None] & cand_ok[qidx]
    else:
        mask = used[:, None] & (w > 0)

    # Masked entries are replaced before softplus so that -inf / garbage scores at padded or positive slots
    # give neither NaN values nor NaN gradients.
    diff = (cand_scores.to(dtype)[qidx] - pos_scores.to(dtype)[:, None]) * scale
    diff = torch.where(mask, diff, torch.zeros((), dtype=dtype, device=device))
    term = torch.where(mask, w * F.softplus(diff), torch.zeros((), dtype=dtype, device=device))

    q_sum = torch.zeros(B, dtype=dtype, device=device).index_add(0, qidx, term.sum(dim=1))
    pair_count = mask.sum(dim=1)
    q_cnt = torch.zeros(B, dtype=torch.int64, device=device).index_add(0, qidx, pair_count)
    has_pair = q_cnt > 0
    per_query = q_sum / q_cnt.clamp(min=1).to(dtype)  # 0 for queries without pairs
    n_q = has_pair.sum()
    loss = per_query.sum() / n_q.clamp(min=1).to(dtype)

    with torch.no_grad():
        n_pairs = pair_count.sum()
        nonzero = (mask & (w > 0)).sum()
        w_sum = torch.where(mask, w, torch.zeros((), dtype=dtype, device=device)).sum()
        vals = torch.stack([
            n_pairs.to(torch.float64), nonzero.to(torch.float64), w_sum.to(torch.float64),
            n_q.to(torch.float64), used.sum().to(torch.float64),
        ]).tolist()
    stats = {
        "pairs": vals[0],
        "nonzero_pairs": vals[1],
        "mean_weight": vals[2] / vals[0] if vals[0] > 0 else 0.0,
        "queries_with_pairs": vals[3],
        "frac_queries_with_pairs": vals[3] / B if B > 0 else 0.0,
        "positives_used": vals[4],
    }
    return loss, stats


# ---------------------------------------------------------------------------------------------- RankNet
def ranknet_loss(
    pos_scores: torch.Tensor,
    neg_scores: torch.Tensor,
    mask: Optional[Any] = None,
    score_scale: float = 1.0,
) -> torch.Tensor:
    """Plain RankNet: mean over the unmasked pairs of log(1 + exp(score_scale * (s_neg - s_pos))).

    pos_scores  float [*S]          one positive score per row
    neg_scores  float [*S, n] or [*S]  negatives of that row (or one negative per positive)
    mask        bool, neg_scores' shape: True = the pair counts (default: all)
    Returns a 0-d tensor; 0 (still connected to the inputs) when no pair is unmasked.
    """
    if not isinstance(pos_scores, torch.Tensor):
        raise UsageTypeError("pos_scores", f"expected a torch tensor, got {_describe(pos_scores)}")
    if not isinstance(neg_scores, torch.Tensor):
        raise UsageTypeError("neg_scores", f"expected a torch tensor, got {_describe(neg_scores)}")
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
