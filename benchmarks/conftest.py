"""--runslow for the large cases (N=1M, full batch), and the one ratio table every suite reports into.

A suite test records each method's time with the `record` fixture,
    record(case, method, kind="baseline", seconds=None)
(seconds default to the mean of this test's pytest-benchmark rounds), and the session ends with one table:
per suite and case, each method's mean time and its ratio to drfast's method of that case, the fastest
baseline marked. Speed claims are these ratios, measured in the same run, never timed assertions.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

KINDS = ("drfast", "baseline", "other")  # other: does less or different work (a floor, an encoder); never marked


@dataclass
class Row:
    suite: str
    case: str
    method: str
    seconds: float
    kind: str


ROWS: list[Row] = []
NOTES: dict[str, dict[str, None]] = {}  # suite -> footnotes, in order, without repeats


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the large cases (N=1M, full batch)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="large case (N=1M, full batch): run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def record(request):
    """record(case, method, kind="baseline", seconds=None) adds a row to the ratio table; kind is "drfast"
    (the ratio's denominator), "baseline" (a complete alternative) or "other". Footnotes under the suite's
    table: the test module's NOTES (a tuple of lines) and each record.note(text)."""
    suite = request.module.__name__.rsplit(".", 1)[-1]

    def _record(case: str, method: str, kind: str = "baseline", seconds: float | None = None) -> None:
        assert kind in KINDS, kind
        if seconds is None:
            stats = request.getfixturevalue("benchmark").stats
            if stats is None:  # --benchmark-disable
                return
            seconds = stats.stats.mean
        ROWS.append(Row(suite, case, method, float(seconds), kind))
        for text in getattr(request.module, "NOTES", ()):
            _record.note(text)

    _record.note = lambda text: NOTES.setdefault(suite, {}).setdefault(text)
    return _record


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    import drfast
    import faiss
    import torch

    tr = terminalreporter
    tr.section("drfast vs baselines")
    tr.write_line(f"mean of the timed rounds; ratio = method's time / drfast's (> 1: slower than drfast); "
                  f"threads: drfast {drfast.get_num_threads()}, torch {torch.get_num_threads()}, "
                  f"faiss {faiss.omp_get_max_threads()}; simd {drfast.simd_level()}")
    for suite in dict.fromkeys(r.suite for r in ROWS):
        rows = [r for r in ROWS if r.suite == suite]
        tr.write_line("")
        header = f"{suite:<36} {'method':<38} {'mean (s)':>10} {'ratio':>7}"
        tr.write_line(header)
        tr.write_line("-" * len(header))
        for case in dict.fromkeys(r.case for r in rows):
            in_case = [r for r in rows if r.case == case]
            ref = next((r.seconds for r in in_case if r.kind == "drfast"), None)
            best = min((r for r in in_case if r.kind == "baseline"), key=lambda r: r.seconds, default=None)
            for i, r in enumerate(in_case):
                ratio = f"{r.seconds / ref:.2f}" if ref else "n/a"
                mark = "  <- best baseline" if r is best else ""
                tr.write_line(f"{case if i == 0 else '':<36} {r.method:<38} {r.seconds:>10.4f} {ratio:>7}{mark}")
        for text in NOTES.get(suite, ()):
            tr.write_line(f"  {text}")
