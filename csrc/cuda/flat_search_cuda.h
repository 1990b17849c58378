// CUDA backend of the fused flat search. Plain C++ header (no CUDA includes)
// so the bindings can be compiled by the host compiler.
#pragma once
#include <cstdint>

#include "common/search_types.h"

namespace drfast {

// Largest k the CUDA kernels accept (std::invalid_argument above it).
constexpr int64_t kCudaMaxK = 2048;

// Runs the whole search on `stream` (a cudaStream_t; nullptr = default stream).
// Every pointer in `in` and `out` must be a device pointer on the current
// device. Blocks until the outputs are ready. Throws std::invalid_argument for
// unsupported inputs and std::runtime_error for CUDA failures.
void flat_search_cuda(const SearchInput& in, const SearchOutput& out, void* stream);

// True iff the CUDA runtime sees at least one device; never throws.
bool cuda_device_available();

}  // namespace drfast
