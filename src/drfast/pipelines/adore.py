"""`drfast adore`: encode the corpus, build the index, evaluate, train the query encoder with ADORE,
evaluate again and write OUTPUT/metrics.json.

Before any model is loaded, the memory plan (drfast.pipelines.memory_plan) is logged: a run that
does not fit in `placement.gpu_memory` (default: the free memory of the CUDA device, when one is
used) or in the host's available RAM is refused unless `placement.ignore_plan`. Its placement is
applied (the index on the GPU; only a flat index's first-pass copy on the GPU with the exact rows on
the host, "gpu-first-pass"; or on the host searched by the CPU while the encoder trains on the GPU)
and the plan is written to metrics.json under "memory_plan". A first_pass of "auto" is built as the
plan resolved it (memory_plan.planned_first_pass).

Under torchrun (torch.distributed, drfast.common.distributed.init_distributed) each process is a
rank: `config.batch_size` stays the global batch, each rank encodes its contiguous share, DDP
averages the gradients (the result equals one process's up to float summation order). The index
is replicated (each rank searches its own queries) or, with `placement.shard_index` (default: when
the memory plan says the run does not fit one device), split into contiguous row ranges searched
collectively (drfast.ShardedIndex). Rank 0 fills the corpus cache, writes the checkpoints, the
log, the query encoder and metrics.json; "before"/"after" are evaluated by rank 0 (replicated) or
by every rank together (sharded).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from drfast.common.atomic import write_json_atomic
from drfast.common.distributed import DistContext, init_distributed
from drfast.common.errors import UsageError
from drfast.common.timing import timed
from drfast.data import load_beir
from drfast.encode.encoders import save_encoder
from drfast.eval.overlap import NegativeOverlapHook
from drfast.eval.retrieve import retrieve
from drfast.eval.trec import evaluate
from drfast.index.sharded import ShardedIndex
from drfast.index.spec import build_index, parse_index_spec
from drfast.pipelines.corpus import PreparedSplit, corpus_embeddings, load_split_index, prepare_split
from drfast.pipelines.inputs import check_has_positives, check_index_spec, check_output_dir
from drfast.pipelines.memory_plan import PlannedRun, place_for_plan, plan_adore_run, planned_first_pass
from drfast.pipelines.saved_index import load_split_of_index
from drfast.pipelines.specs import CorpusSpec, EncoderSpec, IndexSpec, OutputSpec, PlacementSpec, TrainSpec, config_of
from drfast.train.adore import AdoreConfig, AdoreTrainer
from drfast.train.core import check_run_dir

logger = logging.getLogger(__name__)


# ---- the whole pipeline: what `drfast adore` and `drfast demo` run ------------------------------
def run_adore(corpus: CorpusSpec, encoder: EncoderSpec, output: OutputSpec, index: IndexSpec = IndexSpec(), *,
              config: Optional[AdoreConfig] = None, train: Optional[TrainSpec] = None,
              placement: Optional[PlacementSpec] = None,
              static_negatives: Optional[Dict[str, Sequence[str]]] = None) -> dict:
    """Encode the corpus with the starting model (cached), build the index, evaluate, train the query
    encoder with ADORE, evaluate again, save the query encoder to OUTPUT/query_encoder and write
    OUTPUT/metrics.json ({"before", "after", "config", "timings"}). `encoder.query_model` (default:
    `encoder.model`) is the starting query encoder, e.g. a STAR-trained query tower over STAR's
    document tower. `train.also_evaluate_on` adds evaluations of the trained and the starting query
    encoder on other index specs (e.g. a flat-trained model on pq:48). With `config.train_centroids`
    (JPQ, a pq:M or opq:M index) the centroids are trained too: "after" is evaluated on the trained
    index, which is saved to OUTPUT/index (drfast.load_index reads it back). With `index.index_dir`, a
    saved index (drfast.load_index, memory-mapped) is trained against instead: no corpus text, no
    corpus encoding, the query model (else the model) is the starting query encoder (see
    drfast.pipelines.saved_index).

    Two hooks with periods of their own (0: off), each also run at step 0: `train.eval_every` logs
    eval_* metrics of the eval split; `train.overlap_every` logs `static_overlap` and `train_mrr10`
    (drfast.eval.overlap) on a fixed sample of at most 1000 training queries, whose static negatives
    are `static_negatives` {qid: [doc_id]} or, by default, the starting query encoder's top-k (config.k)
    non-positives of the index.

    OUTPUT/run holds the training run (config.json, train_log.jsonl, checkpoint.pt): `output.resume`
    continues it (refused when settings or inputs differ), `output.overwrite` starts it over; a run
    folder with a checkpoint and neither is refused. Every argument is checked before any model is
    loaded or any document encoded (drfast.pipelines.inputs).

    The memory plan and the distributed run: see the module's doc."""
    ctx = init_distributed()
    config, train, placement = config or AdoreConfig(), train or TrainSpec(), placement or PlacementSpec()
    out = _check_settings(corpus, encoder, output, index, config, train, placement, static_negatives)
    timings: dict = {}
    t_all = time.perf_counter()
    prepared, test = _prepare(corpus, encoder, index, train, config)
    plan = _plan(prepared, encoder, config, placement, ctx)
    # "auto" built as the plan sized it (e.g. int8-lean when the first pass goes to an 11 GB GPU)
    index = dataclasses.replace(index, first_pass=planned_first_pass(index.first_pass, plan))
    if not ctx.is_main:
        ctx.barrier()  # rank 0 encodes the corpus into the cache first; the others read it
    found = load_split_index(prepared, corpus, encoder, index, timings=timings)
    if ctx.is_main:
        ctx.barrier()
    query_encoder = found.query_encoder
    if found.encoders is not None and found.encoders.shared:  # the document tower's weights must stay the index's
        query_encoder = copy.deepcopy(query_encoder)
    searched = _place(found.index, query_encoder, placement.device, plan)
    sharded = ctx.distributed and (placement.shard_index if placement.shard_index is not None
                                   else plan is not None and not plan.fits)
    if sharded:  # each rank keeps its contiguous row range; search and gather become collective
        searched = ShardedIndex.from_full(searched)
    extra = _other_indexes(corpus, found, train.also_evaluate_on, index.index_seed, query_encoder.device)
    with timed(timings, "evaluate_before_s"):
        before = _evaluate_on(searched, query_encoder, test, ctx)
        before_extra = {spec: _evaluate_on(idx, query_encoder, test, ctx) for spec, idx in extra.items()}

    def eval_hook(tr, step: int) -> dict:  # step 0 is the "before" evaluation, not to be redone
        return {f"eval_{k}": v for k, v in (before if step == 0 else _evaluate_on(searched, query_encoder, test,
                                                                                   ctx)).items()}

    hooks = [(train.eval_every, eval_hook)]
    if train.overlap_every:
        with timed(timings, "overlap_setup_s"):
            hooks.append((train.overlap_every, _overlap_hook(searched, query_encoder, prepared.data, config,
                                                             static_negatives)))
    trainer = AdoreTrainer(query_encoder, searched, queries=prepared.data.queries, positives=prepared.data.positives,
                           config=config, output_dir=out / "run", hooks=hooks)
    searched = trainer.index  # train_centroids: the index being trained (eval_hook and "after" see it)
    with timed(timings, "train_s"):
        trainer.train(resume=output.resume, overwrite=output.overwrite)
    shares = [r["nonencoder_share"] for r in trainer.history if "nonencoder_share" in r]
    if shares:  # search + gather + loss as a share of the whole step (encoder, backward, optimizer)
        timings["nonencoder_share_of_step"] = round(float(np.mean(shares)), 4)
    with timed(timings, "evaluate_after_s"):
        after = _evaluate_on(searched, query_encoder, test, ctx)
        after_extra = {spec: _evaluate_on(idx, query_encoder, test, ctx) for spec, idx in extra.items()}
    if not ctx.is_main:  # rank 0 writes the results
        ctx.barrier()
        return {"before": before, "after": after, "timings": timings}
    save_encoder(query_encoder, out / "query_encoder")
    if config.train_centroids:
        searched.save(out / "index")
    timings["total_s"] = round(time.perf_counter() - t_all, 3)
    report = {"before": before, "after": after,
              "config": config_of(corpus, encoder, index, train, placement, output, config,
                                  first_pass=index.first_pass_kind, device=str(query_encoder.device),
                                  score_scale_used=trainer.scale, world_size=ctx.world_size, shard_index=sharded),
              "timings": timings, "memory_plan": None if plan is None else plan.to_dict()}
    if extra:
        report["other_indexes"] = {spec: {"before": before_extra[spec], "after": after_extra[spec]} for spec in extra}
    write_json_atomic(out / "metrics.json", report)
    ctx.barrier()
    return report


def _check_settings(corpus: CorpusSpec, encoder: EncoderSpec, output: OutputSpec, index: IndexSpec,
                    config: AdoreConfig, train: TrainSpec, placement: PlacementSpec, static_negatives):
    """The checks of run_adore's settings that read no file but the run folder; returns OUTPUT."""
    config.check()
    for spec in (corpus, encoder, output, index, train, placement):
        spec.check()
    if static_negatives is not None and not train.overlap_every:
        raise UsageError("static_negatives", "only used by the overlap diagnostic; set overlap_every > 0")
    if index.index_dir is not None and train.also_evaluate_on:
        raise UsageError("index_dir", f"a saved index is searched as it was saved; also_evaluate_on="
                         f"{train.also_evaluate_on!r} cannot be combined with it")
    out = check_output_dir(output.output)
    check_run_dir(out / "run", config, resume=output.resume, overwrite=output.overwrite, name="output")
    return out


def _plan(prepared: PreparedSplit, encoder: EncoderSpec, config: AdoreConfig, placement: PlacementSpec,
          ctx: DistContext):
    """The memory plan of the run (logged by rank 0; see plan_adore_run), before any model is loaded."""
    saved = prepared.saved_index is not None
    run = PlannedRun.of_adore(config, docs=prepared.docs, dim=prepared.dim, index=prepared.index_kind,
                              first_pass=prepared.first_pass, model=encoder.query_model or encoder.model,
                              dtype=prepared.dtype, query_max_length=encoder.query_max_length, document_tower=not saved)
    plan = plan_adore_run(run, device=placement.device, gpu_memory=placement.gpu_memory,
                          doc_ids=None if saved else prepared.data.corpus.doc_ids,
                          ignore_plan=placement.ignore_plan or (ctx.distributed and placement.shard_index is not False))
    if plan is not None and ctx.is_main:
        logger.info("%s", plan.table())
    return plan


def _prepare(corpus: CorpusSpec, encoder: EncoderSpec, index: IndexSpec, train: TrainSpec, config: AdoreConfig):
    """(the training split prepared, the eval split): every check that needs no weights."""
    splits = {"train_split": train.train_split, "eval_split": train.eval_split}
    prepared = prepare_split(corpus, encoder, index, train.train_split, splits=splits)
    for spec in train.also_evaluate_on:
        check_index_spec(spec, prepared.dim, prepared.docs, "also_evaluate_on")
    config.check_index_kind(parse_index_spec(prepared.index_kind)[0])
    if config.k > prepared.docs:
        what = "the index has only {} rows" if prepared.saved_index is not None else "the corpus has only {} documents"
        raise UsageError("k", f"{config.k} candidates asked but {what.format(prepared.docs)}")
    if prepared.saved_index is not None:
        test = load_split_of_index(corpus.data, prepared.saved_index, index.index_dir, train.eval_split)
    else:
        test = load_beir(corpus.data, train.eval_split)
    check_has_positives(test, train.eval_split, corpus.data, "eval_split")
    return prepared, test


def _place(index, query_encoder, device: str, plan):
    """The query encoder on `device` ("auto": the GPU when there is one) and the index where the plan
    puts it; returns the index."""
    if device != "cpu" and torch.cuda.is_available():
        query_encoder.to(device if device != "auto" else "cuda")
        # all of it on the GPU, only its first pass (gpu-first-pass), or on the host (mixed: CPU search)
        index = place_for_plan(index, query_encoder.device, plan)
    elif device not in ("auto", "cpu"):
        raise UsageError("device", f"{device!r} asked for but torch sees no CUDA device")
    return index


def _other_indexes(corpus: CorpusSpec, found, specs: Sequence[str], index_seed: int, device) -> dict:
    """{spec: index} of also_evaluate_on, from the same cached corpus embeddings as the main index."""
    if not specs:
        return {}
    emb, _ = corpus_embeddings(corpus, found.doc_encoder, documents=found.data.corpus, show_progress=False)
    return {spec: build_index(emb, found.index.doc_ids, spec, index_seed).to(device) for spec in specs}


def _evaluate_on(index, query_encoder, test, ctx: DistContext) -> dict:
    """The metrics (rank 0; a sharded index: every rank searches together, {} on the others)."""
    if not isinstance(index, ShardedIndex) and not ctx.is_main:
        return {}
    with torch.inference_mode():
        run = retrieve(index, query_encoder, test.queries, k=100, show_progress=False)  # None on ranks > 0
    return evaluate(run, test.qrels) if ctx.is_main else {}


def _overlap_hook(index, query_encoder, data, config: AdoreConfig, static_negatives):
    if static_negatives is None:
        return NegativeOverlapHook.from_index(index, query_encoder, data.queries, data.positives, k=config.k)
    return NegativeOverlapHook(data.queries, data.positives, static_negatives, k=config.k)
