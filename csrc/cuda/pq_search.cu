// Fused PQ search on CUDA: exact top-k over product-quantized codes scored
// with per-query lookup tables, 1-based ranks of the positives over the whole
// corpus and optional ΔMRR pair weights, without ever materialising the
// [B, N] score matrix.
//
// Pipeline (all on the caller's stream), shared with flat_search.cu through
// fused_common.cuh:
//   1. pq_positives_kernel: score of every (query, positive) pair; ranks := 1.
//   2. run_fused_topk: for each batch of queries and each chunk of the corpus,
//      pq_scan_kernel scores a [kTQ x kTR] tile into shared memory and
//      tile_epilogue counts the rows beating each positive and emits the
//      tile-local top-min(k, kTR) keys; a segmented sort per query merges
//      them with the running top-k.
//   3. weights_kernel: pair weights from the final ids and ranks.
//
// Scores: score(b, r) = 0.0f, then += luts[b][j][codes[r][j]] for j = 0..m-1
// in order (pq_step, an explicit __fadd_rn that is never contracted or
// reassociated). The scan and the positives kernel apply the same chain, so a
// positive's score is bit-identical to its row's score in the scan, and both
// match the CPU kernel (pq_score_pair) and torch's PQChunkScorer.
//
// Scan layout: a block of 256 threads scores 32 queries x 64 rows; warp w
// handles queries w, w + 8, w + 16, w + 24 and lane l rows l and l + 32, so the
// 32 lookups of one warp instruction fall in the same 1 KiB table row of one
// query. The tile's codes are staged in shared memory (transposed, kTJ
// sub-quantizers at a time); the tables are read through the read-only cache
// (__ldg), which keeps any m supported without shared-memory limits.
#include "cuda/pq_search_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/fused_common.cuh"

namespace drfast {
namespace {

constexpr int kTJ = 64;      // sub-quantizers of the tile's codes staged per step
constexpr int kCodePad = 4;  // bytes of padding per staged row (bank spread)
constexpr int kLut = 256;    // entries per sub-quantizer table

static_assert(kScanThreads == 256 && kTQ == 32 && kTR == 64, "pq micro-tile mapping");

constexpr const char* kWho = "pq_search";

void invalid(const std::string& msg) { invalid_input(kWho, msg); }

// ---------------------------------------------------------------- device --

// The single arithmetic step of every PQ score (see the file comment).
__device__ __forceinline__ float pq_step(float acc, float entry) { return __fadd_rn(acc, entry); }

// score(b, row) with lut = luts + b * m * 256 and code = codes + row * m.
__device__ float pq_pair(const float* __restrict__ lut, const uint8_t* __restrict__ code,
                         int64_t m) {
  float acc = 0.0f;
  for (int64_t j = 0; j < m; ++j) acc = pq_step(acc, __ldg(lut + j * kLut + code[j]));
  return acc;
}

__global__ void pq_positives_kernel(const float* __restrict__ luts,
                                    const uint8_t* __restrict__ codes, int64_t B, int64_t m,
                                    const int64_t* __restrict__ pos_offsets,
                                    const int64_t* __restrict__ pos_ids, float* pos_scores,
                                    int64_t* pos_ranks) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const int64_t end = pos_offsets[b + 1];
    for (int64_t i = pos_offsets[b] + threadIdx.x; i < end; i += blockDim.x) {
      pos_scores[i] = pq_pair(luts + b * m * kLut, codes + pos_ids[i] * m, m);
      pos_ranks[i] = 1;
    }
  }
}

// One block: queries [b0 + q0, +kTQ) x rows [r0, +kTR) of the batch of nq
// queries starting at b0. Writes the tile's top-kk keys of local query bl to
// cand[bl * stride + k + blockIdx.x * kk ...] (see tile_epilogue).
__global__ void __launch_bounds__(kScanThreads)
pq_scan_kernel(const float* __restrict__ luts, const uint8_t* __restrict__ codes, int64_t m,
               int64_t N, int64_t b0, int64_t nq, int64_t row_begin,
               const int64_t* __restrict__ pos_offsets, const int64_t* __restrict__ pos_ids,
               const float* __restrict__ pos_scores, unsigned long long* pos_ranks,
               uint64_t* __restrict__ cand, int64_t stride, int k, int kk) {
  __shared__ uint8_t cs[kTJ][kTR + kCodePad];  // cs[i][r] = codes[r0 + r][j0 + i]
  __shared__ float ss[kTQ][kTR];
  __shared__ uint64_t ks[kTQ][kTR];

  const int tid = threadIdx.x;
  const int lane = tid % 32, warp = tid / 32;  // rows lane + 32c, queries warp + 8a
  const int64_t q0 = int64_t(blockIdx.y) * kTQ;
  const int64_t r0 = row_begin + int64_t(blockIdx.x) * kTR;

  // Table of each of the thread's queries; queries past the batch (whose
  // results are never read) borrow the last valid one to stay in bounds.
  const float* lut[4];
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int64_t lq = min(q0 + warp + 8 * a, nq - 1);
    lut[a] = luts + (b0 + lq) * m * kLut;
  }

  float acc[4][2];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int c = 0; c < 2; ++c) acc[a][c] = 0.0f;

  for (int64_t j0 = 0; j0 < m; j0 += kTJ) {
    const int len = int(min(int64_t(kTJ), m - j0));
    // Rows past N read code 0 (a valid table entry); their keys are empty.
    for (int e = tid; e < kTR * len; e += kScanThreads) {
      const int r = e / len, i = e % len;
      const int64_t row = r0 + r;
      cs[i][r] = row < N ? codes[row * m + j0 + i] : uint8_t(0);
    }
    __syncthreads();
    // Exactly the steps j0 .. j0 + len - 1, in order, as in pq_pair.
#pragma unroll 4
    for (int i = 0; i < len; ++i) {
      const int64_t base = (j0 + i) * kLut;
      const int c0 = cs[i][lane], c1 = cs[i][lane + 32];
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        acc[a][0] = pq_step(acc[a][0], __ldg(lut[a] + base + c0));
        acc[a][1] = pq_step(acc[a][1], __ldg(lut[a] + base + c1));
      }
    }
    __syncthreads();  // before the next slice overwrites cs
  }

#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int q = warp + 8 * a, r = lane + 32 * c;
      const int64_t row = r0 + r;
      ss[q][r] = acc[a][c];
      ks[q][r] = row < N ? make_key(acc[a][c], row) : kEmptyKey;
    }
  __syncthreads();

  tile_epilogue(ss, ks, b0, q0, nq, r0, N, pos_offsets, pos_ids, pos_scores, pos_ranks, cand,
                stride, k, kk, int64_t(blockIdx.x));
}

// ------------------------------------------------------------------ host --

void run_pq_search(const SearchInput& in, const float* luts, const uint8_t* codes, int64_t m,
                   const SearchOutput& out, int64_t nnz, cudaStream_t stream) {
  const int64_t B = in.B, N = in.N;
  auto* ranks = reinterpret_cast<unsigned long long*>(out.pos_ranks);

  if (nnz > 0) {
    pq_positives_kernel<<<unsigned(std::min<int64_t>(B, 65535)), 128, 0, stream>>>(
        luts, codes, B, m, in.pos_offsets, in.pos_ids, out.pos_scores, out.pos_ranks);
    check(cudaGetLastError(), "pq_positives_kernel launch");
  }

  run_fused_topk(in, out, nnz, stream,
                 [&](dim3 grid, int64_t b0, int64_t nq, int64_t row_begin, uint64_t* cand,
                     int64_t stride, int k, int kk) {
                   pq_scan_kernel<<<grid, kScanThreads, 0, stream>>>(
                       luts, codes, m, N, b0, nq, row_begin, in.pos_offsets, in.pos_ids,
                       out.pos_scores, ranks, cand, stride, k, kk);
                   check(cudaGetLastError(), "pq_scan_kernel launch");
                 });
}

}  // namespace

void pq_search_cuda(const SearchInput& in, const float* luts, const uint8_t* codes, int64_t m,
                    const SearchOutput& out, void* stream_ptr) {
  if (in.B < 0 || in.N < 0 || m < 0) invalid("B, N and m must be non-negative");
  check_common_args(in, kWho);
  if (in.B == 0) return;  // nothing to compute or write
  if (!luts && m > 0) invalid("luts must not be null");
  if (!codes && in.N > 0 && m > 0) invalid("codes must not be null");

  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t nnz = check_outputs_and_count_positives(in, out, stream, kWho);

  run_pq_search(in, luts, codes, m, out, nnz, stream);
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

}  // namespace drfast
