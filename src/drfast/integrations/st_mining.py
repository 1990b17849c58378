"""`mine_hard_negatives` of sentence-transformers, with drfast's exact fused search as the nearest-neighbour step.

Matched against sentence-transformers 6.3.0 (`sentence_transformers/util/hard_negatives.py`): the same
signature, defaults, validation, de-duplication of queries and corpus, candidate filtering (self-matches,
positives, margins, max/min score, range_min/range_max), "top"/"random" sampling (the same calls into
`random`, so a seeded run draws the same negatives), cross-encoder rescoring, output formats and printed
summary. What differs, on purpose:

- The search: ST's exact path computes [faiss_batch_size x corpus] score blocks and `torch.topk`s them; here
  the fused search keeps O(batch x (k + block)) memory and has no cap on k. Candidates with equal scores come
  lower corpus row first (torch.topk leaves that order unspecified), so the two can differ only where two
  scores are equal, or within float rounding of each other (inner product vs ST's cosine of unit vectors).
- `use_faiss` is accepted and ignored: the exact search is used either way (the faiss flat index on the CPU
  is exact too; on a GPU it is float16 and capped at k <= 2048, which is what this replaces).
- Similarity is the inner product of the (unit-normalised) embeddings: models whose `similarity_fn_name` is
  "cosine" or "dot" (the same on unit vectors); "euclidean"/"manhattan" raise NotImplementedError.
- Extras: `index=` (a drfast index, a saved index folder, a faiss index or index file whose rows are
  `corpus` in order: the corpus is not encoded), `first_pass=` (FlatIndex's exact two-stage search; "auto" by
  default) and
  `output_positive_ranks=True` (a column "positive_rank": each row's positive's exact 1-based rank over the
  whole corpus, as in drfast's SearchResult.pos_ranks).
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from drfast.common.arrays import to_numpy
from drfast.common.atomic import save_npy_atomic
from drfast.common.errors import UsageError
from drfast.index import FlatIndex, load_faiss_index, load_index
from drfast.integrations.st_mining_output import Filters, Texts, build_output, console, print_summary

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")
INNER_PRODUCT_SIMILARITIES = ("cosine", "dot")
NEG_INF = -float("inf")
# drfast's search pads past the corpus up to this many columns (search.validate.MAX_K_PADDING); beyond it we pad.
MAX_SEARCH_PADDING = 65536


def mine_hard_negatives(dataset, model, anchor_column_name=None, positive_column_name=None, corpus=None,
                        cross_encoder=None, range_min=0, range_max=None, max_score=None, min_score=None,
                        absolute_margin=None, relative_margin=None, num_negatives=3, sampling_strategy="top",
                        query_prompt_name=None, query_prompt=None, corpus_prompt_name=None, corpus_prompt=None,
                        include_positives=False, output_format="triplet", output_scores=False, batch_size=32,
                        faiss_batch_size=16384, use_faiss=False, use_multi_process=False, verbose=True,
                        cache_folder=None, as_triplets=None, margin=None, *, index=None, first_pass="auto",
                        output_positive_ranks=False):
    """Add hard negatives to a dataset of (anchor, positive) pairs, as
    `sentence_transformers.util.mine_hard_negatives` (6.3.0) does, with drfast's exact search.

    Every argument of sentence-transformers' function means the same here (see its documentation; the
    module docstring lists the differences). Extras, keyword-only:
    index: the corpus' embeddings already indexed (a drfast index, a folder written by `index.save`, a faiss
        index or a faiss index file), rows in the order of `corpus`; `corpus` must then be given, unique and
        contain every positive. The corpus is not encoded.
    first_pass: the first pass of the index mining builds (FlatIndex's: "auto", "int8", "int8-lean", "bf16" or
        None for the exact scan alone): the same results, bit for bit, sooner where the CPU has a fast
        int8 kernel ("auto" picks it, else the exact scan). Left at "auto" (or None) with `index=`.
    output_positive_ranks: add an int column "positive_rank", the exact corpus rank of each row's positive
        (not available with output_format="labeled-pair", whose rows are not tied to one positive).
    """
    from datasets import Dataset

    if len(dataset) == 0:
        raise ValueError("The dataset is empty. Please provide a non-empty dataset.")
    if faiss_batch_size <= 0:
        raise ValueError(f"faiss_batch_size must be a positive integer, got {faiss_batch_size}.")
    _check_similarity(model, cross_encoder)
    columns = dataset.column_names
    if not anchor_column_name or anchor_column_name not in columns:
        anchor_column_name = columns[0]
    if not positive_column_name or positive_column_name not in columns:
        if len(columns) < 2:
            raise ValueError("Dataset must contain at least two columns to select the positive column automatically.")
        positive_column_name = columns[1]
    output_format, output_scores, absolute_margin = _resolve_format(
        as_triplets, include_positives, output_format, output_scores, margin, absolute_margin,
        (range_min, range_max, max_score, min_score, relative_margin, sampling_strategy))
    if output_positive_ranks and output_format == "labeled-pair":
        raise UsageError("output_positive_ranks", "not available with output_format='labeled-pair'")
    anchors, positive_texts = _to_list(dataset[anchor_column_name]), _to_list(dataset[positive_column_name])
    max_positives = max(Counter(a for a, p in zip(anchors, positive_texts) if p is not None).values())
    filters = _resolve_filters(range_min, range_max, max_score, min_score, absolute_margin, relative_margin,
                               num_negatives, sampling_strategy, max_positives, cross_encoder, verbose)
    texts = _prepare_texts(anchors, positive_texts, corpus, include_positives, index is not None)
    if len(texts.queries) != len(anchors) and verbose:
        console(f"Found {len(texts.queries)} unique queries out of {len(anchors)} total queries.")
    if max_positives > 1 and verbose:
        per_query = list(Counter(a for a, p in zip(anchors, positive_texts) if p is not None).values())
        console(f"Found an average of {np.mean(per_query):.3f} positives per query.")
    prompts = (query_prompt_name, query_prompt, corpus_prompt_name, corpus_prompt)
    search_index, query_emb = _embed(model, texts, index, first_pass, prompts, batch_size, use_multi_process,
                                     cache_folder, verbose)
    k = filters.range_max + max_positives + 1
    scores, indices, positive_scores, positive_ranks = _search(search_index, query_emb, texts, k,
                                                               faiss_batch_size, verbose, output_positive_ranks)
    if cross_encoder is not None:
        positive_scores = _rescore(cross_encoder, texts, scores, indices, batch_size, use_multi_process)
    log_counters = {}
    negative_scores, indices = _filter_candidates(scores, indices, positive_scores, texts, filters,
                                                  include_positives, log_counters)
    if verbose:
        console("Negative candidates mined, preparing dataset...")
    data, summary = build_output(output_format, output_scores, anchor_column_name, positive_column_name,
                                 texts, indices, negative_scores, positive_scores, filters.num_negatives,
                                 len(dataset))
    if output_positive_ranks:
        data["positive_rank"] = positive_ranks[summary.pop("rows")].tolist()
    summary.pop("rows", None)
    output_dataset = Dataset.from_dict(data)
    if verbose:
        print_summary(positive_scores, summary, log_counters, filters, len(output_dataset))
    return output_dataset


def _to_list(values: Any) -> list:
    """A dataset column (datasets.Column, numpy array or any iterable) as a list."""
    if isinstance(values, np.ndarray):
        return values.tolist()
    return list(values[:] if hasattr(values, "__getitem__") and not isinstance(values, (list, tuple)) else values)


def _check_similarity(model, cross_encoder) -> None:
    name = getattr(model, "similarity_fn_name", "cosine")
    name = getattr(name, "value", name)
    if cross_encoder is None and name not in INNER_PRODUCT_SIMILARITIES:
        raise NotImplementedError(f"model.similarity_fn_name={name!r}: drfast mines by inner product of unit "
                                  f"vectors, i.e. {' or '.join(INNER_PRODUCT_SIMILARITIES)} similarity")


def _resolve_format(as_triplets, include_positives, output_format, output_scores, margin, absolute_margin,
                    others):
    """ST's handling of deprecated and interacting format arguments, with its warnings."""
    if as_triplets is not None:
        output_format = "triplet" if as_triplets else "n-tuple"
        logger.warning("The `as_triplets` parameter is deprecated. Use the `output_format` parameter instead. "
                       f"Setting `output_format` to `{output_format}`.")
    if include_positives:
        range_min, range_max, max_score, min_score, relative_margin, sampling_strategy = others
        if (range_min != 0 or range_max is not None or max_score is not None or min_score is not None
                or absolute_margin is not None or relative_margin is not None or margin is not None
                or sampling_strategy != "top"):
            logger.warning("When using `include_positives=True`, updating `range_min`, `range_max`, `max_score`, "
                           "`min_score`, `absolute_margin`, `relative_margin`, or `sampling_strategy` from the "
                           "default values may still discard the positive values.")
        if output_format != "n-tuple":
            logger.warning('When using `include_positives=True`, `output_format` will be set to `"n-tuple"` to '
                           "ensure that the ranking order is preserved.")
            output_format = "n-tuple"
    if output_format == "n-tuple-scores":
        logger.warning('`output_format="n-tuple-scores"` is deprecated. Use `output_format="n-tuple"` with '
                       "`output_scores=True` instead for equivalent output formats.")
        output_format, output_scores = "n-tuple", True
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"Invalid output_format: {output_format}. Must be one of 'triplet', 'n-tuple', "
                         "'labeled-pair', or 'labeled-list'.")
    if margin is not None:
        absolute_margin = margin
        logger.warning("The `margin` parameter is deprecated. Use the `absolute_margin` and/or `relative_margin` "
                       f"parameter instead. Setting `absolute_margin` to `{absolute_margin}`.")
    return output_format, output_scores, absolute_margin


def _resolve_filters(range_min, range_max, max_score, min_score, absolute_margin, relative_margin,
                     num_negatives, sampling_strategy, max_positives, cross_encoder, verbose) -> Filters:
    """ST's defaults for range_max and its checks, in its order and with its messages."""
    if sampling_strategy not in ("top", "random"):
        raise UsageError("sampling_strategy", f"must be 'top' or 'random', got {sampling_strategy!r}")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got num_negatives={num_negatives}.")
    if range_max is None:
        if (absolute_margin is not None or relative_margin is not None or max_score is not None
                or (cross_encoder is not None and min_score is not None)):
            range_max = range_min + (num_negatives * 10) + max_positives
        else:
            range_max = range_min + num_negatives + max_positives
        if verbose:
            console(f"Setting range_max to {range_max} based on the provided parameters.")
    if range_min < 0:
        raise ValueError(f"range_min must be non-negative, got range_min={range_min}.")
    if range_min >= range_max:
        raise ValueError(f"range_min must be smaller than range_max, got range_min={range_min} and "
                         f"range_max={range_max}.")
    if num_negatives > range_max - range_min:
        raise ValueError(f"Cannot mine {num_negatives} negatives per query: only {range_max - range_min} candidates "
                         f"remain after skipping the first range_min={range_min} of range_max={range_max}. Consider "
                         "decreasing num_negatives or range_min, or increasing range_max.")
    return Filters(range_min, range_max, max_score, min_score, absolute_margin, relative_margin, num_negatives,
                   sampling_strategy)


def _prepare_texts(anchors, positive_texts, corpus, include_positives, have_index) -> Texts:
    """ST's de-duplication: corpus = unique(corpus + positives), queries unique in order of appearance,
    each query's unique positives in order of appearance."""
    if have_index:
        if corpus is None:
            raise UsageError("corpus", "must be given with index= (the index rows are the corpus, in order)")
        corpus = _to_list(corpus)
        if len(set(corpus)) != len(corpus):
            raise UsageError("corpus", "must not hold duplicate texts with index= (rows would not map to texts)")
        missing = sum(1 for p in positive_texts if p not in set(corpus))
        if missing:
            raise UsageError("corpus", f"{missing} positives are not in the corpus given with index=")
    corpus = positive_texts if corpus is None else _to_list(corpus)
    corpus = list(dict.fromkeys(corpus + positive_texts))
    corpus_idx = {text: i for i, text in enumerate(corpus)}
    queries = list(dict.fromkeys(anchors))
    queries_idx = {q: i for i, q in enumerate(queries)}
    self_rows = [corpus_idx.get(q, -1) for q in queries]
    positive_indices = [[] for _ in queries]
    for query, positive in zip(anchors, positive_texts):
        q = queries_idx[query]
        if corpus_idx[positive] not in positive_indices[q]:
            positive_indices[q].append(corpus_idx[positive])
        if include_positives and query == positive:
            self_rows[q] = -1
    positives, all_queries = [], []
    for q, rows in enumerate(positive_indices):
        positives.extend(corpus[r] for r in rows)
        all_queries.extend([queries[q]] * len(rows))
    return Texts(queries, corpus, positive_indices, self_rows, positives, all_queries)


def _resolve_index(index, first_pass, n_corpus):
    """The search index: the one given (object, saved folder, faiss index or file), checked against the corpus."""
    if isinstance(index, (str, os.PathLike)):
        index = load_index(index) if os.path.isdir(index) else load_faiss_index(os.fspath(index))
    elif not hasattr(index, "search"):
        index = load_faiss_index(index)  # a faiss index object
    elif type(index).__module__.startswith("faiss"):
        index = load_faiss_index(index)
    if first_pass not in (None, "auto"):
        raise UsageError("first_pass", "applies to the index mining builds; give it when building index= instead")
    if index.ntotal != n_corpus:
        raise UsageError("index", f"has {index.ntotal} rows but the corpus has {n_corpus} texts")
    return index


def _embed(model, texts: Texts, index, first_pass, prompts, batch_size, use_multi_process, cache_folder, verbose):
    """Encode as ST does (encode_document / encode_query, unit-normalised, prompts, multi-process, cache) and
    index the corpus; with `index` given only the queries are encoded."""
    query_prompt_name, query_prompt, corpus_prompt_name, corpus_prompt = prompts
    query_file = corpus_file = None
    query_emb = corpus_emb = None
    if cache_folder:
        os.makedirs(cache_folder, exist_ok=True)
        model_name = model.model_card_data.base_model or ""
        query_file = os.path.join(cache_folder, "query_embeddings_" + _sha(
            (model_name, query_prompt, query_prompt_name, texts.queries)) + ".npy")
        corpus_file = os.path.join(cache_folder, "corpus_embeddings_" + _sha(
            (model_name, corpus_prompt, corpus_prompt_name, texts.corpus)) + ".npy")
        query_emb = _load_cached(query_file, "query", verbose)
        if index is None:
            corpus_emb = _load_cached(corpus_file, "corpus", verbose)
    need_corpus = index is None and corpus_emb is None
    if need_corpus or query_emb is None:
        pool = None
        if use_multi_process:
            pool = model.start_multi_process_pool(
                target_devices=None if isinstance(use_multi_process, bool) else use_multi_process)
        try:
            if need_corpus:
                corpus_emb = model.encode_document(texts.corpus, pool=pool, batch_size=batch_size,
                                                   normalize_embeddings=True, convert_to_numpy=True,
                                                   show_progress_bar=True, prompt_name=corpus_prompt_name,
                                                   prompt=corpus_prompt)
            if query_emb is None:
                query_emb = model.encode_query(texts.queries, pool=pool, batch_size=batch_size,
                                               normalize_embeddings=True, convert_to_numpy=True,
                                               show_progress_bar=True, prompt_name=query_prompt_name,
                                               prompt=query_prompt)
        finally:
            if use_multi_process:
                model.stop_multi_process_pool(pool)
    if cache_folder:
        _save_cached(query_file, query_emb, verbose)
        if index is None:
            _save_cached(corpus_file, corpus_emb, verbose)
    if index is not None:
        return _resolve_index(index, first_pass, len(texts.corpus)), query_emb
    corpus_emb = np.ascontiguousarray(to_numpy(corpus_emb), dtype=np.float32)
    return FlatIndex(corpus_emb, first_pass=first_pass), query_emb


def _sha(value) -> str:
    return hashlib.sha256(repr(value).encode(), usedforsecurity=False).hexdigest()


def _load_cached(path, what, verbose):
    if not os.path.exists(path):
        return None
    emb = np.load(path)
    if verbose:
        console(f"[Cache] Loaded {what} embeddings from {path} (shape={emb.shape})")
    return emb


def _save_cached(path, emb, verbose):
    if os.path.exists(path):
        return
    save_npy_atomic(path, to_numpy(emb))
    if verbose:
        console(f"[Cache] Saved {os.path.basename(path).split('_')[0]} embeddings to {path}")


def _search(index, query_emb, texts: Texts, k: int, batch: int, verbose: bool, full_ranks: bool):
    """Top-k candidates ([Q, k] scores and rows, -inf / -1 padding past the corpus), each positive's score
    (the kernel's own, consistent with the scan) and corpus rank, in batches of `batch` queries. Ranks are
    exact at full depth with `full_ranks`, else only up to k (deeper: k + 1): mining itself reads no rank,
    and a two-stage first pass then stops refining a positive once it is proven below the top-k."""
    query_emb = np.ascontiguousarray(to_numpy(query_emb), dtype=np.float32)
    k_search = k if k <= index.ntotal + MAX_SEARCH_PADDING else index.ntotal
    depth = None if full_ranks else k_search
    scores, indices, pos_scores, pos_ranks = [], [], [], []
    for start in tqdm(range(0, len(query_emb), batch), desc="Searching with drfast", disable=not verbose):
        res = index.search(query_emb[start:start + batch], k=k_search,
                           positives=texts.positive_indices[start:start + batch], rank_depth=depth)
        scores.append(torch.as_tensor(to_numpy(res.scores)))
        indices.append(torch.as_tensor(to_numpy(res.ids)))
        pos_scores.append(torch.as_tensor(to_numpy(res.pos_scores)))
        pos_ranks.append(torch.as_tensor(to_numpy(res.pos_ranks)))
    scores, indices = torch.cat(scores), torch.cat(indices)
    if k > k_search:
        scores = torch.cat([scores, scores.new_full((len(scores), k - k_search), NEG_INF)], dim=1)
        indices = torch.cat([indices, indices.new_full((len(indices), k - k_search), -1)], dim=1)
    return scores, indices, torch.cat(pos_scores), torch.cat(pos_ranks)


def _rescore(cross_encoder, texts: Texts, scores, indices, batch_size, use_multi_process):
    """ST's cross-encoder rescoring: every candidate (in place in `scores`) and every positive."""
    pool = None
    if use_multi_process:
        pool = cross_encoder.start_multi_process_pool(
            target_devices=None if isinstance(use_multi_process, bool) else use_multi_process)
    try:
        for q, rows in tqdm(enumerate(indices), desc="Rescoring with CrossEncoder", total=len(indices)):
            passages = [texts.corpus[r] for r in rows]  # padding (-1) reads the last text, masked below, as in ST
            pred = cross_encoder.predict(list(zip([texts.queries[q]] * len(passages), passages)),
                                         batch_size=batch_size, convert_to_tensor=True, pool=pool)
            scores[q] = pred.to(scores.device, scores.dtype)
        return cross_encoder.predict(list(zip(texts.all_queries, texts.positives)), batch_size=batch_size,
                                     convert_to_tensor=True, pool=pool).cpu()
    finally:
        if use_multi_process:
            cross_encoder.stop_multi_process_pool(pool)


def _filter_candidates(scores, indices, positive_scores, texts: Texts, f: Filters, include_positives,
                       log_counters):
    """ST's filters in its order (padding, self-match, positives, margins, max_score, min_score), then the
    range window and sampling. Returns ([Q, num_negatives] scores with -inf where nothing qualified, rows)."""
    n_queries = len(texts.queries)
    scores[indices == -1] = NEG_INF
    scores[indices == torch.tensor(texts.self_rows).unsqueeze(1)] = NEG_INF
    query_of_positive = torch.repeat_interleave(torch.arange(n_queries), torch.tensor(texts.n_positives))
    if not include_positives:
        stride = len(texts.corpus) + 1  # one key per query for the -1 padding
        flat = torch.tensor([r for rows in texts.positive_indices for r in rows])
        positive_keys = (query_of_positive * stride + flat + 1).sort().values
        candidate_keys = torch.arange(n_queries).unsqueeze(1) * stride + indices + 1
        pos = torch.searchsorted(positive_keys, candidate_keys).clamp(max=len(positive_keys) - 1)
        scores[positive_keys[pos] == candidate_keys] = NEG_INF
    num_candidates = scores.numel()
    if f.absolute_margin is not None or f.relative_margin is not None:
        # the hardest (lowest-scored) positive of each query sets its margin, as in ST
        min_positive = positive_scores.new_full((n_queries,), float("inf")).scatter_reduce(
            0, query_of_positive, positive_scores, "amin")
        if f.absolute_margin is not None:
            removed = scores + f.absolute_margin > min_positive.unsqueeze(1)
            num_candidates -= _remove(scores, removed, "absolute_margin", num_candidates, log_counters)
        if f.relative_margin is not None:
            threshold = min_positive - min_positive.abs() * f.relative_margin
            removed = scores > threshold.unsqueeze(1)
            num_candidates -= _remove(scores, removed, "relative_margin", num_candidates, log_counters)
    if f.max_score is not None:
        _remove(scores, scores > f.max_score, "max_score", num_candidates, log_counters)
    if f.min_score is not None:
        _remove(scores, (scores < f.min_score) & (scores != NEG_INF), "min_score", num_candidates, log_counters)
    # a stable sort keeps the search's order (lower row first) among equal scores, where ST's topk is unspecified
    negative_scores, local = torch.sort(scores, dim=1, descending=True, stable=True)
    negative_scores, local = negative_scores[:, f.range_min:f.range_max], local[:, f.range_min:f.range_max]
    indices = torch.gather(indices, 1, local)
    if f.sampling_strategy == "top":
        return negative_scores[:, :f.num_negatives], indices[:, :f.num_negatives]
    num_options = (indices.size(1) - negative_scores.isinf().sum(1)).clamp(min=f.num_negatives)
    sampled = torch.tensor([random.sample(range(options), k=f.num_negatives) for options in num_options.tolist()],
                           dtype=torch.long).reshape(n_queries, f.num_negatives)
    negative_scores, indices = torch.gather(negative_scores, 1, sampled), torch.gather(indices, 1, sampled)
    negative_scores, order = negative_scores.sort(dim=1, descending=True)
    return negative_scores, torch.gather(indices, 1, order)


def _remove(scores, removed, name, num_candidates, log_counters) -> int:
    scores[removed] = NEG_INF
    skipped = int(removed.sum())
    if skipped:
        log_counters[name] = {"skipped": skipped, "ratio": skipped / num_candidates}
    return skipped
