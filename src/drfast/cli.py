"""The `drfast` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

import numpy as np


def _info(args: argparse.Namespace) -> int:
    import drfast

    print(json.dumps(drfast.build_info(), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Build information, then one fused search on random data checked against the torch path."""
    import drfast

    info = drfast.build_info()
    print(f"drfast {info['version']}: SIMD {info['simd']} (supported: {', '.join(info['simd_supported'])}), "
          f"{info['threads']} threads, CUDA kernels {'built' if info['cuda_kernels_built'] else 'not built'}, "
          f"CUDA device {'present' if info['cuda_device_available'] else 'absent'}")
    rng = np.random.default_rng(args.seed)
    n, d, b, k = args.n, args.dim, args.batch, args.k
    print(f"random corpus: N={n:,} d={d} ({args.dtype}), B={b} queries, k={k}, cutoff=10, 1 positive per query")
    docs = rng.standard_normal((n, d), dtype=np.float32).astype(args.dtype)
    queries = rng.standard_normal((b, d), dtype=np.float32)
    positives = [[int(p)] for p in rng.integers(0, n, b)]
    index = drfast.FlatIndex(docs)
    index.search(queries, k=k, positives=positives, cutoff=10)  # warm-up
    t0 = time.perf_counter()
    res = index.search(queries, k=k, positives=positives, cutoff=10)
    native_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = index.search(queries, k=k, positives=positives, cutoff=10, backend="torch")
    torch_s = time.perf_counter() - t0
    agree = float((res.ids == ref.ids).mean())
    max_rank_gap = int(np.abs(res.pos_ranks - ref.pos_ranks).max())
    print(f"fused native search: {native_s:.3f} s   torch chunked reference: {torch_s:.3f} s "
          f"({torch_s / native_s:.2f}x)")
    print(f"top-{k} ids agreeing with the reference: {agree:.2%}; largest positive-rank difference: {max_rank_gap}")
    print(f"positive ranks (first 8): {res.pos_ranks[:8].tolist()}")
    return 0 if agree > 0.99 and max_rank_gap <= 1 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print what this build can do (SIMD, threads, CUDA)").set_defaults(func=_info)
    demo = sub.add_parser("demo", help="build info and a fused search on random data")
    demo.add_argument("--n", type=int, default=200_000, help="corpus rows (default 200000)")
    demo.add_argument("--dim", type=int, default=768)
    demo.add_argument("--batch", type=int, default=32)
    demo.add_argument("--k", type=int, default=200)
    demo.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
