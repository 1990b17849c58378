"""Training under torch.distributed (2 gloo processes on the CPU) equals one process.

ADORE and STAR with 2 ranks and the same global --batch-size and seed give the weights and metrics of
one process up to float summation order (index replicated and sharded); STAR's gathered documents
and each query's positive column are those of one process (the gather layout); a 2-rank run resumed
after an interruption equals the uninterrupted one; resuming with another world size is refused.
The tiny BERT has no dropout: dropout masks depend on the batch's shape, so per-rank draws differ
from one process's by design.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import drfast
from distributed_util import spawn
from drfast.common.distributed import all_gather_rows, share_of_mean, slice_of
from drfast.encode.encoders import Encoder
from drfast.pipelines.adore import run_adore
from drfast.pipelines.specs import CorpusSpec, EncoderSpec, OutputSpec, PlacementSpec
from drfast.pipelines.star import run_star
from drfast.train.adore import AdoreConfig, AdoreTrainer
from drfast.train.star import StarConfig, star_batch_loss
from tiny import WORDS, make_tiny_beir, make_tiny_hf_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    model = make_tiny_hf_folder(root / "model")
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump(config, f)
    # 11 training queries, global batch 5: batches of 5, 5 and 1 (with 2 ranks: 3/2, 3/2 and 1/0 queries)
    data = make_tiny_beir(root / "beir", np.random.default_rng(0), n_docs=50, n_queries=11)
    return {"root": root, "model": model, "data": data}


def _weights(output):
    return torch.load(os.path.join(output, "run", "checkpoint.pt"), weights_only=False)["model"]


def _assert_close_weights(a, b, lr):
    """Equal up to float rounding, amplified by AdamW: the ranks sum their gradients in another order (and
    the CPU's GEMM kernels round differently on AVX2 and AVX-512 machines), and AdamW divides each
    gradient by its running RMS, so a coordinate whose gradient is tiny moves by rounding-sized amounts
    times lr / sqrt(v). 1.9e-5 was measured on an AVX2 EPYC (1e-5 held on AVX-512 machines); a batch
    taken twice or dropped on one rank moves weights by a whole update, about lr each step."""
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name].double(), b[name].double()
        assert (x - y).abs().max() <= max(1e-5 * max(1.0, float(x.abs().max())), lr / 20), name


def _assert_close_metrics(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert abs(a[key] - b[key]) <= 0.002, (key, a[key], b[key])


ADORE = dict(k=20, cutoff=10, lr=2e-3, batch_size=5, epochs=2, warmup_ratio=0.0, seed=3, save_every=100)


def _adore_rank(rank, world, setup, output, shard):
    report = run_adore(CorpusSpec(setup["data"], cache=setup["root"] / f"cache{world}"), EncoderSpec(setup["model"]),
                       OutputSpec(output), config=AdoreConfig(**ADORE),
                       placement=PlacementSpec(device="cpu", shard_index=shard))
    return report


@pytest.fixture(scope="module")
def adore_one(setup):
    output = setup["root"] / "adore1"
    return run_adore(CorpusSpec(setup["data"], cache=setup["root"] / "cache1"), EncoderSpec(setup["model"]),
                     OutputSpec(output), config=AdoreConfig(**ADORE), placement=PlacementSpec(device="cpu")), output


@pytest.mark.parametrize("shard", [False, True])
def test_adore_two_ranks_equal_one(setup, adore_one, shard):
    one, one_out = adore_one
    output = setup["root"] / f"adore2_{shard}"
    reports = spawn(2, _adore_rank, setup, output, shard)
    two = json.loads((output / "metrics.json").read_text())
    assert two["config"]["world_size"] == 2 and two["config"]["shard_index"] is shard
    assert one["config"]["world_size"] == 1
    assert reports[1]["after"] == ({} if not shard else {})  # rank 0 reports
    _assert_close_metrics(one["before"], two["before"])
    _assert_close_metrics(one["after"], two["after"])
    _assert_close_weights(_weights(one_out), _weights(output), ADORE["lr"])
    log_one = [json.loads(line) for line in (one_out / "run" / "train_log.jsonl").read_text().splitlines()]
    log_two = [json.loads(line) for line in (output / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_one] == [r["step"] for r in log_two] == list(range(1, 7))
    np.testing.assert_allclose([r["loss"] for r in log_two], [r["loss"] for r in log_one], rtol=1e-4)


STAR = dict(method="star", lr=2e-3, batch_size=5, epochs=1, warmup_ratio=0.0, seed=5, n_negatives=2, score_scale=20.0,
            save_every=100)
# Mean pooling: with the random tiny BERT's CLS every embedding is nearly the same, the loss sits at log 2 and
# its gradient is a cancellation of terms 1e4 times larger, so float rounding of any summation order (one
# process splitting its loss in two) moves it by 6e-4 relative; with mean pooling by 7e-7.
STAR_ENCODER = {"pooling": "mean"}


def _star_rank(rank, world, setup, output):
    return run_star(CorpusSpec(setup["data"], cache=setup["root"] / f"star_cache{world}"),
                    EncoderSpec(setup["model"], **STAR_ENCODER), OutputSpec(output), config=StarConfig(**STAR))


def test_star_two_ranks_equal_one(setup):
    one_out = setup["root"] / "star1"
    one = run_star(CorpusSpec(setup["data"], cache=setup["root"] / "star_cache1"),
                   EncoderSpec(setup["model"], **STAR_ENCODER), OutputSpec(one_out), config=StarConfig(**STAR))
    output = setup["root"] / "star2"
    spawn(2, _star_rank, setup, output)
    two = json.loads((output / "metrics.json").read_text())
    assert two["config"]["world_size"] == 2
    _assert_close_metrics(one["before"], two["before"])
    _assert_close_weights(_weights(one_out), _weights(output), STAR["lr"])
    _assert_close_metrics(one["after"], two["after"])


# ---- STAR's gather layout: the documents and columns of one process, the gradient of one process -------
def _layout_case(seed):
    g = torch.Generator().manual_seed(seed)
    B, U, d = 3, 7, 4  # 2 ranks: 2/1 queries, 4/3 documents
    q = torch.randn(B, d, generator=g)
    docs = torch.randn(U, d, generator=g)
    pos_col = torch.tensor([0, 3, 6])
    neg_cols = torch.tensor([[1, 2], [4, -1], [5, 0]])
    known_pos = torch.zeros(B, U, dtype=torch.bool)
    known_pos[torch.arange(B), pos_col] = True
    known_pos[1, 5] = True  # another positive of query 1, in another query's row of negatives
    return q, docs, pos_col, neg_cols, known_pos


def _layout_rank(rank, world, alpha):
    q, docs, pos_col, neg_cols, known_pos = _layout_case(0)
    qa, qb = slice_of(q.shape[0], rank, world)
    da, db = slice_of(docs.shape[0], rank, world)
    q_local = q[qa:qb].clone().requires_grad_()
    d_local = docs[da:db].clone().requires_grad_()
    sizes = [np.diff(slice_of(docs.shape[0], r, world))[0] for r in range(world)]
    gathered = all_gather_rows(d_local, sizes)
    loss = star_batch_loss(q_local, gathered, pos_col[qa:qb], neg_cols[qa:qb], known_pos[qa:qb], "star", alpha,
                           reduce=share_of_mean)
    loss.backward()  # then DDP would average over the ranks: divide by world
    return {"gathered": gathered.detach(), "loss": float(loss.detach()) / world, "q_grad": q_local.grad / world,
            "d_grad": d_local.grad / world}


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_star_gather_layout_and_gradient_equal_one_process(alpha):
    q, docs, pos_col, neg_cols, known_pos = _layout_case(0)
    q1, d1 = q.clone().requires_grad_(), docs.clone().requires_grad_()
    loss = star_batch_loss(q1, d1, pos_col, neg_cols, known_pos, "star", alpha)
    loss.backward()
    out = spawn(2, _layout_rank, alpha)
    for r in out:  # every rank sees the global batch's documents, in the single process's columns
        assert torch.equal(r["gathered"], docs)
    assert sum(r["loss"] for r in out) == pytest.approx(float(loss.detach()), rel=1e-6)
    torch.testing.assert_close(torch.cat([r["q_grad"] for r in out]), q1.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.cat([r["d_grad"] for r in out]), d1.grad, rtol=1e-5, atol=1e-7)


# ---- resume ------------------------------------------------------------------------------------------------
class Killed(Exception):
    pass


def _kill_at(step):
    def hook(trainer, at):
        if at == step:
            raise Killed(f"killed at step {step}")
    return 1, hook


def _synthetic(seed=1, n_docs=60, n_queries=9, dim=32):
    rng = np.random.default_rng(seed)
    docs = rng.standard_normal((n_docs, dim)).astype(np.float32)
    queries = {f"q{i}": " ".join(rng.choice(WORDS, size=4)) + f" {chr(97 + i)}" for i in range(n_queries)}
    positives = {q: [f"d{int(rng.integers(n_docs))}"] for q in queries}
    return drfast.FlatIndex(docs, doc_ids=[f"d{i}" for i in range(n_docs)]), queries, positives


RESUME = dict(k=20, cutoff=10, lr=1e-3, batch_size=4, epochs=3, save_every=2, seed=7)


def _trainer(model, out, hooks=()):
    index, queries, positives = _synthetic()
    return AdoreTrainer(Encoder.load(model, role="query"), index, queries=queries, positives=positives,
                        config=AdoreConfig(**RESUME), output_dir=out, hooks=hooks)


def _resume_rank(rank, world, model, root):
    full = _trainer(model, root / "full")
    full.train()
    try:
        _trainer(model, root / "cut", hooks=[_kill_at(5)]).train()
        killed = False
    except Killed:
        killed = True
    resumed = _trainer(model, root / "cut")
    resumed.train(resume=True)
    return {"killed": killed, "steps": (full.step, resumed.step),
            "full": full.encoder.state_dict(), "resumed": resumed.encoder.state_dict(),
            "loss": ([h["loss"] for h in full.history], [h["loss"] for h in resumed.history])}


def test_resume_two_ranks_equals_uninterrupted_and_other_world_size_refused(setup, tmp_path):
    out = spawn(2, _resume_rank, setup["model"], tmp_path)
    for r in out:
        assert r["killed"] and r["steps"] == (9, 9)  # 9 queries / 4: 3 steps per epoch
        for name, a in r["full"].items():
            assert torch.equal(a, r["resumed"][name]), name
        assert r["loss"][0] == r["loss"][1]
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["world_size"] == 2
    with pytest.raises(ValueError, match=r"^resume: .*trained on 2 process\(es\).*this one has 1"):
        _trainer(setup["model"], tmp_path / "cut").train(resume=True)


@pytest.mark.slow
def test_torchrun_cli_adore(setup, tmp_path):
    """The real launcher: torchrun --nproc_per_node=2 -m drfast adore (gloo on the CPU)."""
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [torchrun, "--nproc_per_node=2", "--standalone", "-m", "drfast", "adore", "--data", setup["data"],
           "--model", setup["model"], "--output", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
           "--device", "cpu", "--k", "20", "--batch-size", "5", "--epochs", "1", "--shard-index"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["config"]["world_size"] == 2 and report["config"]["shard_index"] is True
    assert proc.stdout.count("ADORE on flat") == 1  # rank 0 reports
