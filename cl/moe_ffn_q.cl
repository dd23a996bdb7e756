/*
 * moe_ffn_q.cl - expert FFNs over quantized weights in GGUF's block layouts,
 * dequantized in registers inside the dot products (never an F32 copy):
 *
 *   H = silu(X·W1ᵀ) ⊙ (X·W3ᵀ)      moeq_gate_up
 *   Y = H·W2ᵀ                       moeq_down
 *
 * One program per weight type: QTYPE is the moecl_dtype (3 q8_0, 4 q4_0,
 * 5 q4_K, 6 q5_K, 7 q6_K). Buffers as in moe_ffn.cl, except that the
 * weights are bytes: a weight row of n values is n / QK blocks of QBYTES.
 *
 *   X      float [rows, D]           packed token rows
 *   H      float [rows, F]
 *   Y      float [rows, D]
 *   W1, W3 uchar [slots, F, D / QK * QBYTES]
 *   W2     uchar [slots, D, F / QK * QBYTES]
 *   groups int4  [n_used]            (slot, first row, rows, 0) per expert
 *
 * global (F or D, ⌈max rows / QRB⌉, n_used), any local size: a work-item
 * computes one output for QRB token rows, dequantizing each 32-weight chunk
 * of its weight row once for all of them. D and F are multiples of QK.
 *
 * Block layouts (little-endian, packed; see src/quant/quant.h):
 *
 *   q8_0 [d:f16][qs: 32 x i8]                                  w = d*q
 *   q4_0 [d:f16][qs: 16 bytes, weight j<16 low nibble of qs[j],
 *                j>=16 high nibble of qs[j-16]]                w = d*(q-8)
 *   q4_K [d:f16][dmin:f16][scales: 12 bytes, 8 x (6-bit sc, 6-bit m)]
 *        [qs: 128 bytes]  sub-block j (32 weights): nibbles of qs[32*(j/2)..],
 *        low for even j, high for odd        w = d*sc_j*q - dmin*m_j
 *   q5_K as q4_K, with [qh: 32 bytes] before qs: bit j of qh[l] is the
 *        fifth bit of weight l of sub-block j
 *   q6_K [ql: 128][qh: 64][scales: 16 x i8][d:f16]; two halves of 128
 *        weights, each four quarters of 32: quarter q takes the low (q<2) or
 *        high nibbles of ql[64h + 32(q&1)..] and bits 2q,2q+1 of qh[32h..];
 *        a scale per 16 weights                  w = d*sc*(q-32)
 */
#ifndef QTYPE
#define QTYPE 3 /* q8_0 */
#endif
#ifndef QRB
#define QRB 4 /* token rows per work-item */
#endif

#if QTYPE == 3
#define QK 32
#define QBYTES 34
#elif QTYPE == 4
#define QK 32
#define QBYTES 18
#elif QTYPE == 5
#define QK 256
#define QBYTES 144
#elif QTYPE == 6
#define QK 256
#define QBYTES 176
#elif QTYPE == 7
#define QK 256
#define QBYTES 210
#else
#error "QTYPE must be 3 (q8_0), 4 (q4_0), 5 (q4_K), 6 (q5_K) or 7 (q6_K)"
#endif

inline float silu(float x) { return x / (1.0f + exp(-x)); }

/* An f16 at an even byte offset. */
inline float ldh(__global const uchar *p) { return vload_half(0, (__global const half *)p); }

#if QTYPE == 5 || QTYPE == 6
/* The 6-bit scale and min of sub-block j (llama.cpp's get_scale_min_k4). */
inline void scale_min_k4(int j, __global const uchar *q, float *sc, float *m) {
    if (j < 4) {
        *sc = (float)(q[j] & 63);
        *m = (float)(q[j + 4] & 63);
    } else {
        *sc = (float)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (float)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}
#endif

/* w[0..4) = weights 32c .. 32c+31 of a row, in the order of the row. */
inline void deq32(__global const uchar *row, int c, float8 *w) {
#pragma OPENCL FP_CONTRACT OFF /* the same roundings as the reference dequantizers */
#if QTYPE == 3
    __global const uchar *b = row + c * QBYTES;
    const float d = ldh(b);
    __global const char *q = (__global const char *)(b + 2);
    for (int i = 0; i < 4; i++) w[i] = convert_float8(vload8(i, q)) * d;
#elif QTYPE == 4
    __global const uchar *b = row + c * QBYTES;
    const float d = ldh(b);
    const int16 q = convert_int16(vload16(0, b + 2));
    const float16 lo = convert_float16((q & 0xF) - 8), hi = convert_float16((q >> 4) - 8);
    w[0] = lo.lo * d;
    w[1] = lo.hi * d;
    w[2] = hi.lo * d;
    w[3] = hi.hi * d;
#elif QTYPE == 5 || QTYPE == 6
    __global const uchar *b = row + (c >> 3) * QBYTES;
    const int j = c & 7;
    float sc, m;
    scale_min_k4(j, b + 4, &sc, &m);
    const float d1 = ldh(b) * sc, m1 = ldh(b + 2) * m;
#if QTYPE == 5
    __global const uchar *qs = b + 16 + 32 * (j >> 1);
#else
    __global const uchar *qh = b + 16, *qs = b + 48 + 32 * (j >> 1);
#endif
    const int sh = (j & 1) * 4;
    for (int i = 0; i < 4; i++) {
        int8 q = (convert_int8(vload8(i, qs)) >> sh) & 0xF;
#if QTYPE == 6
        q |= ((convert_int8(vload8(i, qh)) >> j) & 1) << 4;
#endif
        w[i] = d1 * convert_float8(q) - m1;
    }
#else /* q6_K */
    __global const uchar *b = row + (c >> 3) * QBYTES;
    const int h = (c & 7) >> 2, qq = c & 3;
    __global const uchar *ql = b + 64 * h + 32 * (qq & 1), *qh = b + 128 + 32 * h;
    __global const char *sc = (__global const char *)(b + 192) + 8 * h + 2 * qq;
    const float d = ldh(b + 208);
    const int lsh = (qq >> 1) * 4, hsh = 2 * qq;
    for (int i = 0; i < 4; i++) {
        const int8 q = (((convert_int8(vload8(i, ql)) >> lsh) & 0xF) | (((convert_int8(vload8(i, qh)) >> hsh) & 3) << 4)) - 32;
        w[i] = (d * (float)sc[i >> 1]) * convert_float8(q);
    }
#endif
}

inline float hsum8(float8 v) {
    const float4 s = v.lo + v.hi;
    return (s.x + s.y) + (s.z + s.w);
}

__kernel void moeq_gate_up(__global const float *X, __global const uchar *W1, __global const uchar *W3,
                           __global float *H, __global const int4 *groups, const int D, const int F) {
    const int f = get_global_id(0), r0 = get_global_id(1) * QRB;
    const int4 g = groups[get_global_id(2)];
    if (f >= F || r0 >= g.z) return;
    const int nr = min(QRB, g.z - r0);
    const ulong rb = (ulong)(D / QK) * QBYTES;
    __global const uchar *w1 = W1 + ((ulong)g.x * F + f) * rb, *w3 = W3 + ((ulong)g.x * F + f) * rb;
    __global const float *x = X + (ulong)(g.y + r0) * D;
    float8 a1[QRB], a3[QRB];
    for (int j = 0; j < QRB; j++) a1[j] = a3[j] = (float8)(0.0f);
    for (int c = 0; c < D / 32; c++) {
        float8 u[4], v[4];
        deq32(w1, c, u);
        deq32(w3, c, v);
        for (int j = 0; j < QRB; j++) {
            if (j < nr) {
                __global const float *xp = x + (ulong)j * D + 32 * c;
                for (int i = 0; i < 4; i++) {
                    const float8 xv = vload8(i, xp);
                    a1[j] = mad(u[i], xv, a1[j]);
                    a3[j] = mad(v[i], xv, a3[j]);
                }
            }
        }
    }
    for (int j = 0; j < nr; j++) H[(ulong)(g.y + r0 + j) * F + f] = silu(hsum8(a1[j])) * hsum8(a3[j]);
}

__kernel void moeq_down(__global const float *H, __global const uchar *W2, __global float *Y,
                        __global const int4 *groups, const int D, const int F) {
    const int d = get_global_id(0), r0 = get_global_id(1) * QRB;
    const int4 g = groups[get_global_id(2)];
    if (d >= D || r0 >= g.z) return;
    const int nr = min(QRB, g.z - r0);
    const ulong rb = (ulong)(F / QK) * QBYTES;
    __global const uchar *w2 = W2 + ((ulong)g.x * D + d) * rb;
    __global const float *h = H + (ulong)(g.y + r0) * F;
    float8 a[QRB];
    for (int j = 0; j < QRB; j++) a[j] = (float8)(0.0f);
    for (int c = 0; c < F / 32; c++) {
        float8 u[4];
        deq32(w2, c, u);
        for (int j = 0; j < QRB; j++) {
            if (j < nr) {
                __global const float *hp = h + (ulong)j * F + 32 * c;
                for (int i = 0; i < 4; i++) a[j] = mad(u[i], vload8(i, hp), a[j]);
            }
        }
    }
    for (int j = 0; j < nr; j++) Y[(ulong)(g.y + r0 + j) * D + d] = hsum8(a[j]);
}
