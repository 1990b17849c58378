"""ADORE searches at a rank depth (AdoreConfig.rank_depth, default train.adore.DEFAULT_RANK_DEPTH):
the step's loss, gradient and logged MRR@10 are those of a full-depth search."""
import numpy as np
import pytest
import torch

import drfast
from drfast.train.adore import DEFAULT_RANK_DEPTH, AdoreConfig, adore_batch_loss


class Recording:
    """An index that records the rank_depth of each search it is asked for."""

    def __init__(self, index):
        self.index, self.depths = index, []

    def __getattr__(self, name):
        return getattr(self.index, name)

    def search(self, *args, rank_depth=None, **kwargs):
        self.depths.append(rank_depth)
        return self.index.search(*args, rank_depth=rank_depth, **kwargs)


@pytest.mark.parametrize("first_pass", [None, "int8"])
def test_loss_and_gradient_do_not_depend_on_the_depth(rng, first_pass):
    docs = rng.standard_normal((3000, 16)).astype(np.float32)
    q0 = rng.standard_normal((6, 16)).astype(np.float32)
    order = np.argsort(-(q0 @ docs.T), axis=1)
    positives = [[int(order[b, 0]), int(order[b, 2000])] for b in range(6)]  # one on top, one deep
    out = {}
    for depth in (None, 10):
        index = Recording(drfast.FlatIndex(docs, first_pass=first_pass))
        q = torch.tensor(q0, requires_grad=True)
        loss, info = adore_batch_loss(q, index, positives, k=5, cutoff=3, rank_depth=depth)
        loss.backward()
        out[depth] = (float(loss.detach()), q.grad.clone(), info["mrr10"], info["pairs"], index.depths)
    assert out[None][4] == [None] and out[10][4] == [10]  # max(k, cutoff, 10)
    assert out[None][0] == out[10][0] and out[None][2:4] == out[10][2:4]
    torch.testing.assert_close(out[None][1], out[10][1], rtol=0, atol=0)


def test_the_default_depth_covers_k_and_the_cutoff(rng):
    assert AdoreConfig().rank_depth == DEFAULT_RANK_DEPTH == 1000
    docs = rng.standard_normal((1500, 8)).astype(np.float32)
    index = Recording(drfast.FlatIndex(docs))
    q = torch.tensor(rng.standard_normal((2, 8)).astype(np.float32), requires_grad=True)
    adore_batch_loss(q, index, [[1], [2]], k=1200, cutoff=10)
    adore_batch_loss(q, index, [[1], [2]], k=20, cutoff=10)
    assert index.depths == [1200, 1000]
    with pytest.raises(drfast.UsageError) as e:
        AdoreConfig(rank_depth=-1).check()
    assert e.value.param == "rank_depth"
