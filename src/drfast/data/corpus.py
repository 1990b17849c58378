"""Corpus: a document collection (BEIR corpus.jsonl or MS MARCO collection.tsv) read on demand.

The corpus is never held in memory as Python strings: one pass at open records the byte offset of
every line, so a document is read back by seeking (MS MARCO has 8.8M passages). Documents follow the
BEIR convention: text = (title + " " + text).strip().
"""
from __future__ import annotations

import hashlib
from array import array
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from drfast.common.doc_ids import DocIdMap
from drfast.common.errors import UsageError
from drfast.data.parsing import (DataFormatError, PathLike, as_id, decode_line, doc_text, id_field, is_tsv_header,
                                 json_object, line_of_offset, sniff_format, string_field)


def _parse_jsonl_doc(path: PathLike, lineno: int, line: str) -> tuple[str, str]:
    obj = json_object(path, lineno, line)
    doc_id = id_field(path, lineno, obj, "_id")
    return doc_id, doc_text(string_field(path, lineno, obj, "title", False),
                            string_field(path, lineno, obj, "text", True))


def _parse_tsv_doc(path: PathLike, lineno: int, line: str) -> tuple[str, str]:
    fields = line.split("\t")
    if len(fields) == 2:
        doc_id, title, text = fields[0], "", fields[1]
    elif len(fields) == 3:
        doc_id, title, text = fields
    else:
        raise DataFormatError(path, lineno, f"expected 2 or 3 tab-separated columns (docid, [title,] text), got {len(fields)}")
    if not doc_id:
        raise DataFormatError(path, lineno, "expected a non-empty docid in the first column")
    return as_id(path, lineno, doc_id, "the docid"), doc_text(title, text)


_PARSERS = {"jsonl": _parse_jsonl_doc, "tsv": _parse_tsv_doc}


_ID_CHUNK = 1 << 20  # ids are packed into numpy arrays this many at a time while indexing


_PROGRESS_MIN_BYTES = 32 << 20  # about 100k MS MARCO passages; smaller files index in a blink


class Corpus:
    """A document collection read on demand from ``corpus.jsonl`` or an MS MARCO ``collection.tsv``.

    Opening makes one pass that records, per document (row), the byte offset of its line, its text
    length in characters and its id. Rows follow file order; blank lines are skipped. A document's
    text is ``title + " " + text``, stripped.

    Parameters
    ----------
    path : str or os.PathLike
        ``corpus.jsonl`` (``{"_id", "title", "text"}`` per line) or a TSV (``docid<TAB>text`` or
        ``docid<TAB>title<TAB>text``).
    format : {None, "jsonl", "tsv"}
        None: guessed from the file.

    Raises
    ------
    DataFormatError
        A malformed line, naming the file, the line number and what was expected.
    """

    def __init__(self, path: PathLike, format: Optional[str] = None):
        self.path = Path(path)
        self.format = format or sniff_format(self.path)
        if self.format not in _PARSERS:
            raise UsageError("format", f"expected 'jsonl' or 'tsv', got {self.format!r}")
        stat = self.path.stat()
        self._stat = (stat.st_size, stat.st_mtime_ns)
        self.offsets, self.lengths, ids = self._index(stat.st_size)
        self.doc_ids = self._id_map(ids)

    def _index(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parse = _PARSERS[self.format]
        offsets, lengths = array("q"), array("q")  # compact while growing, unlike a list of ints
        id_chunks: list[np.ndarray] = []
        ids: list[str] = []
        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"indexing {self.path.name}",
                   disable=True if size < _PROGRESS_MIN_BYTES else None)  # None: off when not a tty
        with open(self.path, "rb") as f, bar:
            for lineno, start, line in self._document_lines(f):
                doc_id, text = parse(self.path, lineno, line)
                offsets.append(start)
                lengths.append(len(text))
                ids.append(doc_id)
                if len(ids) == _ID_CHUNK:
                    id_chunks.append(np.array(ids))
                    ids = []
                if lineno % 65536 == 0:
                    bar.update(start - bar.n)
            bar.update(size - bar.n)
        id_chunks.append(np.array(ids, dtype=str))
        return (np.frombuffer(offsets, dtype=np.int64), np.frombuffer(lengths, dtype=np.int64),
                np.concatenate(id_chunks))

    def _document_lines(self, f) -> Iterator[tuple[int, int, str]]:
        """(line number, byte offset, text) of each document line of the open file `f`: blank lines
        are skipped, and so is a TSV header ("id<TAB>text", ...) on the first line."""
        offset, lines = 0, enumerate(f, 1)
        for lineno, raw in lines:  # up to the first line that is not blank: a header?
            start, offset = offset, offset + len(raw)
            if not raw.isspace():
                line = decode_line(self.path, lineno, raw)
                if not (self.format == "tsv" and is_tsv_header(line.split("\t"))):
                    yield lineno, start, line
                break
        for lineno, raw in lines:  # the rest (one loop without the header test: 8.8M lines for MS MARCO)
            start, offset = offset, offset + len(raw)
            if not raw.isspace():
                yield lineno, start, decode_line(self.path, lineno, raw)

    def _id_map(self, ids: np.ndarray) -> DocIdMap:
        """The ids as a DocIdMap (compact, binary-searched: no dict of millions of Python strings); a
        duplicate is reported with its line numbers (each id was checked by the id rule when read)."""
        try:
            return DocIdMap(ids, name="doc_ids")
        except ValueError:
            order = np.argsort(ids, kind="stable")
            same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
            if not same.size:
                raise
        first, second = sorted(order[same[0]:same[0] + 2])
        lines = [line_of_offset(self.path, int(self.offsets[r])) for r in (first, second)]
        raise DataFormatError(self.path, lines[1], f"duplicate document id {str(ids[first])!r} "
                                                   f"(first on line {lines[0]})")

    # -- size and identity -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.doc_ids)

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r}, format={self.format!r}, docs={len(self)})"

    def fingerprint(self) -> str:
        """A short hex key for caches built from this corpus (embeddings, indexes)."""
        key = f"{self.path.resolve()}\0{self._stat[0]}\0{self._stat[1]}\0{len(self)}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    # -- reading ---------------------------------------------------------------------------

    def _open(self):
        stat = self.path.stat()
        if (stat.st_size, stat.st_mtime_ns) != self._stat:
            # the recorded offsets would point into the middle of other lines
            raise RuntimeError(f"{self.path} changed since it was indexed; open the Corpus again")
        return open(self.path, "rb")

    def text(self, i: int) -> str:
        return self.texts([i])[0]

    def texts(self, indices: Iterable[int]) -> list[str]:
        """Texts of the given rows, in the order given (read in file order to keep seeks forward)."""
        rows = np.asarray(indices if isinstance(indices, (np.ndarray, list, tuple)) else list(indices),
                          dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"indices: rows must be in [0, {len(self)}), got {rows.min()}..{rows.max()}")
        rows = rows % max(len(self), 1)  # numpy-style negative indices
        parse = _PARSERS[self.format]
        out: list[str] = [""] * rows.size
        with self._open() as f:
            for k in np.argsort(self.offsets[rows], kind="stable"):
                offset = int(self.offsets[rows[k]])
                f.seek(offset)
                raw = f.readline()
                try:  # line 1 (offset 0) may start with a byte-order mark
                    out[k] = parse(self.path, 0, decode_line(self.path, 0 if offset else 1, raw))[1]
                except DataFormatError as e:  # the file changed under us; say where
                    raise DataFormatError(self.path, line_of_offset(self.path, offset), e.message) from None
        return out

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(doc_id, text) in row order, read sequentially."""
        parse = _PARSERS[self.format]
        with self._open() as f:
            for lineno, _, line in self._document_lines(f):
                yield parse(self.path, lineno, line)

    # -- ids -> rows -----------------------------------------------------------------------

    def rows(self, doc_ids: Sequence[str]) -> np.ndarray:
        """Row numbers (int64) of external document ids; KeyError for an unknown id."""
        doc_ids = [str(d) for d in doc_ids]
        rows = self.doc_ids.lookup(doc_ids)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            raise KeyError(f"document id {str(list(doc_ids)[missing[0]])!r} is not in {self.path}")
        return rows
