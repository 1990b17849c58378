"""Compressed sparse rows: ragged per-query lists (positives, ranks) as (offsets [B+1], values [nnz])."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from drfast.common.errors import UsageError


def offsets_of(lists: Sequence[Sequence]) -> np.ndarray:
    """int64 [len(lists) + 1]: where each list starts in the concatenation, and the total at the end."""
    offsets = np.zeros(len(lists) + 1, np.int64)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    return offsets


def from_lists(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [B+1], values int64 [nnz]) of a list of integer lists."""
    offsets = offsets_of(lists)
    values = np.fromiter((v for x in lists for v in x), np.int64, int(offsets[-1]))
    return offsets, values


def row_of_each(offsets):
    """int64 [nnz]: the row (query) each value belongs to; numpy offsets give numpy, torch give torch."""
    if isinstance(offsets, torch.Tensor):
        return torch.repeat_interleave(torch.arange(len(offsets) - 1, device=offsets.device), offsets.diff())
    offsets = np.asarray(offsets)
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def check_offsets(offsets: np.ndarray, nnz: int, name: str = "offsets") -> None:
    """Offsets must start at 0, never decrease and end at `nnz`."""
    if offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0 or offsets[-1] != nnz \
            or np.any(np.diff(offsets) < 0):
        raise UsageError(name, f"must start at 0, never decrease and end at the number of values ({nnz})")
