"""Tiny random models and collections for tests that need an encoder or a BEIR folder."""
import json
import os
import string

import numpy as np
import torch

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "retrieval", "dense", "query", "document"]


def make_tiny_hf_folder(folder, seed=0, max_position_embeddings=512):
    """A random 2-layer, 32-d BERT and a WordPiece vocab that covers any lowercase ASCII text."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    os.makedirs(folder, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list(string.ascii_lowercase)
    vocab += ["##" + c for c in string.ascii_lowercase] + list(string.digits + string.punctuation)
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(os.path.join(folder, "vocab.txt"))
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=max_position_embeddings)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def make_tiny_st_folder(hf_folder, folder, dropout=True):
    """The tiny BERT of `hf_folder` saved to `folder` as a sentence-transformers model (mean pooling,
    normalised); dropout=False zeroes its dropout, so that two forward passes give the same output."""
    import json

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    if not dropout:
        with open(os.path.join(hf_folder, "config.json")) as f:
            config = json.load(f)
        config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        with open(os.path.join(hf_folder, "config.json"), "w") as f:
            json.dump(config, f)
    transformer = Transformer(str(hf_folder), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"),
                                         Normalize()], device="cpu")
    model.save(str(folder))
    return str(folder)


def make_tiny_beir(folder, rng, n_docs=60, n_queries=12, splits=("train", "test")):
    """A BEIR folder of random word sequences; each query has 1-2 relevant docs (grade 1 or 2)
    and some judged non-relevant ones (grade 0)."""
    os.makedirs(os.path.join(folder, "qrels"), exist_ok=True)

    def words(n):
        return " ".join(rng.choice(WORDS, size=n))

    with open(os.path.join(folder, "corpus.jsonl"), "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"_id": f"d{i}", "title": words(2), "text": words(int(rng.integers(3, 15)))}) + "\n")
    with open(os.path.join(folder, "queries.jsonl"), "w") as f:
        for i in range(n_queries * len(splits)):
            f.write(json.dumps({"_id": f"q{i}", "text": words(int(rng.integers(2, 6)))}) + "\n")
    for s, split in enumerate(splits):
        with open(os.path.join(folder, "qrels", f"{split}.tsv"), "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for i in range(s * n_queries, (s + 1) * n_queries):
                docs = rng.choice(n_docs, size=4, replace=False)
                grades = [int(rng.integers(1, 3)), int(rng.integers(0, 2)), 0, 0]
                for d, g in zip(docs, grades):
                    f.write(f"q{i}\td{d}\t{g}\n")
    return str(folder)


class ListCorpus:
    """An in-memory corpus with the members trainers use (doc_ids "d0".., rows(ids), texts(rows), len)."""

    def __init__(self, texts):
        self._texts = list(texts)
        self.doc_ids = [f"d{i}" for i in range(len(texts))]

    def __len__(self):
        return len(self._texts)

    def rows(self, ids):
        return np.array([int(i[1:]) for i in ids], np.int64)

    def texts(self, rows):
        return [self._texts[int(r)] for r in rows]
