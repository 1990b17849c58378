"""load_index: open any saved drfast index folder; load_faiss_index: open a faiss index as one."""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from drfast.common.errors import UsageError
from drfast.index.faiss_interop import read_faiss
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
        raise UsageError("path", f"unknown index kind {kind!r} in {os.fspath(path)}/meta.json "
                         f"(expected one of {sorted(KINDS)})")
    return KINDS[kind]._load(path, meta, mmap)


def load_faiss_index(path_or_index: Any, doc_ids: Optional[Sequence[str]] = None, mmap: bool = True):
    """A FlatIndex (IndexFlatIP) or PQIndex (IndexPQ, IndexIVFPQ with one list, either optionally
    behind an OPQMatrix) with the rows of a faiss inner-product index, in faiss id order, and the same
    scores up to float rounding. `path_or_index`: a faiss index or a file path (read memory-mapped when
    `mmap`, and viewed without a copy; see drfast.index.faiss_interop.read_faiss). doc_ids: the rows'
    external ids (default "0".."N-1"). Anything else faiss holds is refused with an error naming it.
    """
    kind, arrays = read_faiss(path_or_index, mmap)
    return KINDS[kind](**arrays, doc_ids=doc_ids)
