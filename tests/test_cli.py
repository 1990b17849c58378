import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drfast.cli import build_parser, command_parsers, error_message, main


def test_info_prints_build(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["simd"] in info["simd_supported"] and info["threads"] >= 1


def test_check_small_run_agrees_with_reference(capsys):
    assert main(["check", "--docs", "3000", "--dim", "40", "--batch", "5", "--k", "20", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "fused native search" in out and "agreeing with the reference: 100.00%" in out


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "drfast", "info"], capture_output=True, text=True, check=True)
    assert '"simd"' in out.stdout


def subcommands():
    return command_parsers()


def flags_of(command):
    return {s for a in subcommands()[command]._actions for s in a.option_strings}


def test_every_flag_has_help_and_one_meaning():
    meanings = {}  # flag -> {(dest, help without the default, type, choices): [commands]}
    for command, parser in subcommands().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"drfast {command} {action.option_strings or action.dest}: no help"
            help_text = action.help.replace(" (default: %(default)s)", "")
            meaning = (action.dest, help_text, getattr(action.type, "__name__", None),
                       tuple(action.choices or ()))
            for flag in action.option_strings:
                meanings.setdefault(flag, {}).setdefault(meaning, []).append(command)
    assert {flag: m for flag, m in meanings.items() if len(m) > 1} == {}
    assert len(meanings) > 50  # every command was seen


def test_seeds_and_batch_sizes_are_named_by_what_they_control():
    commands = set(subcommands())
    having = {flag: {c for c in commands if flag in flags_of(c)}
              for flag in ("--seed", "--index-seed", "--batch-size", "--encode-batch-size", "--query-batch-size")}
    assert having["--seed"] == {"adore", "star", "mine", "demo", "check"}  # the run's own random draws
    assert having["--index-seed"] == {"index", "evaluate", "search", "errors", "adore", "demo"}  # PQ codebooks
    assert having["--batch-size"] == {"adore", "star", "plan"}  # training queries per micro-batch (plan: of the run planned)
    assert having["--encode-batch-size"] == {"encode", "index", "evaluate", "search", "errors", "mine", "adore",
                                             "star"}
    assert having["--query-batch-size"] == {"evaluate", "search", "errors", "mine"}


def test_config_flags_are_the_config_fields_with_their_defaults():
    import dataclasses

    from drfast.common.dataclass_args import from_args
    from drfast.pipelines.specs import IndexSpec
    from drfast.negatives.mining import MiningConfig
    from drfast.train import AdoreConfig, StarConfig

    required = ["--data", "D", "--model", "M", "--output", "O"]
    for command, cls in (("adore", AdoreConfig), ("star", StarConfig), ("mine", MiningConfig)):
        assert {"--" + f.name.replace("_", "-") for f in dataclasses.fields(cls)} <= flags_of(command)
        args = build_parser().parse_args([command] + required)
        assert from_args(cls, args) == cls()
    adore = from_args(AdoreConfig, build_parser().parse_args(["adore"] + required))
    assert (adore.k, adore.cutoff, adore.lr, adore.batch_size, adore.epochs) == (200, 10, 4e-5, 32, 4)
    args = build_parser().parse_args(["adore"] + required + ["--lr", "1e-4", "--only-if-unretrieved", "--amp", "bf16",
                                                             "--score-scale", "5", "--also-evaluate-on", "pq:8"])
    config = from_args(AdoreConfig, args)
    assert (config.lr, config.only_if_unretrieved, config.amp, config.score_scale) == (1e-4, True, "bf16", 5.0)
    assert args.also_evaluate_on == ["pq:8"] and args.index == IndexSpec.index == "flat"
    mine = build_parser().parse_args(["mine"] + required + ["--no-dedupe-texts", "--margin-rel", "0.1"])
    assert from_args(MiningConfig, mine) == MiningConfig(dedupe_texts=False, margin_rel=0.1)
    with pytest.raises(SystemExit):  # choices come from the config
        build_parser().parse_args(["star"] + required + ["--method", "bm25"])


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from tiny import make_tiny_beir, make_tiny_hf_folder

    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    return dict(model=make_tiny_hf_folder(root / "model"), data=make_tiny_beir(root / "beir", rng, n_docs=300),
                cache=str(root / "cache"), root=root)


@pytest.mark.parametrize("index", ["flat", "pq:4"])
def test_evaluate_writes_metrics_consistent_with_its_run(tiny_setup, index, capsys):
    from drfast.data import load_beir
    from drfast.eval.trec import evaluate, read_trec_run

    out = tiny_setup["root"] / f"eval-{index.replace(':', '')}"
    args = ["evaluate", "--data", tiny_setup["data"], "--split", "test", "--model", tiny_setup["model"],
            "--index", index, "--cache", tiny_setup["cache"], "--output", str(out)]
    assert main(args) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["metrics"]) == {"nDCG@10", "MRR@10", "MRR@100", "R@100"}
    assert report["config"]["index"] == index and "encode_corpus_s" in report["timings"]
    # The metrics are pytrec_eval's on the run file that was written.
    official = evaluate(read_trec_run(out / "run.trec"), load_beir(tiny_setup["data"], "test").qrels)
    for name, value in report["metrics"].items():
        assert value == pytest.approx(official[name], abs=1e-12)
    assert "nDCG@10" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["evaluate", "errors"])
def test_first_pass_gives_the_same_results(tiny_setup, command):
    outputs = {}
    for first_pass in ("none", "int8", "bf16"):
        out = tiny_setup["root"] / f"{command}-fp-{first_pass}"
        assert main([command, "--data", tiny_setup["data"], "--split", "test", "--model", tiny_setup["model"],
                     "--first-pass", first_pass, "--cache", tiny_setup["cache"], "--output", str(out)]) == 0
        report = json.loads((out / ("metrics.json" if command == "evaluate" else "errors.json")).read_text())
        outputs[first_pass] = {k: v for k, v in report.items() if k not in ("config", "timings")}
    assert outputs["int8"] == outputs["none"] and outputs["bf16"] == outputs["none"]


def test_index_command_saves_a_loadable_index(tiny_setup):
    import drfast

    out = tiny_setup["root"] / "idx"
    assert main(["index", "--data", tiny_setup["data"], "--model", tiny_setup["model"], "--index", "pq:8",
                 "--cache", tiny_setup["cache"], "--output", str(out)]) == 0
    index = drfast.load_index(out)
    assert isinstance(index, drfast.PQIndex) and index.ntotal == 300 and index.m == 8


def test_search_writes_a_trec_run(tiny_setup):
    from drfast.eval.trec import read_trec_run

    out = tiny_setup["root"] / "search"
    assert main(["search", "--data", tiny_setup["data"], "--split", "train", "--model", tiny_setup["model"],
                 "--cache", tiny_setup["cache"], "--k", "7", "--output", str(out)]) == 0
    run = read_trec_run(out / "run.trec")
    assert len(run) == 12 and all(len(docs) == 7 for docs in run.values())


def bad_beir(root):
    """A copy of the tiny BEIR folder whose queries.jsonl has a broken line."""
    import shutil

    folder = root / "bad-beir"
    if not folder.exists():
        shutil.copytree(root / "beir", folder)
        with open(folder / "queries.jsonl", "a") as f:
            f.write("{not json\n")
        (folder / "qrels" / "folder.tsv").mkdir()  # a split whose qrels file is a folder
    return folder


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--index", "pq:7"], "--index: 'pq:7': M=7 must divide the model's dimension 32"),
    (["evaluate", "--index", "ivf"], "--index: expected 'flat', 'pq:M' or 'opq:M'"),
    (["evaluate", "--index", "pq:4", "--first-pass", "int8"], "--first-pass: the two-stage search is for a flat"),
    (["errors", "--k", "0"], "--k: must be >= 1, got 0"),
    (["search", "--output", "{file}"], "--output: {file} exists and is not a folder"),
    (["adore", "--data", "{root}/nowhere"], "--data: {root}/nowhere is not a folder"),
    (["adore", "--also-evaluate-on", "pq:5"], "--also-evaluate-on: 'pq:5': M=5 must divide"),
    (["adore", "--k", "400"], "--k: 400 candidates asked but the corpus has only 300 documents"),
    (["star", "--eval-split", "dev"], "--eval-split: no split 'dev' in"),
    (["star", "--lr", "0"], "--lr: must be > 0"),
    (["errors", "--doc-max-length", "9999"], "--doc-max-length: 9999 exceeds the model's max_position_embeddings"),
    (["index", "--model", "{root}/no-model"], "--model: {root}/no-model is not a model folder"),
    (["encode", "--encode-batch-size", "0"], "--encode-batch-size: must be >= 1, got 0"),
    (["mine", "--output", "{root}"], "--output: {root} is a folder; expected a file name"),
    (["evaluate", "--data", "{root}/bad-beir"], "{root}/bad-beir/queries.jsonl, line 25: expected a JSON object"),
    (["evaluate", "--output", "{file}/sub"], "--output: {file} is a file, not a folder, so {file}/sub cannot be"),
    (["adore", "--output", "{file}/sub/out"], "--output: {file} is a file, not a folder"),
    (["mine", "--output", "{file}/m.jsonl"], "--output: {file} is a file, not a folder"),
    (["evaluate", "--data", "{root}/bad-beir", "--split", "folder"], "--split: {root}/bad-beir/qrels/folder.tsv is not"),
    (["adore", "--device", "tpu"], "--device: expected auto, cpu, cuda or cuda:N"),
])
def test_user_errors_are_one_line_naming_the_flag_before_any_encoding(tiny_setup, tmp_path, capsys, argv, message):
    root = tiny_setup["root"]
    bad_beir(root)
    (tmp_path / "a-file").write_text("")
    fill = dict(root=root, file=tmp_path / "a-file")
    cache = tmp_path / "cache"
    argv = [a.format(**fill) for a in argv]
    given = {a for a in argv if a.startswith("--")}
    defaults = {"--data": tiny_setup["data"], "--model": tiny_setup["model"], "--output": str(tmp_path / "out")}
    argv += [x for f, v in defaults.items() if f not in given and f in flags_of(argv[0]) for x in (f, v)]
    argv += ["--cache", str(cache)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"drfast {argv[0]}: error: {message.format(**fill)}"), err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not cache.exists() or not any(cache.rglob("*.npy")), "the error came after encoding"
    with pytest.raises((ValueError, FileNotFoundError, FileExistsError)):  # --debug: the exception itself
        main(argv + ["--debug"])


def test_an_error_names_the_flag_of_its_parameter():
    from drfast.cli import _commands
    from drfast.common.errors import UsageError, UsageTypeError
    from drfast.data.parsing import DataFormatError

    flags = {name: command.flags for name, command in _commands()[1].items()}
    assert error_message(UsageError("index", "x"), flags["evaluate"]) == "--index: x"
    assert error_message(UsageError("encode_batch_size", "must be >= 1"), flags["star"]) == \
        "--encode-batch-size: must be >= 1"
    assert error_message(UsageTypeError("query_model", "dimension 8"), flags["errors"]) == "--query-model: dimension 8"
    assert error_message(UsageError("run_dir", "no train_log.jsonl in x"), flags["plot"]) == \
        "RUN_DIR: no train_log.jsonl in x"
    assert error_message(UsageError("lr", "must be > 0"), flags["adore"]) == "--lr: must be > 0"  # a config's field
    # a parameter the command has no flag for keeps its name; other errors keep their message
    assert error_message(UsageError("positives", "query 'q' has no text"), flags["adore"]) == \
        "positives: query 'q' has no text"
    assert error_message(UsageError("index", "x"), flags["star"]) == "index: x"  # star has no --index
    assert error_message(DataFormatError("/data/qrels.tsv", 3, "bad"), flags["adore"]) == "/data/qrels.tsv, line 3: bad"
    assert error_message(ValueError("index: looks like a parameter"), flags["evaluate"]) == \
        "index: looks like a parameter"  # the text is never parsed
    # every command's flags are its parser's
    for name, parser in command_parsers().items():
        typed = {s for a in parser._actions for s in a.option_strings}
        assert set(flags[name].values()) - {"RUN_DIR"} <= typed, name


def test_the_installed_command_prints_no_traceback(tiny_setup, tmp_path):
    out = subprocess.run([sys.executable, "-m", "drfast", "evaluate", "--data", tiny_setup["data"], "--model",
                          tiny_setup["model"], "--index", "pq:7", "--output", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == "drfast evaluate: error: --index: 'pq:7': M=7 must divide the model's dimension 32\n"


def test_demo_runs_adore_on_flat_and_pq(tiny_setup, capsys):
    out = tiny_setup["root"] / "demo"
    assert main(["demo", "--data", tiny_setup["data"], "--model", tiny_setup["model"], "--pq", "4", "--epochs", "1",
                 "--cache", tiny_setup["cache"], "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ADORE trained on pq:4" in text and "zero-shot" in text
    for sub in ("flat", "pq4"):
        report = json.loads((out / sub / "metrics.json").read_text())
        assert set(report) >= {"before", "after", "config", "timings"}
        assert (out / sub / "query_encoder" / "modules.json").is_file()


def test_demo_without_data_fails_cleanly_offline(tmp_path, monkeypatch, capsys):
    import urllib.request

    from drfast.common.errors import UsageError
    from drfast.pipelines import demo

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DRFAST_DATA", raising=False)
    with pytest.raises(UsageError, match="^data: could not download .* pass a local BEIR folder with --data"):
        demo.find_scifact(None, tmp_path / "cache")
    capsys.readouterr()
    assert main(["demo", "--cache", str(tmp_path / "cache"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()  # the log line of the download, then the error
    assert err[0].startswith("downloading ") and err[1].startswith("drfast demo: error: --data: could not download")
    assert main(["demo", "--quiet", "--cache", str(tmp_path / "cache"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err  # --quiet: no log line
    assert err.startswith("drfast demo: error: --data: could not download") and err.count("\n") == 1


def test_demo_finds_scifact_in_drfast_data(tmp_path, monkeypatch):
    from drfast.pipelines import demo

    (tmp_path / "data" / "scifact").mkdir(parents=True)
    (tmp_path / "data" / "scifact" / "corpus.jsonl").write_text("")
    monkeypatch.setenv("DRFAST_DATA", str(tmp_path / "data"))
    assert demo.find_scifact(None, tmp_path / "cache") == tmp_path / "data" / "scifact"
    assert demo.find_scifact(str(tmp_path / "mine"), tmp_path / "cache") == tmp_path / "mine"  # --data wins


def test_adore_then_evaluate_with_the_trained_query_model(tiny_setup):
    out = tiny_setup["root"] / "adore"
    assert main(["adore", "--data", tiny_setup["data"], "--model", tiny_setup["model"], "--index", "flat",
                 "--epochs", "2", "--k", "50", "--cache", tiny_setup["cache"], "--output", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["config"]["k"] == 50 and report["timings"]["train_s"] > 0
    # The saved query encoder, evaluated against the original document index, reproduces "after".
    ev = tiny_setup["root"] / "adore-eval"
    assert main(["evaluate", "--data", tiny_setup["data"], "--model", tiny_setup["model"], "--query-model",
                 str(out / "query_encoder"), "--index", "flat", "--cache", tiny_setup["cache"],
                 "--output", str(ev)]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())["metrics"]
    for name, value in report["after"].items():
        assert metrics[name] == pytest.approx(value, abs=1e-9)


def test_adore_with_trained_centroids_saves_the_index_that_gives_after(tiny_setup, capsys):
    import torch

    import drfast
    from drfast.data import load_beir
    from drfast.encode.encoders import Encoder
    from drfast.eval.retrieve import retrieve
    from drfast.eval.trec import evaluate

    out = tiny_setup["root"] / "jpq"
    assert main(["adore", "--data", tiny_setup["data"], "--model", tiny_setup["model"], "--index", "opq:4",
                 "--train-centroids", "--centroid-lr", "1e-2", "--epochs", "2", "--k", "50",
                 "--cache", tiny_setup["cache"], "--output", str(out)]) == 0
    assert "ADORE + trained centroids (JPQ) on opq:4" in capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    assert report["config"]["train_centroids"] is True and report["config"]["centroid_lr"] == 1e-2
    # The saved index and query encoder, loaded from scratch, reproduce "after".
    index = drfast.load_index(out / "index")
    assert isinstance(index, drfast.PQIndex) and index.rotation is not None
    state = torch.load(out / "run" / "checkpoint.pt", weights_only=False)
    assert torch.equal(index.centroids, state["model"]["centroids"])
    test = load_beir(tiny_setup["data"], "test")
    encoder = Encoder.load(out / "query_encoder", role="query")
    with torch.inference_mode():
        metrics = evaluate(retrieve(index, encoder, test.queries, k=100, show_progress=False), test.qrels)
    for name, value in report["after"].items():
        assert metrics[name] == pytest.approx(value, abs=1e-9)


def test_adore_train_centroids_on_a_flat_index_names_the_flag(tiny_setup, capsys):
    out = tiny_setup["root"] / "jpq-flat"
    assert main(["adore", "--data", tiny_setup["data"], "--model", tiny_setup["model"], "--index", "flat",
                 "--train-centroids", "--cache", tiny_setup["cache"], "--output", str(out)]) == 2
    assert capsys.readouterr().err == ("drfast adore: error: --train-centroids: trains the centroids of a PQ index "
                                       "(pq:M or opq:M); a flat index has none\n")
    assert not (out / "run").exists()


@pytest.mark.parametrize("method", ["star", "inbatch", "trisampler"])
def test_star_command_trains_both_towers(tiny_setup, method):
    import torch

    from drfast.data import Corpus
    from drfast.encode.corpus_cache import corpus_cache_key, encode_corpus
    from drfast.encode.encoders import BiEncoder, Encoder

    out = tiny_setup["root"] / f"star-{method}"
    assert main(["star", "--data", tiny_setup["data"], "--model", tiny_setup["model"], "--method", method,
                 "--epochs", "1", "--cache", tiny_setup["cache"], "--output", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["config"]["method"] == method and set(report["after"]) == set(report["before"])
    # Both saved towers moved away from the starting model.
    start = BiEncoder.load(tiny_setup["model"])
    towers = {role: Encoder.load(out / "model" / role, role=role) for role in ("query", "document")}
    for role, before in (("query", start.query_encoder), ("document", start.doc_encoder)):
        old, new = dict(before.model.named_parameters()), dict(towers[role].model.named_parameters())
        assert old.keys() == new.keys()
        changed = [name for name in old if not torch.equal(old[name], new[name])]
        assert len(changed) > len(old) / 2, f"{role} tower: only {changed} changed"
    # "after" was evaluated on the corpus re-encoded by the trained document tower: its cache key,
    # whose cached embeddings are that tower's encoding of the corpus (not the starting one's) ...
    corpus = Corpus(Path(tiny_setup["data"]) / "corpus.jsonl")
    keys = report["corpus_embeddings"]
    assert keys["before"] == corpus_cache_key(start.doc_encoder, corpus)
    assert keys["after"] == corpus_cache_key(towers["document"], corpus) != keys["before"]
    assert (Path(tiny_setup["cache"]) / "embeddings" / keys["after"]).is_dir()
    cached, _ = encode_corpus(towers["document"], corpus, Path(tiny_setup["cache"]) / "embeddings")
    texts = corpus.texts(range(len(corpus)))
    np.testing.assert_allclose(cached, towers["document"].encode(texts), rtol=1e-2, atol=1e-3)
    assert not np.allclose(cached, start.doc_encoder.encode(texts), rtol=1e-2, atol=1e-3)
    # ... and the saved towers, evaluated from scratch, reproduce "after".
    ev = tiny_setup["root"] / f"star-{method}-eval"
    assert main(["evaluate", "--data", tiny_setup["data"], "--model", str(out / "model" / "document"),
                 "--query-model", str(out / "model" / "query"), "--cache", tiny_setup["cache"],
                 "--output", str(ev)]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())["metrics"]
    for name, value in report["after"].items():
        assert metrics[name] == pytest.approx(value, abs=1e-9)


def test_a_training_output_is_never_mixed_with_an_earlier_run(tiny_setup, tmp_path, capsys, monkeypatch):
    from drfast.encode.encoders import BiEncoder

    out = tmp_path / "adore"
    argv = ["adore", "--data", tiny_setup["data"], "--model", tiny_setup["model"], "--epochs", "1", "--k", "20",
            "--cache", tiny_setup["cache"], "--output", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    loaded = []
    monkeypatch.setattr(BiEncoder, "load", lambda *a, **k: loaded.append(1) or 1 / 0)
    assert main(argv) == 2  # a rerun without --resume or --overwrite
    assert capsys.readouterr().err == (f"drfast adore: error: --output: {out / 'run'} holds the checkpoint of an "
                                       f"earlier run; pass --resume to continue it or --overwrite to start over\n")
    assert main(argv + ["--resume", "--lr", "1e-3", "--batch-size", "8"]) == 2  # other settings
    assert capsys.readouterr().err == (f"drfast adore: error: --resume: the run in {out / 'run'} was trained with "
                                       f"other settings or inputs: batch_size 32 -> 8; lr 4e-05 -> 0.001. Resume "
                                       f"with the same ones, or pass --overwrite to start over\n")
    assert main(argv + ["--resume", "--overwrite"]) == 2
    assert "--overwrite: cannot be combined with --resume" in capsys.readouterr().err
    assert not loaded, "refused only after loading the model"
    monkeypatch.undo()
    assert main(argv + ["--overwrite", "--lr", "1e-3"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["lr"] == 1e-3
    assert json.loads((out / "run" / "config.json").read_text())["lr"] == 1e-3


def test_star_resume_gives_the_uninterrupted_towers(tiny_setup, tmp_path, monkeypatch):
    import torch

    from drfast.encode.encoders import Encoder
    from drfast.pipelines import star

    def argv(out):
        return ["star", "--data", tiny_setup["data"], "--model", tiny_setup["model"], "--epochs", "2",
                "--batch-size", "4", "--save-every", "2", "--cache", tiny_setup["cache"], "--output", str(out)]

    assert main(argv(tmp_path / "full")) == 0  # 6 steps

    class Interrupt(Exception):
        pass

    class Stopping(star.StarTrainer):
        def _optimizer_step(self):
            super()._optimizer_step()
            if self.step == 5:  # after the checkpoint of step 4
                raise Interrupt

    monkeypatch.setattr(star, "StarTrainer", Stopping)
    with pytest.raises(Interrupt):
        main(argv(tmp_path / "cut"))
    monkeypatch.undo()
    assert main(argv(tmp_path / "cut") + ["--resume"]) == 0
    for role in ("query", "document"):
        full, cut = (Encoder.load(tmp_path / run / "model" / role, role=role) for run in ("full", "cut"))
        for (name, a), (_, b) in zip(full.state_dict().items(), cut.state_dict().items()):
            assert torch.equal(a, b), f"{role}: {name}"
    log = [json.loads(line) for line in (tmp_path / "cut" / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))


@pytest.mark.parametrize("source", ["model", "bm25"])
def test_mine_command_writes_training_examples(tiny_setup, source):
    pytest.importorskip("bm25s") if source == "bm25" else None
    from drfast.data import iter_training_examples

    out = tiny_setup["root"] / f"mined-{source}.jsonl"
    assert main(["mine", "--data", tiny_setup["data"], "--split", "train", "--model", tiny_setup["model"],
                 "--source", source, "--n", "5", "--cache", tiny_setup["cache"], "--output", str(out)]) == 0
    examples = list(iter_training_examples(out))
    assert examples and all(len(e.negative_ids) <= 5 for e in examples)
    assert all(not set(e.negative_ids) & set(e.positive_ids) for e in examples)


# ---- outputs, interruptions and OS errors (issue 21) -----------------------------------------------
def test_outputs_are_never_replaced_without_overwrite(tiny_setup, tmp_path, capsys):
    common = ["--data", tiny_setup["data"], "--model", tiny_setup["model"], "--cache", tiny_setup["cache"]]
    # mine --output FILE: an existing file is kept (it might be the corpus just read, or last week's run)
    mined = tmp_path / "mined.jsonl"
    mined.write_text("keep me\n")
    assert main(["mine", *common, "--n", "2", "--output", str(mined)]) == 2
    assert capsys.readouterr().err == (f"drfast mine: error: --output: {mined} exists (an earlier run's?); pass "
                                       "overwrite (--overwrite) to replace it, or choose another output\n")
    assert mined.read_text() == "keep me\n"
    assert main(["mine", *common, "--n", "2", "--output", str(mined), "--overwrite"]) == 0
    assert mined.read_text() != "keep me\n"
    # evaluate, search, errors: an OUTPUT that holds the command's earlier results
    for command, written in (("evaluate", "metrics.json"), ("errors", "errors.json"), ("search", "run.trec")):
        out = tmp_path / command
        assert main([command, *common, "--k", "5", "--output", str(out)]) == 0
        before = (out / written).read_bytes()
        capsys.readouterr()
        assert main([command, *common, "--k", "7", "--output", str(out)]) == 2
        assert f"--output: {out / written} exists" in capsys.readouterr().err
        assert (out / written).read_bytes() == before
        assert main([command, *common, "--k", "7", "--output", str(out), "--overwrite"]) == 0
    # index: an earlier index
    out = tmp_path / "index"
    assert main(["index", *common, "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["index", *common, "--output", str(out)]) == 2
    assert f"drfast index: error: --output: {out} exists" in capsys.readouterr().err
    assert main(["index", *common, "--output", str(out), "--overwrite"]) == 0


def test_an_output_is_never_an_input(tiny_setup, tmp_path, capsys):
    data, model = tiny_setup["data"], tiny_setup["model"]
    index = tmp_path / "index"
    assert main(["index", "--data", data, "--model", model, "--cache", tiny_setup["cache"], "--output", str(index)]) == 0
    capsys.readouterr()
    for argv, message in (
            (["evaluate", "--data", data, "--model", model, "--output", data, "--overwrite"],
             f"--output: {data} is a BEIR data folder"),
            (["search", "--data", data, "--model", model, "--output", str(index), "--overwrite"],
             f"--output: {index} is a drfast index"),
            (["errors", "--data", data, "--model", model, "--output", model],
             f"--output: {model} is a model folder"),
            (["adore", "--data", data, "--model", model, "--output", data], f"--output: {data} is a BEIR data folder"),
            (["mine", "--data", data, "--model", model, "--split", "train", "--overwrite",
              "--output", str(Path(data) / "qrels" / "train.tsv")], "is an input of this command"),
            (["mine", "--data", data, "--model", model, "--overwrite", "--output", str(Path(data) / "corpus.jsonl")],
             "is an input of this command")):
        before = sorted((p.name, p.stat().st_size) for p in Path(data).rglob("*"))
        assert main(argv + ["--cache", tiny_setup["cache"]]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"drfast {argv[0]}: error: ") and message in err and err.count("\n") == 1, err
        assert sorted((p.name, p.stat().st_size) for p in Path(data).rglob("*")) == before


def test_a_split_without_positive_grades_is_refused(tiny_setup, tmp_path, capsys):
    import shutil

    data = tmp_path / "beir"
    shutil.copytree(tiny_setup["data"], data)
    qrels = data / "qrels" / "test.tsv"
    lines = qrels.read_text().splitlines()
    qrels.write_text("\n".join([lines[0]] + ["\t".join(line.split("\t")[:2] + ["0"]) for line in lines[1:]]) + "\n")
    cache = tmp_path / "cache"
    for command in ("evaluate", "errors", "adore"):
        assert main([command, "--data", str(data), "--model", tiny_setup["model"], "--cache", str(cache),
                     "--output", str(tmp_path / command)]) == 2
        err = capsys.readouterr().err
        flag = "--eval-split" if command == "adore" else "--split"
        assert err == (f"drfast {command}: error: {flag}: {qrels} has no positive grade (relevance > 0) among its "
                       f"{len(lines) - 1} judgments: every metric would be 0; choose a split with relevant "
                       "documents\n")
    assert not cache.exists() or not any(cache.rglob("*.npy")), "refused only after encoding"


@pytest.mark.parametrize("argv", [["plan", "--docs", "1000", "--dim", "768", "--model-params", "125M", "--json"],
                                  ["check", "--docs", "2000", "--dim", "16"]])
def test_a_closed_pipe_ends_the_command_quietly(argv):
    # `drfast plan --json | head -1` once head has exited: the reader is gone before the first write
    import os

    read, write = os.pipe()
    os.close(read)
    proc = subprocess.run([sys.executable, "-m", "drfast", *argv], stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert proc.stderr == "" and proc.returncode == 141


def test_ctrl_c_during_training_says_where_the_checkpoint_is(tiny_setup, tmp_path, capsys, monkeypatch):
    from drfast.pipelines import adore

    class Interrupted(adore.AdoreTrainer):
        def _optimizer_step(self):
            super()._optimizer_step()
            if self.step == 3:  # after the checkpoint of step 2
                raise KeyboardInterrupt

    out = tmp_path / "adore"
    argv = ["adore", "--data", tiny_setup["data"], "--model", tiny_setup["model"], "--epochs", "1", "--k", "20",
            "--batch-size", "4", "--save-every", "2", "--cache", tiny_setup["cache"], "--output", str(out)]
    monkeypatch.setattr(adore, "AdoreTrainer", Interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err.split("\n")[-2] == (  # the last line, after the progress bar's last
        f"drfast adore: interrupted; the last checkpoint is {out / 'run' / 'checkpoint.pt'}: run the same command "
        "with --resume to continue")
    monkeypatch.undo()
    assert main(argv + ["--resume"]) == 0


def test_a_file_size_limit_during_index_is_one_line(tmp_path):
    import resource

    emb = np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)  # 512 KB of rows
    np.save(tmp_path / "emb.npy", emb)
    (tmp_path / "ids.txt").write_text("".join(f"d{i}\n" for i in range(2000)))
    out = tmp_path / "index"

    def limit():  # `ulimit -f 64`: no file over 64 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run([sys.executable, "-m", "drfast", "index", "--embeddings", str(tmp_path / "emb.npy"),
                           "--doc-ids", str(tmp_path / "ids.txt"), "--output", str(out)],
                          capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("drfast index: error: ") and proc.stderr.count("\n") == 1
    assert str(out) in proc.stderr and ("File too large" in proc.stderr or "file size limit" in proc.stderr)
    assert not out.exists()


def test_a_file_size_limit_during_a_checkpoint_is_one_line(tiny_setup, tmp_path):
    import resource

    def limit():  # `ulimit -f 200`: the tiny model's checkpoint (weights and AdamW state) is larger
        resource.setrlimit(resource.RLIMIT_FSIZE, (200 * 1024, 200 * 1024))

    out = tmp_path / "adore"
    proc = subprocess.run([sys.executable, "-m", "drfast", "adore", "--data", tiny_setup["data"], "--model",
                           tiny_setup["model"], "--epochs", "1", "--k", "20", "--save-every", "1", "--quiet",
                           "--cache", tiny_setup["cache"], "--output", str(out)],
                          capture_output=True, text=True, preexec_fn=limit)
    last = proc.stderr.strip().split("\n")[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert last == f"drfast adore: error: {out}: File too large", proc.stderr
