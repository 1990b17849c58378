"""Negatives for a whole BEIR split: what `drfast mine` and STAR's static negatives run."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from drfast.common.errors import UsageError, UsageTypeError
from drfast.index.flat import FlatIndex
from drfast.negatives.mining import MiningConfig, mine_from_bm25, mine_from_index
from drfast.negatives.trisampler import trisample
from drfast.pipelines.corpus import corpus_embeddings
from drfast.pipelines.specs import CorpusSpec


def mine_split(data: Any, encoders: Any, corpus: Optional[CorpusSpec] = None, *, source: str = "model",
               config: Optional[MiningConfig] = None, query_batch_size: int = 64, first_pass: Optional[str] = None,
               trisampler: Any = None) -> Mapping[str, list]:
    """Negatives {qid: [row]} for a loaded split's queries with positives (drfast.data.Dataset):
    BM25's (source "bm25"), or the model's from a flat index of its corpus embeddings (source "model",
    cached as `corpus` says; a flat index with the two-stage `first_pass` kind); with a `trisampler`
    config, TriSampler draws from the model's top `config.depth` instead."""
    config = MiningConfig() if config is None else config
    if not isinstance(config, MiningConfig):
        raise UsageTypeError("config", f"expected a MiningConfig, got {type(config).__name__}")
    corpus = corpus or CorpusSpec()
    qids = sorted(data.positives)
    if source == "bm25" and trisampler is None:
        return mine_from_bm25(data.corpus.texts(range(len(data.corpus))), data.corpus.doc_ids,  # no list of N ids
                              {q: data.queries[q] for q in qids}, data.positives, config)
    if source not in ("model", "bm25"):
        raise UsageError("source", f"expected 'model' or 'bm25', got {source!r}")
    emb, doc_ids = corpus_embeddings(corpus, encoders.doc_encoder, documents=data.corpus)
    index = FlatIndex(emb, doc_ids, first_pass=first_pass)
    q_emb = encoders.query_encoder.encode([data.queries[q] for q in qids], batch_size=query_batch_size)
    pos_rows = [data.corpus.rows(data.positives[q]).tolist() for q in qids]
    if trisampler is None:
        return mine_from_index(index, q_emb, qids, pos_rows, config, texts=data.corpus)
    picks = trisample(index, q_emb, pos_rows, config.depth, trisampler)
    return {q: [int(r) for r in row if r >= 0] for q, row in zip(qids, picks.tolist())}
