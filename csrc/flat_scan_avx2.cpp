// The flat fused search compiled for one instruction set (flags in CMakeLists.txt).
#define DRFAST_ISA avx2
#include "flat_scorer.h"
#include "kernels.h"

namespace drfast {

void flat_search_avx2(const SearchInput& in, const SearchOutput& out, int threads) {
  const avx2::FlatScorer scorer(in);
  fused_scan(in, out, scorer, threads);
}

}  // namespace drfast
