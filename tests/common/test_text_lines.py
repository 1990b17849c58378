"""drfast.common.text_lines: the one reader of text-line files (UTF-8, byte-order mark, CRLF)."""
import pickle

import pytest

from drfast.common.text_lines import DataFormatError, decode_line, iter_lines, line_of_offset, read_line_bytes
from drfast.data import DataFormatError as DataPackageError


def test_one_error_type_for_every_reader():
    assert DataPackageError is DataFormatError  # drfast.data re-exports it; `except` clauses keep working
    e = DataFormatError("f.tsv", 3, "expected 3 columns")
    assert str(e) == "f.tsv, line 3: expected 3 columns" and (e.path, e.lineno, e.message) == ("f.tsv", 3, "expected 3 columns")
    whole = DataFormatError("f.tsv", None, "holds no judgments")
    assert str(whole) == "f.tsv: holds no judgments" and whole.lineno is None
    back = pickle.loads(pickle.dumps(whole))
    assert type(back) is DataFormatError and str(back) == str(whole)


def test_streaming_and_bulk_readers_agree_on_bom_crlf_and_final_line_end(tmp_path, rng):
    lines = ["first", "zweite é", "", "  ", "中文\u2028inside", "last"]
    for bom in (b"", b"\xef\xbb\xbf"):
        for newline in ("\n", "\r\n"):
            for final in (True, False):
                body = newline.join(lines) + (newline if final else "")
                path = tmp_path / "f.txt"
                path.write_bytes(bom + body.encode("utf-8"))
                assert [x.decode("utf-8") for x in read_line_bytes(path)] == lines
                assert list(iter_lines(path)) == [(i + 1, x) for i, x in enumerate(lines) if x.strip()]


def test_a_bom_is_only_stripped_at_the_start_of_the_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes("\ufeffa\n\ufeffb\n".encode("utf-8"))
    assert list(iter_lines(path)) == [(1, "a"), (2, "\ufeffb")]  # U+FEFF inside the file is content
    assert read_line_bytes(path) == [b"a", "\ufeffb".encode("utf-8")]
    assert decode_line(path, 1, "\ufeffx\r\n".encode("utf-8")) == "x"
    assert decode_line(path, 0, "\ufeffx\n".encode("utf-8")) == "\ufeffx"  # seeking elsewhere: kept


@pytest.mark.parametrize("reader", ["iter_lines", "read_line_bytes"])
def test_bad_utf8_is_refused_naming_file_line_and_byte(tmp_path, reader):
    path = tmp_path / "ids.txt"
    path.write_bytes(b"\xef\xbb\xbfok\nfine\nab\xffcd\n")
    read = {"iter_lines": lambda p: list(iter_lines(p)), "read_line_bytes": read_line_bytes}[reader]
    with pytest.raises(DataFormatError, match=r"ids\.txt, line 3: expected UTF-8 text \(byte 2 is not UTF-8") as info:
        read(path)
    assert info.value.lineno == 3


def test_a_lone_cr_is_content_not_a_line_end(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"a\rb\nc\r\n")
    assert read_line_bytes(path) == [b"a\rb", b"c"] and [x for _, x in iter_lines(path)] == ["a\rb", "c"]


def test_line_of_offset(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"aa\nbbb\n\ncc\n")
    assert [line_of_offset(path, o) for o in (0, 3, 7, 8)] == [1, 2, 3, 4]
