"""Static vs dynamic hard negatives during training (the ADORE paper's Figure 4a), as a trainer hook.

Static negatives are fixed before training (the starting model's top documents, as STAR and the
Static baseline train on); dynamic negatives are the current model's top-K over the whole index,
what ADORE trains on. As the query encoder moves, the static ones go stale: the overlap of the two
sets, starting near 1.0 when the static negatives are the starting model's own top-K, says how much.

`NegativeOverlapHook` is given to a trainer with its own period, hooks=[(every, hook)], and called
as hook(trainer, step) at step 0 and every `every` steps (see `drfast.train.core.TrainingRun`); it
returns the two values logged to OUTPUT/run/train_log.jsonl:

    static_overlap  mean over the sampled queries of |S ∩ D| / |S|, where S is the query's static
                    negatives (its positives removed, the first K of the list) and D its current
                    top-K rows of the index that are not positives
    train_mrr10     MRR@10 of the sampled training queries (each positive's exact corpus rank, from
                    the same search)

The queries are a fixed, seeded sample of at most `max_queries` training queries that have both
positives and static negatives, so a check costs one encoding of those queries and one fused search
over the index, whatever the size of the training set (500k queries on MS MARCO). A trainer whose
document tower changes (STAR) needs the corpus re-encoded for each check (see `reencoded_index`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from drfast.common.checks import as_int64_vector, check_int
from drfast.common.csr import check_offsets
from drfast.common.errors import UsageError, UsageTypeError
from drfast.index.flat import FlatIndex
from drfast.index.protocol import Index
from drfast.negatives.mining import MiningConfig, mine_from_index
from drfast.search.rank_metrics import mean_mrr

__all__ = ["NegativeOverlapHook", "overlap_and_mrr", "sample_queries", "reencoded_index"]


def overlap_and_mrr(ids: Any, pos_offsets: Any, pos_ids: Any, pos_ranks: Any,
                    static_rows: Sequence[Sequence[int]], k: int) -> Tuple[np.ndarray, float]:
    """(overlap [B] float64, MRR@10) of one batch of search results, from arrays only.

    ids [B, k'] (top rows per query, -1 padding), pos_offsets [B+1], pos_ids [nnz], pos_ranks [nnz]:
    the fields of a `SearchResult` with the queries' positives (`index.search(q, k', positives)`).
    D = the first k rows of ids[b] that are not positives of query b: k' must be at least k plus the
    query's number of positives (or the whole index) for D to be the full top-k. S = static_rows[b]
    with duplicates and positives removed, in the order given, cut to its first k. overlap[b] =
    |S ∩ D| / |S| (NaN when S is empty). MRR@10 is `drfast.search.rank_metrics.mean_mrr` over the queries with
    positives.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise UsageError("ids", f"expected an integer array [B, k'], got shape {list(ids.shape)} of {ids.dtype}")
    B = ids.shape[0]
    offsets = as_int64_vector(pos_offsets, "pos_offsets", "an integer array")
    if offsets.shape != (B + 1,):
        raise UsageError("pos_offsets", f"expected CSR offsets [B+1] = [{B + 1}], got shape {list(offsets.shape)}")
    check_offsets(offsets, int(offsets[-1]), "pos_offsets")
    positives = as_int64_vector(pos_ids, "pos_ids", "an integer array")
    ranks = as_int64_vector(pos_ranks, "pos_ranks", "an integer array")
    for name, array in (("pos_ids", positives), ("pos_ranks", ranks)):
        if array.shape != (offsets[-1],):
            raise UsageError(name, f"expected {offsets[-1]} values (pos_offsets[-1]), got {array.shape[0]}")
    if len(static_rows) != B:
        raise UsageError("static_rows", f"expected one list per query ({B}), got {len(static_rows)}")
    check_int(k, "k", 1)
    overlap = np.full(B, np.nan)
    for b in range(B):
        pos = positives[offsets[b]:offsets[b + 1]]
        row = ids[b]
        dynamic = row[(row >= 0) & ~np.isin(row, pos)][:k]
        static = _first_unique(np.asarray(static_rows[b], dtype=np.int64).reshape(-1))
        static = static[~np.isin(static, pos)][:k]
        if static.size:
            overlap[b] = np.isin(static, dynamic).mean()
    return overlap, mean_mrr(offsets, ranks)


def sample_queries(qids: Sequence[str], max_queries: Optional[int], seed: int = 0) -> List[str]:
    """At most `max_queries` of `qids` (None: all), drawn with `seed`, sorted: the same ids whatever
    the order they come in."""
    if max_queries is not None:
        check_int(max_queries, "max_queries", 1)
    check_int(seed, "seed", 0)
    qids = sorted(set(qids))
    if max_queries is None or len(qids) <= max_queries:
        return qids
    pick = np.random.default_rng(seed).choice(len(qids), size=max_queries, replace=False)
    return [qids[i] for i in np.sort(pick)]


def reencoded_index(doc_encoder, corpus, batch_size: int = 64, chunk_size: int = 16384) -> FlatIndex:
    """A FlatIndex of the whole corpus encoded with `doc_encoder` now, in memory (float16, as the
    corpus cache stores it by default). `corpus` needs `__len__`, `doc_ids` and `texts(rows)`. One
    full corpus encoding per call, with a progress bar: the cost of a check while STAR trains."""
    check_int(batch_size, "batch_size", 1)
    n = len(corpus)
    emb = np.empty((n, doc_encoder.dim), dtype=np.float16)
    with tqdm(total=n, desc="re-encoding corpus", unit="doc") as bar:
        for start in range(0, n, chunk_size):  # one chunk of texts in memory at a time
            end = min(start + chunk_size, n)
            chunk = doc_encoder.encode(corpus.texts(np.arange(start, end)), batch_size=batch_size,
                                       on_batch=bar.update).astype(np.float16)
            if not np.isfinite(chunk).all():
                raise UsageError("doc_encoder", "embeddings overflow float16 (values beyond its range)")
            emb[start:end] = chunk
    return FlatIndex(emb, corpus.doc_ids)


class NegativeOverlapHook:
    """Static-vs-dynamic negative overlap and training MRR@10, as a trainer hook (the ADORE paper's
    Figure 4a).

    Before the first step and every N steps it encodes a fixed, seeded sample of the training queries,
    runs one fused search over the index and logs ``static_overlap`` (the mean over those queries of
    ``|S ∩ D| / |S|``, S the query's static negatives, D its current top-K non-positive documents) and
    ``train_mrr10`` (MRR@10 of the same queries, from the positives' exact ranks).

    Parameters
    ----------
    queries : mapping
        ``{qid: text}``.
    positives : mapping
        ``{qid: [doc_id, ...]}``.
    static_negatives : mapping
        ``{qid: [doc_id, ...]}``, hardest first (only the first k count, after removing positives).
    k : int
        The size of the dynamic top-K (and the cap on S).
    max_queries : int, optional
        The size of the sample (None: all queries).
    seed : int
        The seed of the fixed sample.
    batch_size : int
        Queries per search (and texts per encoder batch).
    index_fn : callable, optional
        ``index_fn(trainer)`` gives the index to search.

    Notes
    -----
    The query encoder is ``trainer.encoder`` (AdoreTrainer) or ``trainer.model.query_encoder``
    (StarTrainer); the index is ``index_fn(trainer)`` when given, else ``trainer.index`` (ADORE's
    fixed index), else, for a trainer with ``.model.doc_encoder`` and ``.corpus`` (StarTrainer, whose
    document tower changes), the corpus re-encoded with the current document tower: a whole corpus
    encoding per call. Row ids map to document ids through ``index.doc_ids``. Use it in a trainer's
    ``hooks`` as ``(every, hook)``; `NegativeOverlapHook.from_index` mines the static negatives from
    the starting encoder, so the overlap starts at 1.0.
    """

    def __init__(self, queries: Mapping, positives: Mapping, static_negatives: Mapping, k: int = 200,
                 max_queries: Optional[int] = 1000, seed: int = 0, batch_size: int = 64,
                 index_fn: Optional[Callable[[Any], Any]] = None):
        for name, value in (("queries", queries), ("positives", positives), ("static_negatives", static_negatives)):
            if not isinstance(value, Mapping):
                raise UsageTypeError(name, f"expected a dict {{qid: ...}}, got {type(value).__name__}")
        check_int(k, "k", 1)
        check_int(batch_size, "batch_size", 1)
        if index_fn is not None and not callable(index_fn):
            raise UsageTypeError("index_fn", f"expected a callable trainer -> index, got {type(index_fn).__name__}")
        static: Dict[str, List[str]] = {}
        for qid, negatives in static_negatives.items():
            pos = set(positives.get(qid) or ())
            if not pos:
                continue
            kept = [d for d in dict.fromkeys(negatives) if d not in pos][:k]  # unique, in the order given
            if kept:
                static[qid] = kept
        if not static:
            raise UsageError("static_negatives", "no query has both positives and a static negative that is not "
                             "one of its positives")
        self.qids = sample_queries(list(static), max_queries, seed)
        missing = [q for q in self.qids if q not in queries]
        if missing:
            raise UsageError("queries", f"query {missing[0]!r} has positives and static negatives but no text")
        self.queries = {q: queries[q] for q in self.qids}
        self.positives = {q: list(dict.fromkeys(positives[q])) for q in self.qids}
        self.static = {q: static[q] for q in self.qids}
        self.k, self.batch_size, self.index_fn = k, batch_size, index_fn
        self._doc_ids = None  # the index.doc_ids the cached rows below were computed from
        self._rows: Tuple[List[List[int]], List[List[int]]] = ([], [])

    @classmethod
    def from_index(cls, index: Index, query_encoder, queries: Mapping, positives: Mapping, k: int = 200,
                   max_queries: Optional[int] = 1000, seed: int = 0, batch_size: int = 64,
                   index_fn: Optional[Callable[[Any], Any]] = None) -> "NegativeOverlapHook":
        """A hook whose static negatives are `query_encoder`'s top-k non-positive rows of `index` now,
        before training (mined for the sampled queries only), so the overlap starts at 1.0."""
        if not isinstance(positives, Mapping):
            raise UsageTypeError("positives", f"expected a dict {{qid: [doc_id]}}, got {type(positives).__name__}")
        qids = sample_queries([q for q, docs in positives.items() if docs], max_queries, seed)
        if not qids:
            raise UsageError("positives", "no query has a positive document")
        missing = [q for q in qids if q not in queries]
        if missing:
            raise UsageError("queries", f"query {missing[0]!r} has positives but no text")
        pos_rows = [_rows(index, list(dict.fromkeys(positives[q])), "positives", q) for q in qids]
        # the same texts and batches as the hook's own first call: the same embeddings, bit for bit
        emb = query_encoder.encode([queries[q] for q in qids], batch_size=batch_size)
        # texts=None, no text deduplication: S is exactly the top-k that D is compared with at step 0
        mined = mine_from_index(index, emb, qids, pos_rows, MiningConfig(depth=k, n=k, sampling="top"),
                                batch_size=batch_size)
        static = {q: index.doc_ids.take(rows) for q, rows in mined.items()}
        return cls(queries, positives, static, k, max_queries, seed, batch_size, index_fn)

    def index_of(self, trainer):
        """The index whose top-k are the trainer's dynamic negatives now (see the class docstring)."""
        if self.index_fn is not None:
            return self.index_fn(trainer)
        index = getattr(trainer, "index", None)
        if index is not None:
            return index
        doc_encoder = getattr(getattr(trainer, "model", None), "doc_encoder", None)
        corpus = getattr(trainer, "corpus", None)
        if doc_encoder is None or corpus is None:
            raise UsageTypeError("trainer", f"a {type(trainer).__name__} has neither `.index` nor `.model.doc_encoder` "
                            "and `.corpus`; pass index_fn")
        return reencoded_index(doc_encoder, corpus, self.batch_size)

    def __call__(self, trainer, step: int) -> Dict[str, float]:
        encoder = getattr(trainer, "encoder", None)
        if encoder is None:
            encoder = getattr(getattr(trainer, "model", None), "query_encoder", None)
        if encoder is None:
            raise UsageTypeError("trainer", f"a {type(trainer).__name__} has neither `.encoder` nor `.model.query_encoder`")
        index = self.index_of(trainer)
        pos_rows, static_rows = self._rows_for(index)
        overlaps, mrr_sum = [], 0.0
        with torch.inference_mode():  # encode is already no-grad; this covers a custom index_fn's search
            emb = encoder.encode([self.queries[q] for q in self.qids], batch_size=self.batch_size)
            for start in range(0, len(self.qids), self.batch_size):
                batch = slice(start, start + self.batch_size)
                pos = pos_rows[batch]
                # k + the positives: D holds k non-positives even when every positive is retrieved
                res = index.search(emb[batch], k=min(self.k + max(map(len, pos)), index.ntotal), positives=pos)
                overlap, mrr = overlap_and_mrr(*(_numpy(x) for x in (res.ids, res.pos_offsets, res.pos_ids,
                                                                      res.pos_ranks)),
                                               static_rows[batch], self.k)
                overlaps.append(overlap)
                mrr_sum += mrr * len(pos)  # every sampled query has positives: batch means weigh by size
        return {"static_overlap": float(np.mean(np.concatenate(overlaps))), "train_mrr10": mrr_sum / len(self.qids)}

    def _rows_for(self, index) -> Tuple[List[List[int]], List[List[int]]]:
        """Positive and static rows per sampled query, recomputed only when the index's ids change
        (a re-encoded corpus keeps them)."""
        doc_ids = index.doc_ids
        if self._doc_ids is None or (doc_ids is not self._doc_ids and doc_ids != self._doc_ids):
            self._rows = ([_rows(index, self.positives[q], "positives", q) for q in self.qids],
                          [_rows(index, self.static[q], "static_negatives", q) for q in self.qids])
            self._doc_ids = doc_ids
        return self._rows


def _rows(index, docs: Sequence[str], name: str, qid: str) -> List[int]:
    return index.doc_ids.rows(docs, name=name, owner=f"query {qid!r}").tolist()


def _first_unique(values: np.ndarray) -> np.ndarray:
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


def _numpy(x: Any) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
