"""The exceptions drfast raises for bad input, carrying the parameter to blame.

Every check of a user-supplied value raises `UsageError` (a `ValueError`) or, where the value has the
wrong type, `UsageTypeError` (a `TypeError` and a `UsageError`). Both carry `param`, the name of the
argument at fault, so that a caller can point at it without reading the message: the CLI maps `param`
to the flag the user typed. The message reads `param: detail`, as it always has.

>>> try:
...     raise UsageError("k", "must be >= 1, got 0")
... except ValueError as e:
...     (e.param, str(e))
('k', 'k: must be >= 1, got 0')
"""
from __future__ import annotations

from typing import Optional


class UsageError(ValueError):
    """A bad argument value; `param` names the argument, `detail` says what is wrong with it.

    A `ValueError`, so code that catches ValueError keeps working; the message reads
    ``"param: detail"``.

    Parameters
    ----------
    param : str or None
        The name of the argument at fault (None when no single argument is to blame).
    detail : str
        What is wrong with it.

    Examples
    --------
    >>> import numpy as np, drfast
    >>> try:
    ...     drfast.FlatIndex(np.eye(3, dtype=np.float32)).search(np.ones((1, 3), np.float32), k=0)
    ... except drfast.UsageError as e:
    ...     (e.param, str(e))
    ('k', 'k: must be >= 1, got 0')
    """

    def __init__(self, param: Optional[str], detail: str):
        self.param = param
        self.detail = detail
        super().__init__(f"{param}: {detail}" if param else detail)

    def __reduce__(self):  # picklable across processes (torchrun workers, DataLoader workers)
        return type(self), (self.param, self.detail)


class UsageTypeError(UsageError, TypeError):
    """A bad argument type; caught as `TypeError` and as `UsageError` alike."""


class UsageFileNotFoundError(UsageError, FileNotFoundError):
    """An input path that is not there; caught as `FileNotFoundError` and as `UsageError` alike."""


class UsageFileExistsError(UsageError, FileExistsError):
    """An output path taken by something not to be replaced; a `FileExistsError` and a `UsageError`."""
