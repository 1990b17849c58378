"""Runs: each query's top-k documents by the fused search, in batches."""
from __future__ import annotations

from typing import Dict

import numpy as np
from tqdm.auto import tqdm


def retrieve(index, query_encoder, queries: Dict[str, str], k: int = 100, batch_size: int = 64,
             show_progress: bool = True) -> Dict[str, Dict[str, float]]:
    """Run dict {qid: {doc_id: score}} of each query's top-k by the fused search."""
    qids = list(queries)
    run: Dict[str, Dict[str, float]] = {}
    doc_ids = index.doc_ids
    for start in tqdm(range(0, len(qids), batch_size), desc="retrieving", unit="batch", disable=not show_progress):
        batch = qids[start:start + batch_size]
        emb = query_encoder.encode([queries[q] for q in batch], batch_size=batch_size)
        res = index.search(np.ascontiguousarray(emb, dtype=np.float32), k=min(k, index.ntotal))
        for qid, ids, scores in zip(batch, res.ids, res.scores):
            run[qid] = {doc_ids[i]: float(s) for i, s in zip(ids, scores) if i >= 0}
    return run
