/*
 * kernels_avx512.c - float32 / F16 / BF16 weights with AVX-512 (x86-64
 * only; chosen at run time, see isa.c): the fused kernels, conversion to
 * float32, and the float32 tile products the quantized kernels use.
 */
#include "backend/cpu/kernels_impl.h"

#include <immintrin.h>

/* Sixteen weights from element i of a row, widened to float32. */
MC_T512 static MC_INLINE __m512 ld512(moecl_dtype dt, const void *p, int64_t i) {
    if (dt == MOECL_DTYPE_F32) return _mm512_loadu_ps((const float *)p + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i));
    if (dt == MOECL_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The same for the lanes in m only (the others read as 0, never touched). */
MC_T512 static MC_INLINE __m512 ld512_mask(moecl_dtype dt, const void *p, int64_t i, __mmask16 m) {
    if (dt == MOECL_DTYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)p + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i);
    if (dt == MOECL_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Y[t, r] for R consecutive weight rows at w and TT rows of X (R, TT <= 4,
 * compile-time constants after inlining: R*TT accumulators + R weights + 1
 * activation vector fit in the 32 zmm registers). With few tokens the loop
 * is memory-bound: it then takes a whole 64-byte line of every row per step
 * (and BF16 skips the widening shuffles). Columns past the last full step
 * go 16 at a time, the last few through one masked step. */
MC_T512 static MC_INLINE void dot512(moecl_dtype dt, const int R, const int TT, const void *w, size_t rb,
                                     const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy, bool add) {
    const size_t es = elem_size(dt);
    const int64_t step = TT <= 2 ? 64 / (int64_t)es : 16; /* elements per row per iteration */
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++) acc[r][t] = _mm512_setzero_ps();

    int64_t c = 0;
    if (step > 16) {
        for (; c + step <= n; c += step) {
#if MC_PREFETCH > 0
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                _mm_prefetch((const char *)w + r * rb + (size_t)c * es + MC_PREFETCH, _MM_HINT_T0);
#endif
            if (dt == MOECL_DTYPE_BF16) {
                /* 32 bf16 = 16 dwords: the low halves, shifted up, are the
                 * even elements as float32, the high halves (masked) the odd
                 * ones. Deinterleaving the activations instead of widening
                 * the weights costs two permutes per token, not two
                 * shuffles per weight row. */
                const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
                const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
                __m512 we[4], wo[4];
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    __m512i v = _mm512_loadu_si512((const void *)((const char *)w + r * rb + (size_t)c * 2));
                    we[r] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
                    wo[r] = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
                }
#pragma GCC unroll 4
                for (int t = 0; t < TT; t++) {
                    __m512 xa = _mm512_loadu_ps(x + t * ldx + c), xb = _mm512_loadu_ps(x + t * ldx + c + 16);
                    __m512 xe = _mm512_permutex2var_ps(xa, even, xb), xo = _mm512_permutex2var_ps(xa, odd, xb);
#pragma GCC unroll 4
                    for (int r = 0; r < R; r++) {
                        acc[r][t] = _mm512_fmadd_ps(we[r], xe, acc[r][t]);
                        acc[r][t] = _mm512_fmadd_ps(wo[r], xo, acc[r][t]);
                    }
                }
                continue;
            }
#pragma GCC unroll 4
            for (int64_t k = 0; k < step; k += 16) {
                __m512 wv[4];
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) wv[r] = ld512(dt, (const char *)w + r * rb, c + k);
#pragma GCC unroll 4
                for (int t = 0; t < TT; t++) {
                    __m512 xv = _mm512_loadu_ps(x + t * ldx + c + k);
#pragma GCC unroll 4
                    for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
        }
    }
    for (; c + 16 <= n; c += 16) {
        __m512 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = ld512(dt, (const char *)w + r * rb, c);
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++) {
            __m512 xv = _mm512_loadu_ps(x + t * ldx + c);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    if (c < n) {
        __mmask16 m = (__mmask16)((1u << (n - c)) - 1);
        __m512 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = ld512_mask(dt, (const char *)w + r * rb, c, m);
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + t * ldx + c);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++) y[t * ldy + r] = (add ? y[t * ldy + r] : 0.0f) + _mm512_reduce_add_ps(acc[r][t]);
}

/* Rows [r0, r1) of Y for any T: groups of 4 weight rows, each group dotted
 * with X four tokens at a time (a group re-read for the next four tokens
 * comes from L1, not memory). With more than four tokens the columns go in
 * blocks (fused_col_block) so that X[T, block] stays in L2 across groups. */
MC_T512 static MC_INLINE void fused512_dt(moecl_dtype dt, const void *w, int64_t cols, const float *X,
                                          int64_t T, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    const size_t es = elem_size(dt), rb = (size_t)cols * es;
    const int64_t kc = fused_col_block(T, cols, 4);
    for (int64_t k0 = 0; k0 < cols; k0 += kc) {
        const int64_t n = cols - k0 < kc ? cols - k0 : kc;
        const bool add = k0 > 0;
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) {
            const char *wr = (const char *)w + (size_t)r * rb + (size_t)k0 * es;
            for (int64_t t0 = 0; t0 < T; t0 += 4) {
                const float *x = X + t0 * cols + k0;
                float *y = Y + t0 * ldy + r;
                switch (T - t0) {
                case 1: dot512(dt, 4, 1, wr, rb, x, cols, n, y, ldy, add); break;
                case 2: dot512(dt, 4, 2, wr, rb, x, cols, n, y, ldy, add); break;
                case 3: dot512(dt, 4, 3, wr, rb, x, cols, n, y, ldy, add); break;
                default: dot512(dt, 4, 4, wr, rb, x, cols, n, y, ldy, add); break;
                }
            }
        }
        for (; r < r1; r++) {
            const char *wr = (const char *)w + (size_t)r * rb + (size_t)k0 * es;
            for (int64_t t0 = 0; t0 < T; t0 += 4) {
                const float *x = X + t0 * cols + k0;
                float *y = Y + t0 * ldy + r;
                switch (T - t0) {
                case 1: dot512(dt, 1, 1, wr, rb, x, cols, n, y, ldy, add); break;
                case 2: dot512(dt, 1, 2, wr, rb, x, cols, n, y, ldy, add); break;
                case 3: dot512(dt, 1, 3, wr, rb, x, cols, n, y, ldy, add); break;
                default: dot512(dt, 1, 4, wr, rb, x, cols, n, y, ldy, add); break;
                }
            }
        }
    }
}

MC_T512 void mc_fused512(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T,
                         float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    switch (dt) {
    case MOECL_DTYPE_F16: fused512_dt(MOECL_DTYPE_F16, w, cols, X, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_BF16: fused512_dt(MOECL_DTYPE_BF16, w, cols, X, T, Y, ldy, r0, r1); break;
    default: fused512_dt(MOECL_DTYPE_F32, w, cols, X, T, Y, ldy, r0, r1); break;
    }
}

MC_T512 void mc_to_f32_512(moecl_dtype dt, const void *src, float *dst, int64_t n) {
    int64_t i = 0;
    if (dt == MOECL_DTYPE_F16) {
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, ld512(MOECL_DTYPE_F16, src, i));
        if (i < n) {
            __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
            _mm512_mask_storeu_ps(dst + i, m, ld512_mask(MOECL_DTYPE_F16, src, i, m));
        }
    } else {
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, ld512(MOECL_DTYPE_BF16, src, i));
        if (i < n) {
            __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
            _mm512_mask_storeu_ps(dst + i, m, ld512_mask(MOECL_DTYPE_BF16, src, i, m));
        }
    }
}

/* Y[t, r..r+R) (+)= tile[R, ldt] · X[t, 0..n) for every t: dot512 on the
 * float32 tile, four tokens at a time. */
MC_T512 void mc_tile_dot512(int R, const float *tile, int64_t ldt, const float *x, int64_t ldx, int64_t T,
                            int64_t n, float *y, int64_t ldy, bool add) {
    const size_t rb = (size_t)ldt * sizeof(float);
    for (int64_t t0 = 0; t0 < T; t0 += 4) {
        const float *xt = x + t0 * ldx;
        float *yt = y + t0 * ldy;
        const int64_t tt = T - t0 < 4 ? T - t0 : 4;
        if (R == 4) {
            switch (tt) {
            case 1: dot512(MOECL_DTYPE_F32, 4, 1, tile, rb, xt, ldx, n, yt, ldy, add); break;
            case 2: dot512(MOECL_DTYPE_F32, 4, 2, tile, rb, xt, ldx, n, yt, ldy, add); break;
            case 3: dot512(MOECL_DTYPE_F32, 4, 3, tile, rb, xt, ldx, n, yt, ldy, add); break;
            default: dot512(MOECL_DTYPE_F32, 4, 4, tile, rb, xt, ldx, n, yt, ldy, add); break;
            }
        } else {
            switch (tt) {
            case 1: dot512(MOECL_DTYPE_F32, 1, 1, tile, rb, xt, ldx, n, yt, ldy, add); break;
            case 2: dot512(MOECL_DTYPE_F32, 1, 2, tile, rb, xt, ldx, n, yt, ldy, add); break;
            case 3: dot512(MOECL_DTYPE_F32, 1, 3, tile, rb, xt, ldx, n, yt, ldy, add); break;
            default: dot512(MOECL_DTYPE_F32, 1, 4, tile, rb, xt, ldx, n, yt, ldy, add); break;
            }
        }
    }
}
