"""Shared pieces of the sentence-transformers comparison scripts: the SciFact (query, positive) pairs, the
embeddings of every text encoded once and cached, and a model that hands both mining implementations the
very same vectors (so a difference can only come from the search and the filters, never from encoding)."""
from __future__ import annotations

import argparse
import hashlib
import os
import types
from pathlib import Path

import numpy as np
import torch


def parser(doc: str) -> argparse.ArgumentParser:
    """--data (a BEIR folder; default $DRFAST_DATA/scifact), --model, --cache (embeddings, under /tmp)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    default = os.path.join(os.environ["DRFAST_DATA"], "scifact") if os.environ.get("DRFAST_DATA") else None
    p.add_argument("--data", default=default, required=default is None)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--cache", default="/tmp/drfast_st_cache")
    return p


def scifact_pairs(folder: str, split: str = "train"):
    """(anchors, positives, corpus): one row per (query, relevant passage) of `split` in qrels order; the
    corpus is every passage (title + " " + text, stripped: drfast's BEIR loader)."""
    import drfast

    ds = drfast.load_beir(folder, split)
    corpus_ids, corpus = zip(*iter(ds.corpus))
    text_of = dict(zip(corpus_ids, corpus))
    anchors, positives = [], []
    for qid, docs in ds.positives.items():
        for d in docs:
            anchors.append(ds.queries[qid])
            positives.append(text_of[d])
    return anchors, positives, list(corpus)


def cached_vectors(model_name: str, queries, documents, cache: str) -> dict:
    """{text: unit vector}: queries with encode_query, documents with encode_document, cached in `cache`."""
    from sentence_transformers import SentenceTransformer

    from drfast.encode.encoders import resolve_model

    queries, documents = list(dict.fromkeys(queries)), list(dict.fromkeys(documents))
    key = hashlib.sha256(repr((model_name, queries, documents)).encode()).hexdigest()[:16]
    path = Path(cache) / f"vectors_{key}.npz"
    if path.exists():
        z = np.load(path)
        q, d = z["q"], z["d"]
    else:
        model = SentenceTransformer(resolve_model(model_name), device="cpu")
        q = model.encode_query(queries, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
        d = model.encode_document(documents, normalize_embeddings=True, convert_to_numpy=True, batch_size=64,
                                  show_progress_bar=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, q=q, d=d)
    return {"query": dict(zip(queries, q)), "document": dict(zip(documents, d))}


class LookupModel:
    """The members of SentenceTransformer that mine_hard_negatives uses, over fixed vectors."""

    similarity_fn_name = "cosine"

    def __init__(self, vectors: dict):
        self.vectors = vectors
        self.device = torch.device("cpu")
        self.model_card_data = types.SimpleNamespace(base_model="lookup")

    def encode_query(self, texts, **kwargs):
        return np.stack([self.vectors["query"][t] for t in texts]).astype(np.float32)

    def encode_document(self, texts, **kwargs):
        return np.stack([self.vectors["document"][t] for t in texts]).astype(np.float32)

    def similarity(self, a, b):
        from sentence_transformers.util import cos_sim
        return cos_sim(a, b)

    def similarity_pairwise(self, a, b):
        from sentence_transformers.util import pairwise_cos_sim
        return pairwise_cos_sim(a, b)

    def get_embedding_dimension(self):
        return len(next(iter(self.vectors["document"].values())))
