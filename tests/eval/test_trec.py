"""drfast.evaluation: trec_eval semantics (via pytrec_eval), run files, t-test, and the fast rank path."""
from __future__ import annotations

import math
import os
import re
import warnings

import numpy as np
import pytest
import pytrec_eval
from scipy import stats

from drfast.eval.trec import evaluate, paired_ttest, read_trec_run, trec_order, write_trec_run
from drfast.search.rank_metrics import metrics_from_ranks

MEASURES = ("nDCG@10", "MRR@10", "MRR@100", "R@100")


def log2(x):
    return math.log2(x)


# --------------------------------------------------------------------------- a plain-Python reference


def reference_metrics(docs, judged, k_mrr=(10, 100), k_ndcg=10, k_r=100):
    """Hand-written trec_eval definitions on trec_eval's order (float32 score desc, docid desc)."""
    ranked = sorted(docs, key=lambda d: (np.float32(docs[d]), d), reverse=True)
    rel = [judged.get(d, 0) for d in ranked]
    out = {}
    for k in k_mrr:
        first = next((i for i, r in enumerate(rel[:k]) if r >= 1), None)
        out[f"MRR@{k}"] = 0.0 if first is None else 1.0 / (first + 1)
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k_ndcg]
    idcg = sum(g / log2(i + 2) for i, g in enumerate(ideal))
    dcg = sum(max(r, 0) / log2(i + 2) for i, r in enumerate(rel[:k_ndcg]))
    out[f"nDCG@{k_ndcg}"] = dcg / idcg if idcg else 0.0
    n_rel = sum(1 for g in judged.values() if g >= 1)
    out[f"R@{k_r}"] = sum(1 for r in rel[:k_r] if r >= 1) / n_rel if n_rel else 0.0
    return out


# ------------------------------------------------------------------------------ hand-checked cases


def test_hand_checked_single_query():
    run = {"q": {"d1": 3.0, "d2": 2.0, "d3": 1.0, "d4": 0.5}}
    qrels = {"q": {"d2": 2, "d3": 1, "d4": 0}}
    m = evaluate(run, qrels, ("nDCG@10", "MRR@10", "MRR@1", "R@100", "R@2", "P@2", "MAP"))
    ndcg = (2 / log2(3) + 1 / log2(4)) / (2 / log2(2) + 1 / log2(3))
    assert m["nDCG@10"] == pytest.approx(ndcg, abs=1e-12)
    assert m["MRR@10"] == pytest.approx(0.5)
    assert m["MRR@1"] == 0.0  # the relevant doc at rank 2 is cut away
    assert m["R@100"] == 1.0
    assert m["R@2"] == 0.5
    assert m["P@2"] == 0.5
    assert m["MAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_pass_through_names_equal_pytrec_eval():
    run = {"q1": {"a": 0.9, "b": 0.3, "c": 0.2}, "q2": {"a": 0.1, "b": 0.7}}
    qrels = {"q1": {"b": 1, "c": 2}, "q2": {"a": 1}}
    names = ("map", "ndcg_cut_20", "ndcg_cut.3", "recip_rank", "P_10", "success_1", "bpref")
    ours = evaluate(run, qrels, names, per_query=True)[1]
    for name in names:
        direct = pytrec_eval.RelevanceEvaluator(qrels, {name}).evaluate(run)
        key = next(iter(direct["q1"]))
        assert ours[name] == {q: direct[q][key] for q in qrels}


def test_alias_and_trec_names_agree():
    run = {"q": {f"d{i}": float(i % 7) for i in range(50)}}
    qrels = {"q": {"d3": 1, "d10": 2, "d48": 1, "d20": 0}}
    m = evaluate(run, qrels, ("nDCG@10", "ndcg_cut_10", "R@100", "recall_100", "P@5", "P_5", "MAP", "map"))
    assert m["nDCG@10"] == m["ndcg_cut_10"]
    assert m["R@100"] == m["recall_100"]
    assert m["P@5"] == m["P_5"]
    assert m["MAP"] == m["map"]


@pytest.mark.parametrize("bad", ["MRR", "foo", "P", "nDCG@0", "num_q", "gm_map", "runid", "mrr@10"])
def test_unknown_or_unsupported_measures_raise(bad):
    with pytest.raises(ValueError, match="nDCG@k|several values|cutoff"):
        evaluate({"q": {"d": 1.0}}, {"q": {"d": 1}}, (bad,))


# ------------------------------------------------------------------------------------------- ties


def test_ties_broken_by_docid_descending():
    qrels_b, qrels_a = {"q": {"b": 1}}, {"q": {"a": 1}}
    for run in ({"q": {"a": 1.0, "b": 1.0}}, {"q": {"b": 1.0, "a": 1.0}}):  # insertion order is irrelevant
        assert evaluate(run, qrels_b, ("MRR@10", "nDCG@10")) == {"MRR@10": 1.0, "nDCG@10": 1.0}
        assert evaluate(run, qrels_a, ("MRR@10",))["MRR@10"] == 0.5
    # String order, not numeric: "9" > "10".
    assert evaluate({"q": {"10": 0.5, "9": 0.5}}, {"q": {"9": 1}}, ("MRR@10",))["MRR@10"] == 1.0


def test_mrr_cut_uses_trec_order_on_ties():
    # 20 equal scores: trec_eval order is d19, d18, ..., d00, so d05 sits at rank 15.
    run = {"q": {f"d{i:02d}": 1.0 for i in range(20)}}  # inserted d00 first: a naive cut would keep d05
    qrels = {"q": {"d05": 1}}
    m = evaluate(run, qrels, ("MRR@10", "MRR@100", "R@10"))
    assert m == {"MRR@10": 0.0, "MRR@100": 1 / 15, "R@10": 0.0}
    assert trec_order(run["q"]) == [f"d{i:02d}" for i in reversed(range(20))]


def test_scores_tie_at_float32_like_trec_eval():
    # trec_eval keeps scores in a C float: 1 + 2**-30 == 1 there, so docid decides.
    run = {"q": {"a": 1.0 + 2**-30, "b": 1.0}}
    assert evaluate(run, {"q": {"a": 1}}, ("MRR@10", "MRR@1"))["MRR@1"] == 0.0
    assert trec_order(run["q"]) == ["b", "a"]
    # ...but 1 + 2**-23 is a different float32, so the score decides.
    run = {"q": {"a": 1.0 + 2**-23, "b": 1.0}}
    assert evaluate(run, {"q": {"a": 1}}, ("MRR@1",))["MRR@1"] == 1.0


def test_tie_heavy_runs_match_reference(rng):
    qrels, run = {}, {}
    for q in range(30):
        ndocs = int(rng.integers(1, 300))
        # Scores from a handful of values: almost every document ties with many others.
        run[f"q{q}"] = {f"d{int(j)}": float(rng.integers(0, 4)) for j in rng.choice(1000, ndocs, replace=False)}
        judged = rng.choice(1000, int(rng.integers(1, 20)), replace=False)
        qrels[f"q{q}"] = {f"d{int(j)}": int(rng.integers(0, 4)) for j in judged}
    _, per_q = evaluate(run, qrels, MEASURES, per_query=True)
    for q in qrels:
        ref = reference_metrics(run[q], qrels[q])
        for name in MEASURES:
            assert per_q[name][q] == pytest.approx(ref[name], abs=1e-12), (q, name)


# ------------------------------------------------------------------------------- -c averaging


def test_qrels_queries_missing_from_run_count_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 2}, "q4": {"d": 1}}
    run = {"q1": {"a": 1.0}, "q2": {"x": 1.0, "b": 0.5}}
    means, per_q = evaluate(run, qrels, MEASURES, per_query=True)
    assert per_q["MRR@10"] == {"q1": 1.0, "q2": 0.5, "q3": 0.0, "q4": 0.0}
    assert means["MRR@10"] == pytest.approx(1.5 / 4)
    assert means["R@100"] == pytest.approx(2 / 4)


def test_run_queries_missing_from_qrels_ignored():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0}, "q2": {"b": 0.5, "z": 0.7}}
    base = evaluate(run, qrels, MEASURES, per_query=True)
    extra = dict(run, q9={"a": 1.0, "b": 2.0}, q10={"zz": 0.1})
    assert evaluate(extra, qrels, MEASURES, per_query=True) == base
    assert set(base[1]["MRR@10"]) == {"q1", "q2"}


def test_queries_without_relevant_docs_count_zero():
    # trec_eval -c keeps a query whose judgments are all 0 in the average, with value 0.
    qrels = {"q1": {"a": 1}, "q2": {"a": 0, "b": 0}, "q3": {}}
    run = {"q1": {"a": 1.0}, "q2": {"a": 1.0, "b": 0.5}, "q3": {"a": 1.0}}
    means, per_q = evaluate(run, qrels, MEASURES + ("MAP",), per_query=True)
    for name in MEASURES + ("MAP",):
        assert per_q[name] == {"q1": 1.0, "q2": 0.0, "q3": 0.0}
        assert means[name] == pytest.approx(1 / 3)


def test_numpy_scalars_and_empty_run_accepted():
    qrels = {"q": {"a": np.int64(1)}}
    assert evaluate({"q": {"a": np.float32(0.5), "b": np.float64(0.1)}}, qrels)["MRR@10"] == 1.0
    assert evaluate({}, qrels) == {m: 0.0 for m in MEASURES}
    with pytest.raises(ValueError, match="qrels"):
        evaluate({}, {})
    with pytest.raises(ValueError, match="NaN"):
        evaluate({"q": {"a": float("nan")}}, qrels)


@pytest.mark.parametrize("grade", [0.5, 1.5, 0.9999, -0.5, float("nan"), float("inf"), np.float32(2.5)])
def test_a_fractional_grade_is_refused_not_truncated(grade):
    """int(0.5) is 0: a relevant document would silently count as non-relevant (issue 21, item 9)."""
    with pytest.raises(ValueError, match=r"^qrels: query 'q', document 'a': grade .* not a whole number") as info:
        evaluate({"q": {"a": 1.0}}, {"q": {"a": grade}})
    assert info.value.param == "qrels"


def test_whole_grades_of_any_numeric_type_evaluate_like_ints():
    run = {"q": {"a": 2.0, "b": 1.0, "c": 0.5}}
    want = evaluate(run, {"q": {"a": 0, "b": 2, "c": 1}})
    for grades in ({"a": 0.0, "b": 2.0, "c": 1.0}, {"a": np.int8(0), "b": np.float64(2.0), "c": np.uint16(1)},
                   {"a": False, "b": 2, "c": True}):
        assert evaluate(run, {"q": grades}) == want


def test_grades_outside_the_loader_range_or_not_numbers_are_refused():
    from drfast.data.loaders import MAX_GRADE

    with pytest.raises(ValueError, match=rf"^qrels: .*grade {MAX_GRADE + 1} is outside"):
        evaluate({}, {"q": {"a": MAX_GRADE + 1}})
    assert evaluate({"q": {"a": 1.0}}, {"q": {"a": MAX_GRADE}})["MRR@10"] == 1.0
    with pytest.raises(TypeError, match=r"^qrels: query 'q', document 'a': the grade is a str"):
        evaluate({}, {"q": {"a": "1"}})


def test_read_run_bom_crlf_and_errors_name_the_line(tmp_path):
    (tmp_path / "r").write_bytes(b"\xef\xbb\xbfq1 Q0 a 1 0.5 t\r\n\r\nq1 Q0 b 2 0.25 t\r\n")
    assert read_trec_run(tmp_path / "r") == {"q1": {"a": 0.5, "b": 0.25}}  # no BOM in the first qid
    for body, line, what in ((b"q Q0 a 1 0.5 t\nq Q0 b 2 x t\n", 2, "expected a number as the score, got 'x'"),
                             (b"q Q0 a 1 0.5 t\nq Q0 b\x00 2 1 t\n", 2, "docid 'b\\x00' contains a NUL"),
                             (b"q Q0 a 1 0.5 t\nq Q0 \xff 2 1 t\n", 2, "expected UTF-8"),
                             (b"q Q0 a 1 0.5\n", 1, "expected 'qid Q0 docid rank score tag'")):
        (tmp_path / "bad").write_bytes(body)
        with pytest.raises(ValueError, match=rf"bad, line {line}: {re.escape(what)}"):
            read_trec_run(tmp_path / "bad")


# ------------------------------------------------------------------------------------------ run files


def test_write_read_round_trip_exact(tmp_path):
    run = {
        "q1": {"a": 0.1 + 0.2, "b": 0.3, "c": 1e-30, "d": 0.0, "e": -1.5e300},
        "q2": {"x": 0.123456789, "y": 0.123456788, "z": 0.1234567891},  # differ in the 9th/10th digit
        "q3": {f"t{i}": 1.0 for i in range(12)},  # all tied: the rank column follows docid descending
    }
    path = tmp_path / "run.trec"
    write_trec_run(path, run, tag="exp1")
    back = read_trec_run(path)
    assert back == run  # exact floats (0.1 + 0.2 != 0.3 survives)
    for q in run:
        assert list(back[q]) == trec_order(run[q])  # file order is trec_eval order
    lines = [ln.split() for ln in path.read_text().splitlines()]
    for q in run:
        ranks = [int(f[3]) for f in lines if f[0] == q]
        assert ranks == list(range(1, len(run[q]) + 1))
    assert all(f[1] == "Q0" and f[5] == "exp1" for f in lines)
    assert {f[4] for f in lines if f[0] == "q2"} == {"0.123456789", "0.123456788", "0.1234567891"}
    assert os.listdir(tmp_path) == ["run.trec"]  # no temp file left behind


def test_written_run_evaluates_like_the_dict(tmp_path, rng):
    run = {f"q{q}": {f"d{j}": float(rng.integers(0, 5)) / 7 for j in range(60)} for q in range(10)}
    qrels = {f"q{q}": {f"d{int(j)}": int(rng.integers(0, 3)) for j in rng.choice(60, 8)} for q in range(10)}
    write_trec_run(tmp_path / "r", run)
    assert evaluate(read_trec_run(tmp_path / "r"), qrels) == evaluate(run, qrels)


def test_write_overwrites_atomically_and_validates(tmp_path):
    path = tmp_path / "r"
    write_trec_run(path, {"q": {"a": 1.0}})
    write_trec_run(path, {"q": {"b": 2.0}})
    assert read_trec_run(path) == {"q": {"b": 2.0}}
    for bad in ({"q x": {"a": 1.0}}, {"q": {"a b": 1.0}}, {"q": {"a": float("nan")}}):
        with pytest.raises(ValueError):
            write_trec_run(path, bad)
    with pytest.raises(ValueError):
        write_trec_run(path, {"q": {"a": 1.0}}, tag="my tag")
    assert read_trec_run(path) == {"q": {"b": 2.0}}  # failed writes leave the old file intact
    assert os.listdir(tmp_path) == ["r"]


def test_read_rejects_malformed(tmp_path):
    (tmp_path / "bad").write_text("q Q0 a 1 0.5\n")
    with pytest.raises(ValueError, match="expected"):
        read_trec_run(tmp_path / "bad")
    (tmp_path / "dup").write_text("q Q0 a 1 0.5 t\nq Q0 a 2 0.4 t\n")
    with pytest.raises(ValueError, match="twice"):
        read_trec_run(tmp_path / "dup")


# ------------------------------------------------------------------------------------------ t-test


def test_paired_ttest_equals_scipy(rng):
    qids = [f"q{i}" for i in range(200)]
    a = {q: float(v) for q, v in zip(qids, rng.random(200))}
    b = {q: float(v) for q, v in zip(qids, rng.random(200))}
    del a["q3"], b["q7"], b["q8"]  # a query missing from one side counts 0 there
    b["extra"] = 0.5
    union = qids + ["extra"]
    xa = [a.get(q, 0.0) for q in union]
    xb = [b.get(q, 0.0) for q in union]
    t, p = paired_ttest(a, b)
    ref = stats.ttest_rel(xa, xb)
    assert t == pytest.approx(ref.statistic, rel=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-12)
    assert paired_ttest(np.array(xa), np.array(xb)) == pytest.approx((t, p), rel=1e-12)  # aligned arrays


def test_paired_ttest_degenerate_without_warnings():
    a = {"q1": 0.5, "q2": 0.25, "q3": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert paired_ttest(a, dict(a)) == (0.0, 1.0)
        assert paired_ttest({**a, "q4": 0.0}, a) == (0.0, 1.0)  # missing = 0 on the other side
        t, p = paired_ttest({q: v + 0.5 for q, v in a.items()}, a)  # every query +0.5 exactly
    assert (t, p) == (math.inf, 0.0)
    with pytest.raises(ValueError):
        paired_ttest({"q": 1.0}, {"q": 0.0})


# -------------------------------------------------------------------------------- fast rank path


def test_metrics_from_ranks_hand_checked():
    # q0: positives at ranks 2 (gain 2) and 5 (gain 1); q1: none; q2: one positive at rank 150.
    means, per_q = metrics_from_ranks(np.array([0, 2, 2, 3]), np.array([2, 5, 150]), np.array([2, 1, 1]))
    ndcg0 = (2 / log2(3) + 1 / log2(6)) / (2 / log2(2) + 1 / log2(3))
    np.testing.assert_allclose(per_q["MRR@10"], [0.5, 0, 0])
    np.testing.assert_allclose(per_q["MRR@100"], [0.5, 0, 0])
    np.testing.assert_allclose(per_q["nDCG@10"], [ndcg0, 0, 0])
    np.testing.assert_allclose(per_q["R@100"], [1, 0, 0])
    assert means["MRR@10"] == pytest.approx(0.5 / 3)  # the query without positives still counts
    _, per_q = metrics_from_ranks([0, 3], [1, 7, 40], [1, 3, 1], cutoffs={"R": (5, 50), "P": (10,), "MRR": (1,)})
    np.testing.assert_allclose(per_q["R@5"], [1 / 3])
    np.testing.assert_allclose(per_q["R@50"], [1])
    np.testing.assert_allclose(per_q["P@10"], [0.2])
    np.testing.assert_allclose(per_q["MRR@1"], [1])


@pytest.mark.parametrize(
    "args",
    [
        ([0, 2], [1], [1]),  # offsets end past nnz
        ([0, 1], [0], [1]),  # 0 is not a 1-based rank
        ([0, 1], [1], [0]),  # gain 0 is not a positive
        ([0, 1], [1.0], [1]),  # float ranks
        ([1, 1], [1], [1]),  # offsets must start at 0
    ],
)
def test_metrics_from_ranks_validates(args):
    with pytest.raises(ValueError):
        metrics_from_ranks(*(np.asarray(a) for a in args))


def test_metrics_from_ranks_agrees_with_evaluate(rng):
    B, N = 50, 1000
    run, qrels = {}, {}
    offsets, ranks, gains = [0], [], []
    for q in range(B):
        # Random scores without ties, even after trec_eval rounds them to float32.
        scores = rng.permutation(N) + rng.uniform(-0.25, 0.25, N)
        doc_ids = [f"D{int(j)}" for j in rng.permutation(N)]  # unrelated to score order
        run[f"q{q}"] = dict(zip(doc_ids, scores.tolist()))
        judged = rng.choice(N, int(rng.integers(1, 30)), replace=False)
        grades = rng.integers(0, 4, len(judged)) if q % 10 else np.zeros(len(judged), int)  # some all-0 queries
        qrels[f"q{q}"] = {doc_ids[j]: int(g) for j, g in zip(judged, grades)}
        for j, g in zip(judged, grades):
            if g > 0:
                ranks.append(1 + int(np.sum(scores > scores[j])))
                gains.append(int(g))
        offsets.append(len(ranks))
    means, per_q = metrics_from_ranks(np.array(offsets), np.array(ranks), np.array(gains))
    ref_means, ref_per_q = evaluate(run, qrels, MEASURES, per_query=True)
    for name in MEASURES:
        np.testing.assert_allclose(per_q[name], [ref_per_q[name][f"q{q}"] for q in range(B)], rtol=0, atol=1e-6)
        assert means[name] == pytest.approx(ref_means[name], abs=1e-6)
    assert max(per_q["R@100"]) > 0 and min(per_q["MRR@100"]) == 0  # the comparison is not vacuous
