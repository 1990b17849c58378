"""Reading retrieval data: BEIR folders, MS MARCO TSV files, TREC qrels, Tevatron training jsonl.

Everything here turns files into plain Python / numpy values; nothing above this module parses a
file. Documents follow the BEIR convention: text = (title + " " + text).strip().

The corpus is never held in memory as Python strings: one pass at open records the byte offset
of every line, so a document is read back by seeking (MS MARCO has 8.8M passages).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "DataFormatError", "Corpus", "Dataset", "TrainingExample", "beir_splits", "doc_text",
    "iter_training_examples", "load_beir", "load_msmarco", "load_qrels", "load_queries",
    "positives_from_qrels", "write_training_examples",
]


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


# ---------------------------------------------------------------------------------------------
# Line-level helpers shared by every reader


def _decode(path: PathLike, lineno: int, raw: bytes) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, lineno, f"expected UTF-8 text ({e.reason} at byte {e.start})") from None
    if lineno == 1:
        line = line.lstrip("\ufeff")  # a byte-order mark some editors write
    return line.rstrip("\r\n")


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


def _first_line(path: PathLike, kind: str, ident: str) -> int:
    """Line of the first occurrence of `ident`; only called to word an error message."""
    for lineno, qid, docid, _ in _iter_qrels(path):
        if (qid if kind == "query" else docid) == ident:
            return lineno
    return 0


def _line_of_offset(path: PathLike, offset: int) -> int:
    """1-based line number of the line starting at byte `offset` (error messages only)."""
    count, chunk = 1, 1 << 20
    with open(path, "rb") as f:
        while offset > 0:
            data = f.read(min(chunk, offset))
            count += data.count(b"\n")
            offset -= len(data)
    return count


# ---------------------------------------------------------------------------------------------
# Corpus


def _parse_jsonl_doc(path: PathLike, lineno: int, line: str) -> tuple[str, str]:
    obj = _json_object(path, lineno, line)
    doc_id = _id(path, lineno, obj, "_id")
    return doc_id, doc_text(_string(path, lineno, obj, "title", False), _string(path, lineno, obj, "text", True))


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
    return doc_id, doc_text(title, text)


_PARSERS = {"jsonl": _parse_jsonl_doc, "tsv": _parse_tsv_doc}
_ID_CHUNK = 1 << 20  # ids are packed into numpy arrays this many at a time while indexing
_PROGRESS_MIN_BYTES = 32 << 20  # about 100k MS MARCO passages; smaller files index in a blink


class Corpus:
    """A document collection read on demand from `corpus.jsonl` ({"_id", "title", "text"}) or an
    MS MARCO `collection.tsv` (docid<TAB>text or docid<TAB>title<TAB>text).

    Opening makes one pass that records, per document (row), the byte offset of its line, its text
    length in characters and its id. Rows follow file order; blank lines are skipped.
    """

    def __init__(self, path: PathLike, format: Optional[str] = None):
        self.path = Path(path)
        self.format = format or _sniff_format(self.path)
        if self.format not in _PARSERS:
            raise ValueError(f"format: expected 'jsonl' or 'tsv', got {self.format!r}")
        stat = self.path.stat()
        self._stat = (stat.st_size, stat.st_mtime_ns)
        self.offsets, self.lengths, self.doc_ids = self._index(stat.st_size)
        # Sorted ids serve both the duplicate check and id -> row lookups (binary search, no dict
        # of millions of Python strings).
        self._order = np.argsort(self.doc_ids, kind="stable")
        self._sorted_ids = self.doc_ids[self._order]
        self._check_unique()

    def _index(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parse = _PARSERS[self.format]
        offsets, lengths = array("q"), array("q")  # compact while growing, unlike a list of ints
        id_chunks: list[np.ndarray] = []
        ids: list[str] = []
        offset = 0
        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"indexing {self.path.name}",
                   disable=True if size < _PROGRESS_MIN_BYTES else None)  # None: off when not a tty
        with open(self.path, "rb") as f, bar:
            for lineno, raw in enumerate(f, 1):
                start, offset = offset, offset + len(raw)
                if raw.isspace():
                    continue
                doc_id, text = parse(self.path, lineno, _decode(self.path, lineno, raw))
                offsets.append(start)
                lengths.append(len(text))
                ids.append(doc_id)
                if len(ids) == _ID_CHUNK:
                    id_chunks.append(np.array(ids))
                    ids = []
                if lineno % 65536 == 0:
                    bar.update(offset - bar.n)
            bar.update(offset - bar.n)
        id_chunks.append(np.array(ids, dtype=str))
        return (np.frombuffer(offsets, dtype=np.int64), np.frombuffer(lengths, dtype=np.int64),
                np.concatenate(id_chunks))

    def _check_unique(self) -> None:
        same = np.flatnonzero(self._sorted_ids[1:] == self._sorted_ids[:-1])
        if same.size:
            first, second = sorted(self._order[same[0]:same[0] + 2])
            lines = [_line_of_offset(self.path, int(self.offsets[r])) for r in (first, second)]
            raise DataFormatError(self.path, lines[1],
                                  f"duplicate document id {str(self.doc_ids[first])!r} (first on line {lines[0]})")

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
                f.seek(int(self.offsets[rows[k]]))
                out[k] = parse(self.path, 0, _decode(self.path, 0, f.readline()))[1]
        return out

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(doc_id, text) in row order, read sequentially."""
        parse = _PARSERS[self.format]
        with self._open() as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.isspace():
                    yield parse(self.path, lineno, _decode(self.path, lineno, raw))

    # -- ids -> rows -----------------------------------------------------------------------

    def _lookup(self, doc_ids: Sequence[str]) -> np.ndarray:
        """Row of each id, -1 where the id is not in the corpus."""
        ids = np.asarray([str(d) for d in doc_ids], dtype=str)
        if not len(self) or not ids.size:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted_ids, ids), len(self) - 1)
        return np.where(self._sorted_ids[pos] == ids, self._order[pos], -1).astype(np.int64)

    def rows(self, doc_ids: Sequence[str]) -> np.ndarray:
        """Row numbers (int64) of external document ids; KeyError for an unknown id."""
        rows = self._lookup(doc_ids)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            raise KeyError(f"document id {str(list(doc_ids)[missing[0]])!r} is not in {self.path}")
        return rows


def _sniff_format(path: Path) -> str:
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if path.suffix == ".tsv":
        return "tsv"
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "jsonl" if head.startswith(b"{") else "tsv"


# ---------------------------------------------------------------------------------------------
# Queries and relevance judgments


def load_queries(path: PathLike) -> dict[str, str]:
    """All queries of a BEIR `queries.jsonl` ({"_id", "text"}) or an MS MARCO `queries.tsv` (qid<TAB>text)."""
    path = Path(path)
    jsonl = _sniff_format(path) == "jsonl"
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, line in _lines(path):
        if jsonl:
            obj = _json_object(path, lineno, line)
            qid, text = _id(path, lineno, obj, "_id"), _string(path, lineno, obj, "text", True)
        else:
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0]:
                raise DataFormatError(path, lineno, f"expected 2 tab-separated columns (qid, text), got {len(fields)}")
            qid, text = fields
        if qid in queries:
            raise DataFormatError(path, lineno, f"duplicate query id {qid!r} (first on line {first_line[qid]})")
        queries[qid], first_line[qid] = text, lineno
    return queries


_BEIR_HEADER = ["query-id", "corpus-id", "score"]
_QRELS_COLUMNS = {3: "query-id, corpus-id, score", 4: "qid, iteration, docid, relevance"}


def _iter_qrels(path: PathLike) -> Iterator[tuple[int, str, str, int]]:
    """(line, query id, doc id, relevance) from BEIR tsv (3 columns, optional header) or TREC
    (4 whitespace-separated columns); the first data line decides which."""
    ncols = None
    for lineno, line in _lines(path):
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        if ncols is None:
            if [f.lower() for f in fields] == _BEIR_HEADER:
                ncols = 3
                continue
            if len(fields) not in _QRELS_COLUMNS:
                raise DataFormatError(path, lineno, "expected BEIR qrels (query-id<TAB>corpus-id<TAB>score) or "
                                                    f"TREC qrels (qid iteration docid relevance), got {len(fields)} columns")
            ncols = len(fields)
        if len(fields) != ncols:
            raise DataFormatError(path, lineno, f"expected {ncols} columns ({_QRELS_COLUMNS[ncols]}), got {len(fields)}")
        qid, docid, score = (fields[0], fields[1], fields[2]) if ncols == 3 else (fields[0], fields[2], fields[3])
        if not qid or not docid:
            raise DataFormatError(path, lineno, "expected non-empty query and document ids")
        try:
            rel = int(score)
        except ValueError:
            raise DataFormatError(path, lineno, f"expected an integer relevance score, got {score!r}") from None
        yield lineno, qid, docid, rel


def load_qrels(path: PathLike) -> dict[str, dict[str, int]]:
    """{query id: {doc id: graded relevance}}, every judgment kept (including 0 and negative grades)."""
    qrels: dict[str, dict[str, int]] = {}
    for lineno, qid, docid, rel in _iter_qrels(path):
        judged = qrels.setdefault(qid, {})
        if docid in judged:
            raise DataFormatError(path, lineno, f"duplicate judgment for query {qid!r}, document {docid!r}")
        judged[docid] = rel
    return qrels


def positives_from_qrels(qrels: dict[str, dict[str, int]]) -> dict[str, list[str]]:
    """Documents with relevance > 0, per query, in file order; queries without any are left out."""
    out = {qid: [d for d, rel in judged.items() if rel > 0] for qid, judged in qrels.items()}
    return {qid: docs for qid, docs in out.items() if docs}


# ---------------------------------------------------------------------------------------------
# Datasets


@dataclass
class Dataset:
    """A corpus, the queries of one split (those with judgments, in qrels order) and their qrels."""

    corpus: Corpus
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    queries_path: Path
    positives: dict[str, list[str]] = field(init=False, repr=False)  # rel > 0 only

    def __post_init__(self) -> None:
        self.positives = positives_from_qrels(self.qrels)

    def all_queries(self) -> dict[str, str]:
        """Every query in the queries file, judged in this split or not."""
        return load_queries(self.queries_path)

    def __repr__(self) -> str:
        judgments = sum(len(j) for j in self.qrels.values())
        return f"Dataset(corpus={self.corpus!r}, queries={len(self.queries)}, judgments={judgments})"


def _make_dataset(corpus: Corpus, queries_path: Path, qrels_path: Path) -> Dataset:
    all_queries = load_queries(queries_path)
    qrels = load_qrels(qrels_path)
    # A judged query or document that does not exist is a broken dataset, not a zero score.
    for qid in qrels:
        if qid not in all_queries:
            raise DataFormatError(qrels_path, _first_line(qrels_path, "query", qid),
                                  f"query id {qid!r} is not in {queries_path}")
    docids = [d for judged in qrels.values() for d in judged]
    missing = np.flatnonzero(corpus._lookup(docids) < 0)
    if missing.size:
        docid = docids[missing[0]]
        raise DataFormatError(qrels_path, _first_line(qrels_path, "doc", docid),
                              f"document id {docid!r} is not in {corpus.path}")
    return Dataset(corpus, {qid: all_queries[qid] for qid in qrels}, qrels, queries_path)


def beir_splits(folder: PathLike) -> list[str]:
    """Splits of a BEIR folder: the names of its qrels/*.tsv files."""
    return sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))


def load_beir(folder: PathLike, split: str) -> Dataset:
    """A BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise FileNotFoundError(f"{qrels_path}: no split {split!r} in {folder}; available splits: "
                                f"{', '.join(beir_splits(folder)) or 'none'}")
    return _make_dataset(Corpus(folder / "corpus.jsonl"), folder / "queries.jsonl", qrels_path)


def load_msmarco(collection_tsv: PathLike, queries_tsv: PathLike, qrels_path: PathLike) -> Dataset:
    """MS MARCO style: collection.tsv, queries.tsv (qid<TAB>text), qrels in TREC or BEIR format."""
    return _make_dataset(Corpus(collection_tsv), Path(queries_tsv), Path(qrels_path))


# ---------------------------------------------------------------------------------------------
# Training examples (Tevatron jsonl)


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
            ids.append(_id(path, lineno, item, "docid"))
            if "text" in item or "title" in item:
                texts.append(doc_text(_string(path, lineno, item, "title", False),
                                      _string(path, lineno, item, "text", False)))
        else:
            ids.append(_as_id(path, lineno, item, f'an item of "{present[0]}"'))
    if texts and len(texts) != len(ids):
        raise DataFormatError(path, lineno, f'expected every passage of "{present[0]}" to have a text, or none')
    return ids, (texts if len(texts) == len(ids) else None)


def iter_training_examples(path: PathLike) -> Iterator[TrainingExample]:
    """Tevatron-style jsonl: {"query_id", "query", "positive_passages", "negative_passages"}.

    Passages are objects {"docid", "title"?, "text"?} or bare ids; "positives"/"negatives" are
    accepted as key names too. A missing "query_id" becomes the line number.
    """
    for lineno, line in _lines(path):
        obj = _json_object(path, lineno, line)
        qid = _id(path, lineno, obj, "query_id") if "query_id" in obj else str(lineno)
        query = obj.get("query")
        if query is not None and not isinstance(query, str):
            raise DataFormatError(path, lineno, f'expected "query" to be a string, got {type(query).__name__}')
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
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for ex in examples:
                obj = {"query_id": ex.query_id, "query": ex.query,
                       "positive_passages": _passage_objects(ex.positive_ids, ex.positive_texts),
                       "negative_passages": _passage_objects(ex.negative_ids, ex.negative_texts)}
                if ex.query is None:
                    del obj["query"]
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return count
