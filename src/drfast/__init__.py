"""drfast: fast, correct training of dense retrieval models with hard negatives."""
from __future__ import annotations

from . import _C
from .index import FlatIndex, load_index
from .pq_index import PQIndex
from .results import SearchResult

__version__ = "0.1.0"

# Loaded on first use: importing transformers or pytrec_eval costs seconds that the search does not need.
_LAZY = {
    "Encoder": "encoders", "BiEncoder": "encoders", "save_encoder": "encoders", "resolve_model": "encoders",
    "encode_corpus": "corpus_encoding", "Corpus": "data", "load_beir": "data", "load_msmarco": "data",
    "evaluate": "evaluation", "write_trec_run": "evaluation", "paired_ttest": "evaluation",
    "metrics_from_ranks": "evaluation", "build_index": "retrieval", "retrieve": "retrieval",
    "evaluate_model": "retrieval",
    "AdoreTrainer": "adore", "AdoreConfig": "adore", "run_adore": "adore",
    "StarTrainer": "star", "StarConfig": "star", "run_star": "star",
    "TrainingRun": "training", "TrainConfig": "training",
    "MiningConfig": "mining", "mine_from_index": "mining", "mine_from_bm25": "mining",
    "TriSamplerConfig": "trisampler", "trisample": "trisampler",
    "pairwise_errors": "stats", "error_statistics": "stats", "run_errors": "error_report",
    "NegativeOverlapHook": "diagnostics", "plot_run": "run_plot",
}
__all__ = ["FlatIndex", "PQIndex", "SearchResult", "load_index", "set_num_threads", "get_num_threads",
           "build_info", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'drfast' has no attribute {name!r}")


def set_num_threads(n: int) -> None:
    """Threads used by the native CPU kernels (default: OMP_NUM_THREADS or all cores)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return _C.num_threads()


def build_info() -> dict:
    """What this build can do: SIMD level in use, threads, CUDA."""
    import torch

    return {
        "version": __version__,
        "simd": _C.simd_level(),
        "simd_supported": _C.supported_simd_levels().split(","),
        "threads": _C.num_threads(),
        "cuda_kernels_built": bool(_C.built_with_cuda),
        "cuda_device_available": bool(_C.cuda_device_available()) or torch.cuda.is_available(),
        "torch": torch.__version__,
    }
