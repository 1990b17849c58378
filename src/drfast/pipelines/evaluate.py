"""`drfast evaluate`: a (query) model on a BEIR split, with trec_eval-exact metrics."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

from drfast.common.checks import check_int
from drfast.common.distributed import DistContext
from drfast.common.timing import timed
from drfast.encode.encoders import BiEncoder
from drfast.eval.retrieve import retrieve
from drfast.eval.trec import DEFAULT_MEASURES, evaluate
from drfast.pipelines.corpus import corpus_index, split_and_index

PathLike = str | os.PathLike


def evaluate_model(data_dir: PathLike, model: Optional[str], *, split: str = "test", query_model: Optional[str] = None,
                   index_spec: str = "flat", k: int = 100, encoder_options: Optional[dict] = None,
                   cache_dir: Optional[PathLike] = None, dtype: str = "float16", encode_batch_size: int = 32,
                   query_batch_size: int = 64, index_seed: int = 0, first_pass: Optional[str] = None,
                   measures: Sequence[str] = DEFAULT_MEASURES, index_dir: Optional[PathLike] = None,
                   dist: Optional[DistContext] = None) -> dict:
    """Metrics of `model` (documents; and queries unless `query_model`) on a BEIR split:
    {"metrics": {...}, "per_query": {...}, "run": {...}, "timings": {...}}. With `index_dir`, a saved
    index is searched instead (no corpus text, no corpus encoding; see pipelines.saved_index): the
    query encoder is `query_model`, else `model`. With `dist` of several ranks (torchrun), collective:
    a ShardedIndex, the queries shared out (eval.retrieve), and the run and metrics on rank 0 only
    (the same as one process's); "metrics", "per_query" and "run" are None on the other ranks."""
    check_int(k, "k", 1)  # every argument is checked before any model is loaded
    check_int(query_batch_size, "query_batch_size", 1)
    timings: dict = {}
    found = split_and_index(data_dir, model, query_model, split, index_dir=index_dir, index_spec=index_spec,
                            first_pass=first_pass, encoder_options=encoder_options, cache_dir=cache_dir, dtype=dtype,
                            encode_batch_size=encode_batch_size, index_seed=index_seed, timings=timings, dist=dist)
    return _evaluate_on(found.index, found.query_encoder, found.data, k, query_batch_size, measures, timings)


def _evaluate_on(index, query_encoder, data, k: int, query_batch_size: int, measures: Sequence[str],
                 timings: dict) -> dict:
    with timed(timings, "retrieve_s"), torch.inference_mode():
        run = retrieve(index, query_encoder, data.queries, k=k, batch_size=query_batch_size)
    if run is None:  # a rank other than 0 of a sharded index
        return {"metrics": None, "per_query": None, "run": None, "timings": timings}
    means, per_query = evaluate(run, data.qrels, measures, per_query=True)
    return {"metrics": means, "per_query": per_query, "run": run, "timings": timings}


def evaluate_encoders(data_dir: PathLike, data, encoders: BiEncoder, *, cache_dir: Optional[PathLike] = None,
                      dtype: str = "float16", encode_batch_size: int = 32, index=None, k: int = 100) -> dict:
    """Official metrics of in-memory encoders on a loaded split, on `index` or else a flat index of
    the corpus encoded with the current document tower (cached by its weights)."""
    if index is None:
        index = corpus_index(data_dir, encoders, cache_dir=cache_dir, dtype=dtype, encode_batch_size=encode_batch_size)
    with torch.inference_mode():
        run = retrieve(index, encoders.query_encoder, data.queries, k=k, show_progress=False)
    return evaluate(run, data.qrels)
