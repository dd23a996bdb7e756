/*
 * dense.cl - the dense part of a layer on the device: norms, biases, RoPE,
 * the KV cache and attention over it, residual adds. The matrix products
 * (Q, K, V, O, a dense FFN, the LM head) go through moe_ffn.cl's down
 * kernels with one group; this file holds everything else.
 *
 * Buffers (T: tokens of the batch):
 *   x      float [T, D]              the residual stream, resident across layers
 *   q      float [T, n_head * HD]    after RoPE
 *   k, v   float [T, kv_dim]         this batch's keys (after RoPE) and values
 *   kc, vc kvtype [n_cells, kv_dim]  one layer's cache, by cell index (the host pool's)
 *   cell   int [T]                   the cell of token t's position
 *   pos    int [T]                   token t's position in its sequence
 *   tab    int [..]                  block tables: token t's sequence's blocks
 *                                    start at tab[tab_off[t]]; position j of it
 *                                    is cell tab[tab_off[t] + j / BLOCK] * BLOCK + j % BLOCK
 */
#ifndef HD
#define HD 64 /* head_dim */
#endif
#ifndef BLOCK
#define BLOCK 16 /* cells per KV block (MC_KV_BLOCK) */
#endif

#ifdef KV_F16
#define LOADKV(p, i) vload_half((i), (p))
#define STOREKV(v, p, i) vstore_half_rte((v), (i), (p))
typedef half kvtype;
#else
#define LOADKV(p, i) ((p)[(i)])
#define STOREKV(v, p, i) ((p)[(i)] = (v))
typedef float kvtype;
#endif

/* out[r] = w ⊙ x[r] / sqrt(mean(x[r]²) + eps) for rows of n; global (rows).
 * Row r of x starts at r * sx, of out at r * so (in place allowed). */
__kernel void dense_rmsnorm(__global const float *x, __global const float *w, __global float *out, const int n,
                            const int sx, const int so, const float eps) {
    const int r = get_global_id(0);
    __global const float *xr = x + (ulong)r * sx;
    __global float *orow = out + (ulong)r * so;
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += xr[i] * xr[i];
    const float scale = 1.0f / sqrt(ss / (float)n + eps);
    for (int i = 0; i < n; i++) orow[i] = w[i] * (xr[i] * scale);
}

/* y[t, i] += b[i]; global (n, T). */
__kernel void dense_add_bias(__global float *y, __global const float *b, const int n) {
    const int i = get_global_id(0), t = get_global_id(1);
    y[(ulong)t * n + i] += b[i];
}

/* x[i] += y[i]; global (n). */
__kernel void dense_add(__global float *x, __global const float *y) {
    const int i = get_global_id(0);
    x[i] += y[i];
}

/* x[t, i] += sigmoid(xn[t] · gate) · y[t, i]: the shared expert's gate; global (T). */
__kernel void dense_add_gated(__global float *x, __global const float *y, __global const float *xn,
                              __global const float *gate, const int n) {
    const int t = get_global_id(0);
    float g = 0.0f;
    for (int i = 0; i < n; i++) g += xn[(ulong)t * n + i] * gate[i];
    const float s = 1.0f / (1.0f + exp(-g));
    for (int i = 0; i < n; i++) x[(ulong)t * n + i] += s * y[(ulong)t * n + i];
}

/* h = silu(h) ⊙ h3; global (n). */
__kernel void dense_swiglu(__global float *h, __global const float *h3) {
    const int i = get_global_id(0);
    const float a = h[i];
    h[i] = a / (1.0f + exp(-a)) * h3[i];
}

/* dst[r] = src[rows[r]], rows of n; global (n, R). */
__kernel void dense_copy_rows(__global const float *src, __global float *dst, __global const int *rows, const int n) {
    const int i = get_global_id(0), r = get_global_id(1);
    dst[(ulong)r * n + i] = src[(ulong)rows[r] * n + i];
}

/* Rotate pairs of each head of row t at position pos[t], as the host's
 * mc_rope: pair i is (i, i + HD/2), or (2i, 2i + 1) when interleaved;
 * angle pos · theta^(-2i/HD) in float. global (HD/2, n_heads, T). */
__kernel void dense_rope(__global float *x, __global const int *pos, const int n_heads, const float theta,
                         const int interleaved) {
    const int i = get_global_id(0), h = get_global_id(1), t = get_global_id(2);
    const float inv_freq = 1.0f / pow(theta, (float)(2 * i) / (float)HD);
    const float ang = (float)pos[t] * inv_freq;
    const float c = cos(ang), s = sin(ang);
    __global float *v = x + ((ulong)t * n_heads + h) * HD;
    const int j = interleaved ? 2 * i : i, o = interleaved ? j + 1 : i + HD / 2;
    const float a = v[j], b = v[o];
    v[j] = a * c - b * s;
    v[o] = b * c + a * s;
}

/* kc[cell[t]] = k[t], vc[cell[t]] = v[t]; global (kv_dim, T). */
__kernel void dense_kv_store(__global const float *k, __global const float *v, __global kvtype *kc,
                             __global kvtype *vc, __global const int *cell, const int kv_dim) {
    const int i = get_global_id(0), t = get_global_id(1);
    const ulong dst = (ulong)cell[t] * kv_dim + i, src = (ulong)t * kv_dim + i;
    STOREKV(k[src], kc, dst);
    STOREKV(v[src], vc, dst);
}

/* Causal grouped-query attention of head h of token t over positions
 * j0..pos[t] of its sequence (j0 > 0 with a sliding window), one pass with
 * a running maximum (the host's two passes give the same softmax).
 * global (n_head, T). */
__kernel void dense_attention(__global const float *q, __global const kvtype *kc, __global const kvtype *vc,
                              __global float *out, __global const int *pos, __global const int *tab_off,
                              __global const int *tab, const int n_head, const int n_head_kv, const int window) {
    const int h = get_global_id(0), t = get_global_id(1);
    const int kvh = h / (n_head / n_head_kv), kv_dim = n_head_kv * HD;
    const int p = pos[t];
    const int j0 = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
    __global const float *qh = q + ((ulong)t * n_head + h) * HD;
    __global const int *blocks = tab + tab_off[t];
    const float scale = 1.0f / sqrt((float)HD);
    float acc[HD];
    for (int i = 0; i < HD; i++) acc[i] = 0.0f;
    float mx = -INFINITY, sum = 0.0f;
    for (int j = j0; j <= p; j++) {
        const ulong base = ((ulong)blocks[j / BLOCK] * BLOCK + (ulong)(j % BLOCK)) * kv_dim + (ulong)kvh * HD;
        float d = 0.0f;
        for (int i = 0; i < HD; i++) d += qh[i] * LOADKV(kc, base + i);
        d *= scale;
        if (d > mx) { /* rescale what was summed under the old maximum */
            const float r = exp(mx - d);
            sum *= r;
            for (int i = 0; i < HD; i++) acc[i] *= r;
            mx = d;
        }
        const float e = exp(d - mx);
        sum += e;
        for (int i = 0; i < HD; i++) acc[i] += e * LOADKV(vc, base + i);
    }
    __global float *o = out + ((ulong)t * n_head + h) * HD;
    const float inv = 1.0f / sum;
    for (int i = 0; i < HD; i++) o[i] = acc[i] * inv;
}

/* logits[t, e] = xn[t] · W[e], float weights [E, D] (the router is float32
 * whatever the device's weight type); global (E, T). */
__kernel void dense_router(__global const float *xn, __global const float *W, __global float *logits, const int D) {
    const int e = get_global_id(0), t = get_global_id(1), E = get_global_size(0);
    __global const float *x = xn + (ulong)t * D, *w = W + (ulong)e * D;
    float s = 0.0f;
    for (int i = 0; i < D; i++) s += x[i] * w[i];
    logits[(ulong)t * E + e] = s;
}

/* x[t] += Σ_j weight[t, j] · y[pair_row[t, j]] over the K pairs of token t
 * whose expert ran here (pair_row >= 0); global (D, T). */
__kernel void dense_scatter(__global float *x, __global const float *y, __global const int *pair_row,
                            __global const float *weight, const int K, const int D) {
    const int i = get_global_id(0), t = get_global_id(1);
    float s = 0.0f;
    for (int j = 0; j < K; j++) {
        const int r = pair_row[t * K + j];
        if (r >= 0) s += weight[t * K + j] * y[(ulong)r * D + i];
    }
    x[(ulong)t * D + i] += s;
}
