"""Working against a saved drfast index (`--index-dir`): no corpus text and no corpus encoding.

Only the query encoder is loaded; the BEIR folder supplies queries.jsonl and qrels/SPLIT.tsv
(corpus.jsonl may be absent), and the qrels' documents map to rows through the index's own doc ids
(`index.doc_ids`, a DocIdMap: no dict of N Python strings). A judged document missing from the index
is the same DataFormatError as one missing from corpus.jsonl.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from drfast.common.errors import UsageError
from drfast.data import load_beir
from drfast.encode.encoders import Encoder
from drfast.pipelines.inputs import check_beir, check_index_dir, check_model

PathLike = str | os.PathLike


def query_source(model: Optional[str], query_model: Optional[str]) -> str:
    """The query encoder against a saved index: `query_model`, else `model` (one is required)."""
    if query_model is None and model is None:
        raise UsageError("model", "required (with a saved index, the query encoder: --query-model or --model)")
    return query_model if query_model is not None else model


def check_saved_index_inputs(data_dir: PathLike, index_dir: PathLike, model: Optional[str],
                             query_model: Optional[str] = None, *, encoder_options: Optional[dict] = None,
                             index_spec: str = "flat", first_pass: Optional[str] = None,
                             also_evaluate_on: Sequence[str] = (), **splits: str) -> dict:
    """Every check that needs no weights: the BEIR folder's queries and `splits` (argument name ->
    split), the query encoder's config and the index's meta.json (dimension, exclusive arguments).
    Returns the index's meta.json."""
    check_beir(data_dir, corpus=False, **splits)
    dim = check_model(query_source(model, query_model), **(encoder_options or {}))
    return check_index_dir(index_dir, dim, index_spec=index_spec, first_pass=first_pass,
                           also_evaluate_on=also_evaluate_on)


def load_split_of_index(data_dir: PathLike, index, index_dir: PathLike, split: str):
    """The split `split` of the BEIR folder `data_dir` with its documents mapped through the ids of
    `index` (loaded from `index_dir`): no corpus.jsonl is read."""
    return load_beir(data_dir, split, doc_ids=index.doc_ids, doc_ids_source=f"the index {os.fspath(index_dir)}")


def load_query_encoder(model: Optional[str], query_model: Optional[str], encoder_options: Optional[dict] = None):
    """The query Encoder searched against a saved index (see query_source)."""
    options = encoder_options or {}
    return Encoder.load(query_source(model, query_model), pooling=options.get("pooling"),
                        normalize=options.get("normalize"), max_length=options.get("query_max_length"),
                        role="query")
