"""`--index-dir`: adore, evaluate, search and errors against a saved index, with no corpus text and no
corpus encoding (a BEIR folder without corpus.jsonl), checked against the same commands on the corpus."""
import json
import shutil

import numpy as np
import pytest

from drfast.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tiny import make_tiny_beir, make_tiny_hf_folder

    root = tmp_path_factory.mktemp("index_dir")
    data = make_tiny_beir(root / "beir", np.random.default_rng(1), n_docs=300)
    queries_only = root / "queries-only"  # queries.jsonl and qrels/, no corpus.jsonl
    shutil.copytree(data, queries_only, ignore=shutil.ignore_patterns("corpus.jsonl"))
    s = dict(root=root, data=data, queries_only=str(queries_only), model=make_tiny_hf_folder(root / "model", seed=1),
             cache=str(root / "cache"))
    assert main(["index", "--data", data, "--model", s["model"], "--cache", s["cache"],
                 "--output", str(root / "flat")]) == 0
    s["flat"] = str(root / "flat")
    return s


def read(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("command", ["evaluate", "errors"])
def test_a_saved_index_gives_the_results_of_the_encoded_corpus(setup, command):
    root = setup["root"]
    common = ["--split", "test", "--model", setup["model"], "--cache", setup["cache"]]
    assert main([command, "--data", setup["data"], *common, "--output", str(root / f"{command}-corpus")]) == 0
    assert main([command, "--data", setup["queries_only"], "--index-dir", setup["flat"], *common,
                 "--output", str(root / f"{command}-saved")]) == 0
    name = "metrics.json" if command == "evaluate" else "errors.json"
    want, got = read(root / f"{command}-corpus" / name), read(root / f"{command}-saved" / name)
    for key in ("metrics", "per_query", "summary"):
        assert got.get(key) == want.get(key), key
    if command == "evaluate":
        assert got["config"]["index_dir"] == setup["flat"] and "encode_corpus_s" not in got["timings"]
        assert (root / "evaluate-saved" / "run.trec").read_text() == (root / "evaluate-corpus" / "run.trec").read_text()
    else:
        assert got["config"]["index_dir"] == setup["flat"]


def test_search_against_a_saved_index_writes_the_same_run(setup):
    root = setup["root"]
    for name, extra in (("search-corpus", ["--data", setup["data"]]),
                        ("search-saved", ["--data", setup["queries_only"], "--index-dir", setup["flat"]])):
        assert main(["search", *extra, "--split", "train", "--model", setup["model"], "--k", "7",
                     "--cache", setup["cache"], "--output", str(root / name)]) == 0
    assert (root / "search-saved" / "run.trec").read_text() == (root / "search-corpus" / "run.trec").read_text()


def test_adore_against_a_saved_index_trains_as_against_the_encoded_corpus(setup):
    root = setup["root"]
    common = ["--model", setup["model"], "--epochs", "1", "--k", "50", "--cache", setup["cache"]]
    assert main(["adore", "--data", setup["data"], *common, "--output", str(root / "adore-corpus")]) == 0
    assert main(["adore", "--data", setup["queries_only"], "--index-dir", setup["flat"], *common,
                 "--output", str(root / "adore-saved")]) == 0
    want, got = read(root / "adore-corpus" / "metrics.json"), read(root / "adore-saved" / "metrics.json")
    assert got["config"]["index_dir"] == setup["flat"] and want["config"]["index_dir"] is None
    assert got["before"] == want["before"]
    for name, value in want["after"].items():
        assert got["after"][name] == pytest.approx(value, abs=1e-9)


def test_jpq_index_and_query_encoder_reproduce_after_without_the_corpus(setup, capsys):
    root = setup["root"]
    out = root / "jpq"
    assert main(["adore", "--data", setup["data"], "--model", setup["model"], "--index", "opq:4",
                 "--train-centroids", "--centroid-lr", "1e-2", "--epochs", "2", "--k", "50",
                 "--cache", setup["cache"], "--output", str(out)]) == 0
    after = read(out / "metrics.json")["after"]
    # the documented line: the trained index and query encoder, no --model, no corpus
    assert main(["evaluate", "--data", setup["queries_only"], "--index-dir", str(out / "index"),
                 "--query-model", str(out / "query_encoder"), "--output", str(root / "jpq-eval")]) == 0
    assert "jpq/query_encoder on" in capsys.readouterr().out
    metrics = read(root / "jpq-eval" / "metrics.json")["metrics"]
    assert set(metrics) == set(after)
    for name, value in after.items():
        assert metrics[name] == pytest.approx(value, abs=1e-9)


def own_index(setup, dim, prefix):
    """A flat index of random `dim`-d embeddings with ids PREFIX0..PREFIX299, via drfast index --embeddings."""
    out = setup["root"] / f"own-{dim}-{prefix}"
    if not out.exists():
        rng = np.random.default_rng(0)
        np.save(setup["root"] / f"own-{dim}.npy", rng.standard_normal((300, dim)).astype(np.float32))
        (setup["root"] / f"own-{prefix}.txt").write_text("".join(f"{prefix}{i}\n" for i in range(300)))
        assert main(["index", "--embeddings", str(setup["root"] / f"own-{dim}.npy"), "--doc-ids",
                     str(setup["root"] / f"own-{prefix}.txt"), "--output", str(out)]) == 0
    return str(out)


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--index-dir", "{flat}", "--index", "pq:4"], "--index-dir: cannot be combined with --index "),
    (["errors", "--index-dir", "{flat}", "--first-pass", "int8"], "--index-dir: cannot be combined with --first-pass"),
    (["adore", "--index-dir", "{flat}", "--also-evaluate-on", "pq:4"],
     "--index-dir: cannot be combined with --also-evaluate-on"),
    (["evaluate", "--index-dir", "{root}/nowhere"], "--index-dir: {root}/nowhere is not a drfast index"),
    (["search", "--index-dir", "{own32x}"], "{queries_only}/qrels/test.tsv, line 2: document id 'd"),
    (["errors", "--index-dir", "{own24}"],
     "--index-dir: {own24} holds 24-dimensional rows; the query encoder's dimension is 32"),
    (["adore", "--index-dir", "{flat}", "--train-centroids"], "--train-centroids: trains the centroids of a PQ"),
    (["adore", "--index-dir", "{flat}", "--k", "301"], "--k: 301 candidates asked but the index has only 300 rows"),
    (["evaluate", "--data", "{data}", "--model", None], "--model: required"),
    (["evaluate", "--index-dir", "{flat}", "--model", None],
     "--model: required (with a saved index, the query encoder"),
    (["evaluate"], "--data: {queries_only} has no corpus.jsonl"),  # without --index-dir the corpus is needed
    (["evaluate", "--index-dir", "{cached}"], "--index-dir: {cached} is a corpus embeddings cache (drfast encode), "
                                              "not an index; build one from it with drfast index --embeddings"),
])
def test_index_dir_errors_are_one_line_naming_the_flag_before_loading_a_model(setup, tmp_path, capsys, monkeypatch,
                                                                              argv, message):
    from drfast.encode import encoders

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")

    cached = next(p for p in (setup["root"] / "cache" / "embeddings").iterdir() if (p / "meta.json").is_file())
    fill = dict(setup, own24=own_index(setup, 24, "d"), own32x=own_index(setup, 32, "x"), cached=cached)
    monkeypatch.setattr(encoders, "_load_pretrained", no_loading)
    argv = [None if a is None else a.format(**fill) for a in argv]
    defaults = {"--data": setup["queries_only"], "--model": setup["model"], "--output": str(tmp_path / "out")}
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    argv = [a for i, a in enumerate(argv) if a is not None and not (i + 1 < len(argv) and argv[i + 1] is None)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"drfast {argv[0]}: error: {message.format(**fill)}"), err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "run").exists()
