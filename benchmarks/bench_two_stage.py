"""The exact two-stage search (FlatIndex(first_pass="int8" / "bf16")) against drfast's exact fused scan.

    python -m pytest benchmarks/bench_two_stage.py -q              # N=100k
    python -m pytest benchmarks/bench_two_stage.py -q --runslow    # also N=1M (~6 GB RAM peak, builds take minutes)
    python -m pytest benchmarks/bench_two_stage.py -q --runslow -k uniform   # the ADORE-like case alone

Two corpora (benchmarks/embeddings.py): (a) iid Gaussian unit vectors, (b) anisotropic clustered
unit embeddings like real ones (random pairs at cosine ~0.3, most variance in 48 directions, 2000
topics, 2% near-duplicates). One positive per query, at depths geometrically spaced from 1 to N/2.
Every two-stage result is checked bit-identical to the exact scan's after timing. The footnotes give
rows refined / rescored per query split by the positive's depth, and the first-pass copy's memory.

`test_uniform_positives`: what an ADORE step searches. One positive per query drawn uniformly from
the rows (so most lie around rank N/2), ranks at ADORE's default depth (train.adore.DEFAULT_RANK_DEPTH:
exact to max(k, cutoff, 1000), deeper reported as that + 1) and at full depth, against the exact
scan (whose time does not depend on the depth).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import drfast
from benchmarks.benchutil import B, CUTOFF, D, K
from benchmarks.embeddings import gaussian_unit_rows, make_case, realistic_rows
from drfast.train.adore import DEFAULT_RANK_DEPTH

CASES = [
    pytest.param(("gaussian", 100_000, "float32"), id="gauss-100k-fp32"),
    pytest.param(("realistic", 100_000, "float32"), id="real-100k-fp32"),
    pytest.param(("realistic", 100_000, "float16"), id="real-100k-fp16"),
    pytest.param(("gaussian", 1_000_000, "float32"), id="gauss-1M-fp32", marks=pytest.mark.slow),
    pytest.param(("gaussian", 1_000_000, "float16"), id="gauss-1M-fp16", marks=pytest.mark.slow),
    pytest.param(("realistic", 1_000_000, "float32"), id="real-1M-fp32", marks=pytest.mark.slow),
    pytest.param(("realistic", 1_000_000, "float16"), id="real-1M-fp16", marks=pytest.mark.slow),
]
METHODS = ["exact", "int8", "int8-norefine", "bf16"]
DEPTH_BUCKETS = [(1, 10), (11, 1000), (1001, 100_000), (100_001, 10**9)]


@pytest.fixture(scope="module", params=CASES)
def case(request):
    """One corpus at a time (module scope + grouping by parameter: the previous is torn down first)."""
    kind, n, dtype = request.param
    docs, q, positives, depths = make_case(kind, n, np.dtype(dtype))
    exact = drfast.FlatIndex(docs)
    ref = exact.search(q, k=K, positives=positives, cutoff=CUTOFF)
    size = f"{n // 10**6}M" if n >= 10**6 else f"{n // 1000}k"
    yield SimpleNamespace(name=f"{kind} N={size} {dtype}", docs=docs, q=q, positives=positives, ref=ref,
                          exact=exact, indexes={})


def index_for(c, method):
    if method == "exact":
        return c.exact
    if method not in c.indexes:
        c.indexes.clear()  # one first-pass copy in memory at a time
        kind = method.split("-")[0]
        c.indexes[method] = drfast.FlatIndex(c.docs, first_pass=kind, refine=not method.endswith("norefine"))
    return c.indexes[method]


def depth_split(stats, ranks) -> str:
    parts = []
    for lo, hi in DEPTH_BUCKETS:
        m = (ranks >= lo) & (ranks <= hi)
        if m.any():
            parts.append(f"rank {lo}-{hi if hi < 10**9 else 'N'}: {stats.pos_refined[m].mean():.0f}/"
                         f"{stats.pos_rescored[m].mean():.0f}")
    return "; ".join(parts)


def check_and_record(record, name: str, method: str, out, ref) -> None:
    """Every output bit-identical to the exact scan's, then the row of the table."""
    for f in ("ids", "scores", "pos_scores", "pos_ranks", "pair_weights"):
        assert np.array_equal(getattr(out, f), getattr(ref, f)), f"{method}: {f} differs from the exact scan"
    label = "exact fused scan" if method == "exact" else f"two-stage {method}"
    record(name, label, "drfast" if method == "exact" else "other")


@pytest.mark.parametrize("method", METHODS)
def test_two_stage(benchmark, record, case, method):
    index = index_for(case, method)
    benchmark.group = case.name
    run = lambda: index.search(case.q, k=K, positives=case.positives, cutoff=CUTOFF)
    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    check_and_record(record, case.name, method, out, case.ref)
    if method != "exact":
        s = index.last_search_stats
        record.note(f"{case.name} {method}: +{index.first_pass_bytes / 2**20:.0f} MiB first-pass copy "
                    f"({index.first_pass_bytes / case.docs.nbytes:.0%} of the rows); per query: "
                    f"{s.refined.mean():.0f} refined, {s.rescored_topk.mean():.0f} rescored for top-k, "
                    f"{s.rescored_ranks.mean():.0f} for ranks; per positive by exact rank (refined/rescored) "
                    f"{depth_split(s, case.ref.pos_ranks)}")


UNIFORM_CASES = [
    pytest.param(("gaussian", 100_000), id="uniform-gauss-100k"),
    pytest.param(("realistic", 100_000), id="uniform-real-100k"),
    pytest.param(("gaussian", 1_000_000), id="uniform-gauss-1M", marks=pytest.mark.slow),
    pytest.param(("realistic", 1_000_000), id="uniform-real-1M", marks=pytest.mark.slow),
]
ADORE_DEPTH = max(K, CUTOFF, DEFAULT_RANK_DEPTH)
UNIFORM_METHODS = ["exact", "int8 full depth", "int8 ADORE depth"]


@pytest.fixture(scope="module", params=UNIFORM_CASES)
def uniform_case(request):
    """float32 rows, B queries with one uniformly random positive each, the exact scan's results at
    full depth and at ADORE's depth, and the int8 two-stage index (built once per corpus)."""
    kind, n = request.param
    if kind == "gaussian":
        docs, q = gaussian_unit_rows(n), gaussian_unit_rows(B, seed=1)
    else:
        docs, space = realistic_rows(n)
        q = space.sample(B).numpy()
    rows = np.random.default_rng(0).integers(0, n, B)
    positives = (np.arange(B + 1, dtype=np.int64), rows.astype(np.int64))
    exact = drfast.FlatIndex(docs)
    size = f"{n // 10**6}M" if n >= 10**6 else f"{n // 1000}k"
    yield SimpleNamespace(name=f"uniform positives, {kind} N={size} float32", q=q, positives=positives, exact=exact,
                          int8=drfast.FlatIndex(docs, first_pass="int8"),
                          full=exact.search(q, k=K, positives=positives, cutoff=CUTOFF),
                          depth=exact.search(q, k=K, positives=positives, cutoff=CUTOFF, rank_depth=ADORE_DEPTH))


@pytest.mark.parametrize("method", UNIFORM_METHODS)
def test_uniform_positives(benchmark, record, uniform_case, method):
    c = uniform_case
    index = c.exact if method == "exact" else c.int8
    depth = ADORE_DEPTH if method.endswith("ADORE depth") else None
    benchmark.group = c.name
    run = lambda: index.search(c.q, k=K, positives=c.positives, cutoff=CUTOFF, rank_depth=depth)
    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    ref = c.depth if depth else c.full
    check_and_record(record, c.name, method, out, ref)
    if method != "exact":
        s = index.last_search_stats
        record.note(f"{c.name} {method}: per query {s.refined.mean():.0f} refined, {s.rescored_topk.mean():.0f} "
                    f"rescored for top-k, {s.rescored_ranks.mean():.0f} for ranks (positives' ranks: median "
                    f"{int(np.median(c.full.pos_ranks))}, depth {depth or 'N'})")


NOTES = (
    f"B={B} d={D} k={K} cutoff={CUTOFF}, 1 positive/query at depths 1..N/2; results bit-identical to the exact scan.",
    "int8 = int8 first pass (AVX-512 VNNI, else AVX2) + residual int8 refinement (second bound); "
    "int8-norefine = first bound only; "
    "bf16 = AVX512_BF16 first pass.",
    f"uniform positives: ADORE depth = max(k, cutoff, train.adore.DEFAULT_RANK_DEPTH) = {ADORE_DEPTH}.",
)
