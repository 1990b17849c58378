"""`AdoreLoss`: ADORE (Zhan et al., SIGIR'21) as a loss for sentence-transformers' trainer.

Matched against sentence-transformers 6.3.0: a loss is an nn.Module holding `model`, called as
`loss(sentence_features, labels)` by `SentenceTransformerTrainer.compute_loss` with one feature dict per
text column (here the one "query" column) and the label column untokenized; `get_config_dict` and
`citation` feed the model card. The trainer sums every value of a returned dict into the loss, so ADORE's
statistics (MRR@10 of the batch's positives, pairs) are not returned as loss components but added to the
trainer's logs by `AdoreLoss.callback()` (pass it in the trainer's `callbacks`); under torchrun they are
means over every rank's batches, as the logged loss is.

With `train_centroids=True` (JPQ, Zhan et al., CIKM'21) the loss owns a copy of the PQ index whose
centroids are a parameter of the loss, as in `drfast adore --train-centroids`: sentence-transformers'
trainer optimises a loss's parameters with the model's (give them the CLI's learning rate with
`learning_rate_mapping={"^centroids$": 1e-4}`), the fused search reads the current centroids at every
step, and `callback()` saves the trained index beside the model (OUTPUT/index, and in every checkpoint).

Each step does what `drfast adore` does (`drfast.adore_batch_loss`): the query tower encodes the batch, one
fused search gives the current top-k, the positives' exact ranks and the ΔMRR pair weights, and the loss is
the weighted RankNet loss against the index's own vectors. Same defaults as the CLI: k=200, cutoff=10,
normalizer "pairs", and the score scale rule (20 for L2-normalised embeddings, else 1).
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any, Optional, Sequence

import torch

from drfast.common.distributed import all_reduce_sum, current
from drfast.common.errors import UsageError, UsageTypeError
from drfast.encode.encoders import COSINE_SIMILARITY_SCALE
from drfast.index.sharded import ShardedIndex
from drfast.integrations.st_query_side import document_router, trainable_document_parameters
from drfast.train import adore_batch_loss

logger = logging.getLogger(__name__)

LOGGED = ("mrr10", "pairs")

ADORE_CITATION = """
@inproceedings{zhan2021optimizing,
    title = {Optimizing Dense Retrieval Model Training with Hard Negatives},
    author = {Zhan, Jingtao and Mao, Jiaxin and Liu, Yiqun and Guo, Jiafeng and Zhang, Min and Ma, Shaoping},
    booktitle = {Proceedings of the 44th International ACM SIGIR Conference on Research and Development in Information Retrieval},
    pages = {1503--1512},
    year = {2021},
}
"""


class AdoreLoss(torch.nn.Module):
    """ADORE's loss for `SentenceTransformerTrainer` (sentence-transformers 6.3.0).

    model: a model made by `query_side` (document side frozen: the index stays valid; a model whose
        document side would be trained is refused). index: a drfast index over the corpus, encoded with
        the document side (FlatIndex, PQIndex, or a ShardedIndex under torchrun). positives: a list of
        lists of index rows, one list per training query. The training dataset has a "query" text column
        and a "label" int column: the query's position in `positives`. Train with
        `router_mapping={"query": "query"}` in the training arguments.
    k, cutoff, score_scale (None: 20 for a normalised query tower, else 1), only_if_unretrieved, normalizer:
        as `drfast adore` (drfast.AdoreConfig) and `drfast.adore_batch_loss`.
    train_centroids: JPQ: also train the centroids of a PQ index (a copy: `index` itself is left as it was;
        `loss.index` is the index being trained). Not under torchrun, as `drfast adore`.
    """

    def __init__(self, model, index, positives: Sequence[Sequence[int]], k: int = 200, cutoff: int = 10,
                 score_scale: Optional[float] = None, only_if_unretrieved: bool = False, normalizer: str = "pairs",
                 train_centroids: bool = False):
        super().__init__()
        trained_docs = trainable_document_parameters(model)
        if trained_docs:
            raise UsageError("model", f"training would change the document side ({len(trained_docs)} trainable "
                                      f"parameters outside the query route, e.g. {trained_docs[0]!r}), which "
                                      "invalidates the index: wrap the model with query_side(model)")
        if not hasattr(index, "search") or not hasattr(index, "reconstruct"):
            raise UsageTypeError("index", f"expected a drfast index, got {type(index).__name__}")
        dim = model.get_embedding_dimension()
        if dim is not None and dim != index.dim:
            raise UsageError("index", f"has dimension {index.dim} but the model embeds in {dim}")
        if not isinstance(k, int) or not 1 <= k <= index.ntotal:
            raise UsageError("k", f"must be an int in [1, {index.ntotal}] (the index rows), got {k!r}")
        if not isinstance(cutoff, int) or cutoff < 1:
            raise UsageError("cutoff", f"must be an int >= 1, got {cutoff!r}")
        self.model = model
        self.train_centroids = bool(train_centroids)
        if self.train_centroids:
            index = self._trainable_copy(index)
        self.index = index
        self.positives = check_positives(positives, index.ntotal)
        self.k, self.cutoff = k, cutoff
        self.score_scale = float(score_scale) if score_scale is not None else default_score_scale(model)
        self.only_if_unretrieved, self.normalizer = bool(only_if_unretrieved), normalizer
        self._sums = dict.fromkeys(LOGGED, 0.0)
        self._steps = 0

    def forward(self, sentence_features: Sequence[dict], labels: torch.Tensor) -> torch.Tensor:
        features = list(sentence_features)
        problem = self._batch_problem(features, labels)
        if isinstance(self.index, ShardedIndex):  # its search is collective: every rank raises, none waits
            current().check_all(problem, "AdoreLoss: the batch")
        elif problem is not None:
            raise problem
        rows = labels.tolist()
        q = self.model(features[0], task="query")["sentence_embedding"]
        loss, info = adore_batch_loss(q.float(), self.index, [self.positives[r] for r in rows], self.k, self.cutoff,
                                      self.score_scale, self.only_if_unretrieved, self.normalizer)
        if self.model.training:
            for key in LOGGED:
                self._sums[key] += float(info[key])
            self._steps += 1
        return loss

    def _batch_problem(self, features: list, labels: Optional[torch.Tensor]) -> Optional[UsageError]:
        """What is wrong with a batch (None if nothing)."""
        if len(features) != 1:
            return UsageError("dataset", f"AdoreLoss takes one text column ('query') and a 'label' column, got "
                                         f"{len(features)} text columns")
        if labels is None:
            return UsageError("dataset", "needs a 'label' column: each query's position in positives")
        if any(not 0 <= r < len(self.positives) for r in labels.tolist()):
            return UsageError("label", f"must be positions in positives, in [0, {len(self.positives)})")
        return None

    def _trainable_copy(self, index):
        """A copy of the PQ index sharing its codes, whose centroids are this loss' parameter `centroids`."""
        if getattr(index, "kind", None) not in ("pq", "opq") or not hasattr(index, "centroids"):
            raise UsageError("train_centroids", f"trains the centroids of a PQ index; a "
                                                f"{getattr(index, 'kind', type(index).__name__)} index has none")
        if current().distributed:
            raise UsageError("train_centroids", "JPQ is not supported under torchrun (as drfast adore): train it "
                                                "in one process")
        self.centroids = torch.nn.Parameter(index.centroids.detach().clone())
        index = copy.copy(index)  # shares the codes; its centroids are the trained parameter
        index.centroids = self.centroids
        return index

    def save_index(self, path: str | os.PathLike) -> None:
        """Write the (trained) index as a folder, atomically (drfast.load_index reads it back)."""
        self.index.save(path)

    def take_logged(self) -> dict:
        """Means of MRR@10 and pairs over the training batches since the last call (empty if none).

        Under torch.distributed the means are over every rank's batches, as the trainer's logged loss
        is (a rank's own batches are only its share of the global batch), so this is collective there:
        every rank calls it (the callback's on_log runs on every rank)."""
        totals = all_reduce_sum([self._sums[key] for key in LOGGED] + [self._steps])
        self._sums, self._steps = dict.fromkeys(LOGGED, 0.0), 0
        steps = float(totals[-1])
        if not steps:
            return {}
        return {key: round(float(value) / steps, 4) for key, value in zip(LOGGED, totals)}

    def callback(self):
        """A transformers TrainerCallback that adds "mrr10" and "pairs" (means over all ranks under torchrun)
        to every training log line and, with train_centroids, clips the centroids' gradient norm to
        max_grad_norm on its own (as `drfast adore`: the trainer clips the model's only) and saves the
        trained index to OUTPUT/index and to every checkpoint's index/."""
        from transformers import TrainerCallback

        loss = self

        class AdoreCallback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs is not None and "loss" in logs:
                    logged = loss.take_logged()
                    logs.update(logged)
                    if state.log_history:
                        state.log_history[-1].update(logged)

            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                # the trainer clips the model's gradient norm only; drfast adore clips the centroids' on its own
                if loss.train_centroids and args.max_grad_norm and args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_([loss.centroids], args.max_grad_norm)

            def on_save(self, args, state, control, **kwargs):
                if loss.train_centroids and state.is_world_process_zero:
                    loss.save_index(os.path.join(args.output_dir, f"checkpoint-{state.global_step}", "index"))

            def on_train_end(self, args, state, control, **kwargs):
                if loss.train_centroids and state.is_world_process_zero:
                    loss.save_index(os.path.join(args.output_dir, "index"))

        return AdoreCallback()

    def get_config_dict(self) -> dict[str, Any]:
        return {"index": f"{type(self.index).__name__}(ntotal={self.index.ntotal}, dim={self.index.dim})",
                "k": self.k, "cutoff": self.cutoff, "score_scale": self.score_scale,
                "only_if_unretrieved": self.only_if_unretrieved, "normalizer": self.normalizer,
                "train_centroids": self.train_centroids}

    @property
    def citation(self) -> str:
        return ADORE_CITATION


def check_positives(positives, ntotal: int) -> list:
    """Each query's positive rows, sorted and unique (as `drfast adore`), checked against the index size."""
    if not isinstance(positives, (list, tuple)) or not positives:
        raise UsageTypeError("positives", "expected a non-empty list of lists of index rows")
    out = []
    for i, rows in enumerate(positives):
        try:
            rows = sorted({int(r) for r in rows})
        except (TypeError, ValueError):
            raise UsageTypeError("positives", f"entry {i} is not a list of integer rows") from None
        if not rows:
            raise UsageError("positives", f"entry {i} has no positive (drop the query from the training set)")
        if rows[0] < 0 or rows[-1] >= ntotal:
            raise UsageError("positives", f"entry {i} has a row outside [0, {ntotal})")
        out.append(rows)
    return out


def default_score_scale(model) -> float:
    """`drfast adore`'s rule: 20 when the query tower's output is L2-normalised (cosine models), else 1."""
    from sentence_transformers.sentence_transformer.modules import Normalize

    router = document_router(model)
    modules = list(router.sub_modules["query"]) if router is not None else []
    modules += [m for m in model.children() if m is not router]
    return COSINE_SIMILARITY_SCALE if any(isinstance(m, Normalize) for m in modules) else 1.0
