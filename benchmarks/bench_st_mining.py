"""Hard-negative mining from given embeddings: drfast's mine_hard_negatives vs sentence-transformers' own
(6.3.0), its exact path (use_faiss=False) and its faiss path (use_faiss=True, faiss-cpu IndexFlatIP).

    python -m pytest benchmarks/bench_st_mining.py -q              # N=200k rows
    python -m pytest benchmarks/bench_st_mining.py -q --runslow    # also N=1M (ST's exact path: ~6 GB peak)

Synthetic unit rows (d=384), 10k anchors with one positive each, range_max=100, num_negatives=3, "top",
triplets; every method gets the same vectors through a model that returns them (no encoding is timed).
Timed end to end (de-duplication, search, filters, dataset building), one round each. ST's exact path
runs with faiss_batch_size=1024 (its default, 16384, would hold a 16384 x N float32 score block: 13 GB at
N=200k); drfast uses its defaults (its search memory is O(batch x (k + block)), never O(batch x N);
first_pass="auto": the int8 two-stage search with AVX-512 VNNI, the exact scan elsewhere), and once more
with first_pass=None (the exact scan alone). The footnotes give each method's peak extra resident memory
(sampled every 5 ms) and whether the rows agree.
"""
from __future__ import annotations

import threading
import time
import types

import numpy as np
import psutil
import pytest
import torch

D, ANCHORS, RANGE_MAX, NUM_NEGATIVES = 384, 10_000, 100, 3
CASES = [pytest.param(200_000, id="200k"), pytest.param(1_000_000, id="1M", marks=pytest.mark.slow)]
METHODS = ["drfast", "drfast-exact-scan", "st-exact", "st-faiss"]


class ArrayModel:
    """The members of SentenceTransformer that mining uses; text "dI" is corpus row I, "qI" anchor I."""

    similarity_fn_name = "cosine"

    def __init__(self, docs, queries):
        self.docs, self.queries = docs, queries
        self.device = torch.device("cpu")
        self.model_card_data = types.SimpleNamespace(base_model="synthetic")

    def encode_document(self, texts, **kwargs):
        return self.docs[np.fromiter((int(t[1:]) for t in texts), np.int64, len(texts))]

    def encode_query(self, texts, **kwargs):
        return self.queries[np.fromiter((int(t[1:]) for t in texts), np.int64, len(texts))]

    def similarity(self, a, b):
        from sentence_transformers.util import cos_sim
        return cos_sim(a, b)

    def similarity_pairwise(self, a, b):
        from sentence_transformers.util import pairwise_cos_sim
        return pairwise_cos_sim(a, b)

    def get_embedding_dimension(self):
        return self.docs.shape[1]


def unit_rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    return torch.nn.functional.normalize(x, dim=1).numpy()


@pytest.fixture(scope="module", params=CASES)
def case(request):
    from datasets import Dataset

    n = request.param
    docs = unit_rows(n, 0)
    rng = np.random.default_rng(1)
    pos = rng.choice(n, size=ANCHORS, replace=False)
    queries = docs[pos] + 0.6 * unit_rows(ANCHORS, 2)  # each anchor near its positive
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    corpus = [f"d{i}" for i in range(n)]
    ds = Dataset.from_dict({"anchor": [f"q{i}" for i in range(ANCHORS)], "positive": [corpus[p] for p in pos]})
    size = f"{n // 10**6}M" if n >= 10**6 else f"{n // 1000}k"
    yield types.SimpleNamespace(name=f"N={size} d={D} anchors={ANCHORS // 1000}k", model=ArrayModel(docs, queries),
                                ds=ds, corpus=corpus, results={})


def peak_extra_rss(fn):
    """(result, seconds, peak resident bytes above the level before the call)."""
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        t.join()
    return out, seconds, max(peak[0], proc.memory_info().rss) - base


@pytest.mark.parametrize("method", METHODS)
def test_st_mining(record, case, method):
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from drfast.integrations.sentence_transformers import mine_hard_negatives

    kwargs = dict(corpus=case.corpus, range_max=RANGE_MAX, num_negatives=NUM_NEGATIVES, verbose=False)
    if method == "drfast":
        run = lambda: mine_hard_negatives(case.ds, case.model, **kwargs)
    elif method == "drfast-exact-scan":
        run = lambda: mine_hard_negatives(case.ds, case.model, first_pass=None, **kwargs)
    elif method == "st-exact":
        run = lambda: st_mine(case.ds, case.model, use_faiss=False, faiss_batch_size=1024, **kwargs)
    else:
        run = lambda: st_mine(case.ds, case.model, use_faiss=True, **kwargs)
    out, seconds, extra = peak_extra_rss(run)
    case.results[method] = out
    label = {"drfast": "drfast mine_hard_negatives", "drfast-exact-scan": "drfast, first_pass=None",
             "st-exact": "ST exact (use_faiss=False)",
             "st-faiss": "ST faiss (IndexFlatIP, CPU)"}[method]
    kind = {"drfast": "drfast", "drfast-exact-scan": "other"}.get(method, "baseline")
    record(case.name, label, kind, seconds=seconds)
    same = ""
    if method != "drfast" and "drfast" in case.results:
        same = ", same rows as drfast" if out.to_dict() == case.results["drfast"].to_dict() else \
            ", rows differ from drfast"
    record.note(f"{case.name} {label}: peak extra RSS {extra / 2**20:.0f} MiB, {len(out)} rows{same}")


NOTES = (f"range_max={RANGE_MAX}, num_negatives={NUM_NEGATIVES}, 'top', triplets, 1 positive per anchor; "
         "one timed round per method (end to end, from embeddings).",)
