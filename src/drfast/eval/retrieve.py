"""Runs: each query's top-k documents by the fused search, in batches (on one index or collectively
on a ShardedIndex)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from tqdm.auto import tqdm

from drfast.common.distributed import current, slice_of
from drfast.common.errors import UsageError
from drfast.index.protocol import Index
from drfast.index.sharded import ShardedIndex


def retrieve(index: Index, query_encoder, queries: Dict[str, str], k: int = 100, batch_size: int = 64,
             show_progress: bool = True) -> Optional[Dict[str, Dict[str, float]]]:
    """Run dict ``{qid: {doc_id: score}}`` of each query's top-k by the fused search.

    Parameters
    ----------
    index : Index
        A FlatIndex, PQIndex or ShardedIndex (whose doc_ids name the rows).
    query_encoder : Encoder
        Encodes the query texts.
    queries : dict
        ``{qid: text}``.
    k : int
        Documents per query.
    batch_size : int
        Queries per encoder batch.
    show_progress : bool
        Show a progress bar.

    Returns
    -------
    dict or None
        The run; with a ShardedIndex the call is collective (every rank passes the same queries) and
        the whole run comes back on rank 0, None on the others.
    """
    if isinstance(index, ShardedIndex):
        return _retrieve_sharded(index, query_encoder, queries, k, batch_size, show_progress)
    qids = list(queries)
    run: Dict[str, Dict[str, float]] = {}
    doc_ids = index.doc_ids
    for start in tqdm(range(0, len(qids), batch_size), desc="retrieving", unit="batch", disable=not show_progress):
        batch = qids[start:start + batch_size]
        emb = query_encoder.encode([queries[q] for q in batch], batch_size=batch_size)
        res = index.search(np.ascontiguousarray(emb, dtype=np.float32), k=min(k, index.ntotal))
        _add_to_run(run, batch, res.ids, res.scores, doc_ids)
    return run


def _add_to_run(run: dict, qids, ids: np.ndarray, scores: np.ndarray, doc_ids) -> None:
    for qid, row_ids, row_scores in zip(qids, ids, scores):
        run[qid] = {doc_ids[i]: float(s) for i, s in zip(row_ids, row_scores) if i >= 0}


def _retrieve_sharded(index: ShardedIndex, query_encoder, queries: Dict[str, str], k: int, batch_size: int,
                      show_progress: bool) -> Optional[Dict[str, Dict[str, float]]]:
    """The single process's batches (`batch_size` queries, in order) shared out in contiguous blocks,
    slice_of(n_batches, rank, W): every query is encoded in the same batch as in one process, so its
    embedding, and with the bit-identical sharded search its results, are the same. Every rank runs
    ceil(n_batches / W) collective searches (empty ones past its block), a number all ranks compute
    from the global query count; rank 0 gathers the rows and scores and maps the rows to doc ids."""
    if index.doc_ids is None:
        raise UsageError("index", "a ShardedIndex needs its doc_ids (all rows') to produce a run")
    ctx = current()
    qids = list(queries)
    starts = list(range(0, len(qids), batch_size))
    lo, hi = slice_of(len(starts), ctx.rank, ctx.world_size)
    steps = -(-len(starts) // ctx.world_size)
    k = min(k, index.ntotal)
    ids = [np.zeros((0, k), np.int64)]
    scores = [np.zeros((0, k), np.float32)]
    for step in tqdm(range(steps), desc="retrieving", unit="batch", disable=not (show_progress and ctx.is_main)):
        if lo + step < hi:
            start = starts[lo + step]
            emb = query_encoder.encode([queries[q] for q in qids[start:start + batch_size]], batch_size=batch_size)
            emb = np.ascontiguousarray(emb, dtype=np.float32)
        else:
            emb = np.zeros((0, index.dim), np.float32)
        res = index.search(emb, k=k)
        ids.append(np.asarray(res.ids))
        scores.append(np.asarray(res.scores))
    every = ctx.gather((np.concatenate(ids), np.concatenate(scores)))
    if every is None:
        return None
    run: Dict[str, Dict[str, float]] = {}
    _add_to_run(run, qids, np.concatenate([i for i, _ in every]), np.concatenate([s for _, s in every]),
                index.doc_ids)
    return run
