import json
import os
import stat

import numpy as np
import pytest
import torch

import drfast
from reference import integer_embeddings


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_save_load_roundtrip(tmp_path, rng, dtype):
    emb = integer_embeddings(rng, (100, 12), dtype)
    idx = drfast.FlatIndex(emb, doc_ids=[f"doc{i}" for i in range(100)])
    idx.save(tmp_path / "idx")
    idx.save(tmp_path / "idx")  # overwriting is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temp dirs left behind
    loaded = drfast.load_index(tmp_path / "idx")
    assert (loaded.ntotal, loaded.dim, loaded.dtype) == (100, 12, np.dtype(dtype).name)
    assert loaded.doc_ids == idx.doc_ids
    q = integer_embeddings(rng, (3, 12), np.float32)
    a = idx.search(q, k=10, positives=[[1], [], [5, 9]], cutoff=10)
    b = loaded.search(q, k=10, positives=[[1], [], [5, 9]], cutoff=10)
    for field, value in vars(a).items():
        np.testing.assert_array_equal(getattr(b, field), value)


def test_reconstruct(rng):
    emb = rng.standard_normal((20, 6)).astype(np.float16)
    rec = drfast.FlatIndex(emb).reconstruct([3, 0, 3])
    assert rec.dtype == torch.float32 and rec.shape == (3, 6)
    np.testing.assert_array_equal(rec.numpy(), emb[[3, 0, 3]].astype(np.float32))
    with pytest.raises(ValueError, match="rows: ids must be in"):
        drfast.FlatIndex(emb).reconstruct([20])


def test_load_rejects_non_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a drfast index"):
        drfast.load_index(tmp_path)


def test_doc_ids_length_checked():
    with pytest.raises(ValueError, match="doc_ids: expected 2 ids"):
        drfast.FlatIndex(np.ones((2, 3), np.float32), doc_ids=["a"])


# -- the files of an index: nothing lost, nothing silently wrong ------------------------------------


def _flat(n=300, d=8, seed=0):
    return drfast.FlatIndex(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32),
                            doc_ids=[f"d{i}" for i in range(n)])


def _pq(opq):
    rng = np.random.default_rng(1)
    with pytest.warns(UserWarning, match="PQ codebooks trained on"):
        return drfast.PQIndex.train(rng.standard_normal((300, 8)).astype(np.float32), m=2, opq=opq)


def test_save_refuses_to_replace_what_is_not_an_index(tmp_path):
    (tmp_path / "file").write_text("precious")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("precious")
    for target in ("file", "folder"):
        with pytest.raises(FileExistsError, match=f"path: .*{target} exists and is not a drfast index"):
            _flat().save(tmp_path / target)
    assert (tmp_path / "file").read_text() == "precious"
    assert (tmp_path / "folder" / "notes.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    _flat().save(tmp_path / "empty")  # an empty folder or an older index may be replaced
    _flat(seed=2).save(tmp_path / "empty")
    assert drfast.load_index(tmp_path / "empty").reconstruct([0]).numpy().tolist() == \
        _flat(seed=2).reconstruct([0]).numpy().tolist()


def test_opq_index_without_its_rotation_does_not_load_as_plain_pq(tmp_path):
    _pq(opq=True).save(tmp_path / "opq")
    (tmp_path / "opq" / "rotation.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"rotation\.npy: missing"):
        drfast.load_index(tmp_path / "opq")


@pytest.mark.parametrize("change, message", [
    ({"format_version": 99}, "format_version 99 is not supported"),
    ({"format_version": None}, "format_version None is not supported"),
    ({"ntotal": 299}, r"embeddings\.npy: shape \(300, 8\) does not match meta\.json"),
    ({"dim": 4}, r"embeddings\.npy: shape \(300, 8\) does not match"),
    ({"dtype": "float16"}, r"embeddings\.npy: dtype float32, expected float16"),
    ({"ntotal": "300"}, "'ntotal' must be a positive integer"),
    ({"kind": "hnsw"}, "unknown index kind 'hnsw'"),
])
def test_meta_json_is_checked_against_the_arrays(tmp_path, change, message):
    _flat().save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    (tmp_path / "idx" / "meta.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(ValueError, match=message):
        drfast.load_index(tmp_path / "idx")


@pytest.mark.parametrize("name, damage, message", [
    ("meta.json", b"{not json", r"meta\.json: not valid JSON"),
    ("embeddings.npy", b"\x93NUMPY garbage", r"embeddings\.npy: not a readable \.npy file"),
    ("doc_ids.txt", b"d0\nd1\n", r"doc_ids\.txt: holds 2 document ids, expected 300"),
    ("doc_ids.txt", b"d0\nd1", r"doc_ids\.txt: truncated"),
])
def test_corrupt_files_are_named(tmp_path, name, damage, message):
    _flat().save(tmp_path / "idx")
    (tmp_path / "idx" / name).write_bytes(damage)
    with pytest.raises(ValueError, match=message):
        drfast.load_index(tmp_path / "idx")


@pytest.mark.parametrize("ids, message", [(["a", "b\nc", "d"], r"contains '\\n'"),
                                          (["a", "b", "a"], "duplicate id 'a'")])
def test_indexes_refuse_ids_they_could_not_save_or_tell_apart(ids, message):
    with pytest.raises(ValueError, match=f"doc_ids: .*{message}"):
        drfast.FlatIndex(np.ones((3, 2), np.float32), doc_ids=ids)
    codes, centroids = np.zeros((3, 1), np.uint8), np.zeros((1, 256, 2), np.float32)
    with pytest.raises(ValueError, match=f"doc_ids: .*{message}"):
        drfast.PQIndex(centroids, codes, doc_ids=ids)


def test_a_saved_index_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _flat().save(tmp_path / "idx")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "idx").st_mode) == 0o755
