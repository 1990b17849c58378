"""`drfast star`: static negatives from the warm-up model (or BM25, or TriSampler), STAR or a baseline
on both towers, evaluation before and after."""
from __future__ import annotations

import dataclasses
import time
from typing import Dict, Optional

from drfast.common.atomic import write_json_atomic
from drfast.common.checks import check_choice, check_int
from drfast.common.distributed import init_distributed
from drfast.common.timing import timed
from drfast.data import load_beir
from drfast.encode.corpus_cache import corpus_cache_key
from drfast.encode.encoders import BiEncoder, save_encoder
from drfast.eval.overlap import NegativeOverlapHook, reencoded_index
from drfast.negatives.mining import MiningConfig
from drfast.negatives.trisampler import TriSamplerConfig
from drfast.pipelines.corpus import corpus_index
from drfast.pipelines.evaluate import evaluate_encoders
from drfast.pipelines.inputs import check_beir, check_model, check_output_dir
from drfast.pipelines.mine import mine_split
from drfast.train.core import check_run_dir
from drfast.train.star import PIPELINE_METHODS, StarConfig, StarTrainer


# ---- the whole pipeline: what `drfast star` runs ------------------------------------------------
def static_negatives(data, encoders, *, source: str = "model", method: str = "star", mining=None, cache_dir=None,
                     dtype: str = "float16", encode_batch_size: int = 32, k: int = 200,
                     seed: int = 0) -> Dict[str, list]:
    """{qid: [doc_id]} static negatives for the training queries: the warm-up model's top documents
    (source "model"), BM25's (source "bm25"), or TriSampler's draws from the model's top-k (method
    "trisampler"); positives are always excluded."""
    mining = mining or MiningConfig(depth=k, seed=seed)
    trisampler = TriSamplerConfig(n_negatives=mining.n, seed=seed) if method == "trisampler" else None
    mined = mine_split(data, encoders, source="model" if trisampler else source, config=mining, cache_dir=cache_dir,
                       dtype=dtype, encode_batch_size=encode_batch_size, trisampler=trisampler)
    ids = data.corpus.doc_ids
    return {q: [str(ids[r]) for r in rows] for q, rows in mined.items() if rows}


def run_star(data_dir, model: str, output, *, negatives: str = "model", train_split: str = "train",
             eval_split: str = "test", config: Optional[StarConfig] = None, encoder_options: Optional[dict] = None,
             cache_dir=None, dtype: str = "float16", encode_batch_size: int = 32, overlap_every: int = 0,
             resume: bool = False, overwrite: bool = False) -> dict:
    """Warm-up negatives, evaluation before, STAR (or a baseline, or TriSampler negatives with the
    STAR loss) on both towers, re-encoding of the corpus, evaluation after; writes OUTPUT/model
    (both towers: OUTPUT/model/query and OUTPUT/model/document) and OUTPUT/metrics.json, whose
    "corpus_embeddings" names the cached corpus embeddings (CACHE/embeddings/KEY) that "before" and
    "after" were evaluated on: the starting and the trained document tower's.

    `overlap_every` > 0 logs `static_overlap` and `train_mrr10` (drfast.eval.overlap) at step 0 and
    every that many steps, on at most 1000 training queries, against the top-200 of the corpus
    re-encoded with the current document tower (a whole corpus encoding per check). The static
    negatives are the method's own (star, static, trisampler), else the starting model's top-200.

    OUTPUT/run holds the training run: `resume` continues it to the weights of an uninterrupted run
    (refused when settings or inputs differ), `overwrite` starts it over; a run folder with a
    checkpoint and neither is refused. Arguments are checked before any model is loaded.

    Under torchrun (torch.distributed) `config.batch_size` stays the global batch: each rank encodes
    its share of the queries and of the batch's documents, the documents are gathered across ranks
    with their gradients (every query sees the global batch's documents, as in one process) and DDP
    averages the gradients. Rank 0 mines the negatives, evaluates and writes the results."""
    ctx = init_distributed()
    config = config or StarConfig()
    method = config.method
    check_choice(method, "method", PIPELINE_METHODS)
    train_config = dataclasses.replace(config, method="star" if method == "trisampler" else method)
    train_config.check()
    check_choice(negatives, "negatives", ("model", "bm25"))
    check_int(overlap_every, "overlap_every", 0)
    output = check_output_dir(output)
    check_run_dir(output / "run", train_config, resume=resume, overwrite=overwrite, name="output")
    check_beir(data_dir, train_split=train_split, eval_split=eval_split)
    check_model(model, **(encoder_options or {}))
    timings: dict = {}
    t_all = time.perf_counter()
    train, test = load_beir(data_dir, train_split), load_beir(data_dir, eval_split)
    model_ = BiEncoder.load(model, **(encoder_options or {}))
    corpus = dict(cache_dir=cache_dir, dtype=dtype, encode_batch_size=encode_batch_size)
    keys = {"before": corpus_cache_key(model_.doc_encoder, test.corpus, dtype)}
    before, hard = {}, None
    if ctx.is_main:  # rank 0 evaluates and mines (filling the corpus cache); the others get the negatives
        with timed(timings, "evaluate_before_s"):
            before = evaluate_encoders(data_dir, test, model_, **corpus)
        if method in ("star", "static", "trisampler"):
            with timed(timings, "negatives_s"):
                hard = static_negatives(train, model_, source=negatives, method=method, seed=config.seed, **corpus)
    hard = ctx.broadcast(hard)
    hooks = []
    if overlap_every:
        depth = 200  # the depth the static negatives are mined from (static_negatives' k)
        # the starting document tower's corpus is cached already (evaluation before): no re-encoding at step 0
        start = corpus_index(data_dir, model_, **corpus)

        def index_fn(tr):
            return start if tr.step == 0 else reencoded_index(tr.model.doc_encoder, tr.corpus, encode_batch_size)

        hook = (NegativeOverlapHook(train.queries, train.positives, hard, k=depth, index_fn=index_fn) if hard else
                NegativeOverlapHook.from_index(start, model_.query_encoder, train.queries, train.positives, k=depth,
                                               index_fn=index_fn))
        hooks.append((overlap_every, hook))
    trainer = StarTrainer(model_, train.corpus, queries=train.queries, positives=train.positives, negatives=hard,
                          config=train_config, output_dir=output / "run", hooks=hooks)
    with timed(timings, "train_s"):
        trainer.train(resume=resume, overwrite=overwrite)
    keys["after"] = corpus_cache_key(model_.doc_encoder, test.corpus, dtype)  # the trained document tower's
    if not ctx.is_main:  # rank 0 evaluates and writes the results
        ctx.barrier()
        return {"before": before, "after": {}, "timings": timings}
    with timed(timings, "evaluate_after_s"):
        after = evaluate_encoders(data_dir, test, model_, **corpus)
    save_encoder(model_.query_encoder, output / "model" / "query")
    save_encoder(model_.doc_encoder, output / "model" / "document")
    timings["total_s"] = round(time.perf_counter() - t_all, 3)
    report = {"before": before, "after": after, "timings": timings, "corpus_embeddings": keys,
              "config": {"data": str(data_dir), "model": model, "negatives": negatives, "method": method,
                         "train_split": train_split, "eval_split": eval_split, "dtype": dtype,
                         "encode_batch_size": encode_batch_size, "overlap_every": overlap_every,
                         "world_size": ctx.world_size, **dataclasses.asdict(config)}}
    write_json_atomic(output / "metrics.json", report)
    ctx.barrier()
    return report
