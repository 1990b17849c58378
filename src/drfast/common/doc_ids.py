"""External document ids <-> index rows, held compactly.

`DocIdMap` keeps the ids as one numpy array of UTF-8 byte strings plus the permutation that sorts
them: about (longest id + 4) bytes per document, so MS MARCO's 8.8M ids take about 100 MB instead of
the ~1 GB of a dict of Python strings. An id -> row lookup is a vectorised binary search.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np

from drfast.common.errors import UsageError, UsageTypeError



class DocIdMap(Sequence):
    """The external ids of rows 0..N-1, unique, each a non-empty string without line breaks or NULs.

    Behaves as a read-only sequence of str (`ids[row]`, `len`, iteration, `list(ids)`);
    `rows(doc_ids)` maps ids back to rows.
    """

    def __init__(self, doc_ids: Union[Sequence[str], np.ndarray, "DocIdMap"], name: str = "doc_ids"):
        if isinstance(doc_ids, DocIdMap):
            self._ids, self._order = doc_ids._ids, doc_ids._order
            return
        self._ids = _as_bytes_array(doc_ids, name)
        self._order = np.argsort(self._ids, kind="stable").astype(np.int32 if len(self._ids) < 2**31 else np.int64)
        self._check(name)

    @classmethod
    def range(cls, n: int) -> "DocIdMap":
        """The default ids "0".."n-1"."""
        return cls(np.arange(n).astype(f"S{len(str(max(n - 1, 0)))}"))

    def _check(self, name: str) -> None:
        ids = self._ids
        if ids.size and ids.dtype.itemsize and (np.char.str_len(ids) == 0).any():
            raise UsageError(name, f"row {int(np.flatnonzero(np.char.str_len(ids) == 0)[0])} has an empty id")
        if ids.size and ids.dtype.itemsize == 0:
            raise UsageError(name, "row 0 has an empty id")
        for bad in ("\n", "\r"):  # NULs are refused where the ids come in (numpy pads with them)
            hit = np.char.find(ids, bad.encode()) >= 0
            if hit.any():
                row = int(np.flatnonzero(hit)[0])
                raise UsageError(name, f"the id of row {row} ({self[row]!r}) contains {bad!r}; ids are stored one "
                                 "per line and may not contain line breaks or NUL characters")
        ordered = ids[self._order]
        same = np.flatnonzero(ordered[1:] == ordered[:-1])
        if same.size:
            first, second = sorted(int(r) for r in self._order[same[0]:same[0] + 2])
            raise UsageError(name, f"duplicate id {self[first]!r} (rows {first} and {second}); ids must be unique")

    # ---- sequence of str ----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [x.decode("utf-8") for x in self._ids[i]]
        return self._ids[int(i)].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (x.decode("utf-8") for x in self._ids)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, DocIdMap):
            return self._ids.shape == other._ids.shape and bool(np.array_equal(self._ids, other._ids))
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # mutable-looking sequence semantics: not hashable

    def __repr__(self) -> str:
        head = ", ".join(repr(x) for x in self[:3])
        return f"DocIdMap([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"

    @property
    def nbytes(self) -> int:
        return int(self._ids.nbytes + self._order.nbytes)

    def take(self, rows: Iterable[int]) -> list:
        """The ids of `rows` (int array or list), as a list of str; -1 and other negatives are skipped."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        return [x.decode("utf-8") for x in self._ids[rows[rows >= 0]]]

    # ---- ids -> rows ---------------------------------------------------------------------------
    def lookup(self, doc_ids: Iterable[str]) -> np.ndarray:
        """int64 row of each id, -1 where the id is unknown."""
        keys = _as_bytes_array(doc_ids, "doc_ids", check=False)
        if not len(self) or not keys.size:
            return np.full(keys.shape, -1, dtype=np.int64)
        ordered = self._ids[self._order]
        pos = np.minimum(np.searchsorted(ordered, keys), len(self) - 1)
        return np.where(ordered[pos] == keys, self._order[pos], -1).astype(np.int64)

    def rows(self, doc_ids: Iterable[str], name: str = "doc_ids", where: str = "the index",
             owner: str = "") -> np.ndarray:
        """int64 row of each id; ValueError naming `name`, the first unknown id and its `owner`
        (e.g. "query 'q1'")."""
        doc_ids = doc_ids if isinstance(doc_ids, (list, tuple, np.ndarray)) else list(doc_ids)
        rows = self.lookup(doc_ids)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            of = f" of {owner}" if owner else ""
            raise UsageError(name, f"document {str(doc_ids[int(missing[0])])!r}{of} is not in {where}")
        return rows

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self.lookup([doc_id])[0] >= 0)

    # ---- files ---------------------------------------------------------------------------------
    def write(self, path: Union[str, os.PathLike]) -> None:
        """One id per line, UTF-8 (write into a temp folder or via drfast.common.atomic)."""
        with open(path, "wb") as f:
            for start in range(0, len(self), 1 << 20):
                f.write(b"\n".join(self._ids[start:start + (1 << 20)].tolist()) + b"\n")

    @classmethod
    def read(cls, path: Union[str, os.PathLike], expected: int | None = None) -> "DocIdMap":
        """The ids written by `write`; ValueError naming the file when it does not hold `expected` ids."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"{path}: cannot read the document ids ({e.strerror or e})") from None
        if data and not data.endswith(b"\n"):
            raise ValueError(f"{path}: truncated (the last id has no line end)")
        if b"\x00" in data:
            raise ValueError(f"{path}: contains a NUL character; not a document id file")
        lines = data.split(b"\n")[:-1] if data else []
        if expected is not None and len(lines) != expected:
            raise ValueError(f"{path}: holds {len(lines)} document ids, expected {expected}")
        try:
            return cls(np.array(lines, dtype=np.bytes_) if lines else np.zeros(0, "S1"), name=str(path))
        except ValueError as e:
            raise ValueError(str(e)) from None


def _as_bytes_array(ids: Any, name: str, check: bool = True) -> np.ndarray:
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind == "S":
            return np.ascontiguousarray(ids.reshape(-1))
        if ids.dtype.kind == "U":
            return np.char.encode(ids.reshape(-1), "utf-8")
        if ids.dtype.kind in "iu":
            return ids.reshape(-1).astype(f"S{len(str(int(abs(ids).max()))) + 1 if ids.size else 1}")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)):
        raise UsageTypeError(name, f"expected a sequence of document ids, got a single {type(ids).__name__}")
    out = []
    for i, x in enumerate(ids):
        if not isinstance(x, str):
            if check and not isinstance(x, (int, np.integer)):
                raise UsageTypeError(name, f"id {i} is a {type(x).__name__}, expected str")
            x = str(x)
        if "\x00" in x:
            raise UsageError(name, f"id {i} ({x!r}) contains a NUL character")
        out.append(x.encode("utf-8"))
    return np.array(out, dtype=np.bytes_) if out else np.zeros(0, "S1")
