"""Evaluation with trec_eval semantics, TREC run files, significance tests, and a fast in-training path.

Official numbers (``evaluate``) always come from pytrec_eval, i.e. from trec_eval's own C code; this
module only decides what to hand it. The rules it follows, and why:

* Order. trec_eval ignores the rank column and re-sorts each query by score descending, then by
  document id descending as a string (``comp_sim_docno`` in ``form_res_rels.c``). It stores scores in
  a C ``float``, so two scores that are equal after rounding to float32 tie and are broken by docid.
  Anything here that ranks (``MRR@k`` truncation, the rank column of run files) uses that same key,
  ``(float32(score), docid)`` descending, so our cut and trec_eval's sort can never disagree.
* Averaging is ``trec_eval -c``: every query in the qrels counts; a query missing from the run is
  evaluated on an empty ranking (exactly what trec_eval does), which scores 0; run queries absent from
  the qrels are ignored.
* A query whose judgments are all 0 (or that has no judgments at all) has no relevant document; like
  trec_eval -c it stays in the average with value 0 on every measure. Drop it from the qrels first if
  you want it excluded.

The vectorised path used during training, from the exact corpus ranks alone, is
``drfast.search.rank_metrics.metrics_from_ranks``.
"""
from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from drfast.common.atomic import write_text_atomic
from drfast.common.doc_ids import id_problem
from drfast.common.errors import UsageError, UsageTypeError
from drfast.common.text_lines import DataFormatError, iter_lines
from drfast.data.loaders import MAX_GRADE

__all__ = [
    "evaluate",
    "paired_ttest",
    "read_trec_run",
    "trec_order",
    "write_trec_run",
]

DEFAULT_MEASURES = ("nDCG@10", "MRR@10", "MRR@100", "R@100")
SUPPORTED_FORMS = (
    '"nDCG@k" (ndcg_cut_k), "MRR@k" (recip_rank on the top k), "R@k" (recall_k), "P@k" (P_k), "MAP" (map), '
    'or a trec_eval measure naming one value, e.g. "map", "ndcg_cut_20", "recip_rank", "P_10", "success_1"'
)
_ALIAS = re.compile(r"^(nDCG|MRR|R|P)@([0-9]+)$")
# trec_eval summarises these by a sum, a geometric mean or not at all, so "the mean" would be wrong.
_NOT_A_MEAN = re.compile(r"^(num_|gm_|runid$|relstring$)")


# ----------------------------------------------------------------------------------------------- order


def trec_order(docs: Mapping[str, float]) -> list[str]:
    """Document ids of one query in trec_eval's order: float32(score) descending, then docid descending."""
    ids = list(docs)
    if not ids:
        return []
    scores = np.fromiter((float(s) for s in docs.values()), np.float64, len(ids))
    if np.isnan(scores).any():
        raise UsageError("scores", f"NaN score for document {ids[int(np.argmax(np.isnan(scores)))]!r}")
    with np.errstate(over="ignore"):  # |s| > 3.4e38 becomes +-inf, as in trec_eval's float
        key32 = scores.astype(np.float32)
    # lexsort is ascending on (key32, then docid); docids are unique, so reversing gives both descending.
    # numpy compares str by code point, which is strcmp's order on the UTF-8 bytes trec_eval sees.
    order = np.lexsort((np.array(ids, dtype=str), key32))[::-1]
    return [ids[i] for i in order]


# ------------------------------------------------------------------------------------------ evaluate


@lru_cache(maxsize=None)
def _pytrec_key(name: str) -> str:
    """The single per-query key pytrec_eval reports for a trec_eval measure name, or ValueError."""
    import pytrec_eval

    if _NOT_A_MEAN.match(name):
        raise ValueError(f"measure {name!r}: trec_eval does not summarise it as a mean; supported: {SUPPORTED_FORMS}")
    try:  # a one-document dry run tells us whether the name resolves and how many values it yields
        out = pytrec_eval.RelevanceEvaluator({"q": {"d": 1}}, {name}).evaluate({"q": {"d": 1.0}})["q"]
    except (ValueError, TypeError) as e:
        raise ValueError(f"unknown measure {name!r} ({e}); supported: {SUPPORTED_FORMS}") from None
    if len(out) != 1:
        raise ValueError(f"measure {name!r} yields several values {sorted(out)}; name one, e.g. {next(iter(out))!r}")
    return next(iter(out))


def _resolve(name: str) -> tuple[int | None, str, str]:
    """-> (truncate the run to this many documents or None, pytrec_eval measure, its result key)."""
    if not isinstance(name, str):
        raise ValueError(f"measure {name!r}: expected a string; supported: {SUPPORTED_FORMS}")
    m = _ALIAS.match(name)
    if m:
        kind, k = m.group(1), int(m.group(2))
        if k < 1:
            raise ValueError(f"measure {name!r}: the cutoff must be >= 1")
        if kind == "MRR":  # trec_eval has no recip_rank cutoff: cut the run itself
            return k, "recip_rank", "recip_rank"
        base = {"nDCG": "ndcg_cut", "R": "recall", "P": "P"}[kind]
        return None, f"{base}.{k}", f"{base}_{k}"
    pt = "map" if name == "MAP" else name
    return None, pt, _pytrec_key(pt)


def evaluate(run, qrels, measures=DEFAULT_MEASURES, per_query=False):
    """trec_eval -c measures of ``run`` against ``qrels``, computed by pytrec_eval.

    See the module docstring for the order and averaging rules.

    Parameters
    ----------
    run : dict
        ``{qid: {docid: score}}``; ids are str.
    qrels : dict
        ``{qid: {docid: graded relevance}}``; 0 is judged non-relevant, relevant means >= 1
        (trec_eval's default ``-l 1``). Grades are whole numbers (ints, or floats like 2.0) in
        [-MAX_GRADE, MAX_GRADE], as ``load_qrels`` requires.
    measures : sequence of str
        ``"nDCG@k"``, ``"MRR@k"``, ``"R@k"``, ``"P@k"``, ``"MAP"`` or a trec_eval measure naming
        one value (``"map"``, ``"ndcg_cut_20"``, ...). Default: nDCG@10, MRR@10, MRR@100, R@100.
    per_query : bool
        Also return each query's values.

    Returns
    -------
    dict or tuple
        ``{measure: mean over every qrels query}``; with ``per_query=True``,
        ``(means, {measure: {qid: value}})``.

    Raises
    ------
    UsageError
        An empty or unknown measure, empty qrels, a NaN score in the run, or a grade that is not a
        whole number (refused, naming ``qrels``, rather than truncated).

    Examples
    --------
    >>> import drfast
    >>> run = {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {"d3": 1.0}}
    >>> qrels = {"q1": {"d2": 1}, "q2": {"d4": 1}}
    >>> drfast.evaluate(run, qrels, ["MRR@10"])  # q1: 1/2, q2: not found
    {'MRR@10': 0.25}
    """
    import pytrec_eval

    names = list(dict.fromkeys(measures))  # keep order, drop duplicates
    if not names:
        raise UsageError("measures", "empty")
    resolved = {name: _resolve(name) for name in names}
    if not qrels:
        raise UsageError("qrels", "no queries (trec_eval has nothing to average over)")

    # pytrec_eval wants exact int / float objects; numpy scalars are rejected by its C layer.
    judged = {q: {d: _grade(q, d, r) for d, r in docs.items()} for q, docs in qrels.items() if len(docs)}
    # -c: a qrels query missing from the run gets an empty ranking; run-only queries never reach trec_eval.
    ranked = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged}
    bad = next((q for q, docs in ranked.items() if any(s != s for s in docs.values())), None)
    if bad is not None:  # NaN has no place in trec_eval's sort
        raise UsageError("run", f"NaN score in query {bad!r}")

    groups: dict[int | None, set[str]] = {}
    for cut, meas, _ in resolved.values():
        groups.setdefault(cut, set()).add(meas)
    cuts = [c for c in groups if c is not None]
    if cuts:  # sort each query once, for the deepest cut
        top = {q: trec_order(docs)[: max(cuts)] for q, docs in ranked.items()}
    results = {}
    for cut, meas in groups.items():
        if cut is None:
            group_run = ranked
        else:
            group_run = {q: {d: ranked[q][d] for d in top[q][:cut]} for q in ranked}
        evaluator = pytrec_eval.RelevanceEvaluator(judged, meas)
        results[cut] = evaluator.evaluate(group_run) if group_run else {}

    per_q = {}
    for name, (cut, _, key) in resolved.items():
        res = results[cut]
        # Queries with an empty judgment dict never reach pytrec_eval: no relevant doc, so 0.
        per_q[name] = {q: float(res[q][key]) if q in res else 0.0 for q in qrels}
    means = {name: float(np.mean(list(v.values()))) for name, v in per_q.items()}
    return (means, per_q) if per_query else means


def _grade(qid: str, docid: str, grade) -> int:
    """`grade` as an int, by the rule of the qrels loader (`drfast.data.load_qrels`): a whole number in
    [-MAX_GRADE, MAX_GRADE]. A fractional grade is refused rather than truncated (int(0.9) would make
    a relevant document non-relevant without a word)."""
    where = f"query {qid!r}, document {docid!r}"
    if not isinstance(grade, numbers.Real):
        raise UsageTypeError("qrels", f"{where}: the grade is a {type(grade).__name__} ({grade!r}); "
                             "expected an integer")
    if not math.isfinite(grade) or int(grade) != grade:
        raise UsageError("qrels", f"{where}: grade {grade!r} is not a whole number; trec_eval's grades are integers "
                         "(round them first: load_qrels(..., round_grades=True) rounds half to even)")
    if abs(int(grade)) > MAX_GRADE:
        raise UsageError("qrels", f"{where}: grade {grade!r} is outside [-{MAX_GRADE}, {MAX_GRADE}]")
    return int(grade)


# ----------------------------------------------------------------------------------------- run files


def _check_token(what: str, s: str) -> None:
    if not isinstance(s, str) or not s or any(c.isspace() for c in s):
        raise ValueError(f"{what}: {s!r} must be a non-empty string without whitespace (TREC files split on it)")


def write_trec_run(path, run, tag="drfast") -> None:
    """Write ``qid Q0 docid rank score tag`` lines, atomically.

    Ranks are 1..n in trec_eval's order, so the rank column agrees with what trec_eval will compute.
    Scores are written with ``repr`` (shortest round-tripping form): ``%.6f`` would merge nearby
    scores into ties and let docids decide the order. Queries with no documents produce no lines.
    """
    _check_token("tag", tag)
    lines = []
    for qid, docs in run.items():
        _check_token("qid", qid)
        for rank, docid in enumerate(trec_order(docs), 1):
            _check_token(f"docid of query {qid!r}", docid)
            lines.append(f"{qid} Q0 {docid} {rank} {float(docs[docid])!r} {tag}\n")

    # a crash leaves either the old file or the complete new one, never half a run
    write_text_atomic(path, "".join(lines))


def read_trec_run(path) -> dict[str, dict[str, float]]:
    """Read a TREC run file into {qid: {docid: score}}, documents in file order (the rank column is ignored,
    as trec_eval ignores it)."""
    run: dict[str, dict[str, float]] = {}
    for lineno, line in iter_lines(path):  # UTF-8, a byte-order mark, CRLF: the package's one line reader
        fields = line.split()
        if len(fields) != 6:
            raise DataFormatError(path, lineno, f"expected 'qid Q0 docid rank score tag', got {line.rstrip()!r}")
        qid, _, docid, _, score, _ = fields
        for what, ident in (("qid", qid), ("docid", docid)):
            problem = id_problem(ident)
            if problem:
                raise DataFormatError(path, lineno, f"{what} {ident!r} {problem}")
        try:
            value = float(score)
        except ValueError:
            raise DataFormatError(path, lineno, f"expected a number as the score, got {score!r}") from None
        docs = run.setdefault(qid, {})
        if docid in docs:
            raise DataFormatError(path, lineno, f"document {docid!r} appears twice for query {qid!r}")
        docs[docid] = value
    return run


# --------------------------------------------------------------------------------------- significance


def paired_ttest(per_query_a, per_query_b) -> tuple[float, float]:
    """Two-sided paired t-test (scipy.stats.ttest_rel) -> (t, p).

    Inputs are {qid: value} dicts (e.g. ``evaluate(..., per_query=True)[1]["MRR@10"]``), paired over the
    union of queries with a missing query counting 0, or two equally long arrays already aligned.
    """
    from scipy import stats

    if isinstance(per_query_a, Mapping) and isinstance(per_query_b, Mapping):
        qids = list(dict.fromkeys([*per_query_a, *per_query_b]))
        a = np.array([float(per_query_a.get(q, 0.0)) for q in qids])
        b = np.array([float(per_query_b.get(q, 0.0)) for q in qids])
    else:
        a, b = np.asarray(per_query_a, np.float64), np.asarray(per_query_b, np.float64)
        if a.ndim != 1 or a.shape != b.shape:
            raise UsageError("per_query_a, per_query_b", f"expected 1-D arrays of one length, got {a.shape}, {b.shape}")
    if len(a) < 2:
        raise ValueError(f"paired t-test needs at least 2 queries, got {len(a)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("per-query values must be finite")
    d = a - b
    # Zero variance of the differences: scipy would return nan (and warn); the limits are exact.
    if np.all(d == d[0]):
        return (0.0, 1.0) if d[0] == 0 else (math.copysign(math.inf, d[0]), 0.0)
    res = stats.ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue)


# ---------------------------------------------------------------------------------- fast in-training
