"""`Index`: what every drfast index offers (FlatIndex, PQIndex, ShardedIndex), as a runtime-checkable Protocol.

Code that takes "any index" (training, mining, evaluation) annotates it as `Index` and uses only these
members; `isinstance(x, drfast.Index)` checks that they are present (not their signatures).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Protocol, Union, runtime_checkable

import torch

from drfast.common.doc_ids import DocIdMap
from drfast.search.result import SearchResult


@runtime_checkable
class Index(Protocol):
    """An index over ntotal rows of dimension dim, identified by row ids in [0, ntotal).

    A runtime-checkable Protocol: ``isinstance(idx, drfast.Index)`` holds for a FlatIndex, a PQIndex
    and a ShardedIndex, and for any object of your own that offers the same members.

    Attributes
    ----------
    kind : str
        "flat" or "pq".
    ntotal : int
        The number of rows.
    dim : int
        Their dimension.
    device : torch.device
        Where the rows (or codes) live.
    doc_ids : DocIdMap or None
        The rows' external ids (a ShardedIndex built without them has None).

    Notes
    -----
    Methods: ``search`` (the fused search; `FlatIndex.search` has the contract), ``reconstruct(rows)``
    (rows as [n, d] float32; PQ: decoded), ``to(device)`` (the same index on a device) and
    ``save(path)`` (an index folder that `drfast.load_index` reads).
    """

    @property
    def kind(self) -> str: ...

    @property
    def ntotal(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def doc_ids(self) -> Optional[DocIdMap]: ...

    def search(self, queries: Any, k: int = 200, positives: Any = None, cutoff: Optional[int] = None,
               backend: Optional[str] = None, chunk_rows: Optional[int] = None,
               rank_depth: Optional[int] = None) -> SearchResult: ...

    def reconstruct(self, rows: Any) -> torch.Tensor: ...

    def to(self, device: Any) -> "Index": ...

    def save(self, path: Union[str, os.PathLike]) -> None: ...
