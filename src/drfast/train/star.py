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
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from drfast.common.checks import check_choice, check_float, check_int
from drfast.common.dataclass_args import option
from drfast.common.distributed import all_gather_rows, share_of_mean, slice_of
from drfast.common.errors import UsageError
from drfast.train.core import TrainConfig, TrainingRun, digest, encode_some, sample_rows
from drfast.train.losses import ranknet_loss

METHODS = ("star", "inbatch", "randneg", "static")
PIPELINE_METHODS = METHODS + ("trisampler",)  # trisampler: star's loss on TriSampler negatives (run_star)


@dataclass
class StarConfig(TrainConfig):
    """STAR / baseline settings on top of the shared ones (the trainer takes METHODS; `drfast star`
    also trisampler)."""

    method: str = option("star", "star, a baseline (inbatch, randneg, static), or trisampler: star's loss on "
                                 "TriSampler negatives", choices=PIPELINE_METHODS)
    n_negatives: int = option(1, "negatives per query in a batch (hard for star/static, uniform for randneg)")
    alpha: Optional[float] = option(None, "alpha * L_random + L_hard (default: one mean over all pairs, as the "
                                          "reference code)")

    def check(self) -> None:
        super().check()
        check_choice(self.method, "method", METHODS)
        check_int(self.n_negatives, "n_negatives", 1)
        if self.alpha is not None:
            check_float(self.alpha, "alpha", 0.0)


def star_batch_loss(q: torch.Tensor, docs: torch.Tensor, pos_col: torch.Tensor, neg_cols: torch.Tensor,
                    known_pos: torch.Tensor, method: str = "star", alpha: Optional[float] = None,
                    score_scale: float = 1.0, reduce: Optional[Callable] = None) -> torch.Tensor:
    """Loss of one batch: q [B, d] and the batch's distinct documents docs [U, d]; pos_col [B] is each
    query's positive column, neg_cols [B, n] its own negatives' columns (-1: none), known_pos [B, U]
    True where a column is a positive of that query (those are never negatives). `reduce(mean, count)`,
    when given, maps each RankNet mean (over `count` pairs) to what is returned in its place (under
    torch.distributed: drfast.common.distributed.share_of_mean, q being a rank's share of the batch)."""
    B, U = q.shape[0], docs.shape[0]
    if known_pos.shape != (B, U):
        raise UsageError("known_pos", f"expected shape [{B}, {U}], got {tuple(known_pos.shape)}")
    s = q @ docs.T                                                    # [B, U]
    s_pos = s.gather(1, pos_col[:, None]).squeeze(1)
    own = torch.zeros(B, U + 1, dtype=torch.bool, device=s.device)    # column U collects the -1 padding
    own.scatter_(1, torch.where(neg_cols < 0, U, neg_cols), True)
    hard = own[:, :U] & ~known_pos
    random = ~known_pos & ~own[:, :U]

    def mean(mask):
        loss = ranknet_loss(s_pos, s, mask, score_scale)
        return loss if reduce is None else reduce(loss, int(mask.sum()))

    if method in ("randneg", "static"):
        return mean(hard)
    if method == "inbatch":
        return mean(random)
    if alpha is None:
        return mean(hard | random)
    return alpha * mean(random) + mean(hard)


class StarTrainer(TrainingRun):
    """Trains both towers of a BiEncoder with STAR or a negative-sampling baseline.

    Each batch row holds a query, one positive and (for star / static) its static hard negatives;
    every query is scored against every distinct document of the batch (encoded once), with pairs
    masked where the document is a known positive of that query, under a RankNet loss. Run management
    (checkpoints, resume, log, hooks) comes from `TrainingRun`.

    Parameters
    ----------
    model : BiEncoder
        The query and document towers (trained in place).
    corpus : Corpus
        Document texts: anything with ``rows(doc_ids)``, ``texts(rows)`` and ``__len__``.
    queries : dict
        ``{qid: text}``, the training queries.
    positives : dict
        ``{qid: [doc_id, ...]}``.
    negatives : dict, optional
        ``{qid: [doc_id, ...]}``: the static negatives for star / static (from `mine_from_index`,
        `mine_from_bm25` or `trisample`).
    config : StarConfig, optional
        The settings, among them the method (default: ``StarConfig()``).
    output_dir : str or os.PathLike, optional
        Where config.json, train_log.jsonl and checkpoint.pt go.
    hooks : sequence of (int, callable)
        Each hook runs every `int` optimizer steps (and once before the first step).
    """

    def __init__(self, model, corpus, *, queries: Dict[str, str], positives: Dict[str, Sequence[str]],
                 negatives: Optional[Dict[str, Sequence[str]]] = None, config: Optional[StarConfig] = None,
                 output_dir: Optional[str | os.PathLike] = None, hooks: Sequence[Tuple[int, Callable]] = ()):
        config = config or StarConfig()
        config.check()
        if config.method in ("star", "static") and not negatives:
            raise UsageError("negatives", f"method {config.method!r} needs static hard negatives per query")
        self.pos_rows: Dict[str, np.ndarray] = {}
        self.neg_rows: Dict[str, np.ndarray] = {}
        for qid in sorted(positives):
            if qid not in queries:
                raise UsageError("positives", f"query {qid!r} has no text in queries")
            if not positives[qid]:
                raise UsageError("positives", f"query {qid!r} has no positive document (drop it from the training set)")
            self.pos_rows[qid] = corpus.rows(list(positives[qid]))
            if config.method in ("star", "static"):
                negs = corpus.rows(list(negatives.get(qid, [])))
                negs = negs[~np.isin(negs, self.pos_rows[qid])]
                if negs.size == 0:
                    raise UsageError("negatives", f"query {qid!r} has no hard negative that is not a positive")
                self.neg_rows[qid] = np.unique(negs)
        super().__init__(model, sorted(self.pos_rows), config=config, output_dir=output_dir, hooks=hooks)
        self.corpus, self.queries = corpus, queries
        self.scale = float(config.score_scale or getattr(model.query_encoder, "similarity_scale", 1.0))

    def identity(self) -> Dict[str, str]:
        """The shared identity, the query texts, positive and negative rows, and the corpus: its size
        and the ids and texts of up to 1024 evenly spaced rows."""
        rows = sample_rows(len(self.corpus))
        corpus = [len(self.corpus), [str(self.corpus.doc_ids[int(r)]) for r in rows], self.corpus.texts(rows)]
        return {**super().identity(), "queries": digest([self.queries[q] for q in self.items]),
                "positives": digest([self.pos_rows[q].tolist() for q in self.items]),
                "negatives": digest([self.neg_rows[q].tolist() if q in self.neg_rows else None for q in self.items]),
                "corpus": digest(corpus)}

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
        pos, negs = self._sample(qids)  # of the GLOBAL batch: the same draws on every rank as in one process
        rows = np.unique(np.concatenate([pos, negs[negs >= 0]]))       # each document encoded once
        col = {int(r): i for i, r in enumerate(rows)}
        device = self.device
        pos_col = torch.tensor([col[int(r)] for r in pos], device=device)
        neg_cols = torch.tensor([[col[int(r)] if r >= 0 else -1 for r in row] for row in negs], dtype=torch.int64,
                                device=device).reshape(len(qids), -1)
        known_pos = torch.tensor(np.stack([np.isin(rows, self.pos_rows[q]) for q in qids]), device=device)
        # Under torch.distributed each rank encodes its share of the queries and of the documents; the
        # documents are gathered with their gradients in rank order, so the columns are the global
        # batch's (those of one process) and each query is scored against all of them.
        qa, qb = self.dist.slice(len(qids))
        da, db = self.dist.slice(len(rows))
        with self.autocast():
            q, d = self.forward(self._encode_share, [self.queries[qid] for qid in qids[qa:qb]],
                                self.corpus.texts(rows[da:db]))
        W = self.dist.world_size
        d = all_gather_rows(d.float(), [np.diff(slice_of(len(rows), r, W))[0] for r in range(W)])
        loss = star_batch_loss(q.float(), d, pos_col[qa:qb], neg_cols[qa:qb], known_pos[qa:qb], self.config.method,
                               self.config.alpha, self.scale, reduce=share_of_mean)
        return loss, {"docs": float(len(rows))}

    def _encode_share(self, query_texts: Sequence[str], doc_texts: Sequence[str]):
        """Both towers in one forward pass (one DDP forward per backward)."""
        return encode_some(self.model.query_encoder, query_texts), encode_some(self.model.doc_encoder, doc_texts)
