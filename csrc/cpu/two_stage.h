// The exact two-stage flat search on the CPU: a low-precision first pass with proven bounds on
// every (query, row) score, then exact rescoring (the exact scan's own pair scorer) of the rows
// the bounds cannot decide. Outputs are bit-identical to flat_search. The bound's derivation is
// in src/drfast/search/first_pass.py.
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

// Columns of the work counters (exported to Python as _C.work_columns).
enum WorkPerQuery : int64_t {
  kWorkRefined = 0,        // rows given the second bound
  kWorkRescoredTopk = 1,   // exact recomputations for the top-k
  kWorkRescoredRanks = 2,  // exact recomputations for the positives' ranks
  kWorkPerQuery = 3,       // the number of columns
};
enum WorkPerPositive : int64_t {
  kWorkPosRefined = 0,     // rows of the positive's undecided band given the second bound
  kWorkPosRescored = 1,    // rows of the band scored exactly
  kWorkPerPositive = 2,
};

// Work counters: [B, kWorkPerQuery] and [nnz, kWorkPerPositive] int64 (nullptr: not wanted).
struct TwoStageWork {
  int64_t* per_query = nullptr;
  int64_t* per_positive = nullptr;
};

// Everything the two-stage search takes beyond the fused search's SearchInput.
struct TwoStageParams {
  FirstPassView first_pass{};
  RefineView refine{};  // refine.rcodes == nullptr: first bound only
  TwoStageWork work{};
  // > 0: ranks are exact up to rank_depth and rank_depth + 1 beyond; a positive stops being
  // refined or rescored once its rows proven above it show its rank exceeds the depth.
  // 0: full depth.
  int64_t rank_depth = 0;
};

void two_stage_search(const SearchInput& in, const TwoStageParams& params, const SearchOutput& out);

}  // namespace drfast
