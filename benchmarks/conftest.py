"""--runslow for the N=1M cases, and the drfast-ratio table printed at the end of the session."""
from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_addoption(parser):
    try:
        parser.addoption("--runslow", action="store_true", default=False, help="also run the N=1M benchmarks")
    except ValueError:  # already added by another conftest when tests/ and benchmarks/ run together
        pass


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; run with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="N=1M case: run with --runslow")
    for item in items:  # only our items: this hook also sees tests/ when both are collected
        if "slow" in item.keywords and HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter):
    from benchutil import B, CUTOFF, D, K, RESULTS

    if not RESULTS:
        return
    import drfast
    import faiss
    import torch

    tr = terminalreporter
    tr.section("drfast vs baselines")
    tr.write_line(f"search cases: B={B} d={D} k={K} cutoff={CUTOFF}, 1 positive/query; mean of timed rounds; "
                  f"threads: drfast {drfast.get_num_threads()}, torch {torch.get_num_threads()}, "
                  f"faiss {faiss.omp_get_max_threads()}; simd {drfast.build_info()['simd']}")
    header = f"{'case':<16} {'method':<34} {'mean time (s)':>13} {'ratio to drfast':>15}"
    tr.write_line(header)
    tr.write_line("-" * len(header))
    drfast_time = {case: t for case, method, t in RESULTS if method.startswith("drfast") and "torch" not in method}
    last = None
    for case, method, t in RESULTS:
        ratio = f"{t / drfast_time[case]:.2f}" if case in drfast_time else "n/a"
        tr.write_line(f"{case if case != last else '':<16} {method:<34} {t:>13.4f} {ratio:>15}")
        last = case
    tr.write_line("faiss+ranks = IndexFlatIP.search (BLAS path) + a chunked torch pass for the positives' exact ranks.")
    tr.write_line("(fp32 copy) = faiss has no fp16 flat index: it and the floor use the fp16 values stored as fp32.")
    tr.write_line("torch chunked = hand-written matmul+topk+count loop (faster here than drfast's backend='torch').")
    tr.write_line("stats = pairwise errors + aggregates of 500k queries (1-5 positives); ranks = drfast errors' exact ranks"
                  " (d=768, 1-5 positives) vs faiss at depth N.")
    tr.write_line("ratio > 1: slower than drfast.")
