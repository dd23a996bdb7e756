/*
 * ops.h - the host-side steps of the forward pass: normalisation, rotary
 * embeddings, attention over the KV cache (attention.c) and routing with
 * gather/scatter (router.c).
 */
#ifndef MOECL_OPS_H
#define MOECL_OPS_H

#include "internal.h"
#include "util/threadpool.h"

/* ---- attention.c ----------------------------------------------------------- */

/* out[i] = w[i] * x[i] / sqrt(mean(x²) + eps), for n elements (out may be x). */
void mc_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);

/* Rotate-half RoPE as transformers applies it, in place, on n_heads heads of
 * head_dim values at position pos: for i < head_dim/2, with
 * θ_i = pos · theta^(-2i/head_dim) computed in float32 like transformers:
 *   x[i]          ← x[i]·cos θ_i − x[i + head_dim/2]·sin θ_i
 *   x[i + hd/2]   ← x[i + head_dim/2]·cos θ_i + x[i]·sin θ_i            */
void mc_rope(float *x, int n_heads, int head_dim, int32_t pos, float theta, bool interleaved);

/* Causal grouped-query attention for T tokens over one layer's KV cache.
 * Token t belongs to sequence seq[t] at position pos[t]; its keys are the
 * cached positions j <= pos[t] of that sequence (and j > pos[t] - window
 * when window > 0), read through the sequence's block table
 * (mc_kv_row(kv, seq, layer, ..., j): F32 or F16 cells, kv_cache.h).
 * q: [T, n_head * head_dim] after RoPE; out: same shape.
 * Runs on n_threads threads of pool (NULL: the calling thread alone).
 * scratch: n_threads * n_ctx floats (n_ctx: the most positions of a sequence). */
struct mc_kv;
typedef struct mc_attn_args {
    int64_t T;
    int n_head, n_head_kv, head_dim;
    int32_t n_ctx, window;
    const int32_t *seq, *pos;  /* [T] */
    const float *q;            /* [T, n_head * head_dim] */
    const struct mc_kv *kv;    /* the cache; every position read must be held */
    int layer;
    float *out;                /* [T, n_head * head_dim] */
    float *scratch;
    int n_threads;
    mc_pool *pool;
} mc_attn_args;
void mc_attention(const mc_attn_args *a);

/* ---- router.c --------------------------------------------------------------- */

/* Numerically safe softmax in place (max subtracted; -inf entries give 0). */
void mc_softmax(float *x, int n);

/* The k largest of v[0..n) in descending order; equal values are taken in
 * increasing index order. idx[k], val[k]. 1 <= k <= n. */
void mc_topk(const float *v, int n, int k, int32_t *idx, float *val);

/* Mixtral routing for T tokens: router logits xn·Wᵀ (float32 weights,
 * double accumulation), softmax in float32, top-k, weights renormalised to
 * sum to 1. expert/weight: [T, k]. */
void mc_route(const float *xn, const float *router_w, int64_t T, int n_embd, int n_expert, int k,
              int32_t *expert, float *weight);
/* The same with the family's rule: renorm false keeps the top-k softmax
 * probabilities as they are (they sum to less than 1). */
void mc_route_rule(const float *xn, const float *router_w, int64_t T, int n_embd, int n_expert, int k, bool renorm,
                   int32_t *expert, float *weight);
/* The rule on router logits already computed (the decode loop's come from
 * the backend's float32 matrix product, threaded, SGEMM for prompts):
 * logits [T, n_expert], overwritten by the softmax. */
void mc_route_logits(float *logits, int64_t T, int n_expert, int k, bool renorm, int32_t *expert, float *weight);

/* The gather plan: the T*k (token, expert) pairs ordered by expert group,
 * where group_of[e] orders the experts (e.g. by the backend that holds them;
 * experts with equal group are ordered by id).
 *   order[0..n_used): the experts with at least one token, in plan order
 *   offsets[0..n_used]: row ranges of each in the gathered matrix
 *   row[t*k + j]: the gathered row of pair (t, j)                        */
typedef struct mc_gather_plan {
    int n_used;
    int32_t *order;    /* [n_expert] */
    int64_t *offsets;  /* [n_expert + 1] */
    int64_t *row;      /* [T * k] */
} mc_gather_plan;
void mc_gather_plan_build(mc_gather_plan *p, const int32_t *expert, int64_t T, int k, int n_expert,
                          const uint8_t *group_of, int64_t *counts_scratch);

/* gx[row[t*k+j]] = x[t] for every pair. */
void mc_gather(const mc_gather_plan *p, const float *x, int64_t T, int k, int n_embd, float *gx);
/* x[t] += Σ_j weight[t*k+j] · gy[row[t*k+j]]. */
void mc_scatter_add(const mc_gather_plan *p, const float *gy, const float *weight, int64_t T, int k, int n_embd,
                    float *x);

#endif
