"""Corpus encoding speed: drfast's encode_corpus vs sentence-transformers' encode, same model,
batch size and max length, on a BEIR corpus; then the cache hit of a second call.

Run from the repository root:

    python -m benchmarks.scripts.encode_speed [--data $DRFAST_DATA/scifact] [--model all-MiniLM-L6-v2]

Runs the two encoders one after the other in this process (about 5 minutes for SciFact on 2 cores).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from drfast.data import Corpus
from drfast.encode import Encoder, encode_corpus, resolve_model

from benchmarks.scripts import script_parser


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    corpus = Corpus(Path(args.data) / "corpus.jsonl")
    texts = corpus.texts(list(range(len(corpus))))
    path = resolve_model(args.model)
    st = SentenceTransformer(path, device="cpu")
    encoder = Encoder.load(path)
    assert encoder.max_length == st.max_seq_length
    print(f"{len(texts)} documents, batch {args.batch_size}, max length {st.max_seq_length}, "
          f"{torch.get_num_threads()} torch threads")

    t0 = time.perf_counter()
    reference = st.encode(texts, batch_size=args.batch_size)
    st_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        emb, _ = encode_corpus(encoder, corpus, cache_dir=cache, dtype="float32", batch_size=args.batch_size,
                               show_progress=False)
        drfast_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        encode_corpus(encoder, corpus, cache_dir=cache, dtype="float32", batch_size=args.batch_size,
                      show_progress=False)
        cached_s = time.perf_counter() - t0
        diff = float(np.abs(np.asarray(emb) - reference).max())
    print("| encoder | seconds | docs/s |\n|---|---:|---:|")
    print(f"| sentence-transformers encode | {st_s:.1f} | {len(texts) / st_s:.1f} |")
    print(f"| drfast encode_corpus | {drfast_s:.1f} | {len(texts) / drfast_s:.1f} |")
    print(f"| drfast encode_corpus, second call (cache hit) | {cached_s:.2f} | |")
    print(f"largest difference between the embeddings: {diff:.2e}")


if __name__ == "__main__":
    main()
