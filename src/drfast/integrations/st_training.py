"""`drfast adore`'s training on `SentenceTransformerTrainer`: the same batches, learning rates, optimizer and
dropout masks.

Matched against sentence-transformers 6.3.0 and transformers 5. Left to itself, the trainer trains with the
same AdamW and peak learning rate as `drfast adore` but not the same run, in four ways that change the
trained weights:

- data order: a torch RandomSampler drawn from the trainer's seed, where drfast's trainers visit the items of
  epoch e in `np.random.default_rng([seed, e]).permutation(n)` (drfast.train.core.epoch_order).
  `DrfastBatchSampler` gives drfast's batches; with the dataset's rows in the CLI's item order (the training
  query ids sorted), these are `drfast adore`'s batches, query for query.
- warm-up: transformers warms up over ceil(ratio x steps) steps starting from a learning rate of 0 (its first
  update moves nothing), drfast over int(ratio x steps) steps starting from lr / (warm-up + 1)
  (drfast.train.core.linear_schedule); both then decay linearly to 0.
- weight decay: transformers exempts biases and LayerNorm weights, drfast decays every parameter.
  `adore_optimizers` returns drfast's AdamW and schedule, to pass as the trainer's `optimizers`.
- dropout: the trainer's DataLoader draws a seed from torch's global generator at every epoch, between two
  steps, so the masks differ from the CLI's; the callback `DrfastRandomState` gives dropout drfast's stream.

`adore_training_arguments` maps an AdoreConfig's other settings (epochs, batch, clipping, seed, amp) onto the
training arguments, with `DrfastBatchSampler` and the query router mapping. With all four, AdoreLoss through
the trainer trains to the weights AdoreTrainer gives, bit for bit on the CPU, with or without dropout
(tests/integrations/test_st_training.py). What may remain is float rounding where the two would compute
differently (another device's kernels, amp). JPQ's centroids: AdoreLoss.callback() clips their gradient
norm on its own, as the CLI does.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch
from sentence_transformers.base.sampler import DefaultBatchSampler
from transformers import TrainerCallback

from drfast.common.checks import check_int
from drfast.common.errors import UsageError, UsageTypeError
from drfast.integrations.st_query_side import ROUTER_MAPPING
from drfast.train.adore import AdoreConfig
from drfast.train.core import TrainConfig, epoch_order, linear_schedule, total_steps, warmup_steps

logger = logging.getLogger(__name__)

# transformers' training arguments that adore_training_arguments sets from the config: they change the run
MAPPED = ("num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps",
          "learning_rate", "weight_decay", "max_grad_norm", "seed", "bf16", "fp16", "gradient_checkpointing",
          "activation_checkpointing", "batch_sampler", "warmup_steps", "warmup_ratio", "lr_scheduler_type", "optim",
          "dataloader_drop_last")


class DrfastBatchSampler(DefaultBatchSampler):
    """Batches in drfast's trainers' order: epoch e visits the dataset's rows in
    `np.random.default_rng([seed, e]).permutation(len(dataset))` (drfast.train.core.epoch_order), cut into
    batches of `batch_size` (a shorter last one unless drop_last). Pass the class as the training arguments'
    `batch_sampler`; the trainer gives it its seed and calls `set_epoch` before every epoch."""

    def __iter__(self):
        order = epoch_order(self.seed, self.epoch, len(self.sampler)).tolist()
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield batch


class DrfastRandomState(TrainerCallback):
    """Dropout draws from `drfast adore`'s random stream: torch's generators seeded with the run's seed (plus
    the process index, as drfast's trainers) when training starts, and drawn from by the training steps only.
    Without it the trainer's DataLoader takes a seed from the same global generator at every epoch, between
    two steps, so the masks differ from the CLI's. A run resumed from a checkpoint keeps the trainer's own
    restored state (this callback then does nothing)."""

    def __init__(self):
        self._state = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:
            logger.info("DrfastRandomState: resumed at step %d, the trainer's restored random state is kept",
                        state.global_step)
            self._state = None
            return
        torch.manual_seed(args.seed + args.process_index)  # the CPU and every CUDA device, as drfast's trainers
        self._state = _rng_state()

    def on_step_begin(self, args, state, control, **kwargs):
        if self._state is not None:
            _set_rng_state(self._state)

    def on_step_end(self, args, state, control, **kwargs):
        if self._state is not None:
            self._state = _rng_state()


def _rng_state():
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(saved) -> None:
    cpu, cuda = saved
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def adore_optimizers(loss, train_size: int, config: Optional[TrainConfig] = None):
    """(optimizer, scheduler) as `drfast adore` builds them, for `SentenceTransformerTrainer(optimizers=...)`.

    loss: the AdoreLoss being trained. train_size: the training dataset's rows (the number of steps follows
    from it and the config, as in the CLI). config: an AdoreConfig (default: the CLI's defaults); its lr,
    weight_decay, warmup_ratio, epochs, batch_size, grad_accum, max_steps and (with train_centroids)
    centroid_lr are used. AdamW over every trainable parameter with the same weight decay, and with
    `loss.train_centroids` a second group for the centroids (centroid_lr, no weight decay); a linear warm-up
    over int(warmup_ratio x steps) steps starting from lr / (warm-up + 1), then a linear decay to 0.
    """
    from drfast.integrations.st_losses import AdoreLoss

    if not isinstance(loss, AdoreLoss):
        raise UsageTypeError("loss", f"expected an AdoreLoss, got {type(loss).__name__}")
    config = _check_config(config)
    check_int(train_size, "train_size", 1)
    centroids = [loss.centroids] if loss.train_centroids else []
    others = [p for p in loss.parameters() if p.requires_grad and all(p is not c for c in centroids)]
    groups = [{"params": others}]
    if centroids:
        groups.append({"params": centroids, "lr": getattr(config, "centroid_lr", AdoreConfig().centroid_lr),
                       "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    total = total_steps(train_size, config)
    return optimizer, linear_schedule(optimizer, warmup_steps(total, config), total)


def adore_training_arguments(config: Optional[TrainConfig] = None, **kwargs):
    """`SentenceTransformerTrainingArguments` with an AdoreConfig's settings (default: `drfast adore`'s):
    epochs, batch size, gradient accumulation, max_steps, learning rate and weight decay (what the trainer
    logs; adore_optimizers sets the ones used), gradient clipping, seed, amp, gradient checkpointing,
    `DrfastBatchSampler` and the "query" column routed to the query tower. `kwargs` are the other arguments
    (output_dir, logging_steps, save_strategy, ...); one that the config decides is refused."""
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    config = _check_config(config)
    clash = sorted(set(kwargs) & set(MAPPED))
    if clash:
        raise UsageError(clash[0], "is set from the AdoreConfig by adore_training_arguments (change the config, "
                                   "or build SentenceTransformerTrainingArguments yourself)")
    kwargs.setdefault("router_mapping", ROUTER_MAPPING)
    # transformers 5 renamed gradient_checkpointing (a deprecated alias that warns when set)
    fields = {f.name for f in dataclasses.fields(SentenceTransformerTrainingArguments)}
    kwargs["activation_checkpointing" if "activation_checkpointing" in fields
           else "gradient_checkpointing"] = config.gradient_checkpointing
    return SentenceTransformerTrainingArguments(
        num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, max_steps=config.max_steps or -1,
        learning_rate=config.lr, weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        seed=config.seed, bf16=config.amp == "bf16", fp16=config.amp == "fp16",
        batch_sampler=DrfastBatchSampler, **kwargs)


def _check_config(config) -> TrainConfig:
    config = AdoreConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise UsageTypeError("config", f"expected a drfast AdoreConfig, got {type(config).__name__}")
    config.check()
    return config
