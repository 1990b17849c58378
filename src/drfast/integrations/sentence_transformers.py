"""drfast inside sentence-transformers (matched against sentence-transformers 6.3.0).

- `mine_hard_negatives`: `sentence_transformers.util.mine_hard_negatives` with drfast's exact fused search
  (same signature, rows and printed summary; extras `index=`, `first_pass=`, `output_positive_ranks=`).
- `query_side(model)`: the document side frozen (`encode_document` unchanged, the index stays valid), the
  query side a trainable copy (`Router.for_query_document`).
- `AdoreLoss(model, index, positives)`: ADORE as a loss for `SentenceTransformerTrainer`.
- `InformationRetrievalEvaluator`: ST's evaluator on drfast's exact search and trec_eval-exact metrics.
- `adore_training_arguments`, `adore_optimizers`, `DrfastBatchSampler`, `DrfastRandomState`: `drfast adore`'s
  training (batches, warm-up, weight decay, clipping, dropout stream) on `SentenceTransformerTrainer`.

Install with ``pip install 'drfast[st]'``. This module imports sentence-transformers; ``import drfast`` does not.
"""
from __future__ import annotations

from drfast.integrations.st_evaluation import InformationRetrievalEvaluator
from drfast.integrations.st_losses import AdoreLoss
from drfast.integrations.st_mining import mine_hard_negatives
from drfast.integrations.st_query_side import ROUTER_MAPPING, query_side
from drfast.integrations.st_training import (DrfastBatchSampler, DrfastRandomState, adore_optimizers,
                                             adore_training_arguments)

__all__ = ["mine_hard_negatives", "query_side", "AdoreLoss", "InformationRetrievalEvaluator", "ROUTER_MAPPING",
           "adore_training_arguments", "adore_optimizers", "DrfastBatchSampler", "DrfastRandomState"]
