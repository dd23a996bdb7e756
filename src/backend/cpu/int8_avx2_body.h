/*
 * int8_avx2_body.h - the 256-bit int8 kernels, included by int8_avx2.c once
 * per variant (not a header of its own) with:
 *
 *   QI_TARGET   the target attribute of every function here
 *   QI_VNNI     0: u8 x s8 dots as vpmaddubsw + vpmaddwd (AVX2);
 *               1: VEX vpdpbusd (AVX-VNNI) where that saves an instruction
 *   QI(name)    name with the variant's suffix
 *
 * The arithmetic is int8.c's: per 32-weight piece an integer dot of u8
 * weights with s8 activations (sign moved onto the activations for the
 * signed types), scaled in float32 by d * xd of that piece. vpmaddubsw
 * saturates at 16 bits, never reached here: two products of at most
 * 128 * 127 (Q8_0's |-128|) sum to 32512.
 */

/* Sum of each 4 consecutive u8 w[i] * s8 x[i], as 8 int32. */
QI_TARGET static MC_INLINE __m256i QI(dot)(__m256i w, __m256i x) {
#if QI_VNNI
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
#endif
}

QI_TARGET static MC_INLINE float QI(hsum)(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One 32-weight piece p of the current group, weights u8 in w, against the
 * activations at offset off of each of the TT rows: acc[t] += vs[t][p] *
 * dot. With sgn, w holds s8 weights: their magnitudes are dotted with the
 * activations carrying their signs. With sc16 (Q6_K), the pairs of
 * products are summed weighted by those int16 scales rather than by 1. */
#define QI_PIECE(w, p, off, sgn, sc16)                                                              \
    do {                                                                                            \
        const __m256i wq_ = (w);                                                                    \
        const __m256i wu_ = (sgn) ? _mm256_abs_epi8(wq_) : wq_;                                     \
        _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++) {                                     \
            __m256i xv_ = _mm256_loadu_si256((const __m256i *)(xq[t] + (off)));                     \
            if (sgn) xv_ = _mm256_sign_epi8(xv_, wq_);                                              \
            const __m256i s_ = (sc16) ? _mm256_madd_epi16(_mm256_maddubs_epi16(wu_, xv_), sc16v)     \
                                      : QI(dot)(wu_, xv_);                                          \
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s_), _mm256_broadcast_ss(&vs[t][p]), acc[t]); \
        }                                                                                           \
    } while (0)

/* Y[t0 + t, r] for TT <= 4 rows of a (from t0) and weight row w of nb
 * blocks: every 256-weight group is unpacked once, dotted with each row. */
QI_TARGET static MC_INLINE void QI(row)(moecl_dtype dt, const int TT, const void *w, int64_t nb, const qact *a,
                                        int64_t t0, float *y, int64_t ldy) {
    const __m256i m4 = _mm256_set1_epi8(0xf);
    __m256 acc[4];
    const int8_t *xq[4];
    const float *xd[4], *xds[4];
    _Alignas(32) float vs[4][8]; /* per row of a: d * xd of each piece of the group */
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++) {
        acc[t] = _mm256_setzero_ps();
        xq[t] = a->q + (t0 + t) * a->cols;
        xd[t] = a->d + (t0 + t) * a->nb;
        xds[t] = a->ds + (t0 + t) * a->nb;
    }
    const bool q6 = dt == MOECL_DTYPE_Q6_K, q8 = dt == MOECL_DTYPE_Q8_0;
    const bool k_quant = dt == MOECL_DTYPE_Q4_K || dt == MOECL_DTYPE_Q5_K || q6;
    const int64_t ng = k_quant ? nb : nb / 8; /* 256-weight groups */
    for (int64_t g = 0; g < ng; g++) {
        const int64_t x0 = 256 * g;
        if (q6) {
            const mc_block_q6_K *b = (const mc_block_q6_K *)w + g;
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(b->d));
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) _mm256_store_ps(vs[t], _mm256_mul_ps(d, _mm256_loadu_ps(xd[t] + 8 * g)));
            const __m256i three = _mm256_set1_epi8(3), k32 = _mm256_set1_epi8(32);
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const __m256i l0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
                const __m256i l1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
                const __m256i hb = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
                /* scales[8h .. 8h+7] as int16, the same in both 128-bit lanes */
                const __m256i sc = _mm256_broadcastsi128_si256(
                    _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(b->scales + 8 * h))));
#pragma GCC unroll 2
                for (int j = 0; j < 2; j++) { /* j = 0: weights 0..63 of the half, low nibbles; 1: 64..127, high */
                    const __m256i a0 = j ? _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4) : _mm256_and_si256(l0, m4);
                    const __m256i a1 = j ? _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4) : _mm256_and_si256(l1, m4);
                    const __m256i h0 = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(4 * j)), three);
                    const __m256i h1 = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(4 * j + 2)), three);
                    const __m256i q0 = _mm256_sub_epi8(_mm256_or_si256(a0, _mm256_slli_epi16(h0, 4)), k32);
                    const __m256i q1 = _mm256_sub_epi8(_mm256_or_si256(a1, _mm256_slli_epi16(h1, 4)), k32);
#pragma GCC unroll 2
                    for (int i = 0; i < 2; i++) {
                        /* piece p = 4h + 2j + i: its 16-weight halves use
                         * scales s and s + 1 of the half (s = 4j + 2i): int16
                         * s in the low lane, s + 1 in the high lane */
                        const int s = 4 * j + 2 * i, p = 4 * h + 2 * j + i;
                        const __m256i sel = _mm256_set_m128i(_mm_set1_epi16((short)((2 * s + 3) << 8 | (2 * s + 2))),
                                                             _mm_set1_epi16((short)((2 * s + 1) << 8 | (2 * s))));
                        const __m256i sc16v = _mm256_shuffle_epi8(sc, sel);
                        QI_PIECE(i ? q1 : q0, p, x0 + 32 * p, true, true);
                    }
                }
            }
        } else if (k_quant) {
            const bool five = dt == MOECL_DTYPE_Q5_K;
            const char *p = (const char *)w + (size_t)g * (five ? sizeof(mc_block_q5_K) : sizeof(mc_block_q4_K));
            const mc_block_q4_K *b = (const mc_block_q4_K *)p;
            const uint8_t *qs = five ? ((const mc_block_q5_K *)p)->qs : b->qs;
            uint64_t sc, m;
            q4k_unpack(b->scales, &sc, &m);
            const __m256 dsc = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(b->d)),
                                             _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc))));
            const __m256 dm = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(b->dmin)),
                                            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)m))));
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) {
                _mm256_store_ps(vs[t], _mm256_mul_ps(dsc, _mm256_loadu_ps(xd[t] + 8 * g)));
                /* the minimum: - dmin*m * xd * sum(xq), piece by piece */
                acc[t] = _mm256_fnmadd_ps(dm, _mm256_loadu_ps(xds[t] + 8 * g), acc[t]);
            }
            __m256i hb = five ? _mm256_loadu_si256((const __m256i *)((const mc_block_q5_K *)p)->qh) : _mm256_setzero_si256();
            const __m256i one = _mm256_set1_epi8(1);
            const __m256i sc16v = _mm256_setzero_si256(); /* unused: no int16 scales */
            (void)sc16v;
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) { /* pieces 2k (low nibbles), 2k+1 (high) */
                const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
                __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if (five) {
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 1), one), 4));
                    hb = _mm256_srli_epi16(hb, 2);
                }
                QI_PIECE(lo, 2 * k, x0 + 64 * k, false, false);
                QI_PIECE(hi, 2 * k + 1, x0 + 64 * k + 32, false, false);
            }
        } else {
            /* eight 32-weight blocks; their f16 scales gathered into one vector */
            const size_t bb = q8 ? sizeof(mc_block_q8_0) : sizeof(mc_block_q4_0);
            const char *p = (const char *)w + (size_t)g * 8 * bb;
            uint16_t hs[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) memcpy(&hs[i], p + i * bb, 2);
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)hs));
            const __m256 dw8 = _mm256_mul_ps(dw, _mm256_set1_ps(8.0f));
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) {
                _mm256_store_ps(vs[t], _mm256_mul_ps(dw, _mm256_loadu_ps(xd[t] + 8 * g)));
                /* Q4_0 stores q + 8: - 8 * d * xd * sum(xq) */
                if (!q8) acc[t] = _mm256_fnmadd_ps(dw8, _mm256_loadu_ps(xds[t] + 8 * g), acc[t]);
            }
            const __m256i sc16v = _mm256_setzero_si256(); /* unused: no int16 scales */
            (void)sc16v;
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                const char *qs = p + k * bb + 2;
                if (q8) {
                    QI_PIECE(_mm256_loadu_si256((const __m256i *)qs), k, x0 + 32 * k, true, false);
                } else {
                    const __m128i q = _mm_loadu_si128((const __m128i *)qs);
                    const __m256i wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
                    QI_PIECE(wq, k, x0 + 32 * k, false, false);
                }
            }
        }
    }
    /* Q8_0 / Q4_0 blocks after the last whole group, one piece each: a row
     * of 384 (12 blocks, Qwen-MoE-style expert widths) has 4, a third of
     * the row, which a scalar tail made 7% of a token's time. */
    float corr[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (!k_quant) {
        const size_t bb = q8 ? sizeof(mc_block_q8_0) : sizeof(mc_block_q4_0);
        const __m256i sc16v = _mm256_setzero_si256(); /* unused: no int16 scales */
        (void)sc16v;
        for (int64_t j = nb / 8 * 8; j < nb; j++) {
            const char *blk = (const char *)w + (size_t)j * bb;
            uint16_t h;
            memcpy(&h, blk, 2);
            const float dw = _cvtsh_ss(h);
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) {
                vs[t][0] = dw * xd[t][j];
                if (!q8) corr[t] -= 8.0f * dw * xds[t][j];
            }
            if (q8) {
                QI_PIECE(_mm256_loadu_si256((const __m256i *)(blk + 2)), 0, 32 * j, true, false);
            } else {
                const __m128i q = _mm_loadu_si128((const __m128i *)(blk + 2));
                const __m256i wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
                QI_PIECE(wq, 0, 32 * j, false, false);
            }
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++) y[(t0 + t) * ldy] = QI(hsum)(acc[t]) + corr[t];
}
#undef QI_PIECE

QI_TARGET static MC_INLINE void QI(rows_dt)(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T,
                                            float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t nb = cols / mc_dtype_block(dt);
    const size_t rb = row_bytes(dt, cols);
    for (int64_t r = r0; r < r1; r++) {
        const char *wr = (const char *)w + (size_t)r * rb;
        for (int64_t t0 = 0; t0 < T; t0 += 4) {
            switch (T - t0) {
            case 1: QI(row)(dt, 1, wr, nb, a, t0, Y + r, ldy); break;
            case 2: QI(row)(dt, 2, wr, nb, a, t0, Y + r, ldy); break;
            case 3: QI(row)(dt, 3, wr, nb, a, t0, Y + r, ldy); break;
            default: QI(row)(dt, 4, wr, nb, a, t0, Y + r, ldy); break;
            }
        }
    }
}

QI_TARGET void QI(mc_qint_rows)(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T, float *Y,
                                int64_t ldy, int64_t r0, int64_t r1) {
    switch (dt) {
    case MOECL_DTYPE_Q8_0: QI(rows_dt)(MOECL_DTYPE_Q8_0, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q4_0: QI(rows_dt)(MOECL_DTYPE_Q4_0, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q4_K: QI(rows_dt)(MOECL_DTYPE_Q4_K, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q5_K: QI(rows_dt)(MOECL_DTYPE_Q5_K, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q6_K: QI(rows_dt)(MOECL_DTYPE_Q6_K, w, cols, a, T, Y, ldy, r0, r1); break;
    default: break;
    }
}
