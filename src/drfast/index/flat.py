"""FlatIndex: exact inner-product search over float32/float16 rows, optionally with a low-precision first pass."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from drfast.common.arrays import as_tensor, to_numpy
from drfast.common.doc_ids import DocIdMap
from drfast.common.errors import UsageError
from drfast.index.faiss_interop import flat_to_faiss
from drfast.index.fingerprint import rows_fingerprint
from drfast.index.format import (PathLike, check_rows, doc_id_map, read_array, read_doc_ids, read_meta,
                                 write_index_dir)
from drfast.search.backend import SearchRequest
from drfast.search.first_pass import KINDS, FirstPassData, build_first_pass, padded_dim, resolve_first_pass
from drfast.search.fused import flat_search_request
from drfast.search.result import SearchResult
from drfast.search.two_stage import two_stage_search_request
from drfast.search.validate import check_embeddings

logger = logging.getLogger(__name__)
ROWS_PRINT = "first_pass_rows"  # meta.json key: the fingerprint of the rows the first pass was built from


class FlatIndex:
    """Exact inner-product index over a [N, d] float32 or float16 matrix.

    The matrix is kept as given (numpy, including memmaps, or a torch tensor); non-contiguous input is
    copied once. Search results follow the fused-search contract (docs/concepts/fused-search.md).

    Parameters
    ----------
    emb : array or tensor, float32 or float16 [N, d]
        The rows.
    doc_ids : sequence of str, optional
        The external document ids of the rows (default "0" .. "N-1").
    first_pass : {None, "int8", "int8-lean", "bf16", "auto"} or FirstPassData
        None: the exact fused scan. Otherwise `search` scans a low-precision copy of the rows with
        proven per-pair error bounds and recomputes exactly only the rows the bounds cannot decide:
        results stay bit-identical to ``first_pass=None``. "int8-lean" is int8 with ``refine=False``;
        "auto" (search.first_pass.resolve_auto_spec) is int8 with AVX-512 VNNI or on a GPU
        `first_pass_device`, bf16 with AVX512_BF16, else None; its int8 becomes "int8-lean" when the
        full copy (plus memory-mapped rows' page cache) would not fit in free memory. A FirstPassData built before for these rows (search.first_pass.build_first_pass, e.g.
        into memory-mapped files with its `alloc`) is used as it is.
    refine : bool
        int8 only: also keep the residual codes of the second, tighter bound.
    first_pass_device : torch device, optional
        Places only the first-pass copy on this device (e.g. a GPU) while the exact rows stay on
        the host (numpy, memmap or a CPU tensor); needs `first_pass`. ``index.to(device)`` moves
        everything instead.

    Notes
    -----
    The copy costs 2 bytes per element for int8 (codes + the residual codes of the second bound;
    ``refine=False``: 1 byte) and 2 bytes for bf16; ``index.first_pass_bytes`` has the total and
    ``index.last_search_stats`` the work of the last search (rows refined / rescored per query).
    ``first_pass_kind`` and ``first_pass_data`` say which copy is in use. The copy is tied to the
    rows it was built from (``index.fingerprint``): `save` refuses rows changed since, and loading
    refuses a saved index whose rows no longer match their copy.

    Examples
    --------
    >>> import numpy as np, drfast
    >>> emb = np.array([[1, 0], [0, 1], [1, 1], [0.5, 0.5]], dtype=np.float32)
    >>> index = drfast.FlatIndex(emb, doc_ids=["a", "b", "c", "d"])
    >>> index
    FlatIndex(ntotal=4, dim=2, dtype=float32, device=cpu)
    >>> res = index.search(np.array([[1, 0.5]], dtype=np.float32), k=2, positives=[[1]], cutoff=10)
    >>> res.ids, res.scores
    (array([[2, 0]]), array([[1.5, 1. ]], dtype=float32))
    >>> res.pos_ranks  # row 1 scores 0.5: rows 2, 0 and 3 score more
    array([4])
    >>> res.pair_weights  # |1/4 - 1/1|, |1/4 - 1/2|
    array([[0.75, 0.25]], dtype=float32)
    """

    kind = "flat"

    def __init__(self, emb: Any, doc_ids: Optional[Sequence[str]] = None, first_pass: Optional[str] = None,
                 refine: bool = True, first_pass_device: Any = None):
        self.emb = check_embeddings(emb, "emb")
        self.doc_ids = doc_id_map(doc_ids, self.emb.shape[0])
        if isinstance(first_pass, FirstPassData):  # built before (e.g. into memory-mapped files)
            first_pass.check_rows(self.emb.shape)
            data: Optional[FirstPassData] = first_pass
        else:
            kind, refines = resolve_first_pass(first_pass, self.emb, first_pass_device)  # "auto" sized here
            refine = refine and refines
            data = None if kind is None else build_first_pass(self.emb, kind, refine)
        if first_pass_device is not None:
            data = place_first_pass(data, self.emb, first_pass_device)
        self._first_pass = data
        self._rows_print = None if data is None else rows_fingerprint(self.emb)
        self._last_search_stats = None

    @classmethod
    def from_parts(cls, emb: Any, doc_ids: DocIdMap, first_pass_data: Optional[FirstPassData] = None,
                   rows_print: Optional[dict] = None) -> "FlatIndex":
        """An index of parts another index already checked (moved to a device by `to`): nothing is
        validated or rebuilt. rows_print: the fingerprint of the rows `first_pass_data` was built from
        (index.fingerprint.rows_fingerprint; computed from `emb` when None)."""
        index = cls.__new__(cls)
        index.emb, index.doc_ids, index._first_pass = emb, doc_ids, first_pass_data
        if first_pass_data is not None and rows_print is None:
            rows_print = rows_fingerprint(emb)
        index._rows_print = None if first_pass_data is None else rows_print
        index._last_search_stats = None
        return index

    @property
    def first_pass_kind(self) -> Optional[str]:
        """The first-pass kind in use ("int8", "bf16") or None (exact scan only)."""
        return None if self._first_pass is None else self._first_pass.kind

    @property
    def first_pass_data(self) -> Optional[FirstPassData]:
        """The first-pass copy of the rows (None without one): what the two-stage search scans."""
        return self._first_pass

    @property
    def first_pass_rows_print(self) -> Optional[dict]:
        """The fingerprint (index.fingerprint) of the rows the first pass was built from (None without one)."""
        return self._rows_print

    @property
    def last_search_stats(self):
        """The work of the last two-stage search (search.two_stage.TwoStageStats), None before one or
        without a first pass."""
        return self._last_search_stats

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
        emb = to_numpy(self.emb) if device.type == "cpu" else as_tensor(self.emb).to(device)
        data = None if self._first_pass is None else self._first_pass.to(device)
        return FlatIndex.from_parts(emb, self.doc_ids, data, self._rows_print)

    def reconstruct(self, rows: Any) -> torch.Tensor:
        """Rows as a [n, d] float32 torch tensor on the index's device."""
        rows_np = check_rows(rows, self.ntotal)
        # A zero-copy torch view of numpy rows (memmaps too): torch's gather is multi-threaded.
        emb = as_tensor(self.emb)
        return emb[torch.from_numpy(rows_np).to(emb.device)].float()

    def search(self, queries: Any, k: int = 200, positives: Any = None, cutoff: Optional[int] = None,
               backend: Optional[str] = None, chunk_rows: Optional[int] = None,
               rank_depth: Optional[int] = None) -> SearchResult:
        """Top-k, exact positive ranks and (with `cutoff`) ΔMRR pair weights in one pass.

        Parameters
        ----------
        queries : array or tensor, float32 [B, d]
            numpy or torch; results come back in the same kind, on the queries' device.
        k : int
            1 <= k <= N + 65536 (search.validate.MAX_K_PADDING); columns past N are padding (ids -1,
            scores -inf), and a larger k is refused before anything is allocated.
        positives : list or tuple, optional
            Per-query row ids as a list (one list, tuple or 1-D integer array per query), or a CSR pair as
            a tuple (offsets [B+1], ids [nnz]) of two 1-D integer numpy arrays / torch tensors. A tuple of
            two items is always read as a CSR pair; two Python lists there are refused (TypeError), being
            ambiguous when B == 2.
        cutoff : int, optional
            Compute ΔMRR pair weights [nnz, k] at this cutoff.
        backend : {None, "native", "cuda", "torch"}
            None: native on the CPU, torch on a GPU.
        chunk_rows : int, optional
            Rows scored per step by the torch backend (default 65536).
        rank_depth : int, optional
            None (ranks over the whole corpus) or D >= max(k, cutoff): ranks exact up to D, deeper ones
            reported as D + 1 (ids, scores and pair weights unchanged; a two-stage index then skips most
            work on deep positives).

        Returns
        -------
        SearchResult
            ids, scores, the positives' CSR offsets, ids, scores and exact ranks, and the pair weights.

        Raises
        ------
        UsageError, UsageTypeError
            A bad argument, named (shape, dtype, NaN/Inf, k, positive ids out of range or repeated).
        MemoryError
            A search that cannot get its memory (outputs are O(B k + nnz k), working memory
            O(threads B (k + block))).

        Notes
        -----
        Safe in forked children (DataLoader workers).
        """
        return self.search_request(SearchRequest(queries, k, positives, cutoff, backend, chunk_rows,
                                                 rank_depth=rank_depth))

    def search_request(self, request: SearchRequest) -> SearchResult:
        """`search` of a search.backend.SearchRequest, which may also give the positives' scores
        (`pos_scores`: the sharded search's local step); records `last_search_stats`."""
        if self._first_pass is not None:
            result, self._last_search_stats = two_stage_search_request(request, self.emb, self._first_pass)
            return result
        return flat_search_request(request, self.emb)

    def to_faiss(self):
        """faiss.IndexFlatIP with the same rows (float16 widened to float32); load_faiss_index reads it back."""
        return flat_to_faiss(self.emb)

    def save(self, path: str | os.PathLike) -> None:
        """Write the index as a folder, atomically (a temp folder renamed into place); an existing
        drfast index at `path` is replaced, anything else there is refused. With a first pass, rows
        changed since it was built are refused (its copy would be stale)."""
        emb = to_numpy(self.emb)
        meta = {"kind": self.kind, "ntotal": self.ntotal, "dim": self.dim, "dtype": str(emb.dtype)}
        arrays = {"embeddings": emb}
        if self._first_pass is not None:  # kept with the index: loading never re-quantizes
            if rows_fingerprint(emb) != self._rows_print:
                raise UsageError("index", "the rows changed after the first-pass copy was built from them, so "
                                 "its search would be wrong; build the index again: FlatIndex(emb, first_pass="
                                 f"{self.first_pass_kind!r})")
            fp = self._first_pass.to(torch.device("cpu"))
            meta["first_pass"] = fp.meta()
            meta[ROWS_PRINT] = self._rows_print
            arrays.update(fp.arrays())
        write_index_dir(path, meta, arrays, self.doc_ids)

    @classmethod
    def load(cls, path: PathLike, mmap: bool = True, meta: Optional[dict] = None) -> "FlatIndex":
        """The FlatIndex saved in the folder `path` (rows memory-mapped when `mmap`; `meta`: its
        meta.json, read when None). A first pass whose rows changed since it was built is refused."""
        meta = read_meta(path) if meta is None else meta
        emb = read_array(path, "embeddings", mmap, (meta["ntotal"], meta["dim"]), (meta.get("dtype", ""),))
        fp_meta = meta.get("first_pass")
        data = None if fp_meta is None else read_first_pass(path, fp_meta, meta["ntotal"], meta["dim"], mmap)
        index = cls(emb, read_doc_ids(path, meta["ntotal"]), first_pass=data)
        if data is not None:
            check_rows_print(path, meta.get(ROWS_PRINT), index.first_pass_rows_print)
        return index


def check_rows_print(path: PathLike, saved: Any, loaded: dict) -> None:
    """Refuses an index folder whose rows no longer match the rows its first pass was built from
    (embeddings.npy replaced after saving); an index saved before fingerprints loads with a warning."""
    if saved is None:
        logger.warning("%s was saved without a fingerprint of the rows its first pass was built from, so a "
                       "stale first pass cannot be detected; save it again to add one", path)
        return
    if not isinstance(saved, dict) or saved.get("scheme") != loaded["scheme"]:
        logger.warning("%s: the fingerprint of its rows (%s in meta.json) is of an unknown scheme %r and "
                       "cannot be checked", path, ROWS_PRINT, saved.get("scheme") if isinstance(saved, dict) else saved)
        return
    if saved != loaded:
        raise UsageError("path", f"{path}: embeddings.npy does not hold the rows its first pass ({ROWS_PRINT} in "
                         "meta.json) was built from, so the first pass would return wrong results; rebuild the "
                         "index (drfast index, or FlatIndex(emb, first_pass=...).save)")


def place_first_pass(data: Optional[FirstPassData], emb: Any, device: Any) -> FirstPassData:
    """`data` on `device` for the placed two-stage search (FlatIndex's first_pass_device)."""
    if data is None:
        raise UsageError("first_pass_device", "places a first pass: give first_pass too")
    if isinstance(emb, torch.Tensor) and emb.device.type != "cpu":
        raise UsageError("first_pass_device", f"the rows must stay on the host (numpy, memmap or a CPU tensor), "
                         f"got a tensor on {emb.device}; use index.to(device) to move everything")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError("first_pass_device", f"expected a torch device, got {device!r}") from e
    return data.placed_on(device)


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
