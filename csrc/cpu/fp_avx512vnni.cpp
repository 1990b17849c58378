// The avx512vnni first-pass kernel table (compile flags in CMakeLists.txt).
#define DRFAST_FP fp_avx512vnni
#define DRFAST_FP_NAME "avx512vnni"
#define DRFAST_FP_TABLE kFpAvx512Vnni
#include "cpu/first_pass.inc"
