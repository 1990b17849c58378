"""The native core's sizes and counter columns as exported by _C (drfast.search.native), and read
back consistently: the first-pass code layout and the two-stage work counters."""
import numpy as np
import pytest

import drfast
from drfast.search import first_pass, native


def test_sizes_are_the_kernels():
    assert native.FLAT_BLOCK_ROWS % 3 == 0  # a multiple of the scan's 3-row tile
    assert native.PQ_BLOCK_ROWS == 256 and native.FIRST_PASS_BLOCK_ROWS > 0
    assert native.CANDIDATE_BYTES == 16  # float score + int64 row, padded
    assert first_pass.ALIGN == native.FIRST_PASS_ALIGN


@pytest.mark.parametrize("kind", ["int8", "bf16"])
@pytest.mark.parametrize("d", [1, 63, 64, 65, 384])
def test_first_pass_rows_are_padded_to_the_alignment(rng, kind, d):
    data = first_pass.build_first_pass(rng.standard_normal((5, d)).astype(np.float32), kind)
    assert data.codes.shape[1] * data.codes.itemsize % native.FIRST_PASS_ALIGN == 0
    assert data.codes.shape[1] * data.codes.itemsize - d * data.codes.itemsize < native.FIRST_PASS_ALIGN


def test_work_columns_name_what_the_kernel_counts(rng):
    assert set(native.WORK_PER_QUERY) == {"refined", "rescored_topk", "rescored_ranks"}
    assert set(native.WORK_PER_POSITIVE) == {"refined", "rescored"}
    assert sorted(native.WORK_PER_QUERY.values()) == [0, 1, 2] and sorted(native.WORK_PER_POSITIVE.values()) == [0, 1]
    docs = rng.standard_normal((6000, 32)).astype(np.float32)
    q = rng.standard_normal((5, 32)).astype(np.float32)
    positives = [[1, 2, 3], [], [4000], [10, 20], [5999]]
    index = drfast.FlatIndex(docs, first_pass="int8")
    index.search(q, 10, positives)
    s = index.last_search_stats
    offsets = np.array([0, 3, 3, 4, 6, 8])
    per_query = lambda x: np.add.reduceat(np.append(x, 0), offsets[:-1])[:5] * (np.diff(offsets) > 0)
    # The per-query ranks column is the sum of the positives' rescored column (and refined covers theirs).
    np.testing.assert_array_equal(s.rescored_ranks, per_query(s.pos_rescored))
    assert (s.refined >= per_query(s.pos_refined)).all() and s.pos_refined.sum() > 0
    assert (s.rescored_topk >= 10).all()  # at least the top-k themselves are scored exactly
