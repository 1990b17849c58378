"""ADORE / RankNet losses against slow, loop-per-query references written from the paper's formula.

The reference of the reference: jingtaozhan/DRhard adore/train.py (see drfast/losses.py for what it does
and where drfast departs from it). ``test_matches_drhard_matrix_form`` re-expresses that script's
per-query matrix computation (list of top-k + appended positives, pos/neg pair matrices, normaliser
2 * num_pos_pairs) in numpy and checks the vectorised loss against it.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from drfast.train.losses import adore_loss, ranknet_loss


# ------------------------------------------------------------------------------------------ references
def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def adore_loss_reference(cand_scores, pos_scores, ids, positives, pair_weights, score_scale=1.0,
                         only_if_unretrieved=False, normalizer="pairs"):
    """ADORE's loss straight from the paper, in float64 with plain loops.

    L = 1/|Q'| * sum_{q in Q'} 1/|P_q| * sum_{(p, n) in P_q} w_pn * log(1 + exp(sigma * (s_n - s_p)))

    P_q: pairs (used positive p of q, candidate slot j holding a real row that is not a positive of q);
    with normalizer="nonzero" only the pairs with w_pn > 0. Used positives: all, or with
    only_if_unretrieved the ones among the top-k ids (all of them if none is). Q': queries with |P_q| > 0.
    Returns (loss, dL/dcand_scores [B, k], dL/dpos_scores [nnz], n_pairs, n_queries_with_pairs).
    """
    cs = np.asarray(cand_scores, np.float64)
    ps = np.asarray(pos_scores, np.float64)
    W = np.asarray(pair_weights, np.float64)
    B, k = cs.shape
    g_cand = np.zeros((B, k))
    g_pos = np.zeros(len(ps))
    per_query = []  # (query, [(i, j), ...])
    i0 = 0
    for b in range(B):
        mine = list(range(i0, i0 + len(positives[b])))
        i0 += len(positives[b])
        topk = set(int(x) for x in ids[b] if x >= 0)
        used = mine
        if only_if_unretrieved:
            inside = [i for i, p in zip(mine, positives[b]) if p in topk]
            used = inside if inside else mine
        pairs = []
        for i in used:
            for j in range(k):
                if ids[b, j] < 0 or ids[b, j] in positives[b]:
                    continue
                if normalizer == "nonzero" and not W[i, j] > 0:
                    continue
                pairs.append((i, j))
        if pairs:
            per_query.append((b, pairs))
    loss = 0.0
    n_pairs = 0
    for b, pairs in per_query:
        scale = 1.0 / (len(pairs) * len(per_query))
        n_pairs += len(pairs)
        for i, j in pairs:
            x = score_scale * (cs[b, j] - ps[i])
            loss += scale * W[i, j] * _softplus(x)
            g = scale * W[i, j] * score_scale * _sigmoid(x)
            g_cand[b, j] += g
            g_pos[i] -= g
    return loss, g_cand, g_pos, n_pairs, len(per_query)


def drhard_matrix_form(cand_scores, pos_scores, ids, positives, cutoff):
    """The DRhard script's per-query computation (with RankNet's sign), in numpy float64.

    Candidate list = the k retrieved ids, plus all positives appended when none was retrieved; labels;
    pos_pairs[a, c] = label_a > label_c, neg_pairs = its transpose; weights |rr(a) - rr(c)| from list
    positions with rr = 0 from the cutoff on; per-query sum / (2 * num_pos_pairs); mean over the batch.
    """
    cs = np.asarray(cand_scores, np.float64)
    ps = np.asarray(pos_scores, np.float64)
    B, k = cs.shape
    total = 0.0
    i0 = 0
    for b in range(B):
        pos_b = list(positives[b])
        s_pos = {p: ps[i0 + t] for t, p in enumerate(pos_b)}
        i0 += len(pos_b)
        lst = list(ids[b])
        y = list(cs[b])
        labels = [1 if r in pos_b else 0 for r in lst]
        if sum(labels) == 0:
            lst += pos_b
            y += [s_pos[p] for p in pos_b]
            labels += [1] * len(pos_b)
        y = np.array(y)
        lab = np.array(labels).reshape(-1, 1)
        rel = lab - lab.T
        pos_pairs = (rel > 0).astype(np.float64)
        neg_pairs = (rel < 0).astype(np.float64)
        d = y[:, None] - y[None, :]  # d[a, c] = y_a - y_c
        C = pos_pairs * np.logaddexp(0.0, -d) + neg_pairs * np.logaddexp(0.0, d)
        rr = 1.0 / np.arange(1, len(y) + 1)
        rr[cutoff:] = 0.0
        C = C * np.abs(rr[:, None] - rr[None, :])
        total += C.sum() / (2 * pos_pairs.sum())
    return total / B


# ------------------------------------------------------------------------------------------ test data
def make_case(rng, B=None, k=None, N=None, cutoff="random", max_pos=3, min_pos=0, extra_zero=0.0,
              pad_value="random", magnitude=3.0, dtype=torch.float64):
    """A batch as drfast's search returns it, plus independent random scores to differentiate.

    The ranking scores S [B, N] are rounded so that ties occur; ids / exact ranks / weights follow the
    contract (ties by lower row; rr(r) = 1/r if r <= cutoff else 0; weight 0 on positives and padding).
    """
    B = int(rng.integers(1, 9)) if B is None else B
    k = int(rng.integers(1, 13)) if k is None else k
    N = int(rng.integers(max(1, k // 2), 3 * k + 2)) if N is None else N
    if cutoff == "random":
        cutoff = [None, int(rng.integers(1, k + 3))][int(rng.integers(0, 2))]
    S = np.round(rng.normal(size=(B, N)), 1)
    rows = np.arange(N)
    ids = np.full((B, k), -1, np.int64)
    for b in range(B):
        order = np.lexsort((rows, -S[b]))[:k]
        ids[b, : len(order)] = order
    positives = []
    for _ in range(B):
        n = int(rng.integers(min_pos, max_pos + 1))
        positives.append(sorted(rng.choice(N, size=min(n, N), replace=False).tolist()))
    offsets = np.zeros(B + 1, np.int64)
    offsets[1:] = np.cumsum([len(p) for p in positives])
    pos_ids = np.array([p for ps in positives for p in ps], np.int64)
    ranks = np.array([1 + np.sum((S[b] > S[b, p]) | ((S[b] == S[b, p]) & (rows < p)))
                      for b, ps in enumerate(positives) for p in ps], np.int64)

    def rr(r):
        return 1.0 / r if cutoff is None or r <= cutoff else 0.0

    W = np.zeros((len(pos_ids), k), np.float32)
    i = 0
    for b, ps in enumerate(positives):
        for _ in ps:
            for j in range(k):
                if ids[b, j] >= 0 and ids[b, j] not in ps:
                    W[i, j] = abs(rr(ranks[i]) - rr(j + 1))
            i += 1
    if extra_zero > 0:
        W[rng.random(W.shape) < extra_zero] = 0.0

    cand = rng.normal(size=(B, k)) * magnitude
    if pad_value == "-inf":
        cand[ids < 0] = -np.inf
    elif pad_value == "nan":
        cand[ids < 0] = np.nan
    pos = rng.normal(size=len(pos_ids)) * magnitude
    return dict(
        cand=torch.tensor(cand, dtype=dtype, requires_grad=True),
        pos=torch.tensor(pos, dtype=dtype, requires_grad=True),
        offsets=torch.from_numpy(offsets), ids=torch.from_numpy(ids), pos_ids=torch.from_numpy(pos_ids),
        W=torch.from_numpy(W), positives=positives, ranks=ranks, cutoff=cutoff, S=S,
    )


def run(case, **kw):
    loss, stats = adore_loss(case["cand"], case["pos"], case["offsets"], case["W"],
                             ids=case["ids"], pos_ids=case["pos_ids"], **kw)
    g_cand, g_pos = torch.autograd.grad(loss, [case["cand"], case["pos"]], allow_unused=False)
    return loss, stats, g_cand, g_pos


def reference(case, score_scale=1.0, only_if_unretrieved=False, normalizer="pairs"):
    cand = case["cand"].detach().numpy()
    return adore_loss_reference(cand, case["pos"].detach().numpy(), case["ids"].numpy(), case["positives"],
                                case["W"].numpy(), score_scale, only_if_unretrieved, normalizer)


def assert_close(got, ref, rtol=1e-6, atol_floor=1e-300):
    """Relative to the largest reference value (gradients have many exact zeros); atol_floor allows a
    float32 result to underflow to 0 where the float64 reference is ~1e-47."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    atol = max(atol_floor, rtol * float(np.max(np.abs(ref), initial=0.0)))
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------------ ADORE
@pytest.mark.parametrize("normalizer", ["pairs", "nonzero"])
@pytest.mark.parametrize("only_if_unretrieved", [False, True])
@pytest.mark.parametrize("score_scale", [1.0, 20.0])
def test_matches_reference_on_random_batches(rng, score_scale, only_if_unretrieved, normalizer):
    for trial in range(6):
        case = make_case(rng, extra_zero=[0.0, 0.3][trial % 2], pad_value=["random", "-inf", "nan"][trial % 3])
        loss, stats, g_cand, g_pos = run(case, score_scale=score_scale, only_if_unretrieved=only_if_unretrieved,
                                         normalizer=normalizer)
        ref_loss, ref_gc, ref_gp, n_pairs, n_q = reference(case, score_scale, only_if_unretrieved, normalizer)
        assert loss.dtype == torch.float64
        assert_close(loss.item(), ref_loss)
        assert_close(g_cand.numpy(), ref_gc)
        assert_close(g_pos.numpy(), ref_gp)
        assert torch.isfinite(g_cand).all() and torch.isfinite(g_pos).all()
        assert stats["pairs"] == n_pairs
        assert stats["queries_with_pairs"] == n_q
        assert stats["frac_queries_with_pairs"] == pytest.approx(n_q / case["cand"].shape[0])
        if normalizer == "nonzero":
            assert stats["nonzero_pairs"] == n_pairs


def test_given_pos_in_topk_equals_computed(rng):
    for _ in range(5):
        case = make_case(rng)
        in_topk = torch.tensor([p in set(case["ids"][b].tolist())
                                for b, ps in enumerate(case["positives"]) for p in ps], dtype=torch.bool)
        a, _ = adore_loss(case["cand"], case["pos"], case["offsets"], case["W"], only_if_unretrieved=True,
                          ids=case["ids"], pos_ids=case["pos_ids"])
        b, _ = adore_loss(case["cand"], case["pos"], case["offsets"], case["W"], only_if_unretrieved=True,
                          pos_in_topk=in_topk, ids=case["ids"], pos_ids=case["pos_ids"])
        c, _ = adore_loss(case["cand"], case["pos"], case["offsets"], case["W"], only_if_unretrieved=True,
                          pos_in_topk=in_topk.numpy(), normalizer="nonzero")
        d = adore_loss_reference(case["cand"].detach().numpy(), case["pos"].detach().numpy(), case["ids"].numpy(),
                                 case["positives"], case["W"].numpy(), 1.0, True, "nonzero")[0]
        assert a.item() == b.item()
        assert_close(c.item(), d)


def test_float32_inputs(rng):
    for _ in range(5):
        case = make_case(rng, dtype=torch.float32)
        loss, _, g_cand, g_pos = run(case, score_scale=20.0, only_if_unretrieved=True)
        ref_loss, ref_gc, ref_gp, _, _ = reference(case, 20.0, True)
        assert loss.dtype == torch.float32 and g_cand.dtype == torch.float32
        assert_close(loss.item(), ref_loss, rtol=1e-5, atol_floor=1e-30)
        assert_close(g_cand.numpy(), ref_gc, rtol=1e-5, atol_floor=1e-30)
        assert_close(g_pos.numpy(), ref_gp, rtol=1e-5, atol_floor=1e-30)


def test_matches_drhard_matrix_form(rng):
    # The script's setting: no padding (N >= k), every query has a positive, cutoff <= k (so an appended
    # positive's list position and its exact rank both give rr = 0), and k > max_pos so that every list
    # holds a non-relevant document (the script asserts num_pos_pairs > 0).
    for _ in range(6):
        k = int(rng.integers(4, 13))
        case = make_case(rng, k=k, N=int(rng.integers(k, 4 * k)), cutoff=int(rng.integers(1, k + 1)), min_pos=1)
        # The script scores a retrieved positive at its slot in the list: make pos_scores agree.
        with torch.no_grad():
            i = 0
            for b, ps in enumerate(case["positives"]):
                for p in ps:
                    slot = (case["ids"][b] == p).nonzero()
                    if len(slot):
                        case["pos"][i] = case["cand"][b, int(slot[0, 0])]
                    i += 1
        loss, _, _, _ = run(case, only_if_unretrieved=True, normalizer="pairs")
        ref = drhard_matrix_form(case["cand"].detach().numpy(), case["pos"].detach().numpy(),
                                 case["ids"].numpy(), case["positives"], case["cutoff"])
        assert_close(loss.item(), ref)


def test_only_if_unretrieved_hand_example():
    # Query 0: positives 7 (retrieved at slot 1) and 9 (not retrieved) -> only 7 is used.
    # Query 1: positive 5, not retrieved -> used (appended).  Query 2: no positives.
    ids = torch.tensor([[3, 7, 4], [1, 2, 0], [6, 8, -1]])
    offsets = torch.tensor([0, 2, 3, 3])
    pos_ids = torch.tensor([7, 9, 5])
    W = torch.tensor([[0.5, 0.0, 1 / 6], [1.0, 0.5, 1 / 3], [1.0, 0.5, 0.0]], dtype=torch.float64)
    cand = torch.tensor([[0.3, 0.1, -0.2], [0.0, 0.4, 0.2], [1.0, 2.0, 3.0]], dtype=torch.float64,
                        requires_grad=True)
    pos = torch.tensor([0.1, -1.0, 0.7], dtype=torch.float64, requires_grad=True)
    sp = torch.nn.functional.softplus
    c, p = cand.detach(), pos.detach()
    q0 = (0.5 * sp(c[0, 0] - p[0]) + (1 / 6) * sp(c[0, 2] - p[0])) / 2
    q1 = (1.0 * sp(c[1, 0] - p[2]) + 0.5 * sp(c[1, 1] - p[2])) / 3  # the 0-weight pair counts
    loss, stats = adore_loss(cand, pos, offsets, W, only_if_unretrieved=True, ids=ids, pos_ids=pos_ids)
    assert loss.item() == pytest.approx(((q0 + q1) / 2).item(), rel=1e-12)
    assert stats["pairs"] == 5 and stats["positives_used"] == 2 and stats["queries_with_pairs"] == 2
    assert stats["frac_queries_with_pairs"] == pytest.approx(2 / 3)
    # With every positive: 9 joins query 0 (3 more pairs).
    loss_all, stats_all = adore_loss(cand, pos, offsets, W, ids=ids, pos_ids=pos_ids)
    q0_all = (0.5 * sp(c[0, 0] - p[0]) + (1 / 6) * sp(c[0, 2] - p[0])
              + 1.0 * sp(c[0, 0] - p[1]) + (1 / 3) * sp(c[0, 2] - p[1])) / 4
    assert loss_all.item() == pytest.approx(((q0_all + q1) / 2).item(), rel=1e-12)
    assert stats_all["pairs"] == 7 and stats_all["nonzero_pairs"] == 6


def test_large_scores_are_finite(rng):
    for normalizer in ("pairs", "nonzero"):
        case = make_case(rng, B=6, k=10, N=30, cutoff=None, max_pos=3, min_pos=1, magnitude=1.0)
        with torch.no_grad():
            case["cand"].copy_(torch.tensor(rng.choice([-1e4, 1e4], size=case["cand"].shape)))
            case["pos"].copy_(torch.tensor(rng.choice([-1e4, 1e4], size=case["pos"].shape)))
        for scale in (1.0, 20.0):
            loss, _, g_cand, g_pos = run(case, score_scale=scale, normalizer=normalizer)
            assert torch.isfinite(loss) and torch.isfinite(g_cand).all() and torch.isfinite(g_pos).all()
            ref_loss, ref_gc, ref_gp, _, _ = reference(case, scale, False, normalizer)
            assert_close(loss.item(), ref_loss)
            assert_close(g_cand.numpy(), ref_gc)
            assert_close(g_pos.numpy(), ref_gp)
    # float32 too: exp(20 * 2e4) overflows, softplus must not.
    cand = torch.tensor([[1e4, -1e4]], requires_grad=True)
    pos = torch.tensor([-1e4], requires_grad=True)
    loss, _ = adore_loss(cand, pos, torch.tensor([0, 1]), torch.tensor([[1.0, 0.5]]), score_scale=20.0,
                         normalizer="nonzero")
    loss.backward()
    assert loss.item() == pytest.approx(2e5, rel=1e-6)
    assert torch.isfinite(cand.grad).all() and torch.isfinite(pos.grad).all()


@pytest.mark.parametrize("normalizer", ["pairs", "nonzero"])
def test_all_zero_weights_give_zero_loss_and_zero_gradient(rng, normalizer):
    case = make_case(rng, B=5, k=8, N=20, min_pos=1)
    case["W"].zero_()
    loss, stats, g_cand, g_pos = run(case, normalizer=normalizer, only_if_unretrieved=True)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    assert torch.equal(g_cand, torch.zeros_like(g_cand)) and torch.equal(g_pos, torch.zeros_like(g_pos))
    assert stats["nonzero_pairs"] == 0 and stats["mean_weight"] == 0.0
    if normalizer == "nonzero":
        assert stats["pairs"] == 0 and stats["frac_queries_with_pairs"] == 0.0
    else:
        assert stats["pairs"] > 0  # zero-weight pairs still count in the reference's denominator


def test_no_positives_at_all(rng):
    B, k = 4, 5
    cand = torch.tensor(rng.normal(size=(B, k)), requires_grad=True)
    pos = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    loss, stats = adore_loss(cand, pos, torch.zeros(B + 1, dtype=torch.int64), torch.zeros(0, k),
                             ids=torch.arange(B * k).reshape(B, k), pos_ids=torch.zeros(0, dtype=torch.int64),
                             only_if_unretrieved=True)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    (g,) = torch.autograd.grad(loss, [cand])
    assert torch.equal(g, torch.zeros_like(g))
    assert stats["pairs"] == 0 and stats["frac_queries_with_pairs"] == 0.0


def test_bad_arguments_raise_naming_the_argument(rng):
    case = make_case(rng, B=3, k=4, N=10, min_pos=1)
    cand, pos, off, W, ids, pids = (case[n] for n in ("cand", "pos", "offsets", "W", "ids", "pos_ids"))
    nnz = len(pids)

    def call(**over):
        args = dict(cand_scores=cand, pos_scores=pos, pos_offsets=off, pair_weights=W, ids=ids, pos_ids=pids)
        args.update(over)
        return adore_loss(**args)

    with pytest.raises(ValueError, match="cand_scores"):
        call(cand_scores=cand.reshape(-1))
    with pytest.raises(ValueError, match="pair_weights"):
        call(pair_weights=W[:, :-1])
    with pytest.raises(ValueError, match="pair_weights"):
        call(pair_weights=torch.zeros(nnz + 1, 4))
    with pytest.raises(ValueError, match="pair_weights"):
        call(pair_weights=-W - 1)
    with pytest.raises(ValueError, match="pair_weights"):
        call(pair_weights=W + float("nan"))
    with pytest.raises(ValueError, match="pos_offsets"):
        call(pos_offsets=off[:-1])
    with pytest.raises(ValueError, match="pos_offsets"):
        call(pos_offsets=off.flip(0))
    with pytest.raises(ValueError, match="pos_scores"):
        call(pos_scores=torch.zeros(nnz + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="ids"):
        call(ids=ids[:, :-1])
    with pytest.raises(ValueError, match="pos_ids"):
        call(pos_ids=pids[:-1])
    with pytest.raises(ValueError, match="pos_in_topk"):
        call(pos_in_topk=torch.zeros(nnz + 2, dtype=torch.bool), only_if_unretrieved=True)
    with pytest.raises(ValueError, match="ids"):
        call(ids=None)  # the reference's denominator needs to know which candidates are positives
    with pytest.raises(ValueError, match="score_scale"):
        call(score_scale=0.0)
    with pytest.raises(ValueError, match="normalizer"):
        call(normalizer="mean")
    with pytest.raises(TypeError, match="cand_scores"):
        call(cand_scores=cand.detach().numpy())
    with pytest.raises(TypeError, match="pos_offsets"):
        call(pos_offsets=off.double())


def _tiny_batch():
    cand = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    pos = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    return dict(cand_scores=cand, pos_scores=pos, pos_offsets=torch.tensor([0, 1, 2]), pair_weights=torch.zeros(2, 3),
                ids=torch.tensor([[0, 1, 2], [3, 4, 5]]), pos_ids=torch.tensor([1, 7]))


_SHAPE_B1 = "expected shape [B+1] = [3] (B = cand_scores.shape[0]), got (2,)"
ADORE_MESSAGES = [  # (override, exception type, exact message): what users have always been told
    (lambda a: dict(cand_scores=a["cand_scores"].reshape(-1)), ValueError,
     "cand_scores: expected a 2-D tensor, got shape (6,)"),
    (lambda a: dict(cand_scores=a["cand_scores"].detach().numpy()), TypeError,
     "cand_scores: expected a torch tensor (scores must carry gradients), got numpy array of shape (2, 3) and dtype float64"),
    (lambda a: dict(cand_scores=torch.zeros(2, 3, dtype=torch.int64)), TypeError,
     "cand_scores: expected a floating point dtype, got torch.int64"),
    (lambda a: dict(normalizer="mean"), ValueError, "normalizer: expected one of ('pairs', 'nonzero'), got 'mean'"),
    (lambda a: dict(score_scale=0.0), ValueError, "score_scale: must be finite and > 0, got 0.0"),
    (lambda a: dict(score_scale="1"), TypeError, "score_scale: expected a number, got str"),
    (lambda a: dict(pos_offsets=a["pos_offsets"][:-1]), ValueError, "pos_offsets: " + _SHAPE_B1),
    (lambda a: dict(pos_offsets=a["pos_offsets"].double()), TypeError,
     "pos_offsets: expected an integer dtype, got torch.float64"),
    (lambda a: dict(pos_offsets=a["pos_offsets"].flip(0)), ValueError, "pos_offsets: must start at 0 and be non-decreasing"),
    (lambda a: dict(pos_scores=torch.zeros(3, dtype=torch.float64)), ValueError,
     "pos_scores: expected shape [nnz] = [2] (nnz = pos_offsets[-1]), got (3,)"),
    (lambda a: dict(pair_weights=[[0.0] * 3] * 2), TypeError,
     "pair_weights: expected a float tensor or numpy array, got list"),
    (lambda a: dict(pair_weights=torch.zeros(2, 3, dtype=torch.int64)), TypeError,
     "pair_weights: expected a floating point dtype, got torch.int64"),
    (lambda a: dict(pair_weights=torch.zeros(2, 4)), ValueError, "pair_weights: expected shape [nnz, k] = [2, 3], got (2, 4)"),
    (lambda a: dict(pair_weights=torch.full((2, 3), float("nan"))), ValueError, "pair_weights: contains NaN or Inf"),
    (lambda a: dict(pair_weights=-torch.ones(2, 3)), ValueError, "pair_weights: contains negative weights"),
    (lambda a: dict(ids=a["ids"][:, :-1]), ValueError,
     "ids: expected shape [B, k] = [2, 3] (cand_scores' shape), got (2, 2)"),
    (lambda a: dict(pos_ids=a["pos_ids"][:-1]), ValueError, "pos_ids: expected shape [nnz] = [2], got (1,)"),
    (lambda a: dict(pos_in_topk=torch.zeros(2, dtype=torch.int64), only_if_unretrieved=True), TypeError,
     "pos_in_topk: expected dtype bool, got torch.int64"),
    (lambda a: dict(pos_in_topk=torch.zeros(3, dtype=torch.bool), only_if_unretrieved=True), ValueError,
     "pos_in_topk: expected shape [nnz] = [2], got (3,)"),
    (lambda a: dict(ids=None), ValueError,
     "ids: required with normalizer='pairs' (pass the search result's ids and pos_ids)"),
    (lambda a: dict(pos_ids=None, normalizer="nonzero", only_if_unretrieved=True), ValueError,
     "pos_ids: required with only_if_unretrieved=True without pos_in_topk (pass the search result's ids and pos_ids)"),
]


@pytest.mark.parametrize("case", range(len(ADORE_MESSAGES)))
def test_adore_loss_error_messages_are_unchanged(case):
    """The checks were split out of adore_loss (issue 20): each bad argument still gets the same message,
    of the same type, and the first problem in the original order is the one reported."""
    override, kind, message = ADORE_MESSAGES[case]
    args = _tiny_batch()
    args.update(override(args))
    with pytest.raises(kind) as info:
        adore_loss(**args)
    assert str(info.value) == message and info.value.param == message.split(":")[0]


def test_adore_loss_takes_numpy_and_tensor_inputs_alike(rng):
    case = make_case(rng, B=5, k=6, N=20, min_pos=1)
    args = dict(pos_offsets=case["offsets"], pair_weights=case["W"], ids=case["ids"], pos_ids=case["pos_ids"])
    as_numpy = {n: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for n, v in args.items()}
    as_torch = {n: torch.as_tensor(v) for n, v in as_numpy.items()}
    for normalizer in ("pairs", "nonzero"):
        a, sa = adore_loss(case["cand"], case["pos"], normalizer=normalizer, only_if_unretrieved=True, **as_numpy)
        b, sb = adore_loss(case["cand"], case["pos"], normalizer=normalizer, only_if_unretrieved=True, **as_torch)
        assert torch.equal(a, b) and sa == sb


# ---------------------------------------------------------------------------------------------- RankNet
def test_ranknet_matches_loops(rng):
    for scale in (1.0, 20.0):
        B, n = int(rng.integers(1, 6)), int(rng.integers(1, 7))
        pos = torch.tensor(rng.normal(size=B) * 3, requires_grad=True)
        neg = torch.tensor(rng.normal(size=(B, n)) * 3, requires_grad=True)
        mask = torch.tensor(rng.random((B, n)) < 0.6)
        loss = ranknet_loss(pos, neg, mask, score_scale=scale)
        terms = [_softplus(scale * (neg[b, j].item() - pos[b].item()))
                 for b in range(B) for j in range(n) if mask[b, j]]
        assert_close(loss.item(), sum(terms) / len(terms) if terms else 0.0)
        loss_all = ranknet_loss(pos, neg, score_scale=scale)
        assert_close(loss_all.item(), np.mean([_softplus(scale * (neg[b, j].item() - pos[b].item()))
                                               for b in range(B) for j in range(n)]))
    same = ranknet_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0]))
    assert same.item() == pytest.approx((_softplus(-1.0) + _softplus(1.0)) / 2)


def test_ranknet_all_masked_and_errors():
    pos = torch.tensor([1.0, -1e4], requires_grad=True)
    neg = torch.tensor([[1e4, float("-inf")], [0.0, 1.0]], requires_grad=True)
    loss = ranknet_loss(pos, neg, torch.zeros(2, 2, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(pos.grad, torch.zeros(2)) and torch.equal(neg.grad, torch.zeros(2, 2))
    big = ranknet_loss(pos, neg, torch.tensor([[True, False], [True, True]]), score_scale=20.0)
    assert torch.isfinite(big)
    with pytest.raises(ValueError, match="neg_scores"):
        ranknet_loss(pos, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="mask"):
        ranknet_loss(pos, neg, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="score_scale"):
        ranknet_loss(pos, neg, score_scale=-1.0)
