// The avx512bf16 first-pass kernel table (compile flags in CMakeLists.txt).
#define DRFAST_FP fp_avx512bf16
#define DRFAST_FP_NAME "avx512bf16"
#define DRFAST_FP_TABLE kFpAvx512Bf16
#include "cpu/first_pass.inc"
