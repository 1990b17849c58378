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
