// The native entry points bindings.cpp calls: the CPU kernels and the runtime choice of
// instruction set and threads (the CUDA entry points are declared in cuda/*_cuda.h).
#pragma once
#include <cstdint>
#include <string>

#include "common/search_types.h"

namespace drfast {

// The fused flat search with the active ISA and thread count.
void flat_search(const SearchInput& in, const SearchOutput& out);

// The fused PQ search: scores are sums of luts [B, m, 256] entries over codes [N, m];
// `in` gives B, N, k, the positives and the cutoff (queries and docs are unused).
void pq_search(const SearchInput& in, const float* luts, const uint8_t* codes, int64_t m, const SearchOutput& out);

// The positives' scores alone, bit-identical to those flat_search / pq_search compute (the scan's
// own pair scorer); `in` gives the queries (or B), docs, N and the positives. For the sharded search:
// the shard owning a positive scores it, every shard then scans with in.pos_scores_in.
void flat_score_positives(const SearchInput& in, float* pos_scores);
void pq_score_positives(const SearchInput& in, const float* luts, const uint8_t* codes, int64_t m, float* pos_scores);

// The SIMD level in use: the best this CPU supports, or the level forced by set_simd_level.
const char* simd_level();
// "avx512", "avx2" or "generic"; throws std::invalid_argument if this CPU cannot run it.
void set_simd_level(const std::string& level);
// Levels this CPU can run, best first, comma-separated.
std::string supported_simd_levels();

int num_threads();
void set_num_threads(int n);

}  // namespace drfast
