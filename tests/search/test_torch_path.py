"""The torch reference path (the GPU default) against the numpy reference and the native kernel."""
import numpy as np
import pytest
import torch

import drfast
from drfast.search import flat_search, pq_search, torch_path
from reference import integer_embeddings, random_positives, reference_search

FIELDS = ("ids", "scores", "pos_offsets", "pos_ids", "pos_scores", "pos_ranks", "pair_weights")


def assert_identical(got, expected):
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), err_msg=field)


def assert_matches_reference(res, ref):
    np.testing.assert_array_equal(res.ids, ref["ids"])
    np.testing.assert_array_equal(res.scores, ref["scores"].astype(np.float32))
    np.testing.assert_array_equal(res.pos_scores, ref["pos_scores"].astype(np.float32))
    np.testing.assert_array_equal(res.pos_ranks, ref["pos_ranks"])
    np.testing.assert_allclose(res.pair_weights, ref["pair_weights"], rtol=1e-6, atol=0)


@pytest.fixture
def chunk_log(monkeypatch):
    """The (start, end) of every chunk the torch path scores, so a test can see chunk_rows is used."""
    log = []
    for scorer in (torch_path.FlatChunkScorer, torch_path.PQChunkScorer):
        def logged(self, start, end, _chunk=scorer.chunk):
            log.append((start, end))
            return _chunk(self, start, end)
        monkeypatch.setattr(scorer, "chunk", logged)
    return log


def expected_chunks(N, chunk_rows):
    return [(s, min(N, s + chunk_rows)) for s in range(0, N, chunk_rows)]


# chunk_rows: one row, a few rows (not dividing N), N itself, more than N; k below, across and past N.
CHUNKS = [1, 3, 7, 50, 64]


@pytest.mark.parametrize("chunk_rows", CHUNKS)
@pytest.mark.parametrize("k", [5, 20, 55])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_flat_chunks_exact_on_integer_data(rng, chunk_log, chunk_rows, k, dtype):
    B, N, d = 6, 50, 8
    docs = integer_embeddings(rng, (N, d), dtype, -1, 1)  # few distinct scores: ties everywhere
    queries = integer_embeddings(rng, (B, d), np.float32, -1, 1)
    positives = random_positives(rng, B, N, max_per_query=5)
    emb = drfast.FlatIndex(docs).emb
    res = flat_search(queries, emb, k, positives, cutoff=10, backend="torch", chunk_rows=chunk_rows)
    assert chunk_log == expected_chunks(N, chunk_rows)
    assert_identical(res, flat_search(queries, emb, k, positives, cutoff=10, backend="native"))
    assert_matches_reference(res, reference_search(queries, docs, k, positives, 10))


@pytest.mark.parametrize("chunk_rows", CHUNKS)
@pytest.mark.parametrize("k", [5, 20, 55])
def test_pq_chunks_exact_on_integer_data(rng, chunk_log, chunk_rows, k):
    B, N, m, dsub = 6, 50, 4, 2
    centroids = rng.integers(-1, 2, size=(m, 256, dsub)).astype(np.float32)  # integer tables: exact sums, ties
    codes = rng.integers(0, 256, size=(N, m)).astype(np.uint8)
    queries = rng.integers(-1, 2, size=(B, m * dsub)).astype(np.float32)
    positives = random_positives(rng, B, N, max_per_query=5)
    idx = drfast.PQIndex(centroids, codes)
    res = pq_search(queries, idx, k, positives, cutoff=10, backend="torch", chunk_rows=chunk_rows)
    assert chunk_log == expected_chunks(N, chunk_rows)
    assert_identical(res, pq_search(queries, idx, k, positives, cutoff=10, backend="native"))
    decoded = idx.reconstruct(np.arange(N)).numpy()
    assert_matches_reference(res, reference_search(queries, decoded, k, positives, 10))


def test_default_chunk_is_read_at_call_time(rng, chunk_log, monkeypatch):
    monkeypatch.setattr(torch_path, "DEFAULT_CHUNK", 4)
    docs = integer_embeddings(rng, (10, 3), np.float32)
    drfast.FlatIndex(docs).search(integer_embeddings(rng, (2, 3), np.float32), k=3, backend="torch")
    assert chunk_log == expected_chunks(10, 4)


@pytest.mark.parametrize("chunk_rows,backend,exc,match", [
    (0, "torch", ValueError, "chunk_rows: must be >= 1"),
    (2.5, "torch", TypeError, "chunk_rows: expected an int"),
    (8, "native", ValueError, "chunk_rows: only the torch backend"),
])
def test_bad_chunk_rows(chunk_rows, backend, exc, match):
    emb = drfast.FlatIndex(np.ones((4, 2), np.float32)).emb
    with pytest.raises(exc, match=match):
        flat_search(np.ones((1, 2), np.float32), emb, 2, backend=backend, chunk_rows=chunk_rows)


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
