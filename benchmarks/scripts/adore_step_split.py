"""Where one ADORE step's non-encoder time goes: search, gather, loss and backward, step by step.

    python -m benchmarks.scripts.adore_step_split --index flat|pq [--docs 1000000] [--first-pass auto] [--steps 12]

The data are bench_adore_step.py's (random unit rows for flat; m=96 random centroids and codes for
PQ; B=32 queries pulled towards their positives, k=200, cutoff 10). Every step starts from the same
queries; the first two are warm-up. Prints the median and the maximum of each part over the rest,
the non-search part (gather + loss + backward) as a share of the search, and the slowest step over
the median step (how stable the step is from run to run).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import drfast
from benchmarks.bench_adore_step import CUTOFF, D, K, pq_data, queries_and_positives, unit_rows
from drfast.train import adore_batch_loss

WARMUP = 2


def build(kind: str, n: int, first_pass):
    if kind == "pq":
        centroids, codes = pq_data(n)
        index = drfast.PQIndex(centroids, codes)
        return index, index.reconstruct(torch.arange(n)).numpy()
    rows = unit_rows(n, D, seed=0)
    return drfast.FlatIndex(rows, first_pass=first_pass), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", choices=["flat", "pq"], default="flat")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--first-pass", default=None, help="flat only: auto|int8|int8-lean|bf16|none")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    if args.steps <= WARMUP:
        parser.error(f"--steps: expected more than {WARMUP} (the warm-up steps)")

    index, vectors = build(args.index, args.docs, args.first_pass)
    q0, positives = queries_and_positives(vectors, args.docs, D)
    parts = []
    for step in range(args.steps):
        q = torch.from_numpy(q0.copy()).requires_grad_()
        t0 = time.perf_counter()
        loss, info = adore_batch_loss(q, index, positives, k=K, cutoff=CUTOFF)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if step >= WARMUP:
            parts.append((info["search_s"], info["gather_s"], info["loss_s"], t2 - t1, t2 - t0))
    p = np.array(parts)
    names = ("search", "gather", "loss", "backward", "step")
    print(f"{index!r}, {args.steps - WARMUP} steps after {WARMUP} warm-up")
    for j, name in enumerate(names):
        print(f"  {name:<9} median {np.median(p[:, j]):.4f} s   max {p[:, j].max():.4f} s")
    share = p[:, 1:4].sum(1) / p[:, 0]
    print(f"  non-search / search: median {np.median(share):.1%}, max {share.max():.1%}")
    print(f"  slowest step / median step: {p[:, 4].max() / np.median(p[:, 4]):.2f}")


if __name__ == "__main__":
    main()
