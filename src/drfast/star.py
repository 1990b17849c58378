"""STAR (Zhan et al., SIGIR'21, sec. 6.1) and the negative-sampling baselines, training both towers.

Each batch row is a query, one of its positives and (for STAR, Static and Rand Neg) n negatives:
static hard negatives from a warm-up model (STAR, Static) or uniform corpus rows (Rand Neg). Every
document of the batch is encoded once (deduplicated), and each query is scored against all of them:
- STAR: its own hard negatives (the hard term) and every other document of the batch, the in-batch
  "random" negatives reused at no extra encoder cost (the random term);
- In-Batch: the other rows' positives only; Rand Neg and Static: the row's own negatives only.
Pairs whose document is a known positive of the query are masked (false negatives, by id). The loss
is RankNet log(1 + exp(s⁻ − s⁺)); STAR's total is α·L_random + L_hard (Eq. 13), or, by default, the
reference implementation's plain mean over all unmasked pairs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from .losses import ranknet_loss
from .ops import check_int
from .training import TrainConfig, TrainingRun, _check_int

METHODS = ("star", "inbatch", "randneg", "static")  # trisampler: star's loss on TriSampler negatives (run_star)


@dataclass
class StarConfig(TrainConfig):
    """STAR / baseline settings on top of the shared ones."""

    method: str = "star"               # star | inbatch | randneg | static
    n_negatives: int = 1               # negatives per row (hard for star/static, uniform for randneg)
    alpha: Optional[float] = None      # None: one mean over all pairs; else alpha * L_random + L_hard
    score_scale: Optional[float] = None  # None: the model's similarity scale (20 cosine, else 1)

    def check(self) -> None:
        super().check()
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        _check_int(self, "n_negatives", 1)
        if self.alpha is not None and not self.alpha >= 0:
            raise ValueError(f"alpha: must be >= 0 (or None), got {self.alpha!r}")
        if self.score_scale is not None and not self.score_scale > 0:
            raise ValueError(f"score_scale: must be > 0 (or None for the model's), got {self.score_scale!r}")


def star_batch_loss(q: torch.Tensor, docs: torch.Tensor, pos_col: torch.Tensor, neg_cols: torch.Tensor,
                    known_pos: torch.Tensor, method: str = "star", alpha: Optional[float] = None,
                    score_scale: float = 1.0) -> torch.Tensor:
    """Loss of one batch: q [B, d] and the batch's distinct documents docs [U, d]; pos_col [B] is each
    query's positive column, neg_cols [B, n] its own negatives' columns (-1: none), known_pos [B, U]
    True where a column is a positive of that query (those are never negatives)."""
    B, U = q.shape[0], docs.shape[0]
    if known_pos.shape != (B, U):
        raise ValueError(f"known_pos: expected shape [{B}, {U}], got {tuple(known_pos.shape)}")
    s = q @ docs.T                                                    # [B, U]
    s_pos = s.gather(1, pos_col[:, None]).squeeze(1)
    own = torch.zeros(B, U + 1, dtype=torch.bool, device=s.device)    # column U collects the -1 padding
    own.scatter_(1, torch.where(neg_cols < 0, U, neg_cols), True)
    hard = own[:, :U] & ~known_pos
    random = ~known_pos & ~own[:, :U]
    if method in ("randneg", "static"):
        return ranknet_loss(s_pos, s, hard, score_scale)
    if method == "inbatch":
        return ranknet_loss(s_pos, s, random, score_scale)
    if alpha is None:
        return ranknet_loss(s_pos, s, hard | random, score_scale)
    return alpha * ranknet_loss(s_pos, s, random, score_scale) + ranknet_loss(s_pos, s, hard, score_scale)


class StarTrainer(TrainingRun):
    """Trains both towers of `model` (a drfast BiEncoder) on `queries` {qid: text} with `positives`
    {qid: [doc_id]} and, for star/static, static `negatives` {qid: [doc_id]} (from `drfast.mining` or
    TriSampler). `corpus` gives document texts (`rows(doc_ids)`, `texts(rows)`, `__len__`)."""

    def __init__(self, model, corpus, queries: Dict[str, str], positives: Dict[str, Sequence[str]],
                 negatives: Optional[Dict[str, Sequence[str]]] = None, config: Optional[StarConfig] = None,
                 output_dir: Optional[str | os.PathLike] = None, hooks: Sequence[Callable] = ()):
        config = config or StarConfig()
        config.check()
        if config.method in ("star", "static") and not negatives:
            raise ValueError(f"negatives: method {config.method!r} needs static hard negatives per query")
        self.pos_rows: Dict[str, np.ndarray] = {}
        self.neg_rows: Dict[str, np.ndarray] = {}
        for qid in sorted(positives):
            if qid not in queries:
                raise ValueError(f"positives: query {qid!r} has no text in queries")
            if not positives[qid]:
                raise ValueError(f"positives: query {qid!r} has no positive document (drop it from the training set)")
            self.pos_rows[qid] = corpus.rows(list(positives[qid]))
            if config.method in ("star", "static"):
                negs = corpus.rows(list(negatives.get(qid, [])))
                negs = negs[~np.isin(negs, self.pos_rows[qid])]
                if negs.size == 0:
                    raise ValueError(f"negatives: query {qid!r} has no hard negative that is not a positive")
                self.neg_rows[qid] = np.unique(negs)
        super().__init__(model, sorted(self.pos_rows), config, output_dir, hooks)
        self.corpus, self.queries = corpus, queries
        self.scale = float(config.score_scale or getattr(model.query_encoder, "similarity_scale", 1.0))

    def _sample(self, qids: Sequence[str]):
        """One positive and n negatives per query, drawn from a generator seeded by the position in
        the run, so a resumed run draws the same."""
        c = self.config
        rng = np.random.default_rng([c.seed, self.micro])
        pos = np.array([rng.choice(self.pos_rows[q]) for q in qids], np.int64)
        if c.method == "inbatch":
            return pos, np.full((len(qids), 0), -1, np.int64)
        negs = np.full((len(qids), c.n_negatives), -1, np.int64)
        for i, q in enumerate(qids):
            if c.method == "randneg":
                size = min(len(self.corpus), c.n_negatives + len(self.pos_rows[q]))
                pool = rng.choice(len(self.corpus), size=size, replace=False)
                pool = pool[~np.isin(pool, self.pos_rows[q])][:c.n_negatives]
            else:
                pool = rng.choice(self.neg_rows[q], size=min(c.n_negatives, len(self.neg_rows[q])), replace=False)
            negs[i, :len(pool)] = pool
        return pos, negs

    def micro_batch(self, qids: Sequence[str]):
        pos, negs = self._sample(qids)
        rows = np.unique(np.concatenate([pos, negs[negs >= 0]]))       # each document encoded once
        col = {int(r): i for i, r in enumerate(rows)}
        device = self.device
        pos_col = torch.tensor([col[int(r)] for r in pos], device=device)
        neg_cols = torch.tensor([[col[int(r)] if r >= 0 else -1 for r in row] for row in negs], dtype=torch.int64,
                                device=device).reshape(len(qids), -1)
        known_pos = torch.tensor(np.stack([np.isin(rows, self.pos_rows[q]) for q in qids]), device=device)
        with self.autocast():
            q = self.model.query_encoder([self.queries[qid] for qid in qids])
            d = self.model.doc_encoder(self.corpus.texts(rows))
        loss = star_batch_loss(q.float(), d.float(), pos_col, neg_cols, known_pos, self.config.method,
                               self.config.alpha, self.scale)
        return loss, {"docs": float(len(rows))}


# ---- the whole pipeline: what `drfast star` runs ------------------------------------------------
def static_negatives(data, encoders, source: str, method: str, mining=None, cache_dir=None, dtype="float16",
                     k: int = 200, seed: int = 0) -> Dict[str, list]:
    """{qid: [doc_id]} static negatives for the training queries: the warm-up model's top documents
    (source "model"), BM25's (source "bm25"), or TriSampler's draws from the model's top-k (method
    "trisampler"); positives are always excluded."""
    from .mining import MiningConfig, mine_split
    from .trisampler import TriSamplerConfig

    mining = mining or MiningConfig(depth=k, seed=seed)
    trisampler = TriSamplerConfig(n_negatives=mining.n, seed=seed) if method == "trisampler" else None
    mined = mine_split(data, encoders, "model" if trisampler else source, mining, cache_dir, dtype, trisampler)
    ids = list(data.corpus.doc_ids)
    return {q: [ids[r] for r in rows] for q, rows in mined.items() if rows}


def run_star(data_dir, model: str, output, train_split: str = "train", eval_split: str = "test",
             negatives: str = "model", config: Optional[StarConfig] = None, cache_dir=None, dtype: str = "float16",
             encoder_options=None, overlap_every: int = 0) -> dict:
    """Warm-up negatives, evaluation before, STAR (or a baseline, or TriSampler negatives with the
    STAR loss) on both towers, re-encoding of the corpus, evaluation after; writes OUTPUT/model
    (both towers: OUTPUT/model/query and OUTPUT/model/document) and OUTPUT/metrics.json.

    `overlap_every` > 0 logs `static_overlap` and `train_mrr10` (drfast.diagnostics) at step 0 and
    every that many steps, on at most 1000 training queries, against the top-200 of the corpus
    re-encoded with the current document tower (a whole corpus encoding per check). The static
    negatives are the method's own (star, static, trisampler), else the starting model's top-200."""
    import dataclasses
    import time

    from .data import load_beir
    from .encoders import BiEncoder, save_encoder
    from .retrieval import corpus_index, evaluate_model_encoders
    from .training import periodic_hooks, write_json_atomic

    config = config or StarConfig()
    method = config.method
    if negatives not in ("model", "bm25"):
        raise ValueError(f"negatives: expected 'model' or 'bm25', got {negatives!r}")
    check_int(overlap_every, "overlap_every", 0)
    output = Path(output)
    timings: dict = {}
    t_all = time.perf_counter()
    train, test = load_beir(data_dir, train_split), load_beir(data_dir, eval_split)
    model_ = BiEncoder.load(model, **(encoder_options or {}))
    before = evaluate_model_encoders(data_dir, test, model_, cache_dir, dtype, timings, "before")
    hard = None
    if method in ("star", "static", "trisampler"):
        t0 = time.perf_counter()
        hard = static_negatives(train, model_, negatives, method, cache_dir=cache_dir, dtype=dtype, seed=config.seed)
        timings["negatives_s"] = round(time.perf_counter() - t0, 3)
    train_config = dataclasses.replace(config, method="star" if method == "trisampler" else method)
    hooks = []
    if overlap_every:
        from .diagnostics import NegativeOverlapHook, reencoded_index

        depth = 200  # the depth the static negatives are mined from (static_negatives' k)
        # the starting document tower's corpus is cached already (evaluation before): no re-encoding at step 0
        start = corpus_index(data_dir, "", "flat", cache_dir, dtype, encoders=model_)

        def index_fn(tr):
            return start if tr.step == 0 else reencoded_index(tr.model.doc_encoder, tr.corpus)

        hook = (NegativeOverlapHook(train.queries, train.positives, hard, k=depth, index_fn=index_fn) if hard else
                NegativeOverlapHook.from_index(start, model_.query_encoder, train.queries, train.positives, k=depth,
                                               index_fn=index_fn))
        eval_every, hooks = periodic_hooks((overlap_every, hook))
        train_config = dataclasses.replace(train_config, eval_every=eval_every)
    trainer = StarTrainer(model_, train.corpus, train.queries, train.positives, hard, train_config, output / "run",
                          hooks)
    t0 = time.perf_counter()
    trainer.train()
    timings["train_s"] = round(time.perf_counter() - t0, 3)
    after = evaluate_model_encoders(data_dir, test, model_, cache_dir, dtype, timings, "after")
    save_encoder(model_.query_encoder, output / "model" / "query")
    save_encoder(model_.doc_encoder, output / "model" / "document")
    timings["total_s"] = round(time.perf_counter() - t_all, 3)
    report = {"before": before, "after": after, "timings": timings,
              "config": {"data": str(data_dir), "model": model, "negatives": negatives, "method": method,
                         "train_split": train_split, "eval_split": eval_split, "overlap_every": overlap_every,
                         **dataclasses.asdict(config)}}
    write_json_atomic(output / "metrics.json", report)
    return report
