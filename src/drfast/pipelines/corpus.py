"""A BEIR folder's corpus as embeddings (encoded once, cached) and as an index built from them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from drfast.common.timing import timed
from drfast.data import Corpus
from drfast.encode.corpus_cache import DEFAULT_CACHE, encode_corpus
from drfast.encode.encoders import BiEncoder
from drfast.index.spec import build_index

PathLike = str | os.PathLike


def corpus_embeddings(corpus: Corpus | PathLike, encoders: BiEncoder, *, cache_dir: Optional[PathLike] = None,
                      dtype: str = "float16", encode_batch_size: int = 32, show_progress: bool = True):
    """(embeddings memmap [N, d], doc_ids) of a Corpus (or a BEIR folder's corpus.jsonl) by
    `encoders.doc_encoder`, cached under CACHE/embeddings by the encoder's weights, the corpus and the dtype."""
    if not isinstance(corpus, Corpus):
        corpus = Corpus(Path(corpus) / "corpus.jsonl")
    return encode_corpus(encoders.doc_encoder, corpus,
                         Path(cache_dir or DEFAULT_CACHE) / "embeddings", dtype=dtype,
                         batch_size=encode_batch_size, show_progress=show_progress)


def corpus_index(data_dir: Corpus | PathLike, encoders: BiEncoder, *, index_spec: str = "flat",
                 cache_dir: Optional[PathLike] = None, dtype: str = "float16", encode_batch_size: int = 32,
                 index_seed: int = 0, first_pass: Optional[str] = None, timings: Optional[dict] = None):
    """The index (`index_spec`: flat, pq:M, opq:M) of a BEIR folder's corpus (or a Corpus) encoded by the
    document tower of `encoders`, a flat one with the exact two-stage search's `first_pass` (None, "int8",
    "bf16" or "auto"). Records encode_corpus_s and build_index_s in `timings`."""
    timings = {} if timings is None else timings
    with timed(timings, "encode_corpus_s"):
        emb, doc_ids = corpus_embeddings(data_dir, encoders, cache_dir=cache_dir, dtype=dtype,
                                         encode_batch_size=encode_batch_size)
    with timed(timings, "build_index_s"):
        return build_index(emb, doc_ids, index_spec, index_seed, first_pass)
