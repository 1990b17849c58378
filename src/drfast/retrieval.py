"""From a model and a BEIR collection to indexes, runs and trec_eval-exact metrics.

The glue the CLI and the trainers share: build an index from a spec ("flat", "pq:M", "opq:M"),
encode and retrieve queries in batches with the fused search, evaluate a (query) model.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .index import FlatIndex
from .pq_index import PQIndex

DEFAULT_CACHE = Path(os.environ.get("DRFAST_CACHE", Path.home() / ".cache" / "drfast"))


def parse_index_spec(spec: str) -> tuple[str, int]:
    """("flat", 0), ("pq", M) or ("opq", M) from "flat", "pq:M" or "opq:M"."""
    if spec == "flat":
        return "flat", 0
    kind, _, m = spec.partition(":")
    if kind in ("pq", "opq") and m.isdigit() and int(m) > 0:
        return kind, int(m)
    raise ValueError(f"index: expected 'flat', 'pq:M' or 'opq:M' (M sub-vectors, a divisor of the dimension), got {spec!r}")


def build_index(emb: Any, doc_ids: Sequence[str], spec: str = "flat", seed: int = 0):
    """A FlatIndex over `emb`, or a PQIndex trained on it with faiss."""
    kind, m = parse_index_spec(spec)
    if kind == "flat":
        return FlatIndex(emb, doc_ids)
    return PQIndex.train(emb, m=m, seed=seed, opq=kind == "opq", doc_ids=doc_ids)


def retrieve(index, query_encoder, queries: Dict[str, str], k: int = 100, batch_size: int = 64,
             show_progress: bool = True) -> Dict[str, Dict[str, float]]:
    """Run dict {qid: {doc_id: score}} of each query's top-k by the fused search."""
    qids = list(queries)
    run: Dict[str, Dict[str, float]] = {}
    doc_ids = index.doc_ids
    for start in tqdm(range(0, len(qids), batch_size), desc="retrieving", unit="batch", disable=not show_progress):
        batch = qids[start:start + batch_size]
        emb = query_encoder.encode([queries[q] for q in batch], batch_size=batch_size)
        res = index.search(np.ascontiguousarray(emb, dtype=np.float32), k=min(k, index.ntotal))
        for qid, ids, scores in zip(batch, res.ids, res.scores):
            run[qid] = {doc_ids[i]: float(s) for i, s in zip(ids, scores) if i >= 0}
    return run


def corpus_index(data_dir: str | os.PathLike, model: str, spec: str, cache_dir: Optional[str | os.PathLike] = None,
                 dtype: str = "float16", batch_size: int = 32, seed: int = 0, encoders=None, timings=None):
    """The index of a BEIR folder's corpus: encoded with `model`'s document tower (cached under
    `cache_dir`), then indexed per `spec`. Records its timings in `timings`."""
    from .corpus_encoding import encode_corpus
    from .data import Corpus
    from .encoders import BiEncoder

    timings = {} if timings is None else timings
    encoders = encoders or BiEncoder.load(model)
    corpus = Corpus(Path(data_dir) / "corpus.jsonl")
    t0 = time.perf_counter()
    emb, doc_ids = encode_corpus(encoders.doc_encoder, corpus, Path(cache_dir or DEFAULT_CACHE) / "embeddings",
                                 dtype=dtype, batch_size=batch_size)
    timings["encode_corpus_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    index = build_index(emb, doc_ids, spec, seed)
    timings["build_index_s"] = round(time.perf_counter() - t0, 3)
    return index


def evaluate_model(data_dir: str | os.PathLike, split: str, model: str, query_model: Optional[str] = None,
                   spec: str = "flat", k: int = 100, cache_dir: Optional[str | os.PathLike] = None,
                   dtype: str = "float16", batch_size: int = 32, seed: int = 0, encoder_options: Optional[dict] = None,
                   measures: Sequence[str] = ("nDCG@10", "MRR@10", "MRR@100", "R@100")) -> dict:
    """Metrics of `model` (documents; and queries unless `query_model`) on a BEIR split:
    {"metrics": {...}, "per_query": {...}, "run": {...}, "timings": {...}}."""
    from .data import load_beir
    from .encoders import BiEncoder
    from .evaluation import evaluate

    parse_index_spec(spec)  # fail before any encoding
    timings: dict = {}
    data = load_beir(data_dir, split)
    encoders = BiEncoder.load(model, query_model, **(encoder_options or {}))
    index = corpus_index(data_dir, model, spec, cache_dir, dtype, batch_size, seed, encoders, timings)
    t0 = time.perf_counter()
    with torch.inference_mode():
        run = retrieve(index, encoders.query_encoder, data.queries, k=k)
    timings["retrieve_s"] = round(time.perf_counter() - t0, 3)
    means, per_query = evaluate(run, data.qrels, measures, per_query=True)
    return {"metrics": means, "per_query": per_query, "run": run, "timings": timings}


def evaluate_model_encoders(data_dir, data, encoders, cache_dir=None, dtype: str = "float16", timings=None,
                            label: str = "", k: int = 100) -> dict:
    """Official metrics of in-memory encoders on a loaded split (flat index; the corpus is encoded
    with the current document tower, cached by its weights)."""
    from .evaluation import evaluate

    timings = {} if timings is None else timings
    inner: dict = {}
    index = corpus_index(data_dir, "", "flat", cache_dir, dtype, encoders=encoders, timings=inner)
    with torch.inference_mode():
        run = retrieve(index, encoders.query_encoder, data.queries, k=k, show_progress=False)
    for name, value in inner.items():
        timings[f"{label}_{name}" if label else name] = value
    return evaluate(run, data.qrels)
