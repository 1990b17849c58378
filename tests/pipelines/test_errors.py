"""`drfast errors`: exact ranks in batches, errors.json against a brute-force count, the plot, resume."""
import json

import numpy as np
import pytest

import drfast
from drfast.eval import error_stats as stats
from drfast.eval.plots import plot_errors
from drfast.pipelines import errors as error_report
from drfast.cli import main
from drfast.pipelines.specs import CorpusSpec, EncoderSpec, IndexSpec, SearchSpec
from reference import integer_embeddings, random_positives, reference_pairwise_errors, reference_search


def run_errors(data, model, output, cache=None, index="flat", k=200, **kwargs):
    """error_report.run_errors of a BEIR folder and a model, on the test split."""
    return error_report.run_errors(CorpusSpec(data, cache=cache), EncoderSpec(model), output, IndexSpec(index),
                                   SearchSpec(k=k), **kwargs)


def test_exact_positive_ranks_match_reference_across_batches(rng):
    N, d, Q = int(rng.integers(1, 300)), 6, int(rng.integers(3, 40))  # Q >= 3: the shape check below
    docs = integer_embeddings(rng, (N, d), np.float32, -1, 1)  # many ties
    queries = integer_embeddings(rng, (Q, d), np.float32, -1, 1)
    positives = random_positives(rng, Q, N, max_per_query=4)
    offsets, ranks = error_report.exact_positive_ranks(drfast.FlatIndex(docs), queries, positives,
                                                       batch_size=int(rng.integers(1, 8)))
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum([len(p) for p in positives])]))
    np.testing.assert_array_equal(ranks, reference_search(queries, docs, 1, positives)["pos_ranks"])
    with pytest.raises(ValueError, match=r"query_embeddings: expected shape \[3, d\]"):
        error_report.exact_positive_ranks(drfast.FlatIndex(docs), queries[:2], positives[:3])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny import make_tiny_beir, make_tiny_hf_folder

    root = tmp_path_factory.mktemp("errors")
    return dict(model=make_tiny_hf_folder(root / "model"),
                data=make_tiny_beir(root / "beir", np.random.default_rng(0), n_docs=250, n_queries=30),
                cache=str(root / "cache"), root=root)


def brute_force_errors(tiny, k):
    """Per-query errors from each positive's position in the full ranking (k = N) of the same cached
    embeddings: the kernel's own scores, so near-ties order as in the pipeline's rank counts."""
    from drfast.encode.corpus_cache import encode_corpus
    from drfast.data import load_beir
    from drfast.encode.encoders import BiEncoder

    data = load_beir(tiny["data"], "test")
    enc = BiEncoder.load(tiny["model"])
    emb, _ = encode_corpus(enc.doc_encoder, data.corpus, f"{tiny['cache']}/embeddings", show_progress=False)
    qids = sorted(data.positives)
    q = enc.query_encoder.encode([data.queries[x] for x in qids])
    positives = [data.corpus.rows(data.positives[x]).tolist() for x in qids]
    ranking = drfast.FlatIndex(emb).search(q, k=len(emb)).ids
    ranks = [1 + int(np.flatnonzero(row == p)[0]) for row, ps in zip(ranking, positives) for p in ps]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in positives])])
    total, topk = reference_pairwise_errors(offsets, ranks, k)
    return {x: {"total": t, "topk": tk} for x, t, tk in zip(qids, total, topk)}


def test_errors_command_writes_json_and_plot(tiny, capsys):
    out = tiny["root"] / "out"
    args = ["errors", "--data", tiny["data"], "--split", "test", "--model", tiny["model"], "--cache", tiny["cache"],
            "--k", "7", "--output", str(out)]
    assert main(args) == 0
    report = json.loads((out / "errors.json").read_text())
    expected = brute_force_errors(tiny, 7)
    assert report["per_query"] == expected
    s = report["summary"]
    assert s["queries"] == len(expected) and s["k"] == 7
    assert s["mean_total_errors"] == pytest.approx(np.mean([v["total"] for v in expected.values()]), rel=1e-12)
    assert s["mean_topk_errors"] == pytest.approx(np.mean([v["topk"] for v in expected.values()]), rel=1e-12)
    assert s == stats.summarize([v["total"] for v in expected.values()], [v["topk"] for v in expected.values()], 7)
    png = (out / "errors.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not list(out.glob(".ranks-*")), "the chunk folder is removed once the report is written"
    assert "mean top-7 errors per query" in capsys.readouterr().out


def test_interrupted_run_resumes_from_saved_chunks(tiny, monkeypatch):
    out = tiny["root"] / "resume"
    calls = []
    real = error_report.exact_positive_ranks

    def failing_after_one_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(error_report, "exact_positive_ranks", failing_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_errors(tiny["data"], tiny["model"], out, tiny["cache"], chunk_size=8, plot=False)
    assert len(list(out.glob(".ranks-*/chunk_*.npy"))) == 1
    report = run_errors(tiny["data"], tiny["model"], out, tiny["cache"], chunk_size=8, plot=False)
    chunks = -(-report["summary"]["queries"] // 8)
    assert len(calls) == 2 + chunks - 1  # the resumed run computed every chunk but the saved one
    assert report["per_query"] == brute_force_errors(tiny, 200)


def test_changed_qrels_do_not_reuse_saved_chunks(tiny, tmp_path, monkeypatch):
    import shutil

    from drfast.data import load_beir

    data = tmp_path / "beir"
    shutil.copytree(tiny["data"], data)
    copy = {**tiny, "data": str(data)}
    out = tmp_path / "out"
    calls = []
    real = error_report.exact_positive_ranks

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first run's second chunk
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(error_report, "exact_positive_ranks", counting)
    with pytest.raises(KeyboardInterrupt):  # the first chunk (queries 0-7) is saved
        run_errors(data, tiny["model"], out, tiny["cache"], chunk_size=8, plot=False)
    before = brute_force_errors(copy, 200)
    # Another positive for the first query (same query ids and texts, same corpus).
    split = load_beir(data, "test")
    first = sorted(split.positives)[0]
    old = split.positives[first][0]
    new = next(d for d in split.corpus.doc_ids if d not in split.qrels[first])
    qrels = data / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text().replace(f"{first}\t{old}\t", f"{first}\t{new}\t"))
    after = brute_force_errors(copy, 200)
    assert after[first] != before[first]
    report = run_errors(data, tiny["model"], out, tiny["cache"], chunk_size=8, plot=False)
    assert len(calls) == 2 + -(-report["summary"]["queries"] // 8)  # every chunk computed again
    assert report["per_query"] == after
    assert not list(out.glob(".ranks-*")), "the stale chunks are removed too"


def test_plot_of_an_empty_summary(tmp_path):
    path = plot_errors(stats.summarize([], []), tmp_path / "e.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments_fail_before_encoding(tiny):
    with pytest.raises(ValueError, match="index: expected 'flat', 'pq:M'"):
        run_errors(tiny["data"], tiny["model"], tiny["root"] / "x", index="ivf")
    with pytest.raises(ValueError, match="k: must be >= 1"):
        run_errors(tiny["data"], tiny["model"], tiny["root"] / "x", k=0)
