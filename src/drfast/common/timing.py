"""Wall-clock timings recorded into a dict (the `timings` of every metrics.json)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, Iterator


@contextmanager
def timed(timings: Dict[str, float], key: str) -> Iterator[None]:
    """Adds the seconds the block took to timings[key], rounded to milliseconds."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = round(timings.get(key, 0.0) + time.perf_counter() - t0, 3)
