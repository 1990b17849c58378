"""load_index: open any saved drfast index folder."""
from __future__ import annotations

import os

from drfast.index.flat import FlatIndex
from drfast.index.format import read_meta
from drfast.index.pq import PQIndex

KINDS = {"flat": FlatIndex, "pq": PQIndex}


def load_index(path: str | os.PathLike, mmap: bool = True):
    """Load a FlatIndex or PQIndex written by `save` (rows / codes memory-mapped by default).

    meta.json is checked (format version, kind, row count, dimension, dtype) against the arrays, and a
    missing or corrupt file raises an error naming it. A memory-mapped index reads its files lazily:
    do not overwrite them in place while it is open (the process would get SIGBUS); `save` always
    writes a new folder and renames it, which is safe.
    """
    meta = read_meta(path)
    kind = meta.get("kind")
    if kind not in KINDS:
        raise ValueError(f"path: unknown index kind {kind!r} in {os.fspath(path)}/meta.json "
                         f"(expected one of {sorted(KINDS)})")
    return KINDS[kind]._load(path, meta, mmap)
