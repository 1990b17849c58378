"""A user's own document embeddings and their ids, read for `drfast index --embeddings --doc-ids`.

Embeddings: a `.npy` file (float32 or float16, 2-D, C order), opened memory-mapped, or a raw
DiskANN `.fbin` (float32) / `.f16bin` (float16) file: an int32 row count N, an int32 dimension d,
then N*d values row-major, opened as a memmap after the file size is checked against the header.
Nothing is read into memory here: the rows stay on disk until an index reads them.

Document ids: a text file with one id per line (UTF-8; a byte-order mark, a final line end and CRLF
line ends are accepted), one per row, unique, each without whitespace or control characters.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from drfast.common.doc_ids import DocIdMap, read_id_file
from drfast.common.errors import UsageError
from drfast.common.text_lines import DataFormatError

PathLike = Union[str, os.PathLike]
BIN_DTYPES = {".fbin": np.dtype("<f4"), ".f16bin": np.dtype("<f2")}
NPY_DTYPES = (np.dtype("float32"), np.dtype("float16"))
SUFFIXES = (".npy",) + tuple(BIN_DTYPES)


def open_embeddings(path: PathLike, name: str = "embeddings") -> np.ndarray:
    """The [N, d] float32 / float16 rows of a .npy, .fbin or .f16bin file, memory-mapped read-only.

    Errors (ValueError, FileNotFoundError) start with `name` and say what is wrong with the file:
    an unknown suffix, an unreadable or truncated file, a header that does not match the file size,
    a dtype other than float32 / float16, or an array that is not 2-D with N, d >= 1."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(name, f"expected a .npy, .fbin (float32) or .f16bin (float16) file, got {path}")
    if not path.is_file():
        raise FileNotFoundError(f"{name}: {path} is not a file")
    emb = _open_bin(path, BIN_DTYPES[suffix], name) if suffix in BIN_DTYPES else _open_npy(path, name)
    if emb.shape[0] < 1 or emb.shape[1] < 1:
        raise UsageError(name, f"{path} holds a [{emb.shape[0]}, {emb.shape[1]}] matrix; an index needs "
                         "at least one row of dimension >= 1")
    return emb


def _open_npy(path: Path, name: str) -> np.ndarray:
    try:
        emb = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UsageError(name, f"{path} is not a readable .npy file ({e})") from None
    if emb.dtype not in NPY_DTYPES:
        raise UsageError(name, f"{path} holds {emb.dtype} values; expected float32 or float16 "
                         "(convert with .astype(np.float32))")
    if emb.ndim != 2:
        raise UsageError(name, f"{path} holds an array of shape {emb.shape}; expected a 2-D [N, d] matrix")
    if not emb.flags.c_contiguous:  # an index would copy it into memory; say so instead
        raise UsageError(name, f"{path} is stored in Fortran (column) order; save it in C (row) order "
                         "(np.save(path, np.ascontiguousarray(emb)))")
    return emb


def _open_bin(path: Path, dtype: np.dtype, name: str) -> np.ndarray:
    size = path.stat().st_size
    if size < 8:
        raise UsageError(name, f"{path} has {size} bytes, less than its 8-byte header (int32 N, int32 d)")
    n, d = (int(x) for x in np.fromfile(path, dtype="<i4", count=2))
    if n < 1 or d < 1:
        raise UsageError(name, f"{path} has a bad header (N={n}, d={d}); expected positive int32 N and d")
    expected = 8 + n * d * dtype.itemsize
    if size != expected:
        raise UsageError(name, f"{path} has {size} bytes, but its header (N={n}, d={d}) with "
                         f"{dtype.itemsize}-byte {dtype.name} values needs 8 + {n}*{d}*{dtype.itemsize} = {expected}"
                         f"{' (is it a ' + _other_suffix(dtype) + ' file?)' if _fits_other(size, n, d, dtype) else ''}")
    return np.memmap(path, dtype=dtype, mode="r", offset=8, shape=(n, d))


def _other_suffix(dtype: np.dtype) -> str:
    return ".f16bin" if dtype.itemsize == 4 else ".fbin"


def _fits_other(size: int, n: int, d: int, dtype: np.dtype) -> bool:
    return size == 8 + n * d * (2 if dtype.itemsize == 4 else 4)


def read_doc_ids(path: PathLike, expected: Optional[int] = None, name: str = "doc_ids") -> DocIdMap:
    """The ids of a text file with one id per line, as a DocIdMap; errors start with `name` and name
    the file: an unreadable file, a count other than `expected`, and (naming the line) bad UTF-8, an
    empty line, an id that breaks the id rule of `common.doc_ids` (whitespace, control characters) or
    a duplicate id. A byte-order mark and CRLF line ends are accepted (`common.text_lines`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"{name}: cannot read {path} ({e.strerror or e})") from None
    try:
        ids = read_id_file(path, data, "id")
    except DataFormatError as e:
        raise UsageError(name, str(e)) from None
    if expected is not None and len(ids) != expected:
        raise UsageError(name, f"{path} holds {len(ids)} ids but the embeddings have {expected} rows "
                         "(one id per row, one per line)")
    return DocIdMap(ids, name=f"{name}: {path}")  # refuses duplicates, naming both rows
