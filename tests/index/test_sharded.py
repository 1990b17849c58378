"""ShardedIndex against one index over all rows, bit for bit: 2 and 3 gloo processes on the CPU.

The parent builds the cases (fresh random data; ties, duplicates across shards, positives on every
shard, empty positive lists, k > N, a rank without queries, a one-row shard, fp16, two-stage, PQ),
the spawned ranks search their shards and write their results, and the parent compares them with
FlatIndex / PQIndex over all rows. Also the given-scores kernels in one process and the pair weights.
"""
import os
import pickle
import tempfile

import numpy as np
import pytest
import torch

import drfast
from drfast.search import fused as dispatch
from drfast.search.validate import check_positives

pytestmark = pytest.mark.filterwarnings("ignore:PQ codebooks trained on")
from drfast.search.torch_path import pair_weights


# ---- cases -------------------------------------------------------------------------------------------
def _positives(rng, B, N, max_pos=4, must=()):
    """Per-query lists of distinct global rows (some empty); `must` rows go to the first queries."""
    out = []
    for b in range(B):
        n = int(rng.integers(0, max_pos + 1)) if b % 3 else 0  # every third list empty
        ps = list(rng.choice(N, size=min(n, N), replace=False))
        if b < len(must) and must[b] not in ps:
            ps.append(must[b])
        out.append([int(p) for p in ps])
    return out


def _split_queries(rng, queries, positives, Bs):
    out, at = [], 0
    for b in Bs:
        out.append((queries[at:at + b], positives[at:at + b]))
        at += b
    return out


def make_cases(rng, world):
    cases = []

    def add(name, rows, sizes, Bs, k, cutoff, kind="flat", first_pass=None, data=None):
        N = rows.shape[0] if rows is not None else data["codes"].shape[0]
        d = rows.shape[1] if rows is not None else data["dim"]
        B = sum(Bs)
        queries = rng.standard_normal((B, d)).astype(np.float32)
        if name.startswith("ties"):
            queries = rng.integers(-1, 2, (B, d)).astype(np.float32)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        must = [int(rng.integers(bounds[r], bounds[r + 1])) for r in range(world)]  # a positive on every shard
        positives = _positives(rng, B, N, must=must)
        cases.append(dict(name=name, rows=rows, sizes=list(sizes), per_rank=_split_queries(rng, queries, positives, Bs),
                          queries=queries, positives=positives, k=k, cutoff=cutoff, kind=kind,
                          first_pass=first_pass, data=data,
                          recon=[rng.integers(0, N, int(rng.integers(0, 7))) for _ in range(world)]))

    def split(N):
        cuts = np.sort(rng.choice(np.arange(1, N), world - 1, replace=False))
        return list(np.diff(np.concatenate([[0], cuts, [N]])))

    Bs = [int(rng.integers(1, 6)) for _ in range(world)]
    rows = rng.standard_normal((700, 24)).astype(np.float32)
    add("random", rows, split(700), Bs, 50, 10)
    # ties: few distinct integer values, and the first shard's rows repeated in the others
    t = rng.integers(-1, 2, (300, 6)).astype(np.float32)
    t[150:] = t[:150]  # duplicates, most of them across shards
    sizes = split(300)
    add("ties", t, sizes, [int(rng.integers(1, 5)) for _ in range(world)], 40, 5)
    # k > N, a one-row shard, a rank with no queries
    small = rng.integers(-2, 3, (30, 4)).astype(np.float32)
    sizes = [1] + split(29)[: world - 1]
    sizes[-1] += 30 - sum(sizes)
    add("k_gt_n", small, sizes, [0] + [3] * (world - 1), 45, 100)
    add("fp16", rng.standard_normal((400, 20)).astype(np.float16), split(400), Bs, 25, 3)
    add("two_stage", rows, split(700), Bs, 30, 10, first_pass="int8")
    add("two_stage_ties", t, split(300), Bs, 20, 5, first_pass="bf16")
    # PQ: codebooks and codes built once over all rows, the codes split
    emb = rng.standard_normal((600, 16)).astype(np.float32)
    pq = drfast.PQIndex.train(emb, m=4, seed=0)
    data = dict(centroids=pq.centroids.numpy(), codes=pq.codes, dim=16)
    add("pq", None, split(600), Bs, 60, 10, kind="pq", data=data)
    add("pq_k_gt_n", None, [1] + split(599)[:world - 1] if world > 1 else [600], [2] * world, 700, 700, kind="pq",
        data=dict(data, codes=pq.codes))
    for c in cases:
        s = c["sizes"]
        s[-1] += (c["rows"].shape[0] if c["rows"] is not None else c["data"]["codes"].shape[0]) - sum(s)
        assert min(s) >= 1, s
    return cases


def build(case, lo, hi):
    if case["kind"] == "pq":
        d = case["data"]
        return drfast.PQIndex(d["centroids"], d["codes"][lo:hi])
    return drfast.FlatIndex(case["rows"][lo:hi], first_pass=case["first_pass"])


# ---- the ranks -----------------------------------------------------------------------------------------
def _worker(rank, world, init_file, cases_file, out_dir):
    import torch.distributed as dist

    drfast.set_num_threads(1)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    with open(cases_file, "rb") as f:
        cases = pickle.load(f)
    results = {}
    for case in cases:
        bounds = np.concatenate([[0], np.cumsum(case["sizes"])])
        sh = drfast.ShardedIndex(build(case, bounds[rank], bounds[rank + 1]))
        assert sh.ntotal == bounds[-1] and sh.local_rows == range(bounds[rank], bounds[rank + 1])
        q, pos = case["per_rank"][rank]
        res = sh.search(q, k=case["k"], positives=pos, cutoff=case["cutoff"])
        res_t = sh.search(torch.from_numpy(q), k=case["k"], positives=pos)  # torch in, torch out; no cutoff
        assert isinstance(res_t.ids, torch.Tensor) and res_t.pair_weights is None
        assert np.array_equal(res_t.ids.numpy(), res.ids)
        results[case["name"]] = dict(vars(res), recon=sh.reconstruct(case["recon"][rank]).detach().numpy())
    # a failure on one rank raises on every rank (no hang)
    case = cases[0]
    bounds = np.concatenate([[0], np.cumsum(case["sizes"])])
    sh = drfast.ShardedIndex(build(case, bounds[rank], bounds[rank + 1]))
    q, pos = case["per_rank"][rank]
    try:
        sh.search(q, k=0 if rank == world - 1 else 5)
    except (ValueError, RuntimeError) as e:
        results["_error"] = f"{type(e).__name__}: {e}"
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)
    dist.barrier()  # no rank tears gloo down while another still reads its last collective
    dist.destroy_process_group()


def _run(world, cases):
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        cases_file = os.path.join(tmp, "cases.pkl")
        with open(cases_file, "wb") as f:
            pickle.dump(cases, f)
        mp.spawn(_worker, args=(world, os.path.join(tmp, "init"), cases_file, tmp), nprocs=world, join=True)
        out = []
        for r in range(world):
            with open(os.path.join(tmp, f"rank{r}.pkl"), "rb") as f:
                out.append(pickle.load(f))
        return out


def _same(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    if a.dtype == np.float32:  # bit for bit, signed zeros included
        a, b = a.view(np.int32), b.view(np.int32)
    assert np.array_equal(a, b), what


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_matches_one_index(world, rng):
    cases = make_cases(rng, world)
    per_rank = _run(world, cases)
    for case in cases:
        full = build(case, 0, None)
        for rank in range(world):
            q, pos = case["per_rank"][rank]
            got = per_rank[rank][case["name"]]
            where = f"{case['name']} rank {rank}"
            if q.shape[0] == 0:
                assert got["ids"].shape == (0, case["k"]) and got["pos_ranks"].shape == (0,)
            else:
                ref = full.search(q, k=case["k"], positives=pos, cutoff=case["cutoff"])
                for f in ("ids", "scores", "pos_offsets", "pos_ids", "pos_scores", "pos_ranks", "pair_weights"):
                    _same(got[f], getattr(ref, f), f"{where}: {f}")
            _same(got["recon"], full.reconstruct(case["recon"][rank]).detach().numpy(), f"{where}: reconstruct")
    errors = [r["_error"] for r in per_rank]
    assert errors[-1].startswith("UsageError: k:"), errors
    assert all(e.startswith("RuntimeError: search: argument checking failed on rank(s)") for e in errors[:-1]), errors


# ---- one process -----------------------------------------------------------------------------------------
def test_needs_torch_distributed():
    import torch.distributed as dist

    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        drfast.ShardedIndex(drfast.FlatIndex(np.ones((3, 2), np.float32)))


def _bits(x):
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.view(np.int32) if x.dtype == np.float32 else x


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8", "bf16", "pq", "torch", "pq_torch"])
def test_given_scores_split_in_two(kind, rng):
    """Two halves searched with the owners' scores (out-of-range ids for the other half's positives):
    counts add up to the global ranks, and the owners' scores equal the full search's, bit for bit."""
    N, d, B = 300, 16, 5
    emb = rng.integers(-2, 3, (N, d)).astype(np.float32) if kind in ("int8", "torch") else \
        rng.standard_normal((N, d)).astype(np.float32)
    emb[150:170] = emb[:20]  # duplicates across the halves
    q = rng.integers(-2, 3, (B, d)).astype(np.float32)
    positives = _positives(rng, B, N, must=[3, 200])
    backend = "torch" if "torch" in kind else None
    if kind.startswith("pq"):
        full = drfast.PQIndex.train(rng.standard_normal((N, d)).astype(np.float32), m=4)
        halves = [drfast.PQIndex(full.centroids, full.codes[:140]), drfast.PQIndex(full.centroids, full.codes[140:])]
    else:
        e = emb.astype(np.float16) if kind == "fp16" else emb
        fp = kind if kind in ("int8", "bf16") else None
        full = drfast.FlatIndex(e)
        halves = [drfast.FlatIndex(e[:140], first_pass=fp), drfast.FlatIndex(e[140:], first_pass=fp)]
    ref = full.search(q, k=N, positives=positives, backend=backend)
    off, ids = check_positives(positives, B, N)
    counts, owner_scores = np.zeros(ids.shape[0], np.int64), np.full(ids.shape[0], np.nan, np.float32)
    qt = torch.from_numpy(q)
    for lo, h in zip((0, 140), halves):
        local = ids - lo
        own = (local >= 0) & (local < h.ntotal)
        sub_off = np.concatenate([[0], np.cumsum([own[off[b]:off[b + 1]].sum() for b in range(B)])]).astype(np.int64)
        if kind.startswith("pq"):
            s = dispatch.positive_scores("pq", h.lookup_tables(qt), h.codes, sub_off, local[own], backend or "native")
        else:
            s = dispatch.positive_scores("flat", q, h.emb, sub_off, local[own], backend or "native")
        owner_scores[own] = s.numpy()
    _same(owner_scores, ref.pos_scores, "owner scores")
    for lo, h in zip((0, 140), halves):
        if kind.startswith("pq"):
            res = dispatch.pq_search(q, h, h.ntotal, (off, ids - lo), None, backend, None, owner_scores)
        elif h.first_pass_kind:
            res, _ = dispatch_two_stage(q, h, (off, ids - lo), owner_scores)
        else:
            res = dispatch.flat_search(q, h.emb, h.ntotal, (off, ids - lo), None, backend, None, owner_scores)
        _same(res.pos_scores, owner_scores, "given scores copied")
        counts += res.pos_ranks - 1
    _same(counts + 1, ref.pos_ranks, "ranks")


def dispatch_two_stage(q, h, positives, given):
    from drfast.search.two_stage import two_stage_search

    return two_stage_search(q, h.emb, h.first_pass_data, h.ntotal, positives, None, None, None, given)


def test_given_scores_validation(rng):
    emb = rng.standard_normal((10, 4)).astype(np.float32)
    q = emb[:2].copy()
    pos = (np.array([0, 1, 2]), np.array([-5, 12]))
    with pytest.raises(ValueError, match="^pos_scores: expected shape"):
        dispatch.flat_search(q, emb, 3, pos, pos_scores=np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="^pos_scores: expected dtype float32"):
        dispatch.flat_search(q, emb, 3, pos, pos_scores=np.zeros(2))
    with pytest.raises(ValueError, match="^pos_scores: contains NaN"):
        dispatch.flat_search(q, emb, 3, pos, pos_scores=np.array([np.nan, 0], np.float32))
    with pytest.raises(ValueError, match="^pos_scores: given positive scores cannot be combined with a cutoff"):
        dispatch.flat_search(q, emb, 3, pos, cutoff=2, pos_scores=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="^positives: row id -5 is out of range"):
        dispatch.flat_search(q, emb, 3, pos)
    # the bindings' own check: out-of-range ids only with given scores
    out = [np.zeros((2, 3), np.int64), np.zeros((2, 3), np.float32), np.zeros(2, np.float32), np.zeros(2, np.int64)]
    with pytest.raises(ValueError, match="pos_ids: row id out of range"):
        dispatch.unchecked_native_search("flat", q, emb, 3, pos[0], pos[1], 0, *out)
    res = dispatch.flat_search(q, emb, 3, pos, pos_scores=np.array([1e30, -1e30], np.float32))
    assert res.pos_ranks.tolist() == [1, 11]  # above every row / below every row (and above none of them)


def test_pair_weights_equal_native_bit_for_bit(rng):
    """search.torch_path.pair_weights (the sharded merge's weights) == the native kernel's, bit for bit."""
    for N, k, cutoff in ((200, 50, 10), (30, 45, 100), (500, 20, 1), (80, 80, 7)):
        emb = rng.integers(-2, 3, (N, 6)).astype(np.float32)
        q = rng.integers(-2, 3, (6, 6)).astype(np.float32)
        positives = _positives(rng, 6, N, max_pos=6)
        res = drfast.FlatIndex(emb).search(q, k=k, positives=positives, cutoff=cutoff)
        pq = torch.repeat_interleave(torch.arange(6), torch.from_numpy(np.diff(res.pos_offsets)))
        w = pair_weights(torch.from_numpy(res.ids), pq, torch.from_numpy(res.pos_ids),
                         torch.from_numpy(res.pos_ranks), min(cutoff, max(N, k)))
        _same(w.numpy(), res.pair_weights, "pair weights")
