// Entry points of the CPU kernels, one per instruction set, and their dispatcher.
#pragma once
#include <string>

#include "search_types.h"

namespace drfast {

void flat_search_generic(const SearchInput& in, const SearchOutput& out, int threads);
void flat_search_avx2(const SearchInput& in, const SearchOutput& out, int threads);
void flat_search_avx512(const SearchInput& in, const SearchOutput& out, int threads);

// Runs the best kernel the CPU supports (or the level forced by set_simd_level).
void flat_search(const SearchInput& in, const SearchOutput& out);

// "avx512", "avx2" or "generic": the level in use.
std::string simd_level();
// Force a level (for testing); throws std::invalid_argument if unsupported here.
void set_simd_level(const std::string& level);
// Levels this CPU can run, best first.
std::string supported_simd_levels();

int num_threads();
void set_num_threads(int n);

}  // namespace drfast
