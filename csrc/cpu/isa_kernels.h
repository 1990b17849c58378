// The instruction-set-specific kernels, as one table of plain functions per ISA.
//
// Each table is compiled in its own translation unit with its own -m flags
// (cpu/isa_avx512.cpp, cpu/isa_avx2.cpp, cpu/isa_generic.cpp). Those units use no STL and
// no shared inline code: a template or inline function instantiated under
// AVX-512 flags would otherwise be a weak symbol the linker may pick for every
// caller, and crash a CPU without AVX-512.
#pragma once
#include <cstdint>

namespace drfast {

// A [N, d] float32 or float16 row matrix and queries padded to d16 = round_up(d, 16) columns.
struct FlatView {
  const float* queries;  // [B, d16], zero-padded
  int64_t B, d, d16;
  const void* rows;      // [N, d]
  bool fp16;
};

// Product-quantization codes [N, m] (8 bits each) and per-query lookup tables
// luts[b][j][c] = <query b's j-th sub-vector, centroid c of sub-quantizer j>.
struct PQView {
  const float* luts;     // [B, m, 256]
  int64_t B, m;
  const uint8_t* codes;  // [N, m]
};

struct IsaKernels {
  const char* name;
  // out[b * ld + i] = <query b, row r0 + i> for all B queries and i < nb. `scratch` holds
  // kFlatBlockRows * d16 floats (used when rows need widening or padding).
  void (*flat_score_block)(const FlatView& v, float* scratch, int64_t r0, int64_t nb, float* out, int64_t ld);
  // The score of one pair, bit-identical to flat_score_block's. `scratch` holds d16 floats.
  float (*flat_score_pair)(const FlatView& v, float* scratch, int64_t b, int64_t row);
  // out[b * ld + i] = sum over j = 0, 1, ..., m-1 in that order of luts[b][j][code[r0 + i][j]].
  // `scratch` holds kPQBlockRows * m int32.
  void (*pq_score_block)(const PQView& v, int32_t* scratch, int64_t r0, int64_t nb, float* out, int64_t ld);
  // The same sum for one pair (bit-identical).
  float (*pq_score_pair)(const PQView& v, int64_t b, int64_t row);
  float (*max_of)(const float* s, int64_t n);
  // #{i < n : s[i] > sp, or s[i] == sp and r0 + i < p}: rows ranking before positive p.
  int64_t (*count_ranked_before)(const float* s, int64_t n, int64_t r0, float sp, int64_t p);
  // Writes the indices i with s[i] > threshold to idx (room for n) and returns how many.
  int64_t (*select_above)(const float* s, int64_t n, float threshold, int32_t* idx);
};

constexpr int64_t kFlatBlockRows = 120;  // a multiple of the 3-row tile; 360 KB at d=768 stays in L2
constexpr int64_t kPQBlockRows = 256;    // gather offsets of a block: 96 KB at m=96

extern const IsaKernels kIsaAvx512;
extern const IsaKernels kIsaAvx2;
extern const IsaKernels kIsaGeneric;

// The table in use (isa_dispatch.cpp): the best this CPU supports, or the level set_simd_level forced.
const IsaKernels& active_isa();

}  // namespace drfast
