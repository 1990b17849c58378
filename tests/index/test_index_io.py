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
