"""The ADORE / JPQ compression table on a BEIR collection: how much of the loss of product quantisation
training recovers, with the query encoder alone or with the PQ centroids too.

Run from the repository root (21 training runs of 1-2 minutes each on 2 idle cores; resumable: a run
whose metrics.json exists is read back, not redone):

    python -m benchmarks.scripts.compression_report [--data $DRFAST_DATA/scifact] [--ms 8 16 48]
        [--seeds 0 1 2] [--output runs/compression]

For every seed S (the training seed and the PQ codebook seed) and every M, on the test split:
  flat  zero-shot            the starting model on the flat index
  flat  ADORE                trained on flat, evaluated on flat
  (a)   zero-shot on pq:M    the starting model on pq:M
  (b)   ADORE flat -> pq:M   trained on flat, evaluated on pq:M (compress after training)
  (c)   ADORE on pq:M        the query encoder trained end to end on pq:M
  (d)   JPQ on pq:M          the query encoder and the PQ centroids trained on pq:M (--train-centroids)
Prints a markdown table (mean ± sd over the seeds of nDCG@10 and MRR@10) and writes
OUTPUT/compression.json and OUTPUT/compression.png (nDCG@10 against bytes per document).
"""
from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, stdev

from drfast.common.atomic import write_json_atomic
from drfast.pipelines import run_adore
from drfast.pipelines.inputs import check_model
from drfast.pipelines.specs import CorpusSpec, EncoderSpec, IndexSpec, OutputSpec, TrainSpec
from drfast.train import AdoreConfig

from benchmarks.scripts import script_parser

VARIANTS = [("(a) zero-shot", "a"), ("(b) ADORE on flat, evaluated on pq:M", "b"),
            ("(c) ADORE on pq:M", "c"), ("(d) JPQ on pq:M (centroids trained)", "d")]
METRICS = ("nDCG@10", "MRR@10")


def cached_run(output: Path, data: str, model: str, index: IndexSpec, config: AdoreConfig,
               also_evaluate_on=()) -> dict:
    """run_adore, or its metrics.json when a finished run is already there."""
    done = output / "metrics.json"
    if done.exists():
        return json.loads(done.read_text())
    return run_adore(CorpusSpec(data), EncoderSpec(model),
                     OutputSpec(output, resume=(output / "run" / "checkpoint.pt").exists()), index, config=config,
                     train=TrainSpec(also_evaluate_on=tuple(also_evaluate_on)))


def fmt(values) -> str:
    return f"{mean(values):.4f} ± {stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--ms", type=int, nargs="+", default=[8, 16, 48])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="runs/compression")
    args = parser.parse_args()
    out = Path(args.output)
    dim = check_model(args.model)  # the flat index's row width, for bytes per document
    results: dict = {}  # (variant, M or "flat") -> {metric: [value per seed]}

    def add(key, metrics):
        for m in METRICS:
            results.setdefault(key, {}).setdefault(m, []).append(metrics[m])

    for seed in args.seeds:
        common = dict(data=args.data, model=args.model)
        flat = cached_run(out / f"flat-s{seed}", index=IndexSpec("flat", seed), config=AdoreConfig(seed=seed),
                          also_evaluate_on=[f"pq:{m}" for m in args.ms], **common)
        add(("zero-shot", "flat"), flat["before"])
        add(("ADORE", "flat"), flat["after"])
        for m in args.ms:
            other = flat["other_indexes"][f"pq:{m}"]
            add(("a", m), other["before"])
            add(("b", m), other["after"])
            pq = cached_run(out / f"pq{m}-s{seed}", index=IndexSpec(f"pq:{m}", seed), config=AdoreConfig(seed=seed),
                            **common)
            add(("c", m), pq["after"])
            jpq = cached_run(out / f"jpq{m}-s{seed}", index=IndexSpec(f"pq:{m}", seed),
                             config=AdoreConfig(seed=seed, train_centroids=True), **common)
            add(("d", m), jpq["after"])

    print(f"{args.data}, test split, {args.model}, seeds {args.seeds} (mean ± sd):\n")
    print("| index | bytes/doc | query encoder | " + " | ".join(METRICS) + " |")
    print("|---|---:|---|" + "---:|" * len(METRICS))
    for label, key in (("zero-shot", "zero-shot"), ("ADORE trained on flat", "ADORE")):
        print(f"| flat | {4 * dim} | {label} | " + " | ".join(fmt(results[(key, 'flat')][m]) for m in METRICS) + " |")
    for m in args.ms:
        for label, key in VARIANTS:
            row = " | ".join(fmt(results[(key, m)][x]) for x in METRICS)
            print(f"| pq:{m} | {m} | {label.replace('pq:M', f'pq:{m}')} | {row} |")
    report = {"data": args.data, "model": args.model, "seeds": args.seeds, "dim": dim,
              "rows": [{"index": "flat" if m == "flat" else f"pq:{m}", "variant": key,
                        "bytes_per_doc": 4 * dim if m == "flat" else m, **vals} for (key, m), vals in results.items()]}
    write_json_atomic(out / "compression.json", report)
    plot(results, args.ms, dim, out / "compression.png")
    print(f"\nwrote {out / 'compression.json'} and {out / 'compression.png'}")


def plot(results: dict, ms, dim: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from drfast.eval.plots import save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, key in VARIANTS:
        ys = [mean(results[(key, m)]["nDCG@10"]) for m in ms]
        sds = [stdev(results[(key, m)]["nDCG@10"]) if len(results[(key, m)]["nDCG@10"]) > 1 else 0 for m in ms]
        ax.errorbar(ms, ys, yerr=sds, marker="o", capsize=3, label=label)
    for key, marker in (("zero-shot", "s"), ("ADORE", "*")):
        ax.plot([4 * dim], [mean(results[(key, "flat")]["nDCG@10"])], marker, markersize=9, label=f"flat fp32, {key}")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per document (pq:M = M bytes; flat = 4 x dim)")
    ax.set_ylabel("nDCG@10 (test)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
