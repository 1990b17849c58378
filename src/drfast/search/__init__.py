"""The fused search: the only caller of the native module `drfast._C`, its torch reference path,
argument validation, the result type and the rank metrics computed from exact ranks."""
from drfast.search.dispatch import flat_search, pq_search
from drfast.search.rank_metrics import mean_mrr, metrics_from_ranks
from drfast.search.result import SearchResult
from drfast.search.runtime import (build_info, get_num_threads, set_num_threads, set_simd_level, simd_level,
                                   supported_simd_levels)

__all__ = ["SearchResult", "flat_search", "pq_search", "metrics_from_ranks", "mean_mrr", "build_info",
           "get_num_threads", "set_num_threads", "set_simd_level", "simd_level", "supported_simd_levels"]
