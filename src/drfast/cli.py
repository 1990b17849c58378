"""The `drfast` command line.

Each flag is declared once, as a field of a frozen dataclass with its help: the run specs of the
pipelines (drfast.pipelines.specs: CorpusSpec, EncoderSpec, IndexSpec, SearchSpec, TrainSpec,
PlacementSpec, OutputSpec), the memory planner's PlannedRun, the training and mining configs
(AdoreConfig, StarConfig, MiningConfig) and, below, the few flags of one command each. A command
takes the fields it needs, as groups of flags (drfast.common.dataclass_args), so a flag means the
same in every command that has it, and a new field is a new flag.

User errors (a bad flag value, missing or malformed data, an output that exists) are found before
any model is loaded or document encoded where possible, and end the command with one line,
`drfast COMMAND: error: MESSAGE` and exit status 2: a `drfast.UsageError` names its parameter, a
spec's field, which is written as the command's flag. `--debug` shows the traceback; `--quiet` and
`--verbose` set how much the library logs (to stderr) beside the command's own output.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from drfast.common.atomic import write_json_atomic
from drfast.common.checks import check_int
from drfast.common.dataclass_args import add_arguments, from_args, option, takes_value
from drfast.common.distributed import init_distributed, shutdown_distributed
from drfast.common.errors import UsageError
from drfast.common.sizes import parse_count
from drfast.data import Corpus, load_beir
from drfast.encode.corpus_cache import encode_corpus
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
from drfast.pipelines.demo import format_demo, run_demo
from drfast.pipelines.errors import run_errors
from drfast.pipelines.evaluate import evaluate_model
from drfast.pipelines.inputs import (check_beir, check_index_spec, check_model, check_output_dir, check_output_file,
                                     check_output_place, check_outputs_free)
from drfast.pipelines.memory_plan import PlannedRun, plan_memory
from drfast.pipelines.mine import mine_split
from drfast.pipelines.specs import (CorpusSpec, EncoderSpec, IndexSpec, OutputSpec, PlacementSpec, SearchSpec,
                                    TrainSpec, config_of)
from drfast.pipelines.star import run_star
from drfast.search import build_info
from drfast.train.adore import AdoreConfig
from drfast.train.star import StarConfig

@dataclass(frozen=True)
class CommandOptions:
    """The flags of one command each (the shared ones are the run specs' fields)."""

    embeddings: Optional[str] = option(None, "your own document embeddings, instead of --data and --model: a .npy "
                                             "file (float32 or float16 [N, d], read memory-mapped) or a DiskANN "
                                             ".fbin (float32) / .f16bin (float16) file", metavar="FILE")
    doc_ids: Optional[str] = option(None, "the document ids of the --embeddings rows, one per line", metavar="FILE")
    source: str = option("model", "mine the model's top documents or BM25's", choices=("model", "bm25"))
    pq: int = option(48, "sub-vectors of the demo's PQ index", metavar="M")
    batch: int = option(32, "random queries in the batch", metavar="B")
    json: bool = option(False, "print the plan as JSON (\"fits\", the placement and every part's bytes)")


@dataclass(frozen=True)
class LogOptions:
    """How a command reports: every command has these."""

    debug: bool = option(False, "show the full Python traceback of an error")
    quiet: bool = option(False, "log only warnings and errors (the command's own output is still printed)")
    verbose: bool = option(False, "log debugging detail too")


def _specs(args: argparse.Namespace) -> Tuple[CorpusSpec, EncoderSpec, IndexSpec]:
    """The corpus, encoder and index specs of the flags (a command without a flag keeps its default)."""
    return from_args(CorpusSpec, args), from_args(EncoderSpec, args), from_args(IndexSpec, args)


def _output(args: argparse.Namespace) -> OutputSpec:
    return from_args(OutputSpec, args)


# ---- the commands --------------------------------------------------------------------------------
def _info(args: argparse.Namespace) -> int:
    print(json.dumps(build_info(), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    corpus, encoder, index = _specs(args)
    result = run_demo(corpus, encoder.model, _output(args), pq=args.pq,
                      config=from_args(AdoreConfig, args), index_seed=index.index_seed)
    print(format_demo(result, encoder.model, args.output))
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


def _encode(args: argparse.Namespace) -> int:
    corpus, encoder, _ = _specs(args)
    check_beir(corpus.data)
    check_model(encoder.model, **encoder.load_options)
    document = Encoder.load(encoder.model, role="document", max_length=encoder.doc_max_length,
                            pooling=encoder.pooling)
    ctx = init_distributed()  # under torchrun: every rank encodes its share of the chunks
    emb, _ = encode_corpus(document, Corpus(Path(corpus.data) / "corpus.jsonl"), corpus.embeddings_cache,
                           dtype=corpus.dtype, batch_size=corpus.encode_batch_size, dist=ctx)
    if ctx.is_main:
        print(f"{emb.shape[0]} documents x {emb.shape[1]} dims ({emb.dtype}) in {emb.filename}")
    return 0


def _index(args: argparse.Namespace) -> int:
    if args.embeddings is not None or args.doc_ids is not None:
        return _index_from_files(args)
    corpus, encoder, index = _specs(args)
    if corpus.data is None or encoder.model is None:
        raise UsageError("data" if corpus.data is None else "model", "required: give --data and --model (encode a "
                         "BEIR corpus) or --embeddings and --doc-ids (your own embeddings)")
    check_beir(corpus.data)
    dim = check_model(encoder.model, **encoder.load_options)
    check_index_spec(index.index, dim)
    documents = Corpus(Path(corpus.data) / "corpus.jsonl")
    check_index_spec(index.index, dim, len(documents))
    timings: dict = {}
    document = Encoder.load(encoder.model, role="document", max_length=encoder.doc_max_length,
                            pooling=encoder.pooling)
    built = corpus_index(corpus, document, index, documents=documents, timings=timings)
    built.save(args.output)
    print(f"{built!r} saved to {args.output} ({timings})")
    return 0


def _index_from_files(args: argparse.Namespace) -> int:
    """`drfast index --embeddings FILE --doc-ids FILE`: an index of the user's own embeddings, read
    memory-mapped (a flat index keeps them so; PQ samples its training rows and encodes in chunks)."""
    for given in ("data", "model"):
        if getattr(args, given) is not None:
            raise UsageError("embeddings", "give either --embeddings and --doc-ids (your own embeddings) or --data "
                             "and --model (encode a BEIR corpus), not both")
    for name, other in (("embeddings", "--doc-ids"), ("doc_ids", "--embeddings")):
        if getattr(args, name) is None:
            raise UsageError(name, f"required with {other}")
    index = from_args(IndexSpec, args)
    emb = open_embeddings(args.embeddings)
    doc_ids = read_doc_ids(args.doc_ids, expected=emb.shape[0])
    check_index_spec(index.index, emb.shape[1], emb.shape[0])
    timings: dict = {}
    try:
        with timed(timings, "build_index_s"):
            built = build_index(emb, doc_ids, index.index, index.index_seed, index.first_pass_kind)
    except UsageError as e:  # the index's own check of the rows (NaN or Inf): the rows are the file's
        if e.param == "emb":
            raise UsageError("embeddings", f"{args.embeddings} {e.detail}") from None
        raise
    with timed(timings, "save_s"):
        built.save(args.output)
    print(f"{built!r} saved to {args.output} ({timings})")
    return 0


def _evaluate_model(args: argparse.Namespace) -> dict:
    """evaluate_model of the flags; under torchrun, on a ShardedIndex (the run and metrics on rank 0 only)."""
    return evaluate_model(*_specs(args), from_args(SearchSpec, args), dist=init_distributed())


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
    config = config_of(*_specs(args), from_args(SearchSpec, args), _output(args))
    timings = dict(result["timings"], total_s=round(time.perf_counter() - t0, 3))
    write_json_atomic(out / "metrics.json", {"metrics": result["metrics"], "config": config, "timings": timings,
                                             "per_query": result["per_query"]})
    _print_metrics(f"{args.query_model or args.model if args.index_dir else args.model} on {args.data} "
                   f"({args.split}, {_searched(args)}):", result["metrics"])
    print(f"metrics, per-query values and the run in {out}/")
    return 0


def _adore(args: argparse.Namespace) -> int:
    report = run_adore(*_specs(args)[:2], _output(args), from_args(IndexSpec, args),
                       config=from_args(AdoreConfig, args), train=from_args(TrainSpec, args),
                       placement=from_args(PlacementSpec, args))
    if not init_distributed().is_main:  # under torchrun rank 0 reports
        return 0
    method = "ADORE + trained centroids (JPQ)" if args.train_centroids else "ADORE"
    _print_table(f"{method} on {args.index if args.index_dir is None else args.index_dir} ({args.eval_split} split)",
                 {"before": report["before"], "after": report["after"]})
    saved = "query encoder, trained index (index/)" if args.train_centroids else "query encoder"
    print(f"{saved}, metrics.json and the run log in {args.output}/")
    return 0


def _star(args: argparse.Namespace) -> int:
    corpus, encoder, _ = _specs(args)
    report = run_star(corpus, encoder, _output(args), config=from_args(StarConfig, args),
                      train=from_args(TrainSpec, args))
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
    corpus, encoder, index = _specs(args)
    check_beir(corpus.data, split=args.split)
    if args.source != "bm25":
        check_model(encoder.model, **encoder.load_options)
    data = load_beir(corpus.data, args.split)
    towers = None if args.source == "bm25" else BiEncoder.load(encoder.model, **encoder.load_options)
    mined = mine_split(data, towers, corpus, source=args.source, config=from_args(MiningConfig, args),
                       query_batch_size=args.query_batch_size, first_pass=index.first_pass_kind)
    print(format_statistics(score_statistics(mined)))
    n = write_mined(args.output, data.queries, data.positives, mined, data.corpus.doc_ids)  # a DocIdMap, no list
    print(f"{n} training examples written to {args.output}")
    return 0


def _errors(args: argparse.Namespace) -> int:
    corpus, encoder, index = _specs(args)
    report = run_errors(corpus, encoder, args.output, index, from_args(SearchSpec, args), dist=init_distributed())
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
    run = from_args(PlannedRun, args, first_pass=from_args(IndexSpec, args).first_pass_kind)
    plan = plan_memory(run, gpu_memory=args.gpu_memory, host_memory=args.host_memory)
    print(plan.to_json() if args.json else plan.table())
    return 0 if plan.fits else 1


def _print_table(title: str, rows: dict) -> None:
    names = list(next(iter(rows.values())))
    print(title)
    print(f"  {'':<28}" + "".join(f"{n:>10}" for n in names))
    for label, metrics in rows.items():
        print(f"  {label:<28}" + "".join(f"{metrics[n]:>10.4f}" for n in names))


# ---- the flags -----------------------------------------------------------------------------------
def _check_flags(args: argparse.Namespace) -> None:
    """The ranges and combinations of the flags (argparse checks their types), before any work."""
    for cls in (CorpusSpec, EncoderSpec, IndexSpec, SearchSpec, TrainSpec, PlacementSpec):
        if any(hasattr(args, f.name) for f in dataclasses.fields(cls)):
            from_args(cls, args).check()
    for name in ("pq", "docs", "dim", "batch"):
        if hasattr(args, name):
            check_int(getattr(args, name), name, 1)
    if getattr(args, "seed", None) is not None:
        check_int(args.seed, "seed", 0)
    if getattr(args, "model_params", None) is not None:
        parse_count(args.model_params, "model_params")
    if getattr(args, "index_dir", None) is not None:
        for flag, name, default in (("--index", "index", "flat"), ("--first-pass", "first_pass", "none"),
                                    ("--also-evaluate-on", "also_evaluate_on", ())):
            value = getattr(args, name, default)
            if (tuple(value) if isinstance(value, list) else value) != default:
                raise UsageError("index_dir", f"cannot be combined with {flag} (a saved index is searched as it "
                                 "was saved)")
    if getattr(args, "first_pass", "none") != "none" and getattr(args, "index", "flat") != "flat":
        raise UsageError("first_pass", f"the two-stage search is for a flat index, not --index {args.index}")


CORPUS = (CorpusSpec, ("data", "cache", "dtype", "encode_batch_size"))
ENCODER = (EncoderSpec, ("model", "pooling", "query_max_length", "doc_max_length"))
QUERY_ENCODER = (EncoderSpec, ("model", "query_model", "pooling", "query_max_length", "doc_max_length"))
INDEX = (IndexSpec, ("index", "index_seed", "first_pass", "index_dir"))
SEARCH = (SearchSpec, ("split", "k", "query_batch_size"))
GROUP_TITLES = {CorpusSpec: "corpus", EncoderSpec: "encoders", IndexSpec: "index", SearchSpec: "search",
                TrainSpec: "training run", PlacementSpec: "placement and memory plan", OutputSpec: "output",
                PlannedRun: "run planned", CommandOptions: "options", LogOptions: "reporting"}


@dataclass
class Command:
    """A subcommand's parser and its flags: {parameter (a field or dest): the flag as typed}; `valued`:
    the flags that take a value."""

    parser: argparse.ArgumentParser
    flags: Dict[str, str]
    valued: Tuple[str, ...] = ()


def _command(sub, name: str, func, text: str, groups: Sequence[Tuple[type, Sequence[str]]] = (),
             config: Optional[type] = None, required: Sequence[str] = (), **defaults: Any) -> Command:
    """A subcommand with a group of flags per (dataclass, field names) of `groups`, with per-command
    `defaults` and `required` flags, and, as a group of their own, every field of `config`."""
    p = sub.add_parser(name, help=text, description=text)
    flags: Dict[str, str] = {}
    valued: list = []
    for cls, names in tuple(groups) + ((LogOptions, ("debug", "quiet", "verbose")),):
        own = {key: value for key, value in defaults.items() if key in names}
        group = p.add_argument_group(GROUP_TITLES.get(cls, f"settings ({cls.__name__})"))
        added = add_arguments(group, cls, names, required=required, **own)
        flags.update(added)
        valued += [flag for name, flag in added.items() if takes_value(cls, name)]
    if config is not None:
        added = add_arguments(p.add_argument_group(f"settings ({config.__name__})"), config)
        flags.update(added)
        valued += [flag for name, flag in added.items() if takes_value(config, name)]
    p.set_defaults(func=func)
    return Command(p, flags, tuple(valued))


def _commands() -> Tuple[argparse.ArgumentParser, Dict[str, Command]]:
    parser = argparse.ArgumentParser(prog="drfast", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    out = (OutputSpec, ("output", "overwrite"))  # a command's results; an earlier run's are kept unless --overwrite
    commands = {
        "info": _command(sub, "info", _info, "print what this build can do (SIMD, threads, CUDA)"),
        "check": _command(sub, "check", _check, "build info and a fused search on random data against the torch path",
                          [(PlannedRun, ("docs", "dim")), (CommandOptions, ("batch",)), (SearchSpec, ("k",)),
                           (CorpusSpec, ("dtype",)), (AdoreConfig, ("seed",))], k=200, dtype="float32"),
        "demo": _command(sub, "demo", _demo, "ADORE on SciFact with all-MiniLM-L6-v2: before/after on flat and PQ "
                                             "(--data defaults to $DRFAST_DATA/scifact, else BEIR's download)",
                         [(CorpusSpec, ("data", "cache")), (EncoderSpec, ("model",)), (CommandOptions, ("pq",)),
                          (IndexSpec, ("index_seed",)), (OutputSpec, ("output", "resume", "overwrite")),
                          (AdoreConfig, ("epochs", "seed"))], data=None, model="all-MiniLM-L6-v2",
                         output="drfast-demo"),
        "encode": _command(sub, "encode", _encode, "encode a BEIR corpus with a model (cached, resumable)",
                           [CORPUS, ENCODER]),
        "index": _command(sub, "index", _index, "encode a BEIR corpus (--data, --model) or take your own embeddings "
                                                "(--embeddings, --doc-ids), and save a flat or PQ index",
                          [CORPUS, ENCODER, (CommandOptions, ("embeddings", "doc_ids")),
                           (IndexSpec, ("index", "index_seed", "first_pass")), out], data=None, model=None),
    }
    for name, func, text in (("search", _search, "retrieve a BEIR split and write OUTPUT/run.trec"),
                             ("evaluate", _evaluate, "trec_eval-exact metrics of a model on a BEIR split")):
        commands[name] = _command(sub, name, func, text, [CORPUS, QUERY_ENCODER, SEARCH, INDEX, out], model=None)
    commands["errors"] = _command(sub, "errors", _errors, "pairwise errors of a model over the whole corpus (total "
                                  "and top-K) with their distribution over queries: errors.json and errors.png",
                                  [CORPUS, QUERY_ENCODER, SEARCH, INDEX, out], k=200, model=None)
    commands["adore"] = _command(
        sub, "adore", _adore, "train the query encoder with ADORE against a fixed flat or PQ index (with "
                              "--train-centroids, the PQ centroids too: JPQ)",
        [CORPUS, QUERY_ENCODER, (TrainSpec, ("train_split", "eval_split", "also_evaluate_on", "eval_every",
                                             "overlap_every")), INDEX,
         (PlacementSpec, ("device", "gpu_memory", "ignore_plan", "shard_index")),
         (OutputSpec, ("output", "resume", "overwrite"))], AdoreConfig)
    commands["plan"] = _command(
        sub, "plan", _plan, "where each part of an ADORE / JPQ training run would live (GPU, pinned host, host, "
                            "memory-mapped file) and whether it fits; exit status 1 when it does not",
        [(PlannedRun, ("docs", "dim", "model_params")), (EncoderSpec, ("model", "query_max_length")),
         (IndexSpec, ("index", "first_pass")), (PlacementSpec, ("gpu_memory", "host_memory")), (SearchSpec, ("k",)),
         (CorpusSpec, ("dtype",)), (AdoreConfig, ("batch_size", "amp", "train_centroids")),
         (CommandOptions, ("json",))], required=("docs", "dim"), docs=None, dim=None, model=None, k=200)
    commands["star"] = _command(sub, "star", _star, "train both towers with STAR or a negative-sampling baseline",
                                [CORPUS, ENCODER, (TrainSpec, ("train_split", "eval_split", "negatives",
                                                               "overlap_every")),
                                 (OutputSpec, ("output", "resume", "overwrite"))], StarConfig)
    commands["mine"] = _command(sub, "mine", _mine, "mine hard negatives (model or BM25) into Tevatron-style jsonl",
                                [CORPUS, ENCODER, (SearchSpec, ("query_batch_size", "split")),
                                 (CommandOptions, ("source",)), (IndexSpec, ("first_pass",)), out], MiningConfig,
                                split="train")
    plot = _command(sub, "plot", _plot, "draw a training run's loss, MRR@10 and negative overlap over steps",
                    [out], output=None)
    plot.parser.add_argument("run_dir", metavar="RUN_DIR",
                             help="a run folder with train_log.jsonl, or the OUTPUT of drfast adore / star")
    plot.flags["run_dir"] = "RUN_DIR"
    commands["plot"] = plot
    return parser, commands


def build_parser() -> argparse.ArgumentParser:
    """The `drfast` argument parser (every subcommand and its flags)."""
    return _commands()[0]


def command_parsers() -> Dict[str, argparse.ArgumentParser]:
    """{subcommand: its parser}."""
    return {name: command.parser for name, command in _commands()[1].items()}


# ---- outputs, errors and logging ----------------------------------------------------------------
# Errors of bad input: one line naming the flag, exit status 2 (argparse's own errors exit 2 too).
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError)
FILE_OUTPUTS = ("mine", "plot")  # their --output is a file; every other command's is a folder
# The files a command writes into its OUTPUT folder, kept from an earlier run unless --overwrite
# (a training run's folder is guarded by its checkpoint: --resume / --overwrite).
OUTPUT_FILES = {"search": ("run.trec",), "evaluate": ("metrics.json", "run.trec"),
                "errors": ("errors.json", "errors.png")}
TRAINING = ("adore", "star", "demo")


def check_command_output(args: argparse.Namespace) -> None:
    """The command's output may be written, before anything is loaded: not an input (a data folder,
    an index, a model, the files it reads), creatable, and not over an earlier run's results unless
    --overwrite."""
    output = getattr(args, "output", None)
    if args.command == "plot" and output is None:
        output = str(Path(args.run_dir) / "training.png")  # plot_run's default
    if output is None:
        return
    data = getattr(args, "data", None)
    if args.command in FILE_OUTPUTS:
        check_output_file(output)
        inputs = [] if data is None else [Path(data) / "corpus.jsonl", Path(data) / "queries.jsonl",
                                          Path(data) / "qrels" / f"{getattr(args, 'split', 'train')}.tsv"]
        check_output_place(output, inputs=inputs)
        check_outputs_free([output], args.overwrite)
        return
    check_output_dir(output)
    check_output_place(output, inputs=[data, getattr(args, "index_dir", None), getattr(args, "embeddings", None)],
                       replaces="a drfast index" if args.command == "index" else None)
    if args.command == "index" and Path(output).is_dir() and any(Path(output).iterdir()):
        check_outputs_free([output], args.overwrite)  # an earlier index (anything else: refused by its writer)
    check_outputs_free([Path(output) / name for name in OUTPUT_FILES.get(args.command, ())], args.overwrite)


def error_message(error: BaseException, flags: Dict[str, str]) -> str:
    """The one line a user sees: a UsageError's parameter written as the command's flag for it (an
    argument the command has no flag for keeps its name); any other error's own message."""
    if isinstance(error, UsageError) and error.param in flags:
        return f"{flags[error.param]}: {error.detail}"
    return str(error)


def os_error_message(error: OSError, output: Optional[str] = None) -> str:
    """One line for an error of the operating system (a full disk, a file size limit, no permission):
    what failed and on which path (the error's own, else the command's output, where it was writing)."""
    if error.strerror is None:  # a short write (numpy's tofile): no errno to tell why
        where = f"writing {output} failed" if output else "a write failed"
        return f"{where}: {error} (is the disk full, or a file size limit set?)"
    where = error.filename or output
    return f"{where}: {error.strerror}" if where else error.strerror


def interrupted_message(args: argparse.Namespace) -> str:
    """What a user needs after Ctrl-C: where the work done so far is, and how to continue."""
    if args.command in TRAINING:
        runs = sorted(Path(args.output).glob("**/run/checkpoint.pt")) if args.output else []
        if runs:
            where = ", ".join(str(p) for p in runs)
            return f"interrupted; the last checkpoint is {where}: run the same command with --resume to continue"
        return "interrupted before the first checkpoint; run the same command again to start over"
    if args.command in ("errors", "encode", "index", "search", "evaluate", "mine"):
        return ("interrupted; the finished chunks (corpus embeddings, exact ranks) are kept: run the same command "
                "again to continue")
    return "interrupted"


def join_dash_values(argv: Sequence[str], options: Sequence[str]) -> list:
    """`--flag -11GB` as `--flag=-11GB` for a flag that takes a value (argparse reads a value starting
    with '-' as another flag and says only "expected one argument"), so the value is checked and
    refused by name. `options` are the command's flags that take a value."""
    out: list = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in options and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1][1:2] != "-":
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a record comes (not the one at setup)."""

    drfast_cli = True

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the property always reads sys.stderr
        pass


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """drfast's loggers to stderr: INFO by default, WARNING with `quiet`, DEBUG with `verbose`."""
    root = logging.getLogger("drfast")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = _commands()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in commands:
        argv = join_dash_values(argv, commands[argv[0]].valued)
    args = parser.parse_args(argv)
    setup_logging(args.quiet, args.verbose)
    try:
        return _run(args)
    except BaseException as e:  # noqa: BLE001 (what is not a user's or the system's error is raised again)
        if args.debug or not isinstance(e, (KeyboardInterrupt, USER_ERRORS, OSError, RuntimeError)):
            raise
        status, message = _outcome(e, args, commands[args.command])
    # Printed out of the except block: the failed frames are gone, and with them their progress bars
    # (closed as they are freed), so the message is the last line, not above a bar's final redraw.
    gc.collect()
    if message:
        print(message, file=sys.stderr)
    return status


def _outcome(error: BaseException, args: argparse.Namespace, command: Command) -> Tuple[int, str]:
    """(exit status, the one line to print) of an error that ended the command; raises it again when it
    is neither the user's nor the system's."""
    if isinstance(error, BrokenPipeError):  # `drfast plan --json | head -1`: the reader is gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not fail again
        return 141, ""  # 128 + SIGPIPE, as a shell reports a writer killed by the closed pipe
    if isinstance(error, KeyboardInterrupt):
        return 130, f"drfast {args.command}: {interrupted_message(args)}"  # 128 + SIGINT
    if isinstance(error, USER_ERRORS):
        return 2, f"drfast {args.command}: error: {error_message(error, command.flags)}"
    os_error = os_error_of(error)  # the disk, not the input: a full disk, a file size limit, permissions
    if os_error is None:
        raise error
    return 1, f"drfast {args.command}: error: {os_error_message(os_error, getattr(args, 'output', None))}"


def _run(args: argparse.Namespace) -> int:
    _check_flags(args)
    check_command_output(args)
    status = args.func(args)
    shutdown_distributed()  # torchrun: every rank done before any closes the process group
    return status


def os_error_of(error: BaseException) -> Optional[OSError]:
    """The OSError behind `error`: itself, or the one it was raised from or while handling (torch.save
    turns a failed write into a RuntimeError raised while the OSError was being handled); else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
