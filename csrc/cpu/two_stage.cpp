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

// The second bound of one pair, in double: [lo2, hi2] holds the exact score (src/drfast/search/first_pass.py).
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
  Buffers(int T, int64_t B, int64_t nnz, int64_t d16, int64_t fp_scratch, int64_t keep, int64_t cap)
      : raw(static_cast<size_t>(T) * fp_scratch),
        lo(static_cast<size_t>(T) * B * kFpBlockRows),
        hi(lo.size()),
        idx(static_cast<size_t>(T) * kFpBlockRows),
        d12(idx.size()),
        d21(idx.size()),
        intervals(idx.size()),
        row_scratch(static_cast<size_t>(T) * d16),
        candidates(static_cast<size_t>(B) * T * cap),
        heaps(static_cast<size_t>(T) * B * keep),
        counts(static_cast<size_t>(T) * nnz, 0),
        work_q(static_cast<size_t>(T) * B * kWorkPerQuery, 0),
        work_p(static_cast<size_t>(T) * nnz * kWorkPerPositive, 0) {
    topk.reserve(static_cast<size_t>(T) * B);
  }
  std::vector<uint32_t> raw;           // [T][fp_scratch]: a block's first-pass raw sums [B * kFpBlockRows], then
                                       // the kernels' own scratch (first_pass_kernels.h)
  std::vector<float> lo, hi;           // [T][B * kFpBlockRows] bounds of one block
  std::vector<int32_t> idx;            // [T][kFpBlockRows]
  std::vector<int32_t> d12, d21;       // [T][kFpBlockRows] the second bound's dot products
  std::vector<Interval> intervals;     // [T][kFpBlockRows] second bounds of the selected rows
  std::vector<float> row_scratch;      // [T][d16] the exact pair scorer's scratch
  std::vector<IntervalCandidate> candidates;  // [B][T][cap]: query b's candidates from thread t
  std::vector<IntervalTopK> topk;      // [T][B]
  std::vector<float> heaps;            // [T][B][keep]
  std::vector<int64_t> counts;         // [T][nnz]
  std::vector<int64_t> work_q, work_p; // [T][B * kWorkPerQuery], [T][nnz * kWorkPerPositive]
};

// One thread's slices of the Buffers.
struct ThreadSlots {
  uint32_t* raw;
  float *lo, *hi;
  int32_t *idx, *d12, *d21;
  Interval* ivs;
  float* row_scratch;
  IntervalTopK* topk;  // [B]
  int64_t *counts, *work_q, *work_p;
};

// One two-stage search, step by step: score the positives, one pass over the first-pass codes
// (top-k candidates and rank counts per thread), then gather each query's top-k and sum the counts.
class TwoStageRun {
 public:
  TwoStageRun(const SearchInput& in, const TwoStageParams& params, const SearchOutput& out)
      : in_(in),
        p_(params),
        out_(out),
        isa_(active_isa()),
        fpk_(active_first_pass()),
        B_(in.B),
        N_(in.N),
        nnz_(in.pos_offsets[in.B]),
        kept_(std::min(in.k, in.N)),
        nblocks_((in.N + kFpBlockRows - 1) / kFpBlockRows),
        T_(static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), nblocks_)))),
        refiner_(params.first_pass, params.refine, fpk_),
        refine_(refiner_.enabled() && params.first_pass.kind == kFpKindInt8),
        d16_((in.d + 15) / 16 * 16),
        qpad_(in.B * d16_),
        exact_{qpad_.data(), in.B, in.d, d16_, in.docs, in.docs_fp16},
        cap_(2 * kept_ + 16),
        pos_query_(nnz_),
        // Every buffer is allocated before the parallel regions (std::bad_alloc inside one would
        // terminate the process; here it reaches Python as MemoryError), as in fused_scan.
        fp_scratch_(B_ * kFpBlockRows + 2 * params.first_pass.dp),
        buf_(T_, B_, nnz_, d16_, fp_scratch_, kept_, cap_) {
    // The exact scorer: the exact scan's own pair kernel on zero-padded queries (flat_search.cpp).
    for (int64_t b = 0; b < B_; ++b)
      std::copy(in.queries + b * in.d, in.queries + (b + 1) * in.d, qpad_.data() + b * d16_);
    for (int64_t b = 0; b < B_; ++b)
      for (int64_t i = in.pos_offsets[b]; i < in.pos_offsets[b + 1]; ++i) pos_query_[i] = b;
    for (int t = 0; t < T_; ++t)
      for (int64_t b = 0; b < B_; ++b)
        buf_.topk.emplace_back(buf_.candidates.data() + (static_cast<size_t>(b) * T_ + t) * cap_,
                               buf_.heaps.data() + (static_cast<size_t>(t) * B_ + b) * kept_, kept_, cap_);
  }

  void run() {
    score_positives();
    scan();
#pragma omp parallel for schedule(static) num_threads(T_)
    for (int64_t b = 0; b < B_; ++b)
      gather_topk(b, buf_.row_scratch.data() + static_cast<size_t>(omp_get_thread_num()) * d16_);
    write_ranks_and_work();
    if (in_.cutoff > 0) write_pair_weights(in_, out_, T_);
  }

 private:
  float exact_score(float* scratch, int64_t b, int64_t row) const {
    return isa_.flat_score_pair(exact_, scratch, b, row);
  }

  // 1. Positive scores, exactly as the exact scan computes them (or given: no positive row is read).
  void score_positives() {
    if (in_.pos_scores_in) {
      std::copy(in_.pos_scores_in, in_.pos_scores_in + nnz_, out_.pos_scores);
      return;
    }
#pragma omp parallel num_threads(T_)
    {
      float* scratch = buf_.row_scratch.data() + static_cast<size_t>(omp_get_thread_num()) * d16_;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < nnz_; ++i) out_.pos_scores[i] = exact_score(scratch, pos_query_[i], in_.pos_ids[i]);
    }
  }

  ThreadSlots slots(int t) {
    const size_t words = static_cast<size_t>(B_) * kFpBlockRows, rows = static_cast<size_t>(t) * kFpBlockRows;
    return ThreadSlots{buf_.raw.data() + t * fp_scratch_,  buf_.lo.data() + t * words,
                       buf_.hi.data() + t * words,         buf_.idx.data() + rows,
                       buf_.d12.data() + rows,             buf_.d21.data() + rows,
                       buf_.intervals.data() + rows,       buf_.row_scratch.data() + static_cast<size_t>(t) * d16_,
                       buf_.topk.data() + static_cast<size_t>(t) * B_,
                       buf_.counts.data() + static_cast<size_t>(t) * nnz_,
                       buf_.work_q.data() + static_cast<size_t>(t) * B_ * kWorkPerQuery,
                       buf_.work_p.data() + static_cast<size_t>(t) * nnz_ * kWorkPerPositive};
  }

  // 2. One pass over the codes; per thread: exact top-k candidates, rank counts, work counters.
  void scan() {
#pragma omp parallel num_threads(T_)
    {
      ThreadSlots s = slots(omp_get_thread_num());
#pragma omp for schedule(dynamic, 1)
      for (int64_t blk = 0; blk < nblocks_; ++blk) {
        const int64_t r0 = blk * kFpBlockRows, nb = std::min(kFpBlockRows, N_ - r0);
        fpk_.bounds_block(p_.first_pass, s.raw, r0, nb, s.lo, s.hi, kFpBlockRows);
        for (int64_t b = 0; b < B_; ++b) {
          const float hmax = isa_.max_of(s.hi + b * kFpBlockRows, nb);
          admit_rows(s, b, r0, nb, hmax);
          for (int64_t pi = in_.pos_offsets[b]; pi < in_.pos_offsets[b + 1]; ++pi)
            if (!(hmax < out_.pos_scores[pi])) rank_rows(s, b, pi, r0, nb);  // else all rows rank after it
        }
      }
    }
  }

  // Second bounds of query b for the m selected rows s.idx of the block at r0, all at once.
  void refine_selected(const ThreadSlots& s, int64_t b, int64_t r0, int64_t m) const {
    refiner_.bounds(b, r0, s.idx, m, s.raw + b * kFpBlockRows, s.d12, s.d21, s.ivs);
  }

  // Admission to query b's top-k candidates: hi >= L, the k-th largest lower bound among this
  // thread's candidates (every row whose first-pass lo exceeds L is a candidate, so no other row
  // can raise L), and hi > the exact threshold after an exact compaction.
  void admit_rows(const ThreadSlots& s, int64_t b, int64_t r0, int64_t nb, float hmax) const {
    IntervalTopK& top = s.topk[b];
    if (!(hmax > top.admit_above())) return;
    const float* l = s.lo + b * kFpBlockRows;
    const float* h = s.hi + b * kFpBlockRows;
    int64_t* work = s.work_q + b * kWorkPerQuery;
    auto exact_b = [&](int64_t row) { return exact_score(s.row_scratch, b, row); };
    const int64_t m = isa_.select_above(h, nb, top.admit_above(), s.idx);
    if (refine_ && m) {
      refine_selected(s, b, r0, m);
      work[kWorkRefined] += m;
    }
    for (int64_t j = 0; j < m; ++j) {
      const int64_t i = s.idx[j], row = r0 + i;
      if (!(h[i] > top.admit_above())) continue;  // the bar rose within this block
      if (!refine_) {
        top.push(l[i], h[i], row, exact_b, work[kWorkRescoredTopk]);
        continue;
      }
      const float lo2 = round_down(s.ivs[j].lo), hi2 = round_up(s.ivs[j].hi);
      if (hi2 > top.admit_above())
        top.push(std::max(lo2, l[i]), std::min(hi2, h[i]), row, exact_b, work[kWorkRescoredTopk]);
    }
  }

  // True once this thread alone has counted rank_depth rows before positive pi: its rank then
  // exceeds the depth whatever the other rows score, and it is reported as rank_depth + 1.
  bool past_depth(const ThreadSlots& s, int64_t pi) const {
    return p_.rank_depth > 0 && s.counts[pi] >= p_.rank_depth;
  }

  // Rank counts of positive pi (query b) over the block at r0: rows with lo > s_p rank before it,
  // rows with hi < s_p after it; the band between is refined, then scored exactly (tie rule by row).
  void rank_rows(const ThreadSlots& s, int64_t b, int64_t pi, int64_t r0, int64_t nb) const {
    if (past_depth(s, pi)) return;
    const float* l = s.lo + b * kFpBlockRows;
    const float* h = s.hi + b * kFpBlockRows;
    const float sp = out_.pos_scores[pi];
    const int64_t p = in_.pos_ids[pi];
    int64_t* wq = s.work_q + b * kWorkPerQuery;
    int64_t* wp = s.work_p + pi * kWorkPerPositive;
    s.counts[pi] += fpk_.count_above(l, nb, sp);
    if (past_depth(s, pi)) return;
    const int64_t m = fpk_.select_band(l, h, nb, sp, s.idx);
    if (refine_ && m) refine_selected(s, b, r0, m);
    for (int64_t j = 0; j < m; ++j) {
      const int64_t i = s.idx[j], row = r0 + i;
      if (row == p) continue;  // never ranks before itself
      if (refine_) {
        ++wp[kWorkPosRefined];
        ++wq[kWorkRefined];
        const Interval& iv = s.ivs[j];
        if (iv.lo > static_cast<double>(sp)) {
          ++s.counts[pi];
          if (past_depth(s, pi)) return;
          continue;
        }
        if (iv.hi < static_cast<double>(sp)) continue;
      }
      ++wp[kWorkPosRescored];
      ++wq[kWorkRescoredRanks];
      const float x = exact_score(s.row_scratch, b, row);
      s.counts[pi] += x > sp || (x == sp && row < p);
      if (past_depth(s, pi)) return;
    }
  }

  // 3. Query b's candidates from the T threads (gathered in place), those below the best known L
  // dropped, the rest scored exactly; writes the ordered top-k, padded past N (as fused_scan).
  void gather_topk(int64_t b, float* scratch) {
    IntervalCandidate* all = buf_.candidates.data() + static_cast<size_t>(b) * T_ * cap_;
    int64_t size = 0;
    float lower = -std::numeric_limits<float>::infinity();
    for (int t = 0; t < T_; ++t) {  // thread t's candidates move left, next to those gathered so far
      const IntervalTopK& top = buf_.topk[static_cast<size_t>(t) * B_ + b];
      if (top.begin() != all + size) std::copy(top.begin(), top.begin() + top.size(), all + size);
      size += top.size();
      lower = std::max(lower, top.lower());
    }
    if (size >= kept_) {
      std::nth_element(all, all + kept_ - 1, all + size,
                       [](const IntervalCandidate& x, const IntervalCandidate& y) { return x.lo > y.lo; });
      lower = std::max(lower, all[kept_ - 1].lo);
    }
    size = std::remove_if(all, all + size, [lower](const IntervalCandidate& c) { return c.hi < lower; }) - all;
    int64_t rescored = 0;
    for (int64_t i = 0; i < size; ++i)
      if (!all[i].exact) {
        const float s = exact_score(scratch, b, all[i].row);
        all[i] = IntervalCandidate{s, s, all[i].row, true};
        ++rescored;
      }
    buf_.work_q[b * kWorkPerQuery + kWorkRescoredTopk] += rescored;  // thread slot 0; one b per iteration
    auto before = [](const IntervalCandidate& x, const IntervalCandidate& y) {
      return ranks_before(Candidate{x.lo, x.row}, Candidate{y.lo, y.row});
    };
    const int64_t n = std::min(kept_, size), k = in_.k;
    std::partial_sort(all, all + n, all + size, before);
    for (int64_t j = 0; j < k; ++j) {
      out_.ids[b * k + j] = j < n ? all[j].row : -1;
      out_.scores[b * k + j] = j < n ? all[j].lo : -std::numeric_limits<float>::infinity();
    }
  }

  // 4. Ranks (the threads' counts summed, clamped at the depth) and the work counters.
  void write_ranks_and_work() {
    for (int64_t i = 0; i < nnz_; ++i) {
      int64_t c = 1;
      for (int t = 0; t < T_; ++t) c += buf_.counts[static_cast<size_t>(t) * nnz_ + i];
      out_.pos_ranks[i] = p_.rank_depth > 0 ? std::min(c, p_.rank_depth + 1) : c;
    }
    sum_over_threads(buf_.work_q, B_ * kWorkPerQuery, p_.work.per_query);
    sum_over_threads(buf_.work_p, nnz_ * kWorkPerPositive, p_.work.per_positive);
  }

  void sum_over_threads(const std::vector<int64_t>& per_thread, int64_t n, int64_t* total) const {
    if (!total) return;
    for (int64_t j = 0; j < n; ++j) {
      int64_t c = 0;
      for (int t = 0; t < T_; ++t) c += per_thread[static_cast<size_t>(t) * n + j];
      total[j] = c;
    }
  }

  const SearchInput& in_;
  const TwoStageParams& p_;
  const SearchOutput& out_;
  const IsaKernels& isa_;
  const FirstPassKernels& fpk_;
  const int64_t B_, N_, nnz_, kept_, nblocks_;
  const int T_;
  const Refiner refiner_;
  const bool refine_;
  const int64_t d16_;
  AlignedFloats qpad_;
  const FlatView exact_;
  const int64_t cap_;
  std::vector<int64_t> pos_query_;
  const int64_t fp_scratch_;  // 32-bit words of first-pass scratch per thread (first_pass_kernels.h)
  Buffers buf_;
};

}  // namespace

void two_stage_search(const SearchInput& in, const TwoStageParams& params, const SearchOutput& out) {
  TwoStageRun(in, params, out).run();
}

}  // namespace drfast
