"""drfast: fast, correct training of dense retrieval models with hard negatives.

The layers, each importing only from those before it: common, search (the native fused search),
index, data and encode, train and negatives, eval, pipelines (what the CLI runs), cli.
"""
from __future__ import annotations

__version__ = "0.1.0"

from drfast import _C  # noqa: E402  (the native core: built by pip install)
from drfast.common.doc_ids import DocIdMap
from drfast.common.errors import UsageError, UsageTypeError
from drfast.data import Corpus, DataFormatError, Dataset, load_beir, load_msmarco
from drfast.encode import BiEncoder, Encoder, encode_corpus, save_encoder
from drfast.eval import NegativeOverlapHook, error_statistics, evaluate, pairwise_errors, retrieve
from drfast.index import FlatIndex, Index, PQIndex, ShardedIndex, build_index, load_faiss_index, load_index
from drfast.negatives import MiningConfig, TriSamplerConfig, mine_from_bm25, mine_from_index, trisample
from drfast.search import (SearchResult, build_info, get_num_threads, metrics_from_ranks, set_num_threads,
                           set_simd_level, simd_level)
from drfast.train import (AdoreConfig, AdoreTrainer, StarConfig, StarTrainer, TrainConfig, TrainingRun,
                          adore_batch_loss, adore_loss, ranknet_loss)

__all__ = [
    "__version__",
    # errors
    "UsageError", "UsageTypeError",
    # search and indexes
    "Index", "FlatIndex", "PQIndex", "ShardedIndex", "SearchResult", "load_index", "load_faiss_index", "build_index", "DocIdMap",
    "set_num_threads", "get_num_threads", "set_simd_level", "simd_level", "build_info",
    # data and encoders
    "Corpus", "Dataset", "DataFormatError", "load_beir", "load_msmarco",
    "Encoder", "BiEncoder", "save_encoder", "encode_corpus",
    # training
    "TrainConfig", "TrainingRun", "AdoreConfig", "AdoreTrainer", "StarConfig", "StarTrainer",
    "adore_batch_loss", "adore_loss", "ranknet_loss",
    # negatives
    "MiningConfig", "mine_from_index", "mine_from_bm25", "TriSamplerConfig", "trisample",
    # evaluation
    "retrieve", "evaluate", "metrics_from_ranks", "pairwise_errors", "error_statistics", "NegativeOverlapHook",
]
