"""`drfast star`: static negatives from the warm-up model (or BM25, or TriSampler), STAR or a baseline
on both towers, evaluation before and after."""
from __future__ import annotations

import dataclasses
import time
from typing import Dict, Optional

from drfast.common.atomic import write_json_atomic
from drfast.common.checks import check_choice
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
from drfast.pipelines.inputs import check_beir, check_has_positives, check_model, check_output_dir
from drfast.pipelines.mine import mine_split
from drfast.pipelines.specs import CorpusSpec, EncoderSpec, OutputSpec, TrainSpec, config_of
from drfast.train.core import check_run_dir
from drfast.train.star import PIPELINE_METHODS, StarConfig, StarTrainer


# ---- the whole pipeline: what `drfast star` runs ------------------------------------------------
def static_negatives(data, encoders: BiEncoder, corpus: CorpusSpec, *, source: str = "model", method: str = "star",
                     mining: Optional[MiningConfig] = None, k: int = 200, seed: int = 0) -> Dict[str, list]:
    """{qid: [doc_id]} static negatives for the training queries: the warm-up model's top documents
    (source "model"), BM25's (source "bm25"), or TriSampler's draws from the model's top-k (method
    "trisampler"); positives are always excluded. The corpus embeddings are cached as `corpus` says."""
    mining = mining or MiningConfig(depth=k, seed=seed)
    trisampler = TriSamplerConfig(n_negatives=mining.n, seed=seed) if method == "trisampler" else None
    mined = mine_split(data, encoders, corpus, source="model" if trisampler else source, config=mining,
                       trisampler=trisampler)
    ids = data.corpus.doc_ids
    return {q: [str(ids[r]) for r in rows] for q, rows in mined.items() if rows}


def run_star(corpus: CorpusSpec, encoder: EncoderSpec, output: OutputSpec, *, config: Optional[StarConfig] = None,
             train: Optional[TrainSpec] = None) -> dict:
    """Warm-up negatives (`train.negatives`: the model's or BM25's), evaluation before, STAR (or a
    baseline, or TriSampler negatives with the STAR loss) on both towers, re-encoding of the corpus,
    evaluation after; writes OUTPUT/model (both towers: OUTPUT/model/query and OUTPUT/model/document)
    and OUTPUT/metrics.json, whose "corpus_embeddings" names the cached corpus embeddings
    (CACHE/embeddings/KEY) that "before" and "after" were evaluated on: the starting and the trained
    document tower's. `encoder.query_model` is not used: both towers start from `encoder.model`.

    `train.overlap_every` > 0 logs `static_overlap` and `train_mrr10` (drfast.eval.overlap) at step 0
    and every that many steps, on at most 1000 training queries, against the top-200 of the corpus
    re-encoded with the current document tower (a whole corpus encoding per check). The static
    negatives are the method's own (star, static, trisampler), else the starting model's top-200.

    OUTPUT/run holds the training run: `output.resume` continues it to the weights of an uninterrupted
    run (refused when settings or inputs differ), `output.overwrite` starts it over; a run folder with
    a checkpoint and neither is refused. Arguments are checked before any model is loaded.

    Under torchrun (torch.distributed) `config.batch_size` stays the global batch: each rank encodes
    its share of the queries and of the batch's documents, the documents are gathered across ranks
    with their gradients (every query sees the global batch's documents, as in one process) and DDP
    averages the gradients. Rank 0 mines the negatives, evaluates and writes the results."""
    ctx = init_distributed()
    config, train = config or StarConfig(), train or TrainSpec()
    train_config, out = _check_settings(corpus, encoder, output, config, train)
    timings: dict = {}
    t_all = time.perf_counter()
    train_data, test = load_beir(corpus.data, train.train_split), load_beir(corpus.data, train.eval_split)
    check_has_positives(train_data, train.train_split, corpus.data, "train_split")
    check_has_positives(test, train.eval_split, corpus.data, "eval_split")
    towers = BiEncoder.load(encoder.model, **encoder.load_options)
    keys = {"before": corpus_cache_key(towers.doc_encoder, test.corpus, corpus.dtype)}
    before, hard = {}, None
    if ctx.is_main:  # rank 0 evaluates and mines (filling the corpus cache); the others get the negatives
        with timed(timings, "evaluate_before_s"):
            before = evaluate_encoders(corpus, test, towers)
        if config.method in ("star", "static", "trisampler"):
            with timed(timings, "negatives_s"):
                hard = static_negatives(train_data, towers, corpus, source=train.negatives, method=config.method,
                                        seed=config.seed)
    hard = ctx.broadcast(hard)
    hooks = [] if not train.overlap_every else [(train.overlap_every, _overlap_hook(corpus, towers, train_data, hard))]
    trainer = StarTrainer(towers, train_data.corpus, queries=train_data.queries, positives=train_data.positives,
                          negatives=hard, config=train_config, output_dir=out / "run", hooks=hooks)
    with timed(timings, "train_s"):
        trainer.train(resume=output.resume, overwrite=output.overwrite)
    keys["after"] = corpus_cache_key(towers.doc_encoder, test.corpus, corpus.dtype)  # the trained document tower's
    if not ctx.is_main:  # rank 0 evaluates and writes the results
        ctx.barrier()
        return {"before": before, "after": {}, "timings": timings}
    with timed(timings, "evaluate_after_s"):
        after = evaluate_encoders(corpus, test, towers)
    save_encoder(towers.query_encoder, out / "model" / "query")
    save_encoder(towers.doc_encoder, out / "model" / "document")
    timings["total_s"] = round(time.perf_counter() - t_all, 3)
    report = {"before": before, "after": after, "timings": timings, "corpus_embeddings": keys,
              "config": config_of(corpus, encoder, train, output, config, world_size=ctx.world_size)}
    write_json_atomic(out / "metrics.json", report)
    ctx.barrier()
    return report


def _check_settings(corpus: CorpusSpec, encoder: EncoderSpec, output: OutputSpec, config: StarConfig,
                    train: TrainSpec):
    """(the trainer's config, OUTPUT): every check that needs no weights."""
    check_choice(config.method, "method", PIPELINE_METHODS)
    train_config = dataclasses.replace(config, method="star" if config.method == "trisampler" else config.method)
    train_config.check()
    for spec in (corpus, encoder, output, train):
        spec.check()
    out = check_output_dir(output.output)
    check_run_dir(out / "run", train_config, resume=output.resume, overwrite=output.overwrite, name="output")
    check_beir(corpus.data, train_split=train.train_split, eval_split=train.eval_split)
    check_model(encoder.model, **encoder.load_options)
    return train_config, out


def _overlap_hook(corpus: CorpusSpec, towers: BiEncoder, train_data, hard):
    """The overlap diagnostic against the top-200 of the corpus encoded by the current document tower."""
    depth = 200  # the depth the static negatives are mined from (static_negatives' k)
    # the starting document tower's corpus is cached already (evaluation before): no re-encoding at step 0
    start = corpus_index(corpus, towers.doc_encoder, documents=train_data.corpus)

    def index_fn(tr):
        return start if tr.step == 0 else reencoded_index(tr.model.doc_encoder, tr.corpus, corpus.encode_batch_size)

    if hard:
        return NegativeOverlapHook(train_data.queries, train_data.positives, hard, k=depth, index_fn=index_fn)
    return NegativeOverlapHook.from_index(start, towers.query_encoder, train_data.queries, train_data.positives,
                                          k=depth, index_fn=index_fn)
