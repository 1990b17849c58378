"""Document indexes: FlatIndex (float32/float16 rows) and loading saved indexes."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from . import ops
from .results import SearchResult

FORMAT_VERSION = 1


class FlatIndex:
    """Exact inner-product index over a [N, d] float32 or float16 matrix.

    The matrix is kept as given (numpy, including memmaps, or a torch tensor); non-contiguous
    input is copied once. ``doc_ids`` are the external document ids of the rows (default "0".."N-1").
    """

    kind = "flat"

    def __init__(self, emb: Any, doc_ids: Optional[Sequence[str]] = None):
        self.emb = ops.check_embeddings(emb, "emb")
        self.doc_ids = _check_doc_ids(doc_ids, self.emb.shape[0])

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
        rows_np = ops.as_int64_vector(rows, "rows")
        if rows_np.size and (rows_np.min() < 0 or rows_np.max() >= self.ntotal):
            raise ValueError(f"rows: ids must be in [0, {self.ntotal})")
        # A zero-copy torch view of numpy rows (memmaps too): torch's gather is multi-threaded.
        emb = self.emb if isinstance(self.emb, torch.Tensor) else ops._as_tensor(self.emb)
        return emb[torch.from_numpy(rows_np).to(emb.device)].float()

    def search(self, queries: Any, k: int = 200, positives: Any = None, cutoff: Optional[int] = None,
               backend: Optional[str] = None) -> SearchResult:
        """Top-k, exact positive ranks and (with `cutoff`) ΔMRR pair weights in one pass.

        queries: [B, d] float32 (numpy or torch; results come back in the same kind, on the queries'
        device). positives: a list of lists of row ids, or a CSR pair (offsets [B+1], ids [nnz]).
        backend: None (native on CPU, torch on GPU), "native", "cuda" or "torch".
        """
        return ops.flat_search(queries, self.emb, k, positives, cutoff, backend)

    def save(self, path: str | os.PathLike) -> None:
        """Write the index as a directory, atomically (a temp directory renamed into place)."""
        emb = self.emb.cpu().numpy() if isinstance(self.emb, torch.Tensor) else self.emb
        meta = {"kind": self.kind, "format_version": FORMAT_VERSION, "ntotal": self.ntotal, "dim": self.dim,
                "dtype": str(emb.dtype)}
        with _atomic_dir(path) as tmp:
            np.save(tmp / "embeddings.npy", emb)
            _write_doc_ids(tmp, self.doc_ids)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def _load(cls, path: Path, mmap: bool) -> "FlatIndex":
        return cls(np.load(path / "embeddings.npy", mmap_mode="r" if mmap else None), _read_doc_ids(path))


def _check_doc_ids(doc_ids: Optional[Sequence[str]], n: int) -> list:
    """External ids of the n rows as strings (default "0".."n-1")."""
    ids = [str(i) for i in range(n)] if doc_ids is None else [str(x) for x in doc_ids]
    if len(ids) != n:
        raise ValueError(f"doc_ids: expected {n} ids (one per row), got {len(ids)}")
    return ids


def _write_doc_ids(folder: Path, doc_ids: Sequence[str]) -> None:
    (folder / "doc_ids.txt").write_text("\n".join(doc_ids) + "\n", encoding="utf-8")


def _read_doc_ids(folder: Path) -> list:
    return (folder / "doc_ids.txt").read_text(encoding="utf-8").split("\n")[:-1]


class _atomic_dir:
    """Context manager yielding a temp directory beside `path` that replaces `path` on success."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def load_index(path: str | os.PathLike, mmap: bool = True):
    """Load a FlatIndex or PQIndex written by `save` (rows / codes memory-mapped by default)."""
    from .pq_index import PQIndex

    kinds = {"flat": FlatIndex, "pq": PQIndex}
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"path: {path} is not a drfast index (no meta.json)")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if meta.get("kind") not in kinds:
        raise ValueError(f"path: unknown index kind {meta.get('kind')!r} in {meta_file}")
    return kinds[meta["kind"]]._load(path, mmap)
