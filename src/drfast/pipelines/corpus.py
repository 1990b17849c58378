"""A BEIR folder's corpus as embeddings (encoded once, cached) and as an index built from them."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from drfast.common.distributed import DistContext
from drfast.common.errors import UsageError
from drfast.common.timing import timed
from drfast.data import Corpus, load_beir
from drfast.encode.corpus_cache import DEFAULT_CACHE, encode_corpus
from drfast.encode.encoders import BiEncoder
from drfast.index.sharded import ShardedIndex, build_sharded_index
from drfast.index.spec import build_index
from drfast.pipelines.inputs import check_beir, check_index_spec, check_model
from drfast.pipelines.saved_index import check_saved_index_inputs, load_saved_index_inputs

PathLike = str | os.PathLike


def corpus_embeddings(corpus: Corpus | PathLike, encoders: BiEncoder, *, cache_dir: Optional[PathLike] = None,
                      dtype: str = "float16", encode_batch_size: int = 32, show_progress: bool = True,
                      dist: Optional[DistContext] = None):
    """(embeddings memmap [N, d], doc_ids) of a Corpus (or a BEIR folder's corpus.jsonl) by
    `encoders.doc_encoder`, cached under CACHE/embeddings by the encoder's weights, the corpus and the dtype
    (`dist` of several ranks: encoded collectively, see encode_corpus)."""
    if not isinstance(corpus, Corpus):
        corpus = Corpus(Path(corpus) / "corpus.jsonl")
    return encode_corpus(encoders.doc_encoder, corpus,
                         Path(cache_dir or DEFAULT_CACHE) / "embeddings", dtype=dtype,
                         batch_size=encode_batch_size, show_progress=show_progress, dist=dist)


def corpus_index(data_dir: Corpus | PathLike, encoders: BiEncoder, *, index_spec: str = "flat",
                 cache_dir: Optional[PathLike] = None, dtype: str = "float16", encode_batch_size: int = 32,
                 index_seed: int = 0, first_pass: Optional[str] = None, timings: Optional[dict] = None,
                 dist: Optional[DistContext] = None):
    """The index (`index_spec`: flat, pq:M, opq:M) of a BEIR folder's corpus (or a Corpus) encoded by the
    document tower of `encoders`, a flat one with the exact two-stage search's `first_pass` (None, "int8",
    "bf16" or "auto"). Records encode_corpus_s and build_index_s in `timings`. With `dist` of several
    ranks, collective: the corpus is encoded by all ranks and each holds its rows of a ShardedIndex."""
    timings = {} if timings is None else timings
    sharded = dist is not None and dist.distributed
    with timed(timings, "encode_corpus_s"):
        emb, doc_ids = corpus_embeddings(data_dir, encoders, cache_dir=cache_dir, dtype=dtype,
                                         encode_batch_size=encode_batch_size, dist=dist if sharded else None)
    with timed(timings, "build_index_s"):
        if sharded:
            return build_sharded_index(emb, doc_ids, index_spec, index_seed, first_pass)
        return build_index(emb, doc_ids, index_spec, index_seed, first_pass)


@dataclass
class SplitIndex:
    """One split and the index it is searched on, with its query encoder; `doc_encoder` is the
    document tower the index was encoded with (None for a saved index)."""
    data: Any
    index: Any
    query_encoder: Any
    doc_encoder: Any = None


def split_and_index(data_dir: PathLike, model: Optional[str], query_model: Optional[str], split: str, *,
                    index_dir: Optional[PathLike] = None, index_spec: str = "flat", first_pass: Optional[str] = None,
                    encoder_options: Optional[dict] = None, cache_dir: Optional[PathLike] = None,
                    dtype: str = "float16", encode_batch_size: int = 32, index_seed: int = 0,
                    timings: Optional[dict] = None, dist: Optional[DistContext] = None) -> SplitIndex:
    """What `drfast evaluate` and `errors` search: a saved index (`index_dir`: no corpus text, no
    encoding; the query encoder is `query_model`, else `model`) or the corpus encoded by `model` into
    `index_spec`. Every argument is checked before any model is loaded. With `dist` of several ranks,
    collective: the index is a ShardedIndex (each rank its rows, with every row's doc ids)."""
    timings = {} if timings is None else timings
    options = encoder_options or {}
    if index_dir is not None:
        check_saved_index_inputs(data_dir, index_dir, model, query_model, encoder_options=options,
                                 index_spec=index_spec, first_pass=first_pass, split=split)
        with timed(timings, "load_index_s"):
            index, (data,), query_encoder = load_saved_index_inputs(data_dir, index_dir, model, query_model, [split],
                                                                   options)
            if dist is not None and dist.distributed:
                index = ShardedIndex.from_full(index)
        return SplitIndex(data, index, query_encoder)
    if model is None:
        raise UsageError("model", "required (the document encoder) unless a saved index is given (index_dir)")
    check_beir(data_dir, split=split)
    dim = check_model(model, query_model, **options)
    check_index_spec(index_spec, dim)
    data = load_beir(data_dir, split)
    check_index_spec(index_spec, dim, len(data.corpus))
    encoders = BiEncoder.load(model, query_model, **options)
    index = corpus_index(data_dir, encoders, index_spec=index_spec, first_pass=first_pass, cache_dir=cache_dir,
                         dtype=dtype, encode_batch_size=encode_batch_size, index_seed=index_seed, timings=timings,
                         dist=dist)
    return SplitIndex(data, index, encoders.query_encoder, encoders.doc_encoder)
