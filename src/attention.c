/*
 * attention.c - RMSNorm, rotary embeddings and causal grouped-query
 * attention over the KV cache, on the CPU.
 */
#include "ops.h"

#include <math.h>
#include <string.h>

void mc_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) out[i] = w[i] * (x[i] * scale);
}

void mc_rope(float *x, int n_heads, int head_dim, int32_t pos, float theta, bool interleaved) {
    const int half = head_dim / 2;
    /* Pair i is (i, i + half) in transformers' rotate-half layout, (2i, 2i + 1)
     * in the layout of GGUF files, whose converter permuted the Q and K rows. */
    const int stride = interleaved ? 2 : 1, other = interleaved ? 1 : half;
    for (int i = 0; i < half; i++) {
        /* transformers: inv_freq = 1 / theta^(2i/d) in float32, angle = pos · inv_freq in float32 */
        float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
        float ang = (float)pos * inv_freq;
        float c = cosf(ang), s = sinf(ang);
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (int64_t)h * head_dim;
            const int j = i * stride;
            float a = v[j], b = v[j + other];
            v[j] = a * c - b * s;
            v[j + other] = b * c + a * s;
        }
    }
}

/* One query head of one token against its sequence's cached keys. Cloned
 * per instruction set (the library is built for baseline x86-64); the simd
 * reductions let the compiler vectorise the dot products (reordering the
 * float sums, which it may not do on its own). They need only -fopenmp-simd
 * (meson.build), not the OpenMP runtime. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void attend_one(const mc_attn_args *a, int64_t t, int h, float *scores) {
    const int hd = a->head_dim;
    const int64_t kv_dim = (int64_t)a->n_head_kv * hd;
    const int kvh = h / (a->n_head / a->n_head_kv);
    const int32_t p = a->pos[t];
    const int32_t j0 = a->window > 0 && p - a->window + 1 > 0 ? p - a->window + 1 : 0;
    const float *q = a->q + t * (int64_t)a->n_head * hd + (int64_t)h * hd;
    const float *kc = a->k_cache + (int64_t)a->seq[t] * a->n_ctx * kv_dim + (int64_t)kvh * hd;
    const float *vc = a->v_cache + (int64_t)a->seq[t] * a->n_ctx * kv_dim + (int64_t)kvh * hd;
    const float scale = 1.0f / sqrtf((float)hd);

    float mx = -INFINITY;
    for (int32_t j = j0; j <= p; j++) {
        const float *k = kc + (int64_t)j * kv_dim;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < hd; i++) s += q[i] * k[i];
        s *= scale;
        scores[j - j0] = s;
        if (s > mx) mx = s;
    }
    float sum = 0.0f;
    for (int32_t j = j0; j <= p; j++) {
        float e = expf(scores[j - j0] - mx);
        scores[j - j0] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
    float *o = a->out + t * (int64_t)a->n_head * hd + (int64_t)h * hd;
    memset(o, 0, (size_t)hd * sizeof *o);
    for (int32_t j = j0; j <= p; j++) {
        const float *v = vc + (int64_t)j * kv_dim;
        const float w = scores[j - j0] * inv;
#pragma omp simd
        for (int i = 0; i < hd; i++) o[i] += w * v[i];
    }
}

/* Pairs [w0, w1) on thread tid. */
static void attend_chunk(void *arg, int64_t w0, int64_t w1, int tid) {
    const mc_attn_args *a = arg;
    float *scores = a->scratch + (int64_t)tid * a->n_ctx;
    for (int64_t w = w0; w < w1; w++) attend_one(a, w / a->n_head, (int)(w % a->n_head), scores);
}

void mc_attention(const mc_attn_args *a) {
    /* Each (token, head) pair is independent; work per pair grows with its
     * position, so hand pairs out dynamically. */
    mc_pool_for(a->pool, a->T * a->n_head, MC_POOL_DYNAMIC, 4, a->n_threads, attend_chunk, (void *)a);
}
