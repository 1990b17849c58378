"""The on-disk format every index shares: a folder with meta.json, doc_ids.txt and the index's arrays.

meta.json holds {"kind", "format_version", "ntotal", "dim", ...}; `read_meta` and `read_array` check
what they read against it, so a truncated, foreign or mismatched file gives an error naming the file
instead of a wrong index. Folders are written atomically, and only over an existing drfast index.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from drfast.common.atomic import atomic_dir
from drfast.common.checks import as_int64_vector
from drfast.common.doc_ids import DocIdMap
from drfast.common.errors import UsageError

FORMAT_VERSION = 1
META = "meta.json"
DOC_IDS = "doc_ids.txt"
PathLike = Union[str, os.PathLike]


def doc_id_map(doc_ids: Optional[Sequence[str]], n: int) -> DocIdMap:
    """The external ids of n rows as a DocIdMap (default "0".."n-1"); unique, one per row."""
    ids = DocIdMap.range(n) if doc_ids is None else DocIdMap(doc_ids)
    if len(ids) != n:
        raise UsageError("doc_ids", f"expected {n} ids (one per row), got {len(ids)}")
    return ids


def check_rows(rows: Any, n: int) -> np.ndarray:
    """Row ids as int64 numpy, each in [0, n)."""
    rows = as_int64_vector(rows, "rows")
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise UsageError("rows", f"ids must be in [0, {n}), got {rows.min()}..{rows.max()}")
    return rows


def is_index_dir(path: PathLike) -> bool:
    return (Path(path) / META).is_file()


def write_index_dir(path: PathLike, meta: Dict[str, Any], arrays: Dict[str, np.ndarray], doc_ids: DocIdMap) -> None:
    """Writes meta.json (with the format version), the arrays as NAME.npy and doc_ids.txt into a temp
    folder renamed to `path`. Refuses to replace anything but a drfast index (or an empty folder)."""
    path = Path(path)
    if os.path.lexists(path) and not (path.is_dir() and (is_index_dir(path) or not any(path.iterdir()))):
        raise FileExistsError(f"path: {path} exists and is not a drfast index; choose another path or remove it")
    with atomic_dir(path) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        doc_ids.write(tmp / DOC_IDS)
        (tmp / META).write_text(json.dumps({**meta, "format_version": FORMAT_VERSION}, indent=2), encoding="utf-8")


def read_meta(path: PathLike) -> Dict[str, Any]:
    """meta.json of the index folder `path`, checked for a known format version."""
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise FileNotFoundError(f"path: {path} is not a drfast index (no {META})")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_file}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: expected a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{meta_file}: format_version {version!r} is not supported by this drfast "
                         f"(it reads version {FORMAT_VERSION})")
    for key in ("ntotal", "dim"):
        if not isinstance(meta.get(key), int) or isinstance(meta.get(key), bool) or meta[key] < 1:
            raise ValueError(f"{meta_file}: {key!r} must be a positive integer, got {meta.get(key)!r}")
    return meta


def read_array(path: PathLike, name: str, mmap: bool, shape: Optional[tuple] = None,
               dtypes: Sequence[str] = ()) -> np.ndarray:
    """NAME.npy of an index folder (memory-mapped when `mmap`), checked against the expected shape
    (None entries match anything) and dtypes; errors name the file."""
    file = Path(path) / f"{name}.npy"
    try:
        array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: missing from the index folder") from None
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{file}: not a readable .npy file ({e})") from None
    if shape is not None and (array.ndim != len(shape) or any(s is not None and a != s
                                                              for a, s in zip(array.shape, shape))):
        raise ValueError(f"{file}: shape {array.shape} does not match meta.json (expected {shape})")
    if dtypes and str(array.dtype) not in dtypes:
        raise ValueError(f"{file}: dtype {array.dtype}, expected {' or '.join(dtypes)}")
    return array


def read_doc_ids(path: PathLike, n: int) -> DocIdMap:
    return DocIdMap.read(Path(path) / DOC_IDS, expected=n)
