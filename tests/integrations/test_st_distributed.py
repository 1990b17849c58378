"""AdoreLoss under torch.distributed (gloo on the CPU).

Loss level (2 spawned ranks): each rank's loss and query-side gradients over a ShardedIndex (each rank half
of the rows) or a replicated FlatIndex are bit-identical to one process's with a FlatIndex of all rows on
the same queries (rows tied across the shards, k above a shard's rows), and the logged MRR@10 / pairs are
the means over both ranks' batches. Trainer level: a real torchrun launch trains through
SentenceTransformerTrainer on a ShardedIndex; both ranks end with the same weights, rank 0 saves them,
the document side is unchanged after save and reload. The tiny BERT has no dropout, so that two forward
passes of the same queries are the same.
"""
import hashlib
import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from distributed_util import spawn
from tiny import WORDS, make_tiny_hf_folder, make_tiny_st_folder

N_DOCS, CUTOFF = 40, 5
# (index, k): k=30 and k=N_DOCS exceed a shard's 20 rows (the merge pads past them); k=3 is below the cutoff
CASES = (("sharded", 30), ("sharded", 3), ("sharded", N_DOCS), ("replicated", 30))


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory):
    """A tiny random BERT without dropout, saved as a sentence-transformers model (mean pooling, normalised)."""
    hf = make_tiny_hf_folder(tmp_path_factory.mktemp("hf"))
    return make_tiny_st_folder(hf, tmp_path_factory.mktemp("st"), dropout=False)


def random_data(rng, n_docs=N_DOCS, n_queries=16):
    docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 10)))) + f" {i}" for i in range(n_docs)]
    queries = [" ".join(rng.choice(WORDS, size=3)) for _ in range(n_queries)]
    positives = [sorted(rng.choice(n_docs, size=int(rng.integers(1, 3)), replace=False).tolist()) for _ in queries]
    return docs, queries, positives


# ---- loss level ----------------------------------------------------------------------------------------
def _query_grads(model):
    """The gradients of the query route; the document route must have none."""
    grads = {}
    for name, p in model.named_parameters():
        if ".document." in name:
            assert p.grad is None, name
        elif p.grad is not None:
            grads[name] = p.grad.clone()
    return grads


def _step(model, index, positives, labels, k):
    """A fresh AdoreLoss's (loss, query gradients) on the queries `labels`, in training mode."""
    from drfast.integrations.sentence_transformers import AdoreLoss

    model.train().zero_grad(set_to_none=True)  # training mode: the loss records its statistics
    loss_fn = AdoreLoss(model, index, positives, k=k, cutoff=CUTOFF)
    loss = loss_fn([model.preprocess(labels["texts"], task="query")], torch.tensor(labels["rows"]))
    loss.backward()
    return loss_fn, loss.detach(), _query_grads(model)


def _loss_rank(rank, world, folder, docs, positives, ties, batches):
    """Each case: this rank's loss over the distributed index, then one process's (a FlatIndex of all rows,
    no collective) on the same queries; the logged statistics of the first and the reference's own."""
    from sentence_transformers import SentenceTransformer

    from drfast import FlatIndex, adore_batch_loss
    from drfast.index.sharded import ShardedIndex
    from drfast.integrations.sentence_transformers import query_side

    model = query_side(SentenceTransformer(folder, device="cpu"))
    emb = model.encode_document(docs, convert_to_numpy=True)
    emb[ties[:, 1]] = emb[ties[:, 0]]  # rows tied bit for bit, one copy in each shard
    mine = batches[rank]
    out = {"emb": emb, "cases": []}
    for kind, k in CASES:
        index = ShardedIndex.from_full(FlatIndex(emb)) if kind == "sharded" else FlatIndex(emb)
        loss_fn, loss, grads = _step(model, index, positives, mine, k)
        logged = loss_fn.take_logged()  # collective: means over both ranks
        _, ref_loss, ref_grads = _step(model, FlatIndex(emb), positives, mine, k)
        with torch.no_grad():
            q = model(model.preprocess(mine["texts"], task="query"), task="query")["sentence_embedding"]
        _, info = adore_batch_loss(q, FlatIndex(emb), [positives[r] for r in mine["rows"]], k, CUTOFF)
        out["cases"].append({"loss": loss, "grads": grads, "logged": logged, "ref_loss": ref_loss,
                             "ref_grads": ref_grads, "ref_info": {key: float(info[key]) for key in ("mrr10", "pairs")},
                             "local_rows": None if kind == "replicated" else (index.local_rows.start,
                                                                             index.local_rows.stop)})
    return out


def test_loss_and_gradients_equal_one_process(st_folder, rng):
    docs, queries, positives = random_data(rng)
    half = N_DOCS // 2
    ties = np.stack([rng.choice(half, size=6, replace=False), half + rng.choice(half, size=6, replace=False)], 1)
    positives[0] = [int(ties[0, 1])]  # a positive whose tied twin lies in the other shard, before it
    positives[1] = sorted({int(ties[1, 0]), int(ties[2, 1])})
    rows = [[0, 5, 1, 9, 12], [1, 14, 0, 14]]  # unequal batches, a query twice, the tie queries on both ranks
    batches = [{"rows": r, "texts": [queries[i] for i in r]} for r in rows]
    out = spawn(2, _loss_rank, st_folder, docs, positives, ties, batches)
    assert np.array_equal(out[0]["emb"], out[1]["emb"])
    for c, (kind, k) in enumerate(CASES):
        for rank, r in enumerate(out):
            case = r["cases"][c]
            if kind == "sharded":
                assert case["local_rows"] == (rank * half, (rank + 1) * half)
            assert torch.equal(case["loss"], case["ref_loss"]), (kind, k, rank)
            assert case["grads"].keys() == case["ref_grads"].keys() and case["grads"], (kind, k, rank)
            for name, g in case["grads"].items():
                assert torch.equal(g, case["ref_grads"][name]), (kind, k, rank, name)
        for key in ("mrr10", "pairs"):
            mean = np.mean([r["cases"][c]["ref_info"][key] for r in out])
            for r in out:
                assert r["cases"][c]["logged"][key] == pytest.approx(mean, abs=6e-5), (kind, k, key)
    pairs = [[r["cases"][c]["ref_info"]["pairs"] for r in out] for c in range(len(CASES))]
    assert any(a != b for a, b in pairs)  # the ranks' own statistics differ: the mean is not rank 0's


def _bad_label_rank(rank, world, folder, docs, positives):
    """Rank 1's batch has a label outside positives: what each rank raises (a hang fails the test by timeout)."""
    from sentence_transformers import SentenceTransformer

    from drfast import FlatIndex
    from drfast.index.sharded import ShardedIndex
    from drfast.integrations.sentence_transformers import AdoreLoss, query_side

    model = query_side(SentenceTransformer(folder, device="cpu"))
    index = ShardedIndex.from_full(FlatIndex(model.encode_document(docs, convert_to_numpy=True)))
    loss_fn = AdoreLoss(model, index, positives, k=5, cutoff=CUTOFF)
    label = torch.tensor([0, len(positives) if rank == 1 else 1])
    try:
        loss_fn([model.preprocess(["a query", "another"], task="query")], label)
    except Exception as e:  # noqa: BLE001 - the test compares the types and messages
        return type(e).__name__, str(e)
    return None


def test_bad_label_on_one_rank_raises_on_every_rank(st_folder, rng):
    docs, _, positives = random_data(rng)
    out = spawn(2, _bad_label_rank, st_folder, docs, positives)
    assert out[1][0] == "UsageError" and "label" in out[1][1]
    assert out[0][0] == "RuntimeError" and "rank(s) [1]" in out[0][1]


# ---- trainer level: a real torchrun launch ----------------------------------------------------------------
def weights_digest(model):
    """sha256 of a model's state_dict (names and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


TRAIN_SCRIPT = '''
"""Run by torchrun: AdoreLoss through SentenceTransformerTrainer on a ShardedIndex (gloo, CPU)."""
import hashlib
import json
import os
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

import drfast
from drfast.index.sharded import ShardedIndex
from drfast.integrations.sentence_transformers import ROUTER_MAPPING, AdoreLoss, query_side

{weights_digest}

def main(model_dir, data_file, out):
    torch.set_num_threads(1)
    drfast.set_num_threads(1)
    with open(data_file) as f:
        data = json.load(f)
    args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(out, "trainer"), num_train_epochs=2, per_device_train_batch_size=4,
        learning_rate=5e-3, logging_steps=1, router_mapping=ROUTER_MAPPING, report_to="none",
        save_strategy="steps", save_steps=2, seed=0, use_cpu=True, ddp_backend="gloo")
    assert dist.is_initialized(), "the training arguments did not join torchrun's process group"
    model = query_side(SentenceTransformer(model_dir, device="cpu"))
    start = weights_digest(model)
    index = ShardedIndex.from_full(drfast.FlatIndex(model.encode_document(data["docs"], convert_to_numpy=True)))
    loss = AdoreLoss(model, index, data["positives"], k=data["k"], cutoff=5)
    train = Dataset.from_dict({{"query": data["queries"], "label": list(range(len(data["queries"])))}})
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss,
                                         callbacks=[loss.callback()])
    trainer.train()
    rank = dist.get_rank()
    report = {{"world": dist.get_world_size(), "local_rows": [index.local_rows.start, index.local_rows.stop],
              "start": start, "end": weights_digest(model), "log": trainer.state.log_history}}
    if rank == 0:
        model.save(os.path.join(out, "saved"))
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
'''


def test_torchrun_trainer_on_sharded_index(st_folder, rng, tmp_path):
    """torchrun --nproc_per_node 2 (torch.distributed.run of this interpreter: a `torchrun` on PATH may
    belong to another environment) trains 2 epochs of 2 steps (16 queries, 4 per rank and step)."""
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    from sentence_transformers import SentenceTransformer

    docs, queries, positives = random_data(rng)
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"docs": docs, "queries": queries, "positives": positives, "k": 20}))
    script = tmp_path / "train_adore.py"
    script.write_text(TRAIN_SCRIPT.format(weights_digest=textwrap.dedent(inspect.getsource(weights_digest))))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(script),
           st_folder, str(data), str(out)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["local_rows"] for r in ranks] == [[0, N_DOCS // 2], [N_DOCS // 2, N_DOCS]]
    assert ranks[0]["start"] == ranks[1]["start"] != ranks[0]["end"] == ranks[1]["end"]
    logs = [[(row["step"], row["mrr10"], row["pairs"]) for row in r["log"] if "loss" in row] for r in ranks]
    assert [s for s, _, _ in logs[0]] == [1, 2, 3, 4]
    assert logs[0] == logs[1]  # means over both ranks, on both
    assert (out / "trainer" / "checkpoint-4" / "query_0_Transformer" / "model.safetensors").is_file()

    original = SentenceTransformer(st_folder, device="cpu")
    saved = SentenceTransformer(str(out / "saved"), device="cpu")
    assert weights_digest(saved) == ranks[0]["end"]
    texts = docs[:6]
    assert np.array_equal(saved.encode_document(texts, convert_to_numpy=True),
                          original.encode_document(texts, convert_to_numpy=True))
    assert not np.allclose(saved.encode_query(queries, convert_to_numpy=True),
                           original.encode_query(queries, convert_to_numpy=True))
