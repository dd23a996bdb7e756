/*
 * quant.c - GGUF's quantized block formats: reference (scalar) dequantization
 * and quantization. The layouts are drawn next to the code that reads them.
 *
 * Dequantization is bit-exact with gguf.quants.dequantize (PyPI gguf 0.19):
 * every product is formed in float32 in the same order as there, and nothing
 * is fused (the build is ISO C, so GCC does not contract a*b-c into an FMA;
 * the subtractions are also kept as separate statements for clang).
 *
 * Quantization: Q8_0 and Q4_0 are bit-exact with gguf.quants.quantize. The
 * K-quants (which gguf.quants cannot quantize) search each sub-block's scale
 * (and min) the way llama.cpp's reference quantizers do: a handful of
 * candidate scales around max/nmax, each followed by a weighted least-squares
 * refit of scale and min to the integer levels it chose, the best kept; then
 * the sub-block scales are themselves quantized to 6 (Q4_K, Q5_K) or 8 (Q6_K)
 * bits and the levels chosen again against the rounded scales.
 */
#include "quant/quant.h"

#include <math.h>
#include <string.h>

static inline float f16(uint16_t h) { return mc_f16_to_f32(h); }

/* ======================================================================== */
/* Dequantization                                                           */
/* ======================================================================== */

/*
 * Q8_0, 34 bytes / 32 weights:
 *   +------+---------------------------+
 *   | d    | qs[0..31]  int8           |     w[j] = d * qs[j]
 *   +------+---------------------------+
 */
static void deq_q8_0(const mc_block_q8_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += MC_QK8_0) {
        const float d = f16(b[i].d);
        for (int j = 0; j < MC_QK8_0; j++) y[j] = (float)b[i].qs[j] * d;
    }
}

/*
 * Q4_0, 18 bytes / 32 weights:
 *   +------+---------------------------+
 *   | d    | qs[0..15]: hi|lo nibbles  |     w[j]      = d * (lo(qs[j]) - 8)
 *   +------+---------------------------+     w[j + 16] = d * (hi(qs[j]) - 8)
 */
static void deq_q4_0(const mc_block_q4_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += MC_QK4_0) {
        const float d = f16(b[i].d);
        for (int j = 0; j < MC_QK4_0 / 2; j++) {
            y[j] = d * (float)((b[i].qs[j] & 0xf) - 8);
            y[j + 16] = d * (float)((b[i].qs[j] >> 4) - 8);
        }
    }
}

/* The 12 scale bytes of Q4_K and Q5_K: see mc_q4k_scale_min in quant.h. */
static void pack_q4k_scales(const uint8_t ls[8], const uint8_t lm[8], uint8_t s[MC_K_SCALE_SIZE]) {
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(ls[j] | ((ls[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)(lm[j] | ((lm[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((ls[j + 4] & 0xf) | ((lm[j + 4] & 0xf) << 4));
    }
}

/*
 * Q4_K, 144 bytes / 256 weights = 8 sub-blocks of 32:
 *   +----+------+------------+----------------------------------------+
 *   | d  | dmin | scales[12] | qs[0..127]                             |
 *   +----+------+------------+----------------------------------------+
 *   qs[32k .. 32k+31]: low nibbles are sub-block 2k, high nibbles 2k+1.
 *   w = (d * sc[s]) * q - (dmin * m[s])
 */
static void deq_q4_K(const mc_block_q4_K *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = f16(b[i].d), dmin = f16(b[i].dmin);
        for (int s = 0; s < 8; s++, y += 32) {
            uint8_t sc, m;
            mc_q4k_scale_min(b[i].scales, s, &sc, &m);
            const float dl = d * (float)sc, ml = dmin * (float)m;
            const uint8_t *q = b[i].qs + 32 * (s / 2);
            const int sh = 4 * (s % 2);
            for (int l = 0; l < 32; l++) {
                const float p = dl * (float)((q[l] >> sh) & 0xf);
                y[l] = p - ml;
            }
        }
    }
}

/*
 * Q5_K, 176 bytes / 256 weights: as Q4_K, with a fifth bit per weight:
 *   +----+------+------------+---------+------------+
 *   | d  | dmin | scales[12] | qh[32]  | qs[128]    |
 *   +----+------+------------+---------+------------+
 *   q = nibble (as Q4_K) | ((qh[l] >> s) & 1) << 4   for weight l of sub-block s
 */
static void deq_q5_K(const mc_block_q5_K *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = f16(b[i].d), dmin = f16(b[i].dmin);
        for (int s = 0; s < 8; s++, y += 32) {
            uint8_t sc, m;
            mc_q4k_scale_min(b[i].scales, s, &sc, &m);
            const float dl = d * (float)sc, ml = dmin * (float)m;
            const uint8_t *q = b[i].qs + 32 * (s / 2);
            const int sh = 4 * (s % 2);
            for (int l = 0; l < 32; l++) {
                const int v = ((q[l] >> sh) & 0xf) | (((b[i].qh[l] >> s) & 1) << 4);
                const float p = dl * (float)v;
                y[l] = p - ml;
            }
        }
    }
}

/*
 * Q6_K, 210 bytes / 256 weights = 2 halves of 128, 16 sub-blocks of 16:
 *   +---------------+-------------+--------------------+---+
 *   | ql[128]       | qh[64]      | scales[16] (int8)  | d |
 *   +---------------+-------------+--------------------+---+
 *   weight r of half h (r < 128):
 *     low 4 bits   (ql[64h + r % 64] >> 4 * (r / 64)) & 15
 *     high 2 bits  (qh[32h + r % 32] >> 2 * (r / 32)) & 3
 *   w = (d * scales[p / 16]) * (q - 32)   for p = 128h + r
 */
static void deq_q6_K(const mc_block_q6_K *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += MC_QK_K) {
        const float d = f16(b[i].d);
        for (int p = 0; p < MC_QK_K; p++) {
            const int h = p / 128, r = p % 128;
            const int lo = (b[i].ql[64 * h + r % 64] >> (4 * (r / 64))) & 0xf;
            const int hi = (b[i].qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
            const float ds = d * (float)b[i].scales[p / 16];
            y[p] = ds * (float)((lo | (hi << 4)) - 32);
        }
    }
}

void mc_dequantize_row(moecl_dtype t, const void *src, float *dst, int64_t n) {
    const int64_t blk = mc_dtype_block(t);
    if (n <= 0 || blk <= 0) return;
    const int64_t nb = n / blk;
    switch (t) {
    case MOECL_DTYPE_F32: memmove(dst, src, (size_t)n * sizeof(float)); break;
    case MOECL_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = f16(((const uint16_t *)src)[i]);
        break;
    case MOECL_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = mc_bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    case MOECL_DTYPE_Q8_0: deq_q8_0(src, dst, nb); break;
    case MOECL_DTYPE_Q4_0: deq_q4_0(src, dst, nb); break;
    case MOECL_DTYPE_Q4_K: deq_q4_K(src, dst, nb); break;
    case MOECL_DTYPE_Q5_K: deq_q5_K(src, dst, nb); break;
    case MOECL_DTYPE_Q6_K: deq_q6_K(src, dst, nb); break;
    default: break;
    }
}

/* ======================================================================== */
/* Quantization: Q8_0, Q4_0 (as gguf.quants)                                */
/* ======================================================================== */

/* numpy's np_roundf in gguf.quants: half away from zero. */
static inline int round_away(float v) { return (int)roundf(v); }

static void quant_q8_0(const float *x, mc_block_q8_0 *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += MC_QK8_0) {
        float amax = 0;
        for (int j = 0; j < MC_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = mc_f32_to_f16(d);
        for (int j = 0; j < MC_QK8_0; j++) b[i].qs[j] = (int8_t)round_away(x[j] * id);
    }
}

static void quant_q4_0(const float *x, mc_block_q4_0 *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += MC_QK4_0) {
        float amax = fabsf(x[0]), max = x[0]; /* the first element of largest magnitude, signed */
        for (int j = 1; j < MC_QK4_0; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        const float d = max / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = mc_f32_to_f16(d);
        uint8_t q[MC_QK4_0];
        for (int j = 0; j < MC_QK4_0; j++) {
            const float v = x[j] * id;
            const float u = truncf(v + 8.5f);
            q[j] = (uint8_t)(u > 15.0f ? 15 : u < 0.0f ? 0 : (int)u);
        }
        for (int j = 0; j < MC_QK4_0 / 2; j++) b[i].qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
    }
}

/* ======================================================================== */
/* Quantization: K-quants                                                   */
/* ======================================================================== */

static inline int nearest(float v) { return (int)lrintf(v); }
static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Levels of n weights against x ~ s * l + m (s > 0), clamped to [0, nmax],
 * and the weighted least-squares (s, m) for those levels, m <= 0; returns
 * the weighted squared error of that refit, or INFINITY if the levels do not
 * determine it (all equal). sw, swx: sum w, sum w x. */
static float refit(int n, int nmax, const float *x, const float *w, float sw, float swx, float is, float off,
                   uint8_t *Lc, float *s_out, float *m_out) {
    float sl = 0, sl2 = 0, sxl = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest(is * (x[i] - off)), 0, nmax);
        Lc[i] = (uint8_t)l;
        sl += w[i] * (float)l;
        sl2 += w[i] * (float)(l * l);
        sxl += w[i] * (float)l * x[i];
    }
    const float D = sw * sl2 - sl * sl;
    if (D <= 0) return INFINITY;
    /* least squares for x ~ s*l + m over (s, m) */
    float s = (sw * sxl - swx * sl) / D, m = (sl2 * swx - sl * sxl) / D;
    if (m > 0) { /* the min must not be positive: refit the scale alone */
        m = 0;
        s = sl2 > 0 ? sxl / sl2 : 0;
    }
    float err = 0;
    for (int i = 0; i < n; i++) {
        const float e = s * Lc[i] + m - x[i];
        err += w[i] * e * e;
    }
    *s_out = s;
    *m_out = m;
    return err;
}

/*
 * One sub-block of n weights x to levels L[i] in [0, nmax] with
 * x ~ scale * L - min (min >= 0), minimising sum w (scale*L - min - x)^2.
 * Candidates: iscale = (nmax + rmin + rdelta*k) / (max - m), k = 0..nstep,
 * levels nearest(iscale * (x - m)); each candidate's levels are refit by
 * least squares (scale and min in closed form), and the refit with the
 * smallest error is kept. m starts at the sub-block's minimum and follows
 * the best refit so far: a fit's min is usually above the raw minimum (the
 * lowest weight is clamped to level 0 at a small cost), and the next
 * candidates then spread the levels over the range that fit uses (llama.cpp's
 * make_qkx2_quants does the same). Last, the best fit is polished by
 * alternating levels and refit while that lowers the error. Returns the
 * scale; *the_min gets min.
 */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                           float rmin, float rdelta, int nstep) {
    float lo = x[0], hi = x[0], sw = 0, swx = 0;
    for (int i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
        sw += w[i];
        swx += w[i] * x[i];
    }
    if (lo > 0) lo = 0; /* the min only ever lowers the levels */
    if (hi <= lo) {
        memset(L, 0, (size_t)n);
        *the_min = -lo;
        return 0;
    }
    float iscale = (float)nmax / (hi - lo), scale = 1 / iscale, min = lo;
    float best = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(nearest(iscale * (x[i] - lo)), 0, nmax);
        const float e = scale * L[i] + lo - x[i];
        best += w[i] * e * e;
    }
    uint8_t Lc[MC_QK_K];
    for (int k = 0; k <= nstep; k++) {
        if (!(hi > min)) break;
        const float is = (rmin + rdelta * (float)k + (float)nmax) / (hi - min);
        float s, m;
        const float err = refit(n, nmax, x, w, sw, swx, is, min, Lc, &s, &m);
        if (err < best) {
            best = err;
            memcpy(L, Lc, (size_t)n);
            scale = s;
            min = m;
        }
    }
    for (int it = 0; it < 8 && scale > 0; it++) {
        float s, m;
        const float err = refit(n, nmax, x, w, sw, swx, 1 / scale, min, Lc, &s, &m);
        if (!(err < best)) break;
        best = err;
        memcpy(L, Lc, (size_t)n);
        scale = s;
        min = m;
    }
    *the_min = -min;
    return scale;
}

/* Q4_K (nmax 15) and Q5_K (nmax 31): sub-block scales/mins by fit_scale_min
 * weighted by rms + |x| (large weights matter more), then those quantized to
 * 6 bits against d = max scale / 63, dmin = max min / 63. Fills q[256] with
 * the final levels, d/dmin/scales of the block. */
static void quant_k_super(const float *x, int nmax, float rmin, int nstep, uint16_t *d_out, uint16_t *dmin_out,
                          uint8_t scales[MC_K_SCALE_SIZE], uint8_t q[MC_QK_K]) {
    float sc[8], mn[8], w[32];
    float max_sc = 0, max_mn = 0;
    for (int s = 0; s < 8; s++) {
        const float *xs = x + 32 * s;
        float ss = 0;
        for (int l = 0; l < 32; l++) ss += xs[l] * xs[l];
        const float av = sqrtf(ss / 32);
        for (int l = 0; l < 32; l++) w[l] = av + fabsf(xs[l]);
        sc[s] = fit_scale_min(32, nmax, xs, w, q + 32 * s, &mn[s], rmin, 0.1f, nstep);
        max_sc = fmaxf(max_sc, sc[s]);
        max_mn = fmaxf(max_mn, mn[s]);
    }
    const float isc = max_sc > 0 ? 63.0f / max_sc : 0, imn = max_mn > 0 ? 63.0f / max_mn : 0;
    uint8_t ls[8], lm[8];
    for (int s = 0; s < 8; s++) {
        ls[s] = (uint8_t)clampi(nearest(isc * sc[s]), 0, 63);
        lm[s] = (uint8_t)clampi(nearest(imn * mn[s]), 0, 63);
    }
    pack_q4k_scales(ls, lm, scales);
    *d_out = mc_f32_to_f16(max_sc / 63.0f);
    *dmin_out = mc_f32_to_f16(max_mn / 63.0f);
    /* Levels again, against the scales as they will be decoded. */
    const float d = f16(*d_out), dmin = f16(*dmin_out);
    for (int s = 0; s < 8; s++) {
        const float dl = d * (float)ls[s], ml = dmin * (float)lm[s];
        if (dl == 0) continue; /* keep the fit's levels; they decode to -ml anyway */
        for (int l = 0; l < 32; l++) q[32 * s + l] = (uint8_t)clampi(nearest((x[32 * s + l] + ml) / dl), 0, nmax);
    }
}

static void quant_q4_K(const float *x, mc_block_q4_K *b, int64_t nb) {
    uint8_t q[MC_QK_K];
    for (int64_t i = 0; i < nb; i++, x += MC_QK_K) {
        quant_k_super(x, 15, -1.0f, 20, &b[i].d, &b[i].dmin, b[i].scales, q);
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++)
                b[i].qs[32 * k + l] = (uint8_t)(q[64 * k + l] | (q[64 * k + 32 + l] << 4));
    }
}

static void quant_q5_K(const float *x, mc_block_q5_K *b, int64_t nb) {
    uint8_t q[MC_QK_K];
    for (int64_t i = 0; i < nb; i++, x += MC_QK_K) {
        quant_k_super(x, 31, -0.5f, 15, &b[i].d, &b[i].dmin, b[i].scales, q);
        memset(b[i].qh, 0, sizeof b[i].qh);
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++)
                b[i].qs[32 * k + l] = (uint8_t)((q[64 * k + l] & 0xf) | ((q[64 * k + 32 + l] & 0xf) << 4));
        for (int s = 0; s < 8; s++)
            for (int l = 0; l < 32; l++) b[i].qh[l] |= (uint8_t)(((q[32 * s + l] >> 4) & 1) << s);
    }
}

/*
 * A symmetric sub-block of n weights to levels in [-nmax, nmax-1] with
 * x ~ scale * L, weighted by x^2. The candidate iscales are (nmax + 0.1k)/max
 * for k = -9..9 (max: the signed value of largest magnitude, so that level
 * -nmax, which has no positive twin, goes to it); each candidate's scale is
 * refit by least squares and kept if it explains more of x. L gets L + nmax.
 */
static float fit_scale_sym(int n, int nmax, const float *x, uint8_t *L) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    if (amax == 0) {
        for (int i = 0; i < n; i++) L[i] = (uint8_t)nmax;
        return 0;
    }
    float best_s = 0, best_sxl = 0, best_sl2 = 1; /* score sxl^2 / sl2: the variance explained */
    bool have = false;
    for (int k = -9; k <= 9; k++) {
        const float is = -((float)nmax + 0.1f * (float)k) / max;
        float sxl = 0, sl2 = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest(is * x[i]), -nmax, nmax - 1);
            const float w = x[i] * x[i];
            sxl += w * x[i] * (float)l;
            sl2 += w * (float)(l * l);
        }
        if (sl2 <= 0) continue;
        if (!have || sxl * sxl * best_sl2 > best_sxl * best_sxl * sl2) {
            have = true;
            best_sxl = sxl;
            best_sl2 = sl2;
            best_s = sxl / sl2;
            for (int i = 0; i < n; i++) L[i] = (uint8_t)(clampi(nearest(is * x[i]), -nmax, nmax - 1) + nmax);
        }
    }
    return best_s;
}

static void quant_q6_K(const float *x, mc_block_q6_K *b, int64_t nb) {
    uint8_t q[MC_QK_K];
    for (int64_t i = 0; i < nb; i++, x += MC_QK_K) {
        float sc[16], amax = 0, max = 0;
        for (int s = 0; s < 16; s++) {
            sc[s] = fit_scale_sym(16, 32, x + 16 * s, q + 16 * s);
            if (fabsf(sc[s]) > amax) {
                amax = fabsf(sc[s]);
                max = sc[s];
            }
        }
        memset(b[i].ql, 0, sizeof b[i].ql);
        memset(b[i].qh, 0, sizeof b[i].qh);
        if (amax == 0) {
            memset(b[i].scales, 0, sizeof b[i].scales);
            b[i].d = 0;
            for (int p = 0; p < MC_QK_K; p++) q[p] = 32;
        } else {
            /* scales to int8 with the largest at -128 (as max/nmax above) */
            const float is = -128.0f / max;
            b[i].d = mc_f32_to_f16(1 / is);
            const float d = f16(b[i].d);
            for (int s = 0; s < 16; s++) {
                const int ls = clampi(nearest(is * sc[s]), -128, 127);
                b[i].scales[s] = (int8_t)ls;
                const float ds = d * (float)ls;
                if (ds == 0) {
                    for (int l = 0; l < 16; l++) q[16 * s + l] = 32;
                    continue;
                }
                for (int l = 0; l < 16; l++)
                    q[16 * s + l] = (uint8_t)(clampi(nearest(x[16 * s + l] / ds), -32, 31) + 32);
            }
        }
        for (int p = 0; p < MC_QK_K; p++) {
            const int h = p / 128, r = p % 128;
            b[i].ql[64 * h + r % 64] |= (uint8_t)((q[p] & 0xf) << (4 * (r / 64)));
            b[i].qh[32 * h + r % 32] |= (uint8_t)((q[p] >> 4) << (2 * (r / 32)));
        }
    }
}

void mc_quantize_row(moecl_dtype t, const float *src, void *dst, int64_t n) {
    const int64_t blk = mc_dtype_block(t);
    if (n <= 0 || blk <= 0) return;
    const int64_t nb = n / blk;
    switch (t) {
    case MOECL_DTYPE_F32: memmove(dst, src, (size_t)n * sizeof(float)); break;
    case MOECL_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = mc_f32_to_f16(src[i]);
        break;
    case MOECL_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = mc_f32_to_bf16(src[i]);
        break;
    case MOECL_DTYPE_Q8_0: quant_q8_0(src, dst, nb); break;
    case MOECL_DTYPE_Q4_0: quant_q4_0(src, dst, nb); break;
    case MOECL_DTYPE_Q4_K: quant_q4_K(src, dst, nb); break;
    case MOECL_DTYPE_Q5_K: quant_q5_K(src, dst, nb); break;
    case MOECL_DTYPE_Q6_K: quant_q6_K(src, dst, nb); break;
    default: break;
    }
}
