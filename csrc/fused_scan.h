// The fused scan shared by every CPU scorer: one pass over the rows computes
// the top-k, every positive's exact corpus rank and the ΔMRR pair weights.
//
// A Scorer provides
//   int64_t block_rows() const;                  rows scored per block
//   Scratch make_scratch() const;                per-thread working memory
//   void score_block(Scratch&, int64_t r0, int64_t nb, float* out, int64_t ld);
//        out[b * ld + i] = score(query b, row r0 + i) for every query b
//   float score_pair(Scratch&, int64_t b, int64_t row);
//        bit-identical to the value score_block gives for that pair
#pragma once
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "search_types.h"

namespace drfast {

struct Candidate {
  float score;
  int64_t row;
};

// Result order: higher score first, then lower row first.
inline bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.row < b.row);
}

// Bounded heap keeping the best `capacity` candidates; its top is the worst kept.
class TopK {
 public:
  TopK(Candidate* storage, int64_t capacity) : h_(storage), cap_(capacity) {}

  // Scores below this cannot enter (every kept candidate ranks before them).
  float threshold() const {
    return size_ < cap_ ? -std::numeric_limits<float>::infinity() : h_[0].score;
  }

  void push(float score, int64_t row) {
    const Candidate c{score, row};
    if (size_ < cap_) {
      h_[size_++] = c;
      std::push_heap(h_, h_ + size_, ranks_before);
    } else if (ranks_before(c, h_[0])) {
      std::pop_heap(h_, h_ + size_, ranks_before);
      h_[size_ - 1] = c;
      std::push_heap(h_, h_ + size_, ranks_before);
    }
  }

  int64_t size() const { return size_; }
  const Candidate* begin() const { return h_; }
  const Candidate* end() const { return h_ + size_; }

 private:
  Candidate* h_;
  int64_t cap_;
  int64_t size_ = 0;
};

// Rows in scores[0, n) (row ids r0 + i) that rank before the positive (sp, p).
inline int64_t count_ranked_before(const float* scores, int64_t n, int64_t r0, float sp, int64_t p) {
  const int64_t split = std::clamp<int64_t>(p - r0, 0, n);  // rows before p win ties
  int64_t c = 0;
  for (int64_t i = 0; i < split; ++i) c += scores[i] >= sp;
  for (int64_t i = split; i < n; ++i) c += scores[i] > sp;
  return c;
}

inline float block_max(const float* s, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, s[i]);
  return m;
}

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

template <class Scorer>
void fused_scan(const SearchInput& in, const SearchOutput& out, const Scorer& scorer, int threads) {
  const int64_t B = in.B, N = in.N, k = in.k, nnz = in.pos_offsets[B];
  const int64_t kept = std::min(k, N);
  const int64_t nb_max = scorer.block_rows();
  const int64_t nblocks = (N + nb_max - 1) / nb_max;
  const int T = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, nblocks)));

  // 1. Positive scores first: the scan compares every row against them.
  std::vector<int64_t> pos_query(nnz);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = in.pos_offsets[b]; i < in.pos_offsets[b + 1]; ++i) pos_query[i] = b;
#pragma omp parallel num_threads(T)
  {
    auto scratch = scorer.make_scratch();
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nnz; ++i)
      out.pos_scores[i] = scorer.score_pair(scratch, pos_query[i], in.pos_ids[i]);
  }

  // 2. One pass over the rows; each thread keeps its own heaps and counts.
  // Unfilled heap slots keep row -1 so the merge can skip them.
  std::vector<Candidate> heap_storage(static_cast<size_t>(T) * B * kept,
                                      Candidate{-std::numeric_limits<float>::infinity(), -1});
  std::vector<int64_t> counts(static_cast<size_t>(T) * nnz, 0);
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num();
    auto scratch = scorer.make_scratch();
    std::vector<float> scores(static_cast<size_t>(B) * nb_max);
    std::vector<TopK> heaps;
    heaps.reserve(B);
    for (int64_t b = 0; b < B; ++b)
      heaps.emplace_back(heap_storage.data() + (static_cast<size_t>(t) * B + b) * kept, kept);
    int64_t* my_counts = counts.data() + static_cast<size_t>(t) * nnz;

#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t r0 = blk * nb_max, nb = std::min(nb_max, N - r0);
      scorer.score_block(scratch, r0, nb, scores.data(), nb_max);
      for (int64_t b = 0; b < B; ++b) {
        const float* s = scores.data() + b * nb_max;
        for (int64_t i = in.pos_offsets[b]; i < in.pos_offsets[b + 1]; ++i)
          my_counts[i] += count_ranked_before(s, nb, r0, out.pos_scores[i], in.pos_ids[i]);
        TopK& heap = heaps[b];
        if (block_max(s, nb) < heap.threshold()) continue;  // the common case after warm-up
        for (int64_t j = 0; j < nb; ++j)
          if (s[j] >= heap.threshold()) heap.push(s[j], r0 + j);
      }
    }
  }

  // 3. Merge the per-thread heaps and write the ordered top-k, padded past N.
#pragma omp parallel for schedule(static) num_threads(T)
  for (int64_t b = 0; b < B; ++b) {
    std::vector<Candidate> all;
    all.reserve(static_cast<size_t>(T) * kept);
    for (int t = 0; t < T; ++t) {
      const Candidate* h = heap_storage.data() + (static_cast<size_t>(t) * B + b) * kept;
      for (int64_t j = 0; j < kept; ++j)
        if (h[j].row >= 0) all.push_back(h[j]);
    }
    std::sort(all.begin(), all.end(), ranks_before);
    for (int64_t j = 0; j < k; ++j) {
      const bool real = j < std::min<int64_t>(kept, static_cast<int64_t>(all.size()));
      out.ids[b * k + j] = real ? all[j].row : -1;
      out.scores[b * k + j] = real ? all[j].score : -std::numeric_limits<float>::infinity();
    }
  }

  for (int64_t i = 0; i < nnz; ++i) {
    int64_t c = 1;
    for (int t = 0; t < T; ++t) c += counts[static_cast<size_t>(t) * nnz + i];
    out.pos_ranks[i] = c;
  }
  if (in.cutoff > 0) write_pair_weights(in, out, T);
}

}  // namespace drfast
