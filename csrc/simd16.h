// A 16-lane float vector with one canonical dot-product arithmetic on every
// instruction set: lane l accumulates the terms k ≡ l (mod 16) with fused
// multiply-adds in increasing k, then lanes are summed pairwise (l + 8, + 4,
// + 2, + 1). The same pair therefore gets a bit-identical score whatever the
// tile shape or the instruction set, which keeps exact ranks consistent.
//
// Included by one translation unit per instruction set (compiled with its
// own -m flags); DRFAST_ISA names the namespace.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace drfast {
namespace DRFAST_ISA {

// IEEE binary16 -> binary32, exact for every value (used for tails and the generic build).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // mant * 2^-24, exact
    std::memcpy(&bits, &v, 4);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

#if defined(__AVX512F__)
struct V16 {
  __m512 v;
};
inline V16 vzero() { return {_mm512_setzero_ps()}; }
inline V16 vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void vfma(V16& acc, V16 a, V16 b) { acc.v = _mm512_fmadd_ps(a.v, b.v, acc.v); }
inline float hsum(V16 a) {
  const __m256 lo = _mm512_castps512_ps256(a.v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1));
  const __m256 x = _mm256_add_ps(lo, hi);                                              // l + 8
  const __m128 y = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));  // + 4
  const __m128 z = _mm_add_ps(y, _mm_movehl_ps(y, y));                                 // + 2
  return _mm_cvtss_f32(_mm_add_ss(z, _mm_shuffle_ps(z, z, 1)));                        // + 1
}
// hsum of 16 vectors at once, out[i] = hsum(a[i]), with the same pairwise tree.
inline void hsum16(const V16* a, float* out) {
  // Feeding a[] in 4x4-transposed order makes lane i of the result hold hsum(a[i]).
  auto in = [&](int m) { return a[4 * (m % 4) + m / 4].v; };
  __m512 u[8], w[4], z[2];
  for (int j = 0; j < 8; ++j)
    u[j] = _mm512_add_ps(_mm512_shuffle_f32x4(in(2 * j), in(2 * j + 1), 0x44),
                         _mm512_shuffle_f32x4(in(2 * j), in(2 * j + 1), 0xEE));
  for (int j = 0; j < 4; ++j)
    w[j] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], 0x88),
                         _mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], 0xDD));
  for (int j = 0; j < 2; ++j)
    z[j] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * j], w[2 * j + 1], 0x44),
                         _mm512_shuffle_ps(w[2 * j], w[2 * j + 1], 0xEE));
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], 0x88),
                                      _mm512_shuffle_ps(z[0], z[1], 0xDD)));
}
inline void halves_to_floats(const uint16_t* src, float* dst) {
  _mm512_storeu_ps(dst, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))));
}
#define DRFAST_HAVE_HSUM16 1

#elif defined(__AVX2__)
struct V16 {
  __m256 lo, hi;  // lanes 0-7 and 8-15
};
inline V16 vzero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline V16 vload(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void vfma(V16& acc, V16 a, V16 b) {
  acc.lo = _mm256_fmadd_ps(a.lo, b.lo, acc.lo);
  acc.hi = _mm256_fmadd_ps(a.hi, b.hi, acc.hi);
}
inline float hsum(V16 a) {
  const __m256 x = _mm256_add_ps(a.lo, a.hi);                                          // l + 8
  const __m128 y = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));  // + 4
  const __m128 z = _mm_add_ps(y, _mm_movehl_ps(y, y));                                 // + 2
  return _mm_cvtss_f32(_mm_add_ss(z, _mm_shuffle_ps(z, z, 1)));                        // + 1
}
inline void halves_to_floats(const uint16_t* src, float* dst) {
  _mm256_storeu_ps(dst, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
  _mm256_storeu_ps(dst + 8, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 8))));
}

#else
struct V16 {
  float x[16];
};
inline V16 vzero() { return V16{}; }
inline V16 vload(const float* p) {
  V16 r;
  std::memcpy(r.x, p, sizeof r.x);
  return r;
}
inline void vfma(V16& acc, const V16& a, const V16& b) {
  for (int l = 0; l < 16; ++l) acc.x[l] = std::fma(a.x[l], b.x[l], acc.x[l]);
}
inline float hsum(const V16& a) {
  float x[8], y[4], z[2];
  for (int l = 0; l < 8; ++l) x[l] = a.x[l] + a.x[l + 8];
  for (int l = 0; l < 4; ++l) y[l] = x[l] + x[l + 4];
  for (int l = 0; l < 2; ++l) z[l] = y[l] + y[l + 2];
  return z[0] + z[1];
}
inline void halves_to_floats(const uint16_t* src, float* dst) {
  for (int l = 0; l < 16; ++l) dst[l] = half_to_float(src[l]);
}
#endif

}  // namespace DRFAST_ISA
}  // namespace drfast
