// The avx2 kernel table (compile flags in CMakeLists.txt).
#define DRFAST_ISA avx2
#define DRFAST_ISA_NAME "avx2"
#define DRFAST_ISA_TABLE kIsaAvx2
#include "cpu/isa_kernels.inc"
