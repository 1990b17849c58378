"""drfast.common.doc_ids.DocIdMap: a compact, validated id <-> row map."""
import re
import sys
import unicodedata

import numpy as np
import pytest

from drfast.common.doc_ids import DocIdMap, id_problem, read_id_file
from drfast.common.text_lines import DataFormatError
from drfast.index.embedding_files import read_doc_ids


def test_round_trip_lookup_and_sequence_behaviour(rng, tmp_path):
    ids = [f"doc-{i}" for i in rng.permutation(1000)] + ["é", "中文", "a b"]
    m = DocIdMap(ids)
    assert len(m) == len(ids) and list(m) == ids and m[3] == ids[3] and m[-1] == "a b" and m[:2] == ids[:2]
    assert m == ids and m == DocIdMap(np.array(ids)) and m != DocIdMap(ids[::-1])
    pick = rng.choice(len(ids), 50)
    assert m.rows([ids[i] for i in pick]).tolist() == pick.tolist()
    assert m.lookup(["nope", ids[5]]).tolist() == [-1, 5]
    assert "é" in m and "nope" not in m and 5 not in m
    assert m.take([2, -1, 0]) == [ids[2], ids[0]]
    m.write(tmp_path / "ids.txt")
    assert DocIdMap.read(tmp_path / "ids.txt", expected=len(ids)) == m


def test_default_range_ids_and_their_size():
    m = DocIdMap.range(12)
    assert list(m) == [str(i) for i in range(12)] and m.rows(["11", "0"]).tolist() == [11, 0]
    big = DocIdMap.range(1_000_000)  # 7-digit ids: 7 bytes + a 4-byte row each
    assert big.nbytes <= 11 * 1_000_000


@pytest.mark.parametrize("ids, message", [
    (["a", "b", "a"], r"doc_ids: duplicate id 'a' \(rows 0 and 2\)"),
    (["a", "b\nc"], r"doc_ids: the id of row 1 .* contains '\\n'"),
    (["a\r", "b"], r"doc_ids: the id of row 0 .* contains '\\r'"),
    (["a", "b\x00"], r"doc_ids: id 1 .* contains a NUL"),
    (["a", ""], r"doc_ids: row 1 has an empty id"),
])
def test_bad_ids_are_refused(ids, message):
    with pytest.raises(ValueError, match=message):
        DocIdMap(ids)


def test_type_errors_and_unknown_ids():
    with pytest.raises(TypeError, match="doc_ids: expected a sequence"):
        DocIdMap("abc")
    with pytest.raises(TypeError, match="doc_ids: id 1 is a float"):
        DocIdMap(["a", 1.5])
    with pytest.raises(ValueError, match=r"positives: document 'x' of query 'q' is not in the index"):
        DocIdMap(["a"]).rows(["a", "x"], name="positives", owner="query 'q'")


def test_read_names_the_file(tmp_path):
    (tmp_path / "ids.txt").write_bytes(b"a\nb")
    with pytest.raises(ValueError, match="ids.txt: truncated"):
        DocIdMap.read(tmp_path / "ids.txt")
    (tmp_path / "ids.txt").write_bytes(b"a\nb\n")
    with pytest.raises(ValueError, match="ids.txt: holds 2 document ids, expected 3"):
        DocIdMap.read(tmp_path / "ids.txt", expected=3)
    with pytest.raises(ValueError, match="cannot read"):
        DocIdMap.read(tmp_path / "missing.txt")


# ---- the id rule, checked once when ids are read from a file (issue 21, items 3, 5, 10) -------------
BAD_ID_CHARS = [chr(c) for c in range(sys.maxunicode + 1)
                if chr(c).isspace() or unicodedata.category(chr(c)) == "Cc"]


@pytest.mark.parametrize("doc_id, problem", [
    ("", "is empty"),
    (" a", "leading whitespace (U+0020 at character 1)"),
    ("a\t", "trailing whitespace (U+0009 at character 2)"),
    ("a b", "inner whitespace (U+0020 at character 2)"),
    ("a\u00a0b", "inner whitespace (U+00A0"),
    ("a\x00", "a NUL character (U+0000 at character 2)"),
    ("a\x00b", "a NUL character"),
    ("a\x1bb", "a control character (U+001B"),
    ("a\x85", "whitespace (U+0085"),
    ("a\ud800", "a lone surrogate (U+D800"),
])
def test_id_problem_says_what_and_where(doc_id, problem):
    assert problem in id_problem(doc_id)


def test_good_ids_have_no_problem():
    for doc_id in ["d1", "é3", "中文", "a-b_c.d/e:f", "😀", "e\u0301", "zero\u200bwidth", "MED-10"]:
        assert id_problem(doc_id) is None


def test_the_file_check_and_the_string_check_agree_on_every_code_point(tmp_path):
    """read_id_file checks a whole file in one pass (bytes for ASCII, else text); id_problem checks one str.
    Both must refuse exactly the whitespace and control characters, whatever the code point."""
    good = [chr(c) for c in range(sys.maxunicode + 1)
            if not (0xD800 <= c <= 0xDFFF) and chr(c) not in BAD_ID_CHARS]
    path = tmp_path / "good.txt"
    path.write_bytes("".join(f"x{c}\n" for c in good).encode("utf-8"))
    ids = read_id_file(path)
    assert len(ids) == len(good) and ids[-1].decode("utf-8") == "x" + good[-1]
    assert all(id_problem("x" + c) is None for c in good)
    for c in BAD_ID_CHARS:
        assert id_problem(f"a{c}b") is not None
        if c in "\n\r":
            continue  # line ends: a new line, or (CRLF) part of the line end
        path.write_bytes(f"ok\na{c}b\nok2\n".encode("utf-8"))
        with pytest.raises(DataFormatError, match=r"good\.txt, line 2: id .* contains ") as info:
            read_id_file(path)
        assert info.value.lineno == 2, repr(c)


def test_what_a_doc_id_map_writes_it_reads_back_even_ids_the_file_rule_refuses(tmp_path):
    m = DocIdMap(["a b", "c\u00a0d", "e"])  # held in memory (an index built from a list), then saved
    m.write(tmp_path / "doc_ids.txt")
    assert DocIdMap.read(tmp_path / "doc_ids.txt", expected=3) == m
    with pytest.raises(ValueError, match=r"doc_ids\.txt, line 1: id 'a b' contains inner whitespace"):
        read_doc_ids(tmp_path / "doc_ids.txt")  # a user's --doc-ids file: the id rule applies


@pytest.mark.parametrize("reader", ["read_doc_ids", "DocIdMap.read"])
def test_a_bom_does_not_become_part_of_the_first_id(tmp_path, reader):
    path = tmp_path / "ids.txt"
    path.write_bytes(b"\xef\xbb\xbfd1\nd2\n")
    read = read_doc_ids if reader == "read_doc_ids" else DocIdMap.read
    ids = read(path, expected=2)
    assert list(ids) == ["d1", "d2"] and ids.rows(["d1"]).tolist() == [0]


@pytest.mark.parametrize("text, line, message", [
    ("d1\nd 2\n", 2, "inner whitespace"),
    ("d1\nd2 \n", 2, "trailing whitespace"),
    ("d1\r\n\td2\r\n", 2, "leading whitespace"),
    ("d1\nd2\nd\x1b3\n", 3, "control character"),
    ("d1\n\nd3\n", 2, "empty"),
    ("d1\nd2\u3000\n", 2, "whitespace (U+3000"),
])
def test_doc_id_files_refuse_bad_ids_naming_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "ids.txt"
    path.write_bytes(text.encode("utf-8"))
    with pytest.raises(ValueError, match=rf"^doc_ids: .*ids\.txt, line {line}: .*{re.escape(message)}"):
        read_doc_ids(path, expected=3)


def test_doc_ids_reader_names_the_line_of_bad_utf8(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_bytes(b"d1\nd2\nd\xff3\n")
    with pytest.raises(ValueError, match=r"^doc_ids: .*ids\.txt, line 3: expected UTF-8"):
        read_doc_ids(path)
