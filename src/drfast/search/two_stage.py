"""The exact two-stage search: the first pass (search.first_pass) bounds every (query, row) score,
then the rows the bounds cannot decide are refined and scored exactly. Results are bit-identical to
the exact scan (ids, scores, ranks, weights); `index.last_search_stats` (TwoStageStats) says what it
cost. The native kernel runs on the CPU, the torch path (torch_two_stage) on any device.

The algorithm (csrc/cpu/two_stage.cpp; search.two_stage_torch does the same in chunks)
-------------------------------------------------------------------------------------------
Top-k: per query (and CPU thread) the rows with hi >= L are candidates, L being the k-th largest
lower bound among the candidates so far (k distinct rows score >= L, so a row with hi < L cannot
enter the top-k; every row whose lo exceeds L is itself a candidate, so no other row could raise L).
A candidate is refined (int8) and kept as its interval; at the end the candidates are pruned with
the final L and the survivors, about k, are scored with the exact scan's pair scorer (bit-identical
scores) and ordered as the exact scan orders them. (When ties make the intervals unprunable, a
buffer is scored exactly and compacted like the exact scan's TopKBuffer.)
Ranks: a row with lo > s_p ranks before positive p, one with hi < s_p after it; rows with
lo <= s_p <= hi are refined, then scored exactly and counted with the tie rule by row id.
Memory stays O(B (k + block)) per thread; nothing of size [B, N] is built.

With a rank depth D (rank_depth), a positive stops being refined or rescored as soon as the rows
counted before it show its rank exceeds D; its rank is then reported as D + 1 (the native kernel
decides per thread on the rows that thread has counted, the torch path after each chunk).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from drfast import _C
from drfast.common.arrays import as_tensor, to_numpy
from drfast.search.backend import (SearchRequest, ValidRequest, finish, host_arrays, memory_guard, on_device,
                                   run_native, validate)
from drfast.search.first_pass import FirstPassData, QueryCodes, overflow_risk, prepare_queries
from drfast.search.fused import flat_search_request
from drfast.search.native import WORK_PER_POSITIVE, WORK_PER_QUERY
from drfast.search.runtime import fork_safe
from drfast.search.torch_path import FlatChunkScorer
from drfast.search.two_stage_torch import (POS_REFINED, POS_RESCORED, REFINED, RESCORED_RANKS, RESCORED_TOPK,
                                           HostPairScorer, torch_two_stage)


GPU_PLACED_CHUNK = 1 << 18  # rows per step of the placed search on a GPU (bounds [B, chunk] float32)


@dataclass
class TwoStageStats:
    """The work of one two-stage search (``index.last_search_stats``).

    rows_scanned: rows of the first pass per query (N); refined [B]: rows given the second bound;
    rescored_topk / rescored_ranks [B]: exact recomputations for the top-k / for the positives'
    ranks; pos_refined / pos_rescored [nnz]: the same per positive (its undecided band);
    first_pass_bytes: the extra memory of the first-pass copy.
    """
    kind: str
    rows_scanned: int
    refined: np.ndarray
    rescored_topk: np.ndarray
    rescored_ranks: np.ndarray
    pos_refined: np.ndarray
    pos_rescored: np.ndarray
    first_pass_bytes: int
    extra: dict = field(default_factory=dict)

    @property
    def rescored(self) -> np.ndarray:
        """Exact recomputations per query."""
        return self.rescored_topk + self.rescored_ranks


def native_two_stage(q: np.ndarray, docs: np.ndarray, data: FirstPassData, qc: QueryCodes, req: ValidRequest,
                     outputs: tuple) -> TwoStageStats:
    """Runs the native kernel for the validated request `req` (queries `q`, rows `docs` as numpy)
    into preallocated outputs; returns its work counters."""
    work_q = np.zeros((req.B, len(WORK_PER_QUERY)), np.int64)
    work_p = np.zeros((req.nnz, len(WORK_PER_POSITIVE)), np.int64)
    first_pass = {"kind": 0 if data.kind == "int8" else 1, "qcodes": qc.codes, "qparams": qc.params,
                  "codes": data.codes, "stats": data.stats, "sums": data.sums}
    if data.refine:
        first_pass.update(res_qcodes=qc.res_codes, res_qparams=qc.res_params, res_codes=data.res_codes,
                          res_stats=data.res_stats, res_sums=data.res_sums)
    _, given = host_arrays(req)
    _C.two_stage_search(q, docs, req.k, req.offsets, req.ids, req.cutoff, *outputs, first_pass, work_q, work_p,
                        given, req.rank_depth or 0)
    return _stats(data, docs.shape[0], work_q, work_p)


def _stats(data: FirstPassData, N: int, work_q: np.ndarray, work_p: np.ndarray) -> TwoStageStats:
    return TwoStageStats(data.kind, N, work_q[:, REFINED], work_q[:, RESCORED_TOPK], work_q[:, RESCORED_RANKS],
                         work_p[:, POS_REFINED], work_p[:, POS_RESCORED], data.nbytes)


def two_stage_search(queries: Any, docs: Any, data: FirstPassData, k: Any, positives: Any = None,
                     cutoff: Any = None, backend: Optional[str] = None, chunk_rows: Optional[int] = None,
                     pos_scores: Any = None, rank_depth: Optional[int] = None):
    """(SearchResult, TwoStageStats or None): bit-identical to fused.flat_search(queries, docs, ...)
    with the native backend (the exact scan runs instead, stats None, when the bounds could overflow).
    pos_scores, rank_depth: as in fused.flat_search (pos_scores: the sharded search)."""
    request = SearchRequest(queries, k, positives, cutoff, backend, chunk_rows, pos_scores, rank_depth)
    return two_stage_search_request(request, docs, data)


@fork_safe
def two_stage_search_request(request: SearchRequest, docs: Any, data: FirstPassData):
    """two_stage_search of a SearchRequest. `data` as torch tensors with the rows on the host (see
    FirstPassData.placed_on) runs the placed search (placed_two_stage), whatever the backend."""
    N, d = docs.shape
    on_device_rows = isinstance(docs, torch.Tensor) and docs.device.type != "cpu"
    placed = isinstance(data.codes, torch.Tensor) and not on_device_rows
    req = validate(request, d, N, on_device_rows and docs.is_cuda)
    qc = prepare_queries(req.queries, data)
    if overflow_risk(qc, data):
        return flat_search_request(request, docs), None
    with memory_guard(req):
        if placed:
            result, stats = placed_two_stage(req, docs, data, qc)
        else:
            result, stats = _two_stage_backend(req, docs, data, qc)
    return finish(result, req, N), stats


def _two_stage_backend(req: ValidRequest, docs: Any, data: FirstPassData, qc: QueryCodes):
    if req.backend == "native":
        q, _ = host_arrays(req)
        docs_np, data_np = to_numpy(docs), data.to(torch.device("cpu"))
        box = {}
        result = run_native(lambda *out: box.setdefault("s", native_two_stage(q, docs_np, data_np, qc, req, out)),
                            req)
        return result, box["s"]
    # on a GPU ("cuda" or "torch") the two-stage search is the torch path (torch._int_mm / bf16 matmul)
    docs_t = as_tensor(docs)
    q, off_t, ids_t, given = on_device(req, docs_t.device)
    result, work_q, work_p = torch_two_stage(FlatChunkScorer(q, docs_t), data, qc, req.B, req.k, req.cutoff,
                                             (off_t, ids_t, given), req.chunk_rows, req.rank_depth)
    return result, _stats(data, docs_t.shape[0], work_q, work_p)


def placed_two_stage(req: ValidRequest, docs: Any, data: FirstPassData, qc: QueryCodes):
    """The first pass where `data` lives (torch ops on its device, e.g. a GPU), the exact rows `docs`
    on the host (numpy, memmap or a CPU tensor): bounds and the candidates' selection on the device,
    the rows the bounds cannot decide scored on the host by the native exact scan's pair scorer, so
    ids, scores, ranks and weights are bit-identical to the native exact scan."""
    device = data.codes.device
    q, _ = host_arrays(req)
    _, off_t, ids_t, given_t = on_device(req, device)
    scorer = HostPairScorer(q, to_numpy(docs), device)
    # Larger chunks on a GPU: each chunk's undecided pairs make one round trip to the host.
    chunk = req.chunk_rows or (GPU_PLACED_CHUNK if device.type == "cuda" else None)
    result, work_q, work_p = torch_two_stage(scorer, data, qc, req.B, req.k, req.cutoff, (off_t, ids_t, given_t),
                                             chunk, req.rank_depth)
    return result, _stats(data, docs.shape[0], work_q, work_p)
