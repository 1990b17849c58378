"""`drfast adore`: encode the corpus, build the index, evaluate, train the query encoder with ADORE,
evaluate again and write OUTPUT/metrics.json."""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from drfast.common.atomic import write_json_atomic
from drfast.common.checks import check_int
from drfast.common.distributed import init_distributed
from drfast.common.errors import UsageError, UsageTypeError
from drfast.data import load_beir
from drfast.encode.encoders import BiEncoder, save_encoder
from drfast.eval.overlap import NegativeOverlapHook
from drfast.eval.retrieve import retrieve
from drfast.eval.trec import evaluate
from drfast.index.sharded import ShardedIndex
from drfast.index.spec import build_index, parse_index_spec
from drfast.pipelines.corpus import corpus_embeddings, corpus_index
from drfast.pipelines.inputs import check_beir, check_index_spec, check_model, check_output_dir
from drfast.pipelines.memory_plan import plan_adore_run
from drfast.pipelines.saved_index import check_saved_index_inputs, load_saved_index_inputs
from drfast.train.adore import AdoreConfig, AdoreTrainer
from drfast.train.core import check_run_dir


# ---- the whole pipeline: what `drfast adore` and `drfast demo` run ------------------------------
def run_adore(data_dir: str | os.PathLike, model: str, output: str | os.PathLike, *, index_spec: str = "flat",
              train_split: str = "train", eval_split: str = "test", config: Optional[AdoreConfig] = None,
              query_model: Optional[str] = None, encoder_options: Optional[dict] = None,
              cache_dir: Optional[str | os.PathLike] = None, dtype: str = "float16", encode_batch_size: int = 32,
              index_seed: int = 0, also_evaluate_on: Sequence[str] = (), eval_every: int = 0,
              overlap_every: int = 0, static_negatives: Optional[Dict[str, Sequence[str]]] = None,
              device: str = "auto", resume: bool = False, overwrite: bool = False,
              first_pass: Optional[str] = None, index_dir: Optional[str | os.PathLike] = None,
              gpu_memory: Optional[int | str] = None, ignore_plan: bool = False,
              shard_index: Optional[bool] = None) -> dict:
    """Encode the corpus with the starting model (cached), build the index, evaluate, train the query
    encoder with ADORE, evaluate again, save the query encoder to OUTPUT/query_encoder and write
    OUTPUT/metrics.json ({"before", "after", "config", "timings"}). `query_model` (default: `model`)
    is the starting query encoder, e.g. a STAR-trained query tower over STAR's document tower.
    `also_evaluate_on` adds evaluations of the trained and the starting query encoder on other index
    specs (e.g. a flat-trained model on pq:48). With `config.train_centroids` (JPQ, a pq:M or opq:M
    index) the centroids are trained too: "after" is evaluated on the trained index, which is saved to
    OUTPUT/index (drfast.load_index reads it back). With `index_dir`, a saved index (drfast.load_index,
    memory-mapped) is trained against instead: no corpus text, no corpus encoding, `query_model` (else
    `model`) is the starting query encoder (see drfast.pipelines.saved_index).

    Two hooks with periods of their own (0: off), each also run at step 0: `eval_every` logs eval_*
    metrics of the eval split; `overlap_every` logs `static_overlap` and `train_mrr10`
    (drfast.eval.overlap) on a fixed sample of at most 1000 training queries, whose static negatives
    are `static_negatives` {qid: [doc_id]} or, by default, the starting query encoder's top-k (config.k)
    non-positives of the index.

    OUTPUT/run holds the training run (config.json, train_log.jsonl, checkpoint.pt): `resume`
    continues it (refused when settings or inputs differ), `overwrite` starts it over; a run folder
    with a checkpoint and neither is refused. Every argument is checked before any model is loaded
    or any document encoded (drfast.pipelines.inputs).

    Before any model is loaded, the memory plan (drfast.pipelines.memory_plan) is printed: a run that
    does not fit in `gpu_memory` (bytes or "11GB"; default: the free memory of the CUDA device, when
    one is used) or in the host's available RAM is refused unless `ignore_plan`. Its placement is
    applied (the index on the GPU, or on the host searched by the CPU while the encoder trains on the
    GPU) and the plan is written to metrics.json under "memory_plan".

    Under torchrun (torch.distributed, drfast.common.distributed.init_distributed) each process is a
    rank: `config.batch_size` stays the global batch, each rank encodes its contiguous share, DDP
    averages the gradients (the result equals one process's up to float summation order). The index
    is replicated (each rank searches its own queries) or, with `shard_index` (default: when the
    memory plan says the run does not fit one device), split into contiguous row ranges searched
    collectively (drfast.ShardedIndex). Rank 0 fills the corpus cache, writes the checkpoints, the
    log, the query encoder and metrics.json; "before"/"after" are evaluated by rank 0 (replicated) or
    by every rank together (sharded)."""
    ctx = init_distributed()
    config = config or AdoreConfig()
    config.check()
    if shard_index is not None and not isinstance(shard_index, bool):
        raise UsageTypeError("shard_index", f"expected a bool or None, got {type(shard_index).__name__}")
    check_int(eval_every, "eval_every", 0)
    check_int(overlap_every, "overlap_every", 0)
    if static_negatives is not None and not overlap_every:
        raise UsageError("static_negatives", "only used by the overlap diagnostic; set overlap_every > 0")
    output = check_output_dir(output)
    check_run_dir(output / "run", config, resume=resume, overwrite=overwrite, name="output")
    if index_dir is not None:  # a saved index: no corpus text, no corpus encoding
        meta = check_saved_index_inputs(data_dir, index_dir, model, query_model, encoder_options=encoder_options,
                                        index_spec=index_spec, first_pass=first_pass,
                                        also_evaluate_on=also_evaluate_on, train_split=train_split,
                                        eval_split=eval_split)
        config.check_index_kind(meta["kind"])
        if config.k > meta["ntotal"]:
            raise UsageError("k", f"{config.k} candidates asked but the index has only {meta['ntotal']} rows")
        spec = meta["kind"] if meta["kind"] == "flat" else f"{'opq' if meta.get('opq') else 'pq'}:{meta['m']}"
        plan = plan_adore_run(docs=meta["ntotal"], dim=meta["dim"], index=spec, model=query_model or model,
                              first_pass=(meta.get("first_pass") or {}).get("kind"), config=config, device=device,
                              gpu_memory=gpu_memory, dtype=meta.get("dtype", "float32"), document_tower=False,
                              query_max_length=(encoder_options or {}).get("query_max_length"),
                              ignore_plan=ignore_plan or (ctx.distributed and shard_index is not False),
                              show=ctx.is_main)
        timings: dict = {}
        t_all = time.perf_counter()
        index, (train, test), query_encoder = load_saved_index_inputs(data_dir, index_dir, model, query_model,
                                                                      [train_split, eval_split], encoder_options)
    else:
        check_beir(data_dir, train_split=train_split, eval_split=eval_split)
        dim = check_model(model, query_model, **(encoder_options or {}))
        specs = [("index_spec", index_spec)] + [("also_evaluate_on", spec) for spec in also_evaluate_on]
        for name, spec in specs:
            check_index_spec(spec, dim, name=name)
        config.check_index_kind(parse_index_spec(index_spec)[0])
        timings: dict = {}
        t_all = time.perf_counter()
        train, test = load_beir(data_dir, train_split), load_beir(data_dir, eval_split)
        for name, spec in specs:
            check_index_spec(spec, dim, len(train.corpus), name)
        if config.k > len(train.corpus):
            raise UsageError("k", f"{config.k} candidates asked but the corpus has only {len(train.corpus)} documents")
        plan = plan_adore_run(docs=len(train.corpus), dim=dim, index=index_spec, first_pass=first_pass,
                              model=query_model or model, config=config, device=device, gpu_memory=gpu_memory,
                              dtype=dtype, query_max_length=(encoder_options or {}).get("query_max_length"),
                              doc_ids=train.corpus.doc_ids,
                              ignore_plan=ignore_plan or (ctx.distributed and shard_index is not False),
                              show=ctx.is_main)
        # the query tower starts from query_model
        encoders = BiEncoder.load(model, query_model, **(encoder_options or {}))
        if not ctx.is_main:
            ctx.barrier()  # rank 0 encodes the corpus into the cache first; the others read it
        index = corpus_index(data_dir, encoders, index_spec=index_spec, first_pass=first_pass, cache_dir=cache_dir,
                             dtype=dtype, encode_batch_size=encode_batch_size, index_seed=index_seed, timings=timings)
        if ctx.is_main:
            ctx.barrier()
        query_encoder = encoders.query_encoder
        if encoders.shared:  # the document tower's weights must stay those of the index
            query_encoder = copy.deepcopy(query_encoder)
    if device != "cpu" and torch.cuda.is_available():  # "auto": the GPU when there is one
        query_encoder.to(device if device != "auto" else "cuda")
        if plan is None or plan.placement["index"] == "gpu":  # else mixed: the index stays on the host (CPU search)
            index = index.to(query_encoder.device)
    elif device not in ("auto", "cpu"):
        raise UsageError("device", f"{device!r} asked for but torch sees no CUDA device")
    sharded = ctx.distributed and (shard_index if shard_index is not None else plan is not None and not plan.fits)
    if sharded:  # each rank keeps its contiguous row range; search and gather become collective
        index = ShardedIndex.from_full(index)

    def evaluate_on(idx) -> dict:
        """The metrics (rank 0; a sharded index: every rank searches together, {} on the others)."""
        if not isinstance(idx, ShardedIndex) and not ctx.is_main:
            return {}
        with torch.inference_mode():
            run = retrieve(idx, query_encoder, test.queries, k=100, show_progress=False)  # None on ranks > 0
        return evaluate(run, test.qrels) if ctx.is_main else {}

    extra = {}
    if also_evaluate_on:  # the same cached corpus embeddings as the main index
        emb, _ = corpus_embeddings(data_dir, encoders, cache_dir=cache_dir, dtype=dtype,
                                   encode_batch_size=encode_batch_size, show_progress=False)
        extra = {spec: build_index(emb, index.doc_ids, spec, index_seed).to(query_encoder.device)
                 for spec in also_evaluate_on}
    t0 = time.perf_counter()
    before = evaluate_on(index)
    before_extra = {spec: evaluate_on(idx) for spec, idx in extra.items()}
    timings["evaluate_before_s"] = round(time.perf_counter() - t0, 3)

    def eval_hook(tr, step: int) -> dict:  # step 0 is the "before" evaluation, not to be redone
        return {f"eval_{k}": v for k, v in (before if step == 0 else evaluate_on(index)).items()}

    hooks = [(eval_every, eval_hook)]
    if overlap_every:
        t0 = time.perf_counter()
        if static_negatives is None:
            overlap = NegativeOverlapHook.from_index(index, query_encoder, train.queries, train.positives, k=config.k)
        else:
            overlap = NegativeOverlapHook(train.queries, train.positives, static_negatives, k=config.k)
        hooks.append((overlap_every, overlap))
        timings["overlap_setup_s"] = round(time.perf_counter() - t0, 3)
    trainer = AdoreTrainer(query_encoder, index, queries=train.queries, positives=train.positives, config=config,
                           output_dir=output / "run", hooks=hooks)
    index = trainer.index  # train_centroids: the index being trained (eval_hook and "after" see it)
    t0 = time.perf_counter()
    trainer.train(resume=resume, overwrite=overwrite)
    timings["train_s"] = round(time.perf_counter() - t0, 3)
    shares = [r["nonencoder_share"] for r in trainer.history if "nonencoder_share" in r]
    if shares:  # search + gather + loss as a share of the whole step (encoder, backward, optimizer)
        timings["nonencoder_share_of_step"] = round(float(np.mean(shares)), 4)
    t0 = time.perf_counter()
    after = evaluate_on(index)
    after_extra = {spec: evaluate_on(idx) for spec, idx in extra.items()}
    timings["evaluate_after_s"] = round(time.perf_counter() - t0, 3)
    if not ctx.is_main:  # rank 0 writes the results
        ctx.barrier()
        return {"before": before, "after": after, "timings": timings}
    save_encoder(query_encoder, output / "query_encoder")
    if config.train_centroids:
        index.save(output / "index")
    timings["total_s"] = round(time.perf_counter() - t_all, 3)
    report = {"before": before, "after": after,
              "config": {"data": str(data_dir), "model": model, "query_model": query_model, "index": index_spec,
                         "index_dir": None if index_dir is None else str(index_dir),
                         "train_split": train_split, "eval_split": eval_split, "dtype": dtype,
                         "encode_batch_size": encode_batch_size, "index_seed": index_seed, "first_pass": first_pass,
                         "also_evaluate_on": list(also_evaluate_on), "device": str(query_encoder.device),
                         "eval_every": eval_every, "overlap_every": overlap_every,
                         "score_scale_used": trainer.scale, "world_size": ctx.world_size,
                         "shard_index": sharded, **dataclasses.asdict(config)},
              "timings": timings}
    report["memory_plan"] = None if plan is None else plan.to_dict()
    if extra:
        report["other_indexes"] = {spec: {"before": before_extra[spec], "after": after_extra[spec]} for spec in extra}
    write_json_atomic(output / "metrics.json", report)
    ctx.barrier()
    return report

