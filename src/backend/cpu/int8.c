/*
 * int8.c - quantized weights x int8 activations (decode): the activations'
 * quantization, the scalar pieces, and the choice of kernel.
 *
 * At T <= MC_QINT_T (kernels_impl.h) the float kernels (quant_tiles.c) are
 * bound by the work of widening every weight to float32, not by memory. With any int8 kernels
 * (isa.c: AVX2, AVX-VNNI, AVX-512 VNNI; NEON, NEON sdot) the rows of X are instead quantized
 * once per call to int8, 32 columns per scale (x ~ xd * xq, |xq| <= 127),
 * the same way for every kernel, and each 32-weight piece of a weight row is
 * an integer dot product (u8 weight x s8 activation: vpdpbusd, or vpmaddubsw
 * + vpmaddwd on plain AVX2), scaled in float32 per piece:
 *
 *   Q8_0   d * xd * sum(q * xq)                       (|q| as u8, sign moved onto xq)
 *   Q4_0   d * xd * (sum(q * xq) - 8 * sum(xq))       (q = 0..15)
 *   Q4_K   d*sc * xd * sum(q * xq) - dmin*m * xd * sum(xq)   (q = 0..15, 0..31 for Q5_K)
 *   Q6_K   d*sc * xd * sum((q - 32) * xq)             (as Q8_0; sc per 16 weights, so
 *                                                      per 4 lanes of the dot)
 *
 * The per-piece products d*sc*xd are made eight at a time (one 256-weight
 * group); the sum(xq) terms come precomputed with the activations (xds).
 * AVX-512 spreads them over the two 8-lane halves of each 64-weight dot
 * with a permute; the 256-bit kernels broadcast one per 32-weight dot (and
 * fold Q6_K's 16-weight scales into vpmaddwd as int16).
 * Rounding the activations to 8 bits adds an error of its own (see
 * tests/test_kernels.c for the bound); the float path stays the reference
 * (MOECL_CPU_ISA=scalar selects it).
 *
 * Above MC_QINT_T rows (prompts) sgemm on dequantized weights is faster than
 * these, so they run instead, but on X rounded exactly as here
 * (mc_qact_round): the same token gets the same activations, and logits that
 * differ only by float summation order, whatever batch it is in.
 */

#include "backend/cpu/kernels_impl.h"

#include <math.h>
#include <stdlib.h>

static bool qint_type(moecl_dtype t) {
    return t == MOECL_DTYPE_Q8_0 || t == MOECL_DTYPE_Q4_0 || t == MOECL_DTYPE_Q4_K || t == MOECL_DTYPE_Q5_K ||
           t == MOECL_DTYPE_Q6_K;
}

/* 32 activations to int8 with one scale: q[i] = round(x[i] / d), d =
 * amax / 127. Returns sum q[i]. */
static int quant32(const float *x, int8_t *q, float *d_out) {
    float amax = 0.0f;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int i = 0; i < 32; i++) {
        long v = lrintf(x[i] * id);
        v = v > 127 ? 127 : v < -127 ? -127 : v;
        q[i] = (int8_t)v;
        sum += (int)v;
    }
    *d_out = d;
    return sum;
}

/* Whether the AVX2 copies of quant32 apply (int8_avx2.c): x86 int8 kernels
 * of any kind mean AVX2. */
static bool quant_avx2(void) {
#if MC_X86
    return mc_cpu_qint() != QINT_NONE;
#else
    return false;
#endif
}

bool mc_qact_make(qact *a, const float *X, int64_t T, int64_t cols) {
    a->cols = cols;
    a->nb = cols / 32;
    size_t nq = ((size_t)(T * cols) + 63) & ~(size_t)63, ns = (size_t)(T * a->nb);
    char *mem = aligned_alloc(64, nq + ((2 * ns * sizeof(float) + 63) & ~(size_t)63));
    if (!mem) return false;
    a->q = (int8_t *)mem;
    a->d = (float *)(mem + nq);
    a->ds = a->d + ns;
    const bool v = quant_avx2();
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < a->nb; j++) {
            float d;
            const float *x = X + t * cols + 32 * j;
            int8_t *q = a->q + t * cols + 32 * j;
#if MC_X86
            const int sum = v ? mc_quant32_avx2(x, q, &d) : quant32(x, q, &d);
#else
            (void)v;
            const int sum = quant32(x, q, &d);
#endif
            a->d[t * a->nb + j] = d;
            a->ds[t * a->nb + j] = d * (float)sum;
        }
    return true;
}

void mc_qact_round(const float *X, int64_t n, float *Xr) {
#if MC_X86
    if (quant_avx2()) {
        for (int64_t j = 0; j + 32 <= n; j += 32) mc_qact_round32_avx2(X + j, Xr + j);
        return;
    }
#endif
    int8_t q[32];
    for (int64_t j = 0; j + 32 <= n; j += 32) {
        float d;
        (void)quant32(X + j, q, &d);
        for (int i = 0; i < 32; i++) Xr[j + i] = d * (float)q[i];
    }
}

void mc_qact_free(qact *a) { free(a->q); }

bool mc_cpu_quant_int8(moecl_dtype t, int64_t T) {
    return T >= 1 && qint_type(t) && mc_cpu_qint() != QINT_NONE;
}

float mc_qint_tail(moecl_dtype dt, const void *w, int64_t b0, int64_t nb, const qact *a, int64_t t) {
    float s = 0.0f;
    for (int64_t j = b0; j < nb; j++) {
        const int8_t *xq = a->q + t * a->cols + 32 * j;
        int dot = 0;
        float d;
        if (dt == MOECL_DTYPE_Q8_0) {
            const mc_block_q8_0 *b = (const mc_block_q8_0 *)w + j;
            for (int i = 0; i < 32; i++) dot += b->qs[i] * xq[i];
            d = mc_f16_to_f32(b->d);
        } else {
            const mc_block_q4_0 *b = (const mc_block_q4_0 *)w + j;
            for (int i = 0; i < 16; i++) dot += ((b->qs[i] & 0xf) - 8) * xq[i] + ((b->qs[i] >> 4) - 8) * xq[i + 16];
            d = mc_f16_to_f32(b->d);
        }
        s += d * a->d[t * a->nb + j] * (float)dot;
    }
    return s;
}

void mc_qint_rows(int kind, moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T, float *Y,
                  int64_t ldy, int64_t r0, int64_t r1) {
#if MC_X86
    switch (kind) {
    case QINT_VNNI512: mc_qint_rows_vnni512(dt, w, cols, a, T, Y, ldy, r0, r1); break;
    case QINT_AVXVNNI: mc_qint_rows_avxvnni(dt, w, cols, a, T, Y, ldy, r0, r1); break;
    default: mc_qint_rows_avx2(dt, w, cols, a, T, Y, ldy, r0, r1); break;
    }
#elif MC_ARM
    if (kind == QINT_DOTPROD) mc_qint_rows_dotprod(dt, w, cols, a, T, Y, ldy, r0, r1);
    else mc_qint_rows_neon(dt, w, cols, a, T, Y, ldy, r0, r1);
#else
    /* mc_cpu_qint() is QINT_NONE here: never called */
    (void)kind, (void)dt, (void)w, (void)cols, (void)a, (void)T, (void)Y, (void)ldy, (void)r0, (void)r1;
#endif
}
