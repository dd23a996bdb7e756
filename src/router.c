/*
 * router.c - the router on the host, and the gather / scatter that
 * turn per-token expert choices into one matrix per expert.
 *
 *   tokens   x[0..T)        each picks k experts with weights
 *            |  gather: rows of all tokens that chose expert e, packed
 *            v
 *   gx = [ rows of e0 | rows of e3 | rows of e1 ... ]   (ordered by group, then id)
 *            |  expert FFN: one matrix product per expert
 *            v
 *   gy = same layout   --scatter-->  x[t] += Σ_j w[t,j] · gy[row[t,j]]
 */
#include "ops.h"

#include <math.h>
#include <string.h>

void mc_softmax(float *x, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) if (x[i] > mx) mx = x[i];
    if (mx == -INFINITY) { /* nothing finite: uniform rather than NaN */
        for (int i = 0; i < n; i++) x[i] = 1.0f / (float)n;
        return;
    }
    double sum = 0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void mc_topk(const float *v, int n, int k, int32_t *idx, float *val) {
    /* k and n are small (experts per layer): selection by insertion into a
     * sorted list of k. A later index only displaces on strictly greater. */
    int m = 0;
    for (int i = 0; i < n; i++) {
        float x = v[i];
        if (m == k && !(x > val[k - 1])) continue;
        int j = m < k ? m++ : k - 1;
        while (j > 0 && x > val[j - 1]) {
            val[j] = val[j - 1];
            idx[j] = idx[j - 1];
            j--;
        }
        val[j] = x;
        idx[j] = i;
    }
}

void mc_route(const float *xn, const float *router_w, int64_t T, int n_embd, int n_expert, int k,
              int32_t *expert, float *weight) {
    mc_route_rule(xn, router_w, T, n_embd, n_expert, k, true, expert, weight);
}

void mc_route_rule(const float *xn, const float *router_w, int64_t T, int n_embd, int n_expert, int k, bool renorm,
                   int32_t *expert, float *weight) {
    float probs[1024]; /* n_expert <= 1024 is checked when the config is read */
    for (int64_t t = 0; t < T; t++) {
        const float *x = xn + t * n_embd;
        for (int e = 0; e < n_expert; e++) {
            const float *w = router_w + (int64_t)e * n_embd;
            double acc = 0;
            for (int i = 0; i < n_embd; i++) acc += (double)x[i] * w[i];
            probs[e] = (float)acc;
        }
        mc_route_logits(probs, 1, n_expert, k, renorm, expert + t * k, weight + t * k);
    }
}

void mc_route_logits(float *logits, int64_t T, int n_expert, int k, bool renorm, int32_t *expert, float *weight) {
    for (int64_t t = 0; t < T; t++) {
        float *probs = logits + t * n_expert;
        mc_softmax(probs, n_expert);
        int32_t *ei = expert + t * k;
        float *wi = weight + t * k;
        mc_topk(probs, n_expert, k, ei, wi);
        if (!renorm) continue; /* the softmax probabilities themselves (OLMoE, Qwen2-MoE) */
        double s = 0;
        for (int j = 0; j < k; j++) s += wi[j];
        for (int j = 0; j < k; j++) wi[j] = (float)(wi[j] / s);
    }
}

void mc_gather_plan_build(mc_gather_plan *p, const int32_t *expert, int64_t T, int k, int n_expert,
                          const uint8_t *group_of, int64_t *counts) {
    memset(counts, 0, (size_t)n_expert * sizeof *counts);
    for (int64_t i = 0; i < T * k; i++) counts[expert[i]]++;

    /* Experts with tokens, ordered by (group, id): a counting pass per group
     * would be overkill for <= 1024 experts; insertion sort is fine. */
    p->n_used = 0;
    for (int e = 0; e < n_expert; e++) {
        if (!counts[e]) continue;
        int j = p->n_used++;
        uint8_t g = group_of ? group_of[e] : 0;
        while (j > 0 && (group_of ? group_of[p->order[j - 1]] : 0) > g) {
            p->order[j] = p->order[j - 1];
            j--;
        }
        p->order[j] = e;
    }
    /* counts[e] becomes the next free row of expert e. */
    p->offsets[0] = 0;
    for (int i = 0; i < p->n_used; i++) {
        int e = p->order[i];
        p->offsets[i + 1] = p->offsets[i] + counts[e];
        counts[e] = p->offsets[i];
    }
    for (int64_t i = 0; i < T * k; i++) p->row[i] = counts[expert[i]]++;
}

void mc_gather(const mc_gather_plan *p, const float *x, int64_t T, int k, int n_embd, float *gx) {
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < k; j++)
            memcpy(gx + p->row[t * k + j] * n_embd, x + t * n_embd, (size_t)n_embd * sizeof(float));
}

void mc_scatter_add(const mc_gather_plan *p, const float *gy, const float *weight, int64_t T, int k, int n_embd,
                    float *x) {
    /* The weighted sum of the experts is formed first and then added to the
     * residual, in the order transformers uses. */
    for (int64_t t = 0; t < T; t++) {
        float *xt = x + t * n_embd;
        const int64_t *rows = p->row + t * k;
        const float *w = weight + t * k;
        for (int i = 0; i < n_embd; i++) {
            float s = 0.0f;
            for (int j = 0; j < k; j++) s += w[j] * gy[rows[j] * n_embd + i];
            xt[i] += s;
        }
    }
}
