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

from drfast.common.checks import check_bool, check_int
from drfast.common.errors import UsageError, UsageTypeError
from drfast.index.faiss_interop import pq_to_faiss
from drfast.index.format import check_rows, doc_id_map, read_array, read_doc_ids, write_index_dir
from drfast.search.dispatch import pq_search
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

    centroids: [m, 256, d/m] float32 torch tensor (trainable by later stages), codes: [N, m] uint8,
    rotation: optional [d, d] orthogonal OPQ matrix R (rows are encoded as PQ(R x); queries are
    rotated the same way, and `reconstruct` maps decoded rows back with R^T).
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
        """Train codebooks with faiss (k-means per sub-space on up to `max_train` rows sampled with
        `seed`; OPQ rotation first when `opq`) and encode every row to uint8 codes."""
        import faiss

        emb = check_embeddings(emb, "emb")
        emb = emb.cpu().numpy() if isinstance(emb, torch.Tensor) else emb
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
        codes = self.codes
        if device.type == "cpu":
            codes = codes.cpu().numpy() if isinstance(codes, torch.Tensor) else codes
        else:
            codes = torch.as_tensor(codes).to(device)
        out = PQIndex.__new__(PQIndex)
        out.centroids, out.codes, out.doc_ids = self.centroids.to(device), codes, self.doc_ids
        out.rotation = None if self.rotation is None else self.rotation.to(device)
        return out

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
               backend: Optional[str] = None, chunk_rows: Optional[int] = None) -> SearchResult:
        """Same contract as FlatIndex.search (k, positives and errors alike); scores are <query,
        reconstruct(row)> up to float rounding, computed as sums of per-query lookup-table entries in one
        pass over the codes. `codes` must still be [N, m] uint8 and the centroids finite (checked per search)."""
        return pq_search(queries, self, k, positives, cutoff, backend, chunk_rows)

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
        arrays = {"codes": self.codes.cpu().numpy() if isinstance(self.codes, torch.Tensor) else self.codes,
                  "centroids": self.centroids.detach().cpu().numpy()}
        if self.rotation is not None:
            arrays["rotation"] = self.rotation.cpu().numpy()
        write_index_dir(path, meta, arrays, self.doc_ids)

    @classmethod
    def _load(cls, path: Path, meta: dict, mmap: bool) -> "PQIndex":
        n, d, m = meta["ntotal"], meta["dim"], meta.get("m")
        if not isinstance(m, int) or m < 1 or d % m:
            raise ValueError(f"{Path(path) / 'meta.json'}: 'm' must be a positive divisor of dim {d}, got {m!r}")
        centroids = read_array(path, "centroids", False, (m, KSUB, d // m), ("float32",))
        codes = read_array(path, "codes", mmap, (n, m), ("uint8",))
        # meta.json says whether there is a rotation: a missing rotation.npy must not load as plain PQ
        rotation = read_array(path, "rotation", False, (d, d), ("float32",)) if meta.get("opq") else None
        return cls(centroids, codes, rotation, read_doc_ids(path, n))
