"""The torch.distributed context of a run started by `torchrun` (or a single process).

One place decides whether this process is one rank of several: torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or a process group already initialised by the caller.
Without either, everything is world size 1, rank 0, and no collective is ever called.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch

from drfast.common.errors import UsageError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs and metrics."""
        return self.rank == 0

    def device(self) -> torch.device:
        """This rank's GPU (cuda:LOCAL_RANK) when CUDA is available, else the CPU."""
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def slice(self, n: int) -> Tuple[int, int]:
        """[start, stop) of this rank's contiguous share of n items, in rank order (sizes differ by at most 1)."""
        return slice_of(n, self.rank, self.world_size)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def check_all(self, error: Optional[BaseException], step: str) -> None:
        """Collective: raises on every rank when `step` failed on any (`error`: this rank's exception or
        None): the failing rank its own error, the others a RuntimeError naming the ranks, so that no
        rank is left waiting in the next collective. World size 1: raises `error` if any."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        flags: List[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(flags, error is not None)
        raise_if_failed(error, [r for r, f in enumerate(flags) if f], step)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Collective: rank `src`'s picklable `obj` on every rank (small objects: flags, lists)."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def scatter(self, objs: Optional[List[Any]], src: int = 0) -> Any:
        """Collective: rank `src` passes one picklable object per rank (the others None); each rank gets its own."""
        if not self.distributed:
            return objs[0]
        box: List[Any] = [None]
        torch.distributed.scatter_object_list(box, objs if self.rank == src else None, src=src)
        return box[0]

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Collective: every rank's picklable `obj`, in rank order, on rank 0 (None on the others)."""
        if not self.distributed:
            return [obj]
        out: Optional[List[Any]] = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out


def raise_if_failed(error: Optional[BaseException], failed: Sequence[int], step: str) -> None:
    """The end of a step that may fail on some ranks, once the ranks agreed on who failed (`failed`:
    their numbers, from a collective): this rank raises its own `error`, the others a RuntimeError
    naming the failed ranks, so that no rank goes on into a collective the others never reach.
    (DistContext.check_all agrees with its own collective; a step with a collective of its own can
    carry the flags in it instead: ShardedIndex.search.)"""
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"{step} failed on rank(s) {list(failed)} (see the error raised there)")


def slice_of(n: int, rank: int, world_size: int) -> Tuple[int, int]:
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed() -> DistContext:
    """The context of this process: joins torchrun's process group (NCCL when CUDA is available,
    else gloo) when launched by torchrun and not yet initialised; uses an existing group as it is."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    global _OWN_GROUP
    _OWN_GROUP = True  # shutdown_distributed closes it; a group the caller made stays theirs
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank)


def current() -> DistContext:
    """The context without initialising anything (world size 1 unless a process group exists)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistContext()


def comm_device() -> torch.device:
    """Where this process group's collectives take their tensors: the current GPU under NCCL, else the CPU."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values) -> torch.Tensor:
    """The sum over ranks of `values` (numbers or a tensor), as float64 on the CPU; `values` itself
    in a single process."""
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1).clone()
    if current().distributed:
        t = t.to(comm_device())
        torch.distributed.all_reduce(t)
    return t.cpu()


def share_of_mean(local_mean: torch.Tensor, local_count) -> torch.Tensor:
    """This rank's loss such that DDP's average of the gradients over the ranks is the gradient of
    ONE mean over the whole (global) batch: `local_mean` is the mean over this rank's `local_count`
    terms (pairs, queries); returned is local_mean * local_count * world_size / global_count, the
    global count summed over the ranks. A single process gets `local_mean` unchanged."""
    ctx = current()
    if not ctx.distributed:
        return local_mean
    n = float(local_count)
    total = float(all_reduce_sum([n])[0])
    return local_mean * (n * ctx.world_size / max(total, 1.0))


def all_gather_rows(x: torch.Tensor, sizes) -> torch.Tensor:
    """[sum(sizes), ...]: every rank's rows (sizes[r] of them on rank r, this rank's are `x`) in rank
    order, with gradients (torch.distributed.nn: the gradient of a rank's rows is the sum over the
    ranks of the gradients of their copies). `x` itself in a single process."""
    ctx = current()
    sizes = [int(s) for s in sizes]
    if len(sizes) != ctx.world_size or x.shape[0] != sizes[ctx.rank]:
        raise UsageError("sizes", f"expected {ctx.world_size} row counts with this rank's ({x.shape[0]}) at "
                         f"{ctx.rank}, got {sizes}")
    if not ctx.distributed:
        return x
    from torch.distributed.nn.functional import all_gather

    most = max(sizes)
    if x.shape[0] < most:  # every rank sends the same shape
        x = torch.cat([x, x.new_zeros((most - x.shape[0],) + tuple(x.shape[1:]))])
    parts = all_gather(x.to(comm_device()).contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(x.device)



_OWN_GROUP = False  # whether init_distributed created the process group


def shutdown_distributed() -> None:
    """After a command succeeded under torchrun: wait for every rank, then close the process group
    that init_distributed created (a caller's own group is left alone), so that no rank tears
    gloo/NCCL down while another still reads its last collective."""
    global _OWN_GROUP
    dist = torch.distributed
    if _OWN_GROUP and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _OWN_GROUP = False
