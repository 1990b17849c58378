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
  (search.dispatch.positive_scores: the native kernels' score_pair, bit-identical to their block
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
  0. meta      all_gather int64 [5] (B_r, nnz_r, k, cutoff, error flag)            40 (W-1)
  1. queries   all_gather [Bmax, d] float32 (flat)  or [Bmax, m, 256] float32 (PQ tables)
                                                                    Bmax d 4 (W-1)  | Bmax m 1024 (W-1)
  2. positives all_gather int64 [Bmax + max nnz_r]  (per-query counts, global ids)  (Bmax + nnzmax) 8 (W-1)
  3. scores    all_reduce int32 [nnz + 1]: owners' positive scores (float bits), error flag
                                                                                   ~2 (nnz + 1) 4 (W-1)/W
  4. local search over all B queries (top-k_s, counts of rows before each positive)
  5. counts    all_reduce int64 [nnz + 1] (+ error flag)                           ~2 (nnz + 1) 8 (W-1)/W
  6. top-k     all_to_all float32 + int64: shard s sends rank r its [B_r, k_s]     (B - B_s) k_s 12
  7. merge per rank: first k of W k_s candidates, ranks = 1 + counts, pair weights (no communication)
`reconstruct(rows)` (collective, each rank its own global rows): all_to_all of the per-owner counts
and row ids (n 8), then of the rows (flat: n d 4 float32) or their codes (PQ: n m uint8, decoded by
the requesting rank with its own centroids, so gradients reach its centroids).
A search that fails on one rank (bad arguments, overflow) raises on every rank instead of hanging:
the failing rank its own error, the others a RuntimeError naming it.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, Optional, Sequence

import numpy as np
import torch

from drfast.common.distributed import current, slice_of
from drfast.common.errors import UsageError, UsageTypeError
from drfast.index.flat import FlatIndex
from drfast.index.format import check_rows, doc_id_map
from drfast.index.pq import PQIndex
from drfast.index.spec import parse_index_spec
from drfast.search.dispatch import as_tensor, choose_backend, flat_search, pq_search, positive_scores
from drfast.search.result import SearchResult
from drfast.search.torch_path import ordered_topk, pair_weights
from drfast.search.two_stage import two_stage_search
from drfast.search.validate import check_cutoff, check_k, check_positives, check_queries

_KINDS = {"flat": 0, "pq": 1}


def _dist():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ShardedIndex: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group first (in a single process, search the index itself)")
    return dist


class ShardedIndex:
    """The rows of every rank's `local_index`, in rank order, as one index (see the module docstring).

    local_index: a FlatIndex (first_pass or not) or a PQIndex; the same kind, dim (and dtype / PQ
    codebooks) on every rank. group: the torch.distributed process group (None: the default group).
    Construction is collective (it gathers the ranks' sizes). Attributes: ntotal (global rows), dim,
    row_offset and local_rows (this rank's global range), sizes (every rank's ntotal),
    last_search_stats (per step of the last search: seconds and bytes this rank sent).
    The global doc ids are not gathered: `local_index.doc_ids` names rows local_rows; `doc_ids`
    (optional, the same on every rank) names all ntotal rows and is kept as `self.doc_ids` (a DocIdMap,
    compact: what the evaluation pipelines translate the global rows of results with).
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
        self.last_search_stats: Optional[dict] = None
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
            fp = index._first_pass
            local = FlatIndex(index.emb[lo:hi], first_pass=index.first_pass, refine=fp is None or fp.refine)
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
    def local_rows(self) -> range:
        """This rank's global rows."""
        return range(self.row_offset, self.row_offset + self.local.ntotal)

    def __repr__(self) -> str:
        return (f"ShardedIndex(ntotal={self.ntotal}, dim={self.dim}, rank={self.rank}/{self.world}, "
                f"local_rows={self.local_rows.start}..{self.local_rows.stop}, local={self.local!r})")

    def _fingerprint(self) -> int:
        """What must agree across shards: the PQ codebooks, or the flat rows' dtype."""
        h = hashlib.sha256()
        if isinstance(self.local, PQIndex):
            h.update(self.local.centroids.detach().cpu().numpy().tobytes())
            if self.local.rotation is not None:
                h.update(self.local.rotation.cpu().numpy().tobytes())
        else:
            h.update(self.local.dtype.encode())
        return int.from_bytes(h.digest()[:7], "little")

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

    def _raise_if_failed(self, flags: torch.Tensor, error: Optional[BaseException], step: str) -> None:
        """Every rank raises when any rank failed (its own error, or a RuntimeError naming the ranks)."""
        failed = [r for r, f in enumerate(flags.tolist()) if f]
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(f"search: {step} failed on rank(s) {failed} (see the error raised there)")

    # ---- search -----------------------------------------------------------------------------------
    def _check_local(self, queries: Any, k: Any, positives: Any, cutoff: Any, backend: Optional[str]):
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
        offsets, ids = check_positives(positives, q.shape[0], self.ntotal)
        on_cuda = self.local.device.type == "cuda"
        if backend == "cuda":
            raise NotImplementedError("backend: the CUDA kernel does not take given positive scores yet; the "
                                      "sharded search runs 'torch' on a GPU (the default there)")
        backend = choose_backend("torch" if backend is None and on_cuda else backend, on_cuda)
        return q, k, cutoff, offsets, ids, backend

    def search(self, queries: Any, k: int = 200, positives: Any = None, cutoff: Optional[int] = None,
               backend: Optional[str] = None, chunk_rows: Optional[int] = None) -> SearchResult:
        """Collective: this rank's queries [B, d] float32 (B may be 0) and positives in GLOBAL row ids
        (as in FlatIndex.search); returns this rank's result over all ranks' rows, bit-identical to
        one index over all rows. k and cutoff must be the same on every rank. backend: None (native
        on the CPU, torch on a GPU), "native" or "torch" ("cuda": NotImplementedError)."""
        stats = {"seconds": {}, "bytes_sent": {}}
        clock = [time.perf_counter()]
        W = self.world

        def lap(step: str, nbytes: float) -> None:
            if self.comm_device.type == "cuda":
                torch.cuda.synchronize(self.comm_device)
            now = time.perf_counter()
            stats["seconds"][step] = stats["seconds"].get(step, 0.0) + now - clock[0]
            stats["bytes_sent"][step] = stats["bytes_sent"].get(step, 0) + int(nbytes)
            clock[0] = now

        # 0. Arguments, checked on every rank before any collective that depends on them.
        error = None
        try:
            q, k, cutoff, offsets, ids, backend = self._check_local(queries, k, positives, cutoff, backend)
        except Exception as e:  # noqa: BLE001 (re-raised below, on every rank)
            error, q, k, cutoff, offsets, ids = e, None, 0, 0, np.zeros(1, np.int64), np.zeros(0, np.int64)
        B, nnz = (0 if q is None else q.shape[0]), ids.shape[0]
        meta = self._all_gather_equal(torch.tensor([B, nnz, k, cutoff, error is not None], dtype=torch.int64)).cpu()
        self._raise_if_failed(meta[:, 4], error, "argument checking")
        for j, name in ((2, "k"), (3, "cutoff")):
            if not bool((meta[:, j] == meta[0, j]).all()):
                raise UsageError(name, f"must be the same on every rank, got {meta[:, j].tolist()}")
        Bs, nnzs = meta[:, 0].tolist(), meta[:, 1].tolist()
        Bmax, nnzmax, B_all, nnz_all = max(Bs), max(nnzs), sum(Bs), sum(nnzs)
        lap("meta", 40 * (W - 1))
        dev = self.local.device

        # 1. Queries (flat) or the owners' lookup tables (PQ), padded to Bmax.
        if self.kind == "pq":
            m = self.local.m
            pay = torch.zeros(Bmax, m, 256)
            if B:
                pay = torch.cat([self.local.lookup_tables(q.to(dev)).to(pay.device), torch.zeros(Bmax - B, m, 256)])
        else:
            pay = torch.zeros(Bmax, self.dim)
            pay[:B] = q.to(pay.device)
        gathered = self._all_gather_equal(pay)
        allq = torch.cat([gathered[r, : Bs[r]] for r in range(W)]).to(dev)
        lap("queries", pay.numel() * 4 * (W - 1))

        # 2. Positives: per-query counts and global ids.
        pay = torch.zeros(Bmax + nnzmax, dtype=torch.int64)
        pay[:B] = torch.from_numpy(np.diff(offsets))
        pay[Bmax : Bmax + nnz] = torch.from_numpy(ids)
        gathered = self._all_gather_equal(pay).cpu().numpy()
        counts_q = np.concatenate([gathered[r, : Bs[r]] for r in range(W)])
        off_all = np.zeros(B_all + 1, np.int64)
        np.cumsum(counts_q, out=off_all[1:])
        ids_all = np.concatenate([gathered[r, Bmax : Bmax + nnzs[r]] for r in range(W)]).astype(np.int64)
        pstart = int(sum(nnzs[: self.rank]))
        lap("positives", pay.numel() * 8 * (W - 1))

        # 3. Owners score their positives once; shared bit for bit.
        lo, hi = self.row_offset, self.row_offset + self.local.ntotal
        error = None
        bits = torch.zeros(nnz_all + 1, dtype=torch.int32)
        try:
            if nnz_all:
                own = (ids_all >= lo) & (ids_all < hi)
                pos_query = np.repeat(np.arange(B_all), np.diff(off_all))
                sub_off = np.zeros(B_all + 1, np.int64)
                np.cumsum(np.bincount(pos_query[own], minlength=B_all), out=sub_off[1:])
                s = self._positive_scores(allq, sub_off, ids_all[own] - lo, backend)
                bits[:-1][torch.from_numpy(own)] = s.cpu().view(torch.int32)
        except Exception as e:  # noqa: BLE001
            error = e
            bits[-1] = 1
        bits = self._all_reduce_sum(bits).cpu()
        if error is not None:
            raise error
        if int(bits[-1]):
            raise RuntimeError("search: scoring the positives failed on another rank (see the error raised there)")
        pos_scores_all = bits[:-1].view(torch.float32)
        if not bool(torch.isfinite(pos_scores_all).all()):
            raise UsageError("queries/index", "inner products overflowed float32 (scores are NaN or Inf); rescale the embeddings")
        lap("pos_scores", 2 * (nnz_all + 1) * 4 * (W - 1) / W)

        # 4. The local search over every rank's queries, with the given scores.
        k_loc = min(k, self.local.ntotal)
        error = None
        top_s = torch.empty(B_all, k_loc)
        top_i = torch.empty(B_all, k_loc, dtype=torch.int64)
        cnt = torch.zeros(nnz_all + 1, dtype=torch.int64)
        try:
            if B_all:
                res = self._local_search(allq, k_loc, (off_all, ids_all - lo), pos_scores_all, backend, chunk_rows)
                top_s, top_i = res.scores.cpu(), res.ids.cpu() + lo
                cnt[:-1] = res.pos_ranks.cpu() - 1
        except Exception as e:  # noqa: BLE001
            error = e
            cnt[-1] = 1
        lap("local_search", 0)

        # 5. Counts of rows ranking before each positive, summed over the shards.
        cnt = self._all_reduce_sum(cnt).cpu()
        if error is not None:
            raise error
        if int(cnt[-1]):
            raise RuntimeError("search: the local search failed on another rank (see the error raised there)")
        lap("counts", 2 * (nnz_all + 1) * 8 * (W - 1) / W)

        # 6. Each shard's top-k_s of rank r's queries go to rank r.
        k_s = [min(k, n) for n in self.sizes]
        send = [b * k_loc for b in Bs]
        recv = [B * ks for ks in k_s]
        got_s = self._all_to_all(top_s.reshape(-1), send, recv).cpu()
        got_i = self._all_to_all(top_i.reshape(-1), send, recv).cpu()
        lap("topk", (B_all - B) * k_loc * 12)

        # 7. Merge this rank's queries.
        kept = min(k, self.ntotal)
        parts_s, parts_i, at = [], [], 0
        for s_, ks in enumerate(k_s):
            parts_s.append(got_s[at : at + B * ks].reshape(B, ks))
            parts_i.append(got_i[at : at + B * ks].reshape(B, ks))
            at += B * ks
        best_s, best_i = ordered_topk(torch.cat(parts_s, 1), torch.cat(parts_i, 1), kept)
        out_ids = torch.full((B, k), -1, dtype=torch.int64)
        out_scores = torch.full((B, k), float("-inf"))
        out_ids[:, :kept], out_scores[:, :kept] = best_i, best_s
        off_t = torch.from_numpy(offsets)
        ids_t = torch.from_numpy(ids)
        ranks = cnt[pstart : pstart + nnz] + 1
        weights = None
        if cutoff:
            pos_query = torch.repeat_interleave(torch.arange(B), off_t.diff())
            weights = pair_weights(out_ids, pos_query, ids_t, ranks, cutoff)
        result = SearchResult(ids=out_ids, scores=out_scores, pos_offsets=off_t, pos_ids=ids_t,
                              pos_scores=pos_scores_all[pstart : pstart + nnz].clone(), pos_ranks=ranks,
                              pair_weights=weights)
        lap("merge", 0)
        stats["seconds"]["total"] = sum(stats["seconds"].values())
        stats["bytes_sent"]["total"] = sum(stats["bytes_sent"].values())
        self.last_search_stats = stats
        if isinstance(queries, torch.Tensor):
            return SearchResult(**{f: None if v is None else v.to(queries.device) for f, v in vars(result).items()})
        return SearchResult(**{f: None if v is None else v.numpy() for f, v in vars(result).items()})

    def _positive_scores(self, allq: torch.Tensor, offsets: np.ndarray, local_ids: np.ndarray,
                         backend: str) -> torch.Tensor:
        """The owned positives' scores (local ids in range), as this shard's search computes them."""
        if isinstance(self.local, PQIndex):
            return positive_scores("pq", allq, self.local.codes, offsets, local_ids, backend)
        return positive_scores("flat", allq, self.local.emb, offsets, local_ids, backend)

    def _local_search(self, allq: torch.Tensor, k: int, positives: tuple, pos_scores: torch.Tensor,
                      backend: str, chunk_rows: Optional[int]) -> SearchResult:
        local = self.local
        if isinstance(local, PQIndex):
            return pq_search(None, local, k, positives, None, backend, chunk_rows, pos_scores, luts=allq)
        if local._first_pass is not None:
            result, local.last_search_stats = two_stage_search(allq, local.emb, local._first_pass, k, positives, None,
                                                               backend, chunk_rows, pos_scores)
            return result
        return flat_search(allq, local.emb, k, positives, None, backend, chunk_rows, pos_scores)

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
            shared = (full.centroids.numpy(), None if full.rotation is None else full.rotation.numpy())
            parts = [(shared, full.codes[slice(*slice_of(full.ntotal, r, ctx.world_size))])
                     for r in range(ctx.world_size)]
    except Exception as e:  # noqa: BLE001 (raised on every rank by check_all)
        error = e
    ctx.check_all(error, "training the PQ codebooks")
    (centroids, rotation), codes = ctx.scatter(parts)
    return ShardedIndex(PQIndex(centroids, codes, rotation), doc_ids=doc_ids)

