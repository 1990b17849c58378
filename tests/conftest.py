import os
from pathlib import Path

import numpy as np
import pytest

# ../shared/data beside the repository: the real collections (SciFact, Vaswani) in BEIR format.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
    """A function name -> the BEIR folder ../shared/data/NAME, skipping the test when it is absent."""
    def folder(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_dir():
            pytest.skip(f"{path} is absent")
        return path
    return folder


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
