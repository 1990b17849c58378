"""The collectives a distributed ADORE / STAR step adds, against one MiniLM ADORE step (CPU, gloo).

Run from the repository root:

    python -m benchmarks.scripts.ddp_overhead [--model all-MiniLM-L6-v2] [--n 20000] [--batch 32] [--steps 8]

1. One process: the mean seconds of an ADORE step (all-MiniLM-L6-v2 query encoder, global batch B,
   k=200, a flat index of N random unit vectors; the SciFact training queries when $DRFAST_DATA/scifact
   is present, else random words), steps 3.. of `--steps`.
2. Two gloo processes (the cores split between them), per step: DDP's gradient all-reduce of every
   parameter of the model, in DDP's 25 MiB buckets (measured apart, without DDP's overlap with the
   backward pass: an upper bound of what it adds), the two scalar all-reduces of the trainer (the
   global count of share_of_mean, the logged loss), and STAR's document gather with gradients
   (all_gather_rows forward + backward of B * 3 documents of the model's dimension).
Prints the medians and each as a share of the one-process ADORE step (target: under 15%).
"""
from __future__ import annotations

import os
import pickle
import statistics
import tempfile
import time

import numpy as np
import torch

from benchmarks.scripts import script_parser

BUCKET_BYTES = 25 * 2**20  # DistributedDataParallel's default bucket_cap_mb


def _queries(data, n):
    from drfast.data import load_beir

    if data and os.path.isdir(data):
        train = load_beir(data, "train")
        qids = sorted(train.positives)[:n]
        return {q: train.queries[q] for q in qids}
    rng = np.random.default_rng(0)
    words = ["dense", "retrieval", "protein", "cell", "gene", "trial", "effect", "risk", "cancer", "dose"]
    return {f"q{i}": " ".join(rng.choice(words, 8)) for i in range(n)}


def one_process_step(args) -> float:
    import drfast
    from drfast.encode import Encoder
    from drfast.train import AdoreConfig, AdoreTrainer

    rng = np.random.default_rng(0)
    encoder = Encoder.load(args.model, role="query")
    emb = rng.standard_normal((args.n, encoder.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = drfast.FlatIndex(emb, doc_ids=[f"d{i}" for i in range(args.n)])
    queries = _queries(args.data, args.batch * args.steps)
    positives = {q: [f"d{int(rng.integers(args.n))}"] for q in queries}
    history = AdoreTrainer(encoder, index, queries=queries, positives=positives,
                           config=AdoreConfig(batch_size=args.batch, max_steps=args.steps, epochs=1)).train()
    return statistics.mean(r["step_s"] for r in history[2:])


def _rank(rank, world, init, out, args):
    import torch.distributed as dist

    from drfast.common.distributed import all_gather_rows, all_reduce_sum, slice_of
    from drfast.encode import Encoder

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    model = Encoder.load(args.model, role="query")
    flat = torch.cat([torch.randn(p.numel()) for p in model.parameters()])
    buckets = list(flat.split(BUCKET_BYTES // 4))
    U = args.batch * 3  # STAR: a positive and two negatives per query
    sizes = [int(np.diff(slice_of(U, r, world))[0]) for r in range(world)]
    times = {"grad_allreduce": [], "scalars": [], "star_gather": []}
    for round_ in range(args.rounds + 1):
        dist.barrier()
        t0 = time.perf_counter()
        for b in buckets:
            dist.all_reduce(b)
        t1 = time.perf_counter()
        all_reduce_sum([1.0])
        all_reduce_sum([1.0])
        t2 = time.perf_counter()
        docs = torch.randn(sizes[rank], model.dim, requires_grad=True)
        all_gather_rows(docs, sizes).sum().backward()
        t3 = time.perf_counter()
        if round_:  # the first round warms up
            for key, s in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[key].append(s)
    with open(os.path.join(out, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump({"params": flat.numel(), "buckets": len(buckets),
                     **{k: statistics.median(v) for k, v in times.items()}}, f)
    dist.destroy_process_group()


def collectives(args) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(2, os.path.join(tmp, "init"), tmp, args), nprocs=2, join=True)
        with open(os.path.join(tmp, "rank0.pkl"), "rb") as f:
            return pickle.load(f)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    step = one_process_step(args)
    comm = collectives(args)
    print(f"{args.model}: {comm['params']:,} parameters ({comm['params'] * 4 / 1e6:.1f} MB fp32, "
          f"{comm['buckets']} buckets of 25 MiB); one-process ADORE step (B={args.batch}, k=200, N={args.n:,}): "
          f"{step:.3f} s")
    print(f"{'collective (2 gloo ranks, per step)':<48}{'seconds':>10}{'share of the step':>20}")
    for key, what in (("grad_allreduce", "DDP gradient all-reduce (no overlap)"),
                      ("scalars", "trainer scalars (count, loss)"),
                      ("star_gather", f"STAR document gather + its backward ({args.batch * 3} docs)")):
        print(f"{what:<48}{comm[key]:>10.4f}{comm[key] / step:>20.1%}")
    total = comm["grad_allreduce"] + comm["scalars"]
    print(f"{'ADORE total (all-reduce + scalars)':<48}{total:>10.4f}{total / step:>20.1%}")


if __name__ == "__main__":
    main()
