"""ADORE (Zhan et al., SIGIR'21, sec. 6.2): train the query encoder against a fixed document index.

Every step encodes a batch of queries, retrieves their current top-k with the fused search (which also
gives each positive's exact corpus rank and the ΔMRR pair weights), gathers the candidates' vectors from
the index (decoded vectors for PQ: training sees exactly the index used at inference) and minimises the
LambdaLoss-weighted RankNet loss (`losses.adore_loss`). The document side never changes.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .losses import adore_loss
from .ops import check_int
from .training import TrainConfig, TrainingRun, _check_int, periodic_hooks, write_json_atomic


@dataclass
class AdoreConfig(TrainConfig):
    """ADORE's settings on top of the shared ones (lr, batch, epochs, ... in TrainConfig)."""

    k: int = 200                      # retrieved candidates per query (negatives come from these)
    cutoff: int = 10                  # ΔMRR weights at MRR@cutoff (the paper: 200 passages, 10 documents)
    score_scale: Optional[float] = None  # scores are multiplied by this in the loss; None: the model's
    #                                   similarity scale (20 for normalised sentence-transformers models, else 1)
    only_if_unretrieved: bool = False  # the reference's rule: unretrieved positives only when none is retrieved
    normalizer: str = "pairs"         # per-query divisor: all (positive, negative) pairs as the reference
    #                                   code, or only the "nonzero"-weight ones

    def check(self) -> None:
        super().check()
        for name in ("k", "cutoff"):
            _check_int(self, name, 1)
        if self.score_scale is not None and not self.score_scale > 0:
            raise ValueError(f"score_scale: must be > 0 (or None for the model's), got {self.score_scale!r}")
        if self.normalizer not in ("pairs", "nonzero"):
            raise ValueError(f"normalizer: expected 'pairs' or 'nonzero', got {self.normalizer!r}")


def mrr_at_10(pos_offsets: torch.Tensor, pos_ranks: torch.Tensor) -> float:
    """Mean over queries with positives of 1 / (best positive rank) within the top 10."""
    counts = pos_offsets.diff()
    if pos_ranks.numel() == 0:
        return 0.0
    query = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    best = torch.full((len(counts),), torch.iinfo(torch.int64).max, device=counts.device)
    best = best.scatter_reduce(0, query, pos_ranks, reduce="amin")[counts > 0]
    return float(torch.where(best <= 10, 1.0 / best.double(), torch.zeros((), dtype=torch.float64)).mean())


def adore_batch_loss(q: torch.Tensor, index, positives: Sequence[Sequence[int]], k: int = 200, cutoff: int = 10,
                     score_scale: float = 1.0, only_if_unretrieved: bool = False, normalizer: str = "pairs"):
    """The non-encoder part of an ADORE step: (loss, info) for query embeddings q [B, d] (with grad).

    One fused search gives the top-k, the positives' exact ranks and the pair weights; candidates and
    positives are scored with gradients against the index's own (decoded) vectors."""
    B = q.shape[0]
    res = index.search(q.detach().float(), k=k, positives=positives, cutoff=cutoff)
    ids = res.ids.to(q.device)
    cand = index.reconstruct(ids.clamp(min=0).reshape(-1).cpu()).to(q.device).view(B, ids.shape[1], -1)
    pos = index.reconstruct(res.pos_ids.cpu()).to(q.device)
    offsets = res.pos_offsets.to(q.device)
    pos_query = torch.repeat_interleave(torch.arange(B, device=q.device), offsets.diff())
    qf = q.float()
    cand_scores = torch.einsum("bd,bkd->bk", qf, cand)
    pos_scores = (qf[pos_query] * pos).sum(-1)
    loss, stats = adore_loss(cand_scores, pos_scores, offsets, res.pair_weights.to(q.device), score_scale,
                             only_if_unretrieved, ids=ids, pos_ids=res.pos_ids.to(q.device), normalizer=normalizer)
    info = dict(stats, mrr10=mrr_at_10(res.pos_offsets, res.pos_ranks))
    return loss, info


class AdoreTrainer(TrainingRun):
    """Trains `query_encoder` (a drfast Encoder) on `queries` {qid: text} with `positives`
    {qid: [doc_id, ...]} against `index` (FlatIndex or PQIndex whose doc_ids name the rows).

    Run management (checkpoints, resume, log, hooks) comes from `TrainingRun`.
    """

    summed = ("pairs", "nonencoder_s")

    def __init__(self, query_encoder, index, queries: Dict[str, str], positives: Dict[str, Sequence[str]],
                 config: Optional[AdoreConfig] = None, output_dir: Optional[str | os.PathLike] = None,
                 hooks: Sequence[Callable] = ()):
        config = config or AdoreConfig()
        config.check()
        if query_encoder.dim != index.dim:
            raise ValueError(f"query_encoder: dimension {query_encoder.dim} differs from the index's {index.dim}")
        if config.k > index.ntotal:
            raise ValueError(f"k: {config.k} candidates asked but the index has only {index.ntotal} rows")
        row_of = {doc_id: row for row, doc_id in enumerate(index.doc_ids)}
        self.rows: Dict[str, List[int]] = {}
        for qid in sorted(positives):
            if qid not in queries:
                raise ValueError(f"positives: query {qid!r} has no text in queries")
            docs = list(positives[qid])
            if not docs:
                raise ValueError(f"positives: query {qid!r} has no positive document (drop it from the training set)")
            missing = [d for d in docs if d not in row_of]
            if missing:
                raise ValueError(f"positives: document {missing[0]!r} of query {qid!r} is not in the index")
            self.rows[qid] = sorted({row_of[d] for d in docs})
        if not self.rows:
            raise ValueError("positives: no training query")
        super().__init__(query_encoder, sorted(self.rows), config, output_dir, hooks)
        self.encoder, self.index, self.queries = query_encoder, index, queries
        self.scale = float(config.score_scale or getattr(query_encoder, "similarity_scale", 1.0))

    def micro_batch(self, qids: Sequence[str]):
        with self.autocast():
            q = self.encoder([self.queries[qid] for qid in qids])
        t0 = time.perf_counter()
        c = self.config
        loss, info = adore_batch_loss(q.float(), self.index, [self.rows[qid] for qid in qids], c.k, c.cutoff,
                                      self.scale, c.only_if_unretrieved, c.normalizer)
        # search + gather + loss: the part drfast owns (its backward is folded into the encoder's)
        return loss, dict(info, nonencoder_s=time.perf_counter() - t0)

    def _record(self, epoch: int, window: List[dict], step_s: float) -> dict:
        record = super()._record(epoch, window, step_s)
        record["nonencoder_share"] = record.pop("nonencoder_s") / step_s
        return {k: record[k] for k in ("step", "epoch", "lr", "loss", "mrr10", "pairs", "step_s", "nonencoder_share")}

    def progress(self, record: dict) -> dict:
        return {"loss": f"{record['loss']:.4f}", "mrr10": f"{record['mrr10']:.3f}"}


# ---- the whole pipeline: what `drfast adore` and `drfast demo` run ------------------------------
def run_adore(data_dir: str | os.PathLike, model: str, output: str | os.PathLike, index_spec: str = "flat",
              train_split: str = "train", eval_split: str = "test", config: Optional[AdoreConfig] = None,
              cache_dir: Optional[str | os.PathLike] = None, dtype: str = "float16", encoder_options=None,
              index_seed: int = 0, resume: bool = False, eval_indexes: Sequence[str] = (),
              device: str = "auto", query_model: Optional[str] = None, overlap_every: int = 0,
              static_negatives: Optional[Dict[str, Sequence[str]]] = None) -> dict:
    """Encode the corpus with the starting model (cached), build the index, evaluate, train the query
    encoder with ADORE, evaluate again, save the query encoder to OUTPUT/query_encoder and write
    OUTPUT/metrics.json ({"before", "after", "config", "timings"}). `query_model` (default: `model`)
    is the starting query encoder, e.g. a STAR-trained query tower over STAR's document tower. `eval_indexes` adds evaluations of
    the trained and the starting query encoder on other index specs (e.g. a flat-trained model on pq:48).

    `config.eval_every` > 0 logs eval_* metrics of the eval split every that many steps and at step 0.
    `overlap_every` > 0 logs `static_overlap` and `train_mrr10` (drfast.diagnostics) every that many
    steps and at step 0, on a fixed sample of at most 1000 training queries; the static negatives are
    `static_negatives` {qid: [doc_id]} or, by default, the starting query encoder's top-k (config.k)
    non-positives of the index. The two periods are independent (the trainer's hooks run every gcd)."""
    from .data import load_beir
    from .encoders import BiEncoder, save_encoder
    from .evaluation import evaluate
    from .retrieval import build_index, corpus_index, parse_index_spec, retrieve

    parse_index_spec(index_spec)
    for spec in eval_indexes:
        parse_index_spec(spec)
    config = config or AdoreConfig()
    config.check()
    check_int(overlap_every, "overlap_every", 0)
    if static_negatives is not None and not overlap_every:
        raise ValueError("static_negatives: only used by the overlap diagnostic; set overlap_every > 0")
    output = Path(output)
    timings: dict = {}
    t_all = time.perf_counter()
    train, test = load_beir(data_dir, train_split), load_beir(data_dir, eval_split)
    encoders = BiEncoder.load(model, query_model, **(encoder_options or {}))  # the query tower starts from query_model
    index = corpus_index(data_dir, model, index_spec, cache_dir, dtype, seed=index_seed, encoders=encoders,
                         timings=timings)
    query_encoder = encoders.query_encoder
    if encoders.shared:  # the document tower's weights must stay those of the index
        import copy

        query_encoder = copy.deepcopy(query_encoder)
    if device != "cpu" and torch.cuda.is_available():  # "auto": the GPU when there is one
        query_encoder.to(device if device != "auto" else "cuda")
        index = index.to(query_encoder.device)
    elif device not in ("auto", "cpu"):
        raise ValueError(f"device: {device!r} asked for but torch sees no CUDA device")

    def evaluate_on(idx) -> dict:
        with torch.inference_mode():
            return evaluate(retrieve(idx, query_encoder, test.queries, k=100, show_progress=False), test.qrels)

    extra = {spec: build_index(_flat_rows(data_dir, cache_dir, dtype, encoders), index.doc_ids, spec,
                               index_seed).to(query_encoder.device) for spec in eval_indexes}
    t0 = time.perf_counter()
    before = evaluate_on(index)
    before_extra = {spec: evaluate_on(idx) for spec, idx in extra.items()}
    timings["evaluate_before_s"] = round(time.perf_counter() - t0, 3)

    def eval_hook(tr, step: int) -> dict:  # step 0 is the "before" evaluation, not to be redone
        return {f"eval_{k}": v for k, v in (before if step == 0 else evaluate_on(index)).items()}

    schedule = [(config.eval_every, eval_hook)]
    if overlap_every:
        from .diagnostics import NegativeOverlapHook

        t0 = time.perf_counter()
        if static_negatives is None:
            overlap = NegativeOverlapHook.from_index(index, query_encoder, train.queries, train.positives, k=config.k)
        else:
            overlap = NegativeOverlapHook(train.queries, train.positives, static_negatives, k=config.k)
        schedule.append((overlap_every, overlap))
        timings["overlap_setup_s"] = round(time.perf_counter() - t0, 3)
    eval_every, hooks = periodic_hooks(*schedule)
    trainer = AdoreTrainer(query_encoder, index, train.queries, train.positives,
                           dataclasses.replace(config, eval_every=eval_every), output_dir=output / "run", hooks=hooks)
    t0 = time.perf_counter()
    trainer.train(resume=resume)
    timings["train_s"] = round(time.perf_counter() - t0, 3)
    shares = [r["nonencoder_share"] for r in trainer.history if "nonencoder_share" in r]
    if shares:  # search + gather + loss as a share of the whole step (encoder, backward, optimizer)
        timings["nonencoder_share_of_step"] = round(float(np.mean(shares)), 4)
    t0 = time.perf_counter()
    after = evaluate_on(index)
    after_extra = {spec: evaluate_on(idx) for spec, idx in extra.items()}
    timings["evaluate_after_s"] = round(time.perf_counter() - t0, 3)
    save_encoder(query_encoder, output / "query_encoder")
    timings["total_s"] = round(time.perf_counter() - t_all, 3)
    report = {"before": before, "after": after,
              "config": {"data": str(data_dir), "model": model, "index": index_spec, "train_split": train_split,
                         "eval_split": eval_split, "dtype": dtype, "index_seed": index_seed,
                         "device": str(query_encoder.device), "overlap_every": overlap_every,
                         "score_scale_used": trainer.scale, **dataclasses.asdict(config)},
              "timings": timings}
    if extra:
        report["other_indexes"] = {spec: {"before": before_extra[spec], "after": after_extra[spec]} for spec in extra}
    write_json_atomic(output / "metrics.json", report)
    return report


def _flat_rows(data_dir, cache_dir, dtype, encoders):
    """The cached corpus embeddings (to build other indexes from when training on a PQ index)."""
    from .corpus_encoding import encode_corpus
    from .data import Corpus
    from .retrieval import DEFAULT_CACHE

    emb, _ = encode_corpus(encoders.doc_encoder, Corpus(Path(data_dir) / "corpus.jsonl"),
                           Path(cache_dir or DEFAULT_CACHE) / "embeddings", dtype=dtype, show_progress=False)
    return emb
