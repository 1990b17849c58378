"""UsageError / UsageTypeError: the parameter to blame travels with the exception."""
import pickle

import numpy as np
import pytest
import torch

import drfast
from drfast.common.arrays import as_tensor, to_numpy
from drfast.common.checks import as_int64_vector, check_float, check_int
from drfast.common.errors import UsageError, UsageTypeError


def test_value_error_carries_param_and_message():
    with pytest.raises(ValueError) as info:
        check_int(0, "k", minimum=1)
    assert isinstance(info.value, UsageError)
    assert info.value.param == "k"
    assert str(info.value) == "k: must be >= 1, got 0"
    assert info.value.detail == "must be >= 1, got 0"


def test_type_error_is_a_usage_error_too():
    with pytest.raises(TypeError) as info:
        check_float("x", "lr")
    assert isinstance(info.value, UsageTypeError) and isinstance(info.value, UsageError)
    assert info.value.param == "lr"


def test_search_errors_name_the_argument():
    idx = drfast.FlatIndex(np.eye(4, dtype=np.float32))
    with pytest.raises(drfast.UsageError) as info:
        idx.search(np.ones((1, 4), np.float32), k=0)
    assert info.value.param == "k"
    with pytest.raises(drfast.UsageError) as info:
        as_int64_vector(np.ones((2, 2), np.int64), "positives")
    assert info.value.param == "positives"


@pytest.mark.parametrize("cls", [UsageError, UsageTypeError])
def test_pickles_across_processes(cls):
    err = pickle.loads(pickle.dumps(cls("rows", "expected 2-D")))
    assert type(err) is cls and err.param == "rows" and str(err) == "rows: expected 2-D"


def test_no_param_gives_the_bare_detail():
    assert str(UsageError(None, "something")) == "something"


def test_arrays_round_trip_without_copies():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = as_tensor(a)
    assert t.data_ptr() == a.ctypes.data           # a view, not a copy
    assert to_numpy(t) is not None and np.array_equal(to_numpy(t), a)
    assert as_tensor(t) is t
    g = torch.ones(3, requires_grad=True) * 2      # needs a detach
    assert np.array_equal(to_numpy(g), np.full(3, 2, np.float32))
    assert to_numpy(a.T, contiguous=True).flags.c_contiguous
