"""Scaling of drfast's fused search with N, and its peak extra memory for one search.

Run from the repository root (it imports benchmarks.benchutil):

    python -m benchmarks.scripts.scaling_memory [--max-n 4000000] [--mem-n 1000000]

B=32, d=768, k=200, cutoff=10, one random positive per query. 4M x 768 fp32 is 12.3 GB; each N's
matrix is freed before the next. Memory is measured in a fresh spawned process per dtype so the
numbers are not polluted by earlier allocations.
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import time

import numpy as np

import drfast
from benchmarks.benchutil import CUTOFF, K, gaussian_rows, make_inputs

SIZES = [100_000, 250_000, 500_000, 1_000_000, 2_000_000, 4_000_000]


def best_of(fn, rounds: int = 3) -> float:
    fn()  # warm-up: first-touch page faults, thread pool start
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def scaling(max_n: int) -> None:
    print("## Scaling (float32, best of 3 after a warm-up)\n")
    print("| N | seconds | seconds per 1M rows |")
    print("|---:|---:|---:|")
    for n in [s for s in SIZES if s <= max_n]:
        idx = drfast.FlatIndex(gaussian_rows(n))
        q, positives = make_inputs(n)
        t = best_of(lambda idx=idx: idx.search(q, k=K, positives=positives, cutoff=CUTOFF))
        print(f"| {n:,} | {t:.3f} | {t / (n / 1e6):.3f} |", flush=True)
        del idx  # free this N's matrix before generating the next
        gc.collect()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_extra(n: int, dtype: str) -> tuple[float, float]:
    """Runs in a fresh process: (index MB, VmHWM during one search - VmRSS before it, MB)."""
    idx = drfast.FlatIndex(gaussian_rows(n, dtype=np.dtype(dtype)))
    q, positives = make_inputs(n)
    gc.collect()
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    idx.search(q, k=K, positives=positives, cutoff=CUTOFF)  # no warm-up: first-call setup counts too
    return idx.emb.nbytes / 2**20, (_status_kb("VmHWM") - before) / 1024


def memory(n: int) -> None:
    print(f"\n## Peak extra memory of one search (N={n:,}, fresh process, no warm-up)\n")
    print("| dtype | index MB | peak extra MB |")
    print("|---|---:|---:|")
    ctx = mp.get_context("spawn")
    for dtype in ("float32", "float16"):
        with ctx.Pool(1) as pool:  # one fresh process per measurement
            index_mb, extra_mb = pool.apply(peak_extra, (n, dtype))
        print(f"| {dtype} | {index_mb:,.0f} | {extra_mb:,.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-n", type=int, default=4_000_000, help="largest N of the scaling run")
    ap.add_argument("--mem-n", type=int, default=1_000_000, help="N of the memory measurement")
    args = ap.parse_args()
    info = drfast.build_info()
    print(f"drfast {info['version']}, simd {info['simd']}, {info['threads']} threads\n")
    scaling(args.max_n)
    memory(args.mem_n)


if __name__ == "__main__":
    main()
