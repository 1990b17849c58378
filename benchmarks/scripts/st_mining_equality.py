"""drfast's mine_hard_negatives vs sentence-transformers' exact path (use_faiss=False), row for row, on SciFact.

Run from the repository root:

    DRFAST_DATA=/path/to/data python -m benchmarks.scripts.st_mining_equality [--data DIR] [--model M]

Both get the same vectors (all-MiniLM-L6-v2, encoded once and cached under --cache): a difference can only
come from the search or the filters. Every differing row is checked: it is explained when each candidate
that one side has and the other lacks scores within 1e-6 of another candidate of the query or of a filter
threshold (float rounding: drfast's inner product vs ST's cosine of the same unit vectors).
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks.scripts.st_common import LookupModel, cached_vectors, parser, scifact_pairs

CONFIGS = {
    "n-tuple, range 10-50, 5 negatives, relative_margin 0.05":
        dict(range_min=10, range_max=50, num_negatives=5, relative_margin=0.05, sampling_strategy="top",
             output_format="n-tuple"),
    "triplet, range_max 30, absolute_margin 0, max_score 0.9":
        dict(range_max=30, absolute_margin=0.0, max_score=0.9, sampling_strategy="top", output_format="triplet"),
}
TOL = 1e-6


def negatives_by_row(ds, fmt):
    """(anchor, positive) -> list of negatives, in output order (triplets grouped)."""
    cols = ds.column_names
    out = {}
    for row in ds:
        key = (row[cols[0]], row[cols[1]])
        negs = [row["negative"]] if fmt == "triplet" else [row[c] for c in cols if c.startswith("negative_")]
        out.setdefault(key, []).extend(negs)
    return out


def explained(query_vec, pos_vecs, doc_vecs, a, b, kwargs) -> bool:
    """Each text in one list and not the other scores within TOL of another candidate or of a threshold."""
    score = {t: float(np.dot(query_vec, doc_vecs[t])) for t in set(a) | set(b)}
    pos = min(float(np.dot(query_vec, p)) for p in pos_vecs)
    bounds = [kwargs.get("max_score"), kwargs.get("min_score")]
    if kwargs.get("absolute_margin") is not None:
        bounds.append(pos - kwargs["absolute_margin"])
    if kwargs.get("relative_margin") is not None:
        bounds.append(pos - abs(pos) * kwargs["relative_margin"])
    bounds = [x for x in bounds if x is not None]
    for t in set(a) ^ set(b):
        others = [s for u, s in score.items() if u != t] + bounds
        if not any(abs(score[t] - s) <= TOL for s in others):
            return False
    return True


def main() -> None:
    args = parser(__doc__).parse_args()
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from drfast.integrations.sentence_transformers import mine_hard_negatives

    anchors, positives, corpus = scifact_pairs(args.data, "train")
    vectors = cached_vectors(args.model, anchors, corpus + positives, args.cache)
    ds = Dataset.from_dict({"query": anchors, "positive": positives})
    print(f"SciFact train: {len(ds)} (query, positive) rows, {len(set(anchors))} queries, corpus {len(corpus)}")
    pos_of = {}
    for a, p in zip(anchors, positives):
        pos_of.setdefault(a, []).append(vectors["document"][p])
    # rows are compared per (anchor, positive): its n-tuple row, or its group of triplets
    print(f"| setting | rows ST | rows drfast | identical (anchor, positive) | differing | explained (within "
          f"{TOL:g}) | ST s | drfast s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, kwargs in CONFIGS.items():
        t0 = time.perf_counter()
        expected = st_mine(ds, LookupModel(vectors), corpus=corpus, use_faiss=False, verbose=False, **kwargs)
        t1 = time.perf_counter()
        got = mine_hard_negatives(ds, LookupModel(vectors), corpus=corpus, verbose=False, **kwargs)
        t2 = time.perf_counter()
        same_order = expected.to_dict() == got.to_dict()
        e, g = negatives_by_row(expected, kwargs["output_format"]), negatives_by_row(got, kwargs["output_format"])
        keys = list(dict.fromkeys(list(e) + list(g)))
        differing = [k for k in keys if e.get(k) != g.get(k)]
        ok = sum(explained(vectors["query"][k[0]], pos_of[k[0]], vectors["document"], e.get(k, []), g.get(k, []),
                           kwargs) for k in differing)
        print(f"| {name} | {len(expected)} | {len(got)} | {len(keys) - len(differing)} | {len(differing)} | "
              f"{ok} | {t1 - t0:.1f} | {t2 - t1:.1f} |" + ("" if same_order else " (row order differs)"))


if __name__ == "__main__":
    main()
