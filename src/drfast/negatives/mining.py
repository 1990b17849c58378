"""Hard-negative mining: from a dense index (the fused search) or from BM25, to Tevatron jsonl.

For every query with at least one positive, the candidates are the retrieved documents that are
not positives, ordered by score (descending, ties by lower row, as the fused search orders them).
Rank r below means the r-th such non-positive candidate, so labelled positives never use up the
rank window. A candidate becomes a negative when it passes, in this order:

1. the rank window: ranks skip+1 .. depth (the top `skip` are skipped: the documents that score
   above everything else are the likeliest unlabelled positives, i.e. false negatives);
2. the margins, against the query's lowest-scoring positive s_pos (the tightest constraint):
   margin_abs keeps score <= s_pos - margin_abs; margin_rel keeps score <= s_pos - margin_rel * |s_pos|
   (|s_pos| keeps "below the positive" meaning below for negative scores too); both when both are set;
3. text deduplication (when texts are available): a candidate whose text, stripped and lowercased,
   equals a positive's text or that of a higher-ranked candidate already kept is dropped (corpora
   contain copies of documents, and a copy of a positive is a positive);
4. sampling: "top" keeps the first n, "random" n drawn without replacement (seeded per query, so the
   result does not depend on batching or query order), returned in rank order.

Queries without positives cannot have a margin or form a training example: they are skipped and
listed in `MinedNegatives.skipped` (and counted by `score_statistics`), not an error.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from drfast.common.checks import check_bool, check_choice, check_float, check_int
from drfast.common.dataclass_args import option
from drfast.common.doc_ids import DocIdMap
from drfast.common.errors import UsageError, UsageTypeError
from drfast.data import TrainingExample, write_training_examples
from drfast.data.parsing import PathLike
from drfast.index.protocol import Index

__all__ = ["MiningConfig", "MinedNegatives", "mine_from_index", "mine_from_bm25", "score_statistics",
           "format_statistics", "write_mined"]

SAMPLING = ("top", "random")


@dataclass(frozen=True)
class MiningConfig:
    """How negatives are chosen (see the module docstring for the order of the steps). Each field is
    also a flag of `drfast mine` (drfast.common.dataclass_args)."""

    depth: int = option(200, "take candidates up to this rank among the non-positives (R)")
    skip: int = option(0, "skip the top r candidates (likely false negatives); ranks r+1 .. depth remain")
    n: int = option(30, "negatives kept per query (30: a pool a trainer such as Tevatron samples a few from "
                        "per step)")
    sampling: str = option("top", "keep the n hardest (top) or n drawn uniformly from the window (random, seeded)",
                           choices=SAMPLING)
    margin_abs: Optional[float] = option(None, "keep scores <= s_pos - margin (s_pos: the query's lowest "
                                               "positive score)", metavar="MARGIN")
    margin_rel: Optional[float] = option(None, "keep scores <= s_pos - margin * |s_pos|", metavar="MARGIN")
    dedupe_texts: bool = option(True, "drop candidates whose normalised text equals a positive's or a kept one's")
    seed: int = option(0, "seed of every random draw of the run")

    def __post_init__(self) -> None:
        for name, low in (("depth", 1), ("skip", 0), ("n", 1), ("seed", 0)):
            check_int(getattr(self, name), name, low)
        if self.skip >= self.depth:
            raise UsageError("skip", f"must be smaller than depth ({self.depth}), got {self.skip}")
        check_choice(self.sampling, "sampling", SAMPLING)
        for name in ("margin_abs", "margin_rel"):
            if getattr(self, name) is not None:
                check_float(getattr(self, name), name, 0.0)
        check_bool(self.dedupe_texts, "dedupe_texts")


class MinedNegatives(dict):
    """{query id: [negative rows]} in rank order, plus what `score_statistics` needs.

    positive_scores  {qid: the query's lowest positive score (the one the margins use)}
    negative_scores  {qid: [score of each negative], aligned with the rows}
    skipped          query ids left out because they have no positive
    """

    def __init__(self, config: MiningConfig):
        super().__init__()
        self.config = config
        self.positive_scores: dict[str, float] = {}
        self.negative_scores: dict[str, list[float]] = {}
        self.skipped: list[str] = []


# ---------------------------------------------------------------------------------------------
# Selection shared by both sources


def _normalise(text: str) -> str:
    return text.strip().lower()


def _texts_of(texts: Any, rows: np.ndarray) -> dict[int, str]:
    """Normalised text of each row; `texts` is a Corpus (read once, in file order) or a sequence."""
    rows = np.unique(rows)
    got = texts.texts(rows) if hasattr(texts, "texts") else [texts[int(r)] for r in rows]
    return {int(r): _normalise(t) for r, t in zip(rows, got)}


def _keep_mask(ids: np.ndarray, scores: np.ndarray, pos_lists: Sequence[Sequence[int]],
               pos_min: np.ndarray, config: MiningConfig) -> np.ndarray:
    """[B, k] mask of the candidates inside the rank window and the margins (steps 1 and 2)."""
    width = max(len(p) for p in pos_lists)
    pos = np.full((len(pos_lists), width), -2, dtype=np.int64)  # -2 never matches a row or the -1 padding
    for b, p in enumerate(pos_lists):
        pos[b, :len(p)] = p
    is_pos = (ids[:, :, None] == pos[:, None, :]).any(axis=2)
    cand = (ids >= 0) & ~is_pos
    rank = np.cumsum(cand, axis=1)  # 1-based rank among the non-positive candidates
    keep = cand & (rank > config.skip) & (rank <= config.depth)
    s_pos = pos_min.astype(np.float64)
    limit = np.full_like(s_pos, np.inf)
    if config.margin_abs is not None:
        limit = np.minimum(limit, s_pos - config.margin_abs)
    if config.margin_rel is not None:
        limit = np.minimum(limit, s_pos - config.margin_rel * np.abs(s_pos))
    return keep & (scores.astype(np.float64) <= limit[:, None])


def _select_batch(out: MinedNegatives, qids: Sequence[str], ids: np.ndarray, scores: np.ndarray,
                  pos_lists: Sequence[Sequence[int]], pos_min: np.ndarray, texts: Any) -> None:
    """Steps 1-4 for one batch of queries (all with positives); results go into `out`."""
    config = out.config
    keep = _keep_mask(ids, scores, pos_lists, pos_min, config)
    normalised = None
    if texts is not None and config.dedupe_texts:
        needed = np.concatenate([ids[keep], np.concatenate([np.asarray(p, dtype=np.int64) for p in pos_lists])])
        normalised = _texts_of(texts, needed)
    for b, qid in enumerate(qids):
        rows, row_scores = ids[b, keep[b]], scores[b, keep[b]]
        if normalised is not None:
            seen = {normalised[int(p)] for p in pos_lists[b]}
            unique = []
            for j, row in enumerate(rows.tolist()):
                if normalised[row] not in seen:
                    seen.add(normalised[row])
                    unique.append(j)
            rows, row_scores = rows[unique], row_scores[unique]
        if config.sampling == "random" and len(rows) > config.n:
            rng = np.random.default_rng([config.seed, zlib.crc32(qid.encode("utf-8"))])
            pick = np.sort(rng.choice(len(rows), size=config.n, replace=False))  # back in rank order
        else:
            pick = slice(0, config.n)
        out[qid] = [int(r) for r in rows[pick]]
        out.negative_scores[qid] = [float(s) for s in row_scores[pick]]
        out.positive_scores[qid] = float(pos_min[b])


def _check_config(config: Any) -> MiningConfig:
    if config is None:
        return MiningConfig()
    if not isinstance(config, MiningConfig):
        raise UsageTypeError("config", f"expected a MiningConfig, got {type(config).__name__}")
    return config


def _check_qids(qids: Sequence[str]) -> list[str]:
    qids = [str(q) for q in qids]
    if len(set(qids)) != len(qids):
        raise UsageError("qids", "query ids must be unique")
    return qids


# ---------------------------------------------------------------------------------------------
# Sources


def mine_from_index(index: Index, query_embeddings: Any, qids: Sequence[str],
                    positives_rows: Sequence[Sequence[int]], config: Optional[MiningConfig] = None,
                    texts: Any = None, batch_size: int = 256) -> MinedNegatives:
    """Negatives from a FlatIndex / PQIndex, one fused search per batch of queries.

    Scores are the index's own (PQ: asymmetric distances); positives are excluded by row, and the
    config's rank window, margins, sampling and text deduplication choose among the rest.

    Parameters
    ----------
    index : Index
        The index to mine from.
    query_embeddings : array or tensor, float32 [len(qids), d]
        numpy or torch.
    qids : sequence of str
        The queries, in the order of `query_embeddings`.
    positives_rows : sequence of sequences of int
        Per query, the index rows of its positives.
    config : MiningConfig, optional
        How negatives are chosen (default: ``MiningConfig()``).
    texts : Corpus or sequence of str, optional
        None (no text deduplication), a Corpus in index row order, or texts indexed by row.
    batch_size : int
        Queries per search.

    Returns
    -------
    MinedNegatives
        ``{qid: [negative rows]}`` in rank order, with ``positive_scores``, ``negative_scores`` and
        ``skipped`` (queries without a positive); `drfast mine` writes it as Tevatron-style jsonl.
    """
    config = _check_config(config)
    qids = _check_qids(qids)
    if hasattr(query_embeddings, "detach"):  # a torch tensor
        query_embeddings = query_embeddings.detach().cpu().numpy()
    emb = np.ascontiguousarray(query_embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(qids):
        raise UsageError("query_embeddings", f"expected shape [{len(qids)}, d] (one row per qid), got {list(emb.shape)}")
    if len(positives_rows) != len(qids):
        raise UsageError("positives_rows", f"expected one list per qid ({len(qids)}), got {len(positives_rows)}")
    check_int(batch_size, "batch_size", 1)
    pos_lists = [[int(r) for r in p] for p in positives_rows]
    for p in pos_lists:
        if any(r < 0 or r >= index.ntotal for r in p):
            raise UsageError("positives_rows", f"row ids must be in [0, {index.ntotal}), got {p}")

    out = MinedNegatives(config)
    out.skipped = [q for q, p in zip(qids, pos_lists) if not p]
    todo = np.array([i for i, p in enumerate(pos_lists) if p], dtype=np.int64)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        batch_pos = [pos_lists[i] for i in batch]
        # R + the positives: even when every positive ranks inside the top R, R non-positives come back
        k = min(config.depth + max(len(p) for p in batch_pos), index.ntotal)
        res = index.search(emb[batch], k=k, positives=batch_pos)
        pos_min = np.minimum.reduceat(np.asarray(res.pos_scores), np.asarray(res.pos_offsets)[:-1])
        _select_batch(out, [qids[i] for i in batch], np.asarray(res.ids), np.asarray(res.scores),
                      batch_pos, pos_min, texts)
    return out


def _bm25_top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows by score, ties by lower row (as the fused search), in O(N); -1 for score <= 0."""
    threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
    above = np.flatnonzero(scores > threshold)
    ties = np.flatnonzero(scores == threshold)[:k - len(above)]  # flatnonzero is ascending: lowest rows
    rows = np.concatenate([above, ties])
    rows = rows[np.lexsort((rows, -scores[rows]))]
    top = scores[rows]
    # a document sharing no term with the query (score 0) was not retrieved by BM25
    return np.where(top > 0, rows, -1), top


def mine_from_bm25(corpus_texts: Sequence[str], doc_ids: Sequence[str], queries: Mapping[str, str],
                   positives: Mapping[str, Sequence[str]], config: Optional[MiningConfig] = None,
                   batch_size: int = 256) -> MinedNegatives:
    """Negatives retrieved by BM25.

    bm25s's Lucene variant (k1=1.5, b=0.75; its default English stopwords, no stemming). Scores and
    margins are BM25 scores; documents with score 0 are never candidates. Texts are always available
    here, so deduplication follows the config.

    Parameters
    ----------
    corpus_texts : sequence of str
        The documents' texts, one per row.
    doc_ids : sequence of str
        The documents' ids, one per row.
    queries : mapping
        ``{qid: text}``.
    positives : mapping
        ``{qid: [doc_id, ...]}``; the result covers each query of `queries` with positives.
    config : MiningConfig, optional
        How negatives are chosen (default: ``MiningConfig()``).
    batch_size : int
        Queries per retrieval batch.

    Returns
    -------
    MinedNegatives
        ``{qid: [negative rows of corpus_texts]}`` in rank order, with ``positive_scores``,
        ``negative_scores`` and ``skipped``.
    """
    try:
        import bm25s
    except ImportError:
        raise ImportError("BM25 negatives need the bm25s package: pip install 'drfast[bm25]' (or pip install bm25s)") from None
    config = _check_config(config)
    corpus_texts = list(corpus_texts)
    doc_ids = DocIdMap(doc_ids, name="doc_ids")  # unique ids, looked up without a dict of every id
    if len(doc_ids) != len(corpus_texts):
        raise UsageError("doc_ids", f"expected one id per text ({len(corpus_texts)}), got {len(doc_ids)}")
    if not corpus_texts:
        raise UsageError("corpus_texts", "the corpus is empty")
    check_int(batch_size, "batch_size", 1)

    pos_lists: dict[str, list[int]] = {
        qid: doc_ids.rows([str(d) for d in positives.get(qid, ())], name="positives", where="doc_ids",
                          owner=f"query {qid!r}").tolist() for qid in queries}

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus_texts, stopwords="en", return_ids=False, show_progress=False),
                    show_progress=False)
    out = MinedNegatives(config)
    out.skipped = [q for q, p in pos_lists.items() if not p]
    todo = [q for q, p in pos_lists.items() if p]
    n_docs = len(corpus_texts)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        tokens = bm25s.tokenize([queries[q] for q in batch], stopwords="en", return_ids=False, show_progress=False)
        k = min(config.depth + max(len(pos_lists[q]) for q in batch), n_docs)
        ids = np.full((len(batch), k), -1, dtype=np.int64)
        scores = np.full((len(batch), k), -np.inf, dtype=np.float32)
        pos_min = np.empty(len(batch), dtype=np.float32)
        for b, (qid, words) in enumerate(zip(batch, tokens)):
            token_ids = retriever.get_tokens_ids(words)  # words unknown to the corpus score nothing
            full = (retriever.get_scores_from_ids(token_ids) if token_ids
                    else np.zeros(n_docs, dtype=np.float32)).astype(np.float32)
            ids[b], scores[b] = _bm25_top(full, k)
            pos_min[b] = full[pos_lists[qid]].min()
        _select_batch(out, batch, ids, scores, [pos_lists[q] for q in batch], pos_min, corpus_texts)
    return out


# ---------------------------------------------------------------------------------------------
# Statistics and output


def _summary(values: Sequence[float]) -> dict[str, float]:
    if len(values) == 0:
        return {"mean": math.nan, "median": math.nan, "min": math.nan, "max": math.nan}
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def score_statistics(mined: MinedNegatives) -> dict:
    """Per-query score summaries of a mining result (mean / median / min / max over queries).

    "positive": the query's lowest positive score; "negative": its hardest (highest-scoring) kept
    negative; "margin": positive - negative, whose min is >= margin_abs when that is set;
    "negatives_per_query": how many were kept. Queries without kept negatives count in
    "positive" and "negatives_per_query" only; queries without positives only in "skipped_no_positives".
    """
    if not isinstance(mined, MinedNegatives):
        raise UsageError("mined", f"expected the MinedNegatives of a mine_* function, got {type(mined).__name__}")
    pos = [mined.positive_scores[q] for q in mined]
    hardest = {q: max(s) for q, s in mined.negative_scores.items() if s}
    return {
        "queries": len(mined) + len(mined.skipped),
        "mined": len(mined),
        "skipped_no_positives": len(mined.skipped),
        "without_negatives": sum(1 for q in mined if not mined[q]),
        "fewer_than_n": sum(1 for q in mined if len(mined[q]) < mined.config.n),
        "n": mined.config.n,
        "positive": _summary(pos),
        "negative": _summary(list(hardest.values())),
        "margin": _summary([mined.positive_scores[q] - s for q, s in hardest.items()]),
        "negatives_per_query": _summary([len(mined[q]) for q in mined]),
    }


def format_statistics(stats: dict) -> str:
    """A plain-text table of `score_statistics`."""
    lines = [f"queries {stats['queries']}: mined {stats['mined']}, skipped (no positives) "
             f"{stats['skipped_no_positives']}, without negatives {stats['without_negatives']}, "
             f"fewer than n={stats['n']} {stats['fewer_than_n']}",
             f"{'':<28}{'mean':>10}{'median':>10}{'min':>10}{'max':>10}"]
    rows = (("positive score (lowest)", "positive"), ("negative score (hardest)", "negative"),
            ("margin (positive - negative)", "margin"), ("negatives per query", "negatives_per_query"))
    for label, key in rows:
        cells = "".join(f"{'-' if math.isnan(v) else format(v, '.4f'):>10}" for v in stats[key].values())
        lines.append(f"{label:<28}{cells}")
    return "\n".join(lines)


def write_mined(path: PathLike, queries: Mapping[str, str], positives: Mapping[str, Sequence[str]],
                negatives: Mapping[str, Sequence[int]], doc_ids: Sequence[str], min_negatives: int = 1) -> int:
    """Write Tevatron jsonl ({"query_id", "query", "positive_passages": [{"docid"}], "negative_passages":
    [{"docid"}]}) for the queries of `negatives` (rows, mapped through `doc_ids`), in its order.

    positives: {qid: [doc id]} (e.g. Dataset.positives). Queries with fewer than `min_negatives`
    negatives are left out (Tevatron cannot sample from an empty list). Returns the lines written.
    """
    if isinstance(min_negatives, bool) or not isinstance(min_negatives, int) or min_negatives < 0:
        raise UsageError("min_negatives", f"expected an integer >= 0, got {min_negatives!r}")
    examples = []
    for qid, rows in negatives.items():
        if len(rows) < min_negatives:
            continue
        if qid not in queries:
            raise UsageError("queries", f"no text for query {qid!r}")
        if not positives.get(qid):
            raise UsageError("positives", f"query {qid!r} has no positive")
        bad = [r for r in rows if not 0 <= int(r) < len(doc_ids)]
        if bad:
            raise UsageError("negatives", f"row {bad[0]} of query {qid!r} is out of range [0, {len(doc_ids)})")
        examples.append(TrainingExample(str(qid), queries[qid], [str(d) for d in positives[qid]],
                                        [str(doc_ids[int(r)]) for r in rows]))
    return write_training_examples(path, examples)
