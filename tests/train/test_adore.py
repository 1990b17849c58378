"""ADORE: the step's loss against a from-scratch reference, learning, resume equivalence, bad configs."""
import numpy as np
import pytest
import torch

import drfast
from drfast.train.adore import AdoreConfig, AdoreTrainer, adore_batch_loss
from drfast.encode.encoders import Encoder
from tiny import WORDS, make_tiny_hf_folder


def reference_step_loss(q, docs, positives, k, cutoff, scale):
    """The paper's loss from the full score matrix, in float64, with plain loops."""
    S = q.double() @ torch.as_tensor(docs, dtype=torch.float64).T
    total, used = 0.0, 0
    for b, ps in enumerate(positives):
        s = S[b].detach().numpy()
        order = np.lexsort((np.arange(len(s)), -s))[:k]
        rank = {p: 1 + int(np.sum((s > s[p]) | ((s == s[p]) & (np.arange(len(s)) < p)))) for p in ps}
        rr = lambda r: 1.0 / r if r <= cutoff else 0.0  # noqa: E731
        terms = [abs(rr(rank[p]) - rr(j + 1)) * torch.nn.functional.softplus(scale * (S[b, n] - S[b, p]))
                 for p in ps for j, n in enumerate(order) if n not in ps]
        if terms:
            total, used = total + sum(terms) / len(terms), used + 1
    return total / used


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_step_loss_and_gradient_match_reference(rng, scale):
    docs = rng.standard_normal((60, 8)).astype(np.float32)
    index = drfast.FlatIndex(docs)
    positives = [[3], [0, 59], [7, 8, 9], [5]]
    q = torch.tensor(rng.standard_normal((4, 8)) * 0.3, dtype=torch.float32, requires_grad=True)
    loss, info = adore_batch_loss(q, index, positives, k=20, cutoff=10, score_scale=scale)
    loss.backward()
    q_ref = q.detach().double().requires_grad_()
    ref = reference_step_loss(q_ref, docs, positives, 20, 10, scale)
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)
    torch.testing.assert_close(q.grad.double(), q_ref.grad, rtol=1e-4, atol=1e-7)
    assert 0.0 <= info["mrr10"] <= 1.0


def test_pq_step_scores_the_decoded_vectors(rng):
    # On a PQ index the loss sees exactly the decoded vectors the index scores with.
    centroids = rng.standard_normal((4, 256, 2)).astype(np.float32)
    codes = rng.integers(0, 256, size=(300, 4)).astype(np.uint8)
    index = drfast.PQIndex(centroids, codes)
    positives = [[1], [2, 3]]
    q = torch.tensor(rng.standard_normal((2, 8)), dtype=torch.float32, requires_grad=True)
    loss, _ = adore_batch_loss(q, index, positives, k=30, cutoff=10)
    loss.backward()
    q_ref = q.detach().double().requires_grad_()
    ref = reference_step_loss(q_ref, index.reconstruct(np.arange(300)).numpy(), positives, 30, 10, 1.0)
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-4)
    torch.testing.assert_close(q.grad.double(), q_ref.grad, rtol=1e-3, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_hf_folder(tmp_path_factory.mktemp("adore_model"))


def synthetic_task(rng, n_docs=80, n_queries=16, dim=32):
    docs = rng.standard_normal((n_docs, dim)).astype(np.float32)
    queries = {f"q{i}": " ".join(rng.choice(WORDS, size=4)) + f" {chr(97 + i)}" for i in range(n_queries)}
    positives = {q: [f"d{int(rng.integers(n_docs))}"] for q in queries}
    return drfast.FlatIndex(docs, doc_ids=[f"d{i}" for i in range(n_docs)]), queries, positives


def test_training_lowers_loss_and_raises_training_mrr(rng, tiny_model):
    torch.manual_seed(0)
    index, queries, positives = synthetic_task(rng)
    encoder = Encoder.load(tiny_model, pooling="mean", role="query")
    config = AdoreConfig(k=20, cutoff=10, lr=3e-3, batch_size=8, epochs=40, warmup_ratio=0.0, score_scale=1.0)
    history = AdoreTrainer(encoder, index, queries=queries, positives=positives, config=config).train()
    first, last = history[:4], history[-4:]
    assert np.mean([h["loss"] for h in last]) < 0.5 * np.mean([h["loss"] for h in first])
    assert np.mean([h["mrr10"] for h in last]) > np.mean([h["mrr10"] for h in first]) + 0.2


def test_resume_gives_the_uninterrupted_result(rng, tiny_model, tmp_path, kill_at):
    index, queries, positives = synthetic_task(rng)
    config = AdoreConfig(k=20, cutoff=10, lr=1e-3, batch_size=4, epochs=3, save_every=2, seed=7)

    def trainer(out, hooks=()):
        torch.manual_seed(123)  # the same starting point for both runs (dropout draws come from the seed)
        return AdoreTrainer(Encoder.load(tiny_model, role="query"), index, queries=queries, positives=positives,
                            config=config, output_dir=out, hooks=hooks)

    full = trainer(tmp_path / "full")
    full.train()

    with pytest.raises(kill_at.error):
        trainer(tmp_path / "cut", hooks=[kill_at(5)]).train()
    resumed = trainer(tmp_path / "cut")
    resumed.train(resume=True)
    assert resumed.step == full.step == 12
    for (name, a), (_, b) in zip(full.encoder.state_dict().items(), resumed.encoder.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    log = (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 12


def test_resume_refuses_another_index_or_other_positives(rng, tiny_model, tmp_path):
    index, queries, positives = synthetic_task(rng)
    config = AdoreConfig(k=20, batch_size=4, epochs=1, save_every=1)

    def trainer(index=index, positives=positives, queries=queries):
        return AdoreTrainer(Encoder.load(tiny_model, role="query"), index, queries=queries, positives=positives,
                            config=config, output_dir=tmp_path)

    trainer().train()
    docs = index.reconstruct(np.arange(index.ntotal)).numpy()
    docs[40] += 1.0  # one row in the middle; the digest samples every row of a small index
    other_rows = drfast.FlatIndex(docs, doc_ids=list(index.doc_ids))
    other_ids = drfast.FlatIndex(docs[::-1].copy(), doc_ids=list(index.doc_ids)[::-1])
    moved = {**positives, "q3": [f"d{(int(positives['q3'][0][1:]) + 1) % 80}"]}
    retitled = {**queries, "q3": queries["q3"] + " again"}
    for kwargs, what in ((dict(index=other_rows), "index"), (dict(index=other_ids), "index"),
                         (dict(positives=moved), "positives"), (dict(queries=retitled), "queries")):
        with pytest.raises(ValueError, match=rf"resume: .* other settings or inputs: {what} '[0-9a-f]+' -> "):
            trainer(**kwargs).train(resume=True)
    trainer().train(resume=True)  # the same inputs resume (here: a finished run, nothing left to do)


def test_bad_configurations_are_clear_errors(rng, tiny_model):
    index, queries, positives = synthetic_task(rng)
    encoder = Encoder.load(tiny_model, role="query")

    def trainer(config, positives=positives, index=index):
        return AdoreTrainer(encoder, index, queries=queries, positives=positives, config=config)

    with pytest.raises(ValueError, match="cutoff: must be >= 1"):
        trainer(AdoreConfig(cutoff=0))
    with pytest.raises(ValueError, match="k: 500 candidates asked but the index has only 80 rows"):
        trainer(AdoreConfig(k=500))
    with pytest.raises(ValueError, match="query 'q0' has no positive document"):
        trainer(AdoreConfig(k=10), {**positives, "q0": []})
    with pytest.raises(ValueError, match="document 'nope' of query 'q1' is not in the index"):
        trainer(AdoreConfig(k=10), {**positives, "q1": ["nope"]})
    wrong_dim = drfast.FlatIndex(np.ones((80, 16), np.float32))
    with pytest.raises(ValueError, match="query_encoder: dimension 32 differs from the index's 16"):
        trainer(AdoreConfig(k=10), index=wrong_dim)
    with pytest.raises(ValueError, match="amp: expected"):
        trainer(AdoreConfig(k=10, amp="int8"))
    with pytest.raises(TypeError, match="positional"):  # everything after the index is a keyword
        AdoreTrainer(encoder, index, queries, positives)


def test_gradient_accumulation_takes_one_optimizer_step_per_group(rng, tiny_model):
    index, queries, positives = synthetic_task(rng)
    config = AdoreConfig(k=20, batch_size=4, grad_accum=2, epochs=1)
    trainer = AdoreTrainer(Encoder.load(tiny_model, role="query"), index, queries=queries, positives=positives,
                           config=config)
    history = trainer.train()
    assert trainer.micro == 4 and trainer.step == 2 and len(history) == 2
    assert all(0 < h["nonencoder_share"] < 1 for h in history)


def test_tensorboard_without_the_package_is_a_clear_error(rng, tiny_model, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    index, queries, positives = synthetic_task(rng)
    with pytest.raises(ValueError, match="tensorboard: logging to TensorBoard needs"):
        AdoreTrainer(Encoder.load(tiny_model, role="query"), index, queries=queries, positives=positives,
                     config=AdoreConfig(k=10, tensorboard=True), output_dir=tmp_path)
