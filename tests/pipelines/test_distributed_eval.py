"""`drfast encode / evaluate / search / errors` on 2 gloo ranks equal one process, file for file.

The parent runs the single-process commands; spawned ranks (torch.distributed initialised as torchrun
would, then the same entry points) run the sharded ones into their own cache and outputs, and the
parent compares: the corpus cache's embeddings file byte for byte, metrics and per-query values,
run files, errors.json (flat and PQ, encoded and from a saved --index-dir). Also the failure of one
rank mid-encoding: every rank raises (no hang), and the next call resumes from the saved chunks.
"""
import json
import os
import pickle
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore:PQ codebooks trained on")

WORLD = 2
# 30 test queries in batches of 7: 5 batches, 3 on rank 0 and 2 on rank 1 (an empty search on rank 1)
EVAL_ARGS = ["--query-batch-size", "7", "--k", "20", "--dtype", "float32"]
ERRORS = dict(chunk_size=7, plot=False)  # 5 chunks: 3 rounds


def run_errors(data, model, output, index, cache, dist=None):
    """run_errors of the ERRORS settings: k=20, 3 queries a batch, float32 embeddings."""
    from drfast.pipelines import errors
    from drfast.pipelines.specs import CorpusSpec, EncoderSpec, IndexSpec, SearchSpec

    return errors.run_errors(CorpusSpec(data, cache=cache, dtype="float32"), EncoderSpec(model), output,
                             IndexSpec(index), SearchSpec(k=20, query_batch_size=3), dist=dist, **ERRORS)


def _single_thread():
    import faiss

    import drfast

    torch.set_num_threads(1)
    drfast.set_num_threads(1)
    faiss.omp_set_num_threads(1)


class _InterruptedCorpus:
    """A corpus whose texts() fails on rank 1 (the first time only): an interrupted encoding."""

    def __init__(self, corpus, rank):
        self._corpus, self._rank, self.failed = corpus, rank, False

    def __len__(self):
        return len(self._corpus)

    def __getattr__(self, name):
        return getattr(self._corpus, name)

    def texts(self, rows):
        if self._rank == 1 and not self.failed:
            self.failed = True
            raise RuntimeError("interrupted")
        return self._corpus.texts(rows)


def _encode_on_ranks(rank, case):
    from drfast.common.distributed import current
    from drfast.data import Corpus
    from drfast.encode.corpus_cache import encode_corpus
    from drfast.encode.encoders import Encoder

    encoder = Encoder.load(case["model"], role="document")
    corpus = _InterruptedCorpus(Corpus(Path(case["data"]) / "corpus.jsonl"), rank)
    out = {}
    try:
        encode_corpus(encoder, corpus, case["cache_enc"], dtype="float32", chunk_size=32, show_progress=False,
                      dist=current())
    except RuntimeError as e:
        out["error"] = str(e)
    emb, _ = encode_corpus(encoder, corpus, case["cache_enc"], dtype="float32", chunk_size=32, show_progress=False,
                           dist=current())
    out["file"] = emb.filename
    return out


def _worker(rank, init_file, case, out_dir):
    import torch.distributed as dist

    from drfast.cli import main
    from drfast.common.distributed import current

    _single_thread()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results = {}
    try:
        results["encode"] = _encode_on_ranks(rank, case)
        common = ["--data", case["data"], "--model", case["model"], "--cache", case["cache_eval"]] + EVAL_ARGS
        for name, extra in (("flat", ["--index", "flat"]), ("pq", ["--index", "pq:4"]),
                            ("saved", ["--index-dir", case["saved"]])):
            results[f"evaluate_{name}"] = main(["evaluate", *common, *extra, "--output", f"{case['out']}/eval_{name}"])
        results["search"] = main(["search", *common, "--index", "pq:4", "--output", f"{case['out']}/search"])
        for name, spec in (("flat", "flat"), ("pq", "pq:4")):
            report = run_errors(case["data"], case["model"], f"{case['out']}/errors_{name}", spec,
                                case["cache_eval"], dist=current())
            results[f"errors_{name}"] = None if report is None else report["summary"]
    except Exception:  # noqa: BLE001 (reported to the parent)
        results["traceback"] = traceback.format_exc()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)
    dist.barrier()  # no rank tears gloo down while another still reads its last collective
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(single-process folder, sharded folder, the ranks' results)."""
    import torch.multiprocessing as mp

    from tiny import make_tiny_beir, make_tiny_hf_folder

    from drfast.cli import main
    from drfast.data import Corpus
    from drfast.encode.corpus_cache import encode_corpus
    from drfast.encode.encoders import Encoder

    root = tmp_path_factory.mktemp("dist")
    model = make_tiny_hf_folder(root / "model")
    data = make_tiny_beir(root / "beir", np.random.default_rng(0), n_docs=300, n_queries=30)
    one, two = root / "one", root / "two"
    threads = torch.get_num_threads()
    _single_thread()
    try:
        emb, _ = encode_corpus(Encoder.load(model, role="document"), Corpus(Path(data) / "corpus.jsonl"),
                               one / "cache_enc", dtype="float32", chunk_size=32, show_progress=False)
        single = {"encode_file": emb.filename}
        saved = str(root / "saved_pq")
        assert main(["index", "--data", data, "--model", model, "--cache", str(root / "cache_saved"), "--dtype",
                     "float32", "--index", "pq:4", "--output", saved]) == 0
        common = ["--data", data, "--model", model, "--cache", str(one / "cache_eval")] + EVAL_ARGS
        for name, extra in (("flat", ["--index", "flat"]), ("pq", ["--index", "pq:4"]), ("saved", ["--index-dir", saved])):
            assert main(["evaluate", *common, *extra, "--output", str(one / f"eval_{name}")]) == 0
        assert main(["search", *common, "--index", "pq:4", "--output", str(one / "search")]) == 0
        for name, spec in (("flat", "flat"), ("pq", "pq:4")):
            run_errors(data, model, one / f"errors_{name}", spec, one / "cache_eval")
    finally:
        torch.set_num_threads(threads)
    case = dict(model=model, data=data, saved=saved, out=str(two), cache_enc=str(two / "cache_enc"),
                cache_eval=str(two / "cache_eval"))
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), case, tmp), nprocs=WORLD, join=True)
        ranks = []
        for r in range(WORLD):
            with open(os.path.join(tmp, f"rank{r}.pkl"), "rb") as f:
                ranks.append(pickle.load(f))
    for r in ranks:
        assert "traceback" not in r, r["traceback"]
    return one, two, ranks, single


def test_sharded_encode_writes_the_single_process_cache(runs):
    one, two, ranks, single = runs
    # rank 1 failed mid-way: both ranks raised (rank 0 a RuntimeError naming rank 1), then resumed
    assert ranks[1]["encode"]["error"] == "interrupted"
    assert ranks[0]["encode"]["error"] == "encoding the corpus failed on rank(s) [1] (see the error raised there)"
    a, b = Path(single["encode_file"]), Path(ranks[0]["encode"]["file"])
    assert a != b and ranks[1]["encode"]["file"] == str(b)
    assert a.read_bytes() == b.read_bytes()
    assert (a.parent / "doc_ids.txt").read_bytes() == (b.parent / "doc_ids.txt").read_bytes()
    meta = json.loads((b.parent / "meta.json").read_text())
    assert meta["ranks"] == WORLD and meta["resumed_docs"] > 0  # the chunks saved before the failure were kept
    assert not list(b.parent.parent.glob("*.partial")) and not list(b.parent.parent.glob("*.lock"))


@pytest.mark.parametrize("name", ["flat", "pq", "saved"])
def test_sharded_evaluate_equals_one_process(runs, name):
    one, two, ranks, _ = runs
    assert [r[f"evaluate_{name}"] for r in ranks] == [0, 0]
    a = json.loads((one / f"eval_{name}" / "metrics.json").read_text())
    b = json.loads((two / f"eval_{name}" / "metrics.json").read_text())
    assert a["metrics"] == b["metrics"] and a["per_query"] == b["per_query"]
    assert a["metrics"]["nDCG@10"] > 0
    assert (one / f"eval_{name}" / "run.trec").read_bytes() == (two / f"eval_{name}" / "run.trec").read_bytes()


def test_sharded_search_writes_the_same_run(runs):
    one, two, ranks, _ = runs
    assert (one / "search" / "run.trec").read_bytes() == (two / "search" / "run.trec").read_bytes()
    assert sorted(p.name for p in (two / "search").iterdir()) == ["run.trec"]


@pytest.mark.parametrize("name", ["flat", "pq"])
def test_sharded_errors_equal_one_process(runs, name):
    one, two, ranks, _ = runs
    a = json.loads((one / f"errors_{name}" / "errors.json").read_text())
    b = json.loads((two / f"errors_{name}" / "errors.json").read_text())
    assert a["summary"] == b["summary"] and a["per_query"] == b["per_query"]
    assert a["summary"]["queries"] == 30 and a["summary"]["mean_total_errors"] > 0
    assert ranks[0][f"errors_{name}"] == b["summary"] and ranks[1][f"errors_{name}"] is None
    assert not list((two / f"errors_{name}").glob(".ranks-*"))  # the chunks are removed when done
