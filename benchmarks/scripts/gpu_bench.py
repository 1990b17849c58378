"""GPU speed and memory check (run by benchmarks/gpu_check.sh on a machine with one CUDA GPU).

    python -m benchmarks.scripts.gpu_bench [--sizes 1000000 8841823] [--steps 50] [--gpu-memory 11GB]

1. Search: drfast's CUDA kernel (when built) and torch path against faiss-gpu's GpuIndexFlatIP
   (fp16 storage, top-k only: faiss has no positive ranks) on N random unit rows x 768 (fp16 on the
   GPU), B=32, k=200, one positive per query; the CUDA kernel and the torch path are checked to
   return the same ids and ranks. Median of 5 after a warm-up.
2. ADORE at the largest size under torch.cuda.set_per_process_memory_fraction emulating an
   `--gpu-memory` card: a random 768-d 2-layer BERT query encoder, the memory planner's placement
   for a flat index (int8 first pass) and for pq:96, `--steps` ADORE steps each; median step time
   and the peak GPU memory beside the planner's prediction.
3. The placed two-stage search (FlatIndex(rows, first_pass="int8", first_pass_device="cuda")) at
   `--placed-sizes` rows: the exact rows fp16 on the host, the int8 first pass on the GPU, uniformly
   random positives (one per query) at ADORE's default rank depth; checked bit-identical to the
   native exact scan on the host, and timed against faiss-gpu GpuIndexFlatIP (fp16, the rows on the
   GPU) for the top-k plus a torch rank pass (fp16 matmul over the GPU rows counting the rows above
   each positive), which together give what the fused search gives.
Prints one table.
"""
from __future__ import annotations

import argparse
import string
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import drfast
from drfast.common.sizes import parse_size
from drfast.pipelines.memory_plan import PlannedRun, plan_memory
from drfast.train.adore import DEFAULT_RANK_DEPTH, adore_batch_loss

from benchmarks.scripts.scale_rehearsal import tiny_encoder

B, D, K, CUTOFF = 32, 768, 200, 10


def median_time(fn, repeat: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def random_rows(n: int, seed: int = 0) -> torch.Tensor:
    """[n, D] unit rows in fp16 on the GPU, generated in chunks."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    out = torch.empty(n, D, dtype=torch.float16, device="cuda")
    for i in range(0, n, 1 << 20):
        x = torch.randn(min(1 << 20, n - i), D, device="cuda", generator=g)
        out[i : i + x.shape[0]] = (x / x.norm(dim=1, keepdim=True)).half()
    return out


def search_rows(n: int, rows: list) -> None:
    docs = random_rows(n)
    q = torch.nn.functional.normalize(torch.randn(B, D, device="cuda"), dim=1)
    pos = [[int(p)] for p in torch.randint(0, n, (B,)).tolist()]
    index = drfast.FlatIndex(docs)
    results = {}
    backends = ["torch"] + (["cuda"] if drfast.build_info()["cuda_kernels_built"] else [])
    for backend in backends:
        t = median_time(lambda: index.search(q, k=K, positives=pos, cutoff=CUTOFF, backend=backend))
        results[backend] = index.search(q, k=K, positives=pos, cutoff=CUTOFF, backend=backend)
        rows.append((f"search N={n:,}", f"drfast {backend} (top-k + ranks + weights)", t))
    if len(results) == 2:
        same = (torch.equal(results["torch"].ids, results["cuda"].ids)
                and torch.equal(results["torch"].pos_ranks, results["cuda"].pos_ranks))
        rows.append((f"search N={n:,}", "cuda == torch (ids, ranks)", float(same)))
    try:
        res, fi = faiss_gpu_flat(docs)
        qn = q.cpu().numpy()
        rows.append((f"search N={n:,}", "faiss-gpu GpuIndexFlatIP fp16 (top-k only)",
                     median_time(lambda: fi.search(qn, K))))
    except Exception as e:  # noqa: BLE001 (faiss-gpu missing or no GPU support: say so in the table)
        rows.append((f"search N={n:,}", f"faiss-gpu unavailable: {type(e).__name__}: {e}"[:90], float("nan")))


def rank_pass(docs: torch.Tensor, q: torch.Tensor, pos_rows: torch.Tensor, chunk: int = 1 << 20) -> torch.Tensor:
    """The baseline's ranks: 1 + rows scoring above each query's positive, by fp16 matmuls over the
    GPU rows (what a faiss top-k needs beside it to give ADORE its ranks)."""
    qh = q.half()
    sp = (qh.float() * docs[pos_rows].float()).sum(1)
    counts = torch.zeros(q.shape[0], dtype=torch.int64, device=q.device)
    for i in range(0, docs.shape[0], chunk):
        counts += ((qh @ docs[i : i + chunk].T).float() > sp[:, None]).sum(1)
    return counts + 1


def faiss_gpu_flat(rows: torch.Tensor):
    """faiss-gpu's GpuIndexFlatIP in fp16 over `rows` (added in 1M-row pieces), with its resources."""
    import faiss

    res = faiss.StandardGpuResources()
    cfg = faiss.GpuIndexFlatConfig()
    cfg.useFloat16 = True
    fi = faiss.GpuIndexFlatIP(res, D, cfg)
    for i in range(0, rows.shape[0], 1 << 20):
        fi.add(rows[i : i + (1 << 20)].float().cpu().numpy())
    return res, fi


def placed_search(n: int, rows: list) -> None:
    """Section 3 of the module docstring."""
    case = f"placed N={n:,}"
    gpu_rows = random_rows(n, seed=1)
    host = gpu_rows.cpu().numpy()  # fp16 [n, D] on the host: the exact rows
    q = torch.nn.functional.normalize(torch.randn(B, D, device="cuda"), dim=1)
    qn = q.cpu().numpy()
    pos_rows = torch.randint(0, n, (B,), device="cuda")
    pos = (np.arange(B + 1, dtype=np.int64), pos_rows.cpu().numpy().astype(np.int64))
    depth = max(K, CUTOFF, DEFAULT_RANK_DEPTH)
    t0 = time.perf_counter()
    index = drfast.FlatIndex(host, first_pass="int8", first_pass_device="cuda")
    torch.cuda.synchronize()
    rows.append((case, f"build the int8 first pass and place it on the GPU ({index.first_pass_bytes / 2**30:.1f} GiB)",
                 time.perf_counter() - t0))
    search = lambda: index.search(qn, k=K, positives=pos, cutoff=CUTOFF, rank_depth=depth)
    rows.append((case, f"drfast placed two-stage (GPU first pass, host rows; depth {depth})",
                 median_time(search, repeat=3)))
    stats = index.last_search_stats
    rows.append((case, "  rows rescored on the host per query (mean)", float(stats.rescored.mean())))
    got = search()
    t0 = time.perf_counter()
    want = drfast.FlatIndex(host).search(qn, k=K, positives=pos, cutoff=CUTOFF, rank_depth=depth)
    rows.append((case, "drfast native exact scan on the host (the reference; one run)", time.perf_counter() - t0))
    same = all(np.array_equal(getattr(got, f), getattr(want, f))
               for f in ("ids", "scores", "pos_scores", "pos_ranks", "pair_weights"))
    rows.append((case, "placed == native exact scan (ids, scores, ranks, weights)", float(same)))
    del index
    torch.cuda.empty_cache()
    try:
        res, fi = faiss_gpu_flat(gpu_rows)
        t_topk = median_time(lambda: fi.search(qn, K), repeat=3)
        t_rank = median_time(lambda: rank_pass(gpu_rows, q, pos_rows), repeat=3)
        rows.append((case, "faiss-gpu GpuIndexFlatIP fp16 (top-k only, rows on the GPU)", t_topk))
        rows.append((case, "  + torch rank pass (fp16 matmul, rows on the GPU)", t_topk + t_rank))
        del fi, res
    except Exception as e:  # noqa: BLE001 (faiss-gpu missing or no GPU support: say so in the table)
        rows.append((case, f"faiss-gpu unavailable: {type(e).__name__}: {e}"[:90], float("nan")))
    del gpu_rows
    torch.cuda.empty_cache()


def adore_at_scale(n: int, steps: int, gpu_memory: int, rows: list, workdir: Path) -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_memory / total))
    rng = np.random.default_rng(0)
    words = [" ".join(rng.choice(list(string.ascii_lowercase), 6)) for _ in range(B * steps)]
    positives = rng.integers(0, n, B * steps)
    emb = random_rows(n).cpu().numpy()  # the host copy every placement starts from
    for spec, fp in (("flat", "int8"), ("pq:96", None)):
        encoder = tiny_encoder(workdir).to("cuda")  # the same starting 768-d BERT for each index (saved once)
        plan = plan_memory(PlannedRun(docs=n, dim=D, index=spec, first_pass=fp, model=str(workdir / "tiny-encoder"),
                                      batch_size=B, k=K, document_tower=False), gpu_memory=gpu_memory)
        index = (drfast.FlatIndex(emb, first_pass=fp) if spec == "flat"
                 else drfast.PQIndex.train(emb, m=96, seed=0))
        if plan.placement.get("index") == "gpu":
            index = index.to("cuda")
        opt = torch.optim.AdamW(encoder.parameters(), lr=1e-5)
        torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(steps):
            t0 = time.perf_counter()
            q = encoder(words[step * B : (step + 1) * B])
            loss, _ = adore_batch_loss(q, index, [[int(p)] for p in positives[step * B : (step + 1) * B]], K, CUTOFF)
            opt.zero_grad()
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated()
        rows.append((f"ADORE N={n:,} {spec}" + (f" {fp}" if fp else ""),
                     f"{plan.placement.get('summary', plan.placement)}"[:90], float(np.median(times[1:]))))
        rows.append((f"ADORE N={n:,} {spec}", f"peak GPU {peak / 1e9:.2f} GB, planner {plan.totals.get('gpu', 0) / 1e9:.2f} "
                     f"GB, fits={plan.fits}", float("nan")))
        del index, encoder, opt
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 8_841_823])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--gpu-memory", default="11GB")
    parser.add_argument("--placed-sizes", type=int, nargs="*", default=[8_841_823],
                        help="rows of the placed two-stage search (section 3); none: skip it")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench: torch sees no CUDA device")
    print(drfast.build_info(), torch.cuda.get_device_name(0), flush=True)
    rows: list = []
    for n in args.sizes:
        search_rows(n, rows)  # its rows and indexes are freed on return
        torch.cuda.empty_cache()
        print(rows[-1], flush=True)
    for n in args.placed_sizes:
        placed_search(n, rows)
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        adore_at_scale(max(args.sizes), args.steps, parse_size(args.gpu_memory, "gpu_memory"), rows, Path(tmp))
    print("\n| case | what | seconds (median) |\n|---|---|---:|")
    for case, what, t in rows:
        print(f"| {case} | {what} | {t:.4f} |")


if __name__ == "__main__":
    main()
