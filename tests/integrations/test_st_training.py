"""drfast adore's training on SentenceTransformerTrainer: DrfastBatchSampler gives drfast's batches,
adore_optimizers drfast's AdamW and schedule, and with both (and adore_training_arguments) AdoreLoss through the
trainer trains the query tower as AdoreTrainer does (a model without dropout: the same weights up to rounding),
where the trainer's own sampler, warm-up and weight decay do not."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from drfast import AdoreConfig, AdoreTrainer, FlatIndex
from drfast.common.errors import UsageError
from drfast.train.core import TrainingRun

from tiny import WORDS, make_tiny_hf_folder


@pytest.fixture(scope="module")
def no_dropout_st_folder(tmp_path_factory):
    """A tiny random BERT without dropout as a sentence-transformers model (mean pooling, normalised): its
    training is deterministic, so two trainers that do the same run give the same weights."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    hf = Path(make_tiny_hf_folder(tmp_path_factory.mktemp("tiny_hf_no_dropout")))
    config = json.loads((hf / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (hf / "config.json").write_text(json.dumps(config))
    transformer = Transformer(str(hf), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"),
                                         Normalize()], device="cpu")
    folder = tmp_path_factory.mktemp("tiny_st_no_dropout")
    model.save(str(folder))
    return str(folder)


def collection(rng, n_docs=80, n_queries=23):
    """{doc_id: text}, {qid: text}, {qid: [doc_id]}; qids sort in the order they are made."""
    docs = {f"d{i:03d}": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 10)))) + f" {i}" for i in range(n_docs)}
    queries = {f"q{i:03d}": " ".join(rng.choice(WORDS, size=3)) for i in range(n_queries)}
    positives = {q: sorted(rng.choice(sorted(docs), size=int(rng.integers(1, 3)), replace=False).tolist())
                 for q in queries}
    return docs, queries, positives


def batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("n, batch_size, drop_last", [(23, 5, False), (23, 5, True), (20, 5, False), (3, 8, False),
                                                      (1, 1, False)])
def test_batch_sampler_gives_drfast_order(n, batch_size, drop_last):
    from drfast.integrations.sentence_transformers import DrfastBatchSampler

    run = TrainingRun(torch.nn.Linear(2, 2), list(range(n)), config=AdoreConfig(batch_size=batch_size, seed=7))
    sampler = DrfastBatchSampler(list(range(n)), batch_size=batch_size, drop_last=drop_last, seed=7)
    for epoch in range(3):
        got = batches(sampler, epoch)
        want = [run.order(epoch)[i:i + batch_size] for i in range(0, n, batch_size)]
        if drop_last:
            want = [b for b in want if len(b) == batch_size]
        assert got == want and len(got) == len(sampler)
    if n >= 20:  # each epoch and each seed its own order
        assert batches(sampler, 0) != batches(sampler, 1)
        assert batches(DrfastBatchSampler(list(range(n)), batch_size, drop_last, seed=8), 0) != batches(sampler, 0)


def test_optimizers_are_the_cli_ones(setup_loss):
    from drfast.integrations.sentence_transformers import adore_optimizers

    loss, model = setup_loss
    config = AdoreConfig(lr=1e-3, weight_decay=0.05, warmup_ratio=0.25, batch_size=4, epochs=3)
    optimizer, scheduler = adore_optimizers(loss, 23, config)
    run = TrainingRun(torch.nn.Linear(2, 2), list(range(23)), config=config)
    assert run.total_steps == 3 * math.ceil(23 / 4)
    lrs, cli_lrs = [], []
    for _ in range(run.total_steps):
        lrs.append(scheduler.get_last_lr()[0])
        cli_lrs.append(run.scheduler.get_last_lr()[0])
        for sched in (scheduler, run.scheduler):
            sched.optimizer.step()
            sched.step()
    assert lrs == cli_lrs and lrs[0] == pytest.approx(1e-3 / (int(0.25 * run.total_steps) + 1))
    (group,) = optimizer.param_groups  # every trainable parameter decayed alike, biases and LayerNorm too
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(group["params"]) == len(trainable) and group["weight_decay"] == 0.05
    assert any("LayerNorm" in n for n, p in model.named_parameters() if any(p is q for q in group["params"]))


def test_refuses_bad_input(setup_loss, tmp_path):
    from drfast.integrations.sentence_transformers import adore_optimizers, adore_training_arguments

    loss, model = setup_loss
    for call, param in ((lambda: adore_optimizers(model, 10), "loss"),
                        (lambda: adore_optimizers(loss, 0), "train_size"),
                        (lambda: adore_optimizers(loss, 10, {"lr": 1}), "config"),
                        (lambda: adore_optimizers(loss, 10, AdoreConfig(lr=-1.0)), "lr"),
                        (lambda: adore_training_arguments(output_dir=str(tmp_path), learning_rate=1e-3),
                         "learning_rate"),
                        (lambda: adore_training_arguments(output_dir=str(tmp_path), warmup_ratio=0.2), "warmup_ratio")):
        with pytest.raises((UsageError, TypeError)) as e:
            call()
        assert e.value.param == param


@pytest.fixture
def setup_loss(tiny_st_folder, rng):
    from sentence_transformers import SentenceTransformer

    from drfast.integrations.sentence_transformers import AdoreLoss, query_side

    docs, queries, positives = collection(rng)
    model = query_side(SentenceTransformer(tiny_st_folder, device="cpu"))
    index = FlatIndex(model.encode_document(list(docs.values()), convert_to_numpy=True), doc_ids=list(docs))
    return AdoreLoss(model, index, [index.doc_ids.rows(positives[q]).tolist() for q in sorted(queries)], k=20), model


def train_with_st(folder, index, queries, positives, config, out, mode):
    """The trained query tower's embeddings of the queries: AdoreLoss through SentenceTransformerTrainer, with
    drfast's run ("drfast"), the same without DrfastRandomState ("no_rng_callback") or the trainer's own
    sampler, warm-up and weight decay for the same settings ("trainer")."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from drfast.integrations.sentence_transformers import (ROUTER_MAPPING, AdoreLoss, DrfastRandomState,
                                                           adore_optimizers, adore_training_arguments, query_side)

    model = query_side(SentenceTransformer(folder, device="cpu"))
    qids = sorted(queries)  # AdoreTrainer's items
    loss = AdoreLoss(model, index, [index.doc_ids.rows(positives[q]).tolist() for q in qids], k=config.k)
    dataset = Dataset.from_dict({"query": [queries[q] for q in qids], "label": list(range(len(qids)))})
    common = dict(output_dir=str(out), report_to="none", save_strategy="no", use_cpu=True)
    if mode == "trainer":
        args = SentenceTransformerTrainingArguments(
            num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size, learning_rate=config.lr,
            weight_decay=config.weight_decay, warmup_steps=config.warmup_ratio, max_grad_norm=config.max_grad_norm,
            seed=config.seed, router_mapping=ROUTER_MAPPING, **common)
        optimizers, callbacks = (None, None), []
    else:
        args, optimizers = adore_training_arguments(config, **common), adore_optimizers(loss, len(qids), config)
        callbacks = [DrfastRandomState()] if mode == "drfast" else []
    SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss, optimizers=optimizers,
                               callbacks=callbacks).train()
    return model.encode_query([queries[q] for q in qids], convert_to_numpy=True)


@pytest.mark.parametrize("dropout", [False, True])
def test_same_training_as_adore_trainer(dropout, no_dropout_st_folder, tiny_st_folder, rng, tmp_path):
    from sentence_transformers import SentenceTransformer

    from drfast.encode.encoders import BiEncoder

    folder = tiny_st_folder if dropout else no_dropout_st_folder
    docs, queries, positives = collection(rng)
    st = SentenceTransformer(folder, device="cpu")
    index = FlatIndex(st.encode_document(list(docs.values()), convert_to_numpy=True), doc_ids=list(docs))
    before = st.encode_query([queries[q] for q in sorted(queries)], convert_to_numpy=True)
    # 3 epochs of 5 batches (the last one short), warm-up over 3 steps, a learning rate that moves the weights
    config = AdoreConfig(lr=2e-3, batch_size=5, epochs=3, warmup_ratio=0.25, weight_decay=0.1, k=20, seed=3)
    encoder = BiEncoder.load(folder).query_encoder
    AdoreTrainer(encoder, index, queries=queries, positives=positives, config=config).train()
    with torch.inference_mode():
        cli = encoder([queries[q] for q in sorted(queries)]).numpy()
    moved = np.abs(cli - before).max()
    assert moved > 0.05
    # the same computation in the same order: equal up to rounding (bit-identical on the CPU)
    same = train_with_st(folder, index, queries, positives, config, tmp_path / "drfast", "drfast")
    np.testing.assert_allclose(same, cli, atol=1e-6, rtol=0)
    # each piece matters: the trainer's own run, and (with dropout) other masks, train another model
    for mode in ("trainer", "no_rng_callback") if dropout else ("trainer",):
        other = train_with_st(folder, index, queries, positives, config, tmp_path / mode, mode)
        assert np.abs(other - cli).max() > 0.05 * moved, mode
