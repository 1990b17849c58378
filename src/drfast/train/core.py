"""The trainer core every drfast trainer shares: optimisation and run management.

AdamW with linear warm-up and decay, gradient clipping, gradient accumulation, autocast, epochs over
a fixed list of training items in a seeded order, hooks, a JSONL log (TensorBoard optional) and an
atomic checkpoint from which `train(resume=True)` continues to the result of an uninterrupted run.
A trainer subclasses `TrainingRun` and implements `micro_batch(items) -> (loss, info)`.
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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from drfast.common.atomic import save_torch_atomic, write_json_atomic
from drfast.common.checks import check_choice, check_float, check_int
from drfast.common.dataclass_args import option


AMP = ("none", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Settings every trainer shares; a run saves its config as config.json. Each field is also a
    flag of `drfast adore` and `drfast star` (drfast.common.dataclass_args)."""

    lr: float = option(4e-5, "peak learning rate of AdamW")
    weight_decay: float = option(0.01, "AdamW weight decay")
    batch_size: int = option(32, "training queries per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    epochs: int = option(4, "passes over the training queries")
    max_steps: int = option(0, "stop after this many optimizer steps (0: run all epochs)")
    warmup_ratio: float = option(0.1, "linear warm-up over this share of the steps, then linear decay")
    max_grad_norm: float = option(1.0, "clip the gradient norm to this")
    amp: str = option("none", "autocast: bf16 (CPU or GPU) or fp16 (GPU, with loss scaling)", choices=AMP)
    gradient_checkpointing: bool = option(False, "trade compute for memory in Hugging Face encoders")
    score_scale: Optional[float] = option(None, "scores are multiplied by this in the loss (default: the model's "
                                                "similarity scale, 20 for normalised sentence-transformers models, "
                                                "else 1)")
    seed: int = option(0, "seed of every random draw of the run")
    save_every: int = option(50, "checkpoint every N optimizer steps (and at the end)", metavar="N")
    log_every: int = option(1, "log every N optimizer steps (and at every hook call)", metavar="N")
    tensorboard: bool = option(False, "also log to OUTPUT/run/tensorboard (needs the tensorboard package)")

    def check(self) -> None:
        for name in ("batch_size", "grad_accum", "epochs", "save_every", "log_every"):
            check_int(getattr(self, name), name, 1)
        for name in ("max_steps", "seed"):
            check_int(getattr(self, name), name, 0)
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio!r}")
        check_choice(self.amp, "amp", AMP)
        if self.score_scale is not None:
            check_float(self.score_scale, "score_scale", 0.0, min_inclusive=False)


def linear_schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TrainingRun:
    """Trains `model` (a torch module) on `items` (e.g. query ids), `config.batch_size` at a time.

    Subclasses implement `micro_batch(items) -> (loss, info)`; `info` holds floats to log. Keys listed
    in `summed` are added over a step's micro-batches, the others averaged. `hooks` are (every, hook)
    pairs: hook(trainer, step) is called after every `every`-th optimizer step (every 0: never), the
    hooks due at a step in the order given, and may return a dict to log with that step's record. A
    run that starts from scratch also calls each hook once before the first step and logs what they
    return as step 0 ({"step": 0, "epoch": 0, ...}, without "loss"). Hooks should draw no random
    numbers (encoding in eval mode draws none), so that adding or removing one leaves the trained
    weights unchanged.
    """

    summed: Tuple[str, ...] = ()

    def __init__(self, model: torch.nn.Module, items: Sequence, *, config: Optional[TrainConfig] = None,
                 output_dir: Optional[str | os.PathLike] = None, hooks: Sequence[Tuple[int, Callable]] = ()):
        config = config or TrainConfig()
        config.check()
        if not items:
            raise ValueError("items: no training example")
        self.model, self.items, self.config = model, list(items), config
        self.hooks = _check_hooks(hooks)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.device = next(model.parameters()).device
        if config.gradient_checkpointing:
            for module in model.modules():
                if hasattr(module, "gradient_checkpointing_enable"):
                    module.gradient_checkpointing_enable()
        self.batches_per_epoch = math.ceil(len(self.items) / config.batch_size)
        steps = config.epochs * math.ceil(self.batches_per_epoch / config.grad_accum)
        self.total_steps = min(steps, config.max_steps) if config.max_steps else steps
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = linear_schedule(self.optimizer, int(config.warmup_ratio * self.total_steps), self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and self.device.type == "cuda")
        self.writer = None
        if config.tensorboard and self.output_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError("tensorboard: logging to TensorBoard needs `pip install tensorboard`") from e
            self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        self.step = 0          # optimizer steps done
        self.micro = 0         # micro-batches done (position in the data order)
        self.history: List[dict] = []

    def micro_batch(self, items: Sequence) -> Tuple[torch.Tensor, Dict[str, float]]:
        raise NotImplementedError

    def autocast(self):
        if self.config.amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.config.amp == "bf16" else torch.float16)

    def order(self, epoch: int) -> List:
        """The epoch's data order: a function of the seed and the epoch only, so a resumed run sees the same."""
        perm = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.items))
        return [self.items[i] for i in perm]

    def _run_micro_batch(self, items: Sequence) -> dict:
        t0 = time.perf_counter()
        loss, info = self.micro_batch(items)
        self.scaler.scale(loss / self.config.grad_accum).backward()
        return dict(info, loss=float(loss.detach()), micro_s=time.perf_counter() - t0)

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _record(self, epoch: int, window: List[dict], step_s: float) -> dict:
        record = {"step": self.step, "epoch": epoch + 1, "lr": self.scheduler.get_last_lr()[0]}
        for key in window[0]:
            values = [w[key] for w in window]
            record[key] = float(np.sum(values) if key in self.summed else np.mean(values))
        del record["micro_s"]
        record["step_s"] = step_s
        return record

    def progress(self, record: dict) -> dict:
        """What the progress bar shows; subclasses add their own statistics."""
        return {"loss": f"{record['loss']:.4f}"}

    def train(self, resume: bool = False) -> List[dict]:
        c = self.config
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.output_dir / "config.json", dataclasses.asdict(c))
        if resume and self.output_dir is not None and (self.output_dir / "checkpoint.pt").exists():
            self._load_checkpoint()
        else:
            torch.manual_seed(c.seed)
            random.seed(c.seed)
            self._write_log()  # the log mirrors the history: no records left from an earlier run here
        self.model.train()
        if self.step == 0:
            # The starting point of every curve, before any update (a resumed run already has it).
            start = self._run_hooks(0)
            if start:
                self._log({"step": 0, "epoch": 0, **start})
        bar = tqdm(total=self.total_steps, initial=self.step, desc=type(self).__name__.replace("Trainer", ""),
                   unit="step")
        started, first_step = time.perf_counter(), self.step
        window: List[dict] = []
        while self.step < self.total_steps:
            epoch, pos = divmod(self.micro, self.batches_per_epoch)
            if epoch >= c.epochs:
                break
            window.append(self._run_micro_batch(self.order(epoch)[pos * c.batch_size:(pos + 1) * c.batch_size]))
            self.micro += 1
            if len(window) < c.grad_accum and self.micro % self.batches_per_epoch != 0:
                continue
            t_opt = time.perf_counter()
            self._optimizer_step()
            record = self._record(epoch, window, sum(w["micro_s"] for w in window) + time.perf_counter() - t_opt)
            window = []
            rate = (self.step - first_step) / (time.perf_counter() - started)
            bar.set_postfix(**self.progress(record), steps_s=f"{rate:.2f}")
            bar.update(1)
            hooked = self._run_hooks(self.step)
            record.update(hooked)
            if self.step % c.log_every == 0 or hooked:
                self._log(record)
            if self.step % c.save_every == 0 or self.step == self.total_steps:
                self._save_checkpoint()
        bar.close()
        self.model.eval()
        return self.history

    def _run_hooks(self, step: int) -> dict:
        """What the hooks due at `step` return (all of them at step 0)."""
        out: dict = {}
        for every, hook in self.hooks:
            if step % every == 0:
                out.update(hook(self, step) or {})
        return out

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
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        save_torch_atomic(self.output_dir / "checkpoint.pt", state)

    def _load_checkpoint(self) -> None:
        state = torch.load(self.output_dir / "checkpoint.pt", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.micro, self.history = state["step"], state["micro"], state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self._write_log()  # the records up to the checkpoint (later ones are redone)

    def _write_log(self) -> None:
        if self.output_dir is not None:
            with open(self.output_dir / "train_log.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.history)


def _check_hooks(hooks: Sequence[Tuple[int, Callable]]) -> List[Tuple[int, Callable]]:
    """The (every, hook) pairs with every > 0 (0: never)."""
    active = []
    for pair in hooks:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and callable(pair[1])):
            raise TypeError(f"hooks: expected (every, hook) pairs with a callable hook, got {pair!r}")
        if check_int(pair[0], "hooks: every", 0):
            active.append((pair[0], pair[1]))
    return active
