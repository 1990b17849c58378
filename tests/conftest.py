import os
from pathlib import Path

import numpy as np
import pytest

# The real collections (SciFact, Vaswani) in BEIR format: the folder $DRFAST_DATA holding scifact/ and
# vaswani/ (.ci/run sets it when the data is at hand); the tests that need them are skipped without it.
DATA_ENV = "DRFAST_DATA"


def data_folder(name: str) -> Path:
    """$DRFAST_DATA/NAME, skipping the calling test when the variable is unset or the folder absent."""
    root = os.environ.get(DATA_ENV)
    if not root:
        pytest.skip(f"{DATA_ENV} is not set (a folder holding the BEIR collections {name}/, ...)")
    path = Path(root) / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


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


@pytest.fixture
def real_data():
    """A function name -> the BEIR folder $DRFAST_DATA/NAME, skipping the test when it is absent."""
    return data_folder


class KilledRun(Exception):
    """Raised by a `kill_at` hook: a training run stopped as if killed (after its last checkpoint)."""


@pytest.fixture
def kill_at():
    """kill_at(step) -> the hook pair (1, hook) that raises KilledRun at `step`; `kill_at.error` is
    KilledRun, for pytest.raises."""
    def make(step):
        def hook(trainer, at):
            if at == step:
                raise KilledRun(f"killed at step {step}")
        return 1, hook
    make.error = KilledRun
    return make
