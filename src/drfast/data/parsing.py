"""Line-level parsing shared by every data reader: JSON objects, ids, texts and the error type.

Lines come from `drfast.common.text_lines` (the package's one reader of text lines: UTF-8, byte-order
mark, CRLF); ids are checked here, once, by the id rule of `drfast.common.doc_ids`.

Everything in drfast.data turns files into plain Python / numpy values; nothing above it parses a
file. A malformed line raises `DataFormatError` naming the file, the line and what was expected.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

from drfast.common.doc_ids import bad_id_char, id_problem
from drfast.common.text_lines import DataFormatError, decode_line, iter_lines, line_of_offset

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["DataFormatError", "PathLike", "as_id", "decode_line", "doc_text", "id_field", "iter_lines", "json_object",
           "line_of_offset", "sniff_format", "string_field", "check_text",
           "is_tsv_header"]


def doc_text(title: str, text: str) -> str:
    """The BEIR/MTEB document text; an empty title gives just the (stripped) text."""
    return (title + " " + text).strip()


def json_object(path: PathLike, lineno: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise DataFormatError(path, lineno, f"expected a JSON object ({e})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def id_field(path: PathLike, lineno: int, obj: dict, key: str) -> str:
    """An id field: a string or an integer (ids like 4983 are sometimes written as numbers)."""
    if key not in obj:
        raise DataFormatError(path, lineno, f'expected a "{key}" field')
    return as_id(path, lineno, obj[key], f'"{key}"')


def as_id(path: PathLike, lineno: int, value: object, what: str) -> str:
    """`value` as an id that satisfies the id rule of `common.doc_ids` (checked here, once, when read)."""
    if value.__class__ is str and value and bad_id_char(value) is None:  # the common case, first: MS MARCO has 8.8M
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise DataFormatError(path, lineno, f"expected {what} to be a non-empty string or an integer, got {value!r}")
    problem = id_problem(value)
    if problem:
        raise DataFormatError(path, lineno, f"{what} {value!r} {problem}")
    return value


def string_field(path: PathLike, lineno: int, obj: dict, key: str, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise DataFormatError(path, lineno, f'expected a "{key}" field')
        return ""
    if not isinstance(value, str):
        raise DataFormatError(path, lineno, f'expected "{key}" to be a string, got {type(value).__name__}')
    return check_text(path, lineno, value, f'"{key}"')


def check_text(path: PathLike, lineno: int, text: str, what: str) -> str:
    """`text` unless it holds a lone surrogate (a JSON escape like "\\ud800" without its pair), which no
    tokenizer can encode: refused here, naming the line, rather than deep inside the encoder."""
    if text.isascii():  # O(1) in CPython: the common case costs nothing
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataFormatError(path, lineno, f"{what} holds a lone surrogate (U+{ord(text[e.start]):04X} at "
                                            f"character {e.start + 1}); expected valid Unicode text") from None
    return text


# Header lines some TSV exports start with ("id<TAB>text", "pid<TAB>passage", "qid<TAB>query"): the
# first line is a header when its first column names an id and every other column names a field.
ID_COLUMNS = frozenset({"id", "_id", "docid", "doc_id", "doc-id", "did", "pid", "passage_id", "passage-id",
                        "corpus-id", "corpus_id", "qid", "query_id", "query-id"})
TEXT_COLUMNS = frozenset({"text", "title", "passage", "contents", "content", "body", "document", "doc", "query"})


def is_tsv_header(fields: list[str]) -> bool:
    """Whether the tab-separated `fields` of a file's first line are column names, not data."""
    names = [f.strip().lower() for f in fields]
    return len(names) >= 2 and names[0] in ID_COLUMNS and all(n in TEXT_COLUMNS for n in names[1:])


def sniff_format(path: Path) -> str:
    """"jsonl" or "tsv", from the suffix or else the first bytes."""
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if path.suffix == ".tsv":
        return "tsv"
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "jsonl" if head.startswith(b"{") else "tsv"
