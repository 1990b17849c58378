"""The non-encoder part of one ADORE training step, written the way the reference does it.

Reference: jingtaozhan/DRhard, ``adore/train.py`` (commit 2371126bbf84436388b215210cd8001db25cf4b4):
``metric_weights`` (lines 85-91), the faiss search of the detached query embeddings (lines 194-195) and the
per-query Python loop of ``train`` (lines 196-242). Every block below names the lines it mirrors; only
what is not the encoder is kept (no optimizer, no logging). Used by ``bench_adore_step.py`` as the baseline.

Deliberate differences from that commit (the same ones drfast's ``losses.py`` documents):

* RankNet sign: lines 229-230 there compute ``C_pos`` and ``C_neg`` with the *same* sign,
  ``log(1 + exp(y_i - y_j))``, which pulls positives towards negatives. We use the paper's RankNet
  (also the earlier version of that file, with ``sigma``): a (positive p, negative n) pair costs
  ``log(1 + exp(sigma * (s_n - s_p)))``. Same operations, same cost; only the sign of one term differs.
* ``--metric`` is taken as given (MRR with ``--metric_cut``), i.e. line 234's branch is always taken.
* ``gradient_accumulation_steps`` is 1 (line 241 divides by the batch size only).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch


def metric_weights(y_pred: torch.Tensor, metric_cut: Optional[int]) -> torch.Tensor:
    """train.py lines 85-91, verbatim: |rr(i) - rr(j)| over *list positions*, rr = 0 from metric_cut on."""
    y_pred = y_pred.view(-1)
    arr = 1 / torch.arange(1, 1 + len(y_pred)).float().to(y_pred.device)
    if metric_cut is not None:
        arr[metric_cut:] = 0
    weights = torch.abs(arr.view(-1, 1) - arr.view(1, -1))
    return weights


def reference_step(
    query_embeddings: torch.Tensor,
    index,  # a faiss index: IndexFlatIP (flat) or IndexPQ (the reference's --index_path case)
    passage_embeddings: np.ndarray,  # np.memmap of the corpus (for PQ: the index's decoded vectors)
    all_rel_poffsets: Sequence[Sequence[int]],
    neg_topk: int = 200,
    metric_cut: Optional[int] = 10,
    sigma: float = 1.0,
) -> torch.Tensor:
    """Loss of one batch (``loss.backward()`` is left to the caller, as line 242 follows this)."""
    train_batch_size = query_embeddings.shape[0]
    gradient_accumulation_steps = 1
    tr_mrr = tr_recall = 0.0  # the reference's running training statistics (lines 202-207), kept: same work

    # lines 194-195: top-k of the detached query embeddings
    I_nearest_neighbor = index.search(query_embeddings.detach().cpu().numpy(), neg_topk)[1]

    loss = 0  # line 196
    for retrieve_poffsets, cur_rel_poffsets, qembedding in zip(  # lines 197-198
            I_nearest_neighbor, all_rel_poffsets, query_embeddings):
        target_labels = np.isin(retrieve_poffsets, cur_rel_poffsets).astype(np.int32)  # line 200

        first_rel_pos = np.where(target_labels[:10])[0]  # lines 202-207: MRR@10 / recall@10 statistics
        mrr = 1 / (1 + first_rel_pos[0]) if len(first_rel_pos) > 0 else 0
        tr_mrr += mrr / train_batch_size
        recall = 1 if mrr > 0 else 0
        tr_recall += recall / train_batch_size

        if np.sum(target_labels) == 0:  # lines 209-211: append the positives only when none was retrieved
            retrieve_poffsets = np.hstack([retrieve_poffsets, cur_rel_poffsets])
            target_labels = np.hstack([target_labels, [True] * len(cur_rel_poffsets)])

        target_labels = target_labels.reshape(-1, 1)  # lines 213-220: K x K relevance-difference masks
        rel_diff = target_labels - target_labels.T
        pos_pairs = (rel_diff > 0).astype(np.float32)
        num_pos_pairs = np.sum(pos_pairs, (0, 1))

        assert num_pos_pairs > 0
        neg_pairs = (rel_diff < 0).astype(np.float32)
        num_pairs = 2 * num_pos_pairs  # num pos pairs and neg pairs are always the same

        pos_pairs = torch.FloatTensor(pos_pairs)  # lines 222-223 (.to(device) dropped: CPU)
        neg_pairs = torch.FloatTensor(neg_pairs)

        # lines 225-227: gather the K document vectors from the memmap, score them with the query
        topK_passage_embeddings = torch.FloatTensor(passage_embeddings[retrieve_poffsets])
        y_pred = (qembedding.unsqueeze(0) * topK_passage_embeddings).sum(-1, keepdim=True)

        # lines 229-230 with the paper's sign (see the module docstring): rows i, columns j,
        # pos_pairs[i, j] = (i relevant, j not) -> log(1 + exp(sigma * (s_j - s_i))) = softplus(s_neg - s_pos);
        # neg_pairs[i, j] = (i not, j relevant) -> log(1 + exp(sigma * (s_i - s_j))) = softplus(s_neg - s_pos).
        C_pos = torch.log(1 + torch.exp(-sigma * (y_pred - y_pred.t())))
        C_neg = torch.log(1 + torch.exp(sigma * (y_pred - y_pred.t())))

        C = pos_pairs * C_pos + neg_pairs * C_neg  # line 232

        with torch.no_grad():  # lines 234-237 (args.metric set: MRR weights, metric_cut = the cutoff)
            weights = metric_weights(y_pred, metric_cut)
        C = C * weights
        cur_loss = torch.sum(C, (0, 1)) / num_pairs  # line 238: zero-weight pairs count in num_pairs
        loss += cur_loss  # line 239

    loss /= (train_batch_size * gradient_accumulation_steps)  # line 241
    return loss
