"""query_side: document side frozen and bit-identical (before and after training, save and reload), query
side a trainable copy."""
import numpy as np
import pytest
import torch

from drfast.common.errors import UsageTypeError

TEXTS = ["the cat sat on the mat", "a dense retrieval query", "document about a dog", "the mat"]


def load(folder):
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(folder, device="cpu")


def test_document_side_frozen_and_bit_identical_after_save_and_reload(tiny_st_folder, tmp_path):
    from drfast.integrations.sentence_transformers import query_side

    original = load(tiny_st_folder)
    docs = original.encode_document(TEXTS, convert_to_numpy=True)
    model = query_side(load(tiny_st_folder))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".query." in n or "query" in n.split(".")[:3] for n in trainable)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n not in trainable)
    assert np.array_equal(model.encode_document(TEXTS, convert_to_numpy=True), docs)
    assert np.array_equal(model.encode_query(TEXTS, convert_to_numpy=True), docs)  # a copy, untrained
    with torch.no_grad():  # "training": change every query-side weight
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    queries = model.encode_query(TEXTS, convert_to_numpy=True)
    assert not np.allclose(queries, docs)
    assert np.array_equal(model.encode_document(TEXTS, convert_to_numpy=True), docs)
    model.save(str(tmp_path / "saved"))
    reloaded = load(str(tmp_path / "saved"))
    assert np.array_equal(reloaded.encode_document(TEXTS, convert_to_numpy=True), docs)
    assert np.array_equal(reloaded.encode_query(TEXTS, convert_to_numpy=True), queries)
    again = query_side(reloaded)  # resumes: the same model, its document route frozen again
    assert again is reloaded
    assert [n for n, p in again.named_parameters() if p.requires_grad] == trainable


def test_query_side_refuses_other_objects():
    from drfast.integrations.sentence_transformers import query_side

    with pytest.raises(UsageTypeError) as e:
        query_side(torch.nn.Linear(2, 2))
    assert e.value.param == "model"
