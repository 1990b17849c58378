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
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from . import stats
from .ops import check_int


def exact_positive_ranks(index, query_embeddings, positives_rows: Sequence[Sequence[int]],
                         batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
    """(pos_offsets int64 [Q+1], pos_ranks int64 [nnz]): each positive's 1-based rank over the whole index,
    from fused searches of `batch_size` queries (memory O(batch_size * block), never [Q, N])."""
    emb = np.ascontiguousarray(query_embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(positives_rows):
        raise ValueError(f"query_embeddings: expected shape [{len(positives_rows)}, d] (one row per positives "
                         f"list), got {list(emb.shape)}")
    offsets = _csr_offsets(positives_rows)
    ranks = np.empty(int(offsets[-1]), np.int64)
    for start in range(0, len(positives_rows), batch_size):
        end = min(start + batch_size, len(positives_rows))
        res = index.search(emb[start:end], k=1, positives=[list(p) for p in positives_rows[start:end]])
        ranks[offsets[start]:offsets[end]] = np.asarray(res.pos_ranks)
    return offsets, ranks


def _csr_offsets(lists: Sequence[Sequence[int]]) -> np.ndarray:
    offsets = np.zeros(len(lists) + 1, np.int64)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    return offsets


def run_errors(data_dir: str | os.PathLike, split: str, model: str, output: str | os.PathLike,
               query_model: Optional[str] = None, index_spec: str = "flat", k: int = 200,
               cache_dir: Optional[str | os.PathLike] = None, dtype: str = "float16", batch_size: int = 64,
               seed: int = 0, encoder_options: Optional[dict] = None, chunk_size: int = 4096,
               plot: bool = True) -> dict:
    """Writes OUTPUT/errors.json ({"summary", "per_query", "config", "timings"}) and OUTPUT/errors.png.

    Queries are the split's queries with at least one positive (relevance > 0). Ranks are saved per
    chunk of `chunk_size` queries under OUTPUT, so an interrupted run resumes where it stopped."""
    from .data import load_beir
    from .encoders import BiEncoder
    from .retrieval import corpus_index, parse_index_spec
    from .training import write_json_atomic

    parse_index_spec(index_spec)  # fail before any encoding
    check_int(k, "k")
    check_int(batch_size, "batch_size")
    check_int(chunk_size, "chunk_size")
    output = Path(output)
    timings: dict = {}
    t_all = time.perf_counter()
    data = load_beir(data_dir, split)
    encoders = BiEncoder.load(model, query_model, **(encoder_options or {}))
    index = corpus_index(data_dir, model, index_spec, cache_dir, dtype, seed=seed, encoders=encoders,
                         timings=timings)
    qids = sorted(data.positives)
    rows = [data.corpus.rows(data.positives[q]).tolist() for q in qids]

    t0 = time.perf_counter()
    work = output / f".ranks-{_run_key(encoders, data, qids, index_spec, seed, dtype)}"
    offsets, ranks = _ranks_in_chunks(index, encoders.query_encoder, [data.queries[q] for q in qids], rows,
                                      work, batch_size, chunk_size)
    timings["ranks_s"] = round(time.perf_counter() - t0, 3)
    timings["numba_compile_s"] = round(stats.compile_kernel(), 3)  # a cache load after the first run
    t0 = time.perf_counter()
    result = stats.error_statistics(offsets, ranks, k=k, n_docs=index.ntotal)
    timings["statistics_s"] = round(time.perf_counter() - t0, 4)
    summary = result["summary"]
    timings["total_s"] = round(time.perf_counter() - t_all, 3)
    report = {
        "summary": summary,
        "per_query": {q: {"total": int(t), "topk": int(tk)} for q, t, tk in zip(qids, result["total"], result["topk"])},
        "config": {"data": str(data_dir), "split": split, "model": model, "query_model": query_model,
                   "index": index_spec, "k": k, "dtype": dtype, "seed": seed, "documents": index.ntotal},
        "timings": timings,
    }
    write_json_atomic(output / "errors.json", report)
    if plot:
        label = f"{Path(query_model or model).name} on {Path(data_dir).name} {split} ({index_spec})"
        plot_errors(summary, output / "errors.png", label)
    shutil.rmtree(work, ignore_errors=True)
    return report


def _run_key(encoders, data, qids, index_spec, seed, dtype) -> str:
    """What the saved chunks depend on: both towers' content, the corpus, the queries and the index."""
    from .corpus_encoding import corpus_cache_key

    identity = {"documents": corpus_cache_key(encoders.doc_encoder, data.corpus, dtype),
                "queries": corpus_cache_key(encoders.query_encoder, data.corpus, dtype),
                "qids": hashlib.sha256("\n".join(qids).encode()).hexdigest(),
                "index": index_spec, "seed": seed}
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
                tmp = path.with_suffix(".tmp")
                with open(tmp, "wb") as f:
                    np.save(f, chunk_ranks)
                os.replace(tmp, path)  # a chunk file exists only once it is complete
            parts.append(np.load(path))
            bar.update(end - start)
    return _csr_offsets(rows), np.concatenate(parts) if parts else np.zeros(0, np.int64)


# ---- Figure 3 ------------------------------------------------------------------------------------
def plot_errors(summary: Dict, path: str | os.PathLike, title: str = "") -> Path:
    """Figure 3 of the paper for total and top-K errors: the share of queries in each decade bin of
    per-query errors (bars) and the bin's share of all errors (line). Written atomically as PNG."""
    from matplotlib.figure import Figure  # the object API renders with Agg: no pyplot, no display

    from .run_plot import save_figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    names = {"total": "total pairwise errors", "topk": f"top-{summary['k']} pairwise errors"}
    for ax, kind in zip(axes, ("total", "topk")):
        bins = summary["distribution"][kind]
        x = np.arange(len(bins))
        bars = ax.bar(x, [100 * b["query_share"] for b in bins], color="#7aa6d6")
        ax.set_xticks(x, [_bin_label(b) for b in bins], rotation=45, ha="right", fontsize=8)
        ax.set_xlabel(f"{names[kind]} per query")
        ax.set_ylabel("share of queries (%)")
        twin = ax.twinx()
        (line,) = twin.plot(x, [100 * b["error_share"] for b in bins], color="#c0392b", marker="o")
        twin.set_ylabel("share of all errors (%)")
        twin.set_ylim(0, 105)
        mean = summary[f"mean_{kind}_errors"]
        hardest = ", ".join(f"hardest {p}: {100 * s:.0f}%" for p, s in list(summary["hardest_share"][kind].items())[:3])
        ax.set_title(f"mean {mean:,.1f} per query\n{hardest} of errors", fontsize=9)
        ax.legend([bars, line], ["queries", "errors"], loc="upper center", fontsize=8)
    fig.suptitle(f"Pairwise errors over {summary['queries']:,} queries" + (f": {title}" if title else ""),
                 fontsize=10)
    return save_figure(fig, Path(path))


def _bin_label(b: Dict) -> str:
    if b["low"] == 0:
        return "0"
    if b["low"] < 1000:
        return f"{b['low']}-{b['high'] - 1}"
    return f"1e{len(str(b['low'])) - 1}-1e{len(str(b['high'])) - 1}"
