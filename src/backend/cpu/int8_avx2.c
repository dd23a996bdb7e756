/*
 * int8_avx2.c - quantized weights x int8 activations in 256-bit registers
 * (x86-64 only; see int8.c for the arithmetic): one kernel body
 * (int8_avx2_body.h) built twice, for AVX2 (vpmaddubsw + vpmaddwd) and for
 * AVX-VNNI (VEX vpdpbusd: Intel client CPUs since Alder Lake), the second
 * chosen only when CPUID reports AVX-VNNI (isa.c); and the activations'
 * quantization (int8.c's quant32) for both.
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

/* ======================================================================== */
/* Activations to int8, 32 at a time                                        */
/* ======================================================================== */

/* The scalar quant32 (int8.c), which prompts run on every activation of
 * every quantized product (mc_qact_round), called libm's fmaxf and lrintf
 * per element: 9 % of a Q4_K_M prompt (perf, mixtral-mini pp512, 1 thread).
 * Same arithmetic here: amax ignores NaN as fmaxf does (vmaxps returns its
 * second operand when either is NaN), x * id is one float32 product, and
 * vcvtps2dq rounds as lrintf does (the current rounding mode, nearest-even
 * by default); out-of-range and NaN give INT_MIN there and LONG_MIN there,
 * both clamped to -127. */
MC_T256 static inline __m256i q32_scaled(const float *x, __m256i v[4], float *d_out) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 xs[4], m = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        xs[i] = _mm256_loadu_ps(x + 8 * i);
        m = _mm256_max_ps(_mm256_andnot_ps(sign, xs[i]), m);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    *d_out = amax / 127.0f;
    const __m256 id = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    const __m256i hi = _mm256_set1_epi32(127), lo = _mm256_set1_epi32(-127);
    __m256i sum = _mm256_setzero_si256();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(xs[i], id)), lo), hi);
        sum = _mm256_add_epi32(sum, v[i]);
    }
    return sum;
}

MC_T256 int mc_quant32_avx2(const float *x, int8_t *q, float *d) {
    __m256i v[4];
    const __m256i sum = q32_scaled(x, v, d);
    /* packs interleave the 128-bit lanes: bytes come out as dwords
     * v0[0..3] v1[0..3] v2[0..3] v3[0..3] | v0[4..7] ...; put them back */
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

MC_T256 void mc_qact_round32_avx2(const float *x, float *xr) {
    __m256i v[4];
    float d;
    (void)q32_scaled(x, v, &d);
    const __m256 dv = _mm256_set1_ps(d);
    for (int i = 0; i < 4; i++) _mm256_storeu_ps(xr + 8 * i, _mm256_mul_ps(dv, _mm256_cvtepi32_ps(v[i])));
}
