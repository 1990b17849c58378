"""External document ids <-> index rows, held compactly.

`DocIdMap` keeps the ids as one numpy array of UTF-8 byte strings plus the permutation that sorts
them: about (longest id + 4) bytes per document, so MS MARCO's 8.8M ids take about 100 MB instead of
the ~1 GB of a dict of Python strings. An id -> row lookup is a vectorised binary search.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from drfast.common.errors import UsageError, UsageTypeError
from drfast.common.text_lines import DataFormatError, PathLike, read_line_bytes

# ---- the id rule ---------------------------------------------------------------------------------
# An id read from a file (corpus `_id`, query id, a line of an id file, an MS MARCO TSV id) must be
# non-empty, without whitespace (TREC run and qrels files split on it, so such an id could never be
# written or judged) and without control characters (a NUL is lost in numpy's fixed-width strings,
# a line break splits id files) or lone surrogates (not encodable as UTF-8). Checked once, when read.
# Every code point that str.isspace accepts or that is a control character (category Cc), as one
# regex class; tests/common/test_doc_ids.py checks it against every code point.
_FORBIDDEN = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_BAD_ID_CHAR = re.compile(rf"[{_FORBIDDEN}\ud800-\udfff]")
bad_id_char = _BAD_ID_CHAR.search  # the first character an id may not hold (a match), or None: the fast path
# The same for a whole file of ids joined by "\n" (the separator excepted); ASCII files, the common
# case, are checked by deleting the forbidden bytes, several times faster than a regex.
_BAD_ID_IN_FILE = re.compile(r"[\x00-\x09\x0b-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_FORBIDDEN_ASCII = bytes(c for c in range(0x21) if c != 0x0A) + b"\x7f"


def id_problem(doc_id: str) -> Optional[str]:
    """What is wrong with `doc_id` as an id read from a file (see the rule above), or None."""
    if not doc_id:
        return "is empty"
    bad = _BAD_ID_CHAR.search(doc_id)
    if bad is None:
        return None
    char, at = bad.group(), bad.start()
    if "\ud800" <= char <= "\udfff":
        kind = "a lone surrogate"
    elif char.isspace():
        kind = ("leading" if at == 0 else "trailing" if at == len(doc_id) - 1 else "inner") + " whitespace"
    else:
        kind = "a NUL character" if char == "\x00" else "a control character"
    return f"contains {kind} (U+{ord(char):04X} at character {at + 1}); ids may not contain whitespace, " \
           "control characters or lone surrogates"


def read_id_file(path: PathLike, data: Optional[bytes] = None, what: str = "id", rule: bool = True) -> np.ndarray:
    """The ids of a file with one id per line, as a numpy array of UTF-8 bytes (row = line - 1).

    Read by `common.text_lines` (UTF-8, byte-order mark, CRLF) and, with `rule`, checked by the id rule
    in bulk: DataFormatError naming the file and the line of the first bad id. Without it (a file
    drfast wrote itself from a DocIdMap, whose own checks are looser) only the lines are split."""
    lines = read_line_bytes(path, data)
    if not rule:
        return np.array(lines, dtype=np.bytes_) if lines else np.zeros(0, "S1")
    first_empty = lines.index(b"") if b"" in lines else len(lines)
    bad_line = _first_bad_line(b"\n".join(lines))
    if bad_line is not None and bad_line <= first_empty:
        text = lines[bad_line].decode("utf-8")
        raise DataFormatError(path, bad_line + 1, f"{what} {text!r} {id_problem(text)}")
    if first_empty < len(lines):
        raise DataFormatError(path, first_empty + 1, f"the line is empty; every line must hold an {what}")
    # no NUL is left (refused above), so numpy's fixed-width bytes lose nothing
    return np.array(lines, dtype=np.bytes_) if lines else np.zeros(0, "S1")


def _first_bad_line(joined: bytes) -> Optional[int]:
    """0-based line of the first forbidden character in ids joined by "\n" (valid UTF-8), or None."""
    if joined.isascii():
        if len(joined.translate(None, _FORBIDDEN_ASCII)) == len(joined):
            return None
        text = joined.decode("ascii")
    else:
        text = joined.decode("utf-8")
    bad = _BAD_ID_IN_FILE.search(text)
    return None if bad is None else text.count("\n", 0, bad.start())


class DocIdMap(Sequence):
    """The external ids of rows 0..N-1, unique, each a non-empty string without line breaks or NULs.

    Behaves as a read-only sequence of str (``ids[row]``, ``len``, iteration, ``list(ids)``);
    ``rows(doc_ids)`` maps ids back to rows. The ids are held in compact sorted arrays, not as Python
    strings, so the 8.8M ids of MS MARCO take about 100 MB.

    Parameters
    ----------
    doc_ids : sequence of str, numpy array or DocIdMap
        One id per row.
    name : str
        The argument name that errors about these ids blame.

    Raises
    ------
    UsageError
        A duplicate, empty or malformed id, named.

    Examples
    --------
    >>> import drfast
    >>> ids = drfast.DocIdMap(["d3", "d1", "d7"])
    >>> ids[0], len(ids), list(ids)
    ('d3', 3, ['d3', 'd1', 'd7'])
    >>> ids.rows(["d1", "d7"])
    array([1, 2])
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
        """The ids written by `write`; ValueError naming the file when it does not hold `expected` ids
        (DataFormatError naming the line of bad UTF-8). A byte-order mark and CRLF line ends are
        accepted, as by every reader of text lines."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"{path}: cannot read the document ids ({e.strerror or e})") from None
        if data and not data.endswith(b"\n"):
            raise ValueError(f"{path}: truncated (the last id has no line end)")
        if b"\x00" in data:
            raise ValueError(f"{path}: contains a NUL character; not a document id file")
        # ids held in memory may break the rule for files (e.g. inner spaces): what was saved loads
        ids = read_id_file(path, data, "document id", rule=False)
        if expected is not None and len(ids) != expected:
            raise ValueError(f"{path}: holds {len(ids)} document ids, expected {expected}")
        try:
            return cls(ids, name=str(path))
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
