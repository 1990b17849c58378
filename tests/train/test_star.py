"""STAR and the baselines: the batch loss against a slow reference, masks, and learning."""
import math

import numpy as np
import pytest
import torch

from drfast.encode.encoders import BiEncoder
from drfast.train.star import METHODS, StarConfig, StarTrainer, star_batch_loss
from tiny import WORDS, ListCorpus, make_tiny_hf_folder


def reference_loss(q, docs, pos_col, neg_cols, known_pos, method, alpha, scale):
    """Plain loops over rows and columns, float64."""
    s = q.double() @ docs.double().T
    hard, rand = [], []
    for b in range(q.shape[0]):
        own = {int(c) for c in neg_cols[b] if c >= 0}
        for u in range(docs.shape[0]):
            if known_pos[b, u]:
                continue
            term = math.log1p(math.exp(scale * float(s[b, u] - s[b, pos_col[b]])))
            (hard if u in own else rand).append(term)
    mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
    if method in ("randneg", "static"):
        return mean(hard)
    if method == "inbatch":
        return mean(rand)
    return mean(hard + rand) if alpha is None else alpha * mean(rand) + mean(hard)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("alpha", [None, 0.5])
def test_batch_loss_matches_reference(rng, method, alpha):
    B, U, n, d = 6, 15, 2, 8
    q, docs = torch.tensor(rng.standard_normal((B, d))), torch.tensor(rng.standard_normal((U, d)))
    pos_col = torch.tensor(rng.choice(U, B))
    neg_cols = torch.tensor(rng.integers(-1, U, (B, n)))
    known_pos = torch.tensor(rng.random((B, U)) < 0.1)
    known_pos[torch.arange(B), pos_col] = True
    got = star_batch_loss(q.float(), docs.float(), pos_col, neg_cols, known_pos, method, alpha, 2.0)
    ref = reference_loss(q, docs, pos_col, neg_cols, known_pos, method, alpha, 2.0)
    assert float(got) == pytest.approx(ref, rel=1e-5)


def test_masks_on_a_hand_built_batch():
    # Query 0: positive column 0, hard negative column 2, and column 3 is also one of its positives.
    # Query 1: positive column 1, hard negative column 2. Scores are the column numbers.
    q = torch.ones(2, 1)
    docs = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    pos_col, neg_cols = torch.tensor([0, 1]), torch.tensor([[2], [2]])
    known_pos = torch.tensor([[True, False, False, True], [False, True, False, False]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    # star: q0 pairs (0 vs 1), (0 vs 2); q1 pairs (1 vs 0), (1 vs 2), (1 vs 3) -- column 3 masked for q0.
    star = (sp(1) + sp(2) + sp(-1) + sp(1) + sp(2)) / 5
    assert float(star_batch_loss(q, docs, pos_col, neg_cols, known_pos, "star")) == pytest.approx(star)
    # static: only the own hard negatives.
    assert float(star_batch_loss(q, docs, pos_col, neg_cols, known_pos, "static")) == pytest.approx((sp(2) + sp(1)) / 2)
    # in-batch: everything but the own hard negative and known positives.
    inbatch = (sp(1) + sp(-1) + sp(2)) / 3
    assert float(star_batch_loss(q, docs, pos_col, neg_cols, known_pos, "inbatch")) == pytest.approx(inbatch)


@pytest.mark.parametrize("method", METHODS)
def test_tiny_model_training_lowers_the_loss(rng, tmp_path, method):
    torch.manual_seed(0)
    model = BiEncoder.load(make_tiny_hf_folder(tmp_path / "m"), pooling="mean")
    docs = [" ".join(rng.choice(WORDS, 6)) + f" {chr(97 + i % 26)}" for i in range(40)]
    corpus = ListCorpus(docs)
    queries = {f"q{i}": docs[i][:12] for i in range(16)}
    positives = {f"q{i}": [f"d{i}"] for i in range(16)}
    negatives = {f"q{i}": [f"d{(i + 1) % 40}", f"d{(i + 20) % 40}"] for i in range(16)}
    config = StarConfig(method=method, n_negatives=1, lr=2e-3, batch_size=8, epochs=25, warmup_ratio=0.0,
                        score_scale=1.0)
    history = StarTrainer(model, corpus, queries=queries, positives=positives, negatives=negatives,
                          config=config).train()
    first, last = np.mean([h["loss"] for h in history[:4]]), np.mean([h["loss"] for h in history[-4:]])
    assert last < 0.7 * first


def star_task(rng, tmp_path, n_docs=40, n_queries=16):
    model_dir = make_tiny_hf_folder(tmp_path / "m")
    docs = [" ".join(rng.choice(WORDS, 6)) + f" {chr(97 + i % 26)}" for i in range(n_docs)]
    queries = {f"q{i}": docs[i][:12] for i in range(n_queries)}
    positives = {f"q{i}": [f"d{i}"] for i in range(n_queries)}
    negatives = {f"q{i}": [f"d{(i + 1) % n_docs}", f"d{(i + 20) % n_docs}"] for i in range(n_queries)}
    return model_dir, ListCorpus(docs), queries, positives, negatives


def test_resume_gives_the_uninterrupted_result(rng, tmp_path, kill_at):
    model_dir, corpus, queries, positives, negatives = star_task(rng, tmp_path)
    config = StarConfig(method="star", n_negatives=2, lr=1e-3, batch_size=4, epochs=3, save_every=2, seed=5)

    def trainer(out, hooks=(), negatives=negatives):
        torch.manual_seed(123)
        return StarTrainer(BiEncoder.load(model_dir, pooling="mean"), corpus, queries=queries, positives=positives,
                           negatives=negatives, config=config, output_dir=out, hooks=hooks)

    full = trainer(tmp_path / "full")
    full.train()

    with pytest.raises(kill_at.error):  # the last checkpoint is at step 4
        trainer(tmp_path / "cut", [kill_at(5)]).train()
    with pytest.raises(ValueError, match=r"other settings or inputs: negatives '"):
        trainer(tmp_path / "cut", negatives={**negatives, "q0": ["d7"]}).train(resume=True)
    resumed = trainer(tmp_path / "cut")
    resumed.train(resume=True)
    assert resumed.step == full.step == 12
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_bad_configurations(tmp_path):
    with pytest.raises(ValueError, match="method: expected one of"):
        StarConfig(method="bm25").check()
    with pytest.raises(ValueError, match="n_negatives: must be >= 1"):
        StarConfig(n_negatives=0).check()
    model = BiEncoder.load(make_tiny_hf_folder(tmp_path / "m"))
    corpus = ListCorpus(["a", "b", "c"])
    with pytest.raises(ValueError, match="negatives: method 'star' needs static hard negatives"):
        StarTrainer(model, corpus, queries={"q": "a"}, positives={"q": ["d0"]}, config=StarConfig())
    with pytest.raises(ValueError, match="no hard negative that is not a positive"):
        StarTrainer(model, corpus, queries={"q": "a"}, positives={"q": ["d0"]}, negatives={"q": ["d0"]},
                    config=StarConfig())
