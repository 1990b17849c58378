"""The paper's Table 2 pattern on a BEIR collection: negative-sampling methods trained for the same
number of steps from the same warm-up model, then ADORE on top of each, with paired t-tests
against In-Batch. Not part of CI (about 10 minutes per method on 2 cores with the defaults).

Run from the repository root:

    python -m benchmarks.scripts.reproduce_table2 [--data $DRFAST_DATA/scifact] [--epochs 4] [--output runs/table2]

Methods: In-Batch, Rand Neg, Static (BM25 negatives), STAR (the warm-up model's static negatives plus
in-batch reuse), TriSampler (its negatives with the STAR loss); "+ ADORE" trains the query tower of
each result against the index of its own document tower. Prints a markdown table.
"""
from __future__ import annotations

import json
from pathlib import Path

from drfast.eval import evaluate, paired_ttest, read_trec_run
from drfast.pipelines import run_adore, run_star
from drfast.pipelines.specs import CorpusSpec, EncoderSpec, OutputSpec, TrainSpec
from drfast.train import AdoreConfig, StarConfig

from benchmarks.scripts import script_parser

METHODS = [("In-Batch", "inbatch", "model"), ("Rand Neg", "randneg", "model"), ("Static (BM25)", "static", "bm25"),
           ("STAR", "star", "model"), ("TriSampler", "trisampler", "model")]


def per_query(run_dir: Path, qrels) -> dict:
    return evaluate(read_trec_run(run_dir / "run.trec"), qrels, ("nDCG@10",), per_query=True)[1]["nDCG@10"]


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/table2")
    args = parser.parse_args()

    from drfast.cli import main as cli
    from drfast.data import load_beir

    qrels = load_beir(args.data, "test").qrels
    out = Path(args.output)
    rows = []
    for label, method, negatives in METHODS:
        star_dir = out / method
        run_star(CorpusSpec(args.data), EncoderSpec(args.model), OutputSpec(star_dir),
                 config=StarConfig(method=method, epochs=args.epochs, seed=args.seed),
                 train=TrainSpec(negatives=negatives))
        run_adore(CorpusSpec(args.data), EncoderSpec(star_dir / "model" / "document", star_dir / "model" / "query"),
                  OutputSpec(star_dir / "adore"), config=AdoreConfig(epochs=args.epochs, seed=args.seed))
        for name, sub, query in ((label, "eval", "query"), (label + " + ADORE", "adore-eval", None)):
            qm = str(star_dir / "model" / "query") if query else str(star_dir / "adore" / "query_encoder")
            cli(["evaluate", "--data", args.data, "--split", "test", "--model", str(star_dir / "model" / "document"),
                 "--query-model", qm, "--output", str(star_dir / sub)])
            rows.append((name, json.loads((star_dir / sub / "metrics.json").read_text())["metrics"],
                         per_query(star_dir / sub, qrels)))
    base = rows[0][2]
    print("| method | nDCG@10 | MRR@10 | R@100 | t-test vs In-Batch (nDCG@10) |\n|---|---:|---:|---:|---|")
    for name, m, pq in rows:
        t, p = paired_ttest(pq, base)
        mark = "" if pq is base else (f"p={p:.3f}" + (" *" if p < 0.05 else ""))
        print(f"| {name} | {m['nDCG@10']:.4f} | {m['MRR@10']:.4f} | {m['R@100']:.4f} | {mark} |")


if __name__ == "__main__":
    main()
