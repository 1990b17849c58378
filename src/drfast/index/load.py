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

    Parameters
    ----------
    path : str or os.PathLike
        The folder `save` wrote.
    mmap : bool
        Memory-map the rows (or codes) instead of reading them into memory.

    Returns
    -------
    FlatIndex or PQIndex

    Raises
    ------
    FileNotFoundError, ValueError
        A missing or corrupt file, named: meta.json is checked (format version, kind, row count,
        dimension, dtype) against the arrays.
    UsageError
        A flat index whose rows no longer match the rows its first pass was built from (its
        embeddings.npy replaced after saving), naming the folder (FlatIndex.load).

    Notes
    -----
    A memory-mapped index reads its files lazily: do not overwrite them in place while it is open (the
    process would get SIGBUS); `save` always writes a new folder and renames it, which is safe.

    Examples
    --------
    >>> import tempfile, os, numpy as np, drfast
    >>> folder = os.path.join(tempfile.mkdtemp(), "idx")
    >>> drfast.FlatIndex(np.eye(3, dtype=np.float32), doc_ids=["a", "b", "c"]).save(folder)
    >>> index = drfast.load_index(folder)
    >>> index.ntotal, index.dim, list(index.doc_ids)
    (3, 3, ['a', 'b', 'c'])
    """
    meta = read_meta(path)
    kind = meta.get("kind")
    if kind not in KINDS:
        raise UsageError("path", f"unknown index kind {kind!r} in {os.fspath(path)}/meta.json "
                         f"(expected one of {sorted(KINDS)})")
    return KINDS[kind].load(path, mmap, meta)


def load_faiss_index(path_or_index: Any, doc_ids: Optional[Sequence[str]] = None, mmap: bool = True):
    """A drfast index with the rows of a faiss inner-product index, in faiss id order.

    A FlatIndex for IndexFlatIP, a PQIndex for IndexPQ or IndexIVFPQ with one list (either optionally
    behind an OPQMatrix), with the same scores up to float rounding.

    Parameters
    ----------
    path_or_index : faiss.Index or path
        A faiss index, or a file path (read memory-mapped when `mmap`, and viewed without a copy; see
        drfast.index.faiss_interop.read_faiss).
    doc_ids : sequence of str, optional
        The rows' external ids (default "0" .. "N-1").
    mmap : bool
        Memory-map a file instead of reading it.

    Returns
    -------
    FlatIndex or PQIndex

    Raises
    ------
    UsageError, UsageTypeError
        Anything else faiss holds is refused with an error naming it.
    FileNotFoundError
        A path that is not a file.
    """
    kind, arrays = read_faiss(path_or_index, mmap)
    return KINDS[kind](**arrays, doc_ids=doc_ids)
