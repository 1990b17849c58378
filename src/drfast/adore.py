"""ADORE (Zhan et al., SIGIR'21, sec. 6.2): train the query encoder against a fixed document index.

Every step encodes a batch of queries, retrieves their current top-k with the fused search (which also
gives each positive's exact corpus rank and the ΔMRR pair weights), gathers the candidates' vectors from
the index (decoded vectors for PQ: training sees exactly the index used at inference) and minimises the
LambdaLoss-weighted RankNet loss (`losses.adore_loss`). The document side never changes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .losses import adore_loss


@dataclass
class AdoreConfig:
    """Training settings; saved as config.json beside every run."""

    k: int = 200                      # retrieved candidates per query (negatives come from these)
    cutoff: int = 10                  # ΔMRR weights at MRR@cutoff (the paper: 200 passages, 10 documents)
    score_scale: Optional[float] = None  # scores are multiplied by this in the loss; None: the model's
    #                                   similarity scale (20 for normalised sentence-transformers models, else 1)
    lr: float = 4e-5
    weight_decay: float = 0.01
    batch_size: int = 32
    grad_accum: int = 1               # micro-batches per optimizer step
    epochs: int = 4
    max_steps: int = 0                # stop after this many optimizer steps (0: run all epochs)
    warmup_ratio: float = 0.1         # linear warm-up over this share of the steps, then linear decay
    max_grad_norm: float = 1.0
    only_if_unretrieved: bool = False  # the reference's rule: unretrieved positives only when none is retrieved
    normalizer: str = "pairs"         # per-query divisor: all (positive, negative) pairs as the reference
    #                                   code, or only the "nonzero"-weight ones
    amp: str = "none"                 # "none", "bf16" (CPU or GPU) or "fp16" (GPU, with loss scaling)
    seed: int = 0
    save_every: int = 50              # checkpoint every N optimizer steps (and at the end)
    eval_every: int = 0               # call the evaluation hook every N optimizer steps (0: never)
    log_every: int = 1
    tensorboard: bool = False         # also log to OUTPUT/run/tensorboard (needs the tensorboard package)

    def check(self) -> None:
        for name in ("k", "cutoff", "batch_size", "grad_accum", "epochs", "save_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        for name in ("max_steps", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        if self.score_scale is not None and not self.score_scale > 0:
            raise ValueError(f"score_scale: must be > 0 (or None for the model's), got {self.score_scale!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio!r}")
        if self.normalizer not in ("pairs", "nonzero"):
            raise ValueError(f"normalizer: expected 'pairs' or 'nonzero', got {self.normalizer!r}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp: expected 'none', 'bf16' or 'fp16', got {self.amp!r}")


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


def _linear_schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class AdoreTrainer:
    """Trains `query_encoder` (a drfast Encoder) on `queries` {qid: text} with `positives`
    {qid: [doc_id, ...]} against `index` (FlatIndex or PQIndex whose doc_ids name the rows).

    With `output_dir`, the run keeps config.json, train_log.jsonl and an atomic checkpoint there, and
    `train(resume=True)` continues an interrupted run to the result of an uninterrupted one.
    `hooks` are called as hook(trainer, step) every `eval_every` steps and may return a dict to log.
    """

    def __init__(self, query_encoder, index, queries: Dict[str, str], positives: Dict[str, Sequence[str]],
                 config: Optional[AdoreConfig] = None, output_dir: Optional[str | os.PathLike] = None,
                 hooks: Sequence[Callable] = ()):
        self.config = config or AdoreConfig()
        self.config.check()
        if query_encoder.dim != index.dim:
            raise ValueError(f"query_encoder: dimension {query_encoder.dim} differs from the index's {index.dim}")
        if self.config.k > index.ntotal:
            raise ValueError(f"k: {self.config.k} candidates asked but the index has only {index.ntotal} rows")
        row_of = {doc_id: row for row, doc_id in enumerate(index.doc_ids)}
        self.qids: List[str] = []
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
            self.qids.append(qid)
            self.rows[qid] = sorted({row_of[d] for d in docs})
        if not self.qids:
            raise ValueError("positives: no training query")
        self.encoder, self.index, self.queries = query_encoder, index, queries
        self.hooks = list(hooks)
        self.scale = float(self.config.score_scale or getattr(query_encoder, "similarity_scale", 1.0))
        self.output_dir = None if output_dir is None else Path(output_dir)
        c = self.config
        self.batches_per_epoch = math.ceil(len(self.qids) / c.batch_size)
        steps = c.epochs * math.ceil(self.batches_per_epoch / c.grad_accum)
        self.total_steps = min(steps, c.max_steps) if c.max_steps else steps
        self.optimizer = torch.optim.AdamW(query_encoder.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.scheduler = _linear_schedule(self.optimizer, int(c.warmup_ratio * self.total_steps), self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=c.amp == "fp16" and query_encoder.device.type == "cuda")
        self.writer = None
        if self.config.tensorboard and self.output_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError("tensorboard: logging to TensorBoard needs `pip install tensorboard`") from e
            self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        self.step = 0          # optimizer steps done
        self.micro = 0         # micro-batches done (position in the data order)
        self.history: List[dict] = []

    # ---- one step ---------------------------------------------------------------------------
    def _autocast(self):
        device = self.encoder.device.type
        if self.config.amp == "none":
            return torch.autocast(device, enabled=False)
        return torch.autocast(device, dtype=torch.bfloat16 if self.config.amp == "bf16" else torch.float16)

    def _micro_batch(self, qids: Sequence[str]) -> dict:
        t0 = time.perf_counter()
        with self._autocast():
            q = self.encoder([self.queries[qid] for qid in qids])
        t1 = time.perf_counter()
        loss, info = adore_batch_loss(q.float(), self.index, [self.rows[qid] for qid in qids], self.config.k,
                                      self.config.cutoff, self.scale, self.config.only_if_unretrieved,
                                      self.config.normalizer)
        t2 = time.perf_counter()
        self.scaler.scale(loss / self.config.grad_accum).backward()
        # search + gather + loss: the part drfast owns (its backward is folded into the encoder's)
        return dict(info, loss=float(loss.detach()), nonencoder_s=t2 - t1, micro_s=time.perf_counter() - t0)

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _order(self, epoch: int) -> List[str]:
        """The epoch's data order: a function of the seed and the epoch only, so a resumed run sees the same."""
        perm = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.qids))
        return [self.qids[i] for i in perm]

    # ---- the loop ---------------------------------------------------------------------------
    def train(self, resume: bool = False) -> List[dict]:
        c = self.config
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(json.dumps(dataclasses.asdict(c), indent=2))
        if resume and self.output_dir is not None and (self.output_dir / "checkpoint.pt").exists():
            self._load_checkpoint()
        else:
            torch.manual_seed(c.seed)
            random.seed(c.seed)
        self.encoder.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="ADORE", unit="step")
        started, first_step = time.perf_counter(), self.step
        window: List[dict] = []
        while self.step < self.total_steps:
            epoch, pos = divmod(self.micro, self.batches_per_epoch)
            if epoch >= c.epochs:
                break
            order = self._order(epoch)
            window.append(self._micro_batch(order[pos * c.batch_size:(pos + 1) * c.batch_size]))
            self.micro += 1
            end_of_epoch = self.micro % self.batches_per_epoch == 0
            if len(window) < c.grad_accum and not end_of_epoch:
                continue
            t_opt = time.perf_counter()
            self._optimizer_step()
            step_s = sum(w["micro_s"] for w in window) + time.perf_counter() - t_opt
            record = {"step": self.step, "epoch": epoch + 1, "lr": self.scheduler.get_last_lr()[0],
                      "loss": float(np.mean([w["loss"] for w in window])),
                      "mrr10": float(np.mean([w["mrr10"] for w in window])),
                      "pairs": float(np.sum([w["pairs"] for w in window])),
                      "step_s": step_s, "nonencoder_share": sum(w["nonencoder_s"] for w in window) / step_s}
            window = []
            rate = (self.step - first_step) / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{record['loss']:.4f}", mrr10=f"{record['mrr10']:.3f}", steps_s=f"{rate:.2f}")
            bar.update(1)
            if c.eval_every and self.step % c.eval_every == 0:
                for hook in self.hooks:
                    record.update(hook(self, self.step) or {})
            if self.step % c.log_every == 0 or c.eval_every and self.step % c.eval_every == 0:
                self._log(record)
            if self.step % c.save_every == 0 or self.step == self.total_steps:
                self._save_checkpoint()
        bar.close()
        self.encoder.eval()
        return self.history

    # ---- run files --------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.writer is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, record["step"])
        if self.output_dir is not None:
            with open(self.output_dir / "train_log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _save_checkpoint(self) -> None:
        if self.output_dir is None:
            return
        state = {
            "step": self.step, "micro": self.micro, "history": self.history,
            "encoder": self.encoder.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        tmp = self.output_dir / ".checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.output_dir / "checkpoint.pt")

    def _load_checkpoint(self) -> None:
        state = torch.load(self.output_dir / "checkpoint.pt", weights_only=False)
        self.encoder.load_state_dict(state["encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.micro, self.history = state["step"], state["micro"], state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        # The log keeps exactly the records up to the checkpoint (later ones are redone).
        with open(self.output_dir / "train_log.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.history)


# ---- the whole pipeline: what `drfast adore` and `drfast demo` run ------------------------------
def run_adore(data_dir: str | os.PathLike, model: str, output: str | os.PathLike, index_spec: str = "flat",
              train_split: str = "train", eval_split: str = "test", config: Optional[AdoreConfig] = None,
              cache_dir: Optional[str | os.PathLike] = None, dtype: str = "float16", encoder_options=None,
              index_seed: int = 0, resume: bool = False, eval_indexes: Sequence[str] = (),
              device: str = "auto") -> dict:
    """Encode the corpus with the starting model (cached), build the index, evaluate, train the query
    encoder with ADORE, evaluate again, save the query encoder to OUTPUT/query_encoder and write
    OUTPUT/metrics.json ({"before", "after", "config", "timings"}). `eval_indexes` adds evaluations of
    the trained and the starting query encoder on other index specs (e.g. a flat-trained model on pq:48)."""
    from .data import load_beir
    from .encoders import BiEncoder, save_encoder
    from .evaluation import evaluate
    from .retrieval import build_index, corpus_index, parse_index_spec, retrieve

    parse_index_spec(index_spec)
    for spec in eval_indexes:
        parse_index_spec(spec)
    config = config or AdoreConfig()
    config.check()
    output = Path(output)
    timings: dict = {}
    t_all = time.perf_counter()
    train, test = load_beir(data_dir, train_split), load_beir(data_dir, eval_split)
    encoders = BiEncoder.load(model, **(encoder_options or {}))
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

    trainer = AdoreTrainer(query_encoder, index, train.queries, train.positives, config, output_dir=output / "run",
                           hooks=[lambda tr, step: {f"eval_{k}": v for k, v in evaluate_on(index).items()}])
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
                         "device": str(query_encoder.device),
                         "score_scale_used": trainer.scale, **dataclasses.asdict(config)},
              "timings": timings}
    if extra:
        report["other_indexes"] = {spec: {"before": before_extra[spec], "after": after_extra[spec]} for spec in extra}
    _write_json_atomic(output / "metrics.json", report)
    return report


def _flat_rows(data_dir, cache_dir, dtype, encoders):
    """The cached corpus embeddings (to build other indexes from when training on a PQ index)."""
    from .corpus_encoding import encode_corpus
    from .data import Corpus
    from .retrieval import DEFAULT_CACHE

    emb, _ = encode_corpus(encoders.doc_encoder, Corpus(Path(data_dir) / "corpus.jsonl"),
                           Path(cache_dir or DEFAULT_CACHE) / "embeddings", dtype=dtype, show_progress=False)
    return emb


def _write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
