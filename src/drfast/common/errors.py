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
    """A bad argument value; `param` names the argument, `detail` says what is wrong with it."""

    def __init__(self, param: Optional[str], detail: str):
        self.param = param
        self.detail = detail
        super().__init__(f"{param}: {detail}" if param else detail)

    def __reduce__(self):  # picklable across processes (torchrun workers, DataLoader workers)
        return type(self), (self.param, self.detail)


class UsageTypeError(UsageError, TypeError):
    """A bad argument type; caught as `TypeError` and as `UsageError` alike."""
