"""Negatives for a whole BEIR split: what `drfast mine` and STAR's static negatives run."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from drfast.common.errors import UsageError
from drfast.index.flat import FlatIndex
from drfast.negatives.mining import MiningConfig, _check_config, mine_from_bm25, mine_from_index
from drfast.negatives.trisampler import trisample
from drfast.pipelines.corpus import corpus_embeddings


def mine_split(data: Any, encoders: Any, *, source: str = "model", config: Optional[MiningConfig] = None,
               cache_dir: Any = None, dtype: str = "float16", encode_batch_size: int = 32,
               query_batch_size: int = 64, first_pass: Optional[str] = None,
               trisampler: Any = None) -> Mapping[str, list]:
    """Negatives {qid: [row]} for a loaded split's queries with positives (drfast.data.Dataset):
    BM25's (source "bm25"), or the model's from a flat index of its cached corpus embeddings (source
    "model"); with a `trisampler` config, TriSampler draws from the model's top `config.depth` instead."""
    config = _check_config(config)
    qids = sorted(data.positives)
    if source == "bm25" and trisampler is None:
        return mine_from_bm25(data.corpus.texts(range(len(data.corpus))), data.corpus.doc_ids,  # no list of N ids
                              {q: data.queries[q] for q in qids}, data.positives, config)
    if source not in ("model", "bm25"):
        raise UsageError("source", f"expected 'model' or 'bm25', got {source!r}")
    emb, doc_ids = corpus_embeddings(data.corpus, encoders, cache_dir=cache_dir, dtype=dtype,
                                     encode_batch_size=encode_batch_size)
    index = FlatIndex(emb, doc_ids, first_pass=first_pass)
    q_emb = encoders.query_encoder.encode([data.queries[q] for q in qids], batch_size=query_batch_size)
    pos_rows = [data.corpus.rows(data.positives[q]).tolist() for q in qids]
    if trisampler is None:
        return mine_from_index(index, q_emb, qids, pos_rows, config, texts=data.corpus)
    picks = trisample(index, q_emb, pos_rows, config.depth, trisampler)
    return {q: [int(r) for r in row if r >= 0] for q, row in zip(qids, picks.tolist())}
