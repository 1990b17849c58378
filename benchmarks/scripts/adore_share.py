"""Share of the part drfast owns (search, weights, gather, loss) in real ADORE steps with
all-MiniLM-L6-v2 at N=100k: SciFact's documents plus random unit-norm distractors up to N rows.

Run from the repository root:

    python -m benchmarks.scripts.adore_share [--data $DRFAST_DATA/scifact] [--n 100000] [--steps 20]

The corpus is encoded once through drfast's cache (about 2.5 minutes the first time).
"""
from __future__ import annotations


import numpy as np

import drfast
from drfast.data import load_beir
from drfast.encode import DEFAULT_CACHE, BiEncoder, encode_corpus
from drfast.train import AdoreConfig, AdoreTrainer

from benchmarks.scripts import script_parser


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    train = load_beir(args.data, "train")
    model = BiEncoder.load(args.model)
    emb, ids = encode_corpus(model.doc_encoder, train.corpus, cache_dir=DEFAULT_CACHE / "embeddings")
    rng = np.random.default_rng(0)
    extra = rng.standard_normal((max(0, args.n - len(ids)), emb.shape[1])).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    index = drfast.FlatIndex(np.concatenate([emb, extra.astype(emb.dtype)]),
                             list(ids) + [f"distractor-{i}" for i in range(len(extra))])
    history = AdoreTrainer(model.query_encoder, index, queries=train.queries, positives=train.positives,
                           config=AdoreConfig(max_steps=args.steps)).train()
    shares = [r["nonencoder_share"] for r in history[2:]]  # the first steps warm up
    steps = [r["step_s"] for r in history[2:]]
    print(f"N={index.ntotal:,}, d={index.dim}: mean step {np.mean(steps):.3f} s (encoder forward and backward, "
          f"tokenisation, optimizer, and drfast's part); drfast's part {np.mean(shares):.1%} of it "
          f"(min {np.min(shares):.1%}, max {np.max(shares):.1%})")


if __name__ == "__main__":
    main()
