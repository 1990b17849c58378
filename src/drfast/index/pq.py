"""PQIndex: product-quantized document index with faiss-trained codebooks and the fused PQ search."""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from drfast.common.arrays import as_tensor, to_numpy
from drfast.common.checks import check_bool, check_int
from drfast.common.errors import UsageError, UsageTypeError
from drfast.index.faiss_interop import pq_to_faiss
from drfast.index.format import PathLike, check_rows, doc_id_map, read_array, read_doc_ids, read_meta, write_index_dir
from drfast.search.backend import SearchRequest
from drfast.search.fused import pq_search, pq_search_request
from drfast.search.result import SearchResult
from drfast.search.validate import check_embeddings

KSUB = 256  # 8-bit codes


class _GatherRows(torch.autograd.Function):
    """table[idx] (rows), whose backward is one index_add_: on the CPU, advanced indexing's forward
    and its accumulating backward took 2x as long for a JPQ step's decode (6,432 rows x 96 parts)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.rows = table.shape[0]
        return table.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        return grad.new_zeros((ctx.rows,) + tuple(grad.shape[1:])).index_add_(0, idx, grad), None


@contextlib.contextmanager
def _faiss_quiet():
    """Silence faiss's C++ stderr (its clustering prints warnings on its own) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class PQIndex:
    """Inner-product index over PQ codes: scores are <query, decoded row> (asymmetric distance).

    Build one with `PQIndex.train` (faiss codebooks) or from faiss with `drfast.load_faiss_index`.
    Search results follow the fused-search contract (docs/concepts/fused-search.md); a positive's
    score equals the dot product with its `reconstruct`-ed row up to float rounding.

    Parameters
    ----------
    centroids : torch.Tensor, float32 [m, 256, d/m]
        The codebooks (trainable by later stages: JPQ).
    codes : array or tensor, uint8 [N, m]
        Each row's code.
    rotation : array or tensor, float32 [d, d], optional
        An orthogonal OPQ matrix R: rows are encoded as PQ(R x), queries are rotated the same way,
        and `reconstruct` maps decoded rows back with R^T.
    doc_ids : sequence of str, optional
        The external document ids of the rows (default "0" .. "N-1").

    Examples
    --------
    >>> import warnings, numpy as np, drfast
    >>> rng = np.random.default_rng(0)
    >>> emb = rng.standard_normal((1000, 16)).astype(np.float32)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # 1,000 rows: fewer than faiss recommends for 256 centroids
    ...     index = drfast.PQIndex.train(emb, m=4, seed=0)
    >>> index
    PQIndex(ntotal=1000, dim=16, m=4, opq=False, device=cpu)
    >>> q = rng.standard_normal((2, 16)).astype(np.float32)
    >>> res = index.search(q, k=5, positives=[[3], [10]])
    >>> decoded = index.reconstruct([3, 10]).numpy()
    >>> bool(np.allclose(res.pos_scores, (q * decoded).sum(1), atol=1e-5))
    True
    """

    kind = "pq"

    def __init__(self, centroids: Any, codes: Any, rotation: Any = None, doc_ids: Optional[Sequence[str]] = None):
        self.centroids = torch.as_tensor(centroids, dtype=torch.float32)
        if self.centroids.ndim != 3 or self.centroids.shape[1] != KSUB:
            raise UsageError("centroids", f"expected shape [m, {KSUB}, dsub], got {tuple(self.centroids.shape)}")
        if not torch.isfinite(self.centroids).all():
            raise UsageError("centroids", "contains NaN or Inf")
        m = self.centroids.shape[0]
        if isinstance(codes, torch.Tensor):
            codes = codes if codes.is_cuda else codes.numpy()
        if not isinstance(codes, (np.ndarray, torch.Tensor)):
            raise UsageTypeError("codes", f"expected a uint8 numpy array or torch tensor [N, {m}], got {type(codes).__name__}")
        if codes.dtype not in (np.uint8, torch.uint8):
            raise UsageTypeError("codes", f"expected dtype uint8, got {codes.dtype}")
        if codes.ndim != 2 or codes.shape[1] != m or codes.shape[0] == 0:
            raise UsageError("codes", f"expected shape [N >= 1, m={m}], got {tuple(codes.shape)}")
        self.codes = codes if isinstance(codes, torch.Tensor) else np.ascontiguousarray(codes)
        self.rotation = None if rotation is None else torch.as_tensor(rotation, dtype=torch.float32)
        if self.rotation is not None and tuple(self.rotation.shape) != (self.dim, self.dim):
            raise UsageError("rotation", f"expected shape [{self.dim}, {self.dim}], got {tuple(self.rotation.shape)}")
        self.doc_ids = doc_id_map(doc_ids, self.ntotal)

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def train(cls, emb: Any, m: int = 48, nbits: int = 8, seed: int = 0, opq: bool = False,
              max_train: int = 65536, doc_ids: Optional[Sequence[str]] = None) -> "PQIndex":
        """Train codebooks with faiss and encode every row to uint8 codes.

        Parameters
        ----------
        emb : array or tensor, float32 or float16 [N, d]
            The rows.
        m : int
            Sub-quantizers (bytes per row); d must be a multiple of m.
        nbits : int
            Bits per sub-quantizer code (only 8 is supported).
        seed : int
            The seed of the row sample and of faiss's k-means.
        opq : bool
            Learn an OPQ rotation first.
        max_train : int
            k-means runs per sub-space on up to this many rows, sampled with `seed`.
        doc_ids : sequence of str, optional
            The external document ids of the rows.

        Returns
        -------
        PQIndex
        """
        import faiss

        emb = to_numpy(check_embeddings(emb, "emb"))
        n, d = emb.shape
        if check_int(nbits, "nbits") != 8:
            raise UsageError("nbits", f"only 8-bit codes are supported, got {nbits}")
        m = check_int(m, "m", 1)
        if d % m:
            raise UsageError("m", f"must be a positive divisor of the dimension {d}, got {m}")
        seed = check_int(seed, "seed", 0, 2**31 - 1)  # faiss keeps seeds in a C int
        max_train = check_int(max_train, "max_train", KSUB)
        check_bool(opq, "opq")
        if n < KSUB:
            raise UsageError("emb", f"PQ training needs at least {KSUB} rows (one per centroid), got {n}")
        if opq and min(n, max_train) < d:
            # faiss's OPQMatrix::train sizes a buffer [n, d] that receives a [d, d] product: with fewer
            # rows than dimensions it writes past the buffer and aborts (or spins) inside faiss.
            param = "emb" if n < d else "max_train"
            raise UsageError(param, f"OPQ training needs at least as many rows as dimensions ({d}), got "
                             f"{min(n, max_train)} ({'rows' if n < d else 'max_train'}); use pq:{m} (no rotation) "
                             f"or {'more rows' if n < d else f'max_train >= {d}'}")
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, max_train), replace=False))
        train_x = np.ascontiguousarray(emb[sample], dtype=np.float32)
        if len(sample) < 39 * KSUB:
            warnings.warn(f"PQ codebooks trained on {len(sample)} rows; faiss recommends at least {39 * KSUB} "
                          "(39 per centroid), so expect a larger quantization loss", stacklevel=2)
        rotation = None
        with _faiss_quiet():  # faiss prints that same advice once per sub-quantizer
            if opq:
                opq_matrix = faiss.OPQMatrix(d, m)
                opq_matrix.verbose = False
                opq_matrix.train(train_x)
                rotation = faiss.vector_to_array(opq_matrix.A).reshape(d, d).astype(np.float32)
                train_x = train_x @ rotation.T
            pq = faiss.ProductQuantizer(d, m, nbits)
            pq.cp.seed = seed
            pq.train(np.ascontiguousarray(train_x))
        centroids = faiss.vector_to_array(pq.centroids).reshape(m, KSUB, d // m)
        codes = np.empty((n, m), np.uint8)
        for i in range(0, n, 65536):  # chunked: the float32 copy of one chunk at a time
            x = np.ascontiguousarray(emb[i:i + 65536], dtype=np.float32)
            codes[i:i + len(x)] = pq.compute_codes(np.ascontiguousarray(x @ rotation.T) if opq else x)
        return cls(centroids, codes, rotation, doc_ids)

    # ---- properties -------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.codes.shape[0])

    @property
    def m(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[0] * self.centroids.shape[2])

    @property
    def device(self) -> torch.device:
        return self.centroids.device

    def __repr__(self) -> str:
        return (f"PQIndex(ntotal={self.ntotal}, dim={self.dim}, m={self.m}, opq={self.rotation is not None}, "
                f"device={self.device})")

    def to(self, device: Any) -> "PQIndex":
        """The same index with centroids and codes on `device` ("cpu" keeps numpy codes)."""
        device = torch.device(device)
        codes = to_numpy(self.codes) if device.type == "cpu" else as_tensor(self.codes).to(device)
        rotation = None if self.rotation is None else self.rotation.to(device)
        return PQIndex(self.centroids.to(device), codes, rotation, self.doc_ids)  # doc ids shared, not copied

    # ---- scoring ----------------------------------------------------------------------------
    def lookup_tables(self, queries: torch.Tensor) -> torch.Tensor:
        """[B, m, 256] float32: <j-th sub-vector of the (rotated) query, centroid c of sub-space j>."""
        q = queries.float()
        if self.rotation is not None:
            q = q @ self.rotation.T
        q = q.reshape(q.shape[0], self.m, -1)
        with torch.no_grad():
            return torch.einsum("bjd,jcd->bjc", q, self.centroids.detach()).contiguous()

    def reconstruct(self, rows: Any) -> torch.Tensor:
        """Decoded rows [n, d] float32 in the original space, differentiable w.r.t. `centroids`."""
        rows_np = check_rows(rows, self.ntotal)
        rows_t = torch.from_numpy(rows_np).to(self.device)
        codes = self.codes[rows_t] if isinstance(self.codes, torch.Tensor) else torch.from_numpy(self.codes[rows_np])
        return self.decode(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Decoded vectors [n, d] float32 of uint8 codes [n, m] (a torch tensor), differentiable w.r.t.
        `centroids` (the sharded index fetches codes from their shard and decodes them here)."""
        codes = codes.to(self.device).long()                                     # [n, m]
        flat = codes + torch.arange(self.m, device=self.device) * KSUB           # rows of [m * 256, dsub]
        table = self.centroids.reshape(self.m * KSUB, -1)
        x = _GatherRows.apply(table, flat.reshape(-1)).reshape(codes.shape[0], self.dim)
        return x if self.rotation is None else x @ self.rotation

    def search(self, queries: Any, k: int = 200, positives: Any = None, cutoff: Optional[int] = None,
               backend: Optional[str] = None, chunk_rows: Optional[int] = None,
               rank_depth: Optional[int] = None) -> SearchResult:
        """Same contract as FlatIndex.search (k, positives, rank_depth and errors alike); scores are <query,
        reconstruct(row)> up to float rounding, computed as sums of per-query lookup-table entries in one
        pass over the codes. `codes` must still be [N, m] uint8 and the centroids finite (checked per search)."""
        return pq_search(queries, self, k, positives, cutoff, backend, chunk_rows, rank_depth=rank_depth)

    def search_request(self, request: SearchRequest, luts: Any = None) -> SearchResult:
        """`search` of a search.backend.SearchRequest, which may also give the positives' scores
        (`pos_scores`) and, in `luts`, the lookup tables of the queries (the sharded search's local step:
        tables computed by the rank that owns each query; request.queries may then be None)."""
        return pq_search_request(request, self, luts)

    # ---- persistence ------------------------------------------------------------------------
    def to_faiss(self):
        """faiss.IndexPQ (inner product) with the same centroids and codes, inside
        IndexPreTransform(OPQMatrix) when the index has a rotation; load_faiss_index reads it back."""
        return pq_to_faiss(self.centroids, self.codes, self.rotation)

    def save(self, path: str | os.PathLike) -> None:
        """Write the index as a folder, atomically; an existing drfast index at `path` is replaced,
        anything else there is refused."""
        meta = {"kind": self.kind, "ntotal": self.ntotal, "dim": self.dim, "m": self.m, "nbits": 8,
                "opq": self.rotation is not None}
        arrays = {"codes": to_numpy(self.codes), "centroids": to_numpy(self.centroids)}
        if self.rotation is not None:
            arrays["rotation"] = to_numpy(self.rotation)
        write_index_dir(path, meta, arrays, self.doc_ids)

    @classmethod
    def load(cls, path: PathLike, mmap: bool = True, meta: Optional[dict] = None) -> "PQIndex":
        """The PQIndex saved in the folder `path` (codes memory-mapped when `mmap`; `meta`: its
        meta.json, read when None)."""
        meta = read_meta(path) if meta is None else meta
        n, d, m = meta["ntotal"], meta["dim"], meta.get("m")
        if not isinstance(m, int) or m < 1 or d % m:
            raise ValueError(f"{Path(path) / 'meta.json'}: 'm' must be a positive divisor of dim {d}, got {m!r}")
        centroids = read_array(path, "centroids", False, (m, KSUB, d // m), ("float32",))
        codes = read_array(path, "codes", mmap, (n, m), ("uint8",))
        # meta.json says whether there is a rotation: a missing rotation.npy must not load as plain PQ
        rotation = read_array(path, "rotation", False, (d, d), ("float32",)) if meta.get("opq") else None
        return cls(centroids, codes, rotation, read_doc_ids(path, n))
