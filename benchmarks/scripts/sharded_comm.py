"""Communication vs search in one ShardedIndex step, at world size 1 and 2 (gloo, CPU), and the bytes.

Run from the repository root:

    python -m benchmarks.scripts.sharded_comm [--n 200000] [--dim 768] [--batch 32] [--k 200] [--rounds 5]

N rows split evenly over the ranks (float32), B queries per rank with one positive each (on a
random shard), k, cutoff 10; then `reconstruct` of the B*k candidate rows each rank needs for its
loss. The cores are split between the ranks (world 1: all of them; world 2: half each), so the
search time per rank halves while the collectives are added. Prints the median seconds per step of
`last_search_stats` and the bytes this rank sent, then the formula and its MS MARCO figures.
"""
from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time

import numpy as np
import torch

STEPS = ("meta", "queries", "positives", "pos_scores", "local_search", "counts", "topk", "merge")


def _rank(rank, world, init, out, args):
    import torch.distributed as dist

    import drfast

    threads = max(1, (os.cpu_count() or 1) // world)
    drfast.set_num_threads(threads)
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    n_local = args.n // world
    rng = np.random.default_rng(rank)
    rows = rng.standard_normal((n_local, args.dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    sh = drfast.ShardedIndex(drfast.FlatIndex(rows))
    q = rng.standard_normal((args.batch, args.dim), dtype=np.float32)
    positives = [[int(p)] for p in rng.integers(0, sh.ntotal, args.batch)]
    stats, recon = [], []
    for r in range(args.rounds + 1):
        res = sh.search(q, k=args.k, positives=positives, cutoff=10)
        dist.barrier()
        t0 = time.perf_counter()
        sh.reconstruct(res.ids.reshape(-1))
        t = time.perf_counter() - t0
        if r:  # the first round warms up
            stats.append(sh.last_search_stats)
            recon.append(t)
    med = {s: statistics.median(x["seconds"].get(s, 0.0) for x in stats) for s in STEPS + ("total",)}
    summary = dict(seconds=med, bytes=stats[-1]["bytes_sent"], recon_s=statistics.median(recon),
                   recon_bytes=args.batch * args.k * args.dim * 4 * (world - 1) / world, threads=threads)
    with open(os.path.join(out, f"r{rank}.pkl"), "wb") as f:
        pickle.dump(summary, f)
    dist.destroy_process_group()


def measure(world, args):
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(world, os.path.join(tmp, "init"), tmp, args), nprocs=world, join=True)
        with open(os.path.join(tmp, "r0.pkl"), "rb") as f:
            return pickle.load(f)


def formula(W, B, d, k, nnz):
    """Bytes one rank sends per step (ring collectives), W ranks, B queries and nnz positives per rank."""
    return {
        "queries B d 4 (W-1)": B * d * 4 * (W - 1),
        "positives (B + nnz) 8 (W-1)": (B + nnz) * 8 * (W - 1),
        "positive scores 2 nnz 4 (W-1)": 2 * nnz * 4 * (W - 1),
        "counts 2 nnz 8 (W-1)": 2 * nnz * 8 * (W - 1),
        "top-k B k 12 (W-1)": B * k * 12 * (W - 1),
        "candidate rows B k d 4 (W-1)/W": B * k * d * 4 * (W - 1) / W,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    res = {w: measure(w, args) for w in (1, 2)}
    print(f"\n## One ShardedIndex step, N={args.n} x {args.dim} float32, B={args.batch} per rank, k={args.k}, "
          f"gloo on the CPU (median of {args.rounds}; rank 0)\n")
    print("| step | world 1 s | world 2 s | world 2 bytes sent |")
    print("|---|---:|---:|---:|")
    for s in STEPS + ("total",):
        print(f"| {s} | {res[1]['seconds'][s]:.4f} | {res[2]['seconds'][s]:.4f} | {res[2]['bytes'].get(s, 0):,} |")
    print(f"| reconstruct B*k rows | {res[1]['recon_s']:.4f} | {res[2]['recon_s']:.4f} | "
          f"{int(res[2]['recon_bytes']):,} |")
    print(f"\nthreads per rank: world 1 {res[1]['threads']}, world 2 {res[2]['threads']}")
    print("\n## Bytes one rank sends per step (formula), MS MARCO: N=8.8M x 768, B=32 per GPU, k=200, "
          "1 positive per query\n")
    print("| part | 4 GPUs | 8 GPUs |")
    print("|---|---:|---:|")
    f4, f8 = formula(4, 32, 768, 200, 32), formula(8, 32, 768, 200, 32)
    for key in f4:
        print(f"| {key} | {f4[key] / 1e6:.3f} MB | {f8[key] / 1e6:.3f} MB |")
    print(f"| total | {sum(f4.values()) / 1e6:.2f} MB | {sum(f8.values()) / 1e6:.2f} MB |")
    print(f"| rows per GPU (fp32 search bytes read) | {8.8e6 / 4 * 768 * 4 / 1e9:.2f} GB | "
          f"{8.8e6 / 8 * 768 * 4 / 1e9:.2f} GB |")


if __name__ == "__main__":
    main()
