"""ADORE (Zhan et al., SIGIR'21, sec. 6.2): train the query encoder against a fixed document index.

Every step encodes a batch of queries, retrieves their current top-k with the fused search (which also
gives each positive's exact corpus rank and the ΔMRR pair weights), gathers the candidates' vectors from
the index (decoded vectors for PQ: training sees exactly the index used at inference) and minimises the
LambdaLoss-weighted RankNet loss (`losses.adore_loss`). The document side never changes, unless
`train_centroids` (JPQ, Zhan et al., CIKM'21): then the PQ centroids are trained too, in an optimizer
group of their own (`centroid_lr`), while the codes (and an OPQ rotation) stay fixed. The fused search
reads the current centroids at every step, so the dynamic negatives come from the index as it is being
trained, and the decoded candidates and positives carry the gradient to the centroids.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from drfast.common.checks import check_bool, check_choice, check_float, check_int
from drfast.common.dataclass_args import option
from drfast.common.csr import row_of_each
from drfast.common.distributed import current, share_of_mean
from drfast.common.errors import UsageError
from drfast.index.protocol import Index
from drfast.index.sharded import ShardedIndex
from drfast.search.rank_metrics import mean_mrr
from drfast.train.core import TrainConfig, TrainingRun, digest, encode_some, sample_rows
from drfast.train.losses import adore_loss


NORMALIZERS = ("pairs", "nonzero")
# ADORE reads a positive's rank only through the pair weights (rank <= cutoff) and the logged MRR@10;
# 1000 keeps every rank those and MRR@100 / R@1000-style diagnostics read exact, while the two-stage
# search skips the exact work around deeper positives (most of its recomputations).
DEFAULT_RANK_DEPTH = 1000


@dataclass
class AdoreConfig(TrainConfig):
    """ADORE's settings on top of the shared ones (lr, batch, epochs, ... in TrainConfig)."""

    # one meaning of --k in every command: the same help as drfast evaluate's, errors' and check's
    k: int = option(200, "depth of each query's retrieved top-k (adore: the candidate negatives; errors: the K of "
                         "the top-K errors)")
    cutoff: int = option(10, "ΔMRR weights at MRR@cutoff (the paper: 200 passages, 10 documents)")
    only_if_unretrieved: bool = option(False, "the reference code's rule: unretrieved positives only when no "
                                              "positive is retrieved")
    normalizer: str = option("pairs", "divide each query's loss by all its (positive, negative) pairs, as the "
                                      "reference code, or by the nonzero-weight ones", choices=NORMALIZERS)
    train_centroids: bool = option(False, "JPQ: also train the PQ centroids of a pq:M / opq:M index (the codes "
                                          "and an OPQ rotation stay fixed); the trained index is saved too")
    centroid_lr: float = option(1e-4, "peak learning rate of the centroids (train_centroids; no weight decay, "
                                      "the same linear schedule)")
    rank_depth: int = option(DEFAULT_RANK_DEPTH, "the search's positive ranks are exact down to max(k, cutoff, "
                                                 "this), deeper ones reported as that + 1 (0: the whole corpus)")

    def check(self) -> None:
        super().check()
        for name in ("k", "cutoff"):
            check_int(getattr(self, name), name, 1)
        check_int(self.rank_depth, "rank_depth", 0)
        check_choice(self.normalizer, "normalizer", NORMALIZERS)
        check_bool(self.train_centroids, "train_centroids")
        check_float(self.centroid_lr, "centroid_lr", 0.0, min_inclusive=False)

    def check_index_kind(self, kind: str) -> None:
        """ValueError when train_centroids is set for an index without centroids (`kind` "flat")."""
        if self.train_centroids and kind not in ("pq", "opq"):
            raise UsageError("train_centroids", f"trains the centroids of a PQ index (pq:M or opq:M); a {kind} index "
                             f"has none")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`: a host tensor bound for a CUDA device goes through pinned memory with a
    non-blocking copy (ordered on the current stream before the kernels that read it); a tensor that
    requires grad (JPQ's decoded rows) with a plain, differentiable copy."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda" and not t.requires_grad:
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def adore_batch_loss(q: torch.Tensor, index: Index, positives: Sequence[Sequence[int]], k: int = 200, cutoff: int = 10,
                     score_scale: float = 1.0, only_if_unretrieved: bool = False, normalizer: str = "pairs",
                     rank_depth: Optional[int] = DEFAULT_RANK_DEPTH):
    """The non-encoder part of an ADORE step: ``(loss, info)`` for query embeddings q [B, d] (with grad).

    One fused search gives the top-k, the positives' exact ranks and the pair weights; candidates and
    positives are scored with gradients against the index's own (decoded) vectors. A ShardedIndex
    (torch.distributed) searches and gathers collectively: every rank calls this once per step, with
    B = 0 too; positives are global rows.

    Parameters
    ----------
    q : torch.Tensor, float [B, d]
        Query embeddings, with gradients.
    index : Index
        A FlatIndex, PQIndex or ShardedIndex.
    positives : sequence of sequences of int
        Each query's positive rows.
    k : int
        Candidates per query.
    cutoff : int
        The MRR cutoff of the ΔMRR pair weights.
    score_scale, only_if_unretrieved, normalizer
        As in `adore_loss`.
    rank_depth : int or None
        Positive ranks are exact down to max(k, cutoff, rank_depth), deeper ones reported as that + 1
        (the weights and MRR@10 only need ranks <= cutoff / 10); None or 0: over the whole corpus.

    Returns
    -------
    loss : torch.Tensor
        The weighted RankNet loss, with gradients into q.
    info : dict
        Statistics of the step, among them ``mrr10`` (the batch's MRR@10 from the exact ranks) and
        ``pairs``.

    Examples
    --------
    >>> import torch, drfast
    >>> index = drfast.FlatIndex(torch.eye(4))
    >>> q = torch.tensor([[0.0, 1.0, 0.5, 0.0]], requires_grad=True)
    >>> loss, info = drfast.adore_batch_loss(q, index, [[2]], k=3, cutoff=10)
    >>> info["mrr10"]  # the positive, row 2, is second behind row 1
    0.5
    >>> loss.backward(); bool(q.grad[0, 2] < 0)  # the step raises the positive's score
    True
    """
    B = q.shape[0]
    if B == 0 and not isinstance(index, ShardedIndex):  # a rank without queries: nothing to search
        stats = dict.fromkeys(("pairs", "nonzero_pairs", "mean_weight", "queries_with_pairs",
                               "frac_queries_with_pairs", "positives_used", "mrr10", "search_s", "gather_s",
                               "loss_s"), 0.0)
        return q.sum() * 0.0, stats
    t0 = time.perf_counter()
    # Mixed placement (index on the host, encoder on a GPU): search the host copy of the queries; only
    # the candidate ids, pair weights and gathered rows cross back (pinned, non-blocking).
    depth = max(k, cutoff, rank_depth) if rank_depth else None  # ranks past the depth: depth + 1
    res = index.search(q.detach().float().to(getattr(index, "device", q.device)), k=k, positives=positives,
                       cutoff=cutoff, rank_depth=depth)
    t1 = time.perf_counter()
    cand = to_device(index.reconstruct(res.ids.clamp(min=0).reshape(-1).cpu()), q.device)
    cand = cand.view(B, res.ids.shape[1], index.dim)
    pos = to_device(index.reconstruct(res.pos_ids.cpu()), q.device)
    ids, offsets, pos_ids = (to_device(t, q.device) for t in (res.ids, res.pos_offsets, res.pos_ids))
    pos_query = row_of_each(offsets)
    t2 = time.perf_counter()
    qf = q.float()
    cand_scores = torch.einsum("bd,bkd->bk", qf, cand)
    pos_scores = (qf[pos_query] * pos).sum(-1)
    loss, stats = adore_loss(cand_scores, pos_scores, offsets, to_device(res.pair_weights, q.device), score_scale,
                             only_if_unretrieved, ids=ids, pos_ids=pos_ids, normalizer=normalizer)
    info = dict(stats, mrr10=mean_mrr(res.pos_offsets, res.pos_ranks),
                search_s=t1 - t0, gather_s=t2 - t1, loss_s=time.perf_counter() - t2)
    return loss, info


class EncoderAndCentroids(torch.nn.Module):
    """What a JPQ run trains: the query encoder and the PQ centroids, one module so that checkpoints
    (state_dict "encoder.*" and "centroids") and resume hold both."""

    def __init__(self, encoder: torch.nn.Module, centroids: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.centroids = torch.nn.Parameter(centroids.detach().clone())


class AdoreTrainer(TrainingRun):
    """Trains a query encoder with ADORE against a fixed index.

    Each step encodes a batch of queries, runs one fused search (top-k, every positive's exact corpus
    rank, ΔMRR pair weights), gathers the candidates' vectors from the index (decoded vectors for PQ)
    and minimises the weighted RankNet loss (`adore_batch_loss`). The document side never changes.
    Run management (checkpoints, resume, log, ``(every, hook)`` pairs) comes from `TrainingRun`.

    Parameters
    ----------
    query_encoder : Encoder
        The starting query tower (trained in place).
    index : Index
        A FlatIndex or PQIndex (or a ShardedIndex) whose doc_ids name the rows.
    queries : dict
        ``{qid: text}``, the training queries.
    positives : dict
        ``{qid: [doc_id, ...]}``.
    config : AdoreConfig, optional
        The settings (default: ``AdoreConfig()``). With ``config.train_centroids`` (PQ only: JPQ),
        ``self.index`` is a copy of `index` whose centroids are the parameter
        ``self.model.centroids``, trained with ``config.centroid_lr``; `index` itself is left as it
        was, and ``self.index`` is the trained index.
    output_dir : str or os.PathLike, optional
        Where config.json, train_log.jsonl and checkpoint.pt go.
    hooks : sequence of (int, callable)
        Each hook runs every `int` optimizer steps (and once before the first step).

    Notes
    -----
    ``.train(resume=...)`` runs it; a resumed run continues to the same weights as an uninterrupted one.
    """

    summed = ("pairs", "nonencoder_s")

    def __init__(self, query_encoder, index: Index, *, queries: Dict[str, str], positives: Dict[str, Sequence[str]],
                 config: Optional[AdoreConfig] = None, output_dir: Optional[str | os.PathLike] = None,
                 hooks: Sequence[Tuple[int, Callable]] = ()):
        config = config or AdoreConfig()
        config.check()
        if query_encoder.dim != index.dim:
            raise UsageError("query_encoder", f"dimension {query_encoder.dim} differs from the index's {index.dim}")
        if config.k > index.ntotal:
            raise UsageError("k", f"{config.k} candidates asked but the index has only {index.ntotal} rows")
        self.rows: Dict[str, List[int]] = {}
        for qid in sorted(positives):
            if qid not in queries:
                raise UsageError("positives", f"query {qid!r} has no text in queries")
            docs = list(positives[qid])
            if not docs:
                raise UsageError("positives", f"query {qid!r} has no positive document (drop it from the training set)")
            rows = index.doc_ids.rows(docs, name="positives", owner=f"query {qid!r}")
            self.rows[qid] = sorted(set(rows.tolist()))
        if not self.rows:
            raise UsageError("positives", "no training query")
        config.check_index_kind(getattr(index, "kind", type(index).__name__))
        if config.train_centroids and current().distributed:
            raise UsageError("train_centroids", "JPQ is not supported under torchrun yet (its centroids are trained "
                             "outside the encoder's forward pass); train it in one process")
        self.start_index, model, groups = index, query_encoder, None
        if config.train_centroids:
            model = EncoderAndCentroids(query_encoder, index.centroids)
            index = copy.copy(index)  # shares the codes; its centroids are the trained parameter
            index.centroids = model.centroids
            groups = [{"params": list(query_encoder.parameters())},
                      {"params": [model.centroids], "lr": config.centroid_lr, "weight_decay": 0.0}]
        super().__init__(model, sorted(self.rows), config=config, output_dir=output_dir, hooks=hooks,
                         param_groups=groups)
        self.encoder, self.index, self.queries = query_encoder, index, queries
        self.scale = float(config.score_scale or getattr(query_encoder, "similarity_scale", 1.0))

    def identity(self) -> Dict[str, str]:
        """The shared identity, the query texts and positive rows, and the starting index (not the one
        being trained): its kind, size, and a digest of the vectors and ids of up to 1024 evenly spaced
        rows (cheap at any size)."""
        start = self.start_index
        rows = sample_rows(start.ntotal)
        kind = type(getattr(start, "local", start)).__name__  # a ShardedIndex: its shards' kind (same rows)
        index = [kind, start.ntotal, start.dim, start.doc_ids.take(rows), digest(start.reconstruct(rows))]
        return {**super().identity(), "queries": digest([self.queries[q] for q in self.items]),
                "positives": digest([self.rows[q] for q in self.items]), "index": digest(index)}

    def micro_batch(self, qids: Sequence[str]):
        qids = self.local(qids)  # this rank's share of the global batch (all of it in one process)
        with self.autocast():
            q = self.forward(encode_some, self.encoder, [self.queries[qid] for qid in qids])
        t0 = time.perf_counter()
        c = self.config
        loss, info = adore_batch_loss(q.float(), self.index, [self.rows[qid] for qid in qids], c.k, c.cutoff,
                                      self.scale, c.only_if_unretrieved, c.normalizer, c.rank_depth)
        # the loss is a mean over the queries with pairs: this rank's share of the global batch's mean
        loss = share_of_mean(loss, info["queries_with_pairs"])
        # search + gather + loss: the part drfast owns (its backward is folded into the encoder's)
        return loss, dict(info, nonencoder_s=time.perf_counter() - t0)

    def _record(self, epoch: int, window: List[dict], step_s: float) -> dict:
        record = super()._record(epoch, window, step_s)
        record["nonencoder_share"] = record.pop("nonencoder_s") / step_s
        return {k: record[k] for k in ("step", "epoch", "lr", "loss", "mrr10", "pairs", "step_s", "nonencoder_share")}

    def progress(self, record: dict) -> dict:
        return {"loss": f"{record['loss']:.4f}", "mrr10": f"{record['mrr10']:.3f}"}
