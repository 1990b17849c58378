// Fused flat search on CUDA: exact inner-product top-k, 1-based ranks of the
// positives over the whole corpus and optional ΔMRR pair weights, without ever
// materialising the [B, N] score matrix.
//
// Pipeline (all on the caller's stream):
//   1. positives_kernel: score of every (query, positive) pair; ranks := 1.
//   2. For each batch of queries and each chunk of the corpus:
//      scan_kernel scores a [kTQ x kTR] tile in shared memory, adds to each
//      positive's rank the rows of the tile that beat it, and writes the
//      tile-local top-min(k, kTR) of every query as sort keys; then one
//      segmented sort per query merges them with the running top-k.
//   3. weights_kernel: pair weights from the final ids and ranks.
#include "cuda/flat_search_cuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/fused_common.cuh"

namespace drfast {
namespace {

// kTQ x kTR tiles, kScanThreads, keys, merge and output kernels: fused_common.cuh.
constexpr int kTD = 32;  // slice of the d features staged per step

static_assert(kScanThreads == 256 && kTQ == 32 && kTR == 64, "micro-tile mapping");

constexpr const char* kWho = "flat_search";

void invalid(const std::string& msg) { invalid_input(kWho, msg); }

// ---------------------------------------------------------------- device --

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// The single arithmetic step of every score. Both the scan and the positives
// kernel start from +0.0f and apply it for i = 0, 1, ..., d-1 in order, so a
// (query, row) score is bit-identical in both; __fmaf_rn is never contracted
// or reassociated by the compiler.
__device__ __forceinline__ float score_step(float acc, float q, float x) {
  return __fmaf_rn(q, x, acc);
}

template <typename DocT>
__device__ float dot_row(const float* q, const DocT* x, int64_t d) {
  float acc = 0.0f;
  for (int64_t i = 0; i < d; ++i) acc = score_step(acc, q[i], to_float(x[i]));
  return acc;
}

template <typename DocT>
__global__ void positives_kernel(const float* __restrict__ queries, const DocT* __restrict__ docs,
                                 int64_t B, int64_t d, const int64_t* __restrict__ pos_offsets,
                                 const int64_t* __restrict__ pos_ids, float* pos_scores,
                                 int64_t* pos_ranks) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const int64_t end = pos_offsets[b + 1];
    for (int64_t i = pos_offsets[b] + threadIdx.x; i < end; i += blockDim.x) {
      pos_scores[i] = dot_row(queries + b * d, docs + pos_ids[i] * d, d);
      pos_ranks[i] = 1;
    }
  }
}

// One block: queries [b0 + q0, +kTQ) x rows [r0, +kTR). Writes the tile's
// top-kk keys of local query bl to cand[bl * stride + k + blockIdx.x * kk ...].
template <typename DocT>
__global__ void __launch_bounds__(kScanThreads)
scan_kernel(const float* __restrict__ queries, const DocT* __restrict__ docs, int64_t d,
            int64_t N, int64_t b0, int64_t nq, int64_t row_begin,
            const int64_t* __restrict__ pos_offsets, const int64_t* __restrict__ pos_ids,
            const float* __restrict__ pos_scores, unsigned long long* pos_ranks,
            uint64_t* __restrict__ cand, int64_t stride, int k, int kk) {
  __shared__ float qs[kTQ][kTD + 1];  // +1 avoids bank conflicts
  __shared__ float ds[kTR][kTD + 1];
  __shared__ float ss[kTQ][kTR];
  __shared__ uint64_t ks[kTQ][kTR];

  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;  // rows tx + 16c, queries ty + 16a
  const int64_t q0 = int64_t(blockIdx.y) * kTQ;
  const int64_t r0 = row_begin + int64_t(blockIdx.x) * kTR;

  float acc[2][4];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[a][c] = 0.0f;

  for (int64_t d0 = 0; d0 < d; d0 += kTD) {
    const int len = int(min(int64_t(kTD), d - d0));
    for (int e = tid; e < kTQ * kTD; e += kScanThreads) {
      const int q = e / kTD, i = e % kTD;
      const int64_t lq = q0 + q;
      qs[q][i] = (lq < nq && i < len) ? queries[(b0 + lq) * d + d0 + i] : 0.0f;
    }
    for (int e = tid; e < kTR * kTD; e += kScanThreads) {
      const int r = e / kTD, i = e % kTD;
      const int64_t row = r0 + r;
      ds[r][i] = (row < N && i < len) ? to_float(docs[row * d + d0 + i]) : 0.0f;
    }
    __syncthreads();
    // Only i < len: padding steps would not match dot_row's chain.
#pragma unroll 4
    for (int i = 0; i < len; ++i) {
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int c = 0; c < 4; ++c)
          acc[a][c] = score_step(acc[a][c], qs[ty + 16 * a][i], ds[tx + 16 * c][i]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int q = ty + 16 * a, r = tx + 16 * c;
      const int64_t row = r0 + r;
      ss[q][r] = acc[a][c];
      ks[q][r] = row < N ? make_key(acc[a][c], row) : kEmptyKey;
    }
  __syncthreads();

  tile_epilogue(ss, ks, b0, q0, nq, r0, N, pos_offsets, pos_ids, pos_scores, pos_ranks, cand,
                stride, k, kk, int64_t(blockIdx.x));
}

// ------------------------------------------------------------------ host --

template <typename DocT>
void run_search(const SearchInput& in, const SearchOutput& out, int64_t nnz,
                cudaStream_t stream) {
  const int64_t B = in.B, N = in.N, d = in.d;
  const auto* docs = static_cast<const DocT*>(in.docs);
  auto* ranks = reinterpret_cast<unsigned long long*>(out.pos_ranks);

  if (nnz > 0) {
    positives_kernel<DocT><<<unsigned(std::min<int64_t>(B, 65535)), 128, 0, stream>>>(
        in.queries, docs, B, d, in.pos_offsets, in.pos_ids, out.pos_scores, out.pos_ranks);
    check(cudaGetLastError(), "positives_kernel launch");
  }

  run_fused_topk(in, out, nnz, stream,
                 [&](dim3 grid, int64_t b0, int64_t nq, int64_t row_begin, uint64_t* cand,
                     int64_t stride, int k, int kk) {
                   scan_kernel<DocT><<<grid, kScanThreads, 0, stream>>>(
                       in.queries, docs, d, N, b0, nq, row_begin, in.pos_offsets, in.pos_ids,
                       out.pos_scores, ranks, cand, stride, k, kk);
                   check(cudaGetLastError(), "scan_kernel launch");
                 });
}

}  // namespace

void flat_search_cuda(const SearchInput& in, const SearchOutput& out, void* stream_ptr) {
  if (in.B < 0 || in.N < 0 || in.d < 0) invalid("B, N and d must be non-negative");
  check_common_args(in, kWho);
  if (in.B == 0) return;  // nothing to compute or write
  if (!in.queries && in.d > 0) invalid("queries must not be null");
  if (!in.docs && in.N > 0 && in.d > 0) invalid("docs must not be null");

  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t nnz = check_outputs_and_count_positives(in, out, stream, kWho);

  if (in.docs_fp16)
    run_search<__half>(in, out, nnz, stream);
  else
    run_search<float>(in, out, nnz, stream);
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

bool cuda_device_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the error so later calls are unaffected
    return false;
  }
  return count > 0;
}

}  // namespace drfast
