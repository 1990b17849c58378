"""FlatIndex: exact inner-product search over float32/float16 rows, optionally with a low-precision first pass."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from drfast.index.faiss_interop import flat_to_faiss
from drfast.index.format import check_rows, doc_id_map, read_array, read_doc_ids, write_index_dir
from drfast.search.dispatch import as_tensor, flat_search
from drfast.search.result import SearchResult
from drfast.search.two_stage import (KINDS, FirstPassData, build_first_pass, first_pass_refines, padded_dim,
                                     parse_first_pass, two_stage_search)
from drfast.search.validate import check_embeddings


class FlatIndex:
    """Exact inner-product index over a [N, d] float32 or float16 matrix.

    The matrix is kept as given (numpy, including memmaps, or a torch tensor); non-contiguous
    input is copied once. ``doc_ids`` are the external document ids of the rows (default "0".."N-1").

    first_pass: None (the exact fused scan), "int8", "int8-lean" (int8 with refine=False), "bf16" or
    "auto" (search.two_stage.resolve_auto:
    int8 with AVX-512 VNNI, bf16 with AVX512_BF16, else None). With a first pass, `search` scans a
    low-precision copy of the rows with proven per-pair error bounds and recomputes exactly only the
    rows the bounds cannot decide: results stay bit-identical to first_pass=None. The copy costs
    2 bytes per element for int8 (codes + the residual codes of the second bound; refine=False:
    1 byte) and 2 bytes for bf16; `index.first_pass_bytes` has the total and
    `index.last_search_stats` the work of the last search (rows refined / rescored per query).
    `first_pass` may also be a FirstPassData built before for these rows (search.two_stage.build_first_pass,
    e.g. into memory-mapped files with its `alloc`).
    """

    kind = "flat"

    def __init__(self, emb: Any, doc_ids: Optional[Sequence[str]] = None, first_pass: Optional[str] = None,
                 refine: bool = True):
        self.emb = check_embeddings(emb, "emb")
        self.doc_ids = doc_id_map(doc_ids, self.emb.shape[0])
        if isinstance(first_pass, FirstPassData):  # built before (e.g. into memory-mapped files)
            first_pass.check_rows(self.emb.shape)
            self._first_pass: Optional[FirstPassData] = first_pass
        else:
            kind = parse_first_pass(first_pass)
            refine = refine and first_pass_refines(first_pass)
            self._first_pass = None if kind is None else build_first_pass(self.emb, kind, refine)
        self.last_search_stats = None

    @property
    def first_pass(self) -> Optional[str]:
        """The first-pass kind in use ("int8", "bf16") or None (exact scan only)."""
        return None if self._first_pass is None else self._first_pass.kind

    @property
    def first_pass_bytes(self) -> int:
        """Extra memory of the first-pass copy (0 without one)."""
        return 0 if self._first_pass is None else self._first_pass.nbytes

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
        out._first_pass = None if self._first_pass is None else self._first_pass.to(device)
        out.last_search_stats = None
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
        device). k: 1 <= k <= N + 65536 (search.validate.MAX_K_PADDING); columns past N are padding
        (ids -1, scores -inf), and a larger k is refused with a ValueError before anything is allocated.
        positives: per-query row ids as a list (one list, tuple or 1-D integer array per query), or a
        CSR pair as a tuple (offsets [B+1], ids [nnz]) of two 1-D integer numpy arrays / torch tensors.
        A tuple of two items is always read as a CSR pair; two Python lists there are refused (TypeError),
        being ambiguous when B == 2. cutoff: compute ΔMRR pair weights [nnz, k] at this cutoff.
        backend: None (native on CPU, torch on GPU), "native", "cuda" or "torch". chunk_rows: rows
        scored per step by the torch backend (default 65536).
        A search that cannot get its memory raises MemoryError (outputs are O(B k + nnz k), working
        memory O(threads B (k + block))). Safe in forked children (DataLoader workers).
        """
        if self._first_pass is not None:
            result, self.last_search_stats = two_stage_search(queries, self.emb, self._first_pass, k, positives,
                                                              cutoff, backend, chunk_rows)
            return result
        return flat_search(queries, self.emb, k, positives, cutoff, backend, chunk_rows)

    def to_faiss(self):
        """faiss.IndexFlatIP with the same rows (float16 widened to float32); load_faiss_index reads it back."""
        return flat_to_faiss(self.emb)

    def save(self, path: str | os.PathLike) -> None:
        """Write the index as a folder, atomically (a temp folder renamed into place); an existing
        drfast index at `path` is replaced, anything else there is refused."""
        emb = self.emb.cpu().numpy() if isinstance(self.emb, torch.Tensor) else self.emb
        meta = {"kind": self.kind, "ntotal": self.ntotal, "dim": self.dim, "dtype": str(emb.dtype)}
        arrays = {"embeddings": emb}
        if self._first_pass is not None:  # kept with the index: loading never re-quantizes
            fp = self._first_pass.to(torch.device("cpu"))
            meta["first_pass"] = fp.meta()
            arrays.update(fp.arrays())
        write_index_dir(path, meta, arrays, self.doc_ids)

    @classmethod
    def _load(cls, path: Path, meta: dict, mmap: bool) -> "FlatIndex":
        emb = read_array(path, "embeddings", mmap, (meta["ntotal"], meta["dim"]), (meta.get("dtype", ""),))
        index = cls(emb, read_doc_ids(path, meta["ntotal"]))
        fp_meta = meta.get("first_pass")
        if fp_meta is not None:
            index._first_pass = read_first_pass(path, fp_meta, meta["ntotal"], meta["dim"], mmap)
        return index


def read_first_pass(path: Path, fp_meta: Any, N: int, d: int, mmap: bool) -> FirstPassData:
    """The first-pass arrays saved with a FlatIndex, checked against meta.json (memory-mapped when `mmap`)."""
    kind = fp_meta.get("kind") if isinstance(fp_meta, dict) else None
    if kind not in KINDS or not isinstance(fp_meta.get("max_norm"), (int, float)):
        raise ValueError(f"{Path(path) / 'meta.json'}: 'first_pass' must be {{'kind': one of {KINDS}, "
                         f"'refine': bool, 'max_norm': number}}, got {fp_meta!r}")
    dp = padded_dim(d, kind)
    int8 = kind == "int8"
    arrays = {
        "fp_codes": read_array(path, "fp_codes", mmap, (N, dp), ("int8",) if int8 else ("uint16",)),
        "fp_stats": read_array(path, "fp_stats", mmap, (3, N), ("float32",)),
        "fp_sums": read_array(path, "fp_sums", mmap, (N if int8 else 0,), ("int32",)),
    }
    if fp_meta.get("refine"):
        arrays["fp_res_codes"] = read_array(path, "fp_res_codes", mmap, (N, dp), ("int8",))
        arrays["fp_res_stats"] = read_array(path, "fp_res_stats", mmap, (4, N), ("float32",))
        arrays["fp_res_sums"] = read_array(path, "fp_res_sums", mmap, (N,), ("int32",))
    return FirstPassData.from_arrays(fp_meta, d, arrays)
