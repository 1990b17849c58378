// The fused scan shared by every CPU scorer: one pass over the rows computes
// the top-k, every positive's exact corpus rank and the ΔMRR pair weights.
//
// A Scorer provides
//   int64_t block_rows() const;                  rows scored per block
//   Scratch make_scratch() const;                per-thread working memory
//   void score_block(Scratch&, int64_t r0, int64_t nb, float* out, int64_t ld) const;
//        out[b * ld + i] = score(query b, row r0 + i) for every query b
//   float score_pair(Scratch&, int64_t b, int64_t row) const;
//        bit-identical to the value score_block gives for that pair
// The per-element loops run through the IsaKernels table of the chosen ISA;
// this file itself is compiled with baseline flags only.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/search_types.h"
#include "cpu/isa_kernels.h"

namespace drfast {

struct Candidate {
  float score;
  int64_t row;
};

// Result order: higher score first, then lower row first.
inline bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.row < b.row);
}

// The best `keep` candidates of one query among the rows one thread scans, in
// ascending row order. Candidates above the threshold are appended (a few per
// block once it has warmed up); when the buffer fills, nth_element keeps the
// best `keep` and raises the threshold to the worst kept score. A later row with
// exactly that score ranks after every kept one (lower rows win ties), so
// `> threshold` loses nothing.
class TopKBuffer {
 public:
  TopKBuffer(Candidate* storage, int64_t keep, int64_t capacity)
      : buf_(storage), keep_(keep), cap_(capacity) {}

  // Offer scores[0, n) of rows r0.. (n <= capacity - keep); idx is room for n indices.
  void offer(const IsaKernels& isa, const float* scores, int64_t n, int64_t r0, int32_t* idx) {
    if (size_ + n > cap_) compact();
    const int64_t m = isa.select_above(scores, n, threshold_, idx);
    for (int64_t j = 0; j < m; ++j) buf_[size_ + j] = Candidate{scores[idx[j]], r0 + idx[j]};
    size_ += m;
  }

  float threshold() const { return threshold_; }
  int64_t size() const { return size_; }
  const Candidate* begin() const { return buf_; }
  const Candidate* end() const { return buf_ + size_; }

 private:
  void compact() {
    if (size_ <= keep_) return;
    std::nth_element(buf_, buf_ + keep_ - 1, buf_ + size_, ranks_before);
    size_ = keep_;
    threshold_ = buf_[keep_ - 1].score;
  }

  Candidate* buf_;
  int64_t keep_, cap_;
  int64_t size_ = 0;
  float threshold_ = -std::numeric_limits<float>::infinity();
};

inline float reciprocal_rank(int64_t rank, int64_t cutoff) {
  return rank <= cutoff ? 1.0f / static_cast<float>(rank) : 0.0f;
}

// ΔMRR weights of every (positive, candidate) pair from the final ranks and top-k.
inline void write_pair_weights(const SearchInput& in, const SearchOutput& out, int threads) {
  const int64_t k = in.k;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < in.B; ++b) {
    const int64_t p0 = in.pos_offsets[b], p1 = in.pos_offsets[b + 1];
    const int64_t* ids = out.ids + b * k;
    for (int64_t i = p0; i < p1; ++i) {
      float* w = out.pair_weights + i * k;
      const float rr_pos = reciprocal_rank(out.pos_ranks[i], in.cutoff);
      for (int64_t j = 0; j < k; ++j) {
        const bool is_positive =
            ids[j] < 0 || std::find(in.pos_ids + p0, in.pos_ids + p1, ids[j]) != in.pos_ids + p1;
        w[j] = is_positive ? 0.0f : std::fabs(rr_pos - reciprocal_rank(j + 1, in.cutoff));
      }
    }
  }
}

// Every buffer the parallel regions use, allocated before them: std::bad_alloc thrown inside an
// OpenMP region terminates the process, while here it reaches Python as MemoryError.
template <class Scorer>
struct ScanBuffers {
  ScanBuffers(const Scorer& scorer, int T, int64_t B, int64_t nnz, int64_t nb_max, int64_t keep, int64_t cap)
      : scores(static_cast<size_t>(T) * B * nb_max),
        selected(static_cast<size_t>(T) * nb_max),
        candidates(static_cast<size_t>(B) * T * cap),
        counts(static_cast<size_t>(T) * nnz, 0) {
    scratch.reserve(T);
    for (int t = 0; t < T; ++t) scratch.push_back(scorer.make_scratch());
    topk.reserve(static_cast<size_t>(T) * B);
    for (int t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b)
        topk.emplace_back(candidates.data() + (static_cast<size_t>(b) * T + t) * cap, keep, cap);
  }
  std::vector<typename Scorer::Scratch> scratch;  // [T]
  std::vector<float> scores;                      // [T][B * nb_max] scores of one block
  std::vector<int32_t> selected;                  // [T][nb_max]
  std::vector<Candidate> candidates;              // [B][T][cap]: query b's candidates from thread t
  std::vector<TopKBuffer> topk;                   // [T][B]: thread t's buffer of query b
  std::vector<int64_t> counts;                    // [T][nnz] rows ranking before each positive
};

// out[i] = the score of positive i (in.pos_scores_in[i] when given), with the scan's own pair
// scorer; pos_query [nnz] receives each positive's query. scratch: at least T per-thread scratches.
template <class Scorer>
void score_positives(const SearchInput& in, float* out, const Scorer& scorer,
                     std::vector<typename Scorer::Scratch>& scratch, int64_t* pos_query, int T) {
  const int64_t nnz = in.pos_offsets[in.B];
  for (int64_t b = 0; b < in.B; ++b)
    for (int64_t i = in.pos_offsets[b]; i < in.pos_offsets[b + 1]; ++i) pos_query[i] = b;
  if (in.pos_scores_in) {
    std::copy(in.pos_scores_in, in.pos_scores_in + nnz, out);
    return;
  }
#pragma omp parallel num_threads(T)
  {
    auto& s = scratch[omp_get_thread_num()];
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nnz; ++i) out[i] = scorer.score_pair(s, pos_query[i], in.pos_ids[i]);
  }
}

// The positives' scores alone (no scan): the scores fused_scan would give them, bit for bit.
template <class Scorer>
void score_positives_only(const SearchInput& in, float* out, const Scorer& scorer, int threads) {
  const int64_t nnz = in.pos_offsets[in.B];
  const int T = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, nnz)));
  std::vector<typename Scorer::Scratch> scratch;
  scratch.reserve(T);
  for (int t = 0; t < T; ++t) scratch.push_back(scorer.make_scratch());
  std::vector<int64_t> pos_query(nnz);
  SearchInput computed = in;
  computed.pos_scores_in = nullptr;
  score_positives(computed, out, scorer, scratch, pos_query.data(), T);
}

template <class Scorer>
void fused_scan(const SearchInput& in, const SearchOutput& out, const Scorer& scorer, const IsaKernels& isa,
                int threads) {
  const int64_t B = in.B, N = in.N, k = in.k, nnz = in.pos_offsets[B];
  const int64_t kept = std::min(k, N);
  const int64_t nb_max = scorer.block_rows();
  const int64_t nblocks = (N + nb_max - 1) / nb_max;
  const int T = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, nblocks)));
  const int64_t cap = 2 * kept + nb_max;
  std::vector<int64_t> pos_query(nnz);
  ScanBuffers<Scorer> buf(scorer, T, B, nnz, nb_max, kept, cap);

  // 1. Positive scores first (or the given ones): the scan compares every row against them.
  score_positives(in, out.pos_scores, scorer, buf.scratch, pos_query.data(), T);

  // 2. One pass over the rows; each thread keeps its own candidates and counts.
  // Within a thread blocks come in ascending row order (TopKBuffer relies on it).
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num();
    auto& scratch = buf.scratch[t];
    float* scores = buf.scores.data() + static_cast<size_t>(t) * B * nb_max;
    int32_t* selected = buf.selected.data() + static_cast<size_t>(t) * nb_max;
    int64_t* my_counts = buf.counts.data() + static_cast<size_t>(t) * nnz;
    TopKBuffer* my_topk = buf.topk.data() + static_cast<size_t>(t) * B;

#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t r0 = blk * nb_max, nb = std::min(nb_max, N - r0);
      scorer.score_block(scratch, r0, nb, scores, nb_max);
      for (int64_t b = 0; b < B; ++b) {
        const float* s = scores + b * nb_max;
        const float best = isa.max_of(s, nb);
        for (int64_t i = in.pos_offsets[b]; i < in.pos_offsets[b + 1]; ++i)
          if (best >= out.pos_scores[i])  // else no row of the block ranks before this positive
            my_counts[i] += isa.count_ranked_before(s, nb, r0, out.pos_scores[i], in.pos_ids[i]);
        if (best > my_topk[b].threshold()) my_topk[b].offer(isa, s, nb, r0, selected);
      }
    }
  }

  // 3. Gather each query's candidates from the T threads (in place), write the ordered top-k, padded past N.
#pragma omp parallel for schedule(static) num_threads(T)
  for (int64_t b = 0; b < B; ++b) {
    Candidate* all = buf.candidates.data() + static_cast<size_t>(b) * T * cap;
    int64_t size = 0;
    for (int t = 0; t < T; ++t) {  // thread t's candidates move left, next to those gathered so far
      const TopKBuffer& topk = buf.topk[static_cast<size_t>(t) * B + b];
      if (topk.begin() != all + size) std::copy(topk.begin(), topk.end(), all + size);
      size += topk.size();
    }
    const int64_t n = std::min(kept, size);
    std::partial_sort(all, all + n, all + size, ranks_before);
    for (int64_t j = 0; j < k; ++j) {
      out.ids[b * k + j] = j < n ? all[j].row : -1;
      out.scores[b * k + j] = j < n ? all[j].score : -std::numeric_limits<float>::infinity();
    }
  }

  for (int64_t i = 0; i < nnz; ++i) {
    int64_t c = 1;
    for (int t = 0; t < T; ++t) c += buf.counts[static_cast<size_t>(t) * nnz + i];
    out.pos_ranks[i] = c;
  }
  if (in.cutoff > 0) write_pair_weights(in, out, T);
}

}  // namespace drfast
