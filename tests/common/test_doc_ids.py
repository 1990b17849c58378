"""drfast.common.doc_ids.DocIdMap: a compact, validated id <-> row map."""
import numpy as np
import pytest

from drfast.common.doc_ids import DocIdMap


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
