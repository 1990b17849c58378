"""One home for moving arrays between numpy and torch.

`as_tensor` gives a zero-copy torch view of a numpy array (memmaps included) and `to_numpy` a numpy
array of a tensor (detached, on the CPU) or of anything array-like; every module converts through
these two so that the rule "numpy stays numpy, torch stays on its device" has one implementation.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch


def as_tensor(x: Any) -> torch.Tensor:
    """A torch view of a numpy array (zero-copy, read-only memmaps too), or the tensor itself."""
    if isinstance(x, torch.Tensor):
        return x
    with warnings.catch_warnings():  # read-only memmaps are only read through these views
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(x))


def to_numpy(x: Any, contiguous: bool = False) -> np.ndarray:
    """`x` as a numpy array: a tensor detached and copied to the host, anything else through
    `np.asarray` (a numpy array or memmap is returned as it is). `contiguous=True` also makes it
    C-contiguous (copying only when it is not)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(a) if contiguous else a
