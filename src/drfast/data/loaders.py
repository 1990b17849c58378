"""Queries, TREC/BEIR qrels and whole collections: BEIR folders and MS MARCO TSV files."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from drfast.common.doc_ids import DocIdMap
from drfast.common.errors import UsageTypeError
from drfast.data.corpus import Corpus
from drfast.data.parsing import (DataFormatError, PathLike, as_id, id_field, is_tsv_header, iter_lines, json_object,
                                 sniff_format, string_field)

# ---------------------------------------------------------------------------------------------
# Corpus


# ---------------------------------------------------------------------------------------------
# Queries and relevance judgments


def load_queries(path: PathLike) -> dict[str, str]:
    """All queries of a BEIR `queries.jsonl` ({"_id", "text"}) or an MS MARCO `queries.tsv` (qid<TAB>text)."""
    path = Path(path)
    jsonl = sniff_format(path) == "jsonl"
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    header_allowed = not jsonl
    for lineno, line in iter_lines(path):
        if jsonl:
            obj = json_object(path, lineno, line)
            qid, text = id_field(path, lineno, obj, "_id"), string_field(path, lineno, obj, "text", True)
        else:
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0]:
                raise DataFormatError(path, lineno, f"expected 2 tab-separated columns (qid, text), got {len(fields)}")
            if header_allowed and is_tsv_header(fields):
                header_allowed = False
                continue  # a header on the first line ("qid<TAB>query")
            header_allowed = False
            qid, text = as_id(path, lineno, fields[0], "the qid"), fields[1]
        if qid in queries:
            raise DataFormatError(path, lineno, f"duplicate query id {qid!r} (first on line {first_line[qid]})")
        queries[qid], first_line[qid] = text, lineno
    return queries


_BEIR_HEADER = ["query-id", "corpus-id", "score"]
_QRELS_COLUMNS = {3: "query-id, corpus-id, score", 4: "qid, iteration, docid, relevance"}
# Relevance grades are small integers (TREC uses 0-4, some collections -2..3). trec_eval stores them in
# C ints and allocates per grade level, so a huge grade crashes or exhausts memory: refuse it here.
MAX_GRADE = 1000


def _iter_qrels(path: PathLike, round_grades: bool = False) -> Iterator[tuple[int, str, str, int]]:
    """(line, query id, doc id, relevance) from BEIR tsv (3 columns, optional header) or TREC
    (4 whitespace-separated columns); the first data line decides which. Grades are integers in
    [-MAX_GRADE, MAX_GRADE]; a fractional grade is an error unless `round_grades` (then rounded half
    to even)."""
    ncols = None
    for lineno, line in iter_lines(path):
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
        qid, docid = as_id(path, lineno, qid, "the query id"), as_id(path, lineno, docid, "the document id")
        yield lineno, qid, docid, _grade(path, lineno, score, round_grades)


def _grade(path: PathLike, lineno: int, score: str, round_grades: bool) -> int:
    try:
        rel = int(score)
    except ValueError:
        try:
            value = float(score)
        except ValueError:
            value = math.nan
        if not (round_grades and math.isfinite(value)):
            hint = " (round_grades=True rounds fractional grades)" if math.isfinite(value) else ""
            raise DataFormatError(path, lineno, f"expected an integer relevance score, got {score!r}{hint}") from None
        rel = round(value)
    if abs(rel) > MAX_GRADE:
        raise DataFormatError(path, lineno, f"relevance score {score} is outside [-{MAX_GRADE}, {MAX_GRADE}]")
    return rel


def load_qrels(path: PathLike, round_grades: bool = False) -> dict[str, dict[str, int]]:
    """{query id: {doc id: graded relevance}}, every judgment kept (including 0 and negative grades).
    Grades must be integers in [-MAX_GRADE, MAX_GRADE]; `round_grades` rounds fractional ones. A file
    without any judgment (empty, blank or only a header) is refused: nothing could be evaluated."""
    qrels: dict[str, dict[str, int]] = {}
    for lineno, qid, docid, rel in _iter_qrels(path, round_grades):
        judged = qrels.setdefault(qid, {})
        if docid in judged:
            raise DataFormatError(path, lineno, f"duplicate judgment for query {qid!r}, document {docid!r}")
        judged[docid] = rel
    if not qrels:
        raise DataFormatError(path, None, "holds no judgments (the file is empty or only a header); expected "
                                          "query-id<TAB>corpus-id<TAB>score lines")
    return qrels


def positives_from_qrels(qrels: dict[str, dict[str, int]]) -> dict[str, list[str]]:
    """Documents with relevance > 0, per query, in file order; queries without any are left out."""
    out = {qid: [d for d, rel in judged.items() if rel > 0] for qid, judged in qrels.items()}
    return {qid: docs for qid, docs in out.items() if docs}


# ---------------------------------------------------------------------------------------------
# Datasets


@dataclass
class Dataset:
    """A corpus, the queries of one split and their qrels, as `load_beir` and `load_msmarco` return them.

    Attributes
    ----------
    corpus : Corpus or None
        The documents, read on demand; None when the split was loaded against a saved index's ids
        (load_beir's `doc_ids`).
    queries : dict
        ``{qid: text}``: the queries with judgments in this split, in qrels order.
    qrels : dict
        ``{qid: {doc_id: grade}}``; grade 0 is judged non-relevant.
    positives : dict
        ``{qid: [doc_id, ...]}``: the documents with grade > 0, in file order; queries without any are
        left out.
    queries_path : pathlib.Path
        The queries file.
    """

    corpus: Optional[Corpus]
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


def _make_dataset(corpus: Optional[Corpus], queries_path: Path, qrels_path: Path, round_grades: bool,
                  doc_ids: Optional[DocIdMap] = None, doc_ids_source: str = "") -> Dataset:
    all_queries = load_queries(queries_path)
    qrels = load_qrels(qrels_path, round_grades)
    # A judged query or document that does not exist is a broken dataset, not a zero score.
    for qid in qrels:
        if qid not in all_queries:
            raise DataFormatError(qrels_path, _first_line(qrels_path, "query", qid),
                                  f"query id {qid!r} is not in {queries_path}")
    docids = [d for judged in qrels.values() for d in judged]
    known = corpus.doc_ids if doc_ids is None else doc_ids
    missing = np.flatnonzero(known.lookup(docids) < 0)
    if missing.size:
        docid = docids[missing[0]]
        raise DataFormatError(qrels_path, _first_line(qrels_path, "doc", docid),
                              f"document id {docid!r} is not in {corpus.path if doc_ids is None else doc_ids_source}")
    return Dataset(corpus, {qid: all_queries[qid] for qid in qrels}, qrels, queries_path)


def beir_splits(folder: PathLike) -> list[str]:
    """Splits of a BEIR folder: the names of its qrels/*.tsv files (files only: a folder is no split)."""
    return sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv") if p.is_file())


def beir_split_path(folder: PathLike, split: str) -> Path:
    """qrels/<split>.tsv of a BEIR folder; FileNotFoundError saying what is there instead (nothing, a
    folder, something else) and which splits are available."""
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if qrels_path.is_file():
        return qrels_path
    available = ", ".join(beir_splits(folder)) or "none"
    if qrels_path.is_dir():
        raise FileNotFoundError(f"{qrels_path}: is a folder, not a qrels file; split {split!r} needs qrels/{split}.tsv "
                                f"to be a file (available splits: {available})")
    if qrels_path.exists():
        raise FileNotFoundError(f"{qrels_path}: is not a regular file; split {split!r} needs qrels/{split}.tsv to be "
                                f"a file (available splits: {available})")
    raise FileNotFoundError(f"{qrels_path}: no split {split!r} in {folder}; available splits: {available}")


def load_beir(folder: PathLike, split: str, *, round_grades: bool = False, doc_ids: Optional[DocIdMap] = None,
              doc_ids_source: str = "the index") -> Dataset:
    r"""A BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.

    A document's text is ``title + " " + text``, stripped. Judgments with grade 0 stay in the qrels but
    are not positives.

    Parameters
    ----------
    folder : str or os.PathLike
        The BEIR folder.
    split : str
        The qrels split (``qrels/<split>.tsv``): "train", "dev", "test", ...
    round_grades : bool
        Round non-integer grades instead of refusing them.
    doc_ids : DocIdMap, optional
        E.g. a saved index's ``index.doc_ids``: corpus.jsonl is not opened (it may be absent), the
        qrels' documents are checked against these ids instead, and the Dataset's corpus is None.
    doc_ids_source : str
        What `doc_ids` came from, named when a qrels document is not among them.

    Returns
    -------
    Dataset
        ``.corpus`` (read on demand), ``.queries`` ``{qid: text}`` (those with judgments, in qrels
        order), ``.qrels`` ``{qid: {doc_id: grade}}`` and ``.positives`` ``{qid: [doc_id, ...]}``.

    Raises
    ------
    DataFormatError
        A malformed line, naming the file, the line number and what was expected: among others an
        id that is empty or holds whitespace or control characters, a text with a lone surrogate,
        or a qrels file without any judgment.
    FileNotFoundError
        No ``qrels/<split>.tsv`` file (saying so when it is a folder), with the available splits.

    Examples
    --------
    >>> import json, os, tempfile, drfast
    >>> folder = tempfile.mkdtemp(); os.makedirs(os.path.join(folder, "qrels"))
    >>> def write(name, lines):
    ...     with open(os.path.join(folder, name), "w") as f:
    ...         f.write("\n".join(lines) + "\n")
    >>> write("corpus.jsonl", [json.dumps({"_id": f"d{i}", "title": "", "text": text})
    ...                        for i, text in enumerate(["cats purr", "dogs bark", "fish swim"])])
    >>> write("queries.jsonl", [json.dumps({"_id": "q1", "text": "which animal purrs?"})])
    >>> write("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1\td0\t1", "q1\td2\t0"])
    >>> data = drfast.load_beir(folder, "test")
    >>> len(data.corpus), data.queries, data.qrels, data.positives
    (3, {'q1': 'which animal purrs?'}, {'q1': {'d0': 1, 'd2': 0}}, {'q1': ['d0']})
    """
    folder = Path(folder)
    qrels_path = beir_split_path(folder, split)
    if doc_ids is not None:
        if not isinstance(doc_ids, DocIdMap):
            raise UsageTypeError("doc_ids", f"expected a DocIdMap (an index's doc_ids), got {type(doc_ids).__name__}")
        return _make_dataset(None, folder / "queries.jsonl", qrels_path, round_grades, doc_ids, doc_ids_source)
    return _make_dataset(Corpus(folder / "corpus.jsonl"), folder / "queries.jsonl", qrels_path, round_grades)


def load_msmarco(collection_tsv: PathLike, queries_tsv: PathLike, qrels_path: PathLike, *,
                 round_grades: bool = False) -> Dataset:
    """MS MARCO style: collection.tsv, queries.tsv (qid<TAB>text), qrels in TREC or BEIR format; a
    header line in either TSV file ("id<TAB>text", "qid<TAB>query", ...) is skipped."""
    return _make_dataset(Corpus(collection_tsv), Path(queries_tsv), Path(qrels_path), round_grades)


def _first_line(path: PathLike, kind: str, ident: str) -> int:
    """Line of the first occurrence of `ident`; only called to word an error message."""
    for lineno, qid, docid, _ in _iter_qrels(path):
        if (qid if kind == "query" else docid) == ident:
            return lineno
    return 0
