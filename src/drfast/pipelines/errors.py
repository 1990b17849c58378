"""`drfast errors`: pairwise errors of a model on a BEIR split (the ADORE paper's Table 1 and Figure 3).

Every query's positives get their exact rank over the whole corpus from the fused search (k=1: the top-k
is not needed, the ranks come from the same pass), in resumable chunks; `drfast.stats` turns the ranks
into per-query total and top-K errors and their aggregates. Output: OUTPUT/errors.json and
OUTPUT/errors.png (queries and errors per decade bin, for total and top-K errors).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

from drfast.common.atomic import save_npy_atomic, write_json_atomic
from drfast.common.checks import check_int
from drfast.common.csr import offsets_of
from drfast.common.distributed import DistContext
from drfast.common.timing import timed
from drfast.encode.corpus_cache import corpus_cache_key
from drfast.eval import error_stats as stats
from drfast.eval.error_stats import exact_positive_ranks
from drfast.eval.plots import plot_errors
from drfast.pipelines.corpus import split_and_index
from drfast.pipelines.inputs import check_output_dir
from drfast.pipelines.specs import CorpusSpec, EncoderSpec, IndexSpec, SearchSpec, config_of


def run_errors(corpus: CorpusSpec, encoder: EncoderSpec, output: str | os.PathLike, index: IndexSpec = IndexSpec(),
               search: Optional[SearchSpec] = None, *, chunk_size: int = 4096, plot: bool = True,
               dist: Optional[DistContext] = None) -> Optional[dict]:
    """Writes OUTPUT/errors.json ({"summary", "per_query", "config", "timings"}) and OUTPUT/errors.png.

    Queries are the split `search.split`'s queries with at least one positive (relevance > 0); K of
    the top-K errors is `search.k` (default SearchSpec(k=200)). Ranks are saved per chunk of
    `chunk_size` queries under OUTPUT, so an interrupted run resumes where it stopped.
    With `index.index_dir`, a saved index is searched instead (no corpus text, no corpus encoding;
    see pipelines.saved_index): the query encoder is `encoder.query_model`, else `encoder.model`.
    With `dist` of several ranks (torchrun), collective: a ShardedIndex, the query chunks shared out
    among the ranks, and rank 0 alone writes the chunks, errors.json and errors.png (the same as one
    process's) and returns the report; the other ranks return None."""
    search = SearchSpec(k=200) if search is None else search
    for spec in (corpus, encoder, index, search):  # every argument is checked before any model is loaded
        spec.check()
    check_int(chunk_size, "chunk_size", 1)
    output = check_output_dir(output)
    timings: dict = {}
    t_all = time.perf_counter()
    found = split_and_index(corpus, encoder, index, search.split, timings=timings, dist=dist)
    qids = sorted(found.data.positives)
    rows = [found.index.doc_ids.rows(found.data.positives[q]).tolist() for q in qids]
    work = output / f".ranks-{_run_key(found, index, corpus.dtype, qids, rows)}"
    with timed(timings, "ranks_s"):
        ranks = _positive_ranks(found, qids, rows, work, search.query_batch_size, chunk_size, dist)
    if ranks is None:  # a rank other than 0 under torchrun
        return None
    timings["numba_compile_s"] = round(stats.compile_kernel(), 3)  # a cache load after the first run
    with timed(timings, "statistics_s"):
        result = stats.error_statistics(offsets_of(rows), ranks, k=search.k, n_docs=found.index.ntotal)
    summary = result["summary"]
    timings["total_s"] = round(time.perf_counter() - t_all, 3)
    report = {
        "summary": summary,
        "per_query": {q: {"total": int(t), "topk": int(tk)} for q, t, tk in zip(qids, result["total"], result["topk"])},
        "config": config_of(corpus, encoder, index, search, documents=found.index.ntotal),
        "timings": timings,
    }
    write_json_atomic(output / "errors.json", report)
    if plot:
        label = (f"{Path(encoder.query_model or encoder.model).name} on {Path(corpus.data).name} {search.split} "
                 f"({index.index if index.index_dir is None else Path(index.index_dir).name})")
        plot_errors(summary, output / "errors.png", label)
    for done in output.glob(".ranks-*"):  # this run's chunks, and stale ones of other inputs
        shutil.rmtree(done, ignore_errors=True)
    return report


def _positive_ranks(found, qids, rows, work: Path, batch_size: int, chunk_size: int,
                    dist: Optional[DistContext]) -> Optional[np.ndarray]:
    """Every positive's exact rank (CSR over `rows`), chunk by chunk under `work`; None on ranks > 0."""
    texts = [found.data.queries[q] for q in qids]
    if dist is not None and dist.distributed:
        _, ranks = _ranks_in_chunks_sharded(dist, found.index, found.query_encoder, texts, rows, work, batch_size,
                                            chunk_size)
        return ranks if dist.is_main else None
    return _ranks_in_chunks(found.index, found.query_encoder, texts, rows, work, batch_size, chunk_size)[1]


class _IndexFolder:
    """A saved index folder in corpus_cache_key's terms: its fingerprint is its path and its files'
    sizes and modification times (a saved index is always written as a new folder)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).resolve()

    def fingerprint(self) -> str:
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in self.path.iterdir())
        return hashlib.sha256(json.dumps([str(self.path), files]).encode()).hexdigest()[:16]


def _run_key(found, index: IndexSpec, dtype: str, qids, rows) -> str:
    """What the saved chunks depend on: both towers' content, the corpus (or the saved index), the
    queries, their texts and positives, and the index."""
    data, query_encoder = found.data, found.query_encoder
    if index.index_dir is not None:  # the document side: the saved index's files
        doc_encoder, corpus = query_encoder, _IndexFolder(index.index_dir)
    else:
        doc_encoder, corpus = found.doc_encoder, data.corpus
    identity = {"documents": corpus_cache_key(doc_encoder, corpus, dtype),
                "queries": corpus_cache_key(query_encoder, corpus, dtype),
                "qids": hashlib.sha256(json.dumps([qids, [data.queries[q] for q in qids], rows]).encode()).hexdigest(),
                "index": index.index, "index_seed": index.index_seed}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _ranks_in_chunks(index, query_encoder, texts: List[str], rows: List[List[int]], work: Path,
                     batch_size: int, chunk_size: int) -> Tuple[np.ndarray, np.ndarray]:
    work.mkdir(parents=True, exist_ok=True)
    parts = []
    with tqdm(total=len(texts), desc="exact ranks", unit="query") as bar:
        for start in range(0, len(texts), chunk_size):
            end = min(start + chunk_size, len(texts))
            path = work / f"chunk_{start:010d}_{end:010d}.npy"
            if not path.exists():
                emb = query_encoder.encode(texts[start:end], batch_size=batch_size)
                _, chunk_ranks = exact_positive_ranks(index, emb, rows[start:end], batch_size)
                save_npy_atomic(path, chunk_ranks)  # a chunk file exists only once it is complete
            parts.append(np.load(path))
            bar.update(end - start)
    return offsets_of(rows), np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _ranks_in_chunks_sharded(dist: DistContext, index, query_encoder, texts: List[str], rows: List[List[int]],
                             work: Path, batch_size: int, chunk_size: int):
    """_ranks_in_chunks on a ShardedIndex, collective. Rank 0 lists the chunks not saved yet; they go
    out in rounds of W (rank r takes the round's r-th), each encoded and searched as one process does
    it (the same texts, the same batches: the same ranks); every rank searches as often as the round's
    longest chunk needs, and rank 0 gathers and saves the round's chunks (resumable per round).
    Returns (offsets, ranks) on rank 0, (None, None) on the others."""
    chunks = [(s, min(s + chunk_size, len(texts))) for s in range(0, len(texts), chunk_size)]
    paths = [work / f"chunk_{s:010d}_{e:010d}.npy" for s, e in chunks]
    error, todo = None, None
    try:
        if dist.is_main:
            work.mkdir(parents=True, exist_ok=True)
            todo = [i for i, p in enumerate(paths) if not p.exists()]
    except Exception as e:  # noqa: BLE001 (raised on every rank by check_all)
        error = e
    dist.check_all(error, "preparing the rank chunks")
    todo = dist.broadcast(todo)
    W = dist.world_size
    with tqdm(total=len(texts), desc="exact ranks", unit="query", disable=not dist.is_main) as bar:
        bar.update(len(texts) - sum(chunks[i][1] - chunks[i][0] for i in todo))
        for at in range(0, len(todo), W):
            round_ = todo[at:at + W]
            steps = max(-(-(chunks[i][1] - chunks[i][0]) // batch_size) for i in round_)
            mine = round_[dist.rank] if dist.rank < len(round_) else None
            s, e = chunks[mine] if mine is not None else (0, 0)
            error, emb = None, None
            try:
                emb = query_encoder.encode(texts[s:e], batch_size=batch_size)
            except Exception as ex:  # noqa: BLE001
                error = ex
            dist.check_all(error, "encoding the queries")
            _, chunk_ranks = exact_positive_ranks(index, emb, rows[s:e], batch_size, steps=steps)
            every = dist.gather((mine, chunk_ranks))
            error = None
            try:
                for i, r in every or ():
                    if i is not None:
                        save_npy_atomic(paths[i], r)
            except Exception as ex:  # noqa: BLE001
                error = ex
            dist.check_all(error, "saving the rank chunks")
            bar.update(sum(chunks[i][1] - chunks[i][0] for i in round_))
    if not dist.is_main:
        return None, None
    parts = [np.load(p) for p in paths]
    return offsets_of(rows), np.concatenate(parts) if parts else np.zeros(0, np.int64)
