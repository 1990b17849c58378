"""The native core's own sizes, read from `drfast._C` (csrc/bindings.cpp) so that no number of the
kernels is spelled again in Python.

FLAT_BLOCK_ROWS, PQ_BLOCK_ROWS    rows per block of the exact CPU scans (csrc/cpu/isa_kernels.h)
FIRST_PASS_BLOCK_ROWS             rows per block of the two-stage first pass (csrc/cpu/first_pass_kernels.h)
FIRST_PASS_ALIGN                  bytes each first-pass code row is padded to a multiple of (kFpAlign)
CANDIDATE_BYTES                   bytes of one top-k candidate of the exact scan (csrc/cpu/fused_scan.h)
WORK_PER_QUERY, WORK_PER_POSITIVE column of each two-stage work counter ([B, 3] and [nnz, 2] arrays):
                                  {"refined", "rescored_topk", "rescored_ranks"} and {"refined", "rescored"}
"""
from __future__ import annotations

from types import MappingProxyType

from drfast import _C

FLAT_BLOCK_ROWS: int = int(_C.flat_block_rows)
PQ_BLOCK_ROWS: int = int(_C.pq_block_rows)
FIRST_PASS_BLOCK_ROWS: int = int(_C.first_pass_block_rows)
FIRST_PASS_ALIGN: int = int(_C.first_pass_align)
CANDIDATE_BYTES: int = int(_C.candidate_bytes)
WORK_PER_QUERY = MappingProxyType(dict(_C.work_columns["per_query"]))
WORK_PER_POSITIVE = MappingProxyType(dict(_C.work_columns["per_positive"]))

__all__ = ["FLAT_BLOCK_ROWS", "PQ_BLOCK_ROWS", "FIRST_PASS_BLOCK_ROWS", "FIRST_PASS_ALIGN", "CANDIDATE_BYTES",
           "WORK_PER_QUERY", "WORK_PER_POSITIVE"]
