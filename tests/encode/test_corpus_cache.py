"""Cached, resumable corpus encoding with a tiny random BERT and an in-memory corpus."""
import hashlib
import os

import numpy as np
import pytest
import torch

from drfast.encode.corpus_cache import corpus_cache_key, encode_corpus
from drfast.encode.encoders import Encoder
from tiny import make_tiny_hf_folder

DOCS = [
    "the cat sat on the mat",
    "dog",
    "a dense retrieval query about a document on a mat, then more words about the cat and the dog",
    "",
    "cats, dogs; mats!",
    "the dog sat",
    "retrieval",
]


class MemoryCorpus:
    """Stand-in for drfast.data.Corpus: the same five members, nothing else."""

    def __init__(self, docs, prefix="d"):
        self._texts = list(docs)
        self.doc_ids = [f"{prefix}{i}" for i in range(len(docs))]
        self.lengths = np.array([len(t) for t in self._texts], dtype=np.int64)

    def __len__(self):
        return len(self._texts)

    def texts(self, indices):
        return [self._texts[i] for i in indices]

    def fingerprint(self):
        return hashlib.sha256(repr((self.doc_ids, self._texts)).encode()).hexdigest()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return make_tiny_hf_folder(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture
def encoder(hf_folder):
    return Encoder.load(hf_folder, pooling="mean")


def count_calls(monkeypatch, encoder, fail_after=None):
    """Wrap encoder.encode: record the texts of each call; raise once `fail_after` calls are done."""
    calls = []
    real = Encoder.encode.__get__(encoder)  # the unwrapped method, even if wrapped before

    def encode(texts, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise RuntimeError("simulated interruption")
        calls.append(list(texts))
        return real(texts, **kwargs)

    monkeypatch.setattr(encoder, "encode", encode)
    return calls


def test_equals_direct_encoding_in_corpus_order(encoder, tmp_path, monkeypatch):
    corpus = MemoryCorpus(DOCS)
    calls = count_calls(monkeypatch, encoder)
    emb, ids = encode_corpus(encoder, corpus, tmp_path, dtype="float32", chunk_size=3, show_progress=False)
    assert isinstance(emb, np.memmap) and emb.dtype == np.float32 and emb.shape == (7, 32)
    assert ids == corpus.doc_ids
    # longest documents first (by corpus.lengths), in chunks of 3
    assert [len(c) for c in calls] == [3, 3, 1]
    assert calls[0][0] == DOCS[2] and calls[-1] == [""]
    np.testing.assert_allclose(emb, encoder.encode(DOCS), atol=1e-6)
    key = corpus_cache_key(encoder, corpus, "float32")
    assert sorted(os.listdir(tmp_path)) == [key]  # the work folder is gone
    assert sorted(os.listdir(tmp_path / key)) == ["doc_ids.txt", "embeddings.float32.npy", "meta.json"]


def test_float16(encoder, tmp_path):
    corpus = MemoryCorpus(DOCS)
    emb16, _ = encode_corpus(encoder, corpus, tmp_path, dtype="float16", show_progress=False)
    emb32, _ = encode_corpus(encoder, corpus, tmp_path, dtype="float32", show_progress=False)
    assert emb16.dtype == np.float16 and emb16.shape == emb32.shape
    np.testing.assert_allclose(emb16.astype(np.float32), emb32, rtol=1e-3, atol=1e-3)
    assert len(os.listdir(tmp_path)) == 2  # two keys: dtype is part of it


def test_resume_after_interruption(encoder, tmp_path, monkeypatch):
    corpus = MemoryCorpus(DOCS)
    calls = count_calls(monkeypatch, encoder, fail_after=2)
    with pytest.raises(RuntimeError, match="simulated"):
        encode_corpus(encoder, corpus, tmp_path, dtype="float32", chunk_size=2, show_progress=False)
    key = corpus_cache_key(encoder, corpus, "float32")
    # no final folder yet; the (released) lock stays until a run finishes
    assert sorted(os.listdir(tmp_path)) == [key + ".lock", key + ".partial"]
    assert len(os.listdir(tmp_path / (key + ".partial"))) == 2  # the two finished chunks

    calls = count_calls(monkeypatch, encoder)
    emb, ids = encode_corpus(encoder, corpus, tmp_path, dtype="float32", chunk_size=2, show_progress=False)
    assert [len(c) for c in calls] == [2, 1]  # only chunks 3 and 4 of 2 + 2 + 2 + 1 docs
    np.testing.assert_allclose(emb, encoder.encode(DOCS), atol=1e-6)
    assert ids == corpus.doc_ids
    assert sorted(os.listdir(tmp_path)) == [key]


def test_cache_hit_does_not_encode(encoder, tmp_path, monkeypatch):
    corpus = MemoryCorpus(DOCS)
    first, ids1 = encode_corpus(encoder, corpus, tmp_path, show_progress=False)
    calls = count_calls(monkeypatch, encoder, fail_after=0)  # any encode call would raise
    second, ids2 = encode_corpus(encoder, corpus, tmp_path, show_progress=False)
    assert calls == [] and ids2 == ids1
    np.testing.assert_array_equal(second, first)


def test_key_changes_with_everything_that_changes_the_vectors(hf_folder, tmp_path):
    corpus = MemoryCorpus(DOCS)
    base = Encoder.load(hf_folder)
    key = corpus_cache_key(base, corpus, "float16")
    assert len(key) == 16 and int(key, 16) >= 0
    base.encode(DOCS)  # tokenizer truncation state is not part of the identity
    assert corpus_cache_key(base, corpus, "float16") == key
    assert corpus_cache_key(Encoder.load(hf_folder), corpus, "float16") == key
    others = [
        corpus_cache_key(Encoder.load(hf_folder, max_length=16), corpus, "float16"),
        corpus_cache_key(Encoder.load(hf_folder, pooling="mean"), corpus, "float16"),
        corpus_cache_key(Encoder.load(hf_folder, normalize=True), corpus, "float16"),
        corpus_cache_key(base, corpus, "float32"),
        corpus_cache_key(base, MemoryCorpus(DOCS[:-1]), "float16"),
        corpus_cache_key(base, MemoryCorpus(DOCS, prefix="x"), "float16"),
        corpus_cache_key(Encoder.load(make_tiny_hf_folder(tmp_path / "other", seed=1)), corpus, "float16"),
    ]
    with torch.no_grad():  # weights changed in memory (training) while the source path stays the same
        base.model.pooler.dense.bias.add_(1.0)
    others.append(corpus_cache_key(base, corpus, "float16"))
    assert len(set(others + [key])) == len(others) + 1


def test_bad_arguments(encoder, tmp_path):
    corpus = MemoryCorpus(DOCS)
    with pytest.raises(ValueError, match="dtype"):
        encode_corpus(encoder, corpus, tmp_path, dtype="bfloat16")
    with pytest.raises(ValueError, match="dtype"):
        corpus_cache_key(encoder, corpus, dtype="float64")
    with pytest.raises(TypeError, match="encoder"):
        encode_corpus("model", corpus, tmp_path)
    with pytest.raises(TypeError, match="corpus"):
        encode_corpus(encoder, DOCS, tmp_path)
    with pytest.raises(ValueError, match="corpus"):
        encode_corpus(encoder, MemoryCorpus([]), tmp_path)
    with pytest.raises(ValueError, match="chunk_size"):
        encode_corpus(encoder, corpus, tmp_path, chunk_size=0)
    bad_ids = MemoryCorpus(DOCS)
    bad_ids.doc_ids[0] = "a\nb"
    with pytest.raises(ValueError, match="corpus"):
        encode_corpus(encoder, bad_ids, tmp_path)
    assert os.listdir(tmp_path) == []


_CONCURRENT = """
import sys, numpy as np
from drfast.data import Corpus
from drfast.encode.corpus_cache import encode_corpus
from drfast.encode.encoders import Encoder
emb, ids = encode_corpus(Encoder.load(sys.argv[1], pooling="mean"), Corpus(sys.argv[2]), sys.argv[3],
                         chunk_size=2, show_progress=False)
np.save(sys.argv[4], np.asarray(emb))
"""


def test_two_processes_encoding_into_one_cache(hf_folder, tmp_path):
    import json
    import subprocess
    import sys

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(DOCS * 20)))
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT, str(hf_folder), str(corpus), str(tmp_path / "c"),
                               str(tmp_path / f"out{i}.npy")], stderr=subprocess.PIPE) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    a, b = np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy")
    assert a.shape == (len(DOCS) * 20, 32) and np.array_equal(a, b)
    left = [p.name for p in (tmp_path / "c").iterdir()]
    assert len(left) == 1 and (tmp_path / "c" / left[0] / "meta.json").is_file()  # no temp, partial or lock files
