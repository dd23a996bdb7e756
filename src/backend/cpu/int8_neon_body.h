/*
 * int8_neon_body.h - the NEON int8 kernels, included by int8_neon.c and
 * int8_dotprod.c (not a header of its own) with:
 *
 *   QI_SDOT     0: s8 x s8 dots as smull + sadalp (every ARMv8-A);
 *               1: sdot (ARMv8.2-A dot product extension, ASIMDDP)
 *   QI(name)    name with the variant's suffix
 *
 * The arithmetic is int8.c's, with signed weights throughout (NEON's dots
 * are s8 x s8, so no sign is moved and Q4_0 needs no -8 * sum(xq) term):
 * per 32-weight piece an int32 dot of the weights, as signed bytes, with
 * the activations' bytes, scaled in float32 by d * xd of that piece; Q4_K /
 * Q5_K subtract dmin * m * xd * sum(xq) from the precomputed sums; Q6_K
 * weighs its two 16-weight halves by their int8 scales in int32 first.
 * smull's int16 products cannot overflow: |q| <= 128, |xq| <= 127.
 *
 *   Q4_0 / Q4_K block, 32 weights of a piece:   qs[i] & 0xf -> weight i,
 *                                               qs[i] >> 4  -> weight i + 16 (Q4_0)
 *                                                              or the next piece (Q4_K)
 */

/* acc + the sums of each 4 consecutive products w[i] * x[i] (16 bytes). */
static MC_INLINE int32x4_t QI(dot16)(int32x4_t acc, int8x16_t w, int8x16_t x) {
#if QI_SDOT
    return vdotq_s32(acc, w, x);
#else
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w), vget_low_s8(x)));
    return vpadalq_s16(acc, vmull_high_s8(w, x));
#endif
}

/* One 32-weight piece (w0: weights 0..15, w1: 16..31) against the
 * activations at offset off of each of the TT rows: acc[t] += sc[t] * dot. */
#define QI_PIECE(w0, w1, off, sc)                                                                    \
    do {                                                                                             \
        _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++) {                                      \
            int32x4_t d_ = QI(dot16)(vdupq_n_s32(0), (w0), vld1q_s8(xq[t] + (off)));                 \
            d_ = QI(dot16)(d_, (w1), vld1q_s8(xq[t] + (off) + 16));                                  \
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(d_), (sc)[t]);                                \
        }                                                                                            \
    } while (0)

/* Y[t0 + t, r] for TT <= 4 rows of a (from t0) and weight row w of nb
 * blocks: every block is unpacked once, dotted with each row. */
static MC_INLINE void QI(row)(moecl_dtype dt, const int TT, const void *w, int64_t nb, const qact *a, int64_t t0,
                              float *y, int64_t ldy) {
    const uint8x16_t m4 = vdupq_n_u8(0xf);
    float32x4_t acc[4];
    float mins[4]; /* the K-quants' minimum terms, summed apart */
    const int8_t *xq[4];
    const float *xd[4], *xds[4];
    float sc[4];
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++) {
        acc[t] = vdupq_n_f32(0.0f);
        mins[t] = 0.0f;
        xq[t] = a->q + (t0 + t) * a->cols;
        xd[t] = a->d + (t0 + t) * a->nb;
        xds[t] = a->ds + (t0 + t) * a->nb;
    }
    switch (dt) {
    case MOECL_DTYPE_Q8_0:
        for (int64_t j = 0; j < nb; j++) {
            const mc_block_q8_0 *b = (const mc_block_q8_0 *)w + j;
            const float d = mc_f16_to_f32(b->d);
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) sc[t] = d * xd[t][j];
            QI_PIECE(vld1q_s8(b->qs), vld1q_s8(b->qs + 16), 32 * j, sc);
        }
        break;
    case MOECL_DTYPE_Q4_0:
        for (int64_t j = 0; j < nb; j++) {
            const mc_block_q4_0 *b = (const mc_block_q4_0 *)w + j;
            const float d = mc_f16_to_f32(b->d);
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) sc[t] = d * xd[t][j];
            const uint8x16_t q = vld1q_u8(b->qs);
            const int8x16_t eight = vdupq_n_s8(8);
            const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), eight);
            const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), eight);
            QI_PIECE(lo, hi, 32 * j, sc);
        }
        break;
    case MOECL_DTYPE_Q4_K:
    case MOECL_DTYPE_Q5_K: {
        const bool five = dt == MOECL_DTYPE_Q5_K;
        const size_t bb = five ? sizeof(mc_block_q5_K) : sizeof(mc_block_q4_K);
        for (int64_t g = 0; g < nb; g++) {
            /* Q4_K and Q5_K share d, dmin, scales; qs and qh are where they differ */
            const char *p = (const char *)w + (size_t)g * bb;
            const mc_block_q4_K *b = (const mc_block_q4_K *)p;
            const uint8_t *qs = five ? ((const mc_block_q5_K *)p)->qs : b->qs;
            const float d = mc_f16_to_f32(b->d), dmin = mc_f16_to_f32(b->dmin);
            uint64_t scb, mb;
            q4k_unpack(b->scales, &scb, &mb);
            uint8x16_t h0 = vdupq_n_u8(0), h1 = vdupq_n_u8(0);
            if (five) {
                h0 = vld1q_u8(((const mc_block_q5_K *)p)->qh);
                h1 = vld1q_u8(((const mc_block_q5_K *)p)->qh + 16);
            }
            const uint8x16_t one = vdupq_n_u8(1);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) { /* pieces 2k (low nibbles), 2k+1 (high) */
                const uint8x16_t q0 = vld1q_u8(qs + 32 * k), q1 = vld1q_u8(qs + 32 * k + 16);
                uint8x16_t l0 = vandq_u8(q0, m4), l1 = vandq_u8(q1, m4);
                uint8x16_t u0 = vshrq_n_u8(q0, 4), u1 = vshrq_n_u8(q1, 4);
                if (five) { /* bit 2k of qh[i]: weight i of piece 2k; bit 2k + 1: of piece 2k + 1 */
                    l0 = vorrq_u8(l0, vshlq_n_u8(vandq_u8(h0, one), 4));
                    l1 = vorrq_u8(l1, vshlq_n_u8(vandq_u8(h1, one), 4));
                    u0 = vorrq_u8(u0, vshlq_n_u8(vandq_u8(vshrq_n_u8(h0, 1), one), 4));
                    u1 = vorrq_u8(u1, vshlq_n_u8(vandq_u8(vshrq_n_u8(h1, 1), one), 4));
                    h0 = vshrq_n_u8(h0, 2);
                    h1 = vshrq_n_u8(h1, 2);
                }
#pragma GCC unroll 2
                for (int i = 0; i < 2; i++) {
                    const int pc = 2 * k + i; /* the piece */
                    const float dsc = d * (float)(uint8_t)(scb >> (8 * pc)), dm = dmin * (float)(uint8_t)(mb >> (8 * pc));
#pragma GCC unroll 4
                    for (int t = 0; t < TT; t++) {
                        sc[t] = dsc * xd[t][8 * g + pc];
                        mins[t] += dm * xds[t][8 * g + pc];
                    }
                    if (i == 0) QI_PIECE(vreinterpretq_s8_u8(l0), vreinterpretq_s8_u8(l1), 256 * g + 32 * pc, sc);
                    else QI_PIECE(vreinterpretq_s8_u8(u0), vreinterpretq_s8_u8(u1), 256 * g + 32 * pc, sc);
                }
            }
        }
        break;
    }
    case MOECL_DTYPE_Q6_K:
        for (int64_t g = 0; g < nb; g++) {
            const mc_block_q6_K *b = (const mc_block_q6_K *)w + g;
            const float d = mc_f16_to_f32(b->d);
            const uint8x16_t three = vdupq_n_u8(3);
            const int8x16_t k32 = vdupq_n_s8(32);
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) { /* 128 weights: ql[64h ..], qh[32h ..], scales[8h ..] */
                const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
                const uint8x16_t qh0 = vld1q_u8(qh), qh1 = vld1q_u8(qh + 16);
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
                    /* piece i of the half: low (i = 0, 1) or high (2, 3) nibbles of
                     * ql[32 (i & 1) ..], bits 2i, 2i + 1 of qh; scales 2i, 2i + 1 */
                    const uint8x16_t a0 = vld1q_u8(ql + 32 * (i & 1)), a1 = vld1q_u8(ql + 32 * (i & 1) + 16);
                    const uint8x16_t n0 = i < 2 ? vandq_u8(a0, m4) : vshrq_n_u8(a0, 4);
                    const uint8x16_t n1 = i < 2 ? vandq_u8(a1, m4) : vshrq_n_u8(a1, 4);
                    const int8x16_t sh = vdupq_n_s8((int8_t)(-2 * i));
                    const uint8x16_t b0 = vandq_u8(vshlq_u8(qh0, sh), three), b1 = vandq_u8(vshlq_u8(qh1, sh), three);
                    const int8x16_t w0 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(n0, vshlq_n_u8(b0, 4))), k32);
                    const int8x16_t w1 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(n1, vshlq_n_u8(b1, 4))), k32);
                    const int32_t s0 = b->scales[8 * h + 2 * i], s1 = b->scales[8 * h + 2 * i + 1];
                    const int64_t off = 256 * g + 128 * h + 32 * i;
#pragma GCC unroll 4
                    for (int t = 0; t < TT; t++) {
                        const int32x4_t d0 = QI(dot16)(vdupq_n_s32(0), w0, vld1q_s8(xq[t] + off));
                        const int32x4_t d1 = QI(dot16)(vdupq_n_s32(0), w1, vld1q_s8(xq[t] + off + 16));
                        const int32x4_t s = vmlaq_n_s32(vmulq_n_s32(d0, s0), d1, s1);
                        acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), d * xd[t][8 * g + 4 * h + i]);
                    }
                }
            }
        }
        break;
    default: break;
    }
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++) y[(t0 + t) * ldy] = vaddvq_f32(acc[t]) - mins[t];
}
#undef QI_PIECE

static MC_INLINE void QI(rows_dt)(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T, float *Y,
                                  int64_t ldy, int64_t r0, int64_t r1) {
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

void QI(mc_qint_rows)(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T, float *Y, int64_t ldy,
                      int64_t r0, int64_t r1) {
    switch (dt) {
    case MOECL_DTYPE_Q8_0: QI(rows_dt)(MOECL_DTYPE_Q8_0, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q4_0: QI(rows_dt)(MOECL_DTYPE_Q4_0, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q4_K: QI(rows_dt)(MOECL_DTYPE_Q4_K, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q5_K: QI(rows_dt)(MOECL_DTYPE_Q5_K, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q6_K: QI(rows_dt)(MOECL_DTYPE_Q6_K, w, cols, a, T, Y, ldy, r0, r1); break;
    default: break;
    }
}
