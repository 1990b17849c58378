"""Data loading: BEIR folders, MS MARCO TSV, TREC qrels, Tevatron jsonl, on fresh random files."""
import json
import os
import re

import numpy as np
import pytest

from drfast.data import Corpus, DataFormatError, TrainingExample, beir_splits, doc_text, iter_training_examples, load_beir, load_msmarco, load_qrels, load_queries, write_training_examples


# Characters that trip byte/char confusions and naive line splitting: multi-byte UTF-8 (2, 3 and
# 4 bytes), combining marks, U+2028 (a line break for str.splitlines, not for files), quotes,
# backslashes, NBSP (whitespace to str.strip).
ALPHABET = list("abcXYZ 019.,;'\"\\/éüßΩжλ中文字かな한국") + ["😀", "🧬", "e\u0301", "\u2028", "\u00a0", "\u200b"]


def random_text(rng, lo=0, hi=30, extra=()):
    chars = ALPHABET + list(extra)
    return "".join(chars[i] for i in rng.integers(0, len(chars), rng.integers(lo, hi + 1)))


def write_lines(path, lines, newline="\n"):
    path.write_bytes("".join(line + newline for line in lines).encode("utf-8"))
    return path


def write_jsonl(path, objects, **kw):
    return write_lines(path, [json.dumps(o, **kw) for o in objects])


def random_beir(rng, folder, n_docs=None, n_queries=None):
    """A random BEIR folder; returns what a correct loader must give back."""
    n_docs = n_docs or int(rng.integers(5, 60))
    n_queries = n_queries or int(rng.integers(3, 20))
    (folder / "qrels").mkdir(parents=True)
    docs = []
    for i in range(n_docs):
        # ids: mostly numeric, some with unicode; titles sometimes empty, sometimes with tabs
        doc_id = f"{i * 7 + int(rng.integers(0, 7))}" if i % 3 else f"d-ü{i}"
        title = "" if rng.random() < 0.3 else random_text(rng, extra="\t\"")
        docs.append({"_id": doc_id, "title": title, "text": random_text(rng, extra="\t\"")})
    # ensure_ascii both ways: \uXXXX escapes and raw multi-byte characters in the file
    write_lines(folder / "corpus.jsonl", [json.dumps(d, ensure_ascii=bool(rng.random() < 0.5)) for d in docs])
    queries = {f"q{i}": random_text(rng, 1) for i in range(n_queries)}
    write_jsonl(folder / "queries.jsonl", [{"_id": q, "text": t} for q, t in queries.items()], ensure_ascii=False)
    qrels = {}
    for split in ("train", "test"):
        judged = rng.choice(list(queries), size=int(rng.integers(1, n_queries + 1)), replace=False)
        qrels[split] = {str(q): {docs[j]["_id"]: int(rng.integers(0, 3))
                                 for j in rng.choice(n_docs, size=int(rng.integers(1, 5)), replace=False)}
                        for q in judged}
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{r}" for q, j in qrels[split].items() for d, r in j.items()]
        write_lines(folder / "qrels" / f"{split}.tsv", lines)
    return docs, queries, qrels


# -- BEIR round trip -----------------------------------------------------------------------------


def test_beir_round_trip(tmp_path, rng):
    docs, queries, qrels = random_beir(rng, tmp_path / "beir")
    assert beir_splits(tmp_path / "beir") == ["test", "train"]
    for split in ("train", "test"):
        ds = load_beir(tmp_path / "beir", split)
        texts = [doc_text(d["title"], d["text"]) for d in docs]
        assert len(ds.corpus) == len(docs)
        assert list(ds.corpus.doc_ids) == [d["_id"] for d in docs]
        assert list(ds.corpus) == [(d["_id"], t) for d, t in zip(docs, texts)]
        np.testing.assert_array_equal(ds.corpus.lengths, [len(t) for t in texts])
        assert ds.qrels == qrels[split]
        assert ds.queries == {q: queries[q] for q in qrels[split]}
        assert ds.all_queries() == queries
        assert ds.positives == {q: [d for d, r in j.items() if r > 0]
                                for q, j in qrels[split].items() if any(r > 0 for r in j.values())}


def test_graded_relevance_kept_and_zero_is_not_positive(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", [{"_id": d, "title": "", "text": d} for d in "abcd"])
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "x"}, {"_id": "q2", "text": "y"}, {"_id": "q3", "text": "z"}])
    write_lines(folder / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\ta\t2", "q1\tb\t0", "q1\tc\t1", "q2\td\t0"])
    ds = load_beir(folder, "test")
    assert ds.qrels == {"q1": {"a": 2, "b": 0, "c": 1}, "q2": {"d": 0}}
    assert ds.positives == {"q1": ["a", "c"]}  # q2 is judged (it counts in evaluation) but has no positive
    assert set(ds.queries) == {"q1", "q2"} and set(ds.all_queries()) == {"q1", "q2", "q3"}


def test_title_text_convention(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [
        {"_id": "1", "title": "Title", "text": "body"},
        {"_id": "2", "title": "", "text": "  only text "},
        {"_id": "3", "text": "no title key"},
        {"_id": "4", "title": "only title", "text": ""},
        {"_id": "5", "title": None, "text": "null title"},
        {"_id": 6, "title": "Tab\there \"quoted\"", "text": "x"},
    ])
    corpus = Corpus(path)
    assert corpus.texts(range(6)) == ["Title body", "only text", "no title key", "only title", "null title",
                                      "Tab\there \"quoted\" x"]
    assert corpus.doc_ids[5] == "6"  # integer ids become strings


def test_missing_split_lists_available(tmp_path, rng):
    random_beir(rng, tmp_path / "beir")
    with pytest.raises(FileNotFoundError, match=r"'dev'.*available splits: test, train"):
        load_beir(tmp_path / "beir", "dev")


# -- errors name the file and the line ---------------------------------------------------------------


def _beir_with(tmp_path, corpus=None, queries=None, qrels=None):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    write_lines(folder / "corpus.jsonl", corpus or ['{"_id": "a", "title": "", "text": "x"}', '{"_id": "b", "text": "y"}'])
    write_lines(folder / "queries.jsonl", queries or ['{"_id": "q1", "text": "x"}'])
    write_lines(folder / "qrels" / "test.tsv", qrels or ["query-id\tcorpus-id\tscore", "q1\ta\t1"])
    return folder


@pytest.mark.parametrize("files, name, line, what", [
    ({"corpus": ['{"_id": "a", "text": "x"}', '{"_id": "b", "text": "y"}', '{"_id": "c", "text": "z"']},
     "corpus.jsonl", 3, "expected a JSON object"),
    ({"corpus": ['{"_id": "a", "text": "x"}', '{"title": "t", "text": "y"}']}, "corpus.jsonl", 2, 'expected a "_id" field'),
    ({"corpus": ['{"_id": "a"}']}, "corpus.jsonl", 1, 'expected a "text" field'),
    ({"corpus": ['{"_id": "a", "text": "x"}', '["_id", "b"]']}, "corpus.jsonl", 2, "expected a JSON object, got list"),
    ({"queries": ['{"_id": "q1", "text": "x"}', "", '{"text": "y"}']}, "queries.jsonl", 3, 'expected a "_id" field'),
    ({"qrels": ["query-id\tcorpus-id\tscore", "q1\ta\t1", "q1\tb"]}, "test.tsv", 3, "expected 3 columns"),
    ({"qrels": ["query-id\tcorpus-id\tscore", "q1\ta\t1", "q1\tb\t1\t7"]}, "test.tsv", 3, "expected 3 columns"),
    ({"qrels": ["query-id\tcorpus-id\tscore", "q1\ta\t1.5"]}, "test.tsv", 2, "expected an integer relevance score"),
    ({"qrels": ["query-id\tcorpus-id\tscore", "q1\ta\tyes"]}, "test.tsv", 2, "expected an integer relevance score"),
    ({"qrels": ["query-id\tcorpus-id\tscore", "q1\ta\t1", "q1\ta\t2"]}, "test.tsv", 3, "duplicate judgment"),
    ({"qrels": ["query-id\tcorpus-id\tscore", "q1\ta\t1", "q9\tb\t1"]}, "test.tsv", 3, "query id 'q9' is not in"),
    ({"qrels": ["query-id\tcorpus-id\tscore", "q1\ta\t1", "q1\tzz\t0"]}, "test.tsv", 3, "document id 'zz' is not in"),
])
def test_format_errors_name_file_and_line(tmp_path, files, name, line, what):
    folder = _beir_with(tmp_path, **files)
    with pytest.raises(DataFormatError, match=rf"{re.escape(name)}, line {line}: {re.escape(what)}") as info:
        load_beir(folder, "test")
    assert info.value.lineno == line and info.value.path.endswith(name)


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl, line 2: expected UTF-8"):
        Corpus(path)


def test_duplicate_doc_id_names_both_lines(tmp_path, rng):
    ids = [f"d{i}" for i in range(10)]
    first, second = sorted(rng.choice(10, size=2, replace=False))
    ids[second] = ids[first]
    lines = [json.dumps({"_id": d, "text": "t"}) for d in ids]
    lines.insert(1, "")  # a blank line shifts line numbers away from row numbers
    path = write_lines(tmp_path / "corpus.jsonl", lines)
    line = lambda row: row + 1 + (row >= 1)
    with pytest.raises(DataFormatError, match=rf"corpus\.jsonl, line {line(second)}: duplicate document id "
                                              rf"'{ids[first]}' \(first on line {line(first)}\)"):
        Corpus(path)
    tsv = write_lines(tmp_path / "collection.tsv", [f"{d}\tt" for d in ids])
    with pytest.raises(DataFormatError, match=rf"line {second + 1}: duplicate .* \(first on line {first + 1}\)"):
        Corpus(tsv)


# -- corpus random access --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "tsv-title"])
def test_random_access_equals_iteration_unicode(tmp_path, rng, fmt):
    n = int(rng.integers(50, 300))
    # ids follow the id rule (no whitespace, no control characters); the texts hold anything
    ids = [re.sub(r"\s", "x", f"{i}-{random_text(rng, 1, 4, extra='-')}") for i in range(n)]
    if fmt == "jsonl":
        lines = [json.dumps({"_id": d, "title": random_text(rng, extra="\t\"{}"), "text": random_text(rng, 0, 200, extra="\n\r")},
                            ensure_ascii=bool(rng.random() < 0.5)) for d in ids]
    else:
        cols = 3 if fmt == "tsv-title" else 2
        lines = ["\t".join([d] + [random_text(rng, 0, 200) for _ in range(cols - 1)]) for d in ids]
    blank = set(rng.choice(n, size=3, replace=False).tolist())
    lines = [x for i, line in enumerate(lines) for x in ([line, "  "] if i in blank else [line])]
    newline = "\r\n" if rng.random() < 0.5 else "\n"
    path = tmp_path / f"corpus.{fmt.split('-')[0]}"
    path.write_bytes((newline.join(lines) + ("" if rng.random() < 0.5 else newline)).encode("utf-8"))

    corpus = Corpus(path)
    items = list(corpus)
    assert [d for d, _ in items] == ids == list(corpus.doc_ids)
    np.testing.assert_array_equal(corpus.lengths, [len(t) for _, t in items])
    order = rng.permutation(n)
    assert corpus.texts(order) == [items[i][1] for i in order]
    assert corpus.texts([3, 3, -1]) == [items[3][1], items[3][1], items[-1][1]]
    assert corpus.text(n - 1) == items[n - 1][1]
    np.testing.assert_array_equal(corpus.rows([ids[i] for i in order]), order)
    with pytest.raises(KeyError, match="not-an-id"):
        corpus.rows(["not-an-id"])
    with pytest.raises(IndexError):
        corpus.texts([n])


def test_corpus_fingerprint_and_staleness(tmp_path):
    path = write_lines(tmp_path / "collection.tsv", ["1\tone", "2\ttwo"])
    corpus = Corpus(path)
    fp = corpus.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", fp) and Corpus(path).fingerprint() == fp
    stat = path.stat()
    write_lines(path, ["1\tone", "2\ttwo", "3\tthree"])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert Corpus(path).fingerprint() != fp
    with pytest.raises(RuntimeError, match="changed since it was indexed"):
        corpus.text(0)


def test_empty_corpus(tmp_path):
    corpus = Corpus(write_lines(tmp_path / "corpus.jsonl", []))
    assert len(corpus) == 0 and list(corpus) == [] and corpus.texts([]) == []
    assert corpus.rows([]).shape == (0,)


# -- MS MARCO and TREC qrels -----------------------------------------------------------------------


def test_msmarco_tsv_and_trec_qrels(tmp_path, rng):
    n = int(rng.integers(10, 50))
    passages = [random_text(rng, 1, 80) for _ in range(n)]
    write_lines(tmp_path / "collection.tsv", [f"{i}\t{p}" for i, p in enumerate(passages)])
    queries = {str(1000 + i): random_text(rng, 1) for i in range(8)}
    write_lines(tmp_path / "queries.tsv", [f"{q}\t{t}" for q, t in queries.items()])
    qrels = {q: {str(d): int(rng.integers(1, 3)) for d in rng.choice(n, size=2, replace=False)} for q in list(queries)[:5]}
    write_lines(tmp_path / "qrels.txt", [f"{q} 0 {d} {r}" for q, j in qrels.items() for d, r in j.items()])

    ds = load_msmarco(tmp_path / "collection.tsv", tmp_path / "queries.tsv", tmp_path / "qrels.txt")
    assert list(ds.corpus) == [(str(i), p.strip()) for i, p in enumerate(passages)]
    assert ds.qrels == qrels and ds.queries == {q: queries[q] for q in qrels}
    assert ds.all_queries() == queries == load_queries(tmp_path / "queries.tsv")


@pytest.mark.parametrize("layout", ["beir-header", "beir-no-header", "trec-spaces", "trec-tabs"])
def test_load_qrels_detects_format(tmp_path, rng, layout):
    qrels = {f"q{i}": {f"d{j}": int(rng.integers(0, 4)) for j in rng.choice(50, size=3, replace=False)} for i in range(6)}
    rows = [(q, d, r) for q, j in qrels.items() for d, r in j.items()]
    lines = {"beir-header": ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{r}" for q, d, r in rows],
             "beir-no-header": [f"{q}\t{d}\t{r}" for q, d, r in rows],
             "trec-spaces": [f"{q}  0 {d}   {r}" for q, d, r in rows],
             "trec-tabs": [f"{q}\tQ0\t{d}\t{r}" for q, d, r in rows]}[layout]
    assert load_qrels(write_lines(tmp_path / "qrels", lines)) == qrels


def test_trec_qrels_wrong_columns(tmp_path):
    path = write_lines(tmp_path / "qrels.dev.txt", ["1 0 a 1", "1 0 b"])
    with pytest.raises(DataFormatError, match=r"qrels\.dev\.txt, line 2: expected 4 columns"):
        load_qrels(path)
    path = write_lines(tmp_path / "qrels.tsv", ["1 a"])
    with pytest.raises(DataFormatError, match=r"qrels\.tsv, line 1: expected BEIR qrels"):
        load_qrels(path)


def test_msmarco_wrong_columns(tmp_path):
    path = write_lines(tmp_path / "collection.tsv", ["1\tone", "2\ttitle\ttext", "3\ta\tb\tc"])
    with pytest.raises(DataFormatError, match=r"collection\.tsv, line 3: expected 2 or 3 tab-separated columns"):
        Corpus(path)
    path = write_lines(tmp_path / "queries.tsv", ["1\tone", "2 two"])
    with pytest.raises(DataFormatError, match=r"queries\.tsv, line 2: expected 2 tab-separated columns"):
        load_queries(path)


# -- Tevatron training files -----------------------------------------------------------------------


def test_tevatron_objects_and_ids(tmp_path, rng):
    title, text = random_text(rng, extra="\t\""), random_text(rng, 1)
    lines = [
        {"query_id": "q1", "query": "what is x",
         "positive_passages": [{"docid": "d1", "title": title, "text": text}],
         "negative_passages": [{"docid": 7, "title": "", "text": " neg "}, {"docid": "d8", "text": "n8"}]},
        {"query_id": 2, "query": "ids only", "positive_passages": ["d1", 5], "negative_passages": [9]},
        {"query": "short keys, no query id", "positives": ["a"], "negatives": ["b", "c"]},
        {"query_id": "q4", "query": "objects without text", "positive_passages": [{"docid": "p"}]},
    ]
    path = write_jsonl(tmp_path / "train.jsonl", lines, ensure_ascii=False)
    got = list(iter_training_examples(path))
    assert got[0] == TrainingExample("q1", "what is x", ["d1"], ["7", "d8"], [doc_text(title, text)], ["neg", "n8"])
    assert got[1] == TrainingExample("2", "ids only", ["d1", "5"], ["9"], None, None)
    assert got[2] == TrainingExample("3", "short keys, no query id", ["a"], ["b", "c"], None, None)
    assert (got[3].positive_ids, got[3].positive_texts, got[3].negative_ids) == (["p"], None, [])


def test_tevatron_write_round_trip_atomic(tmp_path, rng):
    examples = []
    for i in range(int(rng.integers(1, 20))):
        pos = [f"p{i}-{j}" for j in range(int(rng.integers(1, 3)))]
        neg = [f"n{i}-{j}" for j in range(int(rng.integers(0, 5)))]
        with_text = bool(rng.random() < 0.5)
        examples.append(TrainingExample(f"q{i}", random_text(rng, 1), pos, neg,
                                        [random_text(rng, 1).strip() or "x" for _ in pos] if with_text else None,
                                        [random_text(rng).strip() for _ in neg] if with_text else None))
    path = tmp_path / "train.jsonl"
    path.write_text("old contents\n")
    assert write_training_examples(path, examples) == len(examples)
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]  # no temp file left behind
    got = list(iter_training_examples(path))
    for want, have in zip(examples, got, strict=True):
        assert have.positive_ids == want.positive_ids and have.negative_ids == want.negative_ids
        assert (have.query_id, have.query, have.positive_texts) == (want.query_id, want.query, want.positive_texts)
        # an empty list has a text for each of its (zero) ids, so it reads back as []
        assert have.negative_texts == (want.negative_texts if want.negative_ids else [])


def test_tevatron_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("old contents\n")

    def examples():
        yield TrainingExample("q1", "x", ["a"], [])
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_training_examples(path, examples())
    assert path.read_text() == "old contents\n" and [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]


@pytest.mark.parametrize("line, what", [
    ('{"query_id": "q", "query": "x"}', 'expected a "positive_passages" or "positives" field'),
    ('{"query_id": "q", "positives": "d1"}', 'expected "positives" to be a list'),
    ('{"query_id": "q", "positives": [{"text": "no id"}]}', 'expected a "docid" field'),
    ('{"query_id": "q", "positives": [1.5]}', "non-empty string or an integer"),
    ('{"query_id": "q", "positive_passages": [{"docid": 1, "text": "t"}, {"docid": 2}]}', "to have a text, or none"),
    ('{"query_id": "q", "positives": ["a"], "positive_passages": ["a"]}', "not both"),
    ('{"query_id": "q", "query": 3, "positives": ["a"]}', 'expected "query" to be a string'),
])
def test_tevatron_errors(tmp_path, line, what):
    path = write_lines(tmp_path / "train.jsonl", ['{"query_id": "ok", "positives": ["a"]}', line])
    with pytest.raises(DataFormatError, match=rf"train\.jsonl, line 2: .*{re.escape(what)}"):
        list(iter_training_examples(path))


# -- the real collections ($DRFAST_DATA) ---------------------------------------------------------


@pytest.mark.parametrize("name, split, docs, queries, judgments", [
    ("scifact", "test", 5183, 300, 339),
    ("scifact", "train", 5183, 809, 919),
    ("vaswani", "test", 11429, 93, 2083),
])
def test_real_collections(real_data, name, split, docs, queries, judgments):
    folder = real_data(name)
    ds = load_beir(folder, split)
    assert len(ds.corpus) == docs
    assert len(ds.queries) == len(ds.qrels) == queries
    assert sum(len(j) for j in ds.qrels.values()) == judgments
    assert len(ds.positives) == queries  # binary judgments: every judged query has a positive
    assert all(ds.queries[q] for q in ds.queries)
    rows = ds.corpus.rows([d for pos in ds.positives.values() for d in pos])
    assert rows.min() >= 0 and rows.max() < docs
    sample = np.random.default_rng(0).choice(docs, size=50, replace=False)
    items = list(ds.corpus)
    assert ds.corpus.texts(sample) == [items[i][1] for i in sample]


# -- hostile inputs (reliability probe) -------------------------------------------------------------


@pytest.mark.parametrize("grade", ["2147483648", "-2147483649", "1001", "99999999999999999999"])
def test_huge_relevance_grades_are_refused_at_load_time(tmp_path, grade):
    path = write_lines(tmp_path / "q.tsv", ["query-id\tcorpus-id\tscore", "q1\ta\t1", f"q1\tb\t{grade}"])
    with pytest.raises(DataFormatError, match=rf"q\.tsv, line 3: relevance score {grade} is outside"):
        load_qrels(path)


def test_fractional_grades_need_round_grades(tmp_path):
    path = write_lines(tmp_path / "q.txt", ["q1 0 a 1.5", "q1 0 b 2.5", "q1 0 c 0.4"])
    with pytest.raises(DataFormatError, match=r"line 1: expected an integer relevance score, got '1.5' \(round_grades"):
        load_qrels(path)
    assert load_qrels(path, round_grades=True) == {"q1": {"a": 2, "b": 2, "c": 0}}  # half to even
    with pytest.raises(DataFormatError, match="got 'nan'"):
        load_qrels(write_lines(tmp_path / "n.txt", ["q1 0 a nan"]), round_grades=True)


def test_a_utf8_bom_is_ignored_everywhere(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": "d1", "title": "T", "text": "first"}, {"_id": "d2", "text": "second"}]
    (folder / "corpus.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(d) + "\n" for d in docs).encode())
    (folder / "queries.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"_id": "q1", "text": "query"}\n')
    (folder / "qrels" / "test.tsv").write_bytes(b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\nq1\td1\t1\n")
    ds = load_beir(folder, "test")
    assert list(ds.corpus.doc_ids) == ["d1", "d2"] and ds.queries == {"q1": "query"}
    assert ds.corpus.texts([0, 1]) == ["T first", "second"] and ds.corpus.text(0) == "T first"
    assert ds.positives == {"q1": ["d1"]}


@pytest.mark.parametrize("bad_id", ["", "a\rb"])
def test_unstorable_doc_ids_are_reported_with_their_line(tmp_path, bad_id):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "ok", "text": "x"}, {"_id": bad_id, "text": "y"}])
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl, line 2"):
        Corpus(path)


# -- issue 21: ids checked once, when read; headers; empty splits; lone surrogates; split folders ------


BAD_IDS = [("a\u0000", "a NUL character"), ("a\u0000b", "a NUL character"), ("a b", "inner whitespace"),
           (" a", "leading whitespace"), ("a\t", "trailing whitespace"), ("a\u001bb", "a control character"),
           ("a\u2028b", "inner whitespace"), ("a\ud800", "a lone surrogate")]


@pytest.mark.parametrize("bad_id, problem", BAD_IDS)
def test_bad_corpus_ids_are_refused_when_read_naming_file_and_line(tmp_path, bad_id, problem):
    # json.dumps escapes NUL and lone surrogates as \u0000 / \ud800: valid JSON, a bad id
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "ok", "text": "x"}, {"_id": bad_id, "text": "y"}])
    with pytest.raises(DataFormatError, match=rf"corpus\.jsonl, line 2: \"_id\" .* contains {problem}"):
        Corpus(path)


@pytest.mark.parametrize("bad_id, problem", [(i, p) for i, p in BAD_IDS if "\ud800" not in i and "\t" not in i])
def test_bad_ids_in_tsv_files_are_refused_naming_file_and_line(tmp_path, bad_id, problem):
    collection = write_lines(tmp_path / "collection.tsv", ["1\tone", f"{bad_id}\ttwo"])
    with pytest.raises(DataFormatError, match=rf"collection\.tsv, line 2: the docid .* contains {problem}"):
        Corpus(collection)
    queries = write_lines(tmp_path / "queries.tsv", ["1\tone", f"{bad_id}\ttwo"])
    with pytest.raises(DataFormatError, match=rf"queries\.tsv, line 2: the qid .* contains {problem}"):
        load_queries(queries)


@pytest.mark.parametrize("bad_id, problem", BAD_IDS)
def test_bad_ids_in_queries_qrels_and_training_files_are_refused(tmp_path, bad_id, problem):
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "x"}, {"_id": bad_id, "text": "y"}])
    with pytest.raises(DataFormatError, match=rf"queries\.jsonl, line 2: \"_id\" .* contains {problem}"):
        load_queries(queries)
    training = write_jsonl(tmp_path / "train.jsonl", [{"query_id": "q", "positives": ["a"]},
                                                      {"query_id": "q2", "positives": ["a", bad_id]}])
    with pytest.raises(DataFormatError, match=rf"train\.jsonl, line 2: .* contains {problem}"):
        list(iter_training_examples(training))
    if bad_id.strip() == bad_id and "\ud800" not in bad_id and "\t" not in bad_id:  # BEIR qrels strip their cells
        qrels = write_lines(tmp_path / "qrels.tsv", ["query-id\tcorpus-id\tscore", "q1\ta\t1", f"q1\t{bad_id}\t1"])
        with pytest.raises(DataFormatError, match=rf"qrels\.tsv, line 3: the document id .* contains {problem}"):
            load_qrels(qrels)


def test_a_trailing_nul_is_not_silently_dropped_by_a_beir_load(tmp_path):
    folder = _beir_with(tmp_path, corpus=['{"_id": "a", "text": "x"}', '{"_id": "b\\u0000", "text": "y"}'])
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl, line 2: \"_id\" 'b\\x00' contains a NUL character"):
        load_beir(folder, "test")


@pytest.mark.parametrize("header", ["id\ttext", "docid\tpassage", "pid\ttitle\ttext", "ID\tText", "_id\ttitle\ttext"])
def test_an_msmarco_collection_header_is_skipped(tmp_path, header):
    cols = header.count("\t") + 1
    rows = [f"{i}\t" + ("title\t" if cols == 3 else "") + f"passage {i}" for i in range(1, 4)]
    path = write_lines(tmp_path / "collection.tsv", ["", header] + rows)
    corpus = Corpus(path)
    assert list(corpus.doc_ids) == ["1", "2", "3"] and "id" not in corpus.doc_ids
    want = [(str(i), ("title " if cols == 3 else "") + f"passage {i}") for i in range(1, 4)]
    assert list(corpus) == want and corpus.texts([2, 0]) == [want[2][1], want[0][1]]


def test_a_header_only_counts_on_the_first_line(tmp_path):
    # a document whose id and text look like column names, after the first line, is a document
    corpus = Corpus(write_lines(tmp_path / "collection.tsv", ["7\tseven", "id\ttext"]))
    assert list(corpus.doc_ids) == ["7", "id"]


def test_a_queries_tsv_header_is_skipped(tmp_path):
    path = write_lines(tmp_path / "queries.tsv", ["qid\tquery", "1\tone", "2\ttwo"])
    assert load_queries(path) == {"1": "one", "2": "two"}
    collection = write_lines(tmp_path / "collection.tsv", ["id\ttext", "d1\tone", "d2\ttwo"])
    qrels = write_lines(tmp_path / "qrels.txt", ["1 0 d2 1"])
    ds = load_msmarco(collection, path, qrels)
    assert list(ds.corpus.doc_ids) == ["d1", "d2"] and ds.queries == {"1": "one"}


@pytest.mark.parametrize("lines", [[], ["", "  "], ["query-id\tcorpus-id\tscore"], ["\ufeffquery-id\tcorpus-id\tscore", ""]])
def test_empty_or_header_only_qrels_are_refused_naming_the_file(tmp_path, lines):
    folder = _beir_with(tmp_path)
    write_lines(folder / "qrels" / "test.tsv", lines)
    with pytest.raises(DataFormatError, match=r"qrels/test\.tsv: holds no judgments") as info:
        load_beir(folder, "test")
    assert info.value.lineno is None


@pytest.mark.parametrize("where, file", [("title", "corpus.jsonl"), ("text", "corpus.jsonl"), ("query", "queries.jsonl")])
def test_a_lone_surrogate_in_a_text_is_refused_naming_file_and_line(tmp_path, where, file):
    docs = ['{"_id": "a", "text": "x"}', '{"_id": "b", "title": "t", "text": "y"}']
    queries = ['{"_id": "q1", "text": "fine \\ud83d\\ude00"}', '{"_id": "q2", "text": "z"}']  # a pair is fine
    if where == "query":
        queries[1] = '{"_id": "q2", "text": "bad \\udc00 query"}'
    else:
        docs[1] = docs[1].replace('"t"' if where == "title" else '"y"', '"bad \\ud800"')
    folder = _beir_with(tmp_path, corpus=docs, queries=queries)
    with pytest.raises(DataFormatError, match=rf"{file}, line 2: .* holds a lone surrogate \(U\+D[8C]00"):
        load_beir(folder, "test")


def test_a_lone_surrogate_in_a_training_file_is_refused(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", ['{"query_id": "q", "query": "ok", "positives": ["a"]}',
                                                  '{"query_id": "q2", "query": "\\ud800", "positives": ["a"]}'])
    with pytest.raises(DataFormatError, match=r"train\.jsonl, line 2: \"query\" holds a lone surrogate"):
        list(iter_training_examples(path))
    path = write_lines(tmp_path / "t2.jsonl", ['{"positive_passages": [{"docid": "a", "text": "\\udfff"}]}'])
    with pytest.raises(DataFormatError, match=r"t2\.jsonl, line 1: \"text\" holds a lone surrogate"):
        list(iter_training_examples(path))


def test_a_qrels_split_that_is_a_folder_is_called_a_folder(tmp_path, rng):
    random_beir(rng, tmp_path / "beir")
    (tmp_path / "beir" / "qrels" / "test.tsv").unlink()
    (tmp_path / "beir" / "qrels" / "test.tsv").mkdir()
    assert beir_splits(tmp_path / "beir") == ["train"]  # a folder is no split
    with pytest.raises(FileNotFoundError, match=r"test\.tsv: is a folder, not a qrels file.*available splits: train\)"):
        load_beir(tmp_path / "beir", "test")
    with pytest.raises(FileNotFoundError, match=r"no split 'dev' .* available splits: train$"):
        load_beir(tmp_path / "beir", "dev")
