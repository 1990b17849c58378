// CUDA backend of the fused PQ search. Plain C++ header (no CUDA includes)
// so the bindings can be compiled by the host compiler.
#pragma once
#include <cstdint>

#include "cuda/flat_search_cuda.h"  // kCudaMaxK, cuda_device_available
#include "common/search_types.h"

namespace drfast {

// Fused PQ search on `stream` (a cudaStream_t; nullptr = default stream) from
// per-query lookup tables luts float32 [B, m, 256] and codes uint8 [N, m]:
//   score(b, r) = (((0 + luts[b][0][codes[r][0]]) + luts[b][1][codes[r][1]]) + ...)
// added in sub-quantizer order with plain float adds, bit-identical to the CPU
// kernel (pq_score_pair) and the torch path. Outputs exactly as
// flat_search_cuda: top-k ids/scores (score desc, ties by lower row, -1/-inf
// padding when k > N), pos_scores, 1-based pos_ranks and, when in.cutoff > 0,
// the ΔMRR pair weights.
//
// Uses in.B, in.N, in.k, in.pos_offsets, in.pos_ids and in.cutoff; in.queries,
// in.d, in.docs and in.docs_fp16 are ignored. Every pointer must be a device
// pointer on the current device. k must be in [1, kCudaMaxK]; m >= 0. Blocks
// until the outputs are ready. Throws std::invalid_argument for unsupported
// inputs and std::runtime_error for CUDA failures.
void pq_search_cuda(const SearchInput& in, const float* luts, const uint8_t* codes, int64_t m,
                    const SearchOutput& out, void* stream);

}  // namespace drfast
