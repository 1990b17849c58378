// Plain-pointer descriptions of one fused search call, shared by every backend.
#pragma once
#include <cstdint>

namespace drfast {

// Inputs. All pointers are host pointers for the CPU kernels and device
// pointers for the CUDA kernels; every array is C-contiguous.
struct SearchInput {
  const float* queries = nullptr;     // [B, d]
  int64_t B = 0;
  int64_t d = 0;
  const void* docs = nullptr;         // [N, d], float32 or float16 (IEEE binary16 bits)
  int64_t N = 0;
  bool docs_fp16 = false;
  int64_t k = 0;                      // >= 1; results are padded when k > N
  const int64_t* pos_offsets = nullptr;  // [B + 1] CSR offsets, pos_offsets[0] == 0
  const int64_t* pos_ids = nullptr;      // [nnz] row ids in [0, N), unique within a query
  int64_t cutoff = 0;                 // > 0: compute ΔMRR pair weights at this cutoff
  // Optional [nnz]: the positives' scores, given (the sharded search: the shard owning a positive
  // scored it with the same arithmetic). The kernel then copies them to out.pos_scores, reads no
  // positive row, and pos_ids may lie outside [0, N): a row r ranks before positive p when
  // s_r > s_p, or s_r == s_p and r < p, so a positive of another shard passed as the local id
  // p_global - row_offset gets the tie rule of the global row order. Not with cutoff > 0 (the pair
  // weights compare positives with the local top-k). nullptr: computed as the scan computes them.
  const float* pos_scores_in = nullptr;
};

// Outputs, written by the kernel (callers may poison them beforehand).
struct SearchOutput {
  int64_t* ids = nullptr;             // [B, k], -1 where k > N
  float* scores = nullptr;            // [B, k], -inf where k > N
  float* pos_scores = nullptr;        // [nnz]
  int64_t* pos_ranks = nullptr;       // [nnz], 1-based rank over the whole corpus
  float* pair_weights = nullptr;      // [nnz, k], only read when cutoff > 0
};

}  // namespace drfast
