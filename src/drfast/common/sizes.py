"""Byte sizes and counts as people write them ("11GB", "24GiB", "500MB", "125M") and back.

Decimal units are powers of 1000 (KB, MB, GB, TB), binary units powers of 1024 (KiB, MiB, GiB, TiB),
as in the SI / IEC convention; a plain number is bytes. Errors start with the argument's name.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

from drfast.common.errors import UsageError, UsageTypeError

UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
         "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def _parse(value: Any, name: str, units: dict, what: str, examples: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageTypeError(name, f"expected {what} such as {examples}, got {type(value).__name__} {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
        if not math.isfinite(number) or number < 0:
            raise UsageError(name, f"expected a non-negative {what}, got {value!r}")
    else:
        match = _NUMBER.match(value)
        if not match or match.group(2).lower() not in units:
            raise UsageError(name, f"expected {what} such as {examples}, got {value!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
    return int(round(number * units[unit]))


def parse_size(value: Any, name: str = "size") -> int:
    """Bytes from 11GB (11 * 10^9), 11GiB (11 * 2^30), 500MB, 1.5TB, 4096 or an int."""
    return _parse(value, name, UNITS, "a size", "11GB, 11GiB, 500MB or a number of bytes")


def parse_optional_size(value: Any, name: str = "size") -> Optional[int]:
    return None if value is None else parse_size(value, name)


def parse_count(value: Any, name: str = "count") -> int:
    """A count from 125M, 22.7M, 1.3B, 110000000 or an int (K, M, B/G: powers of 1000)."""
    return _parse(value, name, COUNT_UNITS, "a count", "125M, 22.7M, 1.3B or 110000000")


def format_bytes(n: int) -> str:
    """1234567890 -> '1.23 GB' (decimal units, two decimals)."""
    n = int(n)
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
