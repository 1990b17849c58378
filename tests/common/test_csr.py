"""drfast.common.csr against plain loops."""
import numpy as np
import pytest
import torch

from drfast.common.csr import check_offsets, from_lists, offsets_of, row_of_each


def test_csr_helpers_match_loops(rng):
    lists = [list(rng.integers(0, 100, rng.integers(0, 5))) for _ in range(20)] + [[]]
    offsets, values = from_lists(lists)
    assert offsets.tolist() == [0] + list(np.cumsum([len(x) for x in lists])) and offsets.dtype == np.int64
    assert values.tolist() == [v for x in lists for v in x]
    assert (offsets_of(lists) == offsets).all()
    rows = [i for i, x in enumerate(lists) for _ in x]
    assert row_of_each(offsets).tolist() == rows
    assert row_of_each(torch.from_numpy(offsets)).tolist() == rows
    check_offsets(offsets, len(values))


@pytest.mark.parametrize("offsets", [[1, 2], [0, 3, 2], [0, 1], []])
def test_bad_offsets(offsets):
    with pytest.raises(ValueError, match="offsets: must start at 0"):
        check_offsets(np.array(offsets, np.int64), 2)
