/*
 * int8_neon.c - quantized weights x int8 activations with plain NEON (smull
 * + sadalp: every ARMv8-A CPU; AArch64 only, see int8.c for the arithmetic
 * and int8_neon_body.h for the kernels). CPUs with the dot product
 * extension get int8_dotprod.c instead (isa.c).
 */
#include "backend/cpu/kernels_impl.h"

#include <arm_neon.h>

#define QI_SDOT 0
#define QI(name) name##_neon
#include "backend/cpu/int8_neon_body.h"
