import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    import torch

    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture
def rng(request):
    # Fresh random inputs on every run; the seed is printed so a failure can be replayed
    # with DRFAST_SEED=<seed>.
    seed = int(os.environ.get("DRFAST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"DRFAST_SEED={seed}")
    return np.random.default_rng(seed)
