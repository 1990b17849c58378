"""The runtime settings of the native core: SIMD level (also from DRFAST_SIMD), threads, build info."""
import os
import subprocess
import sys

import pytest

import drfast
from drfast.search import runtime


@pytest.fixture
def restore_simd_level():
    before = drfast.simd_level()
    yield
    drfast.set_simd_level(before)


def test_supported_levels_best_first_and_in_use():
    levels = drfast.search.supported_simd_levels()
    assert levels[-1] == "generic" and levels == [lv for lv in runtime.SIMD_LEVELS if lv in levels]
    assert drfast.simd_level() in levels
    info = drfast.build_info()
    assert info["simd"] == drfast.simd_level() and info["simd_supported"] == levels


@pytest.mark.parametrize("level", drfast.search.supported_simd_levels())
def test_set_simd_level(restore_simd_level, level):
    drfast.set_simd_level(level)
    assert drfast.simd_level() == level


@pytest.mark.parametrize("level", ["bogus", "AVX2", "", None, 2])
def test_set_simd_level_rejects_unknown_names(restore_simd_level, level):
    before = drfast.simd_level()
    with pytest.raises(ValueError, match="^level: expected one of 'avx512', 'avx2', 'generic'"):
        drfast.set_simd_level(level)
    assert drfast.simd_level() == before


def test_set_simd_level_rejects_a_level_the_cpu_cannot_run(restore_simd_level, monkeypatch):
    # Pretend this CPU runs only the generic kernels (every x86-64 CPU really runs those).
    monkeypatch.setattr(runtime, "supported_simd_levels", lambda: ["generic"])
    with pytest.raises(ValueError, match="^level: this CPU cannot run 'avx2'; it supports generic"):
        drfast.set_simd_level("avx2")


@pytest.mark.parametrize("level", [lv for lv in runtime.SIMD_LEVELS if lv not in drfast.search.supported_simd_levels()])
def test_set_simd_level_rejects_unsupported_levels_of_this_cpu(restore_simd_level, level):
    with pytest.raises(ValueError, match="this CPU cannot run"):
        drfast.set_simd_level(level)


def import_drfast(simd):
    env = {**os.environ, "DRFAST_SIMD": simd}
    code = "import drfast; print(drfast.simd_level())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_drfast_simd_environment_variable_sets_the_level():
    # Not the default on any CPU with AVX2, so a variable that is not applied is noticed there.
    out = import_drfast(" Generic ")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["generic"]


def test_drfast_simd_environment_variable_rejects_bad_values():
    out = import_drfast("bogus")
    assert out.returncode != 0
    assert "UsageError: DRFAST_SIMD: level: expected one of" in out.stderr


def test_set_num_threads():
    before = drfast.get_num_threads()
    try:
        drfast.set_num_threads(3)
        assert drfast.get_num_threads() == 3 and drfast.build_info()["threads"] == 3
        with pytest.raises(ValueError, match="n: must be >= 1"):
            drfast.set_num_threads(0)
    finally:
        drfast.set_num_threads(before)
