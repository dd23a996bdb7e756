/*
 * quant_tiles.c - quantized weights (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) with
 * float32 activations: the SIMD dequantizers and the fused kernel that
 * dots dequantized tiles (or, AVX-512 at T <= 2, the weights in registers).
 */
#include "backend/cpu/kernels_impl.h"

#if MC_X86
#include <immintrin.h>
#endif

/*
 * A quantized weight is never widened as a whole. The fused kernels take
 * 4 rows x MC_QCHUNK columns at a time, dequantize them into a tile on the
 * stack (16 KiB: it stays in L1) and dot the tile with the T rows of X with
 * the float32 tile kernels (mc_tile_dot512 / mc_tile_dot256, or dot_scalar), so each
 * weight block is read from memory once for all T rows. The sgemm path
 * dequantizes row blocks into the caller's scratch, as F16/BF16 do.
 * Activations stay float32: nothing is added to the error beyond the
 * weights' own quantization.
 *
 * The SIMD dequantizers give the same bits as mc_dequantize_row (and so as
 * gguf.quants): the same float32 products in the same order, a multiply and
 * a subtract rather than an FMA (the build is ISO C: GCC contracts nothing).
 */

/* Columns per dequantized tile: a multiple of every block size. */
#ifndef MC_QCHUNK
#define MC_QCHUNK 1024
#endif

/* Columns of X per pass of the AVX-512 T <= 2 kernels (a multiple of 256;
 * 0: whole rows). Each 16 weights load 64 bytes of X per token, so long
 * rows stream X from L2: Zen 4, Q4_K, T=1, 1 thread, rows of 16384 columns
 * ran at 4.5-6.4 GB/s, rows of 4096 at 11.7. But blocking at 4096 made the
 * 16384-column case slower still (2.9 GB/s; the weight rows are then read
 * in 2 KiB pieces), so it is off. All on a shared, noisy 2-vCPU VM. */
#ifndef MC_QX_COLS
#define MC_QX_COLS 0
#endif

#if MC_X86
/* ---- AVX-512: 16 weights per step ---- */

MC_T512 static MC_INLINE __m512i u8x16(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }
MC_T512 static MC_INLINE float h2f(uint16_t h) { return _cvtsh_ss(h); }

/* Sixteen weights w at offset pos of the current block: stored to y + pos
 * (TT == 0: dequantization), or multiplied into the TT rows of x + pos and
 * added to acc[t][a] (a: one of two accumulators, to halve the dependency
 * chains). TT and a are compile-time constants after inlining. */
#define EMIT512(pos, w, a)                                                                            \
    do {                                                                                              \
        if (TT == 0) {                                                                                \
            _mm512_storeu_ps(y + (pos), (w));                                                         \
        } else {                                                                                      \
            acc[0][a] = _mm512_fmadd_ps((w), _mm512_loadu_ps(x + (pos)), acc[0][a]);                  \
            if (TT == 2) acc[1][a] = _mm512_fmadd_ps((w), _mm512_loadu_ps(x + ldx + (pos)), acc[1][a]); \
        }                                                                                             \
    } while (0)

/* nb blocks of dt at src: dequantized to y (TT == 0), or dotted with TT <= 2
 * rows of x (ldx apart) into acc, never leaving registers. Either way the
 * weights are the float32 values mc_dequantize_row gives. */
MC_T512 static MC_INLINE void q512(moecl_dtype dt, const int TT, const void *src, int64_t nb, float *y,
                                   const float *x, int64_t ldx, __m512 acc[2][2]) {
    const __m512i m4 = _mm512_set1_epi32(0xf);
    switch (dt) {
    case MOECL_DTYPE_Q8_0:
        for (const mc_block_q8_0 *b = src; nb-- > 0; b++, y += TT ? 0 : 32, x += TT ? 32 : 0) {
            const __m512 d = _mm512_set1_ps(h2f(b->d));
            __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b->qs));
            __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b->qs + 16)));
            EMIT512(0, _mm512_mul_ps(_mm512_cvtepi32_ps(q0), d), 0);
            EMIT512(16, _mm512_mul_ps(_mm512_cvtepi32_ps(q1), d), 1);
        }
        break;
    case MOECL_DTYPE_Q4_0:
        for (const mc_block_q4_0 *b = src; nb-- > 0; b++, y += TT ? 0 : 32, x += TT ? 32 : 0) {
            const __m512 d = _mm512_set1_ps(h2f(b->d));
            const __m512i q = u8x16(b->qs), eight = _mm512_set1_epi32(8);
            __m512i lo = _mm512_sub_epi32(_mm512_and_si512(q, m4), eight);
            __m512i hi = _mm512_sub_epi32(_mm512_srli_epi32(q, 4), eight);
            EMIT512(0, _mm512_mul_ps(d, _mm512_cvtepi32_ps(lo)), 0);
            EMIT512(16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(hi)), 1);
        }
        break;
    case MOECL_DTYPE_Q4_K:
    case MOECL_DTYPE_Q5_K: {
        const bool five = dt == MOECL_DTYPE_Q5_K;
        const size_t bb = five ? sizeof(mc_block_q5_K) : sizeof(mc_block_q4_K);
        for (const char *p = src; nb-- > 0; p += bb, y += TT ? 0 : 256, x += TT ? 256 : 0) {
            /* Q4_K and Q5_K share d, dmin, scales; qs and qh are where they differ */
            const mc_block_q4_K *b = (const mc_block_q4_K *)p;
            const uint8_t *qs = five ? ((const mc_block_q5_K *)p)->qs : b->qs;
            const uint8_t *qh = five ? ((const mc_block_q5_K *)p)->qh : NULL;
            const float d = h2f(b->d), dmin = h2f(b->dmin);
            __m512i qhv[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
            if (five) {
                qhv[0] = u8x16(qh);
                qhv[1] = u8x16(qh + 16);
            }
            for (int k = 0; k < 4; k++) { /* sub-blocks 2k (low nibbles) and 2k+1 (high) */
                uint8_t sc0, m0, sc1, m1;
                mc_q4k_scale_min(b->scales, 2 * k, &sc0, &m0);
                mc_q4k_scale_min(b->scales, 2 * k + 1, &sc1, &m1);
                const __m512 dl0 = _mm512_set1_ps(d * (float)sc0), ml0 = _mm512_set1_ps(dmin * (float)m0);
                const __m512 dl1 = _mm512_set1_ps(d * (float)sc1), ml1 = _mm512_set1_ps(dmin * (float)m1);
                const __m128i s0 = _mm_cvtsi32_si128(2 * k), s1 = _mm_cvtsi32_si128(2 * k + 1);
#pragma GCC unroll 2
                for (int h = 0; h < 2; h++) {
                    const __m512i q = u8x16(qs + 32 * k + 16 * h);
                    __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_srli_epi32(q, 4);
                    if (five) {
                        const __m512i one = _mm512_set1_epi32(1);
                        lo = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_and_si512(_mm512_srl_epi32(qhv[h], s0), one), 4));
                        hi = _mm512_or_si512(hi, _mm512_slli_epi32(_mm512_and_si512(_mm512_srl_epi32(qhv[h], s1), one), 4));
                    }
                    EMIT512(64 * k + 16 * h, _mm512_sub_ps(_mm512_mul_ps(dl0, _mm512_cvtepi32_ps(lo)), ml0), 0);
                    EMIT512(64 * k + 32 + 16 * h, _mm512_sub_ps(_mm512_mul_ps(dl1, _mm512_cvtepi32_ps(hi)), ml1), 1);
                }
            }
        }
        break;
    }
    case MOECL_DTYPE_Q6_K:
        for (const mc_block_q6_K *b = src; nb-- > 0; b++, y += TT ? 0 : 256, x += TT ? 256 : 0) {
            const float d = h2f(b->d);
            const __m512i three = _mm512_set1_epi32(3), k32 = _mm512_set1_epi32(32);
            for (int h = 0; h < 2; h++)
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) { /* the 16 weights at r = 16j (+64) share ql bytes with r + 64 */
                    const int r = 16 * j;
                    const __m512i l = u8x16(b->ql + 64 * h + r), hb = u8x16(b->qh + 32 * h + r % 32);
                    const __m128i s_lo = _mm_cvtsi32_si128(2 * (r / 32)), s_hi = _mm_cvtsi32_si128(2 * (r / 32) + 4);
                    __m512i q0 = _mm512_or_si512(_mm512_and_si512(l, m4),
                                                 _mm512_slli_epi32(_mm512_and_si512(_mm512_srl_epi32(hb, s_lo), three), 4));
                    __m512i q1 = _mm512_or_si512(_mm512_srli_epi32(l, 4),
                                                 _mm512_slli_epi32(_mm512_and_si512(_mm512_srl_epi32(hb, s_hi), three), 4));
                    const int p0 = 128 * h + r, p1 = p0 + 64;
                    const __m512 d0 = _mm512_set1_ps(d * (float)b->scales[p0 / 16]);
                    const __m512 d1 = _mm512_set1_ps(d * (float)b->scales[p1 / 16]);
                    EMIT512(p0, _mm512_mul_ps(d0, _mm512_cvtepi32_ps(_mm512_sub_epi32(q0, k32))), 0);
                    EMIT512(p1, _mm512_mul_ps(d1, _mm512_cvtepi32_ps(_mm512_sub_epi32(q1, k32))), 1);
                }
        }
        break;
    default: break;
    }
}
#undef EMIT512

MC_T512 static void deq512(moecl_dtype dt, const void *src, float *y, int64_t nb) {
    q512(dt, 0, src, nb, y, NULL, 0, NULL);
}

/* Y[t, r] for rows [r0, r1) and T <= 2 tokens, each weight row read once and
 * dotted in registers (no tile): the memory-bound decode case. */
MC_T512 static MC_INLINE void rows_dot512_dt(moecl_dtype dt, const int TT, const void *w, size_t rb, int64_t nb,
                                             const float *X, int64_t ldx, float *Y, int64_t ldy, int64_t r0,
                                             int64_t r1, bool add) {
    for (int64_t r = r0; r < r1; r++) {
        __m512 acc[2][2] = {{_mm512_setzero_ps(), _mm512_setzero_ps()}, {_mm512_setzero_ps(), _mm512_setzero_ps()}};
        q512(dt, TT, (const char *)w + (size_t)r * rb, nb, NULL, X, ldx, acc);
        for (int t = 0; t < TT; t++)
            Y[t * ldy + r] = (add ? Y[t * ldy + r] : 0.0f) + _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
    }
}

MC_T512 static void rows_dot512(moecl_dtype dt, int64_t T, const void *w, size_t rb, int64_t nb, const float *X,
                                int64_t ldx, float *Y, int64_t ldy, int64_t r0, int64_t r1, bool add) {
#define MC_ROWS_DOT(DT)                                                                   \
    do {                                                                                  \
        if (T == 1) rows_dot512_dt(DT, 1, w, rb, nb, X, ldx, Y, ldy, r0, r1, add);        \
        else rows_dot512_dt(DT, 2, w, rb, nb, X, ldx, Y, ldy, r0, r1, add);               \
    } while (0)
    switch (dt) {
    case MOECL_DTYPE_Q8_0: MC_ROWS_DOT(MOECL_DTYPE_Q8_0); break;
    case MOECL_DTYPE_Q4_0: MC_ROWS_DOT(MOECL_DTYPE_Q4_0); break;
    case MOECL_DTYPE_Q4_K: MC_ROWS_DOT(MOECL_DTYPE_Q4_K); break;
    case MOECL_DTYPE_Q5_K: MC_ROWS_DOT(MOECL_DTYPE_Q5_K); break;
    case MOECL_DTYPE_Q6_K: MC_ROWS_DOT(MOECL_DTYPE_Q6_K); break;
    default: break;
    }
#undef MC_ROWS_DOT
}

/* ---- AVX2: 8 weights per step ---- */

MC_T256 static MC_INLINE __m256i u8x8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }

MC_T256 static void deq256(moecl_dtype dt, const void *src, float *y, int64_t nb) {
    const __m256i m4 = _mm256_set1_epi32(0xf);
    switch (dt) {
    case MOECL_DTYPE_Q8_0:
        for (const mc_block_q8_0 *b = src; nb-- > 0; b++, y += 32) {
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(b->d));
            for (int k = 0; k < 4; k++) {
                __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8 * k)));
                _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
            }
        }
        break;
    case MOECL_DTYPE_Q4_0:
        for (const mc_block_q4_0 *b = src; nb-- > 0; b++, y += 32) {
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(b->d));
            const __m256i eight = _mm256_set1_epi32(8);
            for (int k = 0; k < 2; k++) {
                const __m256i q = u8x8(b->qs + 8 * k);
                __m256i lo = _mm256_sub_epi32(_mm256_and_si256(q, m4), eight);
                __m256i hi = _mm256_sub_epi32(_mm256_srli_epi32(q, 4), eight);
                _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(lo)));
                _mm256_storeu_ps(y + 16 + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(hi)));
            }
        }
        break;
    case MOECL_DTYPE_Q4_K:
    case MOECL_DTYPE_Q5_K: {
        const bool five = dt == MOECL_DTYPE_Q5_K;
        const size_t bb = mc_dtype_block_bytes(dt);
        for (const char *p = src; nb-- > 0; p += bb, y += 256) {
            const mc_block_q4_K *b = (const mc_block_q4_K *)p;
            const uint8_t *qs = five ? ((const mc_block_q5_K *)p)->qs : b->qs;
            const uint8_t *qh = five ? ((const mc_block_q5_K *)p)->qh : NULL;
            const float d = _cvtsh_ss(b->d), dmin = _cvtsh_ss(b->dmin);
            for (int s = 0; s < 8; s++) {
                uint8_t sc, m;
                mc_q4k_scale_min(b->scales, s, &sc, &m);
                const __m256 dl = _mm256_set1_ps(d * (float)sc), ml = _mm256_set1_ps(dmin * (float)m);
                const __m128i sh = _mm_cvtsi32_si128(4 * (s & 1)), hs = _mm_cvtsi32_si128(s);
                for (int k = 0; k < 4; k++) {
                    __m256i q = _mm256_and_si256(_mm256_srl_epi32(u8x8(qs + 32 * (s / 2) + 8 * k), sh), m4);
                    if (five) {
                        __m256i hb = _mm256_and_si256(_mm256_srl_epi32(u8x8(qh + 8 * k), hs), _mm256_set1_epi32(1));
                        q = _mm256_or_si256(q, _mm256_slli_epi32(hb, 4));
                    }
                    __m256 prod = _mm256_mul_ps(dl, _mm256_cvtepi32_ps(q));
                    _mm256_storeu_ps(y + 32 * s + 8 * k, _mm256_sub_ps(prod, ml));
                }
            }
        }
        break;
    }
    case MOECL_DTYPE_Q6_K:
        for (const mc_block_q6_K *b = src; nb-- > 0; b++, y += 256) {
            const float d = _cvtsh_ss(b->d);
            for (int p = 0; p < 256; p += 8) {
                const int h = p / 128, r = p % 128;
                __m256i lo = _mm256_and_si256(_mm256_srl_epi32(u8x8(b->ql + 64 * h + r % 64), _mm_cvtsi32_si128(4 * (r / 64))), m4);
                __m256i hi = _mm256_and_si256(_mm256_srl_epi32(u8x8(b->qh + 32 * h + r % 32), _mm_cvtsi32_si128(2 * (r / 32))),
                                              _mm256_set1_epi32(3));
                __m256i q = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32));
                const __m256 ds = _mm256_set1_ps(d * (float)b->scales[p / 16]);
                _mm256_storeu_ps(y + p, _mm256_mul_ps(ds, _mm256_cvtepi32_ps(q)));
            }
        }
        break;
    default: break;
    }
}

#endif /* MC_X86 */

/* nb blocks of quantized type dt at src to float32 under an ISA. */
void mc_deq_isa(int isa, moecl_dtype dt, const void *src, float *dst, int64_t nb) {
#if MC_X86
    if (isa == ISA_AVX512) deq512(dt, src, dst, nb);
    else if (isa == ISA_AVX2) deq256(dt, src, dst, nb);
    else
#endif
        mc_dequantize_row(dt, src, dst, nb * mc_dtype_block(dt));
    (void)isa;
}

static void tile_dot(int isa, int R, const float *tile, int64_t ldt, const float *x, int64_t ldx, int64_t T,
                     int64_t n, float *y, int64_t ldy, bool add) {
#if MC_X86
    if (isa == ISA_AVX512) {
        mc_tile_dot512(R, tile, ldt, x, ldx, T, n, y, ldy, add);
        return;
    }
    if (isa == ISA_AVX2) {
        mc_tile_dot256(R, tile, ldt, x, ldx, T, n, y, ldy, add);
        return;
    }
#endif
#if MC_ARM
    if (isa == ISA_NEON || isa == ISA_FP16) {
        mc_tile_dot_neon(R, tile, ldt, x, ldx, T, n, y, ldy, add);
        return;
    }
#endif
    (void)isa;
    for (int r = 0; r < R; r++)
        for (int64_t t = 0; t < T; t++) {
            float s = dot_scalar(tile + r * ldt, x + t * ldx, n);
            y[t * ldy + r] = (add ? y[t * ldy + r] : 0.0f) + s;
        }
}

/* Rows [r0, r1) of Y for any T, quantized W: groups of 4 rows, a tile of
 * MC_QCHUNK columns of each dequantized at a time and dotted with every
 * row of X. With many tokens the columns go in L2-sized blocks first
 * (fused_col_block), as in the float kernels. */
void mc_fused_quant(int isa, moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T, float *Y,
                    int64_t ldy, int64_t r0, int64_t r1) {
    _Alignas(64) float tile[4 * MC_QCHUNK];
    const int64_t blk = mc_dtype_block(dt);
    const size_t bb = mc_dtype_block_bytes(dt), rb = row_bytes(dt, cols);
#if MC_X86
    if (isa == ISA_AVX512 && T <= 2) {
        /* (MC_QX_COLS > 0: X is taken that many columns at a time) */
        const int64_t xc = MC_QX_COLS > 0 ? MC_QX_COLS : cols;
        for (int64_t k0 = 0; k0 < cols; k0 += xc) {
            const int64_t n = cols - k0 < xc ? cols - k0 : xc;
            rows_dot512(dt, T, (const char *)w + (size_t)(k0 / blk) * bb, rb, n / blk, X + k0, cols, Y, ldy, r0, r1,
                        k0 > 0);
        }
        return;
    }
#endif
    int64_t kc = fused_col_block(T, cols, isa == ISA_AVX2 ? 2 : 4);
    /* whole tiles: the tiles start at the same columns for every T, so each
     * output is the same sum of the same partial dots whatever the batch */
    if (kc < cols) kc = kc < MC_QCHUNK ? MC_QCHUNK : kc / MC_QCHUNK * MC_QCHUNK;
    for (int64_t k0 = 0; k0 < cols; k0 += kc) {
        const int64_t kend = cols - k0 < kc ? cols : k0 + kc;
        for (int64_t r = r0; r < r1;) {
            const int R = r1 - r >= 4 ? 4 : 1;
            for (int64_t c0 = k0; c0 < kend; c0 += MC_QCHUNK) {
                const int64_t n = kend - c0 < MC_QCHUNK ? kend - c0 : MC_QCHUNK;
                for (int i = 0; i < R; i++)
                    mc_deq_isa(isa, dt, (const char *)w + (size_t)(r + i) * rb + (size_t)(c0 / blk) * bb,
                            tile + i * MC_QCHUNK, n / blk);
                tile_dot(isa, R, tile, MC_QCHUNK, X + c0, cols, T, n, Y + r, ldy, c0 > 0);
            }
            r += R;
        }
    }
}
