"""Fixtures for the sentence-transformers integration: a model that looks embeddings up by text (so that
drfast's and sentence-transformers' mining see the very same vectors), and a tiny random SentenceTransformer."""
import types

import numpy as np
import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("datasets")


class LookupModel:
    """The members of SentenceTransformer that `mine_hard_negatives` uses, over fixed unit vectors."""

    similarity_fn_name = "cosine"

    def __init__(self, vectors: dict):
        self.vectors = vectors
        self.device = torch.device("cpu")
        self.model_card_data = types.SimpleNamespace(base_model="lookup")
        self.calls = []

    def _encode(self, texts, **kwargs):
        self.calls.append((len(texts), kwargs.get("prompt")))
        prefix = kwargs.get("prompt") or ""
        return np.stack([self.vectors[prefix + t] for t in texts]).astype(np.float32)

    encode_query = encode_document = _encode

    def similarity(self, a, b):
        from sentence_transformers.util import cos_sim
        return cos_sim(a, b)

    def similarity_pairwise(self, a, b):
        from sentence_transformers.util import pairwise_cos_sim
        return pairwise_cos_sim(a, b)

    def get_embedding_dimension(self):
        return next(iter(self.vectors.values())).shape[0]


def random_pairs(rng, n_queries=40, n_docs=300, dim=16, max_pos=3, shared_text=True):
    """(queries, positives) rows, some queries with several positives and one duplicated pair, a corpus, and
    unit vectors for every text. With shared_text, one query text is also a corpus text (a self-match)."""
    corpus = [f"doc {i}" for i in range(n_docs)]
    queries = [f"query {i}" for i in range(n_queries)]
    if shared_text:
        queries[0] = corpus[5]
    anchors, positives = [], []
    for q in queries:
        for d in rng.choice(n_docs, size=int(rng.integers(1, max_pos + 1)), replace=False):
            anchors.append(q)
            positives.append(corpus[d])
    anchors.append(anchors[-1])
    positives.append(positives[-1])  # a duplicated pair, as real datasets have
    vecs = rng.standard_normal((n_docs + n_queries, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vectors = dict(zip(corpus + queries, vecs))
    # queries close to their positives so that margins and max_score bite
    for a, p in zip(anchors, positives):
        if a not in corpus:
            v = vectors[a] + 0.8 * vectors[p]
            vectors[a] = (v / np.linalg.norm(v)).astype(np.float32)
    return anchors, positives, corpus, vectors


@pytest.fixture
def pairs(rng):
    return random_pairs(rng)


@pytest.fixture(scope="session")
def tiny_st_folder(tmp_path_factory):
    """A tiny random BERT saved as a sentence-transformers model (mean pooling, normalised)."""
    from tiny import make_tiny_hf_folder, make_tiny_st_folder

    hf = make_tiny_hf_folder(tmp_path_factory.mktemp("tiny_hf"))
    return make_tiny_st_folder(hf, tmp_path_factory.mktemp("tiny_st"))
