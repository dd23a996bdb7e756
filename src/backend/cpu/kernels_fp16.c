/*
 * kernels_fp16.c - F16 weights in FP16 arithmetic (AArch64 with ASIMDHP:
 * ARMv8.2-A +fp16, this file only; used when MOECL_CPU_ISA=fp16, see
 * isa.c). Other types go to kernels_neon.c.
 *
 * With the weights in binary16 and the products made there too, eight
 * weights cost one fmla (.8h) per row of X instead of two widenings and two
 * float32 fmla. Every T takes this path (MC_FP16_MIN_T = 1), although at
 * T <= 2 decode is bound by memory rather than arithmetic: a token's logits
 * must not depend on how many others share its batch, and each row of X is
 * rounded and summed the same way whatever T is.
 *
 * Accuracy: each row of X (per column block) is scaled by a power of two
 * so that its largest magnitude lies in [1, 2), then rounded to binary16
 * (relative 2^-11); each lane sums 4 products in binary16 (32 columns), and
 * those partial sums are added in float32. The result is therefore not the
 * float32 one: tests/test_kernels.c bounds it (FP16_BOUND). A product or
 * partial sum past binary16's range (weights above ~8000) makes the row
 * non-finite; such rows are computed again in float32.
 */
#include "backend/cpu/kernels_impl.h"

#include <arm_neon.h>
#include <math.h>
#include <stdlib.h>

/* y[t * ldy + r] (+)= inv[t] * (row r of w (R <= 4, ldw apart) · row t of
 * x (TT <= 2, binary16, ldx apart)) over n columns. */
static MC_INLINE void doth(const int R, const int TT, const float16_t *w, int64_t ldw, const float16_t *x,
                           int64_t ldx, int64_t n, const float *inv, float *y, int64_t ldy, bool add) {
    float32x4_t acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < TT; t++) acc[r][t] = vdupq_n_f32(0.0f);

    int64_t c = 0;
    while (c + 8 <= n) {
        /* up to 32 columns summed in binary16, then widened */
        const int steps = n - c >= 32 ? 4 : 1;
        float16x8_t h[4][2];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 2
            for (int t = 0; t < TT; t++) h[r][t] = vdupq_n_f16(0);
        for (int k = 0; k < steps; k++, c += 8) {
            float16x8_t wv[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) wv[r] = vld1q_f16(w + r * ldw + c);
#pragma GCC unroll 2
            for (int t = 0; t < TT; t++) {
                const float16x8_t xv = vld1q_f16(x + t * ldx + c);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) h[r][t] = vfmaq_f16(h[r][t], wv[r], xv);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 2
            for (int t = 0; t < TT; t++)
                acc[r][t] = vaddq_f32(vaddq_f32(acc[r][t], vcvt_f32_f16(vget_low_f16(h[r][t]))),
                                      vcvt_high_f32_f16(h[r][t]));
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < TT; t++) {
            float s = vaddvq_f32(acc[r][t]);
            for (int64_t k = c; k < n; k++) s += (float)w[r * ldw + k] * (float)x[t * ldx + k];
            y[t * ldy + r] = (add ? y[t * ldy + r] : 0.0f) + s * inv[t];
        }
}

/* Row t of X, columns [k0, k0 + n), scaled by a power of two into [1, 2)
 * at its largest and rounded to binary16 into xh; inv: the inverse scale. */
static void to_f16_scaled(const float *x, int64_t n, float16_t *xh, float *inv) {
    float amax = 0.0f;
    for (int64_t i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    int e = 1;
    if (amax > 0.0f && isfinite(amax)) frexpf(amax, &e); /* amax = m * 2^e, m in [0.5, 1) */
    if (e < -125) e = -125;                              /* 2^(1 - e) stays a float */
    const float s = ldexpf(1.0f, 1 - e);
    *inv = ldexpf(1.0f, e - 1);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1_f16(xh + i, vcvt_f16_f32(vmulq_n_f32(vld1q_f32(x + i), s)));
    for (; i < n; i++) xh[i] = (float16_t)(x[i] * s);
}

void mc_fused_fp16(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T, float *Y, int64_t ldy,
                   int64_t r0, int64_t r1) {
    const int64_t kc = fused_col_block(T, cols, 2);
    float16_t *xh = NULL;
    float *inv = NULL;
    if (dt == MOECL_DTYPE_F16 && T >= MC_FP16_MIN_T) {
        xh = malloc((size_t)(T * kc) * sizeof *xh);
        inv = malloc((size_t)T * sizeof *inv);
    }
    if (!xh || !inv) { /* not this path, or out of memory: float32 */
        free(xh);
        free(inv);
        mc_fused_neon(dt, w, cols, X, T, Y, ldy, r0, r1);
        return;
    }
    const float16_t *wh = w;
    for (int64_t k0 = 0; k0 < cols; k0 += kc) {
        const int64_t n = cols - k0 < kc ? cols - k0 : kc;
        const bool add = k0 > 0;
        for (int64_t t = 0; t < T; t++) to_f16_scaled(X + t * cols + k0, n, xh + t * n, inv + t);
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4)
            for (int64_t t0 = 0; t0 < T; t0 += 2) {
                if (T - t0 == 1) doth(4, 1, wh + r * cols + k0, cols, xh + t0 * n, n, n, inv + t0, Y + t0 * ldy + r, ldy, add);
                else doth(4, 2, wh + r * cols + k0, cols, xh + t0 * n, n, n, inv + t0, Y + t0 * ldy + r, ldy, add);
            }
        for (; r < r1; r++)
            for (int64_t t0 = 0; t0 < T; t0 += 2) {
                if (T - t0 == 1) doth(1, 1, wh + r * cols + k0, cols, xh + t0 * n, n, n, inv + t0, Y + t0 * ldy + r, ldy, add);
                else doth(1, 2, wh + r * cols + k0, cols, xh + t0 * n, n, n, inv + t0, Y + t0 * ldy + r, ldy, add);
            }
    }
    free(xh);
    free(inv);
    /* out of binary16's range somewhere in the row: again in float32 */
    for (int64_t r = r0; r < r1; r++) {
        bool finite = true;
        for (int64_t t = 0; t < T; t++) finite = finite && isfinite(Y[t * ldy + r]);
        if (!finite) mc_fused_neon(dt, w, cols, X, T, Y, ldy, r, r + 1);
    }
}
