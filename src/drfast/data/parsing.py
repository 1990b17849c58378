"""Line-level reading shared by every data reader: decoding, JSON objects, ids and the error type.

Everything in drfast.data turns files into plain Python / numpy values; nothing above it parses a
file. A malformed line raises `DataFormatError` naming the file, the line and what was expected.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


class DataFormatError(ValueError):
    """A data file does not have the expected format; says which file, which line, what was expected."""

    def __init__(self, path: PathLike, lineno: int, message: str):
        self.path, self.lineno, self.message = str(path), lineno, message
        super().__init__(f"{path}, line {lineno}: {message}")

    def __reduce__(self):  # picklable, so errors survive DataLoader worker processes
        return type(self), (self.path, self.lineno, self.message)


def doc_text(title: str, text: str) -> str:
    """The BEIR/MTEB document text; an empty title gives just the (stripped) text."""
    return (title + " " + text).strip()


def _decode(path: PathLike, lineno: int, raw: bytes) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, lineno, f"expected UTF-8 text ({e.reason} at byte {e.start})") from None
    # A byte-order mark some editors write at the start of the file; stripped wherever the line is
    # read from (Corpus.texts seeks straight to the first line too).
    return line.lstrip("\ufeff").rstrip("\r\n")


def _lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its terminator), skipping blank lines.

    Binary mode splits on b"\\n" only, so U+2028 and friends inside a JSON string stay in their line.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.isspace():
                yield lineno, _decode(path, lineno, raw)


def _json_object(path: PathLike, lineno: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise DataFormatError(path, lineno, f"expected a JSON object ({e})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _id(path: PathLike, lineno: int, obj: dict, key: str) -> str:
    """An id field: a non-empty string or an integer (ids like 4983 are sometimes written as numbers)."""
    if key not in obj:
        raise DataFormatError(path, lineno, f'expected a "{key}" field')
    return _as_id(path, lineno, obj[key], f'"{key}"')


def _as_id(path: PathLike, lineno: int, value: object, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise DataFormatError(path, lineno, f"expected {what} to be a non-empty string or an integer, got {value!r}")


def _string(path: PathLike, lineno: int, obj: dict, key: str, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise DataFormatError(path, lineno, f'expected a "{key}" field')
        return ""
    if not isinstance(value, str):
        raise DataFormatError(path, lineno, f'expected "{key}" to be a string, got {type(value).__name__}')
    return value


def _line_of_offset(path: PathLike, offset: int) -> int:
    """1-based line number of the line starting at byte `offset` (error messages only)."""
    count, chunk = 1, 1 << 20
    with open(path, "rb") as f:
        while offset > 0:
            data = f.read(min(chunk, offset))
            count += data.count(b"\n")
            offset -= len(data)
    return count


def _sniff_format(path: Path) -> str:
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if path.suffix == ".tsv":
        return "tsv"
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "jsonl" if head.startswith(b"{") else "tsv"
