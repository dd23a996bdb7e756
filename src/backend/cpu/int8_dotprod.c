/*
 * int8_dotprod.c - quantized weights x int8 activations with sdot (the
 * ARMv8.2-A dot product extension, which this file alone is compiled for:
 * see meson.build; chosen at run time when AT_HWCAP has ASIMDDP, isa.c).
 * The kernels are int8_neon_body.h's, as in int8_neon.c.
 */
#include "backend/cpu/kernels_impl.h"

#include <arm_neon.h>

#define QI_SDOT 1
#define QI(name) name##_dotprod
#include "backend/cpu/int8_neon_body.h"
