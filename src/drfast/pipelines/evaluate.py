"""`drfast evaluate`: a (query) model on a BEIR split, with trec_eval-exact metrics."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from drfast.common.distributed import DistContext
from drfast.common.timing import timed
from drfast.encode.encoders import BiEncoder
from drfast.eval.retrieve import retrieve
from drfast.eval.trec import DEFAULT_MEASURES, evaluate
from drfast.pipelines.corpus import corpus_index, split_and_index
from drfast.pipelines.specs import CorpusSpec, EncoderSpec, IndexSpec, SearchSpec


def evaluate_model(corpus: CorpusSpec, encoder: EncoderSpec, index: IndexSpec = IndexSpec(),
                   search: SearchSpec = SearchSpec(), *, measures: Sequence[str] = DEFAULT_MEASURES,
                   dist: Optional[DistContext] = None) -> dict:
    """Metrics of `encoder.model` (documents; and queries unless `encoder.query_model`) on the split
    `search.split` of the BEIR folder `corpus.data`: {"metrics": {...}, "per_query": {...}, "run":
    {...}, "timings": {...}}. With `index.index_dir`, a saved index is searched instead (no corpus
    text, no corpus encoding; see pipelines.saved_index): the query encoder is `encoder.query_model`,
    else `encoder.model`. With `dist` of several ranks (torchrun), collective: a ShardedIndex, the
    queries shared out (eval.retrieve), and the run and metrics on rank 0 only (the same as one
    process's); "metrics", "per_query" and "run" are None on the other ranks."""
    for spec in (corpus, encoder, index, search):  # every argument is checked before any model is loaded
        spec.check()
    timings: dict = {}
    found = split_and_index(corpus, encoder, index, search.split, timings=timings, dist=dist)
    return _evaluate_on(found.index, found.query_encoder, found.data, search, measures, timings)


def _evaluate_on(index, query_encoder, data, search: SearchSpec, measures: Sequence[str], timings: dict) -> dict:
    with timed(timings, "retrieve_s"), torch.inference_mode():
        run = retrieve(index, query_encoder, data.queries, k=search.k, batch_size=search.query_batch_size)
    if run is None:  # a rank other than 0 of a sharded index
        return {"metrics": None, "per_query": None, "run": None, "timings": timings}
    means, per_query = evaluate(run, data.qrels, measures, per_query=True)
    return {"metrics": means, "per_query": per_query, "run": run, "timings": timings}


def evaluate_encoders(corpus: CorpusSpec, data, encoders: BiEncoder, *, index=None, k: int = 100) -> dict:
    """Official metrics of in-memory encoders on a loaded split, on `index` or else a flat index of
    the corpus encoded with the current document tower (cached by its weights)."""
    if index is None:
        index = corpus_index(corpus, encoders.doc_encoder, documents=data.corpus)
    with torch.inference_mode():
        run = retrieve(index, encoders.query_encoder, data.queries, k=k, show_progress=False)
    return evaluate(run, data.qrels)
