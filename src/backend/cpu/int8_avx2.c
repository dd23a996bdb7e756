/*
 * int8_avx2.c - quantized weights x int8 activations in 256-bit registers
 * (x86-64 only; see int8.c for the arithmetic): one kernel body
 * (int8_avx2_body.h) built twice, for AVX2 (vpmaddubsw + vpmaddwd) and for
 * AVX-VNNI (VEX vpdpbusd: Intel client CPUs since Alder Lake), the second
 * chosen only when CPUID reports AVX-VNNI (isa.c).
 */
#include "backend/cpu/kernels_impl.h"

#include <immintrin.h>

#define QI_TARGET MC_T256
#define QI_VNNI 0
#define QI(name) name##_avx2
#include "backend/cpu/int8_avx2_body.h"
#undef QI_TARGET
#undef QI_VNNI
#undef QI

#define QI_TARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#define QI_VNNI 1
#define QI(name) name##_avxvnni
#include "backend/cpu/int8_avx2_body.h"
#undef QI_TARGET
#undef QI_VNNI
#undef QI
