"""ShardedIndex: one index over the rows of every torch.distributed rank, searched exactly.

Each rank holds a contiguous range of the global rows, in rank order, as a FlatIndex (with or
without a two-stage first pass) or a PQIndex (the same codebooks on every rank); rank r's rows
start at the sum of the previous ranks' ntotal. `search` is collective: every rank passes its own
queries (its own B, which may differ per rank and be 0) and positives in GLOBAL row ids, and gets
the result for its own queries bit-identical to one index over all rows: ids, scores, pos_scores,
pos_ranks (1 + #{r : s_r > s_p or (s_r == s_p and r < p)} over the whole corpus) and pair_weights.
`ShardedIndex` needs an initialised process group (RuntimeError otherwise; a single process
searches its index directly). Works with gloo on the CPU and NCCL (tensors on the GPU).

Why it is exact
---------------
- A positive's score is computed ONCE, by the shard that owns it, with the scan's own pair scorer
  (search.fused.positive_scores: the native kernels' score_pair, bit-identical to their block
  scan; the exact score for a two-stage index), and shared bit for bit (an integer sum of the float
  bits with zeros). Every shard then scans with these given scores (search kernels' pos_scores_in)
  and counts its rows ranking before each positive. A positive of another shard is passed as the
  local id p - row_offset (negative or >= N_local, never read), so r_local < p_local iff
  r_global < p_global and the kernels' tie rule is the global one. rank = 1 + the sum of the counts.
- The global top-k is the first k of the union of the shards' top-min(k, N_s), ordered by (score
  desc, global row asc), the kernels' order; padding (-1, -inf) past the global N.
- Pair weights: search.torch_path.pair_weights, the kernels' formula in float32 (tested bit for bit).
- Flat shards scan the gathered queries: the native scores of a (query, row) pair do not depend on
  the batch. PQ shards scan lookup tables computed by the rank that owns the query, from its own
  batch, exactly as its single-index search would (BLAS results may depend on the batch size).
  The torch path (GPU default) is exact for PQ; for flat rows its matmul may round differently per
  batch shape, as between two torch-path searches of different batches (exact on integer data).

Protocol of one search, with the bytes each rank sends (W ranks, B_r queries and nnz_r positives on
rank r, B = sum B_r, nnz = sum nnz_r, Bmax = max B_r, k_s = min(k, N_s); ring collectives):
  0. meta      all_gather int64 [4 + W] (B_r, nnz_r, k, cutoff, W failure flags)  (4 + W) 8 (W-1)
  1. queries   all_gather [Bmax, d] float32 (flat)  or [Bmax, m, 256] float32 (PQ tables)
                                                                    Bmax d 4 (W-1)  | Bmax m 1024 (W-1)
  2. positives all_gather int64 [Bmax + max nnz_r]  (per-query counts, global ids)  (Bmax + nnzmax) 8 (W-1)
  3. scores    all_reduce int32 [nnz + W]: owners' positive scores (float bits), failure flags
                                                                                   ~2 (nnz + W) 4 (W-1)/W
  4. local search over all B queries (top-k_s, counts of rows before each positive)
  5. counts    all_reduce int64 [nnz + W] (+ failure flags)                        ~2 (nnz + W) 8 (W-1)/W
  6. top-k     all_to_all float32 + int64: shard s sends rank r its [B_r, k_s]     (B - B_s) k_s 12
  7. merge per rank: first k of W k_s candidates, ranks = 1 + counts, pair weights (no communication)
`reconstruct(rows)` (collective, each rank its own global rows): all_to_all of the per-owner counts
and row ids (n 8), then of the rows (flat: n d 4 float32) or their codes (PQ: n m uint8, decoded by
the requesting rank with its own centroids, so gradients reach its centroids).
A search that fails on one rank (bad arguments, overflow) raises on every rank instead of hanging:
the failing rank its own error, the others a RuntimeError naming it. Steps 0, 3 and 5 carry W failure
flags (1 at the failing rank's place) inside their own collective, so agreeing costs no extra round
(ShardedIndex._agreed); each step is one method (`_agree_on_arguments` ... `_merge`).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from drfast.common.arrays import as_tensor, to_numpy
from drfast.common.distributed import current, raise_if_failed, slice_of
from drfast.common.errors import UsageError, UsageTypeError
from drfast.index.flat import FlatIndex
from drfast.index.format import check_rows, doc_id_map
from drfast.index.pq import PQIndex
from drfast.index.spec import parse_index_spec
from drfast.search.backend import SearchRequest, choose_backend
from drfast.search.fused import positive_scores
from drfast.search.result import SearchResult
from drfast.search.torch_path import ordered_topk, pair_weights
from drfast.search.validate import check_cutoff, check_k, check_positives, check_queries, check_rank_depth

_KINDS = {"flat": 0, "pq": 1}


@dataclass(frozen=True)
class _Local:
    """This rank's checked search arguments."""
    queries: torch.Tensor
    offsets: np.ndarray
    ids: np.ndarray
    k: int
    cutoff: int
    backend: str
    rank_depth: Optional[int]


@dataclass(frozen=True)
class _Plan:
    """One search over all ranks as agreed in step 0: this rank's arguments, every rank's B and nnz."""
    mine: _Local
    chunk_rows: Optional[int]
    Bs: List[int]
    nnzs: List[int]
    rank: int

    @property
    def k(self) -> int:
        return self.mine.k

    @property
    def B(self) -> int:
        return self.Bs[self.rank]

    @property
    def nnz(self) -> int:
        return self.nnzs[self.rank]

    @property
    def Bmax(self) -> int:
        return max(self.Bs)

    @property
    def nnzmax(self) -> int:
        return max(self.nnzs)

    @property
    def B_all(self) -> int:
        return sum(self.Bs)

    @property
    def nnz_all(self) -> int:
        return sum(self.nnzs)

    @property
    def first_positive(self) -> int:
        """Where this rank's positives start among all ranks' (rank order)."""
        return sum(self.nnzs[: self.rank])


class _Clock:
    """Seconds and bytes this rank sent per step of one search (ShardedIndex.last_search_stats)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.bytes_sent = device, {}, {}
        self.last = time.perf_counter()

    def lap(self, step: str, nbytes: float) -> None:
        if self.device.type == "cuda":  # the collectives run asynchronously on the GPU
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - self.last
        self.bytes_sent[step] = self.bytes_sent.get(step, 0) + int(nbytes)
        self.last = now

    def stats(self) -> dict:
        return {"seconds": {**self.seconds, "total": sum(self.seconds.values())},
                "bytes_sent": {**self.bytes_sent, "total": sum(self.bytes_sent.values())}}


def _dist():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ShardedIndex: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group first (in a single process, search the index itself)")
    return dist


class ShardedIndex:
    """The rows of every rank's `local_index`, in rank order, as one index.

    Each rank holds a contiguous range of the global rows; `search` is collective and returns each
    rank the result for its own queries, bit-identical to one index over all rows (the module
    docstring and docs/concepts/sharded.md give the protocol). Construction is collective too (it
    gathers the ranks' sizes) and needs an initialised torch.distributed process group.

    Parameters
    ----------
    local_index : FlatIndex or PQIndex
        This rank's rows (a FlatIndex with or without a first pass, or a PQIndex); the same kind, dim
        (and dtype / PQ codebooks) on every rank.
    group : torch.distributed group, optional
        The process group (None: the default group).
    doc_ids : sequence of str, optional
        The same on every rank: the ids of all ntotal rows, kept as ``self.doc_ids`` (a compact
        DocIdMap, what the evaluation pipelines translate the global rows of results with). The global
        ids are not gathered otherwise: ``local_index.doc_ids`` names this rank's rows.

    Attributes
    ----------
    ntotal : int
        Global rows.
    dim : int
        The dimension.
    row_offset, local_rows
        This rank's global range.
    sizes : list of int
        Every rank's ntotal.
    last_search_stats : dict
        Per step of the last search: seconds and bytes this rank sent.
    """

    def __init__(self, local_index: Any, group: Any = None, doc_ids: Optional[Sequence[str]] = None):
        dist = _dist()
        if not isinstance(local_index, (FlatIndex, PQIndex)):
            raise UsageTypeError("local_index", f"expected a FlatIndex or PQIndex, got {type(local_index).__name__}")
        self.local = local_index
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.comm_device = (torch.device("cuda", torch.cuda.current_device())
                            if dist.get_backend(group) == "nccl" else torch.device("cpu"))
        self._last_search_stats: Optional[dict] = None
        info = torch.tensor([local_index.ntotal, local_index.dim, _KINDS[local_index.kind], self._fingerprint()],
                            dtype=torch.int64)
        every = self._all_gather_equal(info).cpu()
        kinds, dims, prints = every[:, 2], every[:, 1], every[:, 3]
        if not bool((kinds == kinds[0]).all()):
            raise UsageError("local_index", "every rank needs the same kind of index (FlatIndex or PQIndex), got "
                             f"{['flat' if int(x) == 0 else 'pq' for x in kinds]}")
        if not bool((dims == dims[0]).all()):
            raise UsageError("local_index", f"every rank needs the same dim, got {dims.tolist()}")
        if not bool((prints == prints[0]).all()):
            what = "PQ codebooks (centroids, rotation)" if self.kind == "pq" else "row dtype"
            raise UsageError("local_index", f"the {what} differ across ranks; the shards must be parts of one index")
        self.sizes = [int(x) for x in every[:, 0]]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.row_offset = int(self.offsets[self.rank])
        self.doc_ids = None if doc_ids is None else doc_id_map(doc_ids, self.ntotal)

    @classmethod
    def from_full(cls, index: Any, doc_ids: Optional[Sequence[str]] = None) -> "ShardedIndex":
        """Collective (default group): this rank's rows slice_of(N, rank, W) of `index`, a FlatIndex or
        PQIndex that every rank holds whole (e.g. memory-mapped by load_index: only the slice is read),
        with its doc ids (or `doc_ids`) for all rows. A flat index's first pass is rebuilt for the slice."""
        if not isinstance(index, (FlatIndex, PQIndex)):
            raise UsageTypeError("index", f"expected a FlatIndex or PQIndex, got {type(index).__name__}")
        ctx = current()
        lo, hi = slice_of(index.ntotal, ctx.rank, ctx.world_size)
        if isinstance(index, PQIndex):
            local = PQIndex(index.centroids, index.codes[lo:hi], index.rotation)
        else:
            data = index.first_pass_data
            local = FlatIndex(index.emb[lo:hi], first_pass=index.first_pass_kind, refine=data is None or data.refine)
        return cls(local, doc_ids=index.doc_ids if doc_ids is None else doc_ids)

    # ---- properties -----------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.local.kind

    @property
    def ntotal(self) -> int:
        return int(self.offsets[-1])

    @property
    def dim(self) -> int:
        return self.local.dim

    @property
    def device(self) -> torch.device:
        """Where this rank's rows live (the local index's device)."""
        return self.local.device

    @property
    def local_rows(self) -> range:
        """This rank's global rows."""
        return range(self.row_offset, self.row_offset + self.local.ntotal)

    @property
    def last_search_stats(self) -> Optional[dict]:
        """Per step of the last search: {"seconds": {step: s}, "bytes_sent": {step: bytes}} (this rank)."""
        return self._last_search_stats

    def __repr__(self) -> str:
        return (f"ShardedIndex(ntotal={self.ntotal}, dim={self.dim}, rank={self.rank}/{self.world}, "
                f"local_rows={self.local_rows.start}..{self.local_rows.stop}, local={self.local!r})")

    def _fingerprint(self) -> int:
        """What must agree across shards: the PQ codebooks, or the flat rows' dtype."""
        h = hashlib.sha256()
        if isinstance(self.local, PQIndex):
            h.update(to_numpy(self.local.centroids).tobytes())
            if self.local.rotation is not None:
                h.update(to_numpy(self.local.rotation).tobytes())
        else:
            h.update(self.local.dtype.encode())
        return int.from_bytes(h.digest()[:7], "little")

    def to(self, device: Any) -> "ShardedIndex":
        """Collective: the same sharded index with this rank's rows on `device` (see FlatIndex.to)."""
        return ShardedIndex(self.local.to(device), self.group, self.doc_ids)

    def save(self, path: Any) -> None:
        """Collective: rank 0 of the group writes the whole index, every rank's rows in global order, as
        one FlatIndex / PQIndex folder (load_index reads it, ShardedIndex.from_full shards it again),
        with `doc_ids` when the sharded index has them. The rows are gathered on rank 0 (O(N d) of its
        host memory); a flat index's first pass is rebuilt there over all rows, of the same kind."""
        import torch.distributed as dist

        part = to_numpy(self.local.codes if isinstance(self.local, PQIndex) else self.local.emb)
        parts: Optional[list] = [None] * self.world if self.rank == 0 else None
        dst = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        dist.gather_object(part, parts, dst=dst, group=self.group)
        error = None
        if self.rank == 0:
            try:
                self._whole(np.concatenate(parts)).save(path)
            except Exception as e:  # noqa: BLE001 (raised on every rank below)
                error = e
        flags = self._all_gather_equal(torch.tensor([error is not None], dtype=torch.int64)).cpu()
        raise_if_failed(error, torch.nonzero(flags.flatten()).flatten().tolist(), "save")

    def _whole(self, rows: np.ndarray):
        """The one index of all ranks' rows (codes for PQ) gathered in global order."""
        if isinstance(self.local, PQIndex):
            return PQIndex(self.local.centroids.detach(), rows, self.local.rotation, self.doc_ids)
        data = self.local.first_pass_data
        return FlatIndex(rows, self.doc_ids, first_pass=self.local.first_pass_kind,
                         refine=data is None or data.refine)

    # ---- collectives (tensors on the communication device) ----------------------------------------
    def _all_gather_equal(self, t: torch.Tensor) -> torch.Tensor:
        """[W, *t.shape]: every rank's t (same shape on every rank)."""
        import torch.distributed as dist

        t = t.to(self.comm_device).contiguous()
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t, group=self.group)
        return torch.stack(out)

    def _all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        t = t.to(self.comm_device).contiguous()
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def _all_to_all(self, t: torch.Tensor, send: list, recv: list) -> torch.Tensor:
        """all_to_all_single over dim 0: send[r] rows of t go to rank r, recv[s] rows come from rank s."""
        import torch.distributed as dist

        t = t.to(self.comm_device).contiguous()
        out = torch.empty((sum(recv),) + tuple(t.shape[1:]), dtype=t.dtype, device=self.comm_device)
        dist.all_to_all_single(out, t, recv, send, group=self.group)
        return out

    def _agreed(self, step: str, work: Callable[[], torch.Tensor], size: int, dtype: torch.dtype,
                collective: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Try a step, agree on failure across ranks. Runs this rank's part of `step` (`work()`: a 1-D
        tensor of `size` elements, zeros when it raises) and the step's own `collective` on it with W
        failure flags appended (1 at this rank's place when it failed), so the ranks learn who failed
        without another collective; then every rank raises when any failed (common.distributed.
        raise_if_failed: the failing rank its own error, the others a RuntimeError naming the ranks).
        Returns the collective's output without the flags ([W, size] after a gather, [size] after a sum)."""
        error = None
        try:
            part = work()
        except Exception as e:  # noqa: BLE001 (raised on every rank below)
            error, part = e, torch.zeros(size, dtype=dtype)
        flags = torch.zeros(self.world, dtype=dtype)
        flags[self.rank] = error is not None
        out = collective(torch.cat([part.to(dtype).cpu(), flags])).cpu()
        failed = out.reshape(-1, size + self.world)[:, size:].sum(0)
        raise_if_failed(error, torch.nonzero(failed).flatten().tolist(), f"search: {step}")
        return out[..., :size]

    # ---- search -----------------------------------------------------------------------------------
    def _check_local(self, queries: Any, k: Any, positives: Any, cutoff: Any, backend: Optional[str],
                     rank_depth: Any):
        if isinstance(queries, (np.ndarray, torch.Tensor)) and queries.ndim == 2 and queries.shape[0] == 0:
            if queries.dtype not in (np.float32, torch.float32):
                raise UsageTypeError("queries", f"expected dtype float32, got {queries.dtype}")
            if queries.shape[1] != self.dim:
                raise UsageError("queries", f"expected dimension {self.dim} (the index's), got shape "
                                 f"{tuple(queries.shape)}")
            q = as_tensor(queries).detach()
        else:
            q = as_tensor(check_queries(queries, self.dim))
        k = check_k(k, self.ntotal)
        cutoff = check_cutoff(cutoff, self.ntotal, k)
        depth = check_rank_depth(rank_depth, k, cutoff)
        offsets, ids = check_positives(positives, q.shape[0], self.ntotal)
        on_cuda = self.local.device.type == "cuda"
        if backend == "cuda":
            raise NotImplementedError("backend: the CUDA kernel does not take given positive scores yet; the "
                                      "sharded search runs 'torch' on a GPU (the default there)")
        backend = choose_backend("torch" if backend is None and on_cuda else backend, on_cuda)
        return _Local(q, offsets, ids, k, cutoff, backend, depth)

    def search(self, queries: Any, k: int = 200, positives: Any = None, cutoff: Optional[int] = None,
               backend: Optional[str] = None, chunk_rows: Optional[int] = None,
               rank_depth: Optional[int] = None) -> SearchResult:
        """Collective: this rank's queries [B, d] float32 (B may be 0) and positives in GLOBAL row ids
        (as in FlatIndex.search); returns this rank's result over all ranks' rows, bit-identical to
        one index over all rows. k and cutoff must be the same on every rank. backend: None (native
        on the CPU, torch on a GPU), "native" or "torch" ("cuda": NotImplementedError). rank_depth: as
        in FlatIndex.search (the counts are exact here; ranks past D are reported as D + 1)."""
        clock = _Clock(self.comm_device)
        plan = self._agree_on_arguments(queries, k, positives, cutoff, backend, rank_depth, chunk_rows)
        clock.lap("meta", (4 + self.world) * 8 * (self.world - 1))
        allq = self._gather_queries(plan)
        clock.lap("queries", plan.Bmax * (self.local.m * 256 if self.kind == "pq" else self.dim) * 4 * (self.world - 1))
        off_all, ids_all = self._gather_positives(plan)
        clock.lap("positives", (plan.Bmax + plan.nnzmax) * 8 * (self.world - 1))
        pos_scores_all = self._share_positive_scores(plan, allq, off_all, ids_all)
        clock.lap("pos_scores", 2 * (plan.nnz_all + self.world) * 4 * (self.world - 1) / self.world)
        top_scores, top_ids, before = self._search_shard(plan, allq, off_all, ids_all, pos_scores_all, clock)
        clock.lap("counts", 2 * (plan.nnz_all + self.world) * 8 * (self.world - 1) / self.world)
        shard_scores, shard_ids = self._exchange_topk(plan, top_scores, top_ids)
        clock.lap("topk", (plan.B_all - plan.B) * min(plan.k, self.local.ntotal) * 12)
        result = self._merge(plan, shard_scores, shard_ids, before, pos_scores_all)
        clock.lap("merge", 0)
        self._last_search_stats = clock.stats()
        if isinstance(queries, torch.Tensor):
            return SearchResult(**{f: None if v is None else v.to(queries.device) for f, v in vars(result).items()})
        return SearchResult(**{f: None if v is None else v.numpy() for f, v in vars(result).items()})

    def _agree_on_arguments(self, queries: Any, k: Any, positives: Any, cutoff: Any, backend: Optional[str],
                            rank_depth: Any, chunk_rows: Optional[int]) -> "_Plan":
        """Step 0: every rank checks its arguments, then learns every rank's B and nnz (and that k and
        cutoff agree) before any collective that depends on them."""
        checked = []

        def work() -> torch.Tensor:
            checked.append(self._check_local(queries, k, positives, cutoff, backend, rank_depth))
            mine = checked[0]
            return torch.tensor([mine.queries.shape[0], mine.ids.shape[0], mine.k, mine.cutoff], dtype=torch.int64)

        meta = self._agreed("argument checking", work, 4, torch.int64, self._all_gather_equal)
        for j, name in ((2, "k"), (3, "cutoff")):
            if not bool((meta[:, j] == meta[0, j]).all()):
                raise UsageError(name, f"must be the same on every rank, got {meta[:, j].tolist()}")
        return _Plan(checked[0], chunk_rows, meta[:, 0].tolist(), meta[:, 1].tolist(), self.rank)

    def _gather_queries(self, plan: "_Plan") -> torch.Tensor:
        """Step 1: every rank's queries (flat) or the owners' lookup tables (PQ), padded to Bmax."""
        B, Bmax, dev = plan.B, plan.Bmax, self.local.device
        if self.kind == "pq":
            m = self.local.m
            padded = torch.zeros(Bmax, m, 256)
            if B:
                luts = self.local.lookup_tables(plan.mine.queries.to(dev)).to(padded.device)
                padded = torch.cat([luts, torch.zeros(Bmax - B, m, 256)])
        else:
            padded = torch.zeros(Bmax, self.dim)
            padded[:B] = plan.mine.queries.to(padded.device)
        gathered = self._all_gather_equal(padded)
        return torch.cat([gathered[r, : plan.Bs[r]] for r in range(self.world)]).to(dev)

    def _gather_positives(self, plan: "_Plan") -> Tuple[np.ndarray, np.ndarray]:
        """Step 2: every rank's per-query positive counts and global ids -> the CSR over all queries."""
        Bmax, nnzmax = plan.Bmax, plan.nnzmax
        packed = torch.zeros(Bmax + nnzmax, dtype=torch.int64)
        packed[: plan.B] = torch.from_numpy(np.diff(plan.mine.offsets))
        packed[Bmax : Bmax + plan.nnz] = torch.from_numpy(plan.mine.ids)
        gathered = self._all_gather_equal(packed).cpu().numpy()
        counts = np.concatenate([gathered[r, : plan.Bs[r]] for r in range(self.world)])
        offsets = np.zeros(plan.B_all + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        ids = np.concatenate([gathered[r, Bmax : Bmax + plan.nnzs[r]] for r in range(self.world)]).astype(np.int64)
        return offsets, ids

    def _share_positive_scores(self, plan: "_Plan", allq: torch.Tensor, offsets: np.ndarray,
                               ids: np.ndarray) -> torch.Tensor:
        """Step 3: each positive's owner scores it once; the float bits are summed with zeros, so every
        rank gets them bit for bit."""
        lo, hi = self.row_offset, self.row_offset + self.local.ntotal

        def work() -> torch.Tensor:
            bits = torch.zeros(plan.nnz_all, dtype=torch.int32)
            if plan.nnz_all:
                own = (ids >= lo) & (ids < hi)
                pos_query = np.repeat(np.arange(plan.B_all), np.diff(offsets))
                own_offsets = np.zeros(plan.B_all + 1, np.int64)
                np.cumsum(np.bincount(pos_query[own], minlength=plan.B_all), out=own_offsets[1:])
                scores = self._positive_scores(allq, own_offsets, ids[own] - lo, plan.mine.backend)
                bits[torch.from_numpy(own)] = scores.cpu().view(torch.int32)
            return bits

        bits = self._agreed("scoring the positives", work, plan.nnz_all, torch.int32, self._all_reduce_sum)
        scores = bits.contiguous().view(torch.float32)
        if not bool(torch.isfinite(scores).all()):
            raise UsageError("queries/index", "inner products overflowed float32 (scores are NaN or Inf); rescale "
                             "the embeddings")
        return scores

    def _search_shard(self, plan: "_Plan", allq: torch.Tensor, offsets: np.ndarray, ids: np.ndarray,
                      pos_scores: torch.Tensor, clock: "_Clock"):
        """Steps 4 and 5: this shard's top-min(k, N_s) of every rank's queries with the given positive
        scores, and the rows ranking before each positive, counted per shard and summed over them."""
        k_local = min(plan.k, self.local.ntotal)
        found = []

        def work() -> torch.Tensor:
            before = torch.zeros(plan.nnz_all, dtype=torch.int64)
            if plan.B_all:
                pq = isinstance(self.local, PQIndex)  # PQ: allq holds the owners' lookup tables
                request = SearchRequest(None if pq else allq, k_local, (offsets, ids - self.row_offset), None,
                                        plan.mine.backend, plan.chunk_rows, pos_scores)
                res = self.local.search_request(request, luts=allq) if pq else self.local.search_request(request)
                found.append((res.scores.cpu(), res.ids.cpu() + self.row_offset))
                before = res.pos_ranks.cpu() - 1
            else:
                found.append((torch.empty(0, k_local), torch.empty(0, k_local, dtype=torch.int64)))
            clock.lap("local_search", 0)
            return before

        before = self._agreed("the local search", work, plan.nnz_all, torch.int64, self._all_reduce_sum)
        return found[0][0], found[0][1], before

    def _exchange_topk(self, plan: "_Plan", top_scores: torch.Tensor, top_ids: torch.Tensor):
        """Step 6: shard s sends rank r the top-k_s of r's queries; returns them per shard, in shard order."""
        k_local = min(plan.k, self.local.ntotal)
        k_shards = [min(plan.k, n) for n in self.sizes]
        send = [b * k_local for b in plan.Bs]
        recv = [plan.B * ks for ks in k_shards]
        scores = self._all_to_all(top_scores.reshape(-1), send, recv).cpu()
        ids = self._all_to_all(top_ids.reshape(-1), send, recv).cpu()
        bounds = np.concatenate([[0], np.cumsum(recv)])
        return ([scores[bounds[s] : bounds[s + 1]].reshape(plan.B, ks) for s, ks in enumerate(k_shards)],
                [ids[bounds[s] : bounds[s + 1]].reshape(plan.B, ks) for s, ks in enumerate(k_shards)])

    def _merge(self, plan: "_Plan", shard_scores: list, shard_ids: list, before: torch.Tensor,
               pos_scores: torch.Tensor) -> SearchResult:
        """Step 7: the first k of the shards' candidates, ranks 1 + rows before, pair weights (local)."""
        B, k, kept = plan.B, plan.k, min(plan.k, self.ntotal)
        best_scores, best_ids = ordered_topk(torch.cat(shard_scores, 1), torch.cat(shard_ids, 1), kept)
        out_ids = torch.full((B, k), -1, dtype=torch.int64)
        out_scores = torch.full((B, k), float("-inf"))
        out_ids[:, :kept], out_scores[:, :kept] = best_ids, best_scores
        offsets, ids = torch.from_numpy(plan.mine.offsets), torch.from_numpy(plan.mine.ids)
        mine = slice(plan.first_positive, plan.first_positive + plan.nnz)
        ranks = before[mine] + 1
        weights = None
        if plan.mine.cutoff:
            pos_query = torch.repeat_interleave(torch.arange(B), offsets.diff())
            weights = pair_weights(out_ids, pos_query, ids, ranks, plan.mine.cutoff)
        if plan.mine.rank_depth is not None:  # weights need ranks <= cutoff <= depth only: unchanged
            ranks = ranks.clamp(max=plan.mine.rank_depth + 1)
        return SearchResult(ids=out_ids, scores=out_scores, pos_offsets=offsets, pos_ids=ids,
                            pos_scores=pos_scores[mine].clone(), pos_ranks=ranks, pair_weights=weights)

    def _positive_scores(self, allq: torch.Tensor, offsets: np.ndarray, local_ids: np.ndarray,
                         backend: str) -> torch.Tensor:
        """The owned positives' scores (local ids in range), as this shard's search computes them."""
        if isinstance(self.local, PQIndex):
            return positive_scores("pq", allq, self.local.codes, offsets, local_ids, backend)
        return positive_scores("flat", allq, self.local.emb, offsets, local_ids, backend)

    # ---- rows ---------------------------------------------------------------------------------------
    def reconstruct(self, rows: Any) -> torch.Tensor:
        """Collective: this rank's GLOBAL rows (any number, 0 too) as [n, d] float32 on the local
        index's device, fetched from their shards (PQ: the codes, decoded here with this rank's
        centroids, so differentiable w.r.t. them; flat rows carry no gradient)."""
        rows_np = check_rows(rows, self.ntotal)
        W = self.world
        owner = np.searchsorted(self.offsets, rows_np, side="right") - 1
        order = np.argsort(owner, kind="stable")
        send = np.bincount(owner, minlength=W).astype(np.int64)
        recv = self._all_to_all(torch.from_numpy(send), [1] * W, [1] * W).cpu().tolist()
        send = send.tolist()
        local_rows = torch.from_numpy(rows_np[order] - self.offsets[owner[order]])
        asked = self._all_to_all(local_rows, send, recv).cpu().numpy()
        if isinstance(self.local, PQIndex):
            codes = self.local.codes
            payload = (torch.from_numpy(codes[asked]) if isinstance(codes, np.ndarray)
                       else codes[torch.from_numpy(asked).to(codes.device)])
            vectors = self.local.decode(self._all_to_all(payload, recv, send))
        else:
            payload = self.local.reconstruct(asked)
            vectors = self._all_to_all(payload.detach().float(), recv, send).to(self.local.device)
        inverse = torch.from_numpy(np.argsort(order, kind="stable")).to(vectors.device)
        return vectors[inverse]


def build_sharded_index(emb: Any, doc_ids: Sequence[str], spec: str = "flat", seed: int = 0,
                        first_pass: Any = None) -> ShardedIndex:
    """Collective (default group): the sharded counterpart of index.spec.build_index over `emb`
    [N, d], which every rank holds whole (e.g. the memory-mapped corpus cache). Each rank keeps rows
    slice_of(N, rank, W): flat, a FlatIndex of its rows (with `first_pass`); pq/opq, the codebooks and
    codes rank 0 trains and encodes exactly as build_index does (so the codes equal a single process's),
    the codebooks broadcast and the codes scattered. Errors on one rank raise on every rank."""
    kind, m = parse_index_spec(spec)
    ctx = current()
    lo, hi = slice_of(len(emb), ctx.rank, ctx.world_size)
    if kind == "flat":
        return ShardedIndex(FlatIndex(emb[lo:hi], first_pass=first_pass), doc_ids=doc_ids)
    error, parts = None, None
    try:
        if ctx.is_main:
            full = PQIndex.train(emb, m=m, seed=seed, opq=kind == "opq")
            shared = (to_numpy(full.centroids), None if full.rotation is None else to_numpy(full.rotation))
            parts = [(shared, full.codes[slice(*slice_of(full.ntotal, r, ctx.world_size))])
                     for r in range(ctx.world_size)]
    except Exception as e:  # noqa: BLE001 (raised on every rank by check_all)
        error = e
    ctx.check_all(error, "training the PQ codebooks")
    (centroids, rotation), codes = ctx.scatter(parts)
    return ShardedIndex(PQIndex(centroids, codes, rotation), doc_ids=doc_ids)

