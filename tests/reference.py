"""Plain numpy reference of the fused search: builds the full [B, N] score matrix (tests only)."""
from __future__ import annotations

import numpy as np


def reference_search(queries, docs, k, positives, cutoff=None):
    """Returns a dict with the contract's outputs, scores in float64."""
    q = np.asarray(queries, np.float64)
    S = q @ np.asarray(docs, np.float64).T
    B, N = S.shape
    rows = np.arange(N)
    ids = np.full((B, k), -1, np.int64)
    scores = np.full((B, k), -np.inf)
    for b in range(B):
        order = np.lexsort((rows, -S[b]))[:k]  # score descending, then lower row
        ids[b, : len(order)] = order
        scores[b, : len(order)] = S[b, order]
    pos_ids = np.array([p for ps in positives for p in ps], np.int64)
    pos_scores = np.array([S[b, p] for b, ps in enumerate(positives) for p in ps])
    pos_ranks = np.array([1 + np.sum((S[b] > S[b, p]) | ((S[b] == S[b, p]) & (rows < p)))
                          for b, ps in enumerate(positives) for p in ps], np.int64)
    out = dict(ids=ids, scores=scores, pos_ids=pos_ids, pos_scores=pos_scores, pos_ranks=pos_ranks)
    if cutoff:
        out["pair_weights"] = reference_weights(ids, positives, pos_ranks, cutoff)
    return out


def reference_weights(ids, positives, pos_ranks, cutoff):
    def rr(r):
        return 1.0 / r if r <= cutoff else 0.0

    B, k = ids.shape
    w = []
    i = 0
    for b, ps in enumerate(positives):
        for _ in ps:
            w.append([0.0 if ids[b, j] < 0 or ids[b, j] in ps else abs(rr(pos_ranks[i]) - rr(j + 1))
                      for j in range(k)])
            i += 1
    return np.array(w, np.float64).reshape(len(w), k)


def random_positives(rng, B, N, max_per_query=3):
    """Ragged positives, including queries with none."""
    return [sorted(rng.choice(N, size=min(N, int(rng.integers(0, max_per_query + 1))), replace=False).tolist())
            for _ in range(B)]


def integer_embeddings(rng, shape, dtype, low=-3, high=3):
    """Small integers: every dot product is exact in float32 (and the values in float16), so ties are real."""
    return rng.integers(low, high + 1, size=shape).astype(dtype)


def reference_pairwise_errors(pos_offsets, pos_ranks, k):
    """Plain-Python loop over queries and positives: per query (total, top-k) pairwise errors, where a
    positive's errors are the negatives ranked above it (its rank - 1 - the other positives above it)."""
    total, topk = [], []
    for q in range(len(pos_offsets) - 1):
        ranks = [int(r) for r in pos_ranks[pos_offsets[q]:pos_offsets[q + 1]]]
        t = tk = 0
        for r in ranks:
            errors = r - 1 - sum(1 for other in ranks if other < r)
            t += errors
            tk += min(errors, k)
        total.append(t)
        topk.append(tk)
    return total, topk


def reference_error_summary(total, topk, k, fractions):
    """The aggregates of drfast.stats.summarize, with loops, str lengths for decades and a full sort."""
    n = len(total)
    out = {"queries": n, "k": k, "mean_total_errors": sum(total) / n if n else 0.0,
           "mean_topk_errors": sum(topk) / n if n else 0.0, "total_errors": sum(total), "topk_errors": sum(topk),
           "distribution": {}, "hardest_share": {}}
    for kind, values in (("total", total), ("topk", topk)):
        whole = sum(values)
        bins = {}
        for v in values:
            b = 0 if v == 0 else len(str(v))  # 1 + floor(log10 v)
            queries, errors = bins.get(b, (0, 0))
            bins[b] = (queries + 1, errors + v)
        rows = []
        for b in range(max(bins) + 1 if bins else 1):
            queries, errors = bins.get(b, (0, 0))
            rows.append({"low": 0 if b == 0 else 10 ** (b - 1), "high": 1 if b == 0 else 10 ** b,
                         "queries": queries, "query_share": queries / n if n else 0.0,
                         "errors": errors, "error_share": errors / whole if whole else 0.0})
        out["distribution"][kind] = rows
        ordered = sorted(values, reverse=True)
        shares = {}
        for f in fractions:
            m = 0
            while m < n and m < f * n - 1e-9:  # the smallest m with m >= f * n
                m += 1
            shares[f"{f * 100:g}%"] = (sum(ordered[:m]) / whole) if whole else 0.0
        out["hardest_share"][kind] = shares
    return out


def first_pass_reference(emb, kind, refine=True):
    """The first-pass copy by the float64 torch formulation of drfast.search.first_pass's docstring
    (the numba build's reference): codes, sums and scales bit for bit, norms up to summation order."""
    import torch
    from drfast.search import first_pass as TS

    x = torch.as_tensor(np.asarray(emb, dtype=np.float32)).double()
    N, d = x.shape
    out = {"codes": np.zeros((N, TS.padded_dim(d, kind)), np.int8 if kind == "int8" else np.uint16)}
    g = TS.gamma(d + 8)
    xn = TS.row_norms(x)
    if kind == "int8":
        a, x8, xh = TS.quantize_int8(x)
        out["codes"][:, :d] = x8.to(torch.int8).numpy()
        out["sums"] = x8.sum(1).to(torch.int32).numpy()
    else:
        xb, xh = TS.quantize_bf16(x)
        out["codes"][:, :d] = xb.view(torch.int16).numpy().view(np.uint16)
        a = torch.ones(N, dtype=torch.float32)
    out["stats"] = torch.stack([a, TS.up32(TS.row_norms(x - xh) + g * xn, d), TS.up32(TS.row_norms(xh), d)]).numpy()
    if refine and kind == "int8":
        a2, r8, rh = TS.quantize_int8(x - xh)
        xh2 = xh + rh
        out["res_codes"] = np.zeros_like(out["codes"])
        out["res_codes"][:, :d] = r8.to(torch.int8).numpy()
        out["res_sums"] = r8.sum(1).to(torch.int32).numpy()
        out["res_stats"] = torch.stack([a2, TS.up32(TS.row_norms(x - xh2) + g * xn, d), TS.up32(TS.row_norms(xh2), d),
                                        TS.up32(TS.row_norms(rh), d)]).numpy()
    return out
