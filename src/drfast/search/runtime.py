"""What the native core runs with: CPU threads, the SIMD level, and what this build can do.

The SIMD level is chosen when the module loads (the best the CPU supports) unless the environment
variable DRFAST_SIMD names one (avx512, avx2 or generic); `set_simd_level` changes it at run time.
Every level returns bit-identical results. `fork_safe` lets searches run in forked children.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
import threading

import torch

from drfast import _C
from drfast.common.checks import check_choice, check_int
from drfast.common.errors import UsageError

SIMD_LEVELS = ("avx512", "avx2", "generic")


def set_num_threads(n: int) -> None:
    """Set the threads the native CPU kernels use (default: OMP_NUM_THREADS or all cores).

    Results do not depend on the thread count.

    Parameters
    ----------
    n : int
        At least 1.

    Raises
    ------
    UsageError, UsageTypeError
        n is not a positive integer.

    Examples
    --------
    >>> import drfast
    >>> before = drfast.get_num_threads()
    >>> drfast.set_num_threads(1); drfast.get_num_threads()
    1
    >>> drfast.set_num_threads(before)
    """
    _C.set_num_threads(check_int(n, "n", 1, 2**31 - 1))


def get_num_threads() -> int:
    """Threads the native CPU kernels use now (see `set_num_threads`)."""
    return _C.num_threads()


def supported_simd_levels() -> list:
    """The SIMD levels this CPU can run, best first."""
    return _C.supported_simd_levels().split(",")


def set_simd_level(level: str) -> None:
    """Run the CPU kernels with `level` (one of supported_simd_levels()).

    Every level returns bit-identical results; the environment variable DRFAST_SIMD sets the level
    when the module loads.

    Parameters
    ----------
    level : {"avx512", "avx2", "generic"}
        A level this CPU supports.

    Raises
    ------
    UsageError
        An unknown level, or one this CPU cannot run.

    Examples
    --------
    >>> import drfast
    >>> before = drfast.simd_level()
    >>> drfast.set_simd_level("generic"); drfast.simd_level()
    'generic'
    >>> drfast.set_simd_level(before)
    """
    check_choice(level, "level", SIMD_LEVELS)
    if level not in supported_simd_levels():
        raise UsageError("level", f"this CPU cannot run {level!r}; it supports {', '.join(supported_simd_levels())}")
    _C.set_simd_level(level)


def simd_level() -> str:
    """The SIMD level the CPU kernels run with now: "avx512", "avx2" or "generic"."""
    return _C.simd_level()


def build_info() -> dict:
    """What this build can do.

    Returns
    -------
    dict
        ``version``, ``simd`` (the level in use), ``simd_supported``, ``threads``,
        ``cuda_kernels_built``, ``cuda_device_available`` and ``torch`` (its version); `drfast info`
        prints it.
    """
    return {
        "version": importlib.metadata.version("drfast"),
        "simd": simd_level(),
        "simd_supported": supported_simd_levels(),
        "threads": get_num_threads(),
        "cuda_kernels_built": bool(_C.built_with_cuda),
        "cuda_device_available": bool(_C.cuda_device_available()) or torch.cuda.is_available(),
        "torch": torch.__version__,
    }


_IMPORT_PID = os.getpid()


def fork_safe(fn):
    """`fn` made safe to call in a forked child (multiprocessing's "fork" start method, DataLoader workers).

    OpenMP's worker threads (libgomp, shared by the native kernels and torch) belong to the thread that
    started them and do not survive fork: in the child, a parallel region started from the thread that
    forked waits forever for workers that no longer exist. So in a process forked after drfast was
    imported, `fn` runs in a new thread, which starts OpenMP workers of its own (all threads still used).
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if os.getpid() == _IMPORT_PID:
            return fn(*args, **kwargs)
        outcome = {}

        def run():
            try:
                outcome["value"] = fn(*args, **kwargs)
            except BaseException as e:  # re-raised in the caller's thread
                outcome["error"] = e

        thread = threading.Thread(target=run, name=f"drfast-{fn.__name__}", daemon=True)
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
    return wrapper


def _apply_environment() -> None:
    level = os.environ.get("DRFAST_SIMD", "").strip().lower()
    if level:
        try:
            set_simd_level(level)
        except ValueError as e:
            raise UsageError("DRFAST_SIMD", str(e)) from None


_apply_environment()
