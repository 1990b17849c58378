"""The trainer core's run folder: refusing to mix runs, resuming only what was started, readable
errors for damaged run files."""
import dataclasses
import json

import pytest
import torch

from drfast.train.core import RESUME_MAY_CHANGE, TrainConfig, TrainingRun


class LinearRun(TrainingRun):
    """A linear model fitting item i to target i (with dropout, so the RNG state matters)."""

    def micro_batch(self, items):
        x = torch.tensor([[float(i), 1.0] for i in items])
        pred = torch.nn.functional.dropout(self.model(x), 0.1, training=True).squeeze(1)
        return ((pred - x[:, 0]) ** 2).mean(), {}


CONFIG = TrainConfig(lr=0.01, batch_size=2, epochs=3, save_every=2, warmup_ratio=0.0, seed=3)


def run(out, config=CONFIG, items=range(8), seed=0, hooks=()):
    torch.manual_seed(seed)  # the starting weights
    return LinearRun(torch.nn.Linear(2, 1), list(items), config=config, output_dir=out, hooks=hooks)


class Interrupt(Exception):
    pass


def interrupted(out, at=5, overwrite=False, **kwargs):
    """A run stopped at step `at` (its last checkpoint is at the even step before)."""
    def stop(tr, step):
        if step == at:
            raise Interrupt
    with pytest.raises(Interrupt):
        run(out, hooks=[(1, stop)], **kwargs).train(overwrite=overwrite)


def weights(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_resume_continues_to_the_uninterrupted_result(tmp_path):
    full = run(tmp_path / "full")
    full.train()
    interrupted(tmp_path / "cut")
    resumed = run(tmp_path / "cut")
    resumed.train(resume=True)
    assert all(torch.equal(a, b) for a, b in zip(weights(full), weights(resumed)))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]


def test_a_folder_with_a_checkpoint_is_refused_without_resume_or_overwrite(tmp_path):
    interrupted(tmp_path)
    log = (tmp_path / "train_log.jsonl").read_text()
    checkpoint = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match=r"output_dir: .* holds the checkpoint of an earlier run; pass --resume "
                                              r"to continue it or --overwrite to start over"):
        run(tmp_path).train()
    assert (tmp_path / "train_log.jsonl").read_text() == log  # nothing touched
    assert (tmp_path / "checkpoint.pt").read_bytes() == checkpoint
    with pytest.raises(ValueError, match="overwrite: cannot be combined with --resume"):
        run(tmp_path).train(resume=True, overwrite=True)
    # --overwrite starts over: the result of a fresh run, whatever the old run's settings were.
    other = dataclasses.replace(CONFIG, lr=0.05)
    over = run(tmp_path, other)
    over.train(overwrite=True)
    fresh = run(tmp_path / "fresh", other)
    fresh.train()
    assert all(torch.equal(a, b) for a, b in zip(weights(over), weights(fresh)))
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 0.05
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == over.total_steps


def test_overwrite_removes_the_old_checkpoint_at_once(tmp_path):
    interrupted(tmp_path)
    interrupted(tmp_path, at=1, overwrite=True)  # the new run stops before its first checkpoint ...
    assert not (tmp_path / "checkpoint.pt").exists()  # ... and leaves no old one to be resumed by mistake


@pytest.mark.parametrize("change, expected", [
    (dict(config=dataclasses.replace(CONFIG, lr=0.02, batch_size=4)), r"batch_size 2 -> 4; lr 0.01 -> 0.02"),
    (dict(config=dataclasses.replace(CONFIG, epochs=4)), r"epochs 3 -> 4"),
    (dict(seed=1), r"model '[0-9a-f]{16}' -> '[0-9a-f]{16}'"),
    (dict(items=range(1, 9)), r"items '[0-9a-f]{16}' -> '[0-9a-f]{16}'"),
])
def test_resume_refuses_other_settings_or_inputs(tmp_path, change, expected):
    interrupted(tmp_path)
    checkpoint = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=rf"resume: the run in .* was trained with other settings or inputs: "
                                         rf"{expected}\. Resume with the same ones, or pass --overwrite"):
        run(tmp_path, **change).train(resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == checkpoint


def test_resume_compares_the_checkpoint_even_when_config_json_agrees(tmp_path):
    interrupted(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(dataclasses.replace(CONFIG, lr=0.02))))
    with pytest.raises(ValueError, match=r"lr 0.01 -> 0.02"):
        run(tmp_path, dataclasses.replace(CONFIG, lr=0.02)).train(resume=True)


def test_settings_that_leave_the_weights_alone_may_change_on_resume(tmp_path):
    assert set(RESUME_MAY_CHANGE) == {"save_every", "log_every", "tensorboard"}
    full = run(tmp_path / "full")
    full.train()
    interrupted(tmp_path / "cut")
    resumed = run(tmp_path / "cut", dataclasses.replace(CONFIG, save_every=3, log_every=2))
    resumed.train(resume=True)
    assert all(torch.equal(a, b) for a, b in zip(weights(full), weights(resumed)))
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["log_every"] == 2  # what this run used


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_a_dict", "old_format"])
def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path, damage):
    interrupted(tmp_path)
    path = tmp_path / "checkpoint.pt"
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "not_a_dict":
        torch.save([1, 2, 3], path)
    else:
        state = torch.load(path, weights_only=False)
        del state["identity"]
        torch.save(state, path)
    with pytest.raises(ValueError, match=rf"{path}: not a (readable|drfast) checkpoint.*delete it, or pass "
                                         r"--overwrite"):
        run(tmp_path).train(resume=True)
    run(tmp_path).train(overwrite=True)  # the advice works


def test_a_damaged_config_json_is_named_and_a_damaged_log_is_rewritten(tmp_path):
    full = run(tmp_path / "full")
    full.train()
    interrupted(tmp_path / "cut")
    (tmp_path / "cut" / "config.json").write_text('{"lr": 0.0')
    with pytest.raises(ValueError, match=r"config.json: not a readable run config .*delete it .*or pass --overwrite"):
        run(tmp_path / "cut").train(resume=True)
    (tmp_path / "cut" / "config.json").unlink()  # the checkpoint holds the settings too
    with open(tmp_path / "cut" / "train_log.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a record cut short
    resumed = run(tmp_path / "cut")
    resumed.train(resume=True)
    log = [json.loads(line) for line in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, full.total_steps + 1))
    assert all(torch.equal(a, b) for a, b in zip(weights(full), weights(resumed)))
