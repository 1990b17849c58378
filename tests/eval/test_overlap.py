import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import drfast
from drfast.train.adore import AdoreConfig, AdoreTrainer
from drfast.eval.overlap import NegativeOverlapHook, overlap_and_mrr, sample_queries
from drfast.encode.encoders import BiEncoder, Encoder
from drfast.train.star import StarConfig, StarTrainer
from drfast.train.core import TrainConfig, TrainingRun
from tiny import WORDS, make_tiny_beir, make_tiny_hf_folder


# ---- the array function -------------------------------------------------------------------------
def test_overlap_and_mrr_on_a_hand_built_batch():
    ids = np.array([[5, 2, 7, 1, 9],
                    [3, 6, 0, 4, 8],
                    [1, 2, 3, 4, 5]])
    pos_offsets, pos_ids, pos_ranks = np.array([0, 2, 3, 4]), np.array([2, 8, 4, 1]), np.array([2, 40, 4, 1])
    static = [[7, 2, 9, 7, 4],  # unique, positives out: [7, 9, 4]; D = [5, 7, 1] (2 is a positive) -> 1/3
              [8, 3],           # D = [3, 6, 0] -> 1/2
              [1]]              # only a positive: S is empty -> NaN
    overlap, mrr = overlap_and_mrr(ids, pos_offsets, pos_ids, pos_ranks, static, k=3)
    np.testing.assert_allclose(overlap, [1 / 3, 1 / 2, np.nan])
    assert mrr == pytest.approx((1 / 2 + 1 / 4 + 1) / 3)  # best ranks 2, 4 and 1
    # only the first k static negatives count: with k=1, S = [7] and D = [5]
    assert overlap_and_mrr(ids, pos_offsets, pos_ids, pos_ranks, static, k=1)[0][0] == 0.0


def reference_overlap_and_mrr(emb, q, positives, static, k):
    """Brute force over the whole score matrix: ties by lower row, as the fused search."""
    scores = q.astype(np.float64) @ emb.T.astype(np.float64)
    overlap, rr = [], []
    for b, pos in enumerate(positives):
        rows = np.arange(len(emb))
        order = np.lexsort((rows, -scores[b]))
        dynamic = [r for r in order if r not in pos][:k]
        s = []
        for r in static[b]:
            if r not in pos and r not in s:
                s.append(r)
        s = s[:k]
        overlap.append(np.mean([r in dynamic for r in s]) if s else np.nan)
        best = min(1 + np.sum((scores[b] > scores[b, p]) | ((scores[b] == scores[b, p]) & (rows < p))) for p in pos)
        rr.append(1 / best if best <= 10 else 0.0)
    return np.array(overlap), float(np.mean(rr))


@pytest.mark.parametrize("k", [1, 7, 40])
def test_overlap_and_mrr_match_brute_force(rng, k):
    n, d, B = 150, 8, 24
    # small integers: exact float32 scores with many ties, so tie-breaking is exercised too
    emb = rng.integers(-2, 3, (n, d)).astype(np.float32)
    q = rng.integers(-2, 3, (B, d)).astype(np.float32)
    positives = [sorted(set(rng.integers(0, n, rng.integers(1, 4)).tolist())) for _ in range(B)]
    static = [rng.integers(0, n, rng.integers(0, 60)).tolist() + positives[b][:1] for b in range(B)]
    res = drfast.FlatIndex(emb).search(q, k=min(k + max(map(len, positives)), n), positives=positives)
    overlap, mrr = overlap_and_mrr(res.ids, res.pos_offsets, res.pos_ids, res.pos_ranks, static, k)
    ref_overlap, ref_mrr = reference_overlap_and_mrr(emb, q, positives, static, k)
    np.testing.assert_allclose(overlap, ref_overlap)
    assert mrr == pytest.approx(ref_mrr, abs=1e-12)


def test_overlap_and_mrr_reject_bad_input():
    ids, off, pid, rank = np.array([[1, 2]]), np.array([0, 1]), np.array([1]), np.array([1])
    with pytest.raises(ValueError, match="ids: expected an integer array"):
        overlap_and_mrr(ids[0], off, pid, rank, [[2]], 1)
    with pytest.raises(ValueError, match="pos_offsets: expected"):
        overlap_and_mrr(ids, np.array([0, 1, 1]), pid, rank, [[2]], 1)
    with pytest.raises(ValueError, match="pos_ranks: expected 1 values"):
        overlap_and_mrr(ids, off, pid, np.array([1, 2]), [[2]], 1)
    with pytest.raises(ValueError, match="static_rows: expected one list per query"):
        overlap_and_mrr(ids, off, pid, rank, [[2], [3]], 1)
    with pytest.raises(ValueError, match="k: must be >= 1"):
        overlap_and_mrr(ids, off, pid, rank, [[2]], 0)


def test_sample_queries_is_seeded_bounded_and_order_free():
    qids = [f"q{i}" for i in range(50)]
    a = sample_queries(qids, 10, seed=3)
    assert len(a) == 10 and a == sorted(a) and set(a) <= set(qids)
    assert sample_queries(qids[::-1], 10, seed=3) == a
    assert sample_queries(qids, 10, seed=4) != a
    assert sample_queries(qids, None) == sorted(qids) == sample_queries(qids, 50)
    with pytest.raises(ValueError, match="max_queries: must be >= 1"):
        sample_queries(qids, 0)


class CountingRun(TrainingRun):
    """A trainer with no encoder: one parameter, a constant loss gradient, for the hook schedule."""

    def micro_batch(self, items):
        return self.model.weight.sum(), {}


def test_each_hook_runs_on_its_own_period_and_at_step_zero():
    calls = []

    def hook(name):
        return lambda tr, step: calls.append((name, step)) or {name: step}

    run = CountingRun(torch.nn.Linear(1, 1), list(range(12)), config=TrainConfig(batch_size=1, epochs=1),
                      hooks=[(4, hook("a")), (6, hook("b")), (0, lambda tr, s: 1 / 0)])
    history = run.train()
    assert calls == [("a", 0), ("b", 0), ("a", 4), ("b", 6), ("a", 8), ("a", 12), ("b", 12)]
    assert history[0] == {"step": 0, "epoch": 0, "a": 0, "b": 0}
    assert {r["step"]: ("a" in r, "b" in r) for r in history if r["step"] in (4, 6, 12)} == {
        4: (True, False), 6: (False, True), 12: (True, True)}
    with pytest.raises(ValueError, match="hooks: every: must be >= 0"):
        CountingRun(torch.nn.Linear(1, 1), [0], hooks=[(-1, print)])
    with pytest.raises(TypeError, match="callable hook"):
        CountingRun(torch.nn.Linear(1, 1), [0], hooks=[(1, "print")])
    with pytest.raises(TypeError, match=r"\(every, hook\) pairs"):
        CountingRun(torch.nn.Linear(1, 1), [0], hooks=[print])


def test_a_resumed_run_calls_no_hook_at_step_zero(tmp_path):
    calls = []
    config = TrainConfig(batch_size=1, epochs=2, save_every=2)

    def stop_at_5(tr, step):
        if step == 5:  # the last checkpoint is at step 4
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        CountingRun(torch.nn.Linear(1, 1), list(range(4)), config=config, output_dir=tmp_path,
                    hooks=[(1, stop_at_5)]).train()
    torch.manual_seed(0)  # a resumed run starts from the same model
    CountingRun(torch.nn.Linear(1, 1), list(range(4)), config=config, output_dir=tmp_path,
                hooks=[(2, lambda tr, s: calls.append(s))]).train(resume=True)
    assert calls == [6, 8]


# ---- the hook in training -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_hf_folder(tmp_path_factory.mktemp("diag_model"))


def adore_task(n_docs=80, n_queries=16, dim=32):
    rng = np.random.default_rng(0)  # fixed: the run below must move the overlap away from 1
    docs = rng.standard_normal((n_docs, dim)).astype(np.float32)
    queries = {f"q{i}": " ".join(rng.choice(WORDS, size=4)) + f" {chr(97 + i)}" for i in range(n_queries)}
    positives = {q: [f"d{int(rng.integers(n_docs))}"] for q in queries}
    return drfast.FlatIndex(docs, doc_ids=[f"d{i}" for i in range(n_docs)]), queries, positives


def adore_trainer(tiny_model, out, hooks, every=2):
    """hooks: called every `every` steps."""
    index, queries, positives = adore_task()
    config = AdoreConfig(k=20, lr=1e-3, batch_size=4, epochs=3, save_every=2, seed=7)
    return AdoreTrainer(Encoder.load(tiny_model, role="query"), index, queries=queries, positives=positives,
                        config=config, output_dir=out, hooks=[(every, hook) for hook in hooks])


def overlap_hook(tiny_model, **kwargs):
    index, queries, positives = adore_task()
    return NegativeOverlapHook.from_index(index, Encoder.load(tiny_model, role="query"), queries, positives,
                                          k=10, batch_size=4, **kwargs)


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hook_logs_step_zero_and_every_eval_step(tiny_model, tmp_path):
    (tmp_path / "train_log.jsonl").write_text('{"step": 99, "loss": 1.0}\n')  # an earlier run's: replaced
    trainer = adore_trainer(tiny_model, tmp_path, [overlap_hook(tiny_model, max_queries=12)])
    trainer.train()
    log = read_log(tmp_path / "train_log.jsonl")
    assert log == trainer.history
    assert log[0] == {"step": 0, "epoch": 0, "static_overlap": 1.0, "train_mrr10": log[0]["train_mrr10"]}
    assert [r["step"] for r in log] == list(range(13))
    for record in log[1:]:
        assert ("static_overlap" in record) == (record["step"] % 2 == 0)
        if record["step"] % 2 == 0:
            assert 0 <= record["static_overlap"] <= 1 and 0 <= record["train_mrr10"] <= 1
    assert log[-1]["static_overlap"] < 1.0  # the query encoder has moved


def test_hook_changes_no_weight(tiny_model, tmp_path):
    plain = adore_trainer(tiny_model, None, [])
    plain.train()
    hooked = adore_trainer(tiny_model, None, [overlap_hook(tiny_model)], every=1)
    hooked.train()
    for (name, a), (_, b) in zip(plain.encoder.state_dict().items(), hooked.encoder.state_dict().items()):
        assert torch.equal(a, b), name


def test_resume_keeps_one_step_zero_and_the_same_result(tiny_model, tmp_path):
    full = adore_trainer(tiny_model, tmp_path / "full", [overlap_hook(tiny_model)])
    full.train()

    class Interrupt(Exception):
        pass

    def stop_at_6(tr, step):
        if step == 6:
            raise Interrupt

    with pytest.raises(Interrupt):  # the last checkpoint is at step 4
        adore_trainer(tiny_model, tmp_path / "cut", [overlap_hook(tiny_model), stop_at_6]).train()
    resumed = adore_trainer(tiny_model, tmp_path / "cut", [overlap_hook(tiny_model)])
    resumed.train(resume=True)
    for (name, a), (_, b) in zip(full.encoder.state_dict().items(), resumed.encoder.state_dict().items()):
        assert torch.equal(a, b), name
    log = read_log(tmp_path / "cut" / "train_log.jsonl")
    assert [r["step"] for r in log] == list(range(13))
    strip = [{k: v for k, v in r.items() if k != "step_s" and k != "nonencoder_share"} for r in log]
    assert strip == [{k: v for k, v in r.items() if k != "step_s" and k != "nonencoder_share"}
                     for r in read_log(tmp_path / "full" / "train_log.jsonl")]


def test_star_trainer_gets_a_reencoded_index(rng, tmp_path):
    from tiny import ListCorpus

    torch.manual_seed(0)
    model = BiEncoder.load(make_tiny_hf_folder(tmp_path / "m"), pooling="mean")
    docs = [" ".join(rng.choice(WORDS, 6)) + f" {chr(97 + i % 26)}" for i in range(40)]
    queries = {f"q{i}": docs[i][:12] for i in range(16)}
    positives = {f"q{i}": [f"d{i}"] for i in range(16)}
    negatives = {f"q{i}": [f"d{(i + 1) % 40}", f"d{(i + 20) % 40}", f"d{i}"] for i in range(16)}
    hook = NegativeOverlapHook(queries, positives, negatives, k=5, max_queries=8)
    assert len(hook.qids) == 8 and all(len(hook.static[q]) == 2 for q in hook.qids)  # the positive is dropped
    config = StarConfig(method="star", lr=2e-3, batch_size=8, epochs=2)
    history = StarTrainer(model, ListCorpus(docs), queries=queries, positives=positives, negatives=negatives,
                          config=config, hooks=[(2, hook)]).train()
    evals = [r for r in history if "static_overlap" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert all(0 <= r["static_overlap"] <= 1 and 0 <= r["train_mrr10"] <= 1 for r in evals)


def test_hook_input_errors_are_clear(tiny_model):
    index, queries, positives = adore_task()
    with pytest.raises(TypeError, match="static_negatives: expected a dict"):
        NegativeOverlapHook(queries, positives, [("q0", ["d1"])])
    with pytest.raises(ValueError, match="static_negatives: no query has both positives"):
        NegativeOverlapHook(queries, positives, {"q0": positives["q0"], "zz": ["d1"]})
    with pytest.raises(ValueError, match="queries: query 'q0' has positives and static negatives but no text"):
        NegativeOverlapHook({}, positives, {"q0": ["d79"]})
    with pytest.raises(ValueError, match="k: must be >= 1"):
        NegativeOverlapHook(queries, positives, {"q0": ["d79"]}, k=0)
    with pytest.raises(TypeError, match="index_fn: expected a callable"):
        NegativeOverlapHook(queries, positives, {"q0": ["d79"]}, index_fn="flat")
    hook = NegativeOverlapHook(queries, positives, {"q0": ["nope"]})
    trainer = SimpleNamespace(encoder=Encoder.load(tiny_model, role="query"), index=index)
    with pytest.raises(ValueError, match="static_negatives: document 'nope' of query 'q0' is not in the index"):
        hook(trainer, 0)
    with pytest.raises(TypeError, match="trainer: a object has neither"):
        NegativeOverlapHook(queries, positives, {"q0": ["d1"]})(object(), 0)


# ---- the pipelines and the command line -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_beir(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("diag_cli")
    return dict(model=tiny_model, data=make_tiny_beir(root / "beir", np.random.default_rng(0), n_docs=120),
                cache=str(root / "cache"), root=root)


def test_drfast_adore_overlap_every_logs_both_hooks_on_their_periods(tiny_beir, capsys):
    from drfast.cli import main

    out = tiny_beir["root"] / "adore"
    assert main(["adore", "--data", tiny_beir["data"], "--model", tiny_beir["model"], "--epochs", "3",
                 "--batch-size", "4", "--k", "20", "--eval-every", "3", "--overlap-every", "2",
                 "--cache", tiny_beir["cache"], "--output", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["config"]["overlap_every"] == 2 and report["config"]["eval_every"] == 3
    log = read_log(out / "run" / "train_log.jsonl")
    start = log[0]
    assert start["step"] == 0 and start["static_overlap"] == 1.0 and "loss" not in start
    assert start["eval_nDCG@10"] == report["before"]["nDCG@10"]
    for record in log[1:]:
        assert ("static_overlap" in record) == (record["step"] % 2 == 0)
        assert ("eval_nDCG@10" in record) == (record["step"] % 3 == 0)
    assert main(["plot", str(out)]) == 0
    assert f"written to {out / 'training.png'}" in capsys.readouterr().out


def test_drfast_star_overlap_every(tiny_beir):
    from drfast.cli import main

    out = tiny_beir["root"] / "star"
    assert main(["star", "--data", tiny_beir["data"], "--model", tiny_beir["model"], "--epochs", "2",
                 "--batch-size", "4", "--overlap-every", "2", "--cache", tiny_beir["cache"],
                 "--output", str(out)]) == 0
    log = read_log(out / "run" / "train_log.jsonl")
    evals = [r for r in log if "static_overlap" in r]
    assert [r["step"] for r in evals] == list(range(0, log[-1]["step"] + 1, 2))
    assert evals[0]["static_overlap"] == pytest.approx(1.0, abs=0.05)  # the warm-up model's own top-200
