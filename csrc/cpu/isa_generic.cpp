// The generic kernel table (compile flags in CMakeLists.txt).
#define DRFAST_ISA generic
#define DRFAST_ISA_NAME "generic"
#define DRFAST_ISA_TABLE kIsaGeneric
#include "cpu/isa_kernels.inc"
