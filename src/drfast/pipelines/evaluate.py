"""`drfast evaluate`: a (query) model on a BEIR split, with trec_eval-exact metrics."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

from drfast.common.checks import check_int
from drfast.common.timing import timed
from drfast.data import load_beir
from drfast.encode.encoders import BiEncoder
from drfast.eval.retrieve import retrieve
from drfast.eval.trec import DEFAULT_MEASURES, evaluate
from drfast.pipelines.corpus import corpus_index
from drfast.pipelines.inputs import check_beir, check_index_spec, check_model

PathLike = str | os.PathLike


def evaluate_model(data_dir: PathLike, model: str, *, split: str = "test", query_model: Optional[str] = None,
                   index_spec: str = "flat", k: int = 100, encoder_options: Optional[dict] = None,
                   cache_dir: Optional[PathLike] = None, dtype: str = "float16", encode_batch_size: int = 32,
                   query_batch_size: int = 64, index_seed: int = 0, first_pass: Optional[str] = None,
                   measures: Sequence[str] = DEFAULT_MEASURES) -> dict:
    """Metrics of `model` (documents; and queries unless `query_model`) on a BEIR split:
    {"metrics": {...}, "per_query": {...}, "run": {...}, "timings": {...}}."""
    check_int(k, "k", 1)  # every argument is checked before any model is loaded
    check_int(query_batch_size, "query_batch_size", 1)
    check_beir(data_dir, split=split)
    dim = check_model(model, query_model, **(encoder_options or {}))
    check_index_spec(index_spec, dim)
    timings: dict = {}
    data = load_beir(data_dir, split)
    check_index_spec(index_spec, dim, len(data.corpus))
    encoders = BiEncoder.load(model, query_model, **(encoder_options or {}))
    index = corpus_index(data_dir, encoders, index_spec=index_spec, first_pass=first_pass, cache_dir=cache_dir,
                         dtype=dtype, encode_batch_size=encode_batch_size, index_seed=index_seed, timings=timings)
    with timed(timings, "retrieve_s"), torch.inference_mode():
        run = retrieve(index, encoders.query_encoder, data.queries, k=k, batch_size=query_batch_size)
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
