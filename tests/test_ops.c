/*
 * test_ops.c - the host-side steps against float64 references: top-k
 * (ties, k = number of experts), routing, gather/scatter (experts with no
 * tokens, all tokens on one expert), RoPE, softmax of large logits, RMSNorm.
 */
#include "test_util.h"

#include "ops.h"

#include <string.h>

static void test_topk(void) {
    float v[8] = {0.1f, 0.7f, 0.7f, 0.2f, 0.7f, -1.0f, 0.0f, 0.3f};
    int32_t idx[64];
    float val[64];
    mc_topk(v, 8, 2, idx, val);
    CHECK(idx[0] == 1 && idx[1] == 2); /* ties: lowest index first */
    mc_topk(v, 8, 3, idx, val);
    CHECK(idx[0] == 1 && idx[1] == 2 && idx[2] == 4);
    mc_topk(v, 8, 8, idx, val); /* k = n: a full stable descending sort */
    int expect[8] = {1, 2, 4, 7, 3, 0, 6, 5};
    for (int i = 0; i < 8; i++) CHECKF(idx[i] == expect[i], "k=n position %d: %d", i, idx[i]);
    mc_topk(v, 8, 1, idx, val);
    CHECK(idx[0] == 1 && val[0] == 0.7f);
    float same[4] = {2, 2, 2, 2};
    mc_topk(same, 4, 4, idx, val);
    CHECK(idx[0] == 0 && idx[1] == 1 && idx[2] == 2 && idx[3] == 3);
    /* random vectors against a brute-force reference */
    uint64_t s = 7;
    for (int trial = 0; trial < 200; trial++) {
        int n = 1 + (int)(t_rand_u64(&s) % 64), k = 1 + (int)(t_rand_u64(&s) % (uint64_t)n);
        float x[64];
        for (int i = 0; i < n; i++) x[i] = (float)(t_rand_u64(&s) % 8); /* many ties */
        mc_topk(x, n, k, idx, val);
        bool used[64] = {false};
        for (int j = 0; j < k; j++) {
            int b = -1;
            for (int i = 0; i < n; i++) if (!used[i] && (b < 0 || x[i] > x[b])) b = i;
            used[b] = true;
            CHECKF(idx[j] == b, "trial %d n %d k %d slot %d: %d, expected %d", trial, n, k, j, idx[j], b);
        }
    }
}

static void test_softmax(void) {
    float x[4] = {1000.0f, 1000.0f, -1000.0f, -INFINITY};
    mc_softmax(x, 4);
    CHECK(fabsf(x[0] - 0.5f) < 1e-7f && fabsf(x[1] - 0.5f) < 1e-7f && x[2] == 0.0f && x[3] == 0.0f);
    float y[3] = {88.0f, 89.0f, 90.0f}; /* exp would overflow without the max subtracted */
    mc_softmax(y, 3);
    double d = exp(-2.0) + exp(-1.0) + 1.0;
    CHECK(fabs(y[2] - 1.0 / d) < 1e-6 && fabs(y[0] - exp(-2.0) / d) < 1e-6);
    float z[2] = {-INFINITY, -INFINITY};
    mc_softmax(z, 2);
    CHECK(!isnan(z[0]) && !isnan(z[1]));
}

static void test_route(void) {
    uint64_t s = 11;
    enum { T = 13, D = 24, E = 8, K = 2 };
    float x[T * D], w[E * D], weight[T * K];
    int32_t expert[T * K];
    for (int i = 0; i < T * D; i++) x[i] = t_rand_f(&s);
    for (int i = 0; i < E * D; i++) w[i] = t_rand_f(&s);
    mc_route(x, w, T, D, E, K, expert, weight);
    for (int t = 0; t < T; t++) {
        double logit[E], mx = -1e300, sum = 0;
        for (int e = 0; e < E; e++) {
            logit[e] = 0;
            for (int i = 0; i < D; i++) logit[e] += (double)x[t * D + i] * w[e * D + i];
            if (logit[e] > mx) mx = logit[e];
        }
        for (int e = 0; e < E; e++) sum += exp(logit[e] - mx);
        int a = expert[t * K], b = expert[t * K + 1];
        CHECK(a != b);
        for (int e = 0; e < E; e++) CHECK(e == a || e == b || logit[e] <= logit[b]);
        CHECK(logit[a] >= logit[b]);
        double pa = exp(logit[a] - mx) / sum, pb = exp(logit[b] - mx) / sum;
        CHECK(fabs(weight[t * K] - pa / (pa + pb)) < 1e-6);
        CHECK(fabs(weight[t * K] + weight[t * K + 1] - 1.0) < 1e-6);
    }
}

/* Gather, a stand-in expert (y = (e+1)·x), scatter: out = Σ w·(e+1)·x. */
static void check_gather_scatter(const int32_t *expert, const float *weight, int T, int K, int E,
                                 const uint8_t *group) {
    enum { D = 5 };
    float x[64 * D], gx[64 * 4 * D], gy[64 * 4 * D], out[64 * D];
    int32_t order[16];
    int64_t offsets[17], row[64 * 4], counts[16];
    mc_gather_plan p = {.order = order, .offsets = offsets, .row = row};
    for (int i = 0; i < T * D; i++) x[i] = (float)i * 0.25f - 3.0f;
    mc_gather_plan_build(&p, expert, T, K, E, group, counts);
    CHECK(p.offsets[p.n_used] == (int64_t)T * K);
    for (int i = 1; i < p.n_used; i++) {
        uint8_t g0 = group ? group[p.order[i - 1]] : 0, g1 = group ? group[p.order[i]] : 0;
        CHECK(g0 < g1 || (g0 == g1 && p.order[i - 1] < p.order[i]));
    }
    for (int e = 0; e < E; e++) { /* experts with no tokens are not in the plan */
        bool has = false, listed = false;
        for (int i = 0; i < T * K; i++) has |= expert[i] == e;
        for (int i = 0; i < p.n_used; i++) listed |= p.order[i] == e;
        CHECK(has == listed);
    }
    mc_gather(&p, x, T, K, D, gx);
    for (int i = 0; i < p.n_used; i++)
        for (int64_t r = p.offsets[i]; r < p.offsets[i + 1]; r++)
            for (int d = 0; d < D; d++) gy[r * D + d] = (float)(p.order[i] + 1) * gx[r * D + d];
    memset(out, 0, sizeof out);
    mc_scatter_add(&p, gy, weight, T, K, D, out);
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) {
            double ref = 0;
            for (int j = 0; j < K; j++) ref += weight[t * K + j] * (expert[t * K + j] + 1) * x[t * D + d];
            CHECKF(fabs(out[t * D + d] - ref) <= 1e-5 * (1 + fabs(ref)), "t %d d %d: %g vs %g", t, d,
                   out[t * D + d], ref);
        }
}

static void test_gather_scatter(void) {
    uint64_t s = 3;
    int32_t expert[64 * 2];
    float weight[64 * 2];
    /* 1 token; a prime number of tokens; all on one expert; groups */
    int sizes[] = {1, 2, 7, 31, 64};
    for (size_t n = 0; n < sizeof sizes / sizeof sizes[0]; n++) {
        int T = sizes[n];
        for (int t = 0; t < T; t++) {
            int a = (int)(t_rand_u64(&s) % 8), b = (a + 1 + (int)(t_rand_u64(&s) % 7)) % 8;
            expert[2 * t] = a;
            expert[2 * t + 1] = b;
            weight[2 * t] = 0.25f + 0.5f * (float)(t_rand_u64(&s) % 100) / 100.0f;
            weight[2 * t + 1] = 1.0f - weight[2 * t];
        }
        check_gather_scatter(expert, weight, T, 2, 8, NULL);
        uint8_t group[8] = {1, 0, 1, 0, 2, 0, 1, 1};
        check_gather_scatter(expert, weight, T, 2, 8, group);
    }
    for (int t = 0; t < 31; t++) { expert[t] = 5; weight[t] = 1.0f; }
    check_gather_scatter(expert, weight, 31, 1, 8, NULL);
}

static void test_rope(void) {
    enum { H = 3, HD = 10 };
    uint64_t s = 5;
    float x[H * HD], y[H * HD];
    for (int i = 0; i < H * HD; i++) x[i] = t_rand_f(&s);
    int positions[] = {0, 1, 17, 4095};
    for (int pi = 0; pi < 4; pi++) {
        int pos = positions[pi];
        memcpy(y, x, sizeof x);
        mc_rope(y, H, HD, pos, 10000.0f, false);
        for (int h = 0; h < H; h++)
            for (int i = 0; i < HD / 2; i++) {
                double th = pos * pow(10000.0, -2.0 * i / HD);
                double a = x[h * HD + i], b = x[h * HD + i + HD / 2];
                double r0 = a * cos(th) - b * sin(th), r1 = b * cos(th) + a * sin(th);
                /* transformers forms the angle in float32: allow its rounding */
                double tol = 1e-6 + 2e-7 * pos;
                CHECKF(fabs(y[h * HD + i] - r0) < tol && fabs(y[h * HD + i + HD / 2] - r1) < tol,
                       "pos %d head %d i %d", pos, h, i);
            }
        if (pos == 0) CHECK(memcmp(x, y, sizeof x) == 0);

        /* The interleaved form on rows permuted as llama.cpp's converter
         * permutes Q and K (HF row j*HD/2 + i becomes row 2i + j) gives the
         * same values, permuted the same way. */
        float p[H * HD];
        for (int h = 0; h < H; h++)
            for (int i = 0; i < HD / 2; i++)
                for (int j = 0; j < 2; j++) p[h * HD + 2 * i + j] = x[h * HD + j * HD / 2 + i];
        mc_rope(p, H, HD, pos, 10000.0f, true);
        for (int h = 0; h < H; h++)
            for (int i = 0; i < HD / 2; i++)
                for (int j = 0; j < 2; j++)
                    CHECKF(p[h * HD + 2 * i + j] == y[h * HD + j * HD / 2 + i], "interleaved pos %d head %d i %d", pos,
                           h, i);
    }
}

static void test_rmsnorm(void) {
    float x[37], w[37], y[37];
    uint64_t s = 9;
    for (int i = 0; i < 37; i++) { x[i] = 100.0f * t_rand_f(&s); w[i] = 1.0f + t_rand_f(&s); }
    mc_rmsnorm(y, x, w, 37, 1e-5f);
    double ss = 0;
    for (int i = 0; i < 37; i++) ss += (double)x[i] * x[i];
    double sc = 1.0 / sqrt(ss / 37 + 1e-5);
    for (int i = 0; i < 37; i++) CHECK(fabs(y[i] - w[i] * x[i] * sc) < 1e-5 * (1 + fabs(w[i] * x[i] * sc)));
}

int main(void) {
    test_topk();
    test_softmax();
    test_route();
    test_gather_scatter();
    test_rope();
    test_rmsnorm();
    return t_done("ops");
}
