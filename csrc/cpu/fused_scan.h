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

template <class Scorer>
void fused_scan(const SearchInput& in, const SearchOutput& out, const Scorer& scorer, const IsaKernels& isa,
                int threads) {
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

  // 2. One pass over the rows; each thread keeps its own candidates and counts.
  // Within a thread blocks come in ascending row order (TopKBuffer relies on it).
  const int64_t cap = 2 * kept + nb_max;
  std::vector<Candidate> cand_storage(static_cast<size_t>(T) * B * cap);
  std::vector<int64_t> cand_sizes(static_cast<size_t>(T) * B, 0);
  std::vector<int64_t> counts(static_cast<size_t>(T) * nnz, 0);
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num();
    auto scratch = scorer.make_scratch();
    std::vector<float> scores(static_cast<size_t>(B) * nb_max);
    std::vector<int32_t> selected(nb_max);
    std::vector<TopKBuffer> topk;
    topk.reserve(B);
    for (int64_t b = 0; b < B; ++b)
      topk.emplace_back(cand_storage.data() + (static_cast<size_t>(t) * B + b) * cap, kept, cap);
    int64_t* my_counts = counts.data() + static_cast<size_t>(t) * nnz;

#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t r0 = blk * nb_max, nb = std::min(nb_max, N - r0);
      scorer.score_block(scratch, r0, nb, scores.data(), nb_max);
      for (int64_t b = 0; b < B; ++b) {
        const float* s = scores.data() + b * nb_max;
        const float best = isa.max_of(s, nb);
        for (int64_t i = in.pos_offsets[b]; i < in.pos_offsets[b + 1]; ++i)
          if (best >= out.pos_scores[i])  // else no row of the block ranks before this positive
            my_counts[i] += isa.count_ranked_before(s, nb, r0, out.pos_scores[i], in.pos_ids[i]);
        if (best > topk[b].threshold()) topk[b].offer(isa, s, nb, r0, selected.data());
      }
    }
    for (int64_t b = 0; b < B; ++b) cand_sizes[static_cast<size_t>(t) * B + b] = topk[b].size();
  }

  // 3. Merge the per-thread candidates and write the ordered top-k, padded past N.
#pragma omp parallel for schedule(static) num_threads(T)
  for (int64_t b = 0; b < B; ++b) {
    std::vector<Candidate> all;
    for (int t = 0; t < T; ++t) {
      const Candidate* c = cand_storage.data() + (static_cast<size_t>(t) * B + b) * cap;
      all.insert(all.end(), c, c + cand_sizes[static_cast<size_t>(t) * B + b]);
    }
    const int64_t n = std::min<int64_t>(kept, static_cast<int64_t>(all.size()));
    std::partial_sort(all.begin(), all.begin() + n, all.end(), ranks_before);
    for (int64_t j = 0; j < k; ++j) {
      out.ids[b * k + j] = j < n ? all[j].row : -1;
      out.scores[b * k + j] = j < n ? all[j].score : -std::numeric_limits<float>::infinity();
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
