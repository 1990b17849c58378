"""A BEIR folder's corpus as embeddings (encoded once, cached) and as an index built from them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from drfast.common.distributed import DistContext
from drfast.common.errors import UsageError
from drfast.common.timing import timed
from drfast.data import Corpus, load_beir
from drfast.encode.corpus_cache import encode_corpus
from drfast.encode.encoders import BiEncoder, Encoder
from drfast.index.load import load_index
from drfast.index.sharded import ShardedIndex, build_sharded_index
from drfast.index.spec import build_index
from drfast.pipelines.inputs import check_beir, check_has_positives, check_index_spec, check_model
from drfast.pipelines.saved_index import check_saved_index_inputs, load_query_encoder, load_split_of_index
from drfast.pipelines.specs import CorpusSpec, EncoderSpec, IndexSpec


def corpus_embeddings(spec: CorpusSpec, doc_encoder: Encoder, *, documents: Optional[Corpus] = None,
                      show_progress: bool = True, dist: Optional[DistContext] = None):
    """(embeddings memmap [N, d], doc_ids) of `spec.data`'s corpus.jsonl (or of `documents`, already read)
    by `doc_encoder`, cached under CACHE/embeddings by the encoder's weights, the corpus and the dtype
    (`dist` of several ranks: encoded collectively, see encode_corpus)."""
    if documents is None:
        documents = Corpus(Path(spec.data) / "corpus.jsonl")
    return encode_corpus(doc_encoder, documents, spec.embeddings_cache, dtype=spec.dtype,
                         batch_size=spec.encode_batch_size, show_progress=show_progress, dist=dist)


def corpus_index(spec: CorpusSpec, doc_encoder: Encoder, index: IndexSpec = IndexSpec(), *,
                 documents: Optional[Corpus] = None, timings: Optional[dict] = None,
                 dist: Optional[DistContext] = None):
    """The index (`index.index`: flat, pq:M, opq:M; a flat one with the exact two-stage search's
    `index.first_pass`) of the corpus (see corpus_embeddings) encoded by `doc_encoder`. Records
    encode_corpus_s and build_index_s in `timings`. With `dist` of several ranks, collective: the
    corpus is encoded by all ranks and each holds its rows of a ShardedIndex."""
    timings = {} if timings is None else timings
    sharded = dist is not None and dist.distributed
    with timed(timings, "encode_corpus_s"):
        emb, doc_ids = corpus_embeddings(spec, doc_encoder, documents=documents, dist=dist if sharded else None)
    with timed(timings, "build_index_s"):
        build = build_sharded_index if sharded else build_index
        return build(emb, doc_ids, index.index, index.index_seed, index.first_pass_kind)


@dataclass
class PreparedSplit:
    """A split read and checked, before any weights are loaded: what a memory plan needs (the index's
    rows, dimension, kind, first pass and storage) and, for a saved index, the index (memory-mapped)."""
    data: Any
    docs: int
    dim: int
    index_kind: str
    first_pass: Optional[str]
    dtype: str
    saved_index: Any = None


@dataclass
class SplitIndex:
    """One split and the index it is searched on, with its query encoder; `encoders` are the towers
    the index was encoded with (None for a saved index)."""
    data: Any
    index: Any
    query_encoder: Any
    encoders: Optional[BiEncoder] = None

    @property
    def doc_encoder(self):
        return None if self.encoders is None else self.encoders.doc_encoder


def prepare_split(corpus: CorpusSpec, encoder: EncoderSpec, index: IndexSpec, split: str, *,
                  splits: Optional[Dict[str, str]] = None) -> PreparedSplit:
    """Every check that needs no weights, then the split `split` read: of a saved index
    (`index.index_dir`: its meta.json, then the index memory-mapped) or of the BEIR folder (the
    model's config.json and the index spec against the corpus). `splits` (argument -> split, default
    {"split": split}) are the splits whose files are checked."""
    splits = {"split": split} if splits is None else splits
    arg = next(name for name, value in splits.items() if value == split)
    prepared = _prepare_split(corpus, encoder, index, split, splits)
    check_has_positives(prepared.data, split, corpus.data, arg)
    return prepared


def _prepare_split(corpus: CorpusSpec, encoder: EncoderSpec, index: IndexSpec, split: str,
                   splits: Dict[str, str]) -> PreparedSplit:
    if index.index_dir is not None:
        meta = check_saved_index_inputs(corpus.data, index.index_dir, encoder.model, encoder.query_model,
                                        encoder_options=encoder.load_options, index_spec=index.index,
                                        first_pass=index.first_pass_kind, **splits)
        saved = load_index(index.index_dir)
        kind = meta["kind"] if meta["kind"] == "flat" else f"{'opq' if meta.get('opq') else 'pq'}:{meta['m']}"
        return PreparedSplit(load_split_of_index(corpus.data, saved, index.index_dir, split), meta["ntotal"],
                             meta["dim"], kind, (meta.get("first_pass") or {}).get("kind"),
                             meta.get("dtype", "float32"), saved)
    if encoder.model is None:
        raise UsageError("model", "required (the document encoder) unless a saved index is given (index_dir)")
    check_beir(corpus.data, **splits)
    dim = check_model(encoder.model, encoder.query_model, **encoder.load_options)
    check_index_spec(index.index, dim)
    data = load_beir(corpus.data, split)
    check_index_spec(index.index, dim, len(data.corpus))
    return PreparedSplit(data, len(data.corpus), dim, index.index, index.first_pass_kind, corpus.dtype)


def load_split_index(prepared: PreparedSplit, corpus: CorpusSpec, encoder: EncoderSpec, index: IndexSpec, *,
                     timings: Optional[dict] = None, dist: Optional[DistContext] = None) -> SplitIndex:
    """The encoders loaded and the index of a prepared split: the saved one, or the corpus encoded
    (cached) and indexed. With `dist` of several ranks, collective: a ShardedIndex (each rank its
    rows, with every row's doc ids)."""
    timings = {} if timings is None else timings
    if prepared.saved_index is not None:
        with timed(timings, "load_index_s"):
            query_encoder = load_query_encoder(encoder.model, encoder.query_model, encoder.load_options)
            found = prepared.saved_index
            if dist is not None and dist.distributed:
                found = ShardedIndex.from_full(found)
        return SplitIndex(prepared.data, found, query_encoder)
    encoders = BiEncoder.load(encoder.model, encoder.query_model, **encoder.load_options)
    built = corpus_index(corpus, encoders.doc_encoder, index, documents=prepared.data.corpus, timings=timings,
                         dist=dist)
    return SplitIndex(prepared.data, built, encoders.query_encoder, encoders)


def split_and_index(corpus: CorpusSpec, encoder: EncoderSpec, index: IndexSpec, split: str, *,
                    timings: Optional[dict] = None, dist: Optional[DistContext] = None) -> SplitIndex:
    """What `drfast evaluate` and `errors` search: a saved index (`index.index_dir`: no corpus text, no
    encoding; the query encoder is `encoder.query_model`, else `encoder.model`) or the corpus encoded
    by `encoder.model` into `index.index`. Every argument is checked before any model is loaded (see
    prepare_split and load_split_index)."""
    timings = {} if timings is None else timings
    with timed(timings, "load_data_s"):
        prepared = prepare_split(corpus, encoder, index, split)
    return load_split_index(prepared, corpus, encoder, index, timings=timings, dist=dist)
