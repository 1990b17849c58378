"""Document indexes: FlatIndex (float32/float16 rows) and loading saved indexes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from drfast.index.format import check_rows, doc_id_map, read_array, read_doc_ids, write_index_dir
from drfast.search.dispatch import as_tensor, flat_search
from drfast.search.result import SearchResult
from drfast.search.validate import check_embeddings


class FlatIndex:
    """Exact inner-product index over a [N, d] float32 or float16 matrix.

    The matrix is kept as given (numpy, including memmaps, or a torch tensor); non-contiguous
    input is copied once. ``doc_ids`` are the external document ids of the rows (default "0".."N-1").
    """

    kind = "flat"

    def __init__(self, emb: Any, doc_ids: Optional[Sequence[str]] = None):
        self.emb = check_embeddings(emb, "emb")
        self.doc_ids = doc_id_map(doc_ids, self.emb.shape[0])

    @property
    def ntotal(self) -> int:
        return int(self.emb.shape[0])

    @property
    def dim(self) -> int:
        return int(self.emb.shape[1])

    @property
    def dtype(self) -> str:
        return str(self.emb.dtype).replace("torch.", "")

    @property
    def device(self) -> torch.device:
        return self.emb.device if isinstance(self.emb, torch.Tensor) else torch.device("cpu")

    def __repr__(self) -> str:
        return f"FlatIndex(ntotal={self.ntotal}, dim={self.dim}, dtype={self.dtype}, device={self.device})"

    def to(self, device: Any) -> "FlatIndex":
        """A FlatIndex with the same rows on `device` (a torch device; "cpu" keeps numpy storage)."""
        device = torch.device(device)
        if device.type == "cpu":
            emb = self.emb.cpu().numpy() if isinstance(self.emb, torch.Tensor) else self.emb
        else:
            emb = torch.as_tensor(self.emb).to(device)
        out = FlatIndex.__new__(FlatIndex)
        out.emb, out.doc_ids = emb, self.doc_ids
        return out

    def reconstruct(self, rows: Any) -> torch.Tensor:
        """Rows as a [n, d] float32 torch tensor on the index's device."""
        rows_np = check_rows(rows, self.ntotal)
        # A zero-copy torch view of numpy rows (memmaps too): torch's gather is multi-threaded.
        emb = as_tensor(self.emb)
        return emb[torch.from_numpy(rows_np).to(emb.device)].float()

    def search(self, queries: Any, k: int = 200, positives: Any = None, cutoff: Optional[int] = None,
               backend: Optional[str] = None, chunk_rows: Optional[int] = None) -> SearchResult:
        """Top-k, exact positive ranks and (with `cutoff`) ΔMRR pair weights in one pass.

        queries: [B, d] float32 (numpy or torch; results come back in the same kind, on the queries'
        device). positives: a list of lists of row ids, or a CSR pair (offsets [B+1], ids [nnz]).
        backend: None (native on CPU, torch on GPU), "native", "cuda" or "torch". chunk_rows: rows
        scored per step by the torch backend (default 65536).
        """
        return flat_search(queries, self.emb, k, positives, cutoff, backend, chunk_rows)

    def save(self, path: str | os.PathLike) -> None:
        """Write the index as a folder, atomically (a temp folder renamed into place); an existing
        drfast index at `path` is replaced, anything else there is refused."""
        emb = self.emb.cpu().numpy() if isinstance(self.emb, torch.Tensor) else self.emb
        meta = {"kind": self.kind, "ntotal": self.ntotal, "dim": self.dim, "dtype": str(emb.dtype)}
        write_index_dir(path, meta, {"embeddings": emb}, self.doc_ids)

    @classmethod
    def _load(cls, path: Path, meta: dict, mmap: bool) -> "FlatIndex":
        emb = read_array(path, "embeddings", mmap, (meta["ntotal"], meta["dim"]), (meta.get("dtype", ""),))
        return cls(emb, read_doc_ids(path, meta["ntotal"]))
