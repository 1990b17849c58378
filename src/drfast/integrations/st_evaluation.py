"""`InformationRetrievalEvaluator`: sentence-transformers' evaluator on drfast's exact search and trec_eval.

Matched against sentence-transformers 6.3.0 (`sentence_transformer/evaluation/information_retrieval.py`):
the same constructor arguments, metric keys (`{name}_{score_function}_{metric}@{k}`), primary metric,
CSV file and model-card records (those come from ST's own `__call__`, which this class inherits). What is
computed differently, on purpose:

- Retrieval is drfast's exact fused search over the whole corpus (no corpus chunks); with `index=` the
  corpus is not encoded at all (e.g. the frozen document side of a `query_side` model).
- Metrics come from trec_eval (pytrec_eval, through `drfast.evaluate`): documents with equal scores are
  ordered by id descending as a string (ST: ascending), and measures are trec_eval's: accuracy@k is
  `success_k`, precision@k `P_k`, recall@k `recall_k`, MRR@k `recip_rank` on the top k, NDCG@k
  `ndcg_cut_k`, and MAP@k is `map_cut_k`, which divides by all the query's relevant documents where ST
  divides by min(k, relevant). Relevance sets give gain 1 (as ST); a {doc_id: grade} mapping gives graded
  nDCG. Only the model's own similarity, cosine or dot (an inner product after normalising for cosine),
  is supported: `score_functions` raises NotImplementedError.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import numpy as np

from drfast.common.arrays import to_numpy
from drfast.common.atomic import write_text_atomic
from drfast.common.errors import UsageError
from drfast.eval import evaluate
from drfast.index import FlatIndex

logger = logging.getLogger(__name__)

INNER_PRODUCT_SIMILARITIES = ("cosine", "dot")
METRICS = (("accuracy@k", "accuracy_at_k", "success_{k}"), ("precision@k", "precision_recall_at_k", "P_{k}"),
           ("recall@k", "precision_recall_at_k", "R@{k}"), ("mrr@k", "mrr_at_k", "MRR@{k}"),
           ("ndcg@k", "ndcg_at_k", "nDCG@{k}"), ("map@k", "map_at_k", "map_cut_{k}"))
SEARCH_BATCH = 1024


def _base_class():
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as STEvaluator

    return STEvaluator


class InformationRetrievalEvaluator(_base_class()):
    """sentence-transformers 6.3.0's InformationRetrievalEvaluator, computed with drfast's exact search and
    trec_eval-exact metrics (see the module docstring for the differences). Extra keyword argument:
    index: a drfast index whose rows are `corpus`'s documents in the dict's order (the corpus is then not
    encoded; its doc_ids, if set, must be those ids).
    """

    def __init__(self, queries, corpus, relevant_docs, *args, index=None, **kwargs):
        if kwargs.get("score_functions") is not None:
            raise NotImplementedError("score_functions: drfast evaluates the model's own similarity (cosine or dot)")
        super().__init__(queries, corpus, relevant_docs, *args, **kwargs)
        if index is not None and index.ntotal != len(self.corpus_ids):
            raise UsageError("index", f"has {index.ntotal} rows but the corpus has {len(self.corpus_ids)} documents")
        self.index = index

    def compute_all_metrics(self, model, corpus_model=None, corpus_embeddings=None, output_path=None):
        name = getattr(model.similarity_fn_name, "value", model.similarity_fn_name)
        if name not in INNER_PRODUCT_SIMILARITIES:
            raise NotImplementedError(f"model.similarity_fn_name={name!r}: drfast evaluates by inner product "
                                      "(cosine or dot)")
        max_k = max(max(getattr(self, attr)) for _, attr, _ in METRICS)
        queries = self._as_rows(self.embed_inputs(model, self.queries, encode_fn_name="query",
                                                  prompt_name=self.query_prompt_name, prompt=self.query_prompt),
                                name == "cosine")
        index = self._corpus_index(corpus_model or model, corpus_embeddings, name == "cosine")
        run = {}
        for start in range(0, len(queries), SEARCH_BATCH):
            res = index.search(queries[start:start + SEARCH_BATCH], k=min(max_k, index.ntotal))
            for qid, ids, scores in zip(self.queries_ids[start:start + SEARCH_BATCH], to_numpy(res.ids),
                                        to_numpy(res.scores)):
                run[qid] = {self.corpus_ids[i]: float(s) for i, s in zip(ids.tolist(), scores.tolist()) if i >= 0}
        if self.write_predictions and output_path is not None:
            self._write_predictions(run, name, output_path)
        logger.info(f"Queries: {len(self.queries)}")
        logger.info(f"Corpus: {len(self.corpus)}\n")
        scores = {name: self._metrics(run)}
        for score_name in self.score_function_names:
            logger.info(f"Score-Function: {score_name}")
            self.output_scores(scores[score_name])
        return scores

    compute_metrices = compute_all_metrics

    def _as_rows(self, emb, normalize: bool) -> np.ndarray:
        emb = np.ascontiguousarray(to_numpy(emb), dtype=np.float32)
        if normalize:  # cosine = inner product of unit vectors (ST's cos_sim normalises the same way)
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(emb, dtype=np.float32)

    def _corpus_index(self, corpus_model, corpus_embeddings, normalize: bool):
        if self.index is not None:
            return self.index
        if corpus_embeddings is None:
            corpus_embeddings = self.embed_inputs(corpus_model, self.corpus, encode_fn_name="document",
                                                  prompt_name=self.corpus_prompt_name, prompt=self.corpus_prompt)
        return FlatIndex(self._as_rows(corpus_embeddings, normalize))

    def _qrels(self) -> dict:
        qrels = {}
        for qid in self.queries_ids:
            docs = self.relevant_docs[qid]
            qrels[qid] = ({str(d): int(g) for d, g in docs.items()} if isinstance(docs, Mapping)
                          else {str(d): 1 for d in docs})
        return qrels

    def _metrics(self, run: dict) -> dict:
        """ST's result structure {metric@k: {k: value}} from trec_eval measures over the evaluator's queries."""
        measures = {(key, k): pattern.format(k=k) for key, attr, pattern in METRICS for k in getattr(self, attr)}
        run = {qid: {str(d): s for d, s in docs.items()} for qid, docs in run.items()}
        values = evaluate(run, self._qrels(), list(dict.fromkeys(measures.values())))
        out = {key: {} for key, _, _ in METRICS}
        for (key, k), measure in measures.items():
            out[key][k] = float(values[measure])
        return out

    def _write_predictions(self, run: dict, name: str, output_path: str) -> None:
        import os

        os.makedirs(output_path, exist_ok=True)
        lines = []
        for qid, query in zip(self.queries_ids, self.queries):
            results = sorted(({"corpus_id": d, "score": s} for d, s in run.get(qid, {}).items()),
                             key=lambda x: (-x["score"], x["corpus_id"]))
            lines.append(json.dumps({"query_id": qid, "query": query, "results": results}))
        path = os.path.join(output_path, self.predictions_file.replace(".jsonl", f"_{name}.jsonl"))
        write_text_atomic(path, "\n".join(lines) + "\n")
