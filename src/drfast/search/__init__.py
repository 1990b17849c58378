"""The fused search: the only caller of the native module `drfast._C`, its torch reference path,
argument validation, the result type and the rank metrics computed from exact ranks.

Modules: fused (the exact scans flat_search / pq_search), backend (choice of backend, the validated
request, shared plumbing), first_pass + first_pass_build (the two-stage search's low-precision copy
and bounds), two_stage (the exact two-stage search), torch_path (the torch reference path), native
(the kernels' sizes), validate, result, runtime, rank_metrics."""
from drfast.search.fused import flat_search, pq_search
from drfast.search.rank_metrics import mean_mrr, metrics_from_ranks
from drfast.search.result import SearchResult
from drfast.search.runtime import (build_info, get_num_threads, set_num_threads, set_simd_level, simd_level,
                                   supported_simd_levels)

__all__ = ["SearchResult", "flat_search", "pq_search", "metrics_from_ranks", "mean_mrr", "build_info",
           "get_num_threads", "set_num_threads", "set_simd_level", "simd_level", "supported_simd_levels"]
