"""drfast.common.checks: one exception policy (TypeError for a wrong type, ValueError for a bad value)."""
import math

import numpy as np
import pytest
import torch

from drfast.common.checks import (as_int64_vector, check_bool, check_choice, check_float, check_int,
                                  check_optional_int)


@pytest.mark.parametrize("value", [3, np.int64(3), np.uint8(3)])
def test_check_int_accepts_integers(value):
    assert check_int(value, "n", 1, 5) == 3 and type(check_int(value, "n")) is int


@pytest.mark.parametrize("value", [True, 2.0, "2", None, np.float32(2)])
def test_check_int_wrong_type_is_a_type_error_naming_the_argument(value):
    with pytest.raises(TypeError, match=r"^n: expected an integer"):
        check_int(value, "n")


def test_check_int_bounds_are_value_errors():
    with pytest.raises(ValueError, match=r"^n: must be >= 1, got 0"):
        check_int(0, "n", 1)
    with pytest.raises(ValueError, match=r"^n: must be <= 5, got 6"):
        check_int(6, "n", 1, 5)
    assert check_optional_int(None, "n", 1) is None
    assert check_int(-7, "n") == -7  # no bound given: any integer


def test_check_float():
    assert check_float(2, "x") == 2.0 and check_float(np.float32(0.5), "x", 0, 1) == 0.5
    with pytest.raises(TypeError, match=r"^x: expected a number"):
        check_float("1", "x")
    with pytest.raises(TypeError, match=r"^x: expected a number"):
        check_float(False, "x")
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match=r"^x: expected a finite number"):
            check_float(bad, "x")
    with pytest.raises(ValueError, match=r"^x: must be > 0"):
        check_float(0.0, "x", 0.0, min_inclusive=False)
    with pytest.raises(ValueError, match=r"^x: must be <= 1"):
        check_float(1.5, "x", 0.0, 1.0)


def test_check_bool_and_choice():
    assert check_bool(np.bool_(True), "flag") is True
    with pytest.raises(TypeError, match=r"^flag: expected True or False"):
        check_bool(1, "flag")
    assert check_choice("a", "mode", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"^mode: expected one of 'a', 'b', got 'c'"):
        check_choice("c", "mode", ("a", "b"))


def test_as_int64_vector():
    out = as_int64_vector(torch.tensor([1, 2], dtype=torch.int32), "rows")
    assert out.dtype == np.int64 and out.tolist() == [1, 2] and out.flags.c_contiguous
    assert as_int64_vector([], "rows").shape == (0,)
    with pytest.raises(TypeError, match=r"^rows: expected integer row ids, got dtype float64"):
        as_int64_vector([1.5], "rows")
    with pytest.raises(ValueError, match=r"^rows: expected a 1-D array"):
        as_int64_vector([[1]], "rows")
