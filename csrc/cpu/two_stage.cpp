// The exact two-stage flat search (see two_stage.h): one pass over the low-precision codes gives
// every (query, row) an interval [lo, hi] holding its exact score; only rows whose interval can
// still matter are refined (second bound) and scored exactly with the exact scan's pair scorer.
//
// Top-k: each thread keeps, per query, candidate intervals of its rows (ascending row order) and
// L, the k-th largest candidate lower bound; a row with hi < L cannot enter the top-k. At the end
// the candidates of all threads are pruned with the best L, the survivors scored exactly and
// ordered as fused_scan orders them. Ranks: rows with lo > s_p rank before positive p, rows with
// hi < s_p after it; rows with lo <= s_p <= hi are refined, then scored exactly and counted with
// the tie rule by row.
#include "cpu/two_stage.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/kernels.h"
#include "cpu/aligned_floats.h"
#include "cpu/fused_scan.h"
#include "cpu/isa_kernels.h"

namespace drfast {
namespace {

// One query's top-k candidates among one thread's rows (offered in ascending row order), kept as
// intervals [lo, hi] holding their exact scores; exact scores are computed only when the buffer
// cannot be pruned (many ties) and, for the survivors, at the end.
//   L: a value with `keep` distinct rows scoring >= L; a row with hi < L cannot enter the top-k.
//   exact_threshold: after an exact compaction, the keep-th best exact score; a later row with
//   hi <= it cannot enter (it would at best tie with earlier rows, which win).
struct IntervalCandidate {
  float lo, hi;
  int64_t row;
  bool exact;  // lo == hi == the exact score
};

class IntervalTopK {
 public:
  IntervalTopK(IntervalCandidate* storage, float* heap, int64_t keep, int64_t cap)
      : buf_(storage), heap_(heap), keep_(keep), cap_(cap) {}
  float lower() const { return lower_; }
  void raise_lower(float l) { lower_ = std::max(lower_, l); }
  // A row is admitted when hi > this, i.e. hi >= L and hi > exact_threshold.
  float admit_above() const {
    return std::max(exact_threshold_, std::nextafter(lower_, -std::numeric_limits<float>::infinity()));
  }
  template <class Exact>
  void push(float lo, float hi, int64_t row, const Exact& exact, int64_t& rescored) {
    // L from the candidates' (tighter) lower bounds at once: a min-heap of the best `keep`.
    auto greater = [](float a, float b) { return a > b; };
    if (heap_size_ < keep_) {
      heap_[heap_size_++] = lo;
      std::push_heap(heap_, heap_ + heap_size_, greater);
      if (heap_size_ == keep_) raise_lower(heap_[0]);
    } else if (lo > heap_[0]) {
      std::pop_heap(heap_, heap_ + keep_, greater);
      heap_[keep_ - 1] = lo;
      std::push_heap(heap_, heap_ + keep_, greater);
      raise_lower(heap_[0]);
    }
    buf_[size_++] = IntervalCandidate{lo, hi, row, false};
    if (size_ == cap_) prune(exact, rescored);
  }
  int64_t size() const { return size_; }
  const IntervalCandidate* begin() const { return buf_; }

 private:
  template <class Exact>
  void prune(const Exact& exact, int64_t& rescored) {
    // L from the candidates' own lower bounds (keep distinct rows), then drop every hi < L.
    std::nth_element(buf_, buf_ + keep_ - 1, buf_ + size_,
                     [](const IntervalCandidate& a, const IntervalCandidate& b) { return a.lo > b.lo; });
    raise_lower(buf_[keep_ - 1].lo);
    const float l = lower_;
    size_ = std::remove_if(buf_, buf_ + size_, [l](const IntervalCandidate& c) { return c.hi < l; }) - buf_;
    if (size_ <= cap_ / 2) return;
    // Too many undecided (ties): score them exactly and keep the best `keep`, as TopKBuffer does.
    for (int64_t i = 0; i < size_; ++i)
      if (!buf_[i].exact) {
        const float s = exact(buf_[i].row);
        ++rescored;
        buf_[i] = IntervalCandidate{s, s, buf_[i].row, true};
      }
    std::nth_element(buf_, buf_ + keep_ - 1, buf_ + size_, [](const IntervalCandidate& a, const IntervalCandidate& b) {
      return ranks_before(Candidate{a.lo, a.row}, Candidate{b.lo, b.row});
    });
    size_ = keep_;
    exact_threshold_ = buf_[keep_ - 1].lo;
  }

  IntervalCandidate* buf_;
  float* heap_;  // [keep] lower bounds of candidates (every candidate a distinct row)
  int64_t keep_, cap_, size_ = 0, heap_size_ = 0;
  float lower_ = -std::numeric_limits<float>::infinity();
  float exact_threshold_ = -std::numeric_limits<float>::infinity();
};

// The second bound of one pair, in double: [lo2, hi2] holds the exact score (two_stage.py).
struct Interval {
  double lo, hi;
};

class Refiner {
 public:
  Refiner(const FirstPassView& fp, const RefineView& rv, const FirstPassKernels& k) : fp_(fp), rv_(rv), k_(k) {}
  bool enabled() const { return rv_.rcodes != nullptr; }

  // Second bounds of query b for rows r0 + idx[j], j < m, into iv; raw_b: the block's first-pass
  // sums of query b (u8 query . x8); d12, d21: scratch for m dot products each.
  void bounds(int64_t b, int64_t r0, const int32_t* idx, int64_t m, const uint32_t* raw_b, int32_t* d12,
              int32_t* d21, Interval* iv) const {
    const int64_t dp = fp_.dp;
    k_.refine_dots(static_cast<const uint8_t*>(fp_.qcodes) + b * dp, rv_.q2codes + b * dp, rv_.rcodes + r0 * dp,
                   static_cast<const int8_t*>(fp_.codes) + r0 * dp, dp, idx, m, dp, d12, d21);
    for (int64_t j = 0; j < m; ++j)
      iv[j] = interval(b, r0 + idx[j], static_cast<int32_t>(raw_b[idx[j]]), d12[j], d21[j]);
  }

 private:
  // One pair's interval from its three exact int32 sums (I11 = raw11 - 128 sx, ...).
  Interval interval(int64_t b, int64_t row, int32_t raw11, int32_t d12, int32_t d21) const {
    const int64_t sx = fp_.rsum[row], sr = rv_.rsum[row];
    const int64_t i11 = static_cast<int64_t>(raw11) - 128 * sx;
    const int64_t i12 = static_cast<int64_t>(d12) - 128 * sr;
    const int64_t i21 = static_cast<int64_t>(d21) - 128 * sx;
    const double c = fp_.qscale[b], c2 = rv_.qscale2[b], a = fp_.rscale[row], a2 = rv_.rscale[row];
    const double est = c * a * static_cast<double>(i11) + c * a2 * static_cast<double>(i12) +
                       c2 * a * static_cast<double>(i21);
    const double alpha = fp_.alpha[b], beta1 = rv_.beta1[b], beta2 = rv_.beta2[b], w2 = rv_.w2[b];
    const double m1 = fp_.rnorm[row], e2 = rv_.rerr[row], m2 = rv_.rnorm[row], n2 = rv_.rresnorm[row];
    constexpr double kRel = 9.094947017729282e-13;  // 2^-40
    const double delta = (alpha * e2 + beta2 * m2 + w2 * n2 + kRel * (alpha + beta1 + w2) * (m1 + n2) +
                          static_cast<double>(kFpEta)) * (1.0 + kRel);
    return Interval{est - delta, est + delta};
  }

  const FirstPassView& fp_;
  const RefineView& rv_;
  const FirstPassKernels& k_;
};

// float bounds of a float64 interval, rounded outwards.
inline float round_down(double x) {
  const float f = static_cast<float>(x);
  return static_cast<double>(f) > x ? std::nextafter(f, -std::numeric_limits<float>::infinity()) : f;
}
inline float round_up(double x) {
  const float f = static_cast<float>(x);
  return static_cast<double>(f) < x ? std::nextafter(f, std::numeric_limits<float>::infinity()) : f;
}

struct Buffers {
  Buffers(int T, int64_t B, int64_t nnz, int64_t d16, int64_t keep, int64_t cap)
      : raw(static_cast<size_t>(T) * B * kFpBlockRows),
        lo(raw.size()),
        hi(raw.size()),
        idx(static_cast<size_t>(T) * kFpBlockRows),
        d12(idx.size()),
        d21(idx.size()),
        intervals(idx.size()),
        row_scratch(static_cast<size_t>(T) * d16),
        candidates(static_cast<size_t>(B) * T * cap),
        heaps(static_cast<size_t>(T) * B * keep),
        counts(static_cast<size_t>(T) * nnz, 0),
        work_q(static_cast<size_t>(T) * B * 3, 0),
        work_p(static_cast<size_t>(T) * nnz * 2, 0) {
    topk.reserve(static_cast<size_t>(T) * B);
  }
  std::vector<uint32_t> raw;           // [T][B * kFpBlockRows] first-pass raw sums of one block
  std::vector<float> lo, hi;           // [T][B * kFpBlockRows] bounds of one block
  std::vector<int32_t> idx;            // [T][kFpBlockRows]
  std::vector<int32_t> d12, d21;       // [T][kFpBlockRows] the second bound's dot products
  std::vector<Interval> intervals;     // [T][kFpBlockRows] second bounds of the selected rows
  std::vector<float> row_scratch;      // [T][d16] the exact pair scorer's scratch
  std::vector<IntervalCandidate> candidates;  // [B][T][cap]: query b's candidates from thread t
  std::vector<IntervalTopK> topk;      // [T][B]
  std::vector<float> heaps;            // [T][B][keep]
  std::vector<int64_t> counts;         // [T][nnz]
  std::vector<int64_t> work_q, work_p; // [T][B * 3], [T][nnz * 2]
};

}  // namespace

void two_stage_search(const SearchInput& in, const FirstPassView& fp, const RefineView& rv,
                      const SearchOutput& out, const TwoStageStats& stats) {
  const IsaKernels& isa = active_isa();
  const FirstPassKernels& fpk = active_first_pass();
  const int64_t B = in.B, N = in.N, k = in.k, nnz = in.pos_offsets[B];
  const int64_t kept = std::min(k, N);
  const int64_t nblocks = (N + kFpBlockRows - 1) / kFpBlockRows;
  const int T = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), nblocks)));
  const Refiner refiner(fp, rv, fpk);
  const bool refine = refiner.enabled() && fp.kind == kFpKindInt8;

  // The exact scorer: the exact scan's own pair kernel on zero-padded queries (flat_search.cpp).
  const int64_t d16 = (in.d + 15) / 16 * 16;
  AlignedFloats qpad(B * d16);
  for (int64_t b = 0; b < B; ++b) std::copy(in.queries + b * in.d, in.queries + (b + 1) * in.d, qpad.data() + b * d16);
  const FlatView exact{qpad.data(), B, in.d, d16, in.docs, in.docs_fp16};

  // Every buffer is allocated before the parallel regions (std::bad_alloc inside one would
  // terminate the process; here it reaches Python as MemoryError), as in fused_scan.
  const int64_t cap = 2 * kept + 16;
  std::vector<int64_t> pos_query(nnz);
  Buffers buf(T, B, nnz, d16, kept, cap);

  // 1. Positive scores, exactly as the exact scan computes them (or given).
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = in.pos_offsets[b]; i < in.pos_offsets[b + 1]; ++i) pos_query[i] = b;
  if (in.pos_scores_in) {  // given (sharded search): no positive row is read
    std::copy(in.pos_scores_in, in.pos_scores_in + nnz, out.pos_scores);
  } else {
#pragma omp parallel num_threads(T)
    {
      float* scratch = buf.row_scratch.data() + static_cast<size_t>(omp_get_thread_num()) * d16;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < nnz; ++i)
        out.pos_scores[i] = isa.flat_score_pair(exact, scratch, pos_query[i], in.pos_ids[i]);
    }
  }

  // 2. One pass over the codes; per thread: exact top-k candidates, rank counts, work counters.
  for (int t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b)
    {
      buf.topk.emplace_back(buf.candidates.data() + (static_cast<size_t>(b) * T + t) * cap,
                            buf.heaps.data() + (static_cast<size_t>(t) * B + b) * kept, kept, cap);
    }
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num();
    const size_t words = static_cast<size_t>(B) * kFpBlockRows;
    uint32_t* raw = buf.raw.data() + t * words;
    float* lo = buf.lo.data() + t * words;
    float* hi = buf.hi.data() + t * words;
    int32_t* idx = buf.idx.data() + static_cast<size_t>(t) * kFpBlockRows;
    int32_t* d12 = buf.d12.data() + static_cast<size_t>(t) * kFpBlockRows;
    int32_t* d21 = buf.d21.data() + static_cast<size_t>(t) * kFpBlockRows;
    Interval* ivs = buf.intervals.data() + static_cast<size_t>(t) * kFpBlockRows;
    float* row_scratch = buf.row_scratch.data() + static_cast<size_t>(t) * d16;
    IntervalTopK* topk = buf.topk.data() + static_cast<size_t>(t) * B;
    int64_t* my_counts = buf.counts.data() + static_cast<size_t>(t) * nnz;
    int64_t* my_q = buf.work_q.data() + static_cast<size_t>(t) * B * 3;
    int64_t* my_p = buf.work_p.data() + static_cast<size_t>(t) * nnz * 2;
    auto exact_score = [&](int64_t b, int64_t row) { return isa.flat_score_pair(exact, row_scratch, b, row); };
    // Second bounds of the m selected rows of query b (idx), all at once.
    auto refine_selected = [&](int64_t b, int64_t r0, int64_t m) {
      refiner.bounds(b, r0, idx, m, raw + b * kFpBlockRows, d12, d21, ivs);
    };

#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t r0 = blk * kFpBlockRows, nb = std::min(kFpBlockRows, N - r0);
      fpk.bounds_block(fp, raw, r0, nb, lo, hi, kFpBlockRows);
      for (int64_t b = 0; b < B; ++b) {
        const float* l = lo + b * kFpBlockRows;
        const float* h = hi + b * kFpBlockRows;
        const float hmax = isa.max_of(h, nb);
        IntervalTopK& top = topk[b];
        // Admission: hi >= L, the k-th largest lower bound among this thread's candidates (every
        // row whose first-pass lo exceeds L is a candidate, so no other row can raise L), and
        // hi > the exact threshold after an exact compaction.
        auto exact_b = [&](int64_t row) { return exact_score(b, row); };
        if (hmax > top.admit_above()) {
          const int64_t m = isa.select_above(h, nb, top.admit_above(), idx);
          if (refine && m) {
            refine_selected(b, r0, m);
            my_q[b * 3] += m;
          }
          for (int64_t j = 0; j < m; ++j) {
            const int64_t i = idx[j], row = r0 + i;
            if (!(h[i] > top.admit_above())) continue;  // the bar rose within this block
            if (!refine) {
              top.push(l[i], h[i], row, exact_b, my_q[b * 3 + 1]);
              continue;
            }
            const float lo2 = round_down(ivs[j].lo), hi2 = round_up(ivs[j].hi);
            if (hi2 > top.admit_above()) top.push(std::max(lo2, l[i]), std::min(hi2, h[i]), row, exact_b, my_q[b * 3 + 1]);
          }
        }
        for (int64_t pi = in.pos_offsets[b]; pi < in.pos_offsets[b + 1]; ++pi) {
          const float sp = out.pos_scores[pi];
          const int64_t p = in.pos_ids[pi];
          if (hmax < sp) continue;  // every row of the block scores below the positive
          my_counts[pi] += fpk.count_above(l, nb, sp);
          const int64_t m = fpk.select_band(l, h, nb, sp, idx);
          if (refine && m) refine_selected(b, r0, m);
          for (int64_t j = 0; j < m; ++j) {
            const int64_t i = idx[j], row = r0 + i;
            if (row == p) continue;  // never ranks before itself
            if (refine) {
              ++my_p[pi * 2];
              ++my_q[b * 3];
              const Interval& iv = ivs[j];
              if (iv.lo > static_cast<double>(sp)) {
                ++my_counts[pi];
                continue;
              }
              if (iv.hi < static_cast<double>(sp)) continue;
            }
            ++my_p[pi * 2 + 1];
            ++my_q[b * 3 + 2];
            const float s = exact_score(b, row);
            my_counts[pi] += s > sp || (s == sp && row < p);
          }
        }
      }
    }
  }

  // 3. Gather each query's candidates from the T threads (in place), drop those below the best
  // known L, score the rest exactly and write the ordered top-k, padded past N (as fused_scan).
#pragma omp parallel for schedule(static) num_threads(T)
  for (int64_t b = 0; b < B; ++b) {
    float* scratch = buf.row_scratch.data() + static_cast<size_t>(omp_get_thread_num()) * d16;
    IntervalCandidate* all = buf.candidates.data() + static_cast<size_t>(b) * T * cap;
    int64_t size = 0;
    float lower = -std::numeric_limits<float>::infinity();
    for (int t = 0; t < T; ++t) {  // thread t's candidates move left, next to those gathered so far
      const IntervalTopK& top = buf.topk[static_cast<size_t>(t) * B + b];
      if (top.begin() != all + size) std::copy(top.begin(), top.begin() + top.size(), all + size);
      size += top.size();
      lower = std::max(lower, top.lower());
    }
    if (size >= kept) {
      std::nth_element(all, all + kept - 1, all + size,
                       [](const IntervalCandidate& x, const IntervalCandidate& y) { return x.lo > y.lo; });
      lower = std::max(lower, all[kept - 1].lo);
    }
    size = std::remove_if(all, all + size, [lower](const IntervalCandidate& c) { return c.hi < lower; }) - all;
    int64_t rescored = 0;
    for (int64_t i = 0; i < size; ++i)
      if (!all[i].exact) {
        const float s = isa.flat_score_pair(exact, scratch, b, all[i].row);
        all[i] = IntervalCandidate{s, s, all[i].row, true};
        ++rescored;
      }
    buf.work_q[b * 3 + 1] += rescored;  // thread slot 0; one b per iteration
    auto before = [](const IntervalCandidate& x, const IntervalCandidate& y) {
      return ranks_before(Candidate{x.lo, x.row}, Candidate{y.lo, y.row});
    };
    const int64_t n = std::min(kept, size);
    std::partial_sort(all, all + n, all + size, before);
    for (int64_t j = 0; j < k; ++j) {
      out.ids[b * k + j] = j < n ? all[j].row : -1;
      out.scores[b * k + j] = j < n ? all[j].lo : -std::numeric_limits<float>::infinity();
    }
  }
  for (int64_t i = 0; i < nnz; ++i) {
    int64_t c = 1;
    for (int t = 0; t < T; ++t) c += buf.counts[static_cast<size_t>(t) * nnz + i];
    out.pos_ranks[i] = c;
  }
  if (stats.per_query)
    for (int64_t j = 0; j < B * 3; ++j) {
      int64_t c = 0;
      for (int t = 0; t < T; ++t) c += buf.work_q[static_cast<size_t>(t) * B * 3 + j];
      stats.per_query[j] = c;
    }
  if (stats.per_positive)
    for (int64_t j = 0; j < nnz * 2; ++j) {
      int64_t c = 0;
      for (int t = 0; t < T; ++t) c += buf.work_p[static_cast<size_t>(t) * nnz * 2 + j];
      stats.per_positive[j] = c;
    }
  if (in.cutoff > 0) write_pair_weights(in, out, T);
}

}  // namespace drfast
