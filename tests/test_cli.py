import json
import subprocess
import sys

import numpy as np
import pytest

from drfast.cli import main


def test_info_prints_build(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["simd"] in info["simd_supported"] and info["threads"] >= 1


def test_check_small_run_agrees_with_reference(capsys):
    assert main(["check", "--n", "3000", "--dim", "40", "--batch", "5", "--k", "20", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "fused native search" in out and "agreeing with the reference: 100.00%" in out


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "drfast", "info"], capture_output=True, text=True, check=True)
    assert '"simd"' in out.stdout


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from tiny import make_tiny_beir, make_tiny_hf_folder

    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    return dict(model=make_tiny_hf_folder(root / "model"), data=make_tiny_beir(root / "beir", rng, n_docs=300),
                cache=str(root / "cache"), root=root)


@pytest.mark.parametrize("index", ["flat", "pq:4"])
def test_evaluate_writes_metrics_consistent_with_its_run(tiny_setup, index, capsys):
    from drfast.data.formats import load_beir
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


def test_bad_index_spec_is_a_clear_error(tiny_setup):
    with pytest.raises(ValueError, match="index: expected 'flat', 'pq:M' or 'opq:M'"):
        main(["evaluate", "--data", tiny_setup["data"], "--model", tiny_setup["model"], "--index", "ivf",
              "--cache", tiny_setup["cache"], "--output", str(tiny_setup["root"] / "bad")])


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


def test_demo_without_data_fails_cleanly_offline(tmp_path, monkeypatch):
    import urllib.request

    from drfast.pipelines import demo

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="Pass a local BEIR folder with --data"):
        demo.find_scifact(None, tmp_path / "cache")


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


@pytest.mark.parametrize("method", ["star", "inbatch", "trisampler"])
def test_star_command_trains_both_towers(tiny_setup, method):
    out = tiny_setup["root"] / f"star-{method}"
    assert main(["star", "--data", tiny_setup["data"], "--model", tiny_setup["model"], "--method", method,
                 "--epochs", "1", "--cache", tiny_setup["cache"], "--output", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["config"]["method"] == method and set(report["after"]) == set(report["before"])
    assert (out / "model" / "query" / "modules.json").is_file() and (out / "model" / "document").is_dir()


@pytest.mark.parametrize("source", ["model", "bm25"])
def test_mine_command_writes_training_examples(tiny_setup, source):
    pytest.importorskip("bm25s") if source == "bm25" else None
    from drfast.data.formats import iter_training_examples

    out = tiny_setup["root"] / f"mined-{source}.jsonl"
    assert main(["mine", "--data", tiny_setup["data"], "--split", "train", "--model", tiny_setup["model"],
                 "--source", source, "--n", "5", "--cache", tiny_setup["cache"], "--output", str(out)]) == 0
    examples = list(iter_training_examples(out))
    assert examples and all(len(e.negative_ids) <= 5 for e in examples)
    assert all(not set(e.negative_ids) & set(e.positive_ids) for e in examples)
