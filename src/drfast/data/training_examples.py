"""Tevatron-style training jsonl: {query_id, query, positive_passages, negative_passages} per line."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from drfast.common.atomic import write_file_atomic
from drfast.data.parsing import (DataFormatError, PathLike, as_id, check_text, doc_text, id_field, iter_lines,
                                 json_object, string_field)


@dataclass
class TrainingExample:
    """One training query with positive and (hard) negative documents.

    `*_texts` are None when the file gives only ids (texts then come from the corpus); otherwise
    one text per id, built with the title + text convention.
    """

    query_id: str
    query: Optional[str]
    positive_ids: list[str]
    negative_ids: list[str]
    positive_texts: Optional[list[str]] = None
    negative_texts: Optional[list[str]] = None


def _passages(path: PathLike, lineno: int, obj: dict, keys: tuple[str, str],
              required: bool) -> tuple[list[str], Optional[list[str]]]:
    present = [k for k in keys if k in obj]
    if len(present) > 1:
        raise DataFormatError(path, lineno, f'expected one of "{keys[0]}" and "{keys[1]}", not both')
    if not present:
        if required:
            raise DataFormatError(path, lineno, f'expected a "{keys[0]}" or "{keys[1]}" field')
        return [], []
    items = obj[present[0]]
    if not isinstance(items, list):
        raise DataFormatError(path, lineno, f'expected "{present[0]}" to be a list')
    ids: list[str] = []
    texts: list[str] = []
    for item in items:
        if isinstance(item, dict):
            ids.append(id_field(path, lineno, item, "docid"))
            if "text" in item or "title" in item:
                texts.append(doc_text(string_field(path, lineno, item, "title", False),
                                      string_field(path, lineno, item, "text", False)))
        else:
            ids.append(as_id(path, lineno, item, f'an item of "{present[0]}"'))
    if texts and len(texts) != len(ids):
        raise DataFormatError(path, lineno, f'expected every passage of "{present[0]}" to have a text, or none')
    return ids, (texts if len(texts) == len(ids) else None)


def iter_training_examples(path: PathLike) -> Iterator[TrainingExample]:
    """Tevatron-style jsonl: {"query_id", "query", "positive_passages", "negative_passages"}.

    Passages are objects {"docid", "title"?, "text"?} or bare ids; "positives"/"negatives" are
    accepted as key names too. A missing "query_id" becomes the line number.
    """
    for lineno, line in iter_lines(path):
        obj = json_object(path, lineno, line)
        qid = id_field(path, lineno, obj, "query_id") if "query_id" in obj else str(lineno)
        query = obj.get("query")
        if query is not None and not isinstance(query, str):
            raise DataFormatError(path, lineno, f'expected "query" to be a string, got {type(query).__name__}')
        if query is not None:
            check_text(path, lineno, query, '"query"')
        pos_ids, pos_texts = _passages(path, lineno, obj, ("positive_passages", "positives"), required=True)
        neg_ids, neg_texts = _passages(path, lineno, obj, ("negative_passages", "negatives"), required=False)
        yield TrainingExample(qid, query, pos_ids, neg_ids, pos_texts, neg_texts)


def _passage_objects(ids: list[str], texts: Optional[list[str]]) -> list[dict]:
    if texts is None:
        return [{"docid": d} for d in ids]
    if len(texts) != len(ids):
        raise ValueError(f"expected one text per document id, got {len(texts)} texts for {len(ids)} ids")
    return [{"docid": d, "title": "", "text": t} for d, t in zip(ids, texts)]


def write_training_examples(path: PathLike, examples: Iterable[TrainingExample]) -> int:
    """Write Tevatron-style jsonl atomically (a reader never sees half a file); returns the count."""
    count = 0

    def write(f) -> None:
        nonlocal count
        for ex in examples:
            obj = {"query_id": ex.query_id, "query": ex.query,
                   "positive_passages": _passage_objects(ex.positive_ids, ex.positive_texts),
                   "negative_passages": _passage_objects(ex.negative_ids, ex.negative_texts)}
            if ex.query is None:
                del obj["query"]
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            count += 1

    write_file_atomic(path, write, "w", encoding="utf-8", newline="\n")
    return count
