// Inner-product scorer over a float32 or float16 [N, d] matrix for fused_scan,
// compiled once per instruction set (see simd16.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "fused_scan.h"
#include "search_types.h"
#include "simd16.h"

namespace drfast {
namespace DRFAST_ISA {

constexpr int kQueryTile = 8;  // 8 queries x 2 rows = 16 accumulators: one hsum16
constexpr int kRowTile = 2;

inline int64_t round_up16(int64_t x) { return (x + 15) / 16 * 16; }

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using FloatBuffer = std::unique_ptr<float[], AlignedFree>;
inline FloatBuffer aligned_floats(int64_t n) {
  const size_t bytes = static_cast<size_t>((n * 4 + 63) / 64 * 64);
  return FloatBuffer(static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64)));
}

// Scores of QT queries (rows of q, stride ldq) against DT rows (of r, stride ldr),
// both zero-padded to d16 columns; out is [QT][DT] row-major.
template <int QT, int DT>
inline void score_tile(const float* q, int64_t ldq, const float* r, int64_t ldr, int64_t d16, float* out) {
  V16 acc[QT * DT];
  for (auto& a : acc) a = vzero();
  for (int64_t c = 0; c < d16; c += 16) {
    V16 rv[DT];
    for (int j = 0; j < DT; ++j) rv[j] = vload(r + j * ldr + c);
    for (int i = 0; i < QT; ++i) {
      const V16 qv = vload(q + i * ldq + c);
      for (int j = 0; j < DT; ++j) vfma(acc[i * DT + j], qv, rv[j]);
    }
  }
#ifdef DRFAST_HAVE_HSUM16
  if constexpr (QT * DT == 16) {
    hsum16(acc, out);
    return;
  }
#endif
  for (int a = 0; a < QT * DT; ++a) out[a] = hsum(acc[a]);
}

template <int QT>
inline void score_tile_rows(int dt, const float* q, int64_t ldq, const float* r, int64_t ldr, int64_t d16,
                            float* out) {
  if (dt == 2)
    score_tile<QT, 2>(q, ldq, r, ldr, d16, out);
  else
    score_tile<QT, 1>(q, ldq, r, ldr, d16, out);
}

// Any tile up to kQueryTile x kRowTile; full tiles take the fast path.
inline void score_any_tile(int qt, int dt, const float* q, int64_t ldq, const float* r, int64_t ldr,
                           int64_t d16, float* out) {
  switch (qt) {
    case 8: return score_tile_rows<8>(dt, q, ldq, r, ldr, d16, out);
    case 7: return score_tile_rows<7>(dt, q, ldq, r, ldr, d16, out);
    case 6: return score_tile_rows<6>(dt, q, ldq, r, ldr, d16, out);
    case 5: return score_tile_rows<5>(dt, q, ldq, r, ldr, d16, out);
    case 4: return score_tile_rows<4>(dt, q, ldq, r, ldr, d16, out);
    case 3: return score_tile_rows<3>(dt, q, ldq, r, ldr, d16, out);
    case 2: return score_tile_rows<2>(dt, q, ldq, r, ldr, d16, out);
    default: return score_tile_rows<1>(dt, q, ldq, r, ldr, d16, out);
  }
}

class FlatScorer {
 public:
  static constexpr int64_t kBlockRows = 128;  // 384 KB of float32 rows at d=768: stays in L2

  struct Scratch {
    FloatBuffer rows;  // [kBlockRows, d16] when rows need converting or padding
  };

  explicit FlatScorer(const SearchInput& in)
      : in_(in), d16_(round_up16(in.d)), direct_(!in.docs_fp16 && in.d % 16 == 0),
        queries_(aligned_floats(std::max<int64_t>(in.B, 1) * d16_)) {
    for (int64_t b = 0; b < in.B; ++b) {
      float* dst = queries_.get() + b * d16_;
      std::copy(in.queries + b * in.d, in.queries + (b + 1) * in.d, dst);
      std::fill(dst + in.d, dst + d16_, 0.0f);
    }
  }

  int64_t block_rows() const { return kBlockRows; }

  Scratch make_scratch() const { return Scratch{direct_ ? FloatBuffer() : aligned_floats(kBlockRows * d16_)}; }

  void score_block(Scratch& s, int64_t r0, int64_t nb, float* out, int64_t ld) const {
    const float* rows = prepare_rows(s, r0, nb);
    const int64_t ldr = direct_ ? in_.d : d16_;
    float tile[kQueryTile * kRowTile];
    for (int64_t b0 = 0; b0 < in_.B; b0 += kQueryTile) {
      const int qt = static_cast<int>(std::min<int64_t>(kQueryTile, in_.B - b0));
      for (int64_t i0 = 0; i0 < nb; i0 += kRowTile) {
        const int dt = static_cast<int>(std::min<int64_t>(kRowTile, nb - i0));
        score_any_tile(qt, dt, queries_.get() + b0 * d16_, d16_, rows + i0 * ldr, ldr, d16_, tile);
        for (int i = 0; i < qt; ++i)
          for (int j = 0; j < dt; ++j) out[(b0 + i) * ld + i0 + j] = tile[i * dt + j];
      }
    }
  }

  float score_pair(Scratch& s, int64_t b, int64_t row) const {
    const float* r = prepare_rows(s, row, 1);
    float out;
    score_tile<1, 1>(queries_.get() + b * d16_, d16_, r, d16_, d16_, &out);
    return out;
  }

 private:
  // Rows [r0, r0 + nb) as float32 with d16 columns: the input itself when it
  // already is, else converted and zero-padded into the scratch buffer.
  const float* prepare_rows(Scratch& s, int64_t r0, int64_t nb) const {
    const int64_t d = in_.d;
    if (direct_) return static_cast<const float*>(in_.docs) + r0 * d;
    float* dst = s.rows.get();
    for (int64_t i = 0; i < nb; ++i) {
      float* out = dst + i * d16_;
      int64_t c = 0;
      if (in_.docs_fp16) {
        const uint16_t* src = static_cast<const uint16_t*>(in_.docs) + (r0 + i) * d;
        for (; c + 16 <= d; c += 16) halves_to_floats(src + c, out + c);
        for (; c < d; ++c) out[c] = half_to_float(src[c]);
      } else {
        const float* src = static_cast<const float*>(in_.docs) + (r0 + i) * d;
        std::copy(src, src + d, out);
        c = d;
      }
      std::fill(out + c, out + d16_, 0.0f);
    }
    return dst;
  }

  const SearchInput& in_;
  int64_t d16_;
  bool direct_;
  FloatBuffer queries_;
};

}  // namespace DRFAST_ISA
}  // namespace drfast
