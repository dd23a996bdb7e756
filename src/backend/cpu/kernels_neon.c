/*
 * kernels_neon.c - float32 / F16 / BF16 weights with NEON (AArch64 only;
 * the baseline of every ARMv8-A CPU, chosen at run time, see isa.c): the
 * fused kernels, conversion to float32, and the float32 tile products the
 * quantized kernels use. F16 is widened exactly (fcvtl), BF16 by a 16-bit
 * shift; the arithmetic is float32 FMA, as in kernels_avx2.c.
 */
#include "backend/cpu/kernels_impl.h"

#include <arm_neon.h>

/* Eight weights of row p from column i, as two float32x4. */
static MC_INLINE void ld8(moecl_dtype dt, const void *p, int64_t i, float32x4_t *lo, float32x4_t *hi) {
    if (dt == MOECL_DTYPE_F32) {
        *lo = vld1q_f32((const float *)p + i);
        *hi = vld1q_f32((const float *)p + i + 4);
        return;
    }
    const uint16x8_t h = vld1q_u16((const uint16_t *)p + i);
    if (dt == MOECL_DTYPE_F16) {
        const float16x8_t f = vreinterpretq_f16_u16(h);
        *lo = vcvt_f32_f16(vget_low_f16(f));
        *hi = vcvt_high_f32_f16(f);
    } else {
        *lo = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
        *hi = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
    }
}

/* y[t * ldy + r] (+)= row r of w (R <= 4 rows, rb bytes apart) · row t of x
 * (TT <= 2 rows, ldx apart) over n columns: 8 columns a step in 16
 * accumulators (of 32 registers), the tail in scalar. */
static MC_INLINE void dotn(moecl_dtype dt, const int R, const int TT, const void *w, size_t rb, const float *x,
                           int64_t ldx, int64_t n, float *y, int64_t ldy, bool add) {
    float32x4_t acc[4][2][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < TT; t++) acc[r][t][0] = acc[r][t][1] = vdupq_n_f32(0.0f);

    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        float32x4_t wl[4], wh[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) ld8(dt, (const char *)w + r * rb, c, &wl[r], &wh[r]);
#pragma GCC unroll 2
        for (int t = 0; t < TT; t++) {
            const float32x4_t xl = vld1q_f32(x + t * ldx + c), xh = vld1q_f32(x + t * ldx + c + 4);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                acc[r][t][0] = vfmaq_f32(acc[r][t][0], wl[r], xl);
                acc[r][t][1] = vfmaq_f32(acc[r][t][1], wh[r], xh);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < TT; t++) {
            float s = vaddvq_f32(vaddq_f32(acc[r][t][0], acc[r][t][1]));
            for (int64_t k = c; k < n; k++) s += load_scalar(dt, (const char *)w + r * rb, k) * x[t * ldx + k];
            y[t * ldy + r] = (add ? y[t * ldy + r] : 0.0f) + s;
        }
}

/* Rows [r0, r1) of Y: groups of 4 weight rows, each dotted with 2 rows of X
 * at a time; columns in L2-sized blocks when T is large (fused_col_block). */
static MC_INLINE void fused_dt(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T, float *Y,
                               int64_t ldy, int64_t r0, int64_t r1) {
    const size_t es = elem_size(dt), rb = (size_t)cols * es;
    const int64_t kc = fused_col_block(T, cols, 2);
    for (int64_t k0 = 0; k0 < cols; k0 += kc) {
        const int64_t n = cols - k0 < kc ? cols - k0 : kc;
        const bool add = k0 > 0;
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) {
            const char *wr = (const char *)w + (size_t)r * rb + (size_t)k0 * es;
            for (int64_t t0 = 0; t0 < T; t0 += 2) {
                const float *x = X + t0 * cols + k0;
                float *y = Y + t0 * ldy + r;
                if (T - t0 == 1) dotn(dt, 4, 1, wr, rb, x, cols, n, y, ldy, add);
                else dotn(dt, 4, 2, wr, rb, x, cols, n, y, ldy, add);
            }
        }
        for (; r < r1; r++) {
            const char *wr = (const char *)w + (size_t)r * rb + (size_t)k0 * es;
            for (int64_t t0 = 0; t0 < T; t0 += 2) {
                const float *x = X + t0 * cols + k0;
                float *y = Y + t0 * ldy + r;
                if (T - t0 == 1) dotn(dt, 1, 1, wr, rb, x, cols, n, y, ldy, add);
                else dotn(dt, 1, 2, wr, rb, x, cols, n, y, ldy, add);
            }
        }
    }
}

void mc_fused_neon(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T, float *Y, int64_t ldy,
                   int64_t r0, int64_t r1) {
    switch (dt) {
    case MOECL_DTYPE_F16: fused_dt(MOECL_DTYPE_F16, w, cols, X, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_BF16: fused_dt(MOECL_DTYPE_BF16, w, cols, X, T, Y, ldy, r0, r1); break;
    default: fused_dt(MOECL_DTYPE_F32, w, cols, X, T, Y, ldy, r0, r1); break;
    }
}

void mc_to_f32_neon(moecl_dtype dt, const void *src, float *dst, int64_t n) {
    int64_t i = 0;
    float32x4_t lo, hi;
    if (dt == MOECL_DTYPE_F16)
        for (; i + 8 <= n; i += 8) {
            ld8(MOECL_DTYPE_F16, src, i, &lo, &hi);
            vst1q_f32(dst + i, lo);
            vst1q_f32(dst + i + 4, hi);
        }
    else
        for (; i + 8 <= n; i += 8) {
            ld8(MOECL_DTYPE_BF16, src, i, &lo, &hi);
            vst1q_f32(dst + i, lo);
            vst1q_f32(dst + i + 4, hi);
        }
    for (; i < n; i++) dst[i] = load_scalar(dt, src, i);
}

void mc_tile_dot_neon(int R, const float *tile, int64_t ldt, const float *x, int64_t ldx, int64_t T, int64_t n,
                      float *y, int64_t ldy, bool add) {
    const size_t rb = (size_t)ldt * sizeof(float);
    for (int64_t t0 = 0; t0 < T; t0 += 2) {
        const float *xt = x + t0 * ldx;
        float *yt = y + t0 * ldy;
        const bool one = T - t0 == 1;
        if (R == 4) {
            if (one) dotn(MOECL_DTYPE_F32, 4, 1, tile, rb, xt, ldx, n, yt, ldy, add);
            else dotn(MOECL_DTYPE_F32, 4, 2, tile, rb, xt, ldx, n, yt, ldy, add);
        } else {
            if (one) dotn(MOECL_DTYPE_F32, 1, 1, tile, rb, xt, ldx, n, yt, ldy, add);
            else dotn(MOECL_DTYPE_F32, 1, 2, tile, rb, xt, ldx, n, yt, ldy, add);
        }
    }
}
