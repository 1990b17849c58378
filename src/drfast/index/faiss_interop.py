"""faiss interop on arrays: read a faiss inner-product index into the arrays of a FlatIndex or PQIndex,
and build faiss indexes from those arrays (`drfast.load_faiss_index` and `to_faiss` wrap these).

Supported layouts (inner-product metric, 8-bit PQ codes), each optionally inside an IndexPreTransform
holding one OPQMatrix (which becomes PQIndex.rotation):
  IndexFlatIP              -> "flat": emb     (the stored vectors)
  IndexPQ                  -> "pq": centroids, codes as stored, rotation
  IndexIVFPQ, nlist == 1   -> "pq": the JPQ / DRhard layout, see `_ivf1_pq`
Row r is the vector faiss calls id r. faiss is imported inside the functions: it is an optional,
heavy dependency that `import drfast` must not pay for. This module imports no index class, so that
the index classes can call it (`to_faiss`) without an import cycle.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from drfast.common.arrays import to_numpy
from drfast.common.errors import UsageError, UsageTypeError

KSUB = 256  # 8-bit codes, as PQIndex

SUPPORTED = ("IndexFlatIP, IndexPQ, IndexIVFPQ with one list, optionally inside IndexPreTransform "
             "with an OPQMatrix")


def read_faiss(path_or_index: Any, mmap: bool = True) -> Tuple[str, Dict[str, Any]]:
    """("flat", {"emb"}) or ("pq", {"centroids", "codes", "rotation"}): the arrays of the drfast index
    with the same rows and scores as a faiss index (an object or a file path).

    A path is read with the vectors / codes memory-mapped when `mmap` (faiss's IO_FLAG_MMAP_IFC), and
    the arrays view them without a copy: pass a path, not an object, to load a large index in O(1)
    memory (an object is copied, since its owner may still add to it and move its storage). IVF1-PQ
    codes are always copied once (N x m bytes), into faiss id order.
    """
    import faiss

    owned = isinstance(path_or_index, (str, os.PathLike))
    root = _read(path_or_index, mmap) if owned else path_or_index
    if not isinstance(root, faiss.Index):
        raise UsageTypeError("load_faiss_index", f"expected a faiss index or a path, got {type(path_or_index).__name__}")
    index, rotation = _unwrap(faiss, faiss.downcast_index(root))
    name = type(index).__name__
    if name not in ("IndexFlatIP", "IndexFlat", "IndexPQ", "IndexIVFPQ"):
        raise UsageTypeError("load_faiss_index", f"faiss.{name} is not supported; supported: {SUPPORTED}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        metric = "L2" if index.metric_type == faiss.METRIC_L2 else f"metric {index.metric_type}"
        raise UsageError("load_faiss_index", f"faiss.{name} uses {metric}; only METRIC_INNER_PRODUCT is "
                         "supported (drfast scores are inner products)")
    flat = name.startswith("IndexFlat")
    if flat and rotation is not None:
        raise UsageTypeError("load_faiss_index", f"an OPQMatrix before faiss.{name} is not supported; supported: {SUPPORTED}")
    if not flat and index.pq.nbits != 8:
        raise UsageError("load_faiss_index", f"faiss.{name} has {index.pq.nbits}-bit codes; only 8-bit are supported")
    if name == "IndexIVFPQ" and index.nlist != 1:
        raise UsageError("load_faiss_index", f"faiss.IndexIVFPQ with nlist={index.nlist} is not supported; only "
                         "one inverted list (nlist=1, the JPQ / DRhard layout) scans every row exactly")
    if index.ntotal == 0:
        raise UsageError("load_faiss_index", f"faiss.{name} holds no vectors")
    if flat:
        return "flat", {"emb": _array(faiss, root, index.codes.data(), np.float32, (index.ntotal, index.d), owned)}
    centroids = faiss.vector_to_array(index.pq.centroids).reshape(index.pq.M, KSUB, index.pq.dsub)
    if name == "IndexPQ":
        codes = _array(faiss, root, index.codes.data(), np.uint8, (index.ntotal, index.pq.M), owned)
    else:
        centroids, codes = _ivf1_pq(faiss, index, centroids)
    return "pq", {"centroids": centroids, "codes": codes, "rotation": rotation}


def _read(path: Any, mmap: bool):
    import faiss

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: {path} does not exist or is not a file")
    try:
        return faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    except RuntimeError as e:
        raise UsageError("path", f"{path} is not a readable faiss index ({str(e).strip().splitlines()[-1]})") from None


def _unwrap(faiss, index):
    """The inner index and the OPQ rotation (or None) of an index inside IndexPreTransform and/or a
    trivial IndexIDMap (ids 0..N-1 in order, which change nothing)."""
    rotation = None
    while True:
        name = type(index).__name__
        if isinstance(index, faiss.IndexPreTransform) and rotation is None:
            rotation = _opq_rotation(faiss, index)
        elif name in ("IndexIDMap", "IndexIDMap2"):
            if not np.array_equal(faiss.vector_to_array(index.id_map), np.arange(index.ntotal)):
                raise UsageError("load_faiss_index", f"faiss.{name} with ids other than 0..N-1 in order is not "
                                 f"supported; supported: {SUPPORTED}")
        else:
            return index, rotation
        index = faiss.downcast_index(index.index)


def _opq_rotation(faiss, index) -> np.ndarray:
    """The [d, d] matrix R of the IndexPreTransform's one OPQMatrix (faiss applies x -> R x).

    faiss files store an OPQMatrix as a plain LinearTransform, so that is accepted too when it is
    what an OPQ matrix is: square, orthogonal, without bias (PQIndex.reconstruct maps back with R^T).
    """
    transforms = [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]
    names = ", ".join(f"faiss.{type(t).__name__}" for t in transforms)
    if len(transforms) != 1 or type(transforms[0]).__name__ not in ("OPQMatrix", "LinearTransform"):
        raise UsageTypeError("load_faiss_index", f"IndexPreTransform with [{names}] is not supported; supported: {SUPPORTED}")
    opq = transforms[0]
    if opq.d_in != opq.d_out or opq.have_bias or not opq.is_trained:
        raise UsageError("load_faiss_index", f"the {names} must be trained, square and without bias; got d_in="
                         f"{opq.d_in}, d_out={opq.d_out}, have_bias={opq.have_bias}, is_trained={opq.is_trained}")
    rotation = faiss.vector_to_array(opq.A).reshape(opq.d_out, opq.d_in)
    error = np.abs(rotation.astype(np.float64) @ rotation.T - np.eye(opq.d_in)).max()
    if error > 1e-4:
        raise UsageError("load_faiss_index", f"the {names} is not orthogonal (max |R R^T - I| = {error:.2g}); "
                         "only OPQ rotations are supported")
    return rotation


def _ivf1_pq(faiss, index, centroids: np.ndarray):
    """Centroids and codes of an IndexIVFPQ with one inverted list, rows in faiss id order.

    With by_residual, PQ encodes x - c for the single coarse centroid c, so a row decodes to
    c + concat_j centroids[j, code_j]. Adding c's j-th slice to every centroid of sub-quantizer j folds
    c into the codebooks exactly: decoded = concat_j (c_j + centroids[j, code_j]).
    """
    lists, n, m = index.invlists, index.ntotal, index.pq.M
    if lists.list_size(0) != n or index.code_size != m:
        raise UsageError("load_faiss_index", f"faiss.IndexIVFPQ's list holds {lists.list_size(0)} codes of "
                         f"{index.code_size} bytes, expected ntotal={n} codes of m={m} bytes")
    codes_ptr, ids_ptr = lists.get_codes(0), lists.get_ids(0)
    try:
        codes = faiss.rev_swig_ptr(codes_ptr, n * m).reshape(n, m).copy()
        ids = faiss.rev_swig_ptr(ids_ptr, n).copy()
    finally:  # a no-op for in-memory lists; on-disk lists pin the pages until released
        lists.release_codes(0, codes_ptr)
        lists.release_ids(0, ids_ptr)
    # drfast rows are faiss ids, so the ids must name every row exactly once
    seen = np.zeros(n, dtype=bool)
    seen[ids[(ids >= 0) & (ids < n)]] = True
    if not seen.all():
        raise UsageError("load_faiss_index", f"faiss.IndexIVFPQ ids are not a permutation of 0..{n - 1} "
                         f"({np.unique(ids).size} distinct ids in {ids.min()}..{ids.max()}); drfast rows are faiss ids")
    ordered = np.empty_like(codes)
    ordered[ids] = codes
    if index.by_residual:
        coarse = index.quantizer.reconstruct(0).astype(np.float32)
        centroids = centroids + coarse.reshape(m, 1, -1)
    return centroids, ordered


class _Keepalive:
    """Exposes faiss-owned memory to numpy while holding the faiss index alive (numpy keeps this object
    as the array's base, so the memory outlives neither the array nor its views)."""

    def __init__(self, owner, address: int, dtype, shape):
        self.owner = owner
        self.__array_interface__ = {"version": 3, "shape": shape, "typestr": np.dtype(dtype).str,
                                    "data": (address, True)}  # read-only


def _array(faiss, root, pointer, dtype, shape, owned: bool) -> np.ndarray:
    """A [N, w] view of faiss's storage when we own the index (nobody else can grow it), else a copy.
    The view keeps `root`, the outermost index, alive: it owns (and on deletion frees) the inner ones."""
    raw = faiss.rev_swig_ptr(pointer, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    view = np.asarray(_Keepalive(root, raw.__array_interface__["data"][0], dtype, shape))
    return view if owned else view.copy()


# ---- drfast arrays -> faiss ------------------------------------------------------------------
def flat_to_faiss(emb: Any):
    """faiss.IndexFlatIP with the rows of `emb` [N, d] (float16 rows are widened to float32, exactly)."""
    import faiss

    emb = to_numpy(emb)
    out = faiss.IndexFlatIP(emb.shape[1])
    for start in range(0, emb.shape[0], 1 << 16):  # converts one chunk at a time, not the whole matrix
        out.add(np.ascontiguousarray(emb[start:start + (1 << 16)], dtype=np.float32))
    return out


def pq_to_faiss(centroids: torch.Tensor, codes: Any, rotation: Optional[torch.Tensor]):
    """faiss.IndexPQ (inner product) with these centroids [m, 256, dsub] and codes [N, m], inside
    IndexPreTransform(OPQMatrix(A = rotation)) when there is a rotation."""
    import faiss

    m, _, dsub = centroids.shape
    codes = to_numpy(codes)
    out = faiss.IndexPQ(m * dsub, m, 8, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(to_numpy(centroids, contiguous=True).ravel(), out.pq.centroids)
    out.is_trained = True
    out.add_sa_codes(np.ascontiguousarray(codes))
    if rotation is None:
        return out
    opq = faiss.OPQMatrix(m * dsub, m)
    faiss.copy_array_to_vector(to_numpy(rotation, contiguous=True).ravel(), opq.A)
    opq.is_trained = True
    opq.set_is_orthonormal()  # lets faiss's reverse_transform use R^T, as PQIndex.reconstruct does
    return faiss.IndexPreTransform(opq, out)
