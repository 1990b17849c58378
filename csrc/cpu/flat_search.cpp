// The fused flat search on the CPU: FlatScorer adapts the ISA kernels to fused_scan.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/kernels.h"
#include "cpu/aligned_floats.h"
#include "cpu/fused_scan.h"
#include "cpu/isa_kernels.h"

namespace drfast {
namespace {

class FlatScorer {
 public:
  struct Scratch {
    AlignedFloats rows;  // kFlatBlockRows rows of d16 floats
  };

  FlatScorer(const SearchInput& in, const IsaKernels& isa)
      : isa_(isa), queries_(in.B * round_up16(in.d)) {
    const int64_t d16 = round_up16(in.d);  // zero padding is exact in every lane sum
    for (int64_t b = 0; b < in.B; ++b)
      std::copy(in.queries + b * in.d, in.queries + (b + 1) * in.d, queries_.data() + b * d16);
    view_ = FlatView{queries_.data(), in.B, in.d, d16, in.docs, in.docs_fp16};
  }

  int64_t block_rows() const { return kFlatBlockRows; }
  Scratch make_scratch() const { return Scratch{AlignedFloats(kFlatBlockRows * view_.d16)}; }

  void score_block(Scratch& s, int64_t r0, int64_t nb, float* out, int64_t ld) const {
    isa_.flat_score_block(view_, s.rows.data(), r0, nb, out, ld);
  }
  float score_pair(Scratch& s, int64_t b, int64_t row) const {
    return isa_.flat_score_pair(view_, s.rows.data(), b, row);
  }

 private:
  static int64_t round_up16(int64_t d) { return (d + 15) / 16 * 16; }

  const IsaKernels& isa_;
  AlignedFloats queries_;
  FlatView view_;
};

}  // namespace

void flat_search(const SearchInput& in, const SearchOutput& out) {
  const IsaKernels& isa = active_isa();
  const FlatScorer scorer(in, isa);
  fused_scan(in, out, scorer, isa, num_threads());
}

void flat_score_positives(const SearchInput& in, float* pos_scores) {
  const IsaKernels& isa = active_isa();
  const FlatScorer scorer(in, isa);
  score_positives_only(in, pos_scores, scorer, num_threads());
}

}  // namespace drfast
