"""AdoreLoss: the same loss as drfast.adore_batch_loss on the query tower's embeddings, trains through
SentenceTransformerTrainer with the document side untouched, refuses a trainable document side."""
import numpy as np
import pytest
import torch

from drfast import FlatIndex, adore_batch_loss
from drfast.common.errors import UsageError

from tiny import WORDS


def corpus_and_queries(rng, n_docs=80, n_queries=24):
    docs = list(dict.fromkeys(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 10)))) + f" {i}"
                              for i in range(n_docs)))
    queries = [" ".join(rng.choice(WORDS, size=3)) for _ in range(n_queries)]
    positives = [sorted(rng.choice(len(docs), size=int(rng.integers(1, 3)), replace=False).tolist())
                 for _ in queries]
    return docs, queries, positives


@pytest.fixture
def setup(tiny_st_folder, rng):
    from sentence_transformers import SentenceTransformer

    from drfast.integrations.sentence_transformers import query_side

    docs, queries, positives = corpus_and_queries(rng)
    model = query_side(SentenceTransformer(tiny_st_folder, device="cpu"))
    index = FlatIndex(model.encode_document(docs, convert_to_numpy=True))
    return model, index, docs, queries, positives


def test_loss_equals_adore_batch_loss(setup):
    from drfast.integrations.sentence_transformers import AdoreLoss

    model, index, docs, queries, positives = setup
    loss_fn = AdoreLoss(model, index, positives, k=20, cutoff=5)
    assert loss_fn.score_scale == 20.0  # normalised tower: drfast adore's rule
    labels = torch.tensor([3, 0, 7, 5])
    features = model.preprocess([queries[i] for i in labels.tolist()], task="query")
    loss = loss_fn([features], labels)
    q = model.encode_query([queries[i] for i in labels.tolist()], convert_to_tensor=True)
    expected, _ = adore_batch_loss(q, index, [positives[i] for i in labels.tolist()], 20, 5, 20.0)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(g is None for n, g in grads.items() if ".document." in n)
    cfg = loss_fn.get_config_dict()
    assert cfg["k"] == 20 and cfg["cutoff"] == 5 and cfg["score_scale"] == 20.0
    assert "Optimizing Dense Retrieval Model Training with Hard Negatives" in loss_fn.citation


def test_refuses_trainable_document_side_and_bad_input(tiny_st_folder, setup):
    from sentence_transformers import SentenceTransformer

    from drfast.integrations.sentence_transformers import AdoreLoss

    model, index, docs, queries, positives = setup
    with pytest.raises(UsageError, match="query_side") as e:
        AdoreLoss(SentenceTransformer(tiny_st_folder, device="cpu"), index, positives)
    assert e.value.param == "model"
    for kwargs, param in ((dict(positives=[[0], [index.ntotal]], k=10), "positives"),
                          (dict(positives=[[]], k=10), "positives"),
                          (dict(positives=positives, k=index.ntotal + 1), "k"),
                          (dict(positives=positives, k=10, cutoff=0), "cutoff")):
        with pytest.raises(UsageError) as e:
            AdoreLoss(model, index, **kwargs)
        assert e.value.param == param
    loss_fn = AdoreLoss(model, index, positives, k=10)
    with pytest.raises(UsageError) as e:
        loss_fn([model.preprocess(queries[:2], task="query")], torch.tensor([0, len(positives)]))
    assert e.value.param == "label"


def test_trains_through_sentence_transformer_trainer(setup, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from drfast.integrations.sentence_transformers import ROUTER_MAPPING, AdoreLoss

    model, index, docs, queries, positives = setup
    doc_before = model.encode_document(docs, convert_to_numpy=True)
    query_before = model.encode_query(queries, convert_to_numpy=True)
    loss = AdoreLoss(model, index, positives, k=30)
    train = Dataset.from_dict({"query": queries, "label": list(range(len(queries)))})
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=1,
                                                per_device_train_batch_size=8, learning_rate=1e-3, logging_steps=2,
                                                router_mapping=ROUTER_MAPPING, report_to="none", save_strategy="no",
                                                seed=0, use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss,
                                         callbacks=[loss.callback()])
    trainer.train()
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert logged and all("mrr10" in r and "pairs" in r for r in logged)
    assert np.array_equal(model.encode_document(docs, convert_to_numpy=True), doc_before)
    assert not np.allclose(model.encode_query(queries, convert_to_numpy=True), query_before)
    model.save(str(tmp_path / "saved"))
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert np.array_equal(reloaded.encode_document(docs, convert_to_numpy=True), doc_before)
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "AdoreLoss" in card and "zhan2021optimizing" in card


def test_train_centroids_trains_a_copy_and_saves_it(setup, tmp_path, rng):
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    import drfast
    from drfast.integrations.sentence_transformers import ROUTER_MAPPING, AdoreLoss

    model, flat, docs, queries, positives = setup
    with pytest.raises(UsageError) as e:
        AdoreLoss(model, flat, positives, k=10, train_centroids=True)
    assert e.value.param == "train_centroids"
    m = 8
    centroids = rng.standard_normal((m, 256, flat.dim // m)).astype(np.float32) * 0.3
    pq = drfast.PQIndex(centroids, rng.integers(0, 256, size=(flat.ntotal, m)).astype(np.uint8))
    loss = AdoreLoss(model, pq, positives, k=30, train_centroids=True)
    assert loss.index is not pq and loss.index.centroids is loss.centroids
    train = Dataset.from_dict({"query": queries, "label": list(range(len(queries)))})
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=1,
                                                per_device_train_batch_size=8, learning_rate=1e-3,
                                                learning_rate_mapping={"^centroids$": 1e-2},
                                                router_mapping=ROUTER_MAPPING, report_to="none", save_strategy="no",
                                                seed=0, use_cpu=True)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss,
                               callbacks=[loss.callback()]).train()
    assert np.array_equal(pq.centroids.numpy(), centroids)  # the given index is left as it was
    trained = loss.centroids.detach().numpy()
    assert not np.allclose(trained, centroids)
    saved = drfast.load_index(tmp_path / "out" / "index")
    assert np.array_equal(saved.centroids.numpy(), trained)
    assert np.array_equal(np.asarray(saved.codes), np.asarray(pq.codes))


def test_callback_clips_the_centroids_gradient_on_its_own(setup, tmp_path, rng):
    """The trainer clips the model's gradient norm only; drfast adore clips the centroids' group on its own,
    and AdoreLoss.callback() does the same before the optimizer step."""
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    import drfast
    from drfast.integrations.sentence_transformers import ROUTER_MAPPING, AdoreLoss

    model, flat, docs, queries, positives = setup
    m = 8
    centroids = rng.standard_normal((m, 256, flat.dim // m)).astype(np.float32) * 0.3
    pq = drfast.PQIndex(centroids, rng.integers(0, 256, size=(flat.ntotal, m)).astype(np.uint8))
    loss = AdoreLoss(model, pq, positives, k=30, train_centroids=True)
    norms = {"before": [], "after": []}

    class Norm(TrainerCallback):
        def __init__(self, key):
            self.key = key

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            norms[self.key].append(float(loss.centroids.grad.norm()))

    max_norm = 1e-4
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=1,
                                                per_device_train_batch_size=8, max_grad_norm=max_norm,
                                                router_mapping=ROUTER_MAPPING, report_to="none", save_strategy="no",
                                                seed=0, use_cpu=True)
    train = Dataset.from_dict({"query": queries, "label": list(range(len(queries)))})
    SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss,
                               callbacks=[Norm("before"), loss.callback(), Norm("after")]).train()
    assert len(norms["after"]) == 3 and all(n > max_norm for n in norms["before"])
    assert all(n <= max_norm * (1 + 1e-5) for n in norms["after"])
