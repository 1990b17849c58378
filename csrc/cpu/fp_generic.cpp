// The generic first-pass kernel table (compile flags in CMakeLists.txt).
#define DRFAST_FP fp_generic
#define DRFAST_FP_NAME "generic"
#define DRFAST_FP_TABLE kFpGeneric
#include "cpu/first_pass.inc"
