"""The trainer core every drfast trainer shares: optimisation and run management.

AdamW with linear warm-up and decay, gradient clipping, gradient accumulation, autocast, epochs over
a fixed list of training items in a seeded order, hooks, a JSONL log (TensorBoard optional) and an
atomic checkpoint from which `train(resume=True)` continues to the result of an uninterrupted run.
A trainer subclasses `TrainingRun` and implements `micro_batch(items) -> (loss, info)`.

A run folder holds config.json, train_log.jsonl and checkpoint.pt. `train()` refuses a folder that
holds a checkpoint unless told to continue it (`resume=True`, `--resume`) or to start over
(`overwrite=True`, `--overwrite`). Resuming compares the checkpoint's settings and inputs with the
current ones (`check_resumable`): every TrainConfig field but those in `RESUME_MAY_CHANGE`, and the
run's `identity()` (the starting model's weights and encoder settings, the training data, the index
or corpus), and refuses any difference, so a checkpoint never continues under settings it was not
trained with.

Under torch.distributed (torchrun; drfast.common.distributed) every rank runs the same loop over the
same global batches: a trainer encodes its rank's contiguous share (`local`, through `forward`, which
goes through DistributedDataParallel) and scales its loss with `share_of_mean`, so that DDP's average
of the gradients is the one-process gradient up to float summation order. Rank 0 writes config.json
(with `world_size`), the log and the checkpoint (the others wait at a barrier; each rank's random
state is saved); a checkpoint resumes only on the same world size.
"""
from __future__ import annotations

import dataclasses
import hashlib
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

from drfast.common.atomic import save_torch_atomic, write_json_atomic, write_text_atomic
from drfast.common.checks import check_bool, check_choice, check_float, check_int
from drfast.common.dataclass_args import option
from drfast.common.distributed import all_reduce_sum, current
from drfast.common.errors import UsageError, UsageFileExistsError, UsageTypeError
from drfast.encode.corpus_cache import weights_digest
from drfast.encode.encoders import Encoder


AMP = ("none", "bf16", "fp16")
# Settings a resumed run may change: they decide what is logged and saved, never the trained weights.
RESUME_MAY_CHANGE = ("save_every", "log_every", "tensorboard")
CHECKPOINT, CONFIG, LOG = "checkpoint.pt", "config.json", "train_log.jsonl"


@dataclass
class TrainConfig:
    """Settings every trainer shares; a run saves its config as config.json (and in its checkpoint).
    Each field is also a flag of `drfast adore` and `drfast star` (drfast.common.dataclass_args). A
    resumed run must keep every field but those in RESUME_MAY_CHANGE."""

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
            raise UsageError("lr", f"must be > 0, got {self.lr!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise UsageError("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio!r}")
        check_choice(self.amp, "amp", AMP)
        if self.score_scale is not None:
            check_float(self.score_scale, "score_scale", 0.0, min_inclusive=False)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The positions of `n` training items in the order epoch `epoch` (0-based) visits them: a function of
    the seed and the epoch only (the sentence-transformers integration's DrfastBatchSampler reproduces it)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def total_steps(n: int, config: TrainConfig) -> int:
    """Optimizer steps of a run over `n` training items: every epoch's last step may take fewer micro-batches;
    max_steps (when > 0) stops it earlier."""
    steps = config.epochs * math.ceil(math.ceil(n / config.batch_size) / config.grad_accum)
    return min(steps, config.max_steps) if config.max_steps else steps


def warmup_steps(total: int, config: TrainConfig) -> int:
    """Steps of the linear warm-up (see linear_schedule)."""
    return int(config.warmup_ratio * total)


def linear_schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TrainingRun:
    """Trains `model` (a torch module) on `items` (e.g. query ids), `config.batch_size` at a time.

    Subclasses implement `micro_batch(items) -> (loss, info)`; `info` holds floats to log.
    `param_groups` (default: one group of all of `model`'s parameters) are AdamW's groups, each a dict
    with "params" and optionally its own "lr" / "weight_decay" (defaults: the config's); every
    parameter must belong to `model`, so that checkpoints hold it. The linear schedule scales every
    group's learning rate, and each group's gradient norm is clipped on its own. Keys listed
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
                 output_dir: Optional[str | os.PathLike] = None, hooks: Sequence[Tuple[int, Callable]] = (),
                 param_groups: Optional[Sequence[dict]] = None):
        config = config or TrainConfig()
        config.check()
        if not items:
            raise UsageError("items", "no training example")
        self.model, self.items, self.config = model, list(items), config
        self.hooks = _check_hooks(hooks)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.device = next(model.parameters()).device
        if config.gradient_checkpointing:
            for module in model.modules():
                if hasattr(module, "gradient_checkpointing_enable"):
                    module.gradient_checkpointing_enable()
        self.batches_per_epoch = math.ceil(len(self.items) / config.batch_size)
        self.total_steps = total_steps(len(self.items), config)
        groups = [{"params": list(model.parameters())}] if param_groups is None else list(param_groups)
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = linear_schedule(self.optimizer, warmup_steps(self.total_steps, config), self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and self.device.type == "cuda")
        self.writer = None
        if config.tensorboard and self.output_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise UsageError("tensorboard", "logging to TensorBoard needs `pip install tensorboard`") from e
            self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        self.step = 0          # optimizer steps done
        self.micro = 0         # micro-batches done (position in the data order)
        self.history: List[dict] = []
        self._identity: Dict[str, str] = {}  # identity() of the starting point, set by train()
        # torch.distributed (torchrun): DDP averages the gradients over the ranks; each rank trains on
        # its contiguous share of every global batch (`local`), through `forward`
        self.dist = current()
        self._ddp = None
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            cuda = self.device.type == "cuda"
            # find_unused_parameters: a Hugging Face model's pooler (unused by CLS/mean pooling) gets no gradient
            self._ddp = DistributedDataParallel(_Call(model), device_ids=[self.device] if cuda else None,
                                                find_unused_parameters=True)

    def micro_batch(self, items: Sequence) -> Tuple[torch.Tensor, Dict[str, float]]:
        """(loss, info) of one micro-batch: `items` is the GLOBAL batch (the same on every rank);
        under torch.distributed a trainer computes its rank's share `self.local(items)` through
        `self.forward`, and returns a loss scaled with drfast.common.distributed.share_of_mean."""
        raise NotImplementedError

    def local(self, items: Sequence) -> Sequence:
        """This rank's contiguous share of the global batch `items` (all of it in a single process)."""
        start, stop = self.dist.slice(len(items))
        return items[start:stop]

    def forward(self, fn: Callable, *args):
        """``fn(*args)``, a forward pass of (parts of) `self.model`; under torch.distributed through
        DistributedDataParallel, so that the backward pass averages the gradients over the ranks."""
        return fn(*args) if self._ddp is None else self._ddp(fn, *args)

    def run_config(self) -> dict:
        """config.json: the TrainConfig and the number of processes (resume needs the same)."""
        return {**dataclasses.asdict(self.config), "world_size": self.dist.world_size}

    def autocast(self):
        if self.config.amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.config.amp == "bf16" else torch.float16)

    def order(self, epoch: int) -> List:
        """The epoch's data order: a function of the seed and the epoch only, so a resumed run sees the same."""
        return [self.items[i] for i in epoch_order(self.config.seed, epoch, len(self.items))]

    def _run_micro_batch(self, items: Sequence) -> dict:
        t0 = time.perf_counter()
        loss, info = self.micro_batch(items)
        self.scaler.scale(loss / self.config.grad_accum).backward()
        value = float(loss.detach())
        if self.dist.distributed:  # the global batch's loss: the mean of the ranks' scaled shares
            value = float(all_reduce_sum([value])[0]) / self.dist.world_size
        return dict(info, loss=value, micro_s=time.perf_counter() - t0)

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        for group in self.optimizer.param_groups:  # each group's norm on its own (one group: the model's)
            torch.nn.utils.clip_grad_norm_(group["params"], self.config.max_grad_norm)
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

    def identity(self) -> Dict[str, str]:
        """Digests of what the trained weights depend on besides the config: the starting model
        (weights and encoder settings) and the training items. Trainers add their data (query texts,
        positives, the index or corpus). Saved in every checkpoint and compared on resume."""
        return {"model": model_digest(self.model), "items": digest(self.items)}

    def train(self, resume: bool = False, overwrite: bool = False) -> List[dict]:
        """Runs to `total_steps` and returns the history. With an output_dir that holds a checkpoint,
        `resume=True` continues it (refused when settings or inputs differ, see `check_resumable`)
        and `overwrite=True` starts over; with neither, FileExistsError."""
        c = self.config
        main = self.dist.is_main
        resuming = check_run_dir(self.output_dir, c, resume=resume, overwrite=overwrite)
        self.dist.barrier()  # every rank has looked at the run folder before rank 0 changes it
        if self.output_dir is not None:
            self._identity = self.identity()  # of the starting point, before any step (collective: every rank)
            if resuming:
                state = self._read_checkpoint()
                check_world_size(self.output_dir, state["config"], self.dist.world_size)
                check_resumable(self.output_dir, {**state["config"], **state["identity"]},
                                {**self.run_config(), **self._identity})
            elif main:  # overwrite: an earlier run's checkpoint goes now, not at this run's first save
                (self.output_dir / CHECKPOINT).unlink(missing_ok=True)
            if main:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(self.output_dir / CONFIG, self.run_config())
            self.dist.barrier()
        if resuming:
            self._restore(state)
        else:
            torch.manual_seed(c.seed + self.dist.rank)  # rank 0: the single process's draws
            random.seed(c.seed)
            self._write_log()  # the log mirrors the history: no records left from an earlier run here
        self.model.train()
        if self.step == 0:
            # The starting point of every curve, before any update (a resumed run already has it).
            start = self._run_hooks(0)
            if start:
                self._log({"step": 0, "epoch": 0, **start})
        bar = tqdm(total=self.total_steps, initial=self.step, desc=type(self).__name__.replace("Trainer", ""),
                   unit="step", disable=not main)
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
        if not self.dist.is_main:  # the history is kept on every rank, the files by rank 0
            return
        if self.writer is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, record["step"])
        if self.output_dir is not None:
            with open(self.output_dir / LOG, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _save_checkpoint(self) -> None:
        if self.output_dir is None:
            return
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        rngs = self.dist.gather(rng) if self.dist.distributed else None  # each rank's draws (dropout) resume too
        if self.dist.is_main:  # the weights are the same on every rank: rank 0 writes, the others wait
            state = {
                "step": self.step, "micro": self.micro, "history": self.history,
                "config": self.run_config(), "identity": self._identity,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng,
            }
            if rngs is not None:
                state["rng_ranks"] = rngs
            save_torch_atomic(self.output_dir / CHECKPOINT, state)
        self.dist.barrier()

    def _read_checkpoint(self) -> dict:
        path = self.output_dir / CHECKPOINT
        advice = "delete it, or pass --overwrite to start the run over"
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated, not a torch file, unpickling errors: all say "unreadable"
            raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); {advice}") from e
        missing = [key for key in _STATE_KEYS if key not in state] if isinstance(state, dict) else ["a dict"]
        if missing:
            raise ValueError(f"{path}: not a drfast checkpoint of this version (it lacks {', '.join(missing)}); "
                             f"{advice}")
        return state

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.micro, self.history = state["step"], state["micro"], state["history"]
        rng = state["rng_ranks"][self.dist.rank] if "rng_ranks" in state else state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self._write_log()  # the records up to the checkpoint (later ones are redone); repairs a damaged log

    def _write_log(self) -> None:
        if self.output_dir is not None and self.dist.is_main:
            write_text_atomic(self.output_dir / LOG, "".join(json.dumps(r) + "\n" for r in self.history))


def encode_some(encoder, texts: Sequence[str]) -> torch.Tensor:
    """encoder(texts); [0, d] still connected to every parameter when `texts` is empty (a rank
    without items in a distributed step takes part in the gradient average with zeros)."""
    return encoder(list(texts)) if len(texts) else encoder([""])[:0]


class _Call(torch.nn.Module):
    """What DistributedDataParallel wraps: `model` as a submodule (its parameters), and a forward
    that runs any function of it, so that a trainer's forward passes (one tower, both towers) go
    through DDP."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable, *args):
        return fn(*args)


_STATE_KEYS = ("step", "micro", "history", "config", "identity", "model", "optimizer", "scheduler", "scaler", "rng")


# ---- run folders: refuse to mix runs ------------------------------------------------------------
def check_run_dir(run_dir: Optional[str | os.PathLike], config: TrainConfig, *, resume: bool = False,
                  overwrite: bool = False, name: str = "output_dir") -> bool:
    """Whether `run_dir` holds a checkpoint to resume; cheap, so pipelines call it before any work.

    FileExistsError when `run_dir` is a file, or holds a checkpoint and neither `resume` nor
    `overwrite` is set. On resume, ValueError when `config` differs from the run's config.json in a
    field that changes the result (the checkpoint's own copy and the inputs are compared by
    `TrainingRun.train`). Errors start with `name` (the caller's argument for the folder)."""
    check_bool(resume, "resume")
    check_bool(overwrite, "overwrite")
    if resume and overwrite:
        raise UsageError("overwrite", "cannot be combined with --resume (continue the run or start it over)")
    if run_dir is None:
        return False
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageFileExistsError(name, f"{run_dir} exists and is not a folder")
    if overwrite or not (run_dir / CHECKPOINT).exists():
        return False
    if not resume:
        raise UsageFileExistsError(name, f"{run_dir} holds the checkpoint of an earlier run; pass --resume to "
                                   f"continue it or --overwrite to start over")
    if (run_dir / CONFIG).exists():
        saved = _read_config(run_dir / CONFIG)
        world_size = current().world_size
        check_world_size(run_dir, saved, world_size)
        check_resumable(run_dir, saved, {**dataclasses.asdict(config), "world_size": world_size})
    return True


def check_world_size(run_dir: Path, saved: dict, world_size: int) -> None:
    """ValueError (naming resume) when the run was trained on another number of processes (a run
    saved before world_size was recorded was trained on 1)."""
    was = saved.get("world_size", 1)
    if was != world_size:
        raise UsageError("resume", f"the run in {run_dir} was trained on {was} process(es) (torch.distributed world "
                         f"size) and this one has {world_size}; resume it with the same number (torchrun "
                         f"--nproc_per_node/--nnodes), or pass --overwrite to start over")


def check_resumable(run_dir: Path, saved: dict, current: dict) -> None:
    """ValueError naming each entry (setting or input digest) where `current` differs from `saved`
    (old -> new), but for the settings in RESUME_MAY_CHANGE."""
    saved, now = json.loads(json.dumps(saved, default=str)), json.loads(json.dumps(current, default=str))
    for entries in (saved, now):  # runs saved before it was recorded ran in one process
        entries.setdefault("world_size", 1)
    differ = [f"{key} {saved.get(key, '(none)')!r} -> {now.get(key, '(none)')!r}"
              for key in sorted(set(saved) | set(now))
              if key not in RESUME_MAY_CHANGE and saved.get(key) != now.get(key)]
    if differ:
        raise UsageError("resume", f"the run in {run_dir} was trained with other settings or inputs: "
                         f"{'; '.join(differ)}. Resume with the same ones, or pass --overwrite to start over")


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        config = e
    if not isinstance(config, dict):
        reason = f" ({config})" if isinstance(config, Exception) else ""
        raise ValueError(f"{path}: not a readable run config{reason}; delete it (the checkpoint holds the settings "
                         f"too), or pass --overwrite to start the run over")
    return config


# ---- identities: digests of what a run depends on -----------------------------------------------
def digest(*parts) -> str:
    """16 hex digits of a sha256 over `parts`: arrays and tensors by dtype, shape and bytes, anything
    else as JSON."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().numpy()
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def model_digest(model: torch.nn.Module) -> str:
    """The weights, and the settings of every drfast Encoder in `model` (pooling, normalisation, max length)."""
    settings = [[name, m.pooling, m.normalize, m.max_length, m.do_lower_case]
                for name, m in model.named_modules() if isinstance(m, Encoder)]
    return digest(weights_digest(model), settings)


def sample_rows(n: int, count: int = 1024) -> np.ndarray:
    """Up to `count` evenly spaced rows of [0, n): what a content digest of a large collection reads."""
    return np.unique(np.linspace(0, n - 1, min(n, count)).astype(np.int64))


def _check_hooks(hooks: Sequence[Tuple[int, Callable]]) -> List[Tuple[int, Callable]]:
    """The (every, hook) pairs with every > 0 (0: never)."""
    active = []
    for pair in hooks:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and callable(pair[1])):
            raise UsageTypeError("hooks", f"expected (every, hook) pairs with a callable hook, got {pair!r}")
        if check_int(pair[0], "hooks: every", 0):
            active.append((pair[0], pair[1]))
    return active
