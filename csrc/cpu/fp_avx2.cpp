// The avx2 first-pass kernel table (compile flags in CMakeLists.txt).
#define DRFAST_FP fp_avx2
#define DRFAST_FP_NAME "avx2"
#define DRFAST_FP_TABLE kFpAvx2
#include "cpu/first_pass.inc"
