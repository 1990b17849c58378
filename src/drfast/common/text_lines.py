"""The one reader of text-line files in drfast (corpora, queries, qrels, id files, run files).

Every file of lines is read the same way: UTF-8 only (a bad byte is refused naming the file, the line
and the byte), a byte-order mark at the start of the file ignored (some editors write one), "\\r\\n"
line ends accepted like "\\n", and a final line end optional. Lines are split on b"\\n" only, so
U+2028 and friends inside a JSON string stay in their line (str.splitlines would break them).

A malformed file raises `DataFormatError`, naming the file, the line (when one is to blame) and what
was expected. It lives here, below every reader, so that `common.doc_ids` and `index` raise the same
error as `drfast.data` (which re-exports it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]
BOM = "\ufeff"
_BOM_BYTES = BOM.encode("utf-8")


class DataFormatError(ValueError):
    """A data file does not have the expected format; says which file, which line, what was expected.

    `lineno` is None when the file as a whole is at fault (e.g. it holds no judgments at all)."""

    def __init__(self, path: PathLike, lineno: Optional[int], message: str):
        self.path, self.lineno, self.message = str(path), lineno, message
        where = f"{path}, line {lineno}" if lineno is not None else f"{path}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # picklable, so errors survive DataLoader worker processes
        return type(self), (self.path, self.lineno, self.message)


def _utf8_error(path: PathLike, lineno: int, e: UnicodeDecodeError, line_start: int = 0) -> DataFormatError:
    return DataFormatError(path, lineno, f"expected UTF-8 text (byte {e.start - line_start} is not UTF-8: {e.reason})")


def decode_line(path: PathLike, lineno: int, raw: bytes) -> str:
    """One raw line (with or without its "\\n" / "\\r\\n") as text; line 1 loses a byte-order mark.

    `lineno` 0 means "not known" (a line read by seeking); a caller that seeks to the file's start
    passes 1 so that the mark is stripped there too."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, lineno, e) from None
    if lineno == 1 and line.startswith(BOM):
        line = line[1:]
    # "\n", then the "\r" of a CRLF (of the last line too): the same as read_line_bytes
    return line.removesuffix("\n").removesuffix("\r")


def iter_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line end) of every line that is not blank."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.isspace():
                yield lineno, decode_line(path, lineno, raw)


def read_line_bytes(path: PathLike, data: Optional[bytes] = None) -> list[bytes]:
    """Every line of a whole file (blank ones included, so index = line number - 1), as UTF-8 bytes.

    For files of millions of short lines (document ids): the UTF-8 check, the mark and the line ends
    are handled in bulk, never line by line in Python. `data` is the file's content when the caller
    has read it already."""
    if data is None:
        data = Path(path).read_bytes()
    if data.startswith(_BOM_BYTES):
        data = data[len(_BOM_BYTES):]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        raise _utf8_error(path, data.count(b"\n", 0, e.start) + 1, e, start) from None
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the final line end
    if b"\r" in data:
        lines = [x[:-1] if x.endswith(b"\r") else x for x in lines]
    return lines


def line_of_offset(path: PathLike, offset: int) -> int:
    """1-based line number of the line starting at byte `offset` (error messages only)."""
    count, chunk = 1, 1 << 20
    with open(path, "rb") as f:
        while offset > 0:
            data = f.read(min(chunk, offset))
            if not data:
                break
            count += data.count(b"\n")
            offset -= len(data)
    return count
