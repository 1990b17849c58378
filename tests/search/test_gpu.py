"""GPU paths: the torch reference on CUDA (the default) and the CUDA kernel when built. Skipped without a GPU."""
import numpy as np
import pytest
import torch

import drfast
from reference import integer_embeddings, random_positives, reference_search

pytestmark = pytest.mark.gpu

BACKENDS = ["torch"] + (["cuda"] if drfast.build_info()["cuda_kernels_built"] else [])
FIELDS = ("ids", "scores", "pos_offsets", "pos_ids", "pos_scores", "pos_ranks", "pair_weights")


def assert_identical(gpu, native):
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(gpu, field).cpu().numpy(), getattr(native, field), err_msg=field)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("B,N,d,k", [(1, 1, 1, 1), (5, 1000, 33, 40), (32, 100_000, 768, 200), (3, 7, 5, 12)])
def test_gpu_exact_on_integer_data(rng, backend, dtype, B, N, d, k):
    docs = integer_embeddings(rng, (N, d), dtype)
    queries = integer_embeddings(rng, (B, d), np.float32)
    positives = random_positives(rng, B, N)
    idx = drfast.FlatIndex(docs).to("cuda")
    res = idx.search(torch.from_numpy(queries).cuda(), k=k, positives=positives, cutoff=10, backend=backend)
    assert res.ids.is_cuda
    ref = reference_search(queries, docs, k, positives, 10)
    np.testing.assert_array_equal(res.ids.cpu().numpy(), ref["ids"])
    np.testing.assert_array_equal(res.scores.cpu().numpy(), ref["scores"].astype(np.float32))
    np.testing.assert_array_equal(res.pos_scores.cpu().numpy(), ref["pos_scores"].astype(np.float32))
    np.testing.assert_array_equal(res.pos_ranks.cpu().numpy(), ref["pos_ranks"])
    np.testing.assert_allclose(res.pair_weights.cpu().numpy(), ref["pair_weights"], rtol=1e-6, atol=0)
    assert_identical(res, drfast.FlatIndex(docs).search(queries, k=k, positives=positives, cutoff=10))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_close_to_native_on_float_data(rng, backend):
    docs = rng.standard_normal((50_000, 256)).astype(np.float32)
    queries = rng.standard_normal((16, 256)).astype(np.float32)
    positives = random_positives(rng, 16, 50_000)
    native = drfast.FlatIndex(docs).search(queries, k=200, positives=positives, cutoff=10)
    gpu = drfast.FlatIndex(docs).to("cuda").search(torch.from_numpy(queries).cuda(), k=200,
                                                    positives=positives, cutoff=10, backend=backend)
    assert (gpu.ids.cpu().numpy() == native.ids).mean() > 0.99
    assert np.abs(gpu.pos_ranks.cpu().numpy() - native.pos_ranks).max() <= 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,N,m,k", [(1, 1, 1, 1), (5, 1000, 8, 40), (32, 100_000, 96, 200), (3, 7, 2, 12)])
def test_gpu_pq_bit_identical_to_native(rng, backend, B, N, m, k):
    # Integer centroids and queries: every lookup-table entry and every sum is exact on any device,
    # and there are many real ties, so the GPU result must equal the native one exactly.
    centroids = rng.integers(-2, 3, size=(m, 256, 2)).astype(np.float32)
    codes = rng.integers(0, 256, size=(N, m)).astype(np.uint8)
    queries = rng.integers(-2, 3, size=(B, 2 * m)).astype(np.float32)
    positives = random_positives(rng, B, N)
    native = drfast.PQIndex(centroids, codes).search(queries, k=k, positives=positives, cutoff=10)
    gpu = drfast.PQIndex(centroids, codes).to("cuda").search(torch.from_numpy(queries).cuda(), k=k,
                                                              positives=positives, cutoff=10, backend=backend)
    assert gpu.ids.is_cuda
    assert_identical(gpu, native)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("first_pass", [None, "int8"])
def test_gpu_rank_depth_clamps_like_native(rng, backend, first_pass):
    docs = integer_embeddings(rng, (20_000, 48), np.float32)
    queries = integer_embeddings(rng, (8, 48), np.float32)
    positives = random_positives(rng, 8, 20_000, max_per_query=4)
    native = drfast.FlatIndex(docs).search(queries, k=20, positives=positives, cutoff=10, rank_depth=30)
    gpu = drfast.FlatIndex(docs, first_pass=first_pass).to("cuda").search(
        torch.from_numpy(queries).cuda(), k=20, positives=positives, cutoff=10, backend=backend, rank_depth=30)
    assert_identical(gpu, native)
    assert gpu.rank_depth == 30 and int(gpu.pos_ranks.max()) <= 31
