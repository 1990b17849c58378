"""Hard-negative mining on hand-built indexes where the order of every candidate is known.

Most tests use 2-d embeddings: document i is [s_i, 0] and the query is [1, 0], so the score of
document i is exactly s_i (values chosen to be exact in float32).
"""
import json
import sys

import numpy as np
import pytest

import drfast
from drfast.data import Corpus, iter_training_examples
from drfast.negatives.mining import MinedNegatives, MiningConfig, format_statistics, mine_from_bm25, mine_from_index, score_statistics, write_mined

Q = np.array([[1.0, 0.0]], dtype=np.float32)


def scored_index(scores):
    """A FlatIndex whose document i scores scores[i] against Q."""
    emb = np.zeros((len(scores), 2), dtype=np.float32)
    emb[:, 0] = scores
    return drfast.FlatIndex(emb, [f"d{i}" for i in range(len(scores))])


def mine_one(scores, positives, texts=None, **config):
    mined = mine_from_index(scored_index(scores), Q, ["q"], [positives], MiningConfig(**config), texts=texts)
    return mined["q"], mined.negative_scores["q"]


DESCENDING = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]  # row i is at corpus rank i + 1


def test_rank_window_counts_non_positives_only():
    # non-positive candidates by rank: rows 0, 1, 2, 4, 5, ... (row 3 is the positive)
    rows, scores = mine_one(DESCENDING, [3], depth=5, skip=2, n=10)
    assert rows == [2, 4, 5] and scores == [7.0, 5.0, 4.0]
    assert mine_one(DESCENDING, [3], depth=3, n=10)[0] == [0, 1, 2]
    assert mine_one(DESCENDING, [3], depth=9, skip=8, n=10)[0] == [9]


def test_positives_excluded_even_when_they_fill_the_top():
    # the positives take corpus ranks 1 and 2: searching k = depth + 2 still yields `depth` negatives
    rows, _ = mine_one(DESCENDING, [0, 1], depth=3, n=10)
    assert rows == [2, 3, 4]
    rows, _ = mine_one(DESCENDING, [9, 0, 4], depth=200, n=200)
    assert rows == [1, 2, 3, 5, 6, 7, 8]


def test_n_larger_than_the_window_returns_all_it_has():
    for sampling in ("top", "random"):
        rows, _ = mine_one(DESCENDING, [3], depth=4, skip=1, n=50, sampling=sampling)
        assert rows == [1, 2, 4]


def test_top_sampling_takes_the_hardest():
    rows, _ = mine_one(DESCENDING, [3], depth=8, skip=1, n=3)
    assert rows == [1, 2, 4]


def test_random_sampling_is_seeded_and_stays_in_the_window(rng):
    scores = -np.arange(40, dtype=np.float32)  # row i at corpus rank i + 1
    index = scored_index(scores)
    window = set(range(6, 26))  # positive row 0; non-positive ranks 6..25 are rows 6..25
    cfg = MiningConfig(depth=25, skip=5, n=5, sampling="random", seed=int(rng.integers(1000)))
    qids = [f"q{i}" for i in range(8)]
    queries = np.repeat(Q, len(qids), axis=0)
    mined = mine_from_index(index, queries, qids, [[0]] * len(qids), cfg)
    for q in qids:
        rows = mined[q]
        assert len(rows) == 5 and len(set(rows)) == 5 and set(rows) <= window
        assert rows == sorted(rows)  # returned in rank order
    # different queries draw differently; the same config draws the same, whatever the batching or order
    assert len({tuple(mined[q]) for q in qids}) > 1
    again = mine_from_index(index, queries[::-1], qids[::-1], [[0]] * len(qids), cfg, batch_size=3)
    assert dict(again) == dict(mined)
    other = mine_from_index(index, queries, qids, [[0]] * len(qids),
                            MiningConfig(depth=25, skip=5, n=5, sampling="random", seed=cfg.seed + 1))
    assert dict(other) != dict(mined)


def test_absolute_margin_uses_the_lowest_positive():
    scores = [7.0, 6.0, 5.0, 5.0, 4.5, 4.0, 3.0, 8.0]  # positives: row 2 (5.0) and row 7 (8.0)
    assert mine_one(scores, [2, 7], n=10, margin_abs=0.5)[0] == [4, 5, 6]
    assert mine_one(scores, [2, 7], n=10, margin_abs=0.0)[0] == [3, 4, 5, 6]  # equal score is kept
    assert mine_one(scores, [2, 7], n=10)[0] == [0, 1, 3, 4, 5, 6]  # no margin: harder than positives too


@pytest.mark.parametrize("s_pos, expected", [
    (4.0, [3.0, 2.75, 2.0]),      # limit 4 - 0.25 * 4 = 3
    (-2.0, [-2.5, -2.75, -3.0]),  # limit -2 - 0.25 * 2 = -2.5; a naive s * (1 - m) = -1.5 would keep -2
])
def test_relative_margin_is_sign_safe(s_pos, expected):
    others = [3.5, 3.0, 2.75, 2.0] if s_pos > 0 else [-1.0, -1.75, -2.0, -2.25, -2.5, -2.75, -3.0]
    rows, scores = mine_one([s_pos] + others, [0], n=10, margin_rel=0.25)
    assert scores == expected and 0 not in rows


def test_both_margins_apply_the_stricter():
    scores = [4.0, 3.5, 3.25, 3.0, 2.5, 2.0]  # positive row 0
    assert mine_one(scores, [0], n=10, margin_abs=0.5, margin_rel=0.25)[1] == [3.0, 2.5, 2.0]
    assert mine_one(scores, [0], n=10, margin_abs=1.5, margin_rel=0.25)[1] == [2.5, 2.0]


def test_duplicate_texts_are_excluded(tmp_path):
    texts = ["The answer", "  the ANSWER ", "a cat", "a dog", "A cat", "a bird", "a cat"]
    scores = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0]  # positive row 0; row 1 copies it, rows 4 and 6 copy row 2
    assert mine_one(scores, [0], texts=texts, n=10)[0] == [2, 3, 5]
    assert mine_one(scores, [0], texts=texts, n=2)[0] == [2, 3]
    assert mine_one(scores, [0], texts=texts, n=10, dedupe_texts=False)[0] == [1, 2, 3, 4, 5, 6]
    assert mine_one(scores, [0], n=10)[0] == [1, 2, 3, 4, 5, 6]  # no texts: nothing to compare
    # the same through a Corpus, read by row
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    assert mine_one(scores, [0], texts=Corpus(path), n=10)[0] == [2, 3, 5]


def test_queries_without_positives_are_skipped_and_counted():
    index = scored_index(DESCENDING)
    mined = mine_from_index(index, np.repeat(Q, 3, axis=0), ["a", "b", "c"], [[0], [], [9]],
                            MiningConfig(depth=3, n=2))
    assert isinstance(mined, MinedNegatives) and dict(mined) == {"a": [1, 2], "c": [0, 1]}
    assert mined.skipped == ["b"]
    stats = score_statistics(mined)
    assert stats["queries"] == 3 and stats["mined"] == 2 and stats["skipped_no_positives"] == 1
    assert "skipped (no positives) 1" in format_statistics(stats)


def test_score_statistics_values():
    index = scored_index(DESCENDING)
    mined = mine_from_index(index, np.repeat(Q, 3, axis=0), ["a", "b", "c"], [[2], [3, 9], [0]],
                            MiningConfig(n=2, margin_abs=1.0))
    # a: s_pos 7 -> negatives 6, 5; b: s_pos 0 -> none; c: s_pos 9 -> 8, 7
    assert dict(mined) == {"a": [3, 4], "b": [], "c": [1, 2]}
    stats = score_statistics(mined)
    assert stats["positive"] == {"mean": 16 / 3, "median": 7.0, "min": 0.0, "max": 9.0}
    assert stats["negative"] == {"mean": 7.0, "median": 7.0, "min": 6.0, "max": 8.0}  # hardest per query
    assert stats["margin"] == {"mean": 1.0, "median": 1.0, "min": 1.0, "max": 1.0}
    assert stats["without_negatives"] == 1 and stats["fewer_than_n"] == 1
    table = format_statistics(stats)
    assert "margin (positive - negative)" in table and "1.0000" in table
    empty = score_statistics(mine_from_index(index, Q, ["q"], [[9]], MiningConfig(margin_abs=1.0)))
    assert "-" in format_statistics(empty).splitlines()[3]  # no negatives anywhere: no margin to show


def reference_mining(index, queries, positives, cfg):
    """Selection straight from the definition, over the index's complete ranking."""
    full = index.search(queries, k=index.ntotal, positives=positives)
    out = {}
    for b, pos in enumerate(positives):
        s_pos = min(full.pos_scores[full.pos_offsets[b]:full.pos_offsets[b + 1]])
        ranked = [(int(r), float(s)) for r, s in zip(full.ids[b], full.scores[b]) if r not in pos]
        kept = [(r, s) for r, s in ranked[cfg.skip:cfg.depth]
                if (cfg.margin_abs is None or s <= s_pos - cfg.margin_abs)
                and (cfg.margin_rel is None or s <= s_pos - cfg.margin_rel * abs(s_pos))]
        out[f"q{b}"] = [r for r, _ in kept[:cfg.n]]
    return out


@pytest.mark.filterwarnings("ignore:PQ codebooks trained on")  # a small PQ is fine for checking selection
@pytest.mark.parametrize("kind", ["flat", "pq"])
def test_matches_reference_on_random_data(rng, kind):
    n, d, b = 600, 16, 7
    emb = rng.standard_normal((n, d)).astype(np.float32)
    index = drfast.FlatIndex(emb) if kind == "flat" else drfast.PQIndex.train(emb, m=4, seed=0)
    queries = rng.standard_normal((b, d)).astype(np.float32)
    positives = [sorted(rng.choice(n, size=int(rng.integers(1, 6)), replace=False).tolist()) for _ in range(b)]
    cfg = MiningConfig(depth=60, skip=int(rng.integers(0, 10)), n=int(rng.integers(5, 40)),
                       margin_abs=float(rng.uniform(0, 0.5)), margin_rel=float(rng.uniform(0, 0.2)))
    mined = mine_from_index(index, queries, [f"q{i}" for i in range(b)], positives, cfg, batch_size=3)
    assert dict(mined) == reference_mining(index, queries, positives, cfg)


@pytest.mark.parametrize("kwargs, name", [
    ({"depth": 0}, "depth"), ({"skip": -1}, "skip"), ({"depth": 5, "skip": 5}, "skip"), ({"n": 0}, "n"),
    ({"n": 2.5}, "n"), ({"sampling": "hardest"}, "sampling"), ({"margin_abs": -0.1}, "margin_abs"),
    ({"margin_rel": float("nan")}, "margin_rel"), ({"seed": -1}, "seed"), ({"dedupe_texts": 1}, "dedupe_texts"),
])
def test_config_rejects_bad_values(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):  # TypeError for a wrong type
        MiningConfig(**kwargs)


def test_mine_from_index_rejects_bad_arguments():
    index = scored_index(DESCENDING)
    with pytest.raises(ValueError, match="query_embeddings"):
        mine_from_index(index, np.repeat(Q, 2, axis=0), ["q"], [[0]])
    with pytest.raises(ValueError, match="positives_rows"):
        mine_from_index(index, Q, ["q"], [[0], [1]])
    with pytest.raises(ValueError, match="positives_rows"):
        mine_from_index(index, Q, ["q"], [[10]])
    with pytest.raises(ValueError, match="qids"):
        mine_from_index(index, np.repeat(Q, 2, axis=0), ["q", "q"], [[0], [1]])
    with pytest.raises(TypeError, match="config"):
        mine_from_index(index, Q, ["q"], [[0]], {"depth": 3})


BM25_DOCS = [
    "The cat sat on the mat.",         # 0
    "A cat and a dog on a mat near a big dog",  # 1: longer, so below row 0
    "Dense retrieval with hard negatives",  # 2
    "  THE CAT SAT ON THE MAT. ",      # 3: same text as the positive (row 0) after normalising
    "Cats are not cat food",           # 4
    "mat mat mat",                     # 5
    "nothing in common here",          # 6
]


def test_bm25_mining():
    bm25s = pytest.importorskip("bm25s")
    doc_ids = [f"d{i}" for i in range(len(BM25_DOCS))]
    queries = {"q1": "a cat on the mat", "q2": "dense retrieval", "q3": "no positives"}
    positives = {"q1": ["d0"], "q2": ["d2"]}
    mined = mine_from_bm25(BM25_DOCS, doc_ids, queries, positives, MiningConfig(n=10))
    assert mined.skipped == ["q3"]

    # independent BM25 scores from bm25s itself
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(BM25_DOCS, stopwords="en", show_progress=False), show_progress=False)
    found, scores = retriever.retrieve(bm25s.tokenize([queries["q1"]], stopwords="en", show_progress=False),
                                       k=len(BM25_DOCS), show_progress=False)
    by_row = dict(zip(found[0].tolist(), scores[0].tolist()))
    expected = sorted((r for r, s in by_row.items() if s > 0 and r not in (0, 3)), key=lambda r: (-by_row[r], r))
    assert mined["q1"] == expected and 6 not in expected and 2 not in expected  # zero-score rows never appear
    np.testing.assert_allclose(mined.negative_scores["q1"], [by_row[r] for r in expected], rtol=1e-6)
    assert mined.positive_scores["q1"] == pytest.approx(by_row[0], rel=1e-6)
    assert mined["q2"] == []  # no other document shares a term with "dense retrieval"

    # without text deduplication the copy of the positive is the hardest negative
    copy = mine_from_bm25(BM25_DOCS, doc_ids, queries, positives, MiningConfig(n=10, dedupe_texts=False))
    assert copy["q1"][0] == 3
    # a margin below the positive's own score removes the copy (its score equals the positive's)
    margin = mine_from_bm25(BM25_DOCS, doc_ids, queries, positives, MiningConfig(n=10, margin_abs=0.01,
                                                                                 dedupe_texts=False))
    assert 3 not in margin["q1"]
    assert all(s <= mined.positive_scores["q1"] - 0.01 for s in margin.negative_scores["q1"])
    with pytest.raises(ValueError, match="positives"):
        mine_from_bm25(BM25_DOCS, doc_ids, queries, {"q1": ["nope"]})


def test_bm25_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm25s", None)  # makes `import bm25s` raise ImportError
    with pytest.raises(ImportError, match="pip install bm25s"):
        mine_from_bm25(["a"], ["d0"], {"q": "a"}, {"q": ["d0"]})


def test_write_mined_round_trip(tmp_path):
    index = scored_index(DESCENDING)
    mined = mine_from_index(index, np.repeat(Q, 3, axis=0), ["a", "b", "c"], [[2], [9], [0]],
                            MiningConfig(n=3))
    assert mined["a"] == [0, 1, 3] and mined["b"] == [0, 1, 2]
    mined["c"] = []  # a query left without negatives is not written by default
    queries = {"a": "query a", "b": "query b", "c": "query c"}
    positives = {"a": ["d2"], "b": ["d9"], "c": ["d0"]}
    path = tmp_path / "train.jsonl"
    assert write_mined(path, queries, positives, mined, index.doc_ids) == 2
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"query_id": "a", "query": "query a", "positive_passages": [{"docid": "d2"}],
                     "negative_passages": [{"docid": "d0"}, {"docid": "d1"}, {"docid": "d3"}]}
    examples = list(iter_training_examples(path))
    assert [(e.query_id, e.query, e.positive_ids, e.negative_ids) for e in examples] == [
        ("a", "query a", ["d2"], ["d0", "d1", "d3"]), ("b", "query b", ["d9"], ["d0", "d1", "d2"])]
    assert write_mined(path, queries, positives, mined, index.doc_ids, min_negatives=0) == 3
    with pytest.raises(ValueError, match="queries"):
        write_mined(path, {}, positives, mined, index.doc_ids)
    with pytest.raises(ValueError, match="negatives"):
        write_mined(path, queries, positives, {"a": [10]}, index.doc_ids)
