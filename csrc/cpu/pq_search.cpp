// The fused PQ search on the CPU: PQScorer adapts the ISA kernels to fused_scan.
#include <vector>

#include "common/kernels.h"
#include "cpu/fused_scan.h"
#include "cpu/isa_kernels.h"

namespace drfast {
namespace {

class PQScorer {
 public:
  struct Scratch {
    std::vector<int32_t> offsets;  // kPQBlockRows x m gather offsets
  };

  PQScorer(const PQView& view, const IsaKernels& isa) : view_(view), isa_(isa) {}

  int64_t block_rows() const { return kPQBlockRows; }
  Scratch make_scratch() const { return Scratch{std::vector<int32_t>(static_cast<size_t>(kPQBlockRows * view_.m))}; }

  void score_block(Scratch& s, int64_t r0, int64_t nb, float* out, int64_t ld) const {
    isa_.pq_score_block(view_, s.offsets.data(), r0, nb, out, ld);
  }
  float score_pair(Scratch&, int64_t b, int64_t row) const { return isa_.pq_score_pair(view_, b, row); }

 private:
  PQView view_;
  const IsaKernels& isa_;
};

}  // namespace

void pq_search(const SearchInput& in, const float* luts, const uint8_t* codes, int64_t m, const SearchOutput& out) {
  const IsaKernels& isa = active_isa();
  const PQScorer scorer(PQView{luts, in.B, m, codes}, isa);
  fused_scan(in, out, scorer, isa, num_threads());
}

void pq_score_positives(const SearchInput& in, const float* luts, const uint8_t* codes, int64_t m,
                        float* pos_scores) {
  const IsaKernels& isa = active_isa();
  const PQScorer scorer(PQView{luts, in.B, m, codes}, isa);
  score_positives_only(in, pos_scores, scorer, num_threads());
}

}  // namespace drfast
