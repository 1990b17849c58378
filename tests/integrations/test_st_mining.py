"""drfast's mine_hard_negatives against sentence-transformers' own exact path (use_faiss=False), on the same
vectors: every output format, filter and option gives the same rows."""
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import LookupModel, random_pairs

from drfast import FlatIndex
from drfast.common.errors import UsageError


def both(pairs, capsys=None, **kwargs):
    """(ST's dataset, drfast's dataset) for the same arguments, and their printed outputs."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from drfast.integrations.sentence_transformers import mine_hard_negatives

    anchors, positives, corpus, vectors = pairs
    ds = Dataset.from_dict({"query": anchors, "answer": positives})
    random.seed(7)
    expected = st_mine(ds, LookupModel(vectors), corpus=corpus, use_faiss=False, **kwargs)
    out_st = capsys.readouterr().out if capsys else ""
    random.seed(7)
    got = mine_hard_negatives(ds, LookupModel(vectors), corpus=corpus, **kwargs)
    out_drfast = capsys.readouterr().out if capsys else ""
    return expected, got, out_st, out_drfast


def assert_same_rows(expected, got, score_atol=1e-6):
    assert expected.column_names == [c for c in got.column_names if c != "positive_rank"]
    assert len(expected) == len(got)
    for name in expected.column_names:
        a, b = expected[name], got[name]
        if name in ("scores", "score"):  # labeled-list rows have different lengths: compare row by row
            for x, y in zip(a, b):
                np.testing.assert_allclose(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64),
                                           atol=score_atol)
        else:
            assert list(a) == list(b), name


FILTERS = [
    dict(),
    dict(range_min=3, range_max=20, num_negatives=4),
    dict(relative_margin=0.05, num_negatives=5, range_min=2, range_max=40),
    dict(absolute_margin=0.0, max_score=0.6, range_max=30),
    dict(min_score=0.1, range_max=25, num_negatives=6),
    dict(max_score=0.5, min_score=-0.2, absolute_margin=0.1, num_negatives=2),
]


@pytest.mark.parametrize("output_format", ["triplet", "n-tuple", "labeled-pair", "labeled-list"])
@pytest.mark.parametrize("filters", FILTERS)
def test_same_rows_as_sentence_transformers(pairs, output_format, filters):
    expected, got, _, _ = both(pairs, output_format=output_format, **filters)
    assert_same_rows(expected, got)
    expected, got, _, _ = both(pairs, output_format=output_format, output_scores=True, **filters)
    assert_same_rows(expected, got)


def test_random_sampling_draws_the_same_negatives(pairs):
    for fmt in ("triplet", "n-tuple"):
        expected, got, _, _ = both(pairs, output_format=fmt, sampling_strategy="random", range_max=30,
                                   num_negatives=4, relative_margin=0.1)
        assert_same_rows(expected, got)


def test_include_positives_and_deprecated_arguments(pairs):
    assert_same_rows(*both(pairs, include_positives=True, num_negatives=5)[:2])
    assert_same_rows(*both(pairs, as_triplets=False, margin=0.05, num_negatives=2)[:2])
    assert_same_rows(*both(pairs, output_format="n-tuple-scores", num_negatives=2)[:2])


def test_printed_summary_matches(pairs, capsys):
    _, _, out_st, out_drfast = both(pairs, capsys, relative_margin=0.05, max_score=0.7, range_min=2,
                                    num_negatives=5, output_format="n-tuple")
    assert "Skipped" in out_st and "Could not find enough negatives" in out_st
    assert_same_printout(out_st, out_drfast)


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def assert_same_printout(expected: str, got: str) -> None:
    """The same lines, text and counts exactly; printed decimals may differ by one unit of their last
    place: ST's scores (cosine) and drfast's (the kernel's dot products) differ by float rounding, and a
    statistic that sits on a rounding boundary then prints one digit apart (fresh random inputs every run)."""
    a, b = expected.splitlines(), got.splitlines()
    assert len(a) == len(b), (a, b)
    for x, y in zip(a, b):
        assert NUMBER.split(x) == NUMBER.split(y), (x, y)
        for u, v in zip(NUMBER.findall(x), NUMBER.findall(y)):
            if "." in u and "." in v and len(u.split(".")[1]) == len(v.split(".")[1]):
                assert abs(float(u) - float(v)) <= 1.5 * 10.0 ** -len(u.split(".")[1]), (x, y)
            else:
                assert u == v, (x, y)


def test_prompts_reach_the_model(rng):
    anchors, positives, corpus, vectors = random_pairs(rng, shared_text=False)
    vectors.update({"q: " + t: v for t, v in vectors.items()})
    vectors.update({"d: " + t: v for t, v in vectors.items()})
    assert_same_rows(*both((anchors, positives, corpus, vectors), query_prompt="q: ", corpus_prompt="d: ")[:2])


def test_no_cap_on_k_and_padding_past_the_corpus(rng):
    # range_max larger than the corpus: ST pads with -inf; so do we (and the search itself is not capped)
    pairs = random_pairs(rng, n_queries=10, n_docs=40)
    expected, got, _, _ = both(pairs, range_max=200, num_negatives=45, output_format="triplet")
    assert_same_rows(expected, got)
    assert len(got) > 0


def test_positive_ranks_are_exact_corpus_ranks(pairs):
    from datasets import Dataset

    from drfast.integrations.sentence_transformers import mine_hard_negatives

    anchors, positives, corpus, vectors = pairs
    ds = Dataset.from_dict({"query": anchors, "answer": positives})
    out = mine_hard_negatives(ds, LookupModel(vectors), corpus=corpus, output_positive_ranks=True,
                              num_negatives=1, verbose=False)
    texts = list(dict.fromkeys(corpus + positives))
    emb = np.stack([vectors[t] for t in texts])
    positive_sets = {}
    for a, p in zip(anchors, positives):
        positive_sets.setdefault(a, set()).add(p)
    for a, p, rank in zip(out["query"], out["answer"], out["positive_rank"]):
        s = emb @ vectors[a]
        row = texts.index(p)
        # 1 + rows scoring higher, ties to lower rows: the contract of SearchResult.pos_ranks
        assert rank == 1 + int(np.sum((s > s[row]) | ((s == s[row]) & (np.arange(len(s)) < row))))


def test_index_argument_skips_corpus_encoding(pairs, tmp_path):
    from datasets import Dataset

    from drfast.integrations.sentence_transformers import mine_hard_negatives

    anchors, positives, corpus, vectors = pairs
    ds = Dataset.from_dict({"query": anchors, "answer": positives})
    reference = mine_hard_negatives(ds, LookupModel(vectors), corpus=corpus, verbose=False)
    index = FlatIndex(np.stack([vectors[t] for t in corpus]))
    index.save(tmp_path / "idx")
    import faiss
    faiss.write_index(index.to_faiss(), str(tmp_path / "flat.faiss"))
    for given in (index, str(tmp_path / "idx"), str(tmp_path / "flat.faiss"), index.to_faiss()):
        model = LookupModel(vectors)
        got = mine_hard_negatives(ds, model, corpus=corpus, index=given, verbose=False)
        assert_same_rows(reference, got)
        assert [n for n, _ in model.calls] == [len(set(anchors))]  # the queries only
    with pytest.raises(UsageError) as e:
        mine_hard_negatives(ds, LookupModel(vectors), index=index, verbose=False)
    assert e.value.param == "corpus"
    with pytest.raises(UsageError) as e:
        mine_hard_negatives(ds, LookupModel(vectors), corpus=corpus[:-1], index=index, verbose=False)
    assert e.value.param in ("corpus", "index")


@pytest.mark.parametrize("first_pass", ["int8", "int8-lean", "auto"])
@pytest.mark.parametrize("ranks", [False, True])
def test_first_pass_gives_the_same_rows(pairs, first_pass, ranks):
    from datasets import Dataset

    from drfast.integrations.sentence_transformers import mine_hard_negatives

    anchors, positives, corpus, vectors = pairs
    ds = Dataset.from_dict({"query": anchors, "answer": positives})
    a = mine_hard_negatives(ds, LookupModel(vectors), corpus=corpus, verbose=False, output_scores=True,
                            first_pass=None, output_positive_ranks=ranks)
    b = mine_hard_negatives(ds, LookupModel(vectors), corpus=corpus, verbose=False, output_scores=True,
                            first_pass=first_pass, output_positive_ranks=ranks)
    assert a.to_dict() == b.to_dict()


def test_cache_folder_round_trip(pairs, tmp_path):
    from datasets import Dataset

    from drfast.integrations.sentence_transformers import mine_hard_negatives

    anchors, positives, corpus, vectors = pairs
    ds = Dataset.from_dict({"query": anchors, "answer": positives})
    first = mine_hard_negatives(ds, LookupModel(vectors), corpus=corpus, cache_folder=str(tmp_path), verbose=False)
    model = LookupModel(vectors)
    second = mine_hard_negatives(ds, model, corpus=corpus, cache_folder=str(tmp_path), verbose=False)
    assert model.calls == [] and first.to_dict() == second.to_dict()
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_bad_arguments(pairs):
    from datasets import Dataset

    from drfast.integrations.sentence_transformers import mine_hard_negatives

    anchors, positives, corpus, vectors = pairs
    ds = Dataset.from_dict({"query": anchors, "answer": positives})
    model = LookupModel(vectors)
    for kwargs in (dict(num_negatives=0), dict(range_min=5, range_max=5), dict(range_min=-1),
                   dict(output_format="pairs"), dict(faiss_batch_size=0), dict(range_max=4, num_negatives=5)):
        with pytest.raises(ValueError):
            mine_hard_negatives(ds, model, **kwargs)
    with pytest.raises(UsageError) as e:
        mine_hard_negatives(ds, model, output_format="labeled-pair", output_positive_ranks=True)
    assert e.value.param == "output_positive_ranks"
    model.similarity_fn_name = "euclidean"
    with pytest.raises(NotImplementedError, match="similarity_fn_name"):
        mine_hard_negatives(ds, model)


def test_real_tiny_model_same_rows(tiny_st_folder, rng):
    """With a real (tiny, random) SentenceTransformer encoding the texts, both paths give the same rows."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from drfast.integrations.sentence_transformers import mine_hard_negatives
    from tiny import WORDS

    model = SentenceTransformer(tiny_st_folder, device="cpu")
    corpus = list(dict.fromkeys(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(120)))
    anchors = [" ".join(rng.choice(WORDS, size=3)) + f" q{i}" for i in range(20)]
    ds = Dataset.from_dict({"anchor": anchors, "positive": [corpus[int(rng.integers(len(corpus)))] for _ in anchors]})
    kwargs = dict(corpus=corpus, range_max=15, num_negatives=3, output_format="n-tuple", verbose=False)
    expected = st_mine(ds, model, use_faiss=False, **kwargs)
    got = mine_hard_negatives(ds, model, **kwargs)
    assert_same_rows(expected, got)


def test_import_drfast_does_not_import_sentence_transformers():
    code = ("import sys, drfast, drfast.integrations; "
            "assert 'sentence_transformers' not in sys.modules, 'imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


class FakeCrossEncoder:
    """A cross-encoder whose score of (query, passage) is a fixed function of the two texts."""

    def predict(self, pairs, batch_size=32, convert_to_tensor=False, pool=None):
        import zlib
        # crc32 / 2^32: ties (whose order ST leaves to torch.topk) as rare as among real float32 scores
        return torch.tensor([zlib.crc32((q + "|" + p).encode()) / 2**32 for q, p in pairs])


def test_cross_encoder_rescoring_same_rows(pairs):
    for kwargs in (dict(output_format="n-tuple", num_negatives=3, range_max=20),
                   dict(output_format="triplet", min_score=0.3, num_negatives=2, output_scores=True),
                   dict(output_format="labeled-list", max_score=0.8, relative_margin=0.1, num_negatives=4)):
        expected, got, _, _ = both(pairs, cross_encoder=FakeCrossEncoder(), **kwargs)
        assert len(expected) > 0
        assert_same_rows(expected, got)
