// The low-precision first pass of the exact two-stage flat search (cpu/two_stage.cpp): one table
// of plain functions per instruction set, like IsaKernels (cpu/isa_kernels.h) and under the same
// rules: cpu/first_pass.inc is compiled once per ISA unit (fp_generic.cpp, fp_avx2.cpp,
// fp_avx512vnni.cpp, fp_avx512bf16.cpp, each with its own -m flags) and uses no STL and no shared
// inline code.
//
// Codes are row-major with kFpAlign-byte padded rows (zero padding contributes nothing):
//   int8: rows int8 [N, dp], dp = round_up(d, 64); queries as uint8 q8 + 128 [B, dp], so that
//         sum(u8 * x8) - 128 * sum(x8) = q8 . x8 exactly in int32 (vpdpbusd multiplies u8 by s8;
//         AVX2 widens both to int16 for vpmaddwd, whose pair sums of these products are exact).
//   bf16: rows and queries as bfloat16 bits [*, dp], dp = round_up(d, 32).
// The bound arithmetic (see src/drfast/search/first_pass.py for the derivation) is the same in
// every table: est = (float(I) * a_r) * c_b (int8) or the fp32 sum (bf16), and
//   delta = ((alpha_b * e_r + beta_b * m_r) + eta) * kSlack,  lo = est - delta,  hi = est + delta.
#pragma once
#include <cstdint>

namespace drfast {

constexpr int kFpKindInt8 = 0;
constexpr int kFpKindBf16 = 1;
constexpr int64_t kFpAlign = 64;          // bytes per padded code row chunk
constexpr int64_t kFpBlockRows = 240;     // rows per first-pass block: 180 KB of int8 codes at d=768
constexpr float kFpSlack = 1.0000153f;    // 1 + 2^-16: covers the rounding of the delta formula itself
constexpr float kFpEta = 7.8886091e-31f;  // 2^-100: absolute slack for underflow (any d < 2^24)

struct FirstPassView {
  int kind;              // kFpKindInt8 or kFpKindBf16
  int64_t B, dp;         // queries, padded code columns (bytes / element size)
  const void* qcodes;    // [B, dp] uint8 (q8 + 128) or bf16 bits
  const float* qscale;   // [B] c_b (int8; unused for bf16)
  const float* alpha;    // [B] upper bound of ||q||
  const float* beta;     // [B] upper bound of ||q - q^|| + g ||q^||
  const void* codes;     // [N, dp] int8 or bf16 bits
  const float* rscale;   // [N] a_r (int8; unused for bf16)
  const int32_t* rsum;   // [N] sum of the row's int8 codes (int8; unused for bf16)
  const float* rerr;     // [N] e_r: upper bound of ||x - x^|| + gamma ||x||
  const float* rnorm;    // [N] m_r: upper bound of ||x^||
};

struct FirstPassKernels {
  const char* name;
  // lo/hi[b * ld + i] for every query b and row r0 + i, i < nb <= kFpBlockRows. `scratch` holds
  // B * kFpBlockRows + 2 * dp 32-bit words (the tail: the AVX2 table's rows widened to int16).
  void (*bounds_block)(const FirstPassView& v, void* scratch, int64_t r0, int64_t nb, float* lo, float* hi,
                       int64_t ld);
  // The second bound's dot products of one query against rows idx[0 .. m) of a block (uint8 x int8,
  // exact): d12[j] = u1 . s1[idx[j] * ld], d21[j] = u2 . s2[idx[j] * ld], over len bytes
  // (a multiple of kFpAlign).
  void (*refine_dots)(const uint8_t* u1, const uint8_t* u2, const int8_t* s1, const int8_t* s2, int64_t ld,
                      const int32_t* idx, int64_t m, int64_t len, int32_t* d12, int32_t* d21);
  // Indices i < n with lo[i] <= x <= hi[i] written to idx (room for n); returns how many.
  int64_t (*select_band)(const float* lo, const float* hi, int64_t n, float x, int32_t* idx);
  // #{i < n : lo[i] > x}
  int64_t (*count_above)(const float* lo, int64_t n, float x);
};

extern const FirstPassKernels kFpGeneric;
extern const FirstPassKernels kFpAvx2;        // AVX2 + FMA: int8 through vpmaddwd; bf16 per pair (generic)
extern const FirstPassKernels kFpAvx512Vnni;  // AVX-512 F/BW/VL + VNNI; bf16 through fp32 FMAs
extern const FirstPassKernels kFpAvx512Bf16;  // the above + AVX512_BF16 (vdpbf16ps)

// The table for the active SIMD level (isa_dispatch.cpp): at the avx512 level the VNNI table when
// the CPU has VNNI (the BF16 one with BF16 too), else the avx2 table at the avx512 and avx2 levels,
// generic at the generic level.
const FirstPassKernels& active_first_pass();
// "int8,bf16" / "int8" / "": the first-pass kinds clearly faster than the exact scan at the active
// level, what first_pass="auto" picks from (VNNI and BF16; not the AVX2 table, see isa_dispatch.cpp).
const char* fast_first_pass_kinds();

}  // namespace drfast
