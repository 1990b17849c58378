"""ShardedIndex as a drfast.Index (2 gloo processes): device, to, save (one folder of all rows that
load_index reads), rank_depth, and a failing save raising on every rank."""
import os
import pickle
import tempfile

import numpy as np
import pytest
import torch

import drfast


def _worker(rank, world, tmp):
    import torch.distributed as dist

    drfast.set_num_threads(1)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    with open(os.path.join(tmp, "case.pkl"), "rb") as f:
        case = pickle.load(f)
    emb, ids, q, pos = case["emb"], case["ids"], case["q"][rank], case["pos"][rank]
    lo, hi = (0, 130) if rank == 0 else (130, len(emb))
    out = {}
    sh = drfast.ShardedIndex(drfast.FlatIndex(emb[lo:hi], first_pass="int8"), doc_ids=ids)
    out["protocol"] = isinstance(sh, drfast.Index) and sh.device == torch.device("cpu")
    moved = sh.to("cpu")
    out["moved"] = moved.search(q, k=7, positives=pos).ids
    out["deep"] = sh.search(q, k=7, positives=pos, cutoff=5, rank_depth=10)
    sh.save(os.path.join(tmp, "flat"))
    pq_full = case["pq"]
    pq = drfast.ShardedIndex(drfast.PQIndex(pq_full["centroids"], pq_full["codes"][lo:hi]))
    pq.save(os.path.join(tmp, "pq"))
    try:
        sh.save(os.path.join(tmp, "a_file"))  # not an index: refused on rank 0, raised on both
    except (FileExistsError, RuntimeError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    with open(os.path.join(tmp, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:PQ codebooks trained on")
def test_sharded_index_protocol_members(rng):
    import torch.multiprocessing as mp

    N, d = 300, 16
    emb = rng.standard_normal((N, d)).astype(np.float32)
    ids = [f"doc{i}" for i in range(N)]
    q = [rng.standard_normal((3, d)).astype(np.float32), rng.standard_normal((2, d)).astype(np.float32)]
    pos = [[[5, 200], [], [299]], [[0, 1, 150], [42]]]
    pq = drfast.PQIndex.train(emb, m=4)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "case.pkl"), "wb") as f:
            pickle.dump(dict(emb=emb, ids=ids, q=q, pos=pos, pq=dict(centroids=pq.centroids.numpy(), codes=pq.codes)), f)
        with open(os.path.join(tmp, "a_file"), "w") as f:
            f.write("mine")
        mp.spawn(_worker, args=(2, tmp), nprocs=2, join=True)
        out = []
        for r in range(2):
            with open(os.path.join(tmp, f"rank{r}.pkl"), "rb") as f:
                out.append(pickle.load(f))
        saved = drfast.load_index(os.path.join(tmp, "flat"))
        saved_pq = drfast.load_index(os.path.join(tmp, "pq"))
        assert open(os.path.join(tmp, "a_file")).read() == "mine"
    full = drfast.FlatIndex(emb, ids)
    assert saved.first_pass_kind == "int8" and np.array_equal(np.asarray(saved.emb), emb)
    assert [saved.doc_ids[i] for i in (0, 299)] == ["doc0", "doc299"]
    assert np.array_equal(np.asarray(saved_pq.codes), pq.codes) and torch.equal(saved_pq.centroids, pq.centroids)
    for r in range(2):
        assert out[r]["protocol"]
        ref = full.search(q[r], k=7, positives=pos[r], cutoff=5, rank_depth=10)
        np.testing.assert_array_equal(out[r]["moved"], ref.ids)
        for field in ("ids", "scores", "pos_ranks", "pos_scores", "pair_weights"):
            np.testing.assert_array_equal(getattr(out[r]["deep"], field), getattr(ref, field), err_msg=field)
        assert out[r]["deep"].pos_ranks.max() <= 11
    assert out[0]["error"].startswith("FileExistsError"), out[0]
    assert out[1]["error"] == "RuntimeError: save failed on rank(s) [0] (see the error raised there)", out[1]
