"""Index specs ("flat", "pq:M", "opq:M") and building an index from one."""
from __future__ import annotations

from typing import Any, Sequence

from drfast.common.errors import UsageError
from drfast.index.flat import FlatIndex
from drfast.index.pq import PQIndex


def parse_index_spec(spec: str) -> tuple[str, int]:
    """("flat", 0), ("pq", M) or ("opq", M) from "flat", "pq:M" or "opq:M"."""
    if spec == "flat":
        return "flat", 0
    kind, _, m = spec.partition(":")
    if kind in ("pq", "opq") and m.isdigit() and int(m) > 0:
        return kind, int(m)
    raise UsageError("index", f"expected 'flat', 'pq:M' or 'opq:M' (M sub-vectors, a divisor of the dimension), got {spec!r}")


def build_index(emb: Any, doc_ids: Sequence[str], spec: str = "flat", seed: int = 0, first_pass: Any = None):
    """A FlatIndex over `emb`, or a PQIndex trained on it with faiss.

    Parameters
    ----------
    emb : array or tensor, float32 or float16 [N, d]
        The rows.
    doc_ids : sequence of str
        The external id of each row.
    spec : str
        ``"flat"``, ``"pq:M"`` or ``"opq:M"`` (M sub-quantizers of 8 bits; opq adds a rotation).
    seed : int
        The seed of the PQ / OPQ codebook training.
    first_pass : {None, "int8", "int8-lean", "bf16", "auto"}
        Flat only: the exact two-stage search's first pass (see FlatIndex).

    Returns
    -------
    FlatIndex or PQIndex
    """
    kind, m = parse_index_spec(spec)
    if kind == "flat":
        return FlatIndex(emb, doc_ids, first_pass=first_pass)
    return PQIndex.train(emb, m=m, seed=seed, opq=kind == "opq", doc_ids=doc_ids)
