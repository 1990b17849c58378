// Runtime choice of instruction set (the SIMD kernel tables) and thread count for the CPU kernels;
// the Python module drfast.search.backend chooses the backend (native / cuda / torch).
#include <omp.h>

#include <stdexcept>
#include <string>

#include "common/kernels.h"
#include "cpu/first_pass_kernels.h"
#include "cpu/isa_kernels.h"

namespace drfast {
namespace {

bool cpu_has(const std::string& level) {
  if (level == "generic") return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (level == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (level == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && cpu_has("avx2");
#endif
  return false;
}

std::string best_level() {
  for (const char* l : {"avx512", "avx2"})
    if (cpu_has(l)) return l;
  return "generic";
}

const IsaKernels& kernels_for(const std::string& level) {
  if (level == "avx512") return kIsaAvx512;
  if (level == "avx2") return kIsaAvx2;
  return kIsaGeneric;
}

const IsaKernels* g_isa = &kernels_for(best_level());
int g_threads = omp_get_max_threads();

}  // namespace

const IsaKernels& active_isa() { return *g_isa; }

const char* simd_level() { return g_isa->name; }

void set_simd_level(const std::string& level) {
  if (level != "avx512" && level != "avx2" && level != "generic")
    throw std::invalid_argument("simd level must be 'avx512', 'avx2' or 'generic', got '" + level + "'");
  if (!cpu_has(level)) throw std::invalid_argument("this CPU cannot run simd level '" + level + "'");
  g_isa = &kernels_for(level);
}

std::string supported_simd_levels() {
  std::string s;
  for (const char* l : {"avx512", "avx2", "generic"})
    if (cpu_has(l)) s += s.empty() ? l : std::string(",") + l;
  return s;
}

// The two-stage search's first pass (cpu/first_pass_kernels.h): VNNI (and BF16) tables only at the
// avx512 level, the AVX2 table at the avx512 (CPUs without VNNI) and avx2 levels, the generic one at
// the generic level; forcing a lower level also forces the matching first-pass kernels.
namespace {
bool cpu_has_vnni() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return cpu_has("avx512") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}
bool cpu_has_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  return cpu_has_vnni() && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}
const bool g_has_vnni = cpu_has_vnni();
const bool g_has_bf16 = cpu_has_bf16();
}  // namespace

const FirstPassKernels& active_first_pass() {
  if (g_isa == &kIsaAvx512 && g_has_vnni) return g_has_bf16 ? kFpAvx512Bf16 : kFpAvx512Vnni;
  return g_isa == &kIsaGeneric ? kFpGeneric : kFpAvx2;  // avx512 and avx2 levels both imply AVX2
}

// The AVX2 table is not listed: vpmaddwd does 16 multiply-adds per instruction like the fp32 scan's
// FMAs, so its first pass is only ~1.3x the exact AVX2 scan's speed per row and the two-stage search
// gains only where few rows need refining (ADORE's rank depth), losing on full-depth ranks.
const char* fast_first_pass_kinds() {
  if (g_isa == &kIsaAvx512 && g_has_vnni) return g_has_bf16 ? "int8,bf16" : "int8";
  return "";
}

int num_threads() { return g_threads; }

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(n));
  g_threads = n;
}

}  // namespace drfast
