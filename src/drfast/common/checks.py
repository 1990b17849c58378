"""Argument validation: one family of checks with one exception policy.

A value of the wrong *type* raises `UsageTypeError` (a `TypeError`); a value of the right type outside
its allowed range raises `UsageError` (a `ValueError`). Both carry the argument's name as `param` (and
their message starts with it, `name: ...`), so that the CLI can point at the flag the user typed.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import numpy as np

from drfast.common.errors import UsageError, UsageTypeError


def describe(x: Any) -> str:
    """A short description of `x` for error messages: the array kind, shape and dtype, or the type."""
    shape = getattr(x, "shape", None)
    if shape is not None and hasattr(x, "dtype"):
        return f"{type(x).__module__.split('.')[0]} array of shape {tuple(shape)} and dtype {x.dtype}"
    return type(x).__name__


def check_int(value: Any, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """`value` as an int (Python or numpy integer; bools refused) within [minimum, maximum]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise UsageTypeError(name, f"expected an integer, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise UsageError(name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise UsageError(name, f"must be <= {maximum}, got {value}")
    return int(value)


def check_optional_int(value: Any, name: str, minimum: Optional[int] = None,
                       maximum: Optional[int] = None) -> Optional[int]:
    return None if value is None else check_int(value, name, minimum, maximum)


def check_float(value: Any, name: str, minimum: Optional[float] = None, maximum: Optional[float] = None,
                *, min_inclusive: bool = True, max_inclusive: bool = True) -> float:
    """`value` as a finite float (ints accepted; bools refused) within the given bounds."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UsageTypeError(name, f"expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise UsageError(name, f"expected a finite number, got {value!r}")
    if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
        raise UsageError(name, f"must be {'>=' if min_inclusive else '>'} {minimum}, got {value!r}")
    if maximum is not None and (value > maximum or (not max_inclusive and value == maximum)):
        raise UsageError(name, f"must be {'<=' if max_inclusive else '<'} {maximum}, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise UsageTypeError(name, f"expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    if value not in choices:
        raise UsageError(name, f"expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def as_int64_vector(x: Any, name: str, what: str = "integer row ids") -> np.ndarray:
    """A 1-D integer array or tensor (or a list) as contiguous int64 numpy; errors name `name`."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 1:
        raise UsageError(name, f"expected a 1-D array, got shape {x.shape}")
    if x.size and not np.issubdtype(x.dtype, np.integer):
        raise UsageTypeError(name, f"expected {what}, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.int64)
