// The avx512 kernel table (compile flags in CMakeLists.txt).
#define DRFAST_ISA avx512
#define DRFAST_ISA_NAME "avx512"
#define DRFAST_ISA_TABLE kIsaAvx512
#include "cpu/isa_kernels.inc"
