/*
 * attention.c - RMSNorm, rotary embeddings and causal grouped-query
 * attention over the KV cache, on the CPU.
 */
#include "ops.h"

#include "kv_cache.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#if defined(__GNUC__)
#define ATTN_INLINE inline __attribute__((always_inline))
#else
#define ATTN_INLINE inline
#endif

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

/* Softmax of scores[0..n) in place; returns 1 / the sum of exponentials
 * (the weights are scores[j] times it). */
static float softmax_unnormalised(float *scores, int32_t n, float mx) {
    float sum = 0.0f;
    for (int32_t j = 0; j < n; j++) {
        float e = expf(scores[j] - mx);
        scores[j] = e;
        sum += e;
    }
    return 1.0f / sum;
}

/* The first position token t attends to (sliding window). */
static int32_t first_pos(const mc_attn_args *a, int32_t p) {
    return a->window > 0 && p - a->window + 1 > 0 ? p - a->window + 1 : 0;
}

/* One query head of one token against its sequence's cached keys, over a
 * cell type given by its size and two row kernels: dot(q, k row) and
 * o += w * v row.
 * Always inlined with constant kernels, so each caller below compiles to its
 * own loop with the kernels inlined (and vectorised) in it. */
typedef float (*row_dot_fn)(const float *q, const void *k, int n);
typedef void (*row_axpy_fn)(float *o, float w, const void *v, int n);

static ATTN_INLINE void attend_body(const mc_attn_args *a, int64_t t, int h, float *scores, size_t cell,
                                    row_dot_fn dot, row_axpy_fn axpy) {
    const int hd = a->head_dim;
    const int kvh = h / (a->n_head / a->n_head_kv);
    const int32_t p = a->pos[t], s = a->seq[t], j0 = first_pos(a, p);
    const float *q = a->q + t * (int64_t)a->n_head * hd + (int64_t)h * hd;
    const float scale = 1.0f / sqrtf((float)hd);

    float mx = -INFINITY;
    for (int32_t j = j0; j <= p; j++) {
        const char *k = (const char *)mc_kv_row(a->kv, s, a->layer, 0, j) + (size_t)kvh * hd * cell;
        const float d = dot(q, k, hd) * scale;
        scores[j - j0] = d;
        if (d > mx) mx = d;
    }
    const float inv = softmax_unnormalised(scores, p - j0 + 1, mx);
    float *o = a->out + t * (int64_t)a->n_head * hd + (int64_t)h * hd;
    memset(o, 0, (size_t)hd * sizeof *o);
    for (int32_t j = j0; j <= p; j++) {
        const char *v = (const char *)mc_kv_row(a->kv, s, a->layer, 1, j) + (size_t)kvh * hd * cell;
        axpy(o, scores[j - j0] * inv, v, hd);
    }
}

/* F32 cells: the simd reductions let the compiler vectorise the dot product. */
static ATTN_INLINE float dot_f32(const float *q, const void *kp, int n) {
    const float *k = kp;
    float d = 0.0f;
#pragma omp simd reduction(+ : d)
    for (int i = 0; i < n; i++) d += q[i] * k[i];
    return d;
}

static ATTN_INLINE void axpy_f32(float *o, float w, const void *vp, int n) {
    const float *v = vp;
#pragma omp simd
    for (int i = 0; i < n; i++) o[i] += w * v[i];
}

/* Cloned per instruction set (the library is built for baseline x86-64). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void attend_one(const mc_attn_args *a, int64_t t, int h, float *scores) {
    attend_body(a, t, h, scores, sizeof(float), dot_f32, axpy_f32);
}

/* F16 cells, portable C. */
static ATTN_INLINE float dot_f16(const float *q, const void *kp, int n) {
    const uint16_t *k = kp;
    float d = 0.0f;
    for (int i = 0; i < n; i++) d += q[i] * mc_f16_to_f32(k[i]);
    return d;
}

static ATTN_INLINE void axpy_f16(float *o, float w, const void *vp, int n) {
    const uint16_t *v = vp;
    for (int i = 0; i < n; i++) o[i] += w * mc_f16_to_f32(v[i]);
}

static void attend_one_f16(const mc_attn_args *a, int64_t t, int h, float *scores) {
    attend_body(a, t, h, scores, sizeof(uint16_t), dot_f16, axpy_f16);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* F16 cells with F16C conversions and FMA (chosen at run time: mc_kv_f16c). */
__attribute__((target("avx2,fma,f16c"))) static ATTN_INLINE float dot_f16c(const float *q, const void *kp, int n) {
    const uint16_t *k = kp;
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i))), acc);
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    float d = _mm_cvtss_f32(r);
    for (; i < n; i++) d += q[i] * mc_f16_to_f32(k[i]);
    return d;
}

__attribute__((target("avx2,fma,f16c"))) static ATTN_INLINE void axpy_f16c(float *o, float w, const void *vp, int n) {
    const uint16_t *v = vp;
    const __m256 wv = _mm256_set1_ps(w);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i))),
                                                _mm256_loadu_ps(o + i)));
    for (; i < n; i++) o[i] += w * mc_f16_to_f32(v[i]);
}

__attribute__((target("avx2,fma,f16c"))) static void attend_one_f16c(const mc_attn_args *a, int64_t t, int h,
                                                                    float *scores) {
    attend_body(a, t, h, scores, sizeof(uint16_t), dot_f16c, axpy_f16c);
}
#endif

/* attend over pairs [w0, w1) on thread tid. */
typedef struct attend_job {
    const mc_attn_args *a;
    void (*attend)(const mc_attn_args *, int64_t, int, float *);
} attend_job;

static void attend_chunk(void *arg, int64_t w0, int64_t w1, int tid) {
    const attend_job *j = arg;
    const mc_attn_args *a = j->a;
    float *scores = a->scratch + (int64_t)tid * a->n_ctx;
    for (int64_t w = w0; w < w1; w++) j->attend(a, w / a->n_head, (int)(w % a->n_head), scores);
}

void mc_attention(const mc_attn_args *a) {
    attend_job j = {.a = a, .attend = attend_one};
    if (a->kv->type == MOECL_DTYPE_F16) j.attend = attend_one_f16;
#if defined(__x86_64__) && defined(__GNUC__)
    if (a->kv->type == MOECL_DTYPE_F16 && mc_kv_f16c()) j.attend = attend_one_f16c;
#endif
    /* Each (token, head) pair is independent; work per pair grows with its
     * position, so hand pairs out dynamically. */
    mc_pool_for(a->pool, a->T * a->n_head, MC_POOL_DYNAMIC, 4, a->n_threads, attend_chunk, &j);
}
