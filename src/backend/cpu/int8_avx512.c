/*
 * int8_avx512.c - quantized weights x int8 activations with AVX-512 VNNI
 * (x86-64 only; see int8.c for the arithmetic).
 */
#include "backend/cpu/kernels_impl.h"

#include <immintrin.h>

/* Lanes 0-7 <- v[2k], lanes 8-15 <- v[2k+1]. */
MC_TVNNI static MC_INLINE __m512 spread_pair(__m256 v, int k) {
    const __m512i idx = _mm512_set_epi32(2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1,
                                         2 * k + 1, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k);
    return _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(v));
}

MC_TVNNI static MC_INLINE __m256 u8x8_ps(uint64_t v) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)v)));
}

/* Y[t0 + t, r] for TT <= 4 rows of a (from t0) and weight row w of nb
 * blocks: every 256-weight group is unpacked once, dotted with each row. */
MC_TVNNI static MC_INLINE void qint_row(moecl_dtype dt, const int TT, const void *w, int64_t nb, const qact *a,
                                        int64_t t0, float *y, int64_t ldy) {
    const __m512i zero = _mm512_setzero_si512();
    const __m256i m4 = _mm256_set1_epi8(0xf);
    __m512 acc[4];
    __m256 accm[4];
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++) {
        acc[t] = _mm512_setzero_ps();
        accm[t] = _mm256_setzero_ps();
    }
    const int8_t *xq[4];
    const float *xd[4], *xds[4];
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++) {
        xq[t] = a->q + (t0 + t) * a->cols;
        xd[t] = a->d + (t0 + t) * a->nb;
        xds[t] = a->ds + (t0 + t) * a->nb;
    }
    const bool q6 = dt == MOECL_DTYPE_Q6_K;
    const bool k_quant = dt == MOECL_DTYPE_Q4_K || dt == MOECL_DTYPE_Q5_K || q6;
    const bool signed_w = dt == MOECL_DTYPE_Q8_0 || q6; /* weights s8: sign moved onto x */
    const int64_t ng = k_quant ? nb : nb / 8; /* 256-weight groups */
    for (int64_t g = 0; g < ng; g++) {
        __m256 v[4];
        __m512i wz[4];
        __m512 scf = _mm512_setzero_ps(); /* Q6_K: d * scales[16] */
        if (q6) {
            const mc_block_q6_K *b = (const mc_block_q6_K *)w + g;
            scf = _mm512_mul_ps(_mm512_set1_ps(_cvtsh_ss(b->d)),
                                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b->scales))));
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) v[t] = _mm256_loadu_ps(xd[t] + 8 * g);
            const __m256i three = _mm256_set1_epi8(3), k32 = _mm256_set1_epi8(32);
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const __m256i l0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
                const __m256i l1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
                const __m256i hb = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
#pragma GCC unroll 2
                for (int j = 0; j < 2; j++) { /* j = 0: weights 0..63 of the half, low nibbles; 1: 64..127, high */
                    const __m256i a0 = j ? _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4) : _mm256_and_si256(l0, m4);
                    const __m256i a1 = j ? _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4) : _mm256_and_si256(l1, m4);
                    const __m256i h0 = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(4 * j)), three);
                    const __m256i h1 = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(4 * j + 2)), three);
                    const __m256i q0 = _mm256_sub_epi8(_mm256_or_si256(a0, _mm256_slli_epi16(h0, 4)), k32);
                    const __m256i q1 = _mm256_sub_epi8(_mm256_or_si256(a1, _mm256_slli_epi16(h1, 4)), k32);
                    wz[2 * h + j] = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
                }
            }
        } else if (k_quant) {
            const bool five = dt == MOECL_DTYPE_Q5_K;
            const char *p = (const char *)w + (size_t)g * (five ? sizeof(mc_block_q5_K) : sizeof(mc_block_q4_K));
            const mc_block_q4_K *b = (const mc_block_q4_K *)p;
            const uint8_t *qs = five ? ((const mc_block_q5_K *)p)->qs : b->qs;
            uint64_t sc, m;
            q4k_unpack(b->scales, &sc, &m);
            const __m256 dsc = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(b->d)), u8x8_ps(sc));
            const __m256 dm = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(b->dmin)), u8x8_ps(m));
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) {
                v[t] = _mm256_mul_ps(dsc, _mm256_loadu_ps(xd[t] + 8 * g));
                accm[t] = _mm256_fmadd_ps(dm, _mm256_loadu_ps(xds[t] + 8 * g), accm[t]);
            }
            __m256i hb = five ? _mm256_loadu_si256((const __m256i *)((const mc_block_q5_K *)p)->qh) : _mm256_setzero_si256();
            const __m256i one = _mm256_set1_epi8(1);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) { /* pieces 2k (low nibbles), 2k+1 (high) */
                const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
                __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if (five) {
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 1), one), 4));
                    hb = _mm256_srli_epi16(hb, 2);
                }
                wz[k] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            }
        } else {
            /* eight 32-weight blocks; their f16 scales gathered into one vector */
            const bool q8 = dt == MOECL_DTYPE_Q8_0;
            const size_t bb = q8 ? sizeof(mc_block_q8_0) : sizeof(mc_block_q4_0);
            const char *p = (const char *)w + (size_t)g * 8 * bb;
            uint16_t h[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) memcpy(&h[i], p + i * bb, 2);
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) {
                v[t] = _mm256_mul_ps(dw, _mm256_loadu_ps(xd[t] + 8 * g));
                if (!q8) accm[t] = _mm256_fmadd_ps(dw, _mm256_loadu_ps(xds[t] + 8 * g), accm[t]);
            }
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                const char *b0 = p + 2 * k * bb + 2, *b1 = b0 + bb;
                if (q8) {
                    wz[k] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)b0)),
                                               _mm256_loadu_si256((const __m256i *)b1), 1);
                } else {
                    const __m256i q = _mm256_loadu2_m128i((const __m128i *)b1, (const __m128i *)b0);
                    const __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    /* [lo0 lo1 hi0 hi1] -> [lo0 hi0 lo1 hi1] (128-bit lanes) */
                    wz[k] = _mm512_shuffle_i64x2(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
                                                 _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
                                                 _MM_SHUFFLE(3, 1, 2, 0));
                }
            }
        }
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            __m512i wu = wz[k];
            __mmask64 neg = 0;
            /* Q6_K: lane i of the dot covers weights 64k + 4i.., scale 4k + i/4 */
            const __m512 s6 = q6 ? _mm512_permutexvar_ps(_mm512_set_epi32(4 * k + 3, 4 * k + 3, 4 * k + 3, 4 * k + 3,
                                                                          4 * k + 2, 4 * k + 2, 4 * k + 2, 4 * k + 2,
                                                                          4 * k + 1, 4 * k + 1, 4 * k + 1, 4 * k + 1,
                                                                          4 * k, 4 * k, 4 * k, 4 * k),
                                                         scf)
                                 : scf;
            if (signed_w) {
                neg = _mm512_movepi8_mask(wu);
                wu = _mm512_abs_epi8(wu);
            }
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) {
                __m512i xv = _mm512_loadu_si512((const void *)(xq[t] + 256 * g + 64 * k));
                if (signed_w) xv = _mm512_mask_sub_epi8(xv, neg, zero, xv);
                const __m512i p = _mm512_dpbusd_epi32(zero, wu, xv);
                __m512 sv = spread_pair(v[t], k);
                if (q6) sv = _mm512_mul_ps(sv, s6);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sv, acc[t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++) {
        __m128 m = _mm_add_ps(_mm256_castps256_ps128(accm[t]), _mm256_extractf128_ps(accm[t], 1));
        m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        m = _mm_add_ss(m, _mm_movehdup_ps(m));
        float s = _mm512_reduce_add_ps(acc[t]) - (dt == MOECL_DTYPE_Q4_0 ? 8.0f : 1.0f) * _mm_cvtss_f32(m);
        if (!k_quant && nb % 8) s += mc_qint_tail(dt, w, nb / 8 * 8, nb, a, t0 + t);
        y[(t0 + t) * ldy] = s;
    }
}

MC_TVNNI static MC_INLINE void qint_rows_dt(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T,
                                            float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t nb = cols / mc_dtype_block(dt);
    const size_t rb = row_bytes(dt, cols);
    for (int64_t r = r0; r < r1; r++) {
        const char *wr = (const char *)w + (size_t)r * rb;
        for (int64_t t0 = 0; t0 < T; t0 += 4) {
            switch (T - t0) {
            case 1: qint_row(dt, 1, wr, nb, a, t0, Y + r, ldy); break;
            case 2: qint_row(dt, 2, wr, nb, a, t0, Y + r, ldy); break;
            case 3: qint_row(dt, 3, wr, nb, a, t0, Y + r, ldy); break;
            default: qint_row(dt, 4, wr, nb, a, t0, Y + r, ldy); break;
            }
        }
    }
}

MC_TVNNI void mc_qint_rows_vnni512(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T,
                                   float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    switch (dt) {
    case MOECL_DTYPE_Q8_0: qint_rows_dt(MOECL_DTYPE_Q8_0, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q4_0: qint_rows_dt(MOECL_DTYPE_Q4_0, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q4_K: qint_rows_dt(MOECL_DTYPE_Q4_K, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q5_K: qint_rows_dt(MOECL_DTYPE_Q5_K, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q6_K: qint_rows_dt(MOECL_DTYPE_Q6_K, w, cols, a, T, Y, ldy, r0, r1); break;
    default: break;
    }
}
