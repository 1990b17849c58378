"""Searches under memory limits and in forked children: a clean error or the right answer, never a
crash (std::terminate inside an OpenMP region) or a hang (OpenMP workers lost in fork)."""
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

import drfast

# RLIMIT_AS, /proc/self/status and the "fork" start method: Linux behaviour is what is tested here.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

# Each case builds `idx`, `q` and `kwargs`; the search then runs with 1 GiB of address space to spare.
MEMORY_CASES = {
    # The flat kernel's per-thread scratch holds 120 rows of d floats: 4.8 GB at d = 10**7, for N = 1.
    "native working memory (large d)": "idx = drfast.FlatIndex(np.ones((1, 10**7), np.float32))\n"
                                       "q = np.ones((1, 10**7), np.float32); kwargs = dict(k=5)",
    # Outputs fit (0.5 GB), the per-thread candidate buffers (2 x B x (2k + 120) x 16 bytes) do not.
    "native candidates (large B and k)": "idx = drfast.FlatIndex(np.ones((2000, 4), np.float32))\n"
                                         "q = np.ones((20000, 4), np.float32); kwargs = dict(k=2000)",
    "pq candidates (large B and k)": "idx = drfast.PQIndex(np.ones((1, 256, 4), np.float32), np.zeros((2000, 1), np.uint8))\n"
                                     "q = np.ones((20000, 4), np.float32); kwargs = dict(k=2000)",
    # Outputs [B, k] padded far past N = 300: 15.8 GB.
    "native outputs": "idx = drfast.FlatIndex(np.ones((300, 4), np.float32))\n"
                      "q = np.ones((20000, 4), np.float32); kwargs = dict(k=300 + 65536)",
    "torch outputs": "idx = drfast.FlatIndex(np.ones((300, 4), np.float32))\n"
                     "q = np.ones((20000, 4), np.float32); kwargs = dict(k=300 + 65536, backend='torch')",
    # Refused by the bound on k before anything is allocated (it used to try 15 GB: a MemoryError here).
    "absurd k": "idx = drfast.FlatIndex(np.ones((300, 4), np.float32))\n"
                "q = np.ones((1, 4), np.float32); kwargs = dict(k=10**9)",
}

LIMITED_SEARCH = """
import resource, sys
import numpy as np, torch, drfast
torch.set_num_threads(2)
drfast.set_num_threads(2)
{setup}
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))
try:
    idx.search(q, **kwargs)
except (MemoryError, ValueError) as e:
    print(f"{{type(e).__name__}}: {{e}}")
else:
    print("no error")
"""


@pytest.mark.parametrize("case", MEMORY_CASES)
def test_allocation_failure_is_a_memory_error_not_a_crash(case):
    code = LIMITED_SEARCH.format(setup=MEMORY_CASES[case])
    # Few threads and malloc arenas: thread stacks and arenas reserve address space too.
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MALLOC_ARENA_MAX": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"the process died ({out.returncode}):\n{out.stderr[-2000:]}"
    assert "terminate called" not in out.stderr
    if case == "absurd k":
        assert out.stdout.startswith("UsageError: k: must be <= N + 65536"), out.stdout
    else:
        assert out.stdout.startswith("MemoryError: search: out of memory for B="), out.stdout + out.stderr[-2000:]


def _search_in_child(conn, idx, queries, positives):
    try:
        res = idx.search(queries, k=7, positives=positives, cutoff=5)
        try:
            idx.search(queries, k=0)
            error = None
        except ValueError as e:  # errors still reach the caller in the child
            error = str(e)
        conn.send((vars(res), error))
    except BaseException as e:
        conn.send((None, repr(e)))
    conn.close()


def _index(kind, rng):
    if kind == "flat":
        return drfast.FlatIndex(rng.standard_normal((2000, 16)).astype(np.float32))
    return drfast.PQIndex(rng.standard_normal((4, 256, 4)).astype(np.float32),
                          rng.integers(0, 256, (2000, 4)).astype(np.uint8))


@pytest.mark.parametrize("kind", ["flat", "pq"])
def test_search_in_a_forked_child_after_the_parent_searched(kind, rng):
    # The parent's multi-threaded search starts OpenMP workers that the child does not inherit;
    # a parallel region started from the child's main thread used to wait for them forever.
    idx = _index(kind, rng)
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    positives = [[0], [], [1, 2], [1999], [5]]
    threads = drfast.get_num_threads()
    drfast.set_num_threads(2)
    try:
        expected = idx.search(queries, k=7, positives=positives, cutoff=5)
        ctx = multiprocessing.get_context("fork")
        receiver, sender = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_search_in_child, args=(sender, idx, queries, positives), daemon=True)
        child.start()
        try:
            assert receiver.poll(120), "the search in the forked child hung"
            got, error = receiver.recv()
        finally:
            child.kill()
            child.join()
    finally:
        drfast.set_num_threads(threads)
    assert got is not None, error
    for field, value in vars(expected).items():
        np.testing.assert_array_equal(got[field], value, err_msg=field)
    assert error is not None and error.startswith("k: must be >= 1")


def test_fork_safe_runs_in_this_thread_unless_forked(monkeypatch):
    import threading

    from drfast.search import runtime

    def where():
        return threading.current_thread().name

    assert runtime.fork_safe(where)() == threading.current_thread().name
    monkeypatch.setattr(runtime, "_IMPORT_PID", -1)  # as if this process were a forked child
    assert runtime.fork_safe(where)() == "drfast-where"

    def fail():
        raise KeyError("x")

    with pytest.raises(KeyError):
        runtime.fork_safe(fail)()
