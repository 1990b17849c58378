"""JPQ: ADORE with trained PQ centroids (AdoreConfig.train_centroids): gradients of the decoded vectors,
the search over the trained centroids, learning, resume, and a flat index refused."""
import numpy as np
import pytest
import torch

import drfast
from drfast.encode.encoders import Encoder
from drfast.train.adore import AdoreConfig, AdoreTrainer, EncoderAndCentroids
from tiny import WORDS, make_tiny_hf_folder

DIM, M = 32, 8


def random_pq(rng, n_docs=120, opq=False):
    centroids = rng.standard_normal((M, 256, DIM // M)).astype(np.float32)
    codes = rng.integers(0, 256, size=(n_docs, M)).astype(np.uint8)
    rotation = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32) if opq else None
    return drfast.PQIndex(centroids, codes, rotation, doc_ids=[f"d{i}" for i in range(n_docs)])


@pytest.mark.parametrize("opq", [False, True])
def test_decoded_vectors_gradient_matches_finite_differences(rng, opq):
    index = random_pq(rng, opq=opq)
    model = EncoderAndCentroids(torch.nn.Identity(), index.centroids)
    index.centroids = model.centroids
    rows = np.array([3, 17, 3, 99, 0])  # a repeated row: its gradient adds up
    w = torch.as_tensor(rng.standard_normal((len(rows), DIM)), dtype=torch.float32)
    (index.reconstruct(rows) * w).sum().backward()
    grad = model.centroids.grad
    used = [(j, int(index.codes[r, j])) for r in rows for j in range(M)]
    unused = [(j, c) for j, c in ((0, 255), (5, 1)) if (j, c) not in used]
    eps = 1e-2
    for j, c in used[:12] + unused:
        for t in range(DIM // M):
            with torch.no_grad():
                saved = float(model.centroids[j, c, t])
                model.centroids[j, c, t] = saved + eps
                up = float((index.reconstruct(rows).double() * w.double()).sum())
                model.centroids[j, c, t] = saved - eps
                down = float((index.reconstruct(rows).double() * w.double()).sum())
                model.centroids[j, c, t] = saved
            assert float(grad[j, c, t]) == pytest.approx((up - down) / (2 * eps), rel=1e-3, abs=1e-4), (j, c, t)
    assert all(float(grad[j, c].abs().sum()) == 0.0 for j, c in unused)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_hf_folder(tmp_path_factory.mktemp("jpq_model"))


def task(rng, opq=False, n_queries=16):
    index = random_pq(rng, opq=opq)
    queries = {f"q{i}": " ".join(rng.choice(WORDS, size=4)) + f" {chr(97 + i)}" for i in range(n_queries)}
    positives = {q: [f"d{int(rng.integers(index.ntotal))}"] for q in queries}
    return index, queries, positives


def trainer_for(tiny_model, index, queries, positives, config, **kwargs):
    torch.manual_seed(123)  # the same starting point for every trainer of a test
    return AdoreTrainer(Encoder.load(tiny_model, pooling="mean", role="query"), index, queries=queries,
                        positives=positives, config=config, **kwargs)


@pytest.mark.parametrize("opq", [False, True])
def test_search_after_centroid_updates_equals_a_fresh_index(rng, tiny_model, opq):
    index, queries, positives = task(rng, opq)
    start = index.centroids.clone()
    config = AdoreConfig(k=20, batch_size=8, max_steps=2, warmup_ratio=0.0, train_centroids=True, centroid_lr=1e-2)
    tr = trainer_for(tiny_model, index, queries, positives, config)
    tr.train()
    trained = tr.model.centroids.detach().clone()
    assert tr.index.centroids is tr.model.centroids and not torch.equal(trained, start)
    assert torch.equal(index.centroids, start)  # the caller's index is left as it was
    fresh = drfast.PQIndex(trained, index.codes, index.rotation)
    q = torch.as_tensor(rng.standard_normal((5, DIM)), dtype=torch.float32)
    pos = [[1], [2, 3], [50], [0, 119], [7]]
    for backend in ("native", "torch"):
        got = tr.index.search(q, k=30, positives=pos, cutoff=10, backend=backend)
        want = fresh.search(q, k=30, positives=pos, cutoff=10, backend=backend)
        for field in ("ids", "scores", "pos_ids", "pos_scores", "pos_ranks", "pair_weights"):
            assert torch.equal(torch.as_tensor(getattr(got, field)), torch.as_tensor(getattr(want, field))), field


def test_training_lowers_the_loss_and_moves_only_the_centroids(rng, tiny_model):
    index, queries, positives = task(rng)
    config = AdoreConfig(k=20, cutoff=10, lr=3e-3, centroid_lr=3e-2, batch_size=8, epochs=30, warmup_ratio=0.0,
                         score_scale=1.0, train_centroids=True)
    tr = trainer_for(tiny_model, index, queries, positives, config)
    start = tr.model.centroids.detach().clone()
    history = tr.train()
    first, last = history[:4], history[-4:]
    assert np.mean([h["loss"] for h in last]) < 0.5 * np.mean([h["loss"] for h in first])
    assert np.mean([h["mrr10"] for h in last]) > np.mean([h["mrr10"] for h in first])
    moved = (tr.index.centroids.detach() - start).abs().amax(-1) > 0  # [m, 256]: which centroids changed
    assert moved.any() and tr.index.codes is index.codes
    assert tr.optimizer.param_groups[1]["params"] == [tr.model.centroids]
    assert tr.optimizer.param_groups[1]["weight_decay"] == 0.0
    # the linear schedule scales both groups: from their own peaks down to 0 at the last step
    assert [g["initial_lr"] for g in tr.optimizer.param_groups] == [3e-3, 3e-2]
    assert tr.scheduler.get_last_lr() == [0.0, 0.0]


def test_resume_gives_the_uninterrupted_weights_and_centroids(rng, tiny_model, tmp_path, kill_at):
    index, queries, positives = task(rng, opq=True)
    config = AdoreConfig(k=20, lr=1e-3, centroid_lr=1e-2, batch_size=4, epochs=3, save_every=2, seed=7,
                         train_centroids=True)
    full = trainer_for(tiny_model, index, queries, positives, config, output_dir=tmp_path / "full")
    full.train()

    with pytest.raises(kill_at.error):
        trainer_for(tiny_model, index, queries, positives, config, output_dir=tmp_path / "cut",
                    hooks=[kill_at(5)]).train()
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4 and not torch.equal(state["model"]["centroids"], index.centroids)
    resumed = trainer_for(tiny_model, index, queries, positives, config, output_dir=tmp_path / "cut")
    resumed.train(resume=True)
    assert resumed.step == full.step == 12
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(full.index.centroids, resumed.index.centroids)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    # the run is tied to its setting: the same folder without train_centroids is refused
    with pytest.raises(ValueError, match="resume: .* train_centroids True -> False"):
        trainer_for(tiny_model, index, queries, positives, AdoreConfig(**{**vars(config), "train_centroids": False}),
                    output_dir=tmp_path / "cut").train(resume=True)


def test_a_flat_index_with_train_centroids_is_a_clear_error(rng, tiny_model):
    index, queries, positives = task(rng)
    flat = drfast.FlatIndex(index.reconstruct(np.arange(index.ntotal)).numpy(), doc_ids=list(index.doc_ids))
    with pytest.raises(ValueError, match=r"^train_centroids: .*PQ index \(pq:M or opq:M\); a flat index has none"):
        trainer_for(tiny_model, flat, queries, positives, AdoreConfig(k=10, train_centroids=True))
    with pytest.raises(ValueError, match="centroid_lr: must be > 0"):
        trainer_for(tiny_model, index, queries, positives, AdoreConfig(k=10, train_centroids=True, centroid_lr=0.0))
