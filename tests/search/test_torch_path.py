"""The torch reference path (the GPU default) against the numpy reference and the native kernel."""
import numpy as np
import pytest
import torch

import drfast
from reference import integer_embeddings, random_positives, reference_search


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("B,N,d,k,chunk", [(5, 1000, 16, 30, 128), (3, 7, 4, 12, 3), (1, 1, 1, 1, 1),
                                            (16, 5000, 64, 200, 1000)])
def test_torch_path_exact_on_integer_data(rng, B, N, d, k, chunk, dtype, monkeypatch):
    monkeypatch.setattr(drfast.search.torch_path, "DEFAULT_CHUNK", chunk)
    docs = integer_embeddings(rng, (N, d), dtype, -1, 1)  # few distinct scores: ties everywhere
    queries = integer_embeddings(rng, (B, d), np.float32, -1, 1)
    positives = random_positives(rng, B, N)
    res = drfast.FlatIndex(docs).search(queries, k=k, positives=positives, cutoff=10, backend="torch")
    ref = reference_search(queries, docs, k, positives, 10)
    np.testing.assert_array_equal(res.ids, ref["ids"])
    np.testing.assert_array_equal(res.scores, ref["scores"].astype(np.float32))
    np.testing.assert_array_equal(res.pos_ranks, ref["pos_ranks"])
    np.testing.assert_allclose(res.pair_weights, ref["pair_weights"], rtol=1e-6, atol=0)


def test_torch_path_agrees_with_native_on_float_data(rng):
    docs = rng.standard_normal((20_000, 128)).astype(np.float32)
    queries = rng.standard_normal((8, 128)).astype(np.float32)
    positives = random_positives(rng, 8, 20_000)
    idx = drfast.FlatIndex(torch.from_numpy(docs))
    a = idx.search(torch.from_numpy(queries), k=100, positives=positives, cutoff=10, backend="native")
    b = idx.search(torch.from_numpy(queries), k=100, positives=positives, cutoff=10, backend="torch")
    assert (a.ids == b.ids).float().mean() > 0.99
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-4)
    assert (a.pos_ranks - b.pos_ranks).abs().max() <= 1
