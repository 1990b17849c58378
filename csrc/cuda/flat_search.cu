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

#include <cub/device/device_segmented_sort.cuh>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace drfast {
namespace {

constexpr int kTQ = 32;            // queries per scan block
constexpr int kTR = 64;            // doc rows per scan block (one tile)
constexpr int kTD = 32;            // slice of the d features staged per step
constexpr int kScanThreads = 256;  // 16 x 16 threads, 2 x 4 scores each
constexpr int kThreads = 256;      // every other kernel
constexpr int64_t kKeyBudget = int64_t(1) << 23;   // keys per scratch buffer (64 MiB)
constexpr int64_t kMaxSegment = int64_t(1) << 17;  // keys per query per merge
constexpr int64_t kMaxQueryBatch = int64_t(1) << 20;  // keeps grid.y small
constexpr int64_t kMaxRows = int64_t(0xFFFFFFFEu);   // row ids live in 32 key bits
constexpr uint64_t kEmptyKey = ~uint64_t(0);          // sorts after every real key

static_assert(kTR % 32 == 0, "rank counting uses whole warps per tile row");
static_assert(kScanThreads == 256 && kTQ == 32 && kTR == 64, "micro-tile mapping");
static_assert(sizeof(unsigned long long) == sizeof(int64_t), "atomicAdd on ranks");

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("drfast CUDA: ") + what + " failed: " +
                             cudaGetErrorString(err));
}

void invalid(const std::string& msg) {
  throw std::invalid_argument("drfast CUDA flat_search: " + msg);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over n items.
unsigned grid_for(int64_t n) {
  return unsigned(std::min<int64_t>(std::max<int64_t>(ceil_div(n, kThreads), 1), 65535));
}

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
    if (pos < kk) cand[(q0 + q) * stride + k + int64_t(blockIdx.x) * kk + pos] = key;
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

template <typename DocT>
void run_search(const SearchInput& in, const SearchOutput& out, int64_t nnz,
                cudaStream_t stream) {
  const int64_t B = in.B, N = in.N, d = in.d;
  const int k = int(in.k);
  const int kk = std::min(k, kTR);
  const auto* docs = static_cast<const DocT*>(in.docs);
  auto* ranks = reinterpret_cast<unsigned long long*>(out.pos_ranks);

  if (nnz > 0) {
    positives_kernel<DocT><<<unsigned(std::min<int64_t>(B, 65535)), 128, 0, stream>>>(
        in.queries, docs, B, d, in.pos_offsets, in.pos_ids, out.pos_scores, out.pos_ranks);
    check(cudaGetLastError(), "positives_kernel launch");
  }

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
      scan_kernel<DocT><<<grid, kScanThreads, 0, stream>>>(
          in.queries, docs, d, N, b0, nq, t0 * kTR, in.pos_offsets, in.pos_ids, out.pos_scores,
          ranks, keys.as<uint64_t>(), stride, k, kk);
      check(cudaGetLastError(), "scan_kernel launch");

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

void flat_search_cuda(const SearchInput& in, const SearchOutput& out, void* stream_ptr) {
  if (in.B < 0 || in.N < 0 || in.d < 0) invalid("B, N and d must be non-negative");
  if (in.k < 1 || in.k > kCudaMaxK)
    invalid("k must be in [1, " + std::to_string(kCudaMaxK) + "] (got " +
            std::to_string(in.k) + ")");
  if (in.N > kMaxRows) invalid("N must be at most " + std::to_string(kMaxRows));
  if (!in.pos_offsets) invalid("pos_offsets must not be null");
  if (in.B == 0) return;  // nothing to compute or write
  if (!in.queries && in.d > 0) invalid("queries must not be null");
  if (!in.docs && in.N > 0 && in.d > 0) invalid("docs must not be null");
  if (!out.ids || !out.scores) invalid("ids and scores must not be null");

  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  int64_t nnz = 0;
  check(cudaMemcpyAsync(&nnz, in.pos_offsets + in.B, sizeof(int64_t), cudaMemcpyDeviceToHost,
                        stream),
        "cudaMemcpyAsync(pos_offsets[B])");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  if (nnz < 0) invalid("pos_offsets[B] must be non-negative");
  if (nnz > 0 && (!in.pos_ids || !out.pos_scores || !out.pos_ranks))
    invalid("pos_ids, pos_scores and pos_ranks must not be null when there are positives");
  if (nnz > 0 && in.cutoff > 0 && !out.pair_weights)
    invalid("pair_weights must not be null when cutoff > 0");

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
