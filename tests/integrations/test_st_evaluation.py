"""InformationRetrievalEvaluator: sentence-transformers' keys and (where the definitions agree) values,
trec_eval's MAP@k, and index= instead of encoding the corpus."""
import numpy as np
import pytest

from drfast import FlatIndex

from tiny import WORDS


def collection(rng, n_docs=60, n_queries=15):
    corpus = {f"d{i}": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 10)))) + f" {i}" for i in range(n_docs)}
    queries = {f"q{i}": " ".join(rng.choice(WORDS, size=3)) for i in range(n_queries)}
    relevant = {q: set(rng.choice(list(corpus), size=int(rng.integers(1, 4)), replace=False).tolist())
                for q in list(queries)[:-1]}  # the last query has no judgment: both evaluators skip it
    return queries, corpus, relevant


def test_same_keys_and_values_as_sentence_transformers(tiny_st_folder, rng, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as STEvaluator

    from drfast.integrations.sentence_transformers import InformationRetrievalEvaluator

    model = SentenceTransformer(tiny_st_folder, device="cpu")
    queries, corpus, relevant = collection(rng)
    kwargs = dict(name="tiny", mrr_at_k=[5, 10], ndcg_at_k=[3, 10], map_at_k=[10, 100])
    expected = STEvaluator(queries, corpus, relevant, **kwargs)(model)
    ours = InformationRetrievalEvaluator(queries, corpus, relevant, **kwargs)
    got = ours(model, output_path=str(tmp_path))
    assert sorted(got) == sorted(expected)
    assert ours.primary_metric == "tiny_cosine_ndcg@10"
    for key, value in expected.items():
        if "map@" not in key:  # MAP@k: trec_eval divides by all relevant docs, ST by min(k, relevant)
            assert got[key] == pytest.approx(value, abs=1e-9), key
    assert (tmp_path / "Information-Retrieval_evaluation_tiny_results.csv").exists()

    # MAP@k as trec_eval's map_cut_k, from the ranking computed here independently
    q_ids = [q for q in queries if q in relevant]
    docs = list(corpus)
    qe = model.encode_query([queries[q] for q in q_ids], convert_to_numpy=True, normalize_embeddings=True)
    de = model.encode_document([corpus[d] for d in docs], convert_to_numpy=True, normalize_embeddings=True)
    values = []
    for q, s in zip(q_ids, qe @ de.T):
        order = sorted(range(len(docs)), key=lambda i: (-np.float32(s[i]), [-ord(c) for c in docs[i]]))[:10]
        hits, total = 0, 0.0
        for rank, i in enumerate(order, start=1):
            if docs[i] in relevant[q]:
                hits += 1
                total += hits / rank
        values.append(total / len(relevant[q]))
    assert got["tiny_cosine_map@10"] == pytest.approx(np.mean(values), abs=1e-6)


def test_index_replaces_corpus_encoding(tiny_st_folder, rng):
    from sentence_transformers import SentenceTransformer

    from drfast.integrations.sentence_transformers import InformationRetrievalEvaluator

    model = SentenceTransformer(tiny_st_folder, device="cpu")
    queries, corpus, relevant = collection(rng)
    encoded = InformationRetrievalEvaluator(queries, corpus, relevant)(model)
    index = FlatIndex(model.encode_document(list(corpus.values()), convert_to_numpy=True, normalize_embeddings=True))
    calls = []
    original = model.encode_document
    model.encode_document = lambda *a, **k: calls.append(1) or original(*a, **k)
    given = InformationRetrievalEvaluator(queries, corpus, relevant, index=index)(model)
    assert calls == [] and given == pytest.approx(encoded, abs=1e-9)
    with pytest.raises(ValueError):
        InformationRetrievalEvaluator(queries, corpus, relevant, index=FlatIndex(np.eye(4, dtype=np.float32)))
    with pytest.raises(NotImplementedError, match="score_functions"):
        InformationRetrievalEvaluator(queries, corpus, relevant, score_functions={"dot": lambda a, b: a @ b.T})
