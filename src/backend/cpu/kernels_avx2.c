/*
 * kernels_avx2.c - float32 / F16 / BF16 weights with AVX2, FMA and F16C
 * (x86-64 only; chosen at run time, see isa.c): the fused kernels,
 * conversion to float32, the float32 tile products the quantized
 * kernels use, and SwiGLU.
 */
#include "backend/cpu/kernels_impl.h"

#include <immintrin.h>

MC_T256 static MC_INLINE __m256 ld256(moecl_dtype dt, const void *p, int64_t i) {
    if (dt == MOECL_DTYPE_F32) return _mm256_loadu_ps((const float *)p + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (dt == MOECL_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

MC_T256 static MC_INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* As dot512 with 8 lanes; R <= 4, TT <= 2 so that the accumulators, weights
 * and activation fit in 16 ymm registers. The tail is scalar. */
MC_T256 static MC_INLINE void dot256(moecl_dtype dt, const int R, const int TT, const void *w, size_t rb,
                                     const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy, bool add) {
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < TT; t++) acc[r][t] = _mm256_setzero_ps();

    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        __m256 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = ld256(dt, (const char *)w + r * rb, c);
#pragma GCC unroll 2
        for (int t = 0; t < TT; t++) {
            __m256 xv = _mm256_loadu_ps(x + t * ldx + c);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < TT; t++) {
            float s = hsum256(acc[r][t]);
            for (int64_t k = c; k < n; k++)
                s += load_scalar(dt, (const char *)w + r * rb, k) * x[t * ldx + k];
            y[t * ldy + r] = (add ? y[t * ldy + r] : 0.0f) + s;
        }
}

MC_T256 static MC_INLINE void fused256_dt(moecl_dtype dt, const void *w, int64_t cols, const float *X,
                                          int64_t T, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
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
                if (T - t0 == 1) dot256(dt, 4, 1, wr, rb, x, cols, n, y, ldy, add);
                else dot256(dt, 4, 2, wr, rb, x, cols, n, y, ldy, add);
            }
        }
        for (; r < r1; r++) {
            const char *wr = (const char *)w + (size_t)r * rb + (size_t)k0 * es;
            for (int64_t t0 = 0; t0 < T; t0 += 2) {
                const float *x = X + t0 * cols + k0;
                float *y = Y + t0 * ldy + r;
                if (T - t0 == 1) dot256(dt, 1, 1, wr, rb, x, cols, n, y, ldy, add);
                else dot256(dt, 1, 2, wr, rb, x, cols, n, y, ldy, add);
            }
        }
    }
}

MC_T256 void mc_fused256(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T,
                         float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    switch (dt) {
    case MOECL_DTYPE_F16: fused256_dt(MOECL_DTYPE_F16, w, cols, X, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_BF16: fused256_dt(MOECL_DTYPE_BF16, w, cols, X, T, Y, ldy, r0, r1); break;
    default: fused256_dt(MOECL_DTYPE_F32, w, cols, X, T, Y, ldy, r0, r1); break;
    }
}

MC_T256 void mc_to_f32_256(moecl_dtype dt, const void *src, float *dst, int64_t n) {
    int64_t i = 0;
    if (dt == MOECL_DTYPE_F16)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld256(MOECL_DTYPE_F16, src, i));
    else
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld256(MOECL_DTYPE_BF16, src, i));
    for (; i < n; i++) dst[i] = load_scalar(dt, src, i);
}

MC_T256 void mc_tile_dot256(int R, const float *tile, int64_t ldt, const float *x, int64_t ldx, int64_t T,
                            int64_t n, float *y, int64_t ldy, bool add) {
    const size_t rb = (size_t)ldt * sizeof(float);
    for (int64_t t0 = 0; t0 < T; t0 += 2) {
        const float *xt = x + t0 * ldx;
        float *yt = y + t0 * ldy;
        const bool one = T - t0 == 1;
        if (R == 4) {
            if (one) dot256(MOECL_DTYPE_F32, 4, 1, tile, rb, xt, ldx, n, yt, ldy, add);
            else dot256(MOECL_DTYPE_F32, 4, 2, tile, rb, xt, ldx, n, yt, ldy, add);
        } else {
            if (one) dot256(MOECL_DTYPE_F32, 1, 1, tile, rb, xt, ldx, n, yt, ldy, add);
            else dot256(MOECL_DTYPE_F32, 1, 2, tile, rb, xt, ldx, n, yt, ldy, add);
        }
    }
}

/* ======================================================================== */
/* SwiGLU                                                                   */
/* ======================================================================== */

/* exp(a) for a <= 0: a = n ln2 + r (Cody-Waite, ln2 in two parts), exp(r)
 * by its Taylor series to r^7 (|r| <= ln2/2: truncation 5e-9 relative), and
 * 2^n applied as two factors 2^(n/2), 2^(n - n/2) so that results down to
 * the subnormals round once, as expf's do. a below -110 gives 0. */
MC_T256 static MC_INLINE __m256 exp_neg256(__m256 a) {
    a = _mm256_max_ps(a, _mm256_set1_ps(-110.0f)); /* NaN: -110 (vmaxps returns its second operand) */
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(a, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693145751953125f), a);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-1.42860682030941723212e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i ni = _mm256_cvtps_epi32(n), n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

/* The scalar formula (kernels.c) with exp_neg256 for expf: silu(g) = g *
 * sigmoid(g), sigmoid from e = exp(-|g|). */
MC_T256 static MC_INLINE __m256 swiglu8(__m256 g, __m256 u) {
    const __m256 e = exp_neg256(_mm256_or_ps(_mm256_set1_ps(-0.0f), g)); /* -|g| */
    const __m256 num = _mm256_blendv_ps(_mm256_set1_ps(1.0f), e, _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_LT_OQ));
    return _mm256_mul_ps(_mm256_mul_ps(g, _mm256_div_ps(num, _mm256_add_ps(_mm256_set1_ps(1.0f), e))), u);
}

/* Every element through swiglu8, the last n % 8 too (through a padded copy):
 * an element's result must not depend on where it falls in the array (a
 * row's place in a batch, a thread's share), or logits would change with
 * the batch. */
MC_T256 void mc_swiglu_avx2(float *gate, const float *up, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(gate + i, swiglu8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    if (i < n) {
        float g[8] = {0}, u[8] = {0};
        memcpy(g, gate + i, (size_t)(n - i) * sizeof *g);
        memcpy(u, up + i, (size_t)(n - i) * sizeof *u);
        _mm256_storeu_ps(g, swiglu8(_mm256_loadu_ps(g), _mm256_loadu_ps(u)));
        memcpy(gate + i, g, (size_t)(n - i) * sizeof *g);
    }
}
