"""TriSampler: region on constructed geometry, closed-form probabilities, sampling statistics, trisample."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

import drfast
from drfast.negatives.trisampler import TriSamplerConfig, sample_negatives, trisample, trisampler_probabilities


def polar2(deg: float, r: float = 1.0) -> list:
    a = math.radians(deg)
    return [r * math.cos(a), r * math.sin(a)]


def sph3(polar_deg: float, azim_deg: float, r: float = 1.0) -> list:
    t, p = math.radians(polar_deg), math.radians(azim_deg)
    return [r * math.sin(t) * math.cos(p), r * math.sin(t) * math.sin(p), r * math.cos(t)]


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def reference_probs(q, pos, cand, mask, cfg):
    """The formulas with plain loops in float64 (numpy): region, E, R and their combination."""
    q, pos, cand = np.asarray(q, float), np.asarray(pos, float), np.asarray(cand, float)
    B, K, _ = cand.shape
    out = np.zeros((B, K))
    c, w = cfg.score_scale, cfg.positive_weight
    for b in range(B):
        sp = q[b] @ pos[b]
        ap = math.degrees(math.acos(np.clip(sp / (np.linalg.norm(q[b]) * np.linalg.norm(pos[b])), -1, 1)))
        adm, E, R = [], [], []
        for j in range(K):
            sn = q[b] @ cand[b, j]
            if not np.linalg.norm(cand[b, j]) > 0:
                continue  # no angle: outside the region
            an = math.degrees(math.acos(np.clip(sn / (np.linalg.norm(q[b]) * np.linalg.norm(cand[b, j])), -1, 1)))
            if mask[b][j] and abs(ap - an) <= cfg.max_angle_deg:
                adm.append(j)
                E.append(math.exp(-((c * (sn - sp)) ** 2) / cfg.tau))
                R.append(max(0.0, c * (pos[b] @ cand[b, j] - sn)))
        if not adm:
            continue
        E, R = np.array(E), np.array(R)
        if w == 0 or R.sum() == 0:
            p = E / E.sum()
        elif cfg.combine == "mixture":
            p = (1 - w) * E / E.sum() + w * R / R.sum()
        else:
            p = E * R ** w
            p = p / p.sum()
        out[b, adm] = p
    return out


# ------------------------------------------------------------------------------------------ the region
def test_region_2d_boundary_just_inside_and_outside():
    # q along x, d+ at 30°: the region is candidates whose angle to q is in [0°, 90°] (gap <= 60°).
    q, pos = t64([[1.0, 0.0]]), t64([polar2(30.0, 2.0)])
    angles = [89.99, 90.01, -29.99, 150.0, 0.0, -80.0, -90.01, 30.0]
    # -80°: 80° from q (gap 50°, in) although 110° from d+: the bound is on the angles seen from q.
    expect = [True, False, True, False, True, True, False, True]
    cand = t64([[polar2(a, r) for a, r in zip(angles, [0.5, 3.0, 1.0, 1.0, 7.0, 0.2, 1.0, 1.5])]])
    mask = torch.ones(1, len(angles), dtype=torch.bool)
    probs, empty = trisampler_probabilities(q, pos, cand, mask, TriSamplerConfig(positive_weight=0.0),
                                            return_empty=True)
    assert (probs[0] > 0).tolist() == expect
    assert not empty[0]
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_region_3d_with_configured_bound():
    # q along z, d+ at polar 20°; bound 35°: kept iff polar angle of d- in [0°, 55°] whatever the azimuth.
    q, pos = t64([[0.0, 0.0, 3.0]]), t64([sph3(20.0, 45.0)])
    polars = [54.99, 55.01, 10.0, 0.0, 54.99, 55.01, 120.0]
    azims = [0.0, 0.0, 200.0, 0.0, 300.0, 123.0, 10.0]
    cand = t64([[sph3(t, a, r) for t, a, r in zip(polars, azims, [1, 2, 3, 4, 5, 6, 7])]])
    mask = torch.ones(1, len(polars), dtype=torch.bool)
    cfg = TriSamplerConfig(max_angle_deg=35.0, combine="mixture", positive_weight=0.3)
    probs = trisampler_probabilities(q, pos, cand, mask, cfg)
    assert (probs[0] > 0).tolist() == [True, False, True, True, True, False, False]
    np.testing.assert_allclose(probs.numpy(), reference_probs(q, pos, cand, mask, cfg), rtol=1e-10, atol=1e-15)


def test_lower_side_of_the_band():
    # d+ at 100° from q: the band is [40°, 160°]; candidates nearer q than 40° (much harder than d+) are out.
    q, pos = t64([[1.0, 0.0]]), t64([polar2(100.0)])
    cand = t64([[polar2(40.01), polar2(39.99), polar2(159.99), polar2(160.01)]])
    probs = trisampler_probabilities(q, pos, cand, torch.ones(1, 4, dtype=torch.bool), TriSamplerConfig())
    assert (probs[0] > 0).tolist() == [True, False, True, False]


# --------------------------------------------------------------------------------------- probabilities
def _two_in_region():
    q = t64([[2.0, 0.0, 0.0]])
    pos = t64([[1.5, 1.0, 0.0]])
    cand = t64([[[1.2, 0.7, 0.4], [0.9, 1.1, -0.2], [0.4, 0.8, 0.1]]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    return q, pos, cand, mask


def _closed_form_terms(q, pos, cand, c, tau):
    q, pos, cand = q[0].numpy(), pos[0].numpy(), cand[0].numpy()
    sp = q @ pos
    sn = cand @ q
    E = np.exp(-((c * (sn - sp)) ** 2) / tau)
    R = np.maximum(0.0, c * (cand @ pos - sn))
    return E, R


@pytest.mark.parametrize("tau,scale", [(4.0, 1.0), (0.5, 1.0), (4.0, 3.0)])
def test_exp_term_ratio_matches_closed_form(tau, scale):
    q, pos, cand, mask = _two_in_region()
    cfg = TriSamplerConfig(tau=tau, score_scale=scale, positive_weight=0.0)
    p = trisampler_probabilities(q, pos, cand, mask, cfg)[0].numpy()
    assert (p > 0).all()
    E, _ = _closed_form_terms(q, pos, cand, scale, tau)
    for i, j in itertools.combinations(range(3), 2):
        assert p[i] / p[j] == pytest.approx(E[i] / E[j], rel=1e-6)
    sp, sn = float(q[0] @ pos[0]), (cand[0] @ q[0]).numpy()
    explicit = math.exp(-(scale ** 2) * ((sn[0] - sp) ** 2 - (sn[1] - sp) ** 2) / tau)
    assert p[0] / p[1] == pytest.approx(explicit, rel=1e-6)


def test_product_ratio_includes_positive_assisted_factor():
    q, pos, cand, mask = _two_in_region()
    E, R = _closed_form_terms(q, pos, cand, 1.0, 4.0)
    assert (R > 0).all()  # all three lie towards d+ (s(d+,d-) > s(q,d-)), so the ratio is defined
    for w in (1.0, 0.5):
        p = trisampler_probabilities(q, pos, cand, mask, TriSamplerConfig(combine="product", positive_weight=w))
        p = p[0].numpy()
        for i, j in itertools.combinations(range(3), 2):
            assert p[i] / p[j] == pytest.approx((E[i] / E[j]) * (R[i] / R[j]) ** w, rel=1e-6)


def test_mixture_matches_closed_form():
    q, pos, cand, mask = _two_in_region()
    E, R = _closed_form_terms(q, pos, cand, 1.0, 4.0)
    for w in (0.25, 1.0):
        p = trisampler_probabilities(q, pos, cand, mask, TriSamplerConfig(positive_weight=w))[0].numpy()
        np.testing.assert_allclose(p, (1 - w) * E / E.sum() + w * R / R.sum(), rtol=1e-6)


def test_product_zero_relu_drops_candidate_and_all_zero_falls_back():
    q, pos = t64([[1.0, 0.0]]), t64([polar2(40.0)])
    # polar -20°: nearer q than d+ (R = 0); polar 50°: nearer d+ (R > 0).
    cand = t64([[polar2(-20.0), polar2(50.0)]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    prod = trisampler_probabilities(q, pos, cand, mask, TriSamplerConfig(combine="product", positive_weight=1.0))
    assert prod[0, 0] == 0 and prod[0, 1] == pytest.approx(1.0)
    mix = trisampler_probabilities(q, pos, cand, mask, TriSamplerConfig(positive_weight=0.5))
    assert mix[0, 0] > 0  # the mixture keeps the exp term's support
    # Only R = 0 candidates: both modes fall back to the exp term alone.
    cand2 = t64([[polar2(-20.0), polar2(5.0)]])
    E, _ = _closed_form_terms(q, pos, cand2, 1.0, 4.0)
    for combine in ("mixture", "product"):
        p = trisampler_probabilities(q, pos, cand2, mask, TriSamplerConfig(combine=combine, positive_weight=1.0))
        np.testing.assert_allclose(p[0].numpy(), E / E.sum(), rtol=1e-12)


def test_masked_padded_and_empty_rows(rng):
    B, K, d = 5, 12, 6
    q = torch.tensor(rng.standard_normal((B, d)))
    pos = q + 0.3 * torch.tensor(rng.standard_normal((B, d)))
    cand = torch.tensor(rng.standard_normal((B, K, d)))
    mask = torch.tensor(rng.random((B, K)) < 0.7)
    cand[1, 3] = float("nan")                 # padding vectors may hold anything
    mask[1, 3] = False
    cand[2, 5] = 0.0                          # a zero vector has no angle
    mask[2, 5] = True
    mask[4] = False                           # nothing admissible
    cfg = TriSamplerConfig(max_angle_deg=90.0)
    probs, empty = trisampler_probabilities(q, pos, cand, mask, cfg, return_empty=True)
    assert torch.isfinite(probs).all()
    assert (probs[~mask] == 0).all() and probs[2, 5] == 0
    assert empty[4] and (probs[4] == 0).all()
    sums = probs.sum(1)
    assert torch.allclose(sums[~empty], torch.ones_like(sums[~empty]), atol=1e-12)
    ref = reference_probs(q.numpy(), pos.numpy(), np.nan_to_num(cand.numpy()), mask.tolist(), cfg)
    ref[2, 5] = 0.0
    np.testing.assert_allclose(probs.numpy(), ref, rtol=1e-9, atol=1e-15)
    assert empty.tolist() == (ref.sum(1) == 0).tolist()


def test_zero_norm_positive_row_is_empty():
    q, pos = t64([[1.0, 0.0], [1.0, 0.0]]), t64([[0.0, 0.0], [1.0, 1.0]])
    cand = t64([[[1.0, 0.1]], [[1.0, 0.1]]])
    probs, empty = trisampler_probabilities(q, pos, cand, torch.ones(2, 1, dtype=torch.bool), return_empty=True)
    assert empty.tolist() == [True, False] and probs[0, 0] == 0 and probs[1, 0] == 1


def test_large_scores_do_not_underflow():
    # (s- - s+)^2 / tau around 1e4 for every candidate: an unshifted exp would give an all-zero row.
    q, pos = t64([[100.0, 0.0]]), t64([polar2(10.0, 100.0)])
    cand = t64([[polar2(40.0, 100.0), polar2(45.0, 100.0)]])
    cfg = TriSamplerConfig(positive_weight=0.0, tau=1.0)
    p = trisampler_probabilities(q, pos, cand, torch.ones(1, 2, dtype=torch.bool), cfg)
    assert p.sum().item() == pytest.approx(1.0) and p[0, 0] > p[0, 1]


# ------------------------------------------------------------------------------------------- sampling
def test_single_draw_frequencies_match_probabilities():
    p = torch.tensor([0.05, 0.0, 0.4, 0.15, 0.0, 0.3, 0.1], dtype=torch.float64)
    draws = 200_000
    g = torch.Generator().manual_seed(1234)
    idx = sample_negatives(p.expand(draws, -1), 1, g)[:, 0]
    counts = torch.bincount(idx, minlength=7).numpy()
    assert counts[1] == 0 and counts[4] == 0
    nz = p.numpy() > 0
    chi2, pval = stats.chisquare(counts[nz], draws * p.numpy()[nz])
    assert pval > 1e-4, (chi2, pval)


def test_ordered_pair_frequencies_match_sequential_without_replacement():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    draws = 200_000
    g = torch.Generator().manual_seed(99)
    idx = sample_negatives(torch.tensor(p).expand(draws, -1), 2, g).numpy()
    assert (idx[:, 0] != idx[:, 1]).all() and (idx != 4).all()
    pairs = [(i, j) for i in range(4) for j in range(4) if i != j]
    expected = np.array([p[i] * p[j] / (1 - p[i]) for i, j in pairs]) * draws
    code = idx[:, 0] * 5 + idx[:, 1]
    counts = np.bincount(code, minlength=25)[[i * 5 + j for i, j in pairs]]
    assert counts.sum() == draws
    chi2, pval = stats.chisquare(counts, expected)
    assert pval > 1e-4, (chi2, pval)


def test_trisampler_frequencies_end_to_end():
    q, pos, cand, mask = _two_in_region()
    probs = trisampler_probabilities(q, pos, cand, mask, TriSamplerConfig(positive_weight=0.5))
    draws = 100_000
    idx = sample_negatives(probs.expand(draws, -1), 1, torch.Generator().manual_seed(5))[:, 0]
    counts = torch.bincount(idx, minlength=3).numpy()
    _, pval = stats.chisquare(counts, draws * probs[0].numpy())
    assert pval > 1e-4


def test_no_duplicates_and_seed_reproducible(rng):
    probs = torch.tensor(rng.random((300, 20))) * torch.tensor(rng.random((300, 20)) < 0.6)
    a = sample_negatives(probs, 5, torch.Generator().manual_seed(7))
    b = sample_negatives(probs, 5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    for row, pr in zip(a.tolist(), probs):
        got = [x for x in row if x >= 0]
        assert len(got) == len(set(got)) == min(5, int((pr > 0).sum()))
        assert all(pr[x] > 0 for x in got)
        assert row[len(got):] == [-1] * (5 - len(got))  # padding only at the end


def test_fewer_admissible_than_n():
    probs = torch.tensor([[0.0, 0.7, 0.0, 0.3, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                          [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]], dtype=torch.float64)
    out = sample_negatives(probs, 4, torch.Generator().manual_seed(0))
    assert out[0].tolist() == [1, 3, -1, -1]          # the whole support, by probability, then -1
    assert out[1].tolist() == [-1, -1, -1, -1]
    assert len(set(out[2].tolist())) == 4 and (out[2] >= 0).all()
    # Fallback: best finite scores among positions not already taken; -inf positions never used.
    fb = torch.tensor([[9.0, 8.0, 1.0, 7.0, 5.0, float("-inf")],
                       [float("-inf")] * 5 + [2.0],
                       [0.0] * 6], dtype=torch.float64)
    out = sample_negatives(probs, 4, torch.Generator().manual_seed(0), fallback_scores=fb)
    assert out[0].tolist() == [1, 3, 0, 4]
    assert out[1].tolist() == [5, -1, -1, -1]
    # More slots than candidates.
    out = sample_negatives(probs[:1, :3], 5)
    assert out.tolist() == [[1, -1, -1, -1, -1]]


def test_exactly_n_admissible_takes_all():
    probs = torch.tensor([[0.5, 0.0, 0.25, 0.25]], dtype=torch.float64)
    out = sample_negatives(probs, 3)
    assert sorted(out[0].tolist()) == [0, 2, 3]


# ------------------------------------------------------------------------------------------- trisample
def _flat(rng, N=300, d=12):
    docs = rng.standard_normal((N, d)).astype(np.float32)
    return docs, drfast.FlatIndex(docs)


@pytest.mark.parametrize("fill", ["pad", "top"])
def test_trisample_on_flat_index(rng, fill):
    docs, index = _flat(rng)
    B, k = 8, 40
    q = torch.tensor(rng.standard_normal((B, 12)), dtype=torch.float32)
    positives = [[int(x) for x in rng.choice(300, size=1 + b % 3, replace=False)] for b in range(B)]
    positives[0] = [int(torch.topk(torch.from_numpy(docs) @ q[0], 1).indices[0])]  # a retrieved positive
    cfg = TriSamplerConfig(n_negatives=6, fill=fill, max_angle_deg=20.0, seed=3)
    out = trisample(index, q, positives, k=k, config=cfg)
    assert out.shape == (B, 6) and out.dtype == torch.int64
    scores = q.double() @ torch.from_numpy(docs).double().T
    topk = torch.topk(scores, k, dim=1).indices
    for b in range(B):
        got = [x for x in out[b].tolist() if x >= 0]
        assert len(got) == len(set(got))
        assert set(got) <= set(topk[b].tolist())
        assert not set(got) & set(positives[b])
        p = docs[positives[b][0]].astype(np.float64)
        qb = q[b].double().numpy()
        ang = lambda v: math.degrees(math.acos(np.clip(qb @ v / (np.linalg.norm(qb) * np.linalg.norm(v)), -1, 1)))  # noqa: E731
        in_region = [abs(ang(p) - ang(docs[x].astype(np.float64))) <= 20.0 for x in got]
        n_region = sum(abs(ang(p) - ang(docs[x].astype(np.float64))) <= 20.0
                       for x in topk[b].tolist() if x not in positives[b])
        if fill == "pad":
            assert all(in_region) and len(got) == min(6, n_region)
        else:
            assert len(got) == 6  # 40 candidates minus at most 3 positives: always enough to fill
            assert all(in_region[: min(6, n_region)])
    assert torch.equal(out, trisample(index, q, positives, k=k, config=cfg))  # seeded


def test_trisample_k_larger_than_corpus_and_scalar_positives(rng):
    docs, index = _flat(rng, N=10, d=4)
    q = torch.tensor(rng.standard_normal((3, 4)), dtype=torch.float32)
    out = trisample(index, q.numpy(), [0, 1, 2], k=50,
                    config=TriSamplerConfig(n_negatives=12, max_angle_deg=180.0, positive_weight=0.0))
    for b in range(3):
        got = out[b].tolist()
        assert sorted(got[:9]) == sorted(set(range(10)) - {b})  # everything but the positive, then -1
        assert got[9:] == [-1, -1, -1]


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("field,value", [
    ("max_angle_deg", -1.0), ("max_angle_deg", 181.0), ("max_angle_deg", float("nan")),
    ("tau", 0.0), ("tau", "4"), ("positive_weight", 1.5), ("positive_weight", -0.1),
    ("combine", "sum"), ("score_scale", 0.0), ("n_negatives", 0), ("n_negatives", 2.0),
    ("n_negatives", True), ("fill", "zeros"), ("seed", 1.5),
])
def test_bad_config(field, value):
    q, pos, cand, mask = _two_in_region()
    cfg = TriSamplerConfig(**{field: value})
    with pytest.raises((ValueError, TypeError), match=field):  # TypeError for a wrong type
        trisampler_probabilities(q, pos, cand, mask, cfg)


def test_bad_arguments():
    q, pos, cand, mask = _two_in_region()
    with pytest.raises(ValueError, match="pos"):
        trisampler_probabilities(q, pos[:, :2], cand, mask)
    with pytest.raises(ValueError, match="cand"):
        trisampler_probabilities(q, pos, cand[:, :, :2], mask)
    with pytest.raises(ValueError, match="cand_mask"):
        trisampler_probabilities(q, pos, cand, mask.int())
    with pytest.raises(ValueError, match="cand_mask"):
        trisampler_probabilities(q, pos, cand, mask[:, :2])
    with pytest.raises(ValueError, match="q"):
        trisampler_probabilities(q.long(), pos, cand, mask)
    p = torch.tensor([[0.5, 0.5]])
    with pytest.raises(ValueError, match="n"):
        sample_negatives(p, 0)
    with pytest.raises(ValueError, match="probs"):
        sample_negatives(-p, 1)
    with pytest.raises(ValueError, match="probs"):
        sample_negatives(p[0], 1)
    with pytest.raises(ValueError, match="generator"):
        sample_negatives(p, 1, generator=3)
    with pytest.raises(ValueError, match="fallback_scores"):
        sample_negatives(torch.tensor([[1.0, 0.0]]), 2, fallback_scores=torch.zeros(1, 3))
    index = drfast.FlatIndex(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="positives_rows"):
        trisample(index, torch.ones(2, 4), [[0]], k=2)
    with pytest.raises(ValueError, match="positives_rows"):
        trisample(index, torch.ones(2, 4), [[0], []], k=2)
    with pytest.raises(ValueError, match="k"):
        trisample(index, torch.ones(2, 4), [[0], [1]], k=0)
