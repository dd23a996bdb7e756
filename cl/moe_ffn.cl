/*
 * moe_ffn.cl - expert FFNs for tokens gathered per expert, all experts of a
 * layer in one launch per stage:
 *
 *   H = silu(X·W1ᵀ) ⊙ (X·W3ᵀ)      moe_gate_up_vec / moe_gate_up_tiled
 *   Y = H·W2ᵀ                       moe_down_vec    / moe_down_tiled
 *
 * Buffers (rows count from the first row handed to the device):
 *   X      float [rows, D]           packed token rows
 *   H      float [rows, F]           hidden activations
 *   Y      float [rows, D]           expert outputs, unweighted
 *   W1, W3 wtype [slots, F, D]       gate, up projections of the experts held
 *   W2     wtype [slots, D, F]       down projections
 *   groups int4  [n_used]            (slot, first row, rows, 0) per expert
 *
 * The launch's last dimension walks the experts. Weights are stored as
 * float or half (WEIGHT_F16); arithmetic is float either way, and half is
 * read with vload_half, which needs no cl_khr_fp16.
 *
 * The _vec kernels are for few rows per expert (decoding): one work-group
 * per OUTS outputs, each weight row read once for ROWS token rows at a time. The
 * _tiled kernels are for many rows (prompts): TS x TS output tiles.
 */
#ifndef WGS
#define WGS 64 /* work-group size of the _vec kernels (a power of two) */
#endif
#ifndef ROWS
#define ROWS 4 /* token rows a _vec work-group reduces together */
#endif
#ifndef TS
#define TS 16 /* tile edge of the _tiled kernels */
#endif
#ifndef OUTS
#define OUTS 1 /* outputs one _vec work-group computes, one after another (CPU devices: fewer, larger groups) */
#endif

#ifdef WEIGHT_F16
typedef half wtype;
#define LOADW(p, i) vload_half((i), (p))
#else
typedef float wtype;
#define LOADW(p, i) ((p)[(i)])
#endif

inline float silu(float x) { return x / (1.0f + exp(-x)); }

/* Tree-sum the ROWS runs of WGS partial sums in v; the totals land in v[r * WGS]. */
inline void reduce_rows(__local float *v, int lid) {
    for (int s = WGS / 2; s > 0; s >>= 1) {
        if (lid < s)
            for (int r = 0; r < ROWS; r++) v[r * WGS + lid] += v[r * WGS + lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
}

/* ---- few rows: global (⌈F/OUTS⌉·WGS, n_used), local (WGS, 1) ------------ */

__kernel __attribute__((reqd_work_group_size(WGS, 1, 1)))
void moe_gate_up_vec(__global const float *X, __global const wtype *W1, __global const wtype *W3,
                     __global float *H, __global const int4 *groups, const int D, const int F) {
    const int lid = get_local_id(0);
    const int4 g = groups[get_global_id(1)];
    __local float s1[ROWS * WGS], s3[ROWS * WGS];
    for (int f = get_group_id(0) * OUTS; f < (int)(get_group_id(0) + 1) * OUTS && f < F; f++) {
    const ulong w = ((ulong)g.x * F + f) * D;
    for (int r0 = 0; r0 < g.z; r0 += ROWS) {
        float a1[ROWS], a3[ROWS];
        for (int j = 0; j < ROWS; j++) a1[j] = a3[j] = 0.0f;
        for (int k = lid; k < D; k += WGS) {
            const float w1 = LOADW(W1, w + k), w3 = LOADW(W3, w + k);
            for (int j = 0; j < ROWS; j++) {
                if (r0 + j < g.z) {
                    const float x = X[(ulong)(g.y + r0 + j) * D + k];
                    a1[j] += w1 * x;
                    a3[j] += w3 * x;
                }
            }
        }
        for (int j = 0; j < ROWS; j++) {
            s1[j * WGS + lid] = a1[j];
            s3[j * WGS + lid] = a3[j];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        reduce_rows(s1, lid);
        reduce_rows(s3, lid);
        if (lid < ROWS && r0 + lid < g.z)
            H[(ulong)(g.y + r0 + lid) * F + f] = silu(s1[lid * WGS]) * s3[lid * WGS];
        barrier(CLK_LOCAL_MEM_FENCE); /* s1, s3 are reused by the next rows */
    }
    }
}

/* global (⌈D/OUTS⌉·WGS, n_used), local (WGS, 1) */
__kernel __attribute__((reqd_work_group_size(WGS, 1, 1)))
void moe_down_vec(__global const float *H, __global const wtype *W2, __global float *Y,
                  __global const int4 *groups, const int D, const int F) {
    const int lid = get_local_id(0);
    const int4 g = groups[get_global_id(1)];
    __local float s[ROWS * WGS];
    for (int d = get_group_id(0) * OUTS; d < (int)(get_group_id(0) + 1) * OUTS && d < D; d++) {
    const ulong w = ((ulong)g.x * D + d) * F;
    for (int r0 = 0; r0 < g.z; r0 += ROWS) {
        float a[ROWS];
        for (int j = 0; j < ROWS; j++) a[j] = 0.0f;
        for (int k = lid; k < F; k += WGS) {
            const float w2 = LOADW(W2, w + k);
            for (int j = 0; j < ROWS; j++)
                if (r0 + j < g.z) a[j] += w2 * H[(ulong)(g.y + r0 + j) * F + k];
        }
        for (int j = 0; j < ROWS; j++) s[j * WGS + lid] = a[j];
        barrier(CLK_LOCAL_MEM_FENCE);
        reduce_rows(s, lid);
        if (lid < ROWS && r0 + lid < g.z) Y[(ulong)(g.y + r0 + lid) * D + d] = s[lid * WGS];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    }
}

/* ---- many rows: global (⌈F/TS⌉·TS, ⌈max rows/TS⌉·TS, n_used), local (TS, TS, 1) */

__kernel __attribute__((reqd_work_group_size(TS, TS, 1)))
void moe_gate_up_tiled(__global const float *X, __global const wtype *W1, __global const wtype *W3,
                       __global float *H, __global const int4 *groups, const int D, const int F) {
    const int4 g = groups[get_group_id(2)];
    const int tc = get_local_id(0), tr = get_local_id(1);
    const int row = get_group_id(1) * TS + tr; /* token row within the expert */
    const int col = get_group_id(0) * TS + tc; /* output f */
    const int wf = get_group_id(0) * TS + tr;  /* weight row this item loads */
    if (get_group_id(1) * TS >= g.z) return;   /* the whole group: this expert has fewer rows */
    __local float xs[TS][TS + 1], w1s[TS][TS + 1], w3s[TS][TS + 1];
    const ulong wbase = (ulong)g.x * F * D;
    float a1 = 0.0f, a3 = 0.0f;
    for (int k0 = 0; k0 < D; k0 += TS) {
        const int k = k0 + tc;
        xs[tr][tc] = (row < g.z && k < D) ? X[(ulong)(g.y + row) * D + k] : 0.0f;
        const bool in = wf < F && k < D;
        w1s[tr][tc] = in ? LOADW(W1, wbase + (ulong)wf * D + k) : 0.0f;
        w3s[tr][tc] = in ? LOADW(W3, wbase + (ulong)wf * D + k) : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TS; kk++) {
            const float x = xs[tr][kk];
            a1 += x * w1s[tc][kk];
            a3 += x * w3s[tc][kk];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (row < g.z && col < F) H[(ulong)(g.y + row) * F + col] = silu(a1) * a3;
}

/* global (⌈D/TS⌉·TS, ⌈max rows/TS⌉·TS, n_used), local (TS, TS, 1) */
__kernel __attribute__((reqd_work_group_size(TS, TS, 1)))
void moe_down_tiled(__global const float *H, __global const wtype *W2, __global float *Y,
                    __global const int4 *groups, const int D, const int F) {
    const int4 g = groups[get_group_id(2)];
    const int tc = get_local_id(0), tr = get_local_id(1);
    const int row = get_group_id(1) * TS + tr;
    const int col = get_group_id(0) * TS + tc; /* output d */
    const int wd = get_group_id(0) * TS + tr;
    if (get_group_id(1) * TS >= g.z) return;
    __local float hs[TS][TS + 1], ws[TS][TS + 1];
    const ulong wbase = (ulong)g.x * D * F;
    float a = 0.0f;
    for (int k0 = 0; k0 < F; k0 += TS) {
        const int k = k0 + tc;
        hs[tr][tc] = (row < g.z && k < F) ? H[(ulong)(g.y + row) * F + k] : 0.0f;
        ws[tr][tc] = (wd < D && k < F) ? LOADW(W2, wbase + (ulong)wd * F + k) : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TS; kk++) a += hs[tr][kk] * ws[tc][kk];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (row < g.z && col < D) Y[(ulong)(g.y + row) * D + col] = a;
}

/* ---- few rows on CPU devices: global (F or D, n_used), any local size ----
 * One work-item per output and ROWS rows at a time, reading its weight row
 * front to back with 8-wide vector loads: CPU compilers (PoCL) vectorize
 * this, where the work-group reductions above serialize. */

#ifdef WEIGHT_F16
#define LOADW8(p, i) vload_half8(0, (p) + (i))
#else
#define LOADW8(p, i) vload8(0, (p) + (i))
#endif

/* dot(w[0..n), x[0..n)) for ROWS rows of x (stride ldx); rows >= nr skipped. */
#define DOT_ROWS(acc, wp, xp, ldx, n, nr)                                             \
    for (int j = 0; j < ROWS; j++) acc[j] = 0.0f;                                     \
    {                                                                                 \
        int k = 0;                                                                    \
        float8 v[ROWS];                                                               \
        for (int j = 0; j < ROWS; j++) v[j] = (float8)(0.0f);                         \
        for (; k + 8 <= (n); k += 8) {                                                \
            const float8 w8 = LOADW8(wp, k);                                          \
            for (int j = 0; j < ROWS; j++)                                            \
                if (j < (nr)) v[j] += w8 * vload8(0, (xp) + (ulong)j * (ldx) + k);    \
        }                                                                             \
        for (int j = 0; j < ROWS; j++) {                                              \
            const float4 s4 = v[j].lo + v[j].hi;                                      \
            acc[j] = s4.x + s4.y + s4.z + s4.w;                                       \
        }                                                                             \
        for (; k < (n); k++) {                                                        \
            const float wk = LOADW(wp, k);                                            \
            for (int j = 0; j < ROWS; j++)                                            \
                if (j < (nr)) acc[j] += wk * (xp)[(ulong)j * (ldx) + k];              \
        }                                                                             \
    }

__kernel void moe_gate_up_rows(__global const float *X, __global const wtype *W1, __global const wtype *W3,
                               __global float *H, __global const int4 *groups, const int D, const int F) {
    const int f = get_global_id(0);
    const int4 g = groups[get_global_id(1)];
    if (f >= F) return;
    __global const wtype *w1 = W1 + ((ulong)g.x * F + f) * D, *w3 = W3 + ((ulong)g.x * F + f) * D;
    for (int r0 = 0; r0 < g.z; r0 += ROWS) {
        const int nr = min(ROWS, g.z - r0);
        __global const float *x = X + (ulong)(g.y + r0) * D;
        float a1[ROWS], a3[ROWS];
        DOT_ROWS(a1, w1, x, D, D, nr)
        DOT_ROWS(a3, w3, x, D, D, nr)
        for (int j = 0; j < nr; j++) H[(ulong)(g.y + r0 + j) * F + f] = silu(a1[j]) * a3[j];
    }
}

__kernel void moe_down_rows(__global const float *H, __global const wtype *W2, __global float *Y,
                            __global const int4 *groups, const int D, const int F) {
    const int d = get_global_id(0);
    const int4 g = groups[get_global_id(1)];
    if (d >= D) return;
    __global const wtype *w2 = W2 + ((ulong)g.x * D + d) * F;
    for (int r0 = 0; r0 < g.z; r0 += ROWS) {
        const int nr = min(ROWS, g.z - r0);
        __global const float *h = H + (ulong)(g.y + r0) * F;
        float a[ROWS];
        DOT_ROWS(a, w2, h, F, F, nr)
        for (int j = 0; j < nr; j++) Y[(ulong)(g.y + r0 + j) * D + d] = a[j];
    }
}

/* ---- many rows on CPU devices: global (⌈F/CB⌉, ⌈max rows/RB⌉, n_used), any local size
 * A work-item computes CB outputs for RB token rows with no local memory and
 * no barriers (which PoCL turns into loops over the work-group): per 8
 * weights it loads CB weight vectors and RB row vectors for RB·CB
 * multiply-adds. Rows and outputs past the end are clamped to the last one
 * (computed, not stored), so the inner loop has no branches. */
#ifndef RB
#define RB 4 /* token rows per work-item of the _blk kernels */
#endif
#ifndef CB
#define CB 2 /* outputs per work-item of the _blk kernels */
#endif

inline float hsum8(float8 v) {
    const float4 s = v.lo + v.hi;
    return (s.x + s.y) + (s.z + s.w);
}

/* acc[j][c] = dot(w rows wr[c], x rows xr[j]) over n, for j < RB, c < CB */
#define DOT_BLOCK(NW, acc, wr, xr, n)                                                         \
    {                                                                                         \
        float8 v[NW][RB][CB];                                                                 \
        for (int m = 0; m < NW; m++)                                                          \
            for (int j = 0; j < RB; j++)                                                      \
                for (int c = 0; c < CB; c++) v[m][j][c] = (float8)(0.0f);                     \
        int k = 0;                                                                            \
        for (; k + 8 <= (n); k += 8) {                                                        \
            float8 xv[RB];                                                                    \
            for (int j = 0; j < RB; j++) xv[j] = vload8(0, xr[j] + k);                        \
            for (int m = 0; m < NW; m++)                                                      \
                for (int c = 0; c < CB; c++) {                                                \
                    const float8 w8 = LOADW8(wr[m][c], k);                                    \
                    for (int j = 0; j < RB; j++) v[m][j][c] = mad(w8, xv[j], v[m][j][c]);     \
                }                                                                             \
        }                                                                                     \
        for (int m = 0; m < NW; m++)                                                          \
            for (int j = 0; j < RB; j++)                                                      \
                for (int c = 0; c < CB; c++) acc[m][j][c] = hsum8(v[m][j][c]);                \
        for (; k < (n); k++)                                                                  \
            for (int m = 0; m < NW; m++)                                                      \
                for (int c = 0; c < CB; c++) {                                                \
                    const float wk = LOADW(wr[m][c], k);                                      \
                    for (int j = 0; j < RB; j++) acc[m][j][c] += wk * xr[j][k];               \
                }                                                                             \
    }

__kernel void moe_gate_up_blk(__global const float *X, __global const wtype *W1, __global const wtype *W3,
                              __global float *H, __global const int4 *groups, const int D, const int F) {
    const int f0 = get_global_id(0) * CB, r0 = get_global_id(1) * RB;
    const int4 g = groups[get_global_id(2)];
    if (f0 >= F || r0 >= g.z) return;
    __global const wtype *wr[2][CB];
    __global const float *xr[RB];
    for (int c = 0; c < CB; c++) {
        const ulong o = ((ulong)g.x * F + min(f0 + c, F - 1)) * D;
        wr[0][c] = W1 + o;
        wr[1][c] = W3 + o;
    }
    for (int j = 0; j < RB; j++) xr[j] = X + (ulong)(g.y + min(r0 + j, g.z - 1)) * D;
    float acc[2][RB][CB];
    DOT_BLOCK(2, acc, wr, xr, D)
    for (int j = 0; j < RB && r0 + j < g.z; j++)
        for (int c = 0; c < CB && f0 + c < F; c++)
            H[(ulong)(g.y + r0 + j) * F + f0 + c] = silu(acc[0][j][c]) * acc[1][j][c];
}

__kernel void moe_down_blk(__global const float *H, __global const wtype *W2, __global float *Y,
                           __global const int4 *groups, const int D, const int F) {
    const int d0 = get_global_id(0) * CB, r0 = get_global_id(1) * RB;
    const int4 g = groups[get_global_id(2)];
    if (d0 >= D || r0 >= g.z) return;
    __global const wtype *wr[1][CB];
    __global const float *xr[RB];
    for (int c = 0; c < CB; c++) wr[0][c] = W2 + ((ulong)g.x * D + min(d0 + c, D - 1)) * F;
    for (int j = 0; j < RB; j++) xr[j] = H + (ulong)(g.y + min(r0 + j, g.z - 1)) * F;
    float acc[1][RB][CB];
    DOT_BLOCK(1, acc, wr, xr, F)
    for (int j = 0; j < RB && r0 + j < g.z; j++)
        for (int c = 0; c < CB && d0 + c < D; c++) Y[(ulong)(g.y + r0 + j) * D + d0 + c] = acc[0][j][c];
}

/* H = silu(H) ⊙ H3 over n floats: the step between CLBlast's gate and up
 * products and its down product (the backend's CLBlast path, many rows). */
__kernel void moe_swiglu(__global float *H, __global const float *H3, const int n) {
    const int i = (int)get_global_id(0);
    if (i < n) H[i] = silu(H[i]) * H3[i];
}
