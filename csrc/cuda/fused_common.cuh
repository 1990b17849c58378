// Pieces shared by the fused CUDA searches (flat_search.cu, pq_search.cu):
// candidate sort keys, the per-tile rank counting and top-k selection, the
// chunked segmented-sort merge of the running top-k, the output and ΔMRR
// pair-weight kernels, and the input checks.
//
// Every search follows the same pipeline on the caller's stream:
//   1. a positives kernel scores every (query, positive) pair and sets its
//      rank to 1 (backend specific: it must use the very same arithmetic as
//      the scan so a positive's score is bit-identical to its row's score);
//   2. run_fused_topk: for each batch of queries and each chunk of the corpus
//      a backend scan kernel scores [kTQ x kTR] tiles into shared memory and
//      calls tile_epilogue, which adds to each positive's rank the rows of the
//      tile that beat it and writes the tile-local top-min(k, kTR) of every
//      query as sort keys; one segmented sort per query then merges them with
//      the running top-k;
//   3. weights_kernel: pair weights from the final ids and ranks.
//
// Everything lives in an anonymous namespace: each .cu file is compiled as
// a whole program (no separable compilation) and gets its own copy.
#pragma once

#include <cuda_runtime.h>

#include <cub/device/device_segmented_sort.cuh>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/flat_search_cuda.h"  // kCudaMaxK
#include "common/search_types.h"

namespace drfast {
namespace {

constexpr int kTQ = 32;            // queries per scan tile
constexpr int kTR = 64;            // doc rows per scan tile
constexpr int kScanThreads = 256;  // threads of every scan block
constexpr int kThreads = 256;      // every other kernel
constexpr int64_t kKeyBudget = int64_t(1) << 23;   // keys per scratch buffer (64 MiB)
constexpr int64_t kMaxSegment = int64_t(1) << 17;  // keys per query per merge
constexpr int64_t kMaxQueryBatch = int64_t(1) << 20;  // keeps grid.y small
constexpr int64_t kMaxRows = int64_t(0xFFFFFFFEu);   // row ids live in 32 key bits
constexpr uint64_t kEmptyKey = ~uint64_t(0);          // sorts after every real key

static_assert(kTR % 32 == 0, "rank counting uses whole warps per tile row");
static_assert(kScanThreads % 32 == 0, "whole warps");
static_assert(sizeof(unsigned long long) == sizeof(int64_t), "atomicAdd on ranks");

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("drfast CUDA: ") + what + " failed: " +
                             cudaGetErrorString(err));
}

// `who` names the entry point in the message, e.g. "flat_search".
[[noreturn]] void invalid_input(const char* who, const std::string& msg) {
  throw std::invalid_argument(std::string("drfast CUDA ") + who + ": " + msg);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over n items.
unsigned grid_for(int64_t n) {
  return unsigned(std::min<int64_t>(std::max<int64_t>(ceil_div(n, kThreads), 1), 65535));
}

// ---------------------------------------------------------------- device --

// Ascending key order == score descending, then row ascending.
__device__ __forceinline__ uint64_t make_key(float s, int64_t row) {
  uint32_t u = (s == 0.0f) ? 0u : __float_as_uint(s);  // -0 and +0 must tie
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);       // monotone in s
  return (uint64_t(~u) << 32) | uint64_t(uint32_t(row));
}

__device__ __forceinline__ float key_score(uint64_t key) {
  uint32_t u = ~uint32_t(key >> 32);
  u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
  return __uint_as_float(u);
}

__device__ __forceinline__ float reciprocal_rank(int64_t r, int64_t cutoff) {
  return r <= cutoff ? __fdiv_rn(1.0f, float(r)) : 0.0f;
}

// Second half of a scan block (all kScanThreads threads must call it, after
// a __syncthreads that publishes the tile). The tile covers local queries
// [q0, q0 + kTQ) of the batch starting at global query b0 (nq queries in the
// batch) and rows [r0, r0 + kTR); ss holds the scores, ks their keys
// (kEmptyKey for rows >= N); entries of queries >= nq are never read.
// Adds the tile's rows that beat each positive to its rank and writes the
// tile's top-kk keys of local query bl to cand[bl * stride + k + tile * kk ...].
__device__ __forceinline__ void tile_epilogue(const float (*ss)[kTR], const uint64_t (*ks)[kTR],
                                              int64_t b0, int64_t q0, int64_t nq, int64_t r0,
                                              int64_t N, const int64_t* __restrict__ pos_offsets,
                                              const int64_t* __restrict__ pos_ids,
                                              const float* __restrict__ pos_scores,
                                              unsigned long long* pos_ranks,
                                              uint64_t* __restrict__ cand, int64_t stride, int k,
                                              int kk, int64_t tile) {
  const int tid = threadIdx.x;

  // Ranks: one warp per query; ballot + popc reduces before the atomic.
  const int warp = tid / 32, lane = tid % 32;
  for (int q = warp; q < kTQ && q0 + q < nq; q += kScanThreads / 32) {
    const int64_t b = b0 + q0 + q;
    const int64_t end = pos_offsets[b + 1];
    for (int64_t i = pos_offsets[b]; i < end; ++i) {
      const int64_t p = pos_ids[i];
      const float sp = pos_scores[i];
      unsigned count = 0;
      for (int r = lane; r < kTR; r += 32) {
        const int64_t row = r0 + r;
        const float s = ss[q][r];
        const bool beats = row < N && (s > sp || (s == sp && row < p));
        count += __popc(__ballot_sync(0xffffffffu, beats));
      }
      if (lane == 0 && count > 0) atomicAdd(pos_ranks + i, (unsigned long long)count);
    }
  }

  // Tile-local selection: a key's position in the sorted tile is the number
  // of keys before it (index breaks ties between empty keys), so the slots
  // [0, kk) are each written exactly once, already sorted.
  for (int e = tid; e < kTQ * kTR; e += kScanThreads) {
    const int q = e / kTR, r = e % kTR;
    if (q0 + q >= nq) break;  // e only grows, so every later q is out too
    const uint64_t key = ks[q][r];
    int pos = 0;
    for (int j = 0; j < kTR; ++j) {
      const uint64_t other = ks[q][j];
      pos += (other < key || (other == key && j < r)) ? 1 : 0;
    }
    if (pos < kk) cand[(q0 + q) * stride + k + tile * kk + pos] = key;
  }
}

__global__ void fill_kernel(uint64_t* dst, int64_t n, uint64_t value) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x)
    dst[e] = value;
}

// Moves the running top-k of each query into the layout of the next chunk.
__global__ void copy_running_kernel(const uint64_t* src, int64_t src_stride, uint64_t* dst,
                                    int64_t dst_stride, int64_t nq, int k) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < nq * k;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bl = e / k, j = e % k;
    dst[bl * dst_stride + j] = src[bl * src_stride + j];
  }
}

__global__ void offsets_kernel(int64_t* offsets, int64_t nq, int64_t stride) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e <= nq;
       e += int64_t(gridDim.x) * blockDim.x)
    offsets[e] = e * stride;
}

__global__ void write_topk_kernel(const uint64_t* src, int64_t stride, int64_t nq, int k,
                                  int64_t* ids, float* scores) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < nq * k;
       e += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t key = src[(e / k) * stride + e % k];
    const bool empty = key == kEmptyKey;
    ids[e] = empty ? int64_t(-1) : int64_t(key & 0xFFFFFFFFu);
    scores[e] = empty ? -INFINITY : key_score(key);
  }
}

// One block per query: weight[i, j] = |rr(rank_i) - rr(j + 1)|, 0 for padding
// and for candidates that are themselves positives of the query.
__global__ void weights_kernel(int64_t B, int k, int64_t cutoff,
                               const int64_t* __restrict__ pos_offsets,
                               const int64_t* __restrict__ pos_ids,
                               const int64_t* __restrict__ pos_ranks,
                               const int64_t* __restrict__ ids, float* pair_weights) {
  __shared__ unsigned char excluded[kCudaMaxK];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const int64_t p0 = pos_offsets[b], p1 = pos_offsets[b + 1];
    if (p0 == p1) continue;  // uniform across the block
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
      const int64_t id = ids[b * k + j];
      bool ex = id < 0;
      for (int64_t i = p0; i < p1 && !ex; ++i) ex = pos_ids[i] == id;
      excluded[j] = ex ? 1 : 0;
    }
    __syncthreads();
    for (int64_t i = p0; i < p1; ++i) {
      const float rr_pos = reciprocal_rank(pos_ranks[i], cutoff);
      for (int j = threadIdx.x; j < k; j += blockDim.x)
        pair_weights[i * k + j] =
            excluded[j] ? 0.0f : fabsf(rr_pos - reciprocal_rank(j + 1, cutoff));
    }
    __syncthreads();  // before the next query overwrites `excluded`
  }
}

// ------------------------------------------------------------------ host --

// Stream-ordered scratch allocation, freed on every exit path.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(cudaStream_t stream) : stream_(stream) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);  // best effort while unwinding
  }
  void allocate(size_t bytes) {
    release();
    bytes = std::max<size_t>(bytes, 1);
    check(cudaMallocAsync(&ptr_, bytes, stream_), "cudaMallocAsync");
    bytes_ = bytes;
  }
  void release() {
    if (!ptr_) return;
    void* p = ptr_;
    ptr_ = nullptr;
    bytes_ = 0;
    check(cudaFreeAsync(p, stream_), "cudaFreeAsync");
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Checks shared by every entry point, before B == 0 returns early.
void check_common_args(const SearchInput& in, const char* who) {
  if (in.k < 1 || in.k > kCudaMaxK)
    invalid_input(who, "k must be in [1, " + std::to_string(kCudaMaxK) + "] (got " +
                           std::to_string(in.k) + ")");
  if (in.N > kMaxRows) invalid_input(who, "N must be at most " + std::to_string(kMaxRows));
  if (!in.pos_offsets) invalid_input(who, "pos_offsets must not be null");
}

// Checks the output pointers and returns nnz = pos_offsets[B] (read from the
// device, which synchronises the stream). Requires B > 0.
int64_t check_outputs_and_count_positives(const SearchInput& in, const SearchOutput& out,
                                          cudaStream_t stream, const char* who) {
  if (!out.ids || !out.scores) invalid_input(who, "ids and scores must not be null");
  int64_t nnz = 0;
  check(cudaMemcpyAsync(&nnz, in.pos_offsets + in.B, sizeof(int64_t), cudaMemcpyDeviceToHost,
                        stream),
        "cudaMemcpyAsync(pos_offsets[B])");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  if (nnz < 0) invalid_input(who, "pos_offsets[B] must be non-negative");
  if (nnz > 0 && (!in.pos_ids || !out.pos_scores || !out.pos_ranks))
    invalid_input(who,
                  "pos_ids, pos_scores and pos_ranks must not be null when there are positives");
  if (nnz > 0 && in.cutoff > 0 && !out.pair_weights)
    invalid_input(who, "pair_weights must not be null when cutoff > 0");
  return nnz;
}

// Steps 2 and 3 of the pipeline (step 1, the positives kernel, must already
// be enqueued on `stream`). launch_scan(grid, b0, nq, row_begin, cand, stride,
// k, kk) must enqueue a scan kernel of kScanThreads threads over `grid`
// (grid.x: tiles of kTR rows from row_begin, grid.y: groups of kTQ queries of
// the batch [b0, b0 + nq)) whose blocks end with tile_epilogue(..., tile =
// blockIdx.x), and check its launch.
template <typename LaunchScan>
void run_fused_topk(const SearchInput& in, const SearchOutput& out, int64_t nnz,
                    cudaStream_t stream, LaunchScan&& launch_scan) {
  const int64_t B = in.B, N = in.N;
  const int k = int(in.k);
  const int kk = std::min(k, kTR);

  // Scratch: a batch of nq queries, each with a segment of k running keys
  // followed by T tiles x kk candidates; both buffers hold <= kKeyBudget keys.
  const int64_t tiles = ceil_div(N, kTR);
  const int64_t batch = std::min({B, kKeyBudget / (k + kk), kMaxQueryBatch});
  const int64_t per_query = std::min(kKeyBudget / batch, kMaxSegment);  // >= k + kk
  const int64_t max_tiles = std::max<int64_t>(1, std::min(tiles, (per_query - k) / kk));
  const int64_t max_stride = k + max_tiles * kk;

  DeviceBuffer keys(stream), sorted(stream), offsets(stream), temp(stream);
  keys.allocate(size_t(batch * max_stride) * sizeof(uint64_t));
  sorted.allocate(size_t(batch * max_stride) * sizeof(uint64_t));
  offsets.allocate(size_t(batch + 1) * sizeof(int64_t));

  for (int64_t b0 = 0; b0 < B; b0 += batch) {
    const int64_t nq = std::min(batch, B - b0);
    // The running top-k lives in `sorted` between chunks; start it empty.
    fill_kernel<<<grid_for(nq * k), kThreads, 0, stream>>>(sorted.as<uint64_t>(), nq * k,
                                                          kEmptyKey);
    check(cudaGetLastError(), "fill_kernel launch");
    int64_t prev_stride = k;
    for (int64_t t0 = 0; t0 < tiles; t0 += max_tiles) {
      const int64_t T = std::min(max_tiles, tiles - t0);
      const int64_t stride = k + T * kk;
      copy_running_kernel<<<grid_for(nq * k), kThreads, 0, stream>>>(
          sorted.as<uint64_t>(), prev_stride, keys.as<uint64_t>(), stride, nq, k);
      check(cudaGetLastError(), "copy_running_kernel launch");
      offsets_kernel<<<grid_for(nq + 1), kThreads, 0, stream>>>(offsets.as<int64_t>(), nq,
                                                               stride);
      check(cudaGetLastError(), "offsets_kernel launch");

      const dim3 grid(unsigned(T), unsigned(ceil_div(nq, kTQ)));
      launch_scan(grid, b0, nq, t0 * kTR, keys.as<uint64_t>(), stride, k, kk);

      // Merge: sort each query's segment (running + candidates) ascending by key.
      const int64_t* off = offsets.as<int64_t>();
      size_t temp_bytes = 0;
      check(cub::DeviceSegmentedSort::SortKeys(nullptr, temp_bytes, keys.as<uint64_t>(),
                                               sorted.as<uint64_t>(), nq * stride, nq, off,
                                               off + 1, stream),
            "cub::DeviceSegmentedSort::SortKeys (size query)");
      if (temp.bytes() < temp_bytes) temp.allocate(temp_bytes);
      temp_bytes = temp.bytes();
      check(cub::DeviceSegmentedSort::SortKeys(temp.as<void>(), temp_bytes, keys.as<uint64_t>(),
                                               sorted.as<uint64_t>(), nq * stride, nq, off,
                                               off + 1, stream),
            "cub::DeviceSegmentedSort::SortKeys");
      prev_stride = stride;
    }
    write_topk_kernel<<<grid_for(nq * k), kThreads, 0, stream>>>(
        sorted.as<uint64_t>(), prev_stride, nq, k, out.ids + b0 * k, out.scores + b0 * k);
    check(cudaGetLastError(), "write_topk_kernel launch");
  }

  if (in.cutoff > 0 && nnz > 0) {
    weights_kernel<<<unsigned(std::min<int64_t>(B, 65535)), kThreads, 0, stream>>>(
        B, k, in.cutoff, in.pos_offsets, in.pos_ids, out.pos_ranks, out.ids, out.pair_weights);
    check(cudaGetLastError(), "weights_kernel launch");
  }

  temp.release();
  offsets.release();
  sorted.release();
  keys.release();
}

}  // namespace
}  // namespace drfast
