// The exact two-stage flat search on the CPU: a low-precision first pass with proven bounds on
// every (query, row) score, then exact rescoring (the exact scan's own pair scorer) of the rows
// the bounds cannot decide. Outputs are bit-identical to flat_search. The bound's derivation is
// in src/drfast/search/two_stage.py.
#pragma once
#include <cstdint>

#include "common/search_types.h"
#include "cpu/first_pass_kernels.h"

namespace drfast {

// Optional second, tighter bound for int8 (residual codes of rows and queries); used on the rows
// the first bound cannot decide, before any exact recomputation.
struct RefineView {
  const int8_t* rcodes = nullptr;    // [N, dp] residual codes r8; nullptr: no refinement
  const float* rscale = nullptr;     // [N] a2
  const int32_t* rsum = nullptr;     // [N] sum of r8
  const float* rerr = nullptr;       // [N] e2: upper bound of ||x - x^2|| + gamma ||x||
  const float* rnorm = nullptr;      // [N] m2: upper bound of ||x^2||
  const float* rresnorm = nullptr;   // [N] n2: upper bound of ||a2 r8||
  const uint8_t* q2codes = nullptr;  // [B, dp] residual query codes + 128
  const float* qscale2 = nullptr;    // [B] c2
  const float* beta1 = nullptr;      // [B] the first bound's beta (>= ||q - q^||)
  const float* beta2 = nullptr;      // [B] upper bound of ||q - q^2||
  const float* w2 = nullptr;         // [B] upper bound of ||c2 q8'||
};

// Work counters: per query {rows refined, rows rescored for the top-k, rows rescored for ranks},
// per positive {rows refined, rows rescored}.
struct TwoStageStats {
  int64_t* per_query = nullptr;     // [B, 3]
  int64_t* per_positive = nullptr;  // [nnz, 2]
};

void two_stage_search(const SearchInput& in, const FirstPassView& fp, const RefineView& refine,
                      const SearchOutput& out, const TwoStageStats& stats);

}  // namespace drfast
