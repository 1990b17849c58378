// CPU entry points and the runtime choice of instruction set and threads.
#pragma once
#include <cstdint>
#include <string>

#include "isa_kernels.h"
#include "search_types.h"

namespace drfast {

// The fused flat search with the active ISA and thread count.
void flat_search(const SearchInput& in, const SearchOutput& out);

// The fused PQ search: scores are sums of luts [B, m, 256] entries over codes [N, m];
// `in` gives B, N, k, the positives and the cutoff (queries and docs are unused).
void pq_search(const SearchInput& in, const float* luts, const uint8_t* codes, int64_t m, const SearchOutput& out);

// The kernels in use: the best this CPU supports, or the level forced by set_simd_level.
const IsaKernels& active_isa();
// "avx512", "avx2" or "generic"; throws std::invalid_argument if this CPU cannot run it.
void set_simd_level(const std::string& level);
// Levels this CPU can run, best first, comma-separated.
std::string supported_simd_levels();

int num_threads();
void set_num_threads(int n);

}  // namespace drfast
