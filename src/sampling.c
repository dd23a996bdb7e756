/*
 * sampling.c - choosing the next token from logits.
 *
 *   logits[n_vocab]  (const; copied into the sampler's scratch)
 *      | keep entries > -inf (NaN counts as -inf) cand[n]: (id, logit), id order
 *      | repetition penalty on the distinct recent tokens
 *      +-- temperature <= 0 --> argmax, ties to the lowest id
 *      | top-k: min-heap of k, then sorted        cand[k], descending
 *      | temperature + softmax (max subtracted)   cand[i].v = exp((l - max) / T)
 *      | top-p, min-p: a prefix of the descending order
 *      v random draw (xoshiro256**) over what is left, renormalised
 *
 * Without top-k the candidates are never sorted: top-p is a quickselect
 * weighted by probability (expected O(n)), min-p a filter.
 */
#include "internal.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* The sampler                                                              */
/* ------------------------------------------------------------------------ */

typedef struct candidate {
    int32_t id;
    float v; /* a logit, then after softmax an unnormalised probability in [0, 1] */
} candidate;

struct moecl_sampler {
    moecl_sampler_params params;
    int32_t *history;     /* [params.repeat_last_n] ring of recent tokens; NULL if 0 */
    int32_t *recent;      /* [params.repeat_last_n] scratch: the history sorted */
    int32_t n_history;    /* entries held, <= repeat_last_n */
    int32_t history_next; /* slot the next token goes to */
    uint64_t rng[4];      /* xoshiro256** state */
    candidate *cand;      /* [cand_cap] scratch, grown to n_vocab, kept between calls */
    size_t cand_cap;
};

moecl_sampler_params moecl_sampler_default_params(void) {
    return (moecl_sampler_params){
        .temperature = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .seed = 0x5EED,
    };
}

/* ------------------------------------------------------------------------ */
/* Random numbers: xoshiro256** seeded through splitmix64                   */
/* ------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4]) {
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

static void rng_seed(uint64_t s[4], uint64_t seed) {
    /* splitmix64 never yields four zero words in a row, the one bad state. */
    for (int i = 0; i < 4; i++) s[i] = splitmix64(&seed);
}

/* ------------------------------------------------------------------------ */
/* Lifetime and history                                                     */
/* ------------------------------------------------------------------------ */

moecl_status moecl_sampler_new(const moecl_sampler_params *params, moecl_sampler **out) {
    if (!out) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_sampler_new: out is NULL");
    *out = NULL;
    moecl_sampler_params p = params ? *params : moecl_sampler_default_params();
    if (isnan(p.temperature) || isnan(p.top_p) || isnan(p.min_p))
        return mc_error(MOECL_ERR_INVALID_ARG, "sampler: temperature, top_p and min_p must not be NaN");
    if (!(p.repeat_penalty > 0.0f) || isinf(p.repeat_penalty))
        return mc_error(MOECL_ERR_INVALID_ARG, "sampler: repeat_penalty %g must be finite and > 0",
                        (double)p.repeat_penalty);
    if (p.repeat_last_n < 0)
        return mc_error(MOECL_ERR_INVALID_ARG, "sampler: repeat_last_n %d must be >= 0 (0: off)",
                        (int)p.repeat_last_n);

    moecl_sampler *s = calloc(1, sizeof *s);
    if (!s) return mc_error(MOECL_ERR_NOMEM, "sampler: out of memory");
    s->params = p;
    if (p.repeat_last_n > 0) {
        size_t bytes; /* history and recent in one block */
        if (mc_mul_size((size_t)p.repeat_last_n, 2 * sizeof *s->history, &bytes)) s->history = malloc(bytes);
        if (!s->history) {
            free(s);
            return mc_error(MOECL_ERR_NOMEM, "sampler: out of memory for a history of %d tokens",
                            (int)p.repeat_last_n);
        }
        s->recent = s->history + p.repeat_last_n;
    }
    rng_seed(s->rng, p.seed);
    *out = s;
    return MOECL_OK;
}

void moecl_sampler_free(moecl_sampler *sampler) {
    if (!sampler) return;
    free(sampler->history);
    free(sampler->cand);
    free(sampler);
}

void moecl_sampler_accept(moecl_sampler *sampler, int32_t token) {
    if (!sampler || !sampler->history) return;
    int32_t n = sampler->params.repeat_last_n;
    sampler->history[sampler->history_next] = token;
    sampler->history_next = (sampler->history_next + 1) % n;
    if (sampler->n_history < n) sampler->n_history++;
}

void moecl_sampler_reset(moecl_sampler *sampler) {
    if (!sampler) return;
    sampler->n_history = 0;
    sampler->history_next = 0;
    rng_seed(sampler->rng, sampler->params.seed);
}

/* ------------------------------------------------------------------------ */
/* Stages                                                                   */
/* ------------------------------------------------------------------------ */

/* The order every stage agrees on: larger value first, then lower id, so
 * that ties are broken the same way by greedy, top-k and top-p. */
static inline bool better(candidate a, candidate b) {
    return a.v > b.v || (a.v == b.v && a.id < b.id);
}

/* cand[i] = (i, logits[i]) for the entries that can be chosen at all,
 * v > -inf (false for NaN), in id order. Returns how many. */
static int32_t gather_candidates(candidate *cand, const float *logits, int32_t n_vocab) {
    int32_t m = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        float v = logits[i];
        cand[m] = (candidate){ .id = i, .v = v };
        m += v > -INFINITY; /* branch-free: the store is overwritten if not kept */
    }
    return m;
}

static int cmp_int32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* CTRL-style penalty (Keskar et al. 2019, as llama.cpp and HF apply it),
 * once per distinct token of the history: v > 0 -> v / penalty, else
 * v * penalty. cand is in id order, so the sorted distinct history is
 * found by binary searches that each start where the last one ended.
 * Returns the new count: a product may overflow to -inf, which is dropped. */
static int32_t apply_repeat_penalty(moecl_sampler *s, candidate *cand, int32_t n) {
    float penalty = s->params.repeat_penalty;
    int32_t nh = s->n_history;
    if (penalty == 1.0f || nh == 0) return n;
    memcpy(s->recent, s->history, (size_t)nh * sizeof *s->recent);
    qsort(s->recent, (size_t)nh, sizeof *s->recent, cmp_int32);
    bool overflow = false;
    int32_t lo = 0;
    for (int32_t i = 0; i < nh && lo < n; i++) {
        int32_t t = s->recent[i];
        if (i > 0 && t == s->recent[i - 1]) continue;
        int32_t hi = n; /* first position in [lo, n) with id >= t */
        while (lo < hi) {
            int32_t mid = lo + (hi - lo) / 2;
            if (cand[mid].id < t) lo = mid + 1;
            else hi = mid;
        }
        if (lo < n && cand[lo].id == t) {
            float v = cand[lo].v;
            cand[lo].v = v > 0.0f ? v / penalty : v * penalty;
            overflow |= cand[lo].v == -INFINITY;
        }
    }
    if (!overflow) return n;
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++)
        if (cand[i].v > -INFINITY) cand[m++] = cand[i];
    return m;
}

/* cand in id order: the first maximum has the lowest id. */
static int32_t argmax(const candidate *cand, int32_t n) {
    int32_t best = 0;
    float mx = cand[0].v;
    for (int32_t i = 1; i < n; i++)
        if (cand[i].v > mx) mx = cand[best = i].v;
    return best;
}

static inline void swap_cand(candidate *a, candidate *b) {
    candidate t = *a;
    *a = *b;
    *b = t;
}

/* Min-heap sift-down: the root is the worst of h[0..n). */
static void sift_down(candidate *h, int32_t n, int32_t i) {
    candidate x = h[i];
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && better(h[c], h[c + 1])) c++;
        if (!better(x, h[c])) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

/* Leave the k best of cand[0..n) in cand[0..k), sorted best first.
 * O(n log k): most entries lose against the heap's root and cost one
 * comparison. 0 < k < n. */
static void top_k(candidate *cand, int32_t n, int32_t k) {
    for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down(cand, k, i);
    for (int32_t i = k; i < n; i++) {
        if (better(cand[i], cand[0])) {
            cand[0] = cand[i];
            sift_down(cand, k, 0);
        }
    }
    /* Heapsort: each pop moves the worst left to the end of the heap. */
    for (int32_t m = k - 1; m > 0; m--) {
        swap_cand(&cand[0], &cand[m]);
        sift_down(cand, m, 0);
    }
}

/* Top-p without sorting: rearrange c[0..n) so that c[0..m) holds the m
 * best, where m is the smallest count whose weights add up to >= target
 * (at least 1), and return m. A quickselect that, after each partition,
 * keeps the side where the cumulative mass crosses target: expected O(n),
 * however wide the nucleus. Weights are unnormalised, like target. */
static int32_t top_p_quickselect(candidate *c, int32_t n, double target) {
    int32_t lo = 0, hi = n;
    double acc = 0; /* mass of c[0..lo), all inside the nucleus */
    while (hi - lo > 16) {
        /* Median of three as the pivot, parked at hi - 1. */
        int32_t mid = lo + (hi - lo) / 2;
        if (better(c[mid], c[lo])) swap_cand(&c[mid], &c[lo]);
        if (better(c[hi - 1], c[lo])) swap_cand(&c[hi - 1], &c[lo]);
        if (better(c[mid], c[hi - 1])) swap_cand(&c[mid], &c[hi - 1]);
        candidate pivot = c[hi - 1];
        /* c[lo..j) better than the pivot, then the pivot at j, then worse. */
        int32_t j = lo;
        double upper = 0;
        for (int32_t i = lo; i < hi - 1; i++) {
            if (better(c[i], pivot)) {
                upper += c[i].v;
                swap_cand(&c[i], &c[j++]);
            }
        }
        swap_cand(&c[j], &c[hi - 1]);
        if (j > lo && acc + upper >= target) {
            hi = j;             /* crossing among the better ones */
        } else if (acc + upper + pivot.v >= target) {
            return j + 1;       /* the pivot crosses */
        } else {
            acc += upper + pivot.v;
            lo = j + 1;         /* all of c[0..j] is in; look further down */
        }
    }
    for (int32_t i = lo + 1; i < hi; i++) /* what is left: insertion sort, then walk */
        for (int32_t k = i; k > lo && better(c[k], c[k - 1]); k--) swap_cand(&c[k], &c[k - 1]);
    for (int32_t i = lo; i < hi; i++) {
        acc += c[i].v;
        if (acc >= target) return i + 1;
    }
    return hi; /* rounding kept the walk below target: all of what is left */
}

/* Weights in [0, 1] by their top 12 bits (exponent and 3 mantissa bits):
 * the bit patterns of non-negative floats are ordered like the floats, so
 * buckets are too, each spanning a factor of at most 2^(1/8). */
#define N_WEIGHT_BUCKETS ((0x3f800000 >> 20) + 1) /* up to the bucket of 1.0f */

static inline int weight_bucket(float w) {
    union { float f; uint32_t u; } b = { .f = w };
    return (int)(b.u >> 20);
}

/* top_p_quickselect's result in fewer passes over a large vocabulary: the
 * mass per weight bucket finds the bucket where the cumulative mass crosses
 * target; what lies above it is in, below it out, and only that one bucket
 * (usually a few hundred entries) needs the quickselect. */
static int32_t top_p_select(candidate *c, int32_t n, double target) {
    if (n < 1024) return top_p_quickselect(c, n, target);
    double mass[N_WEIGHT_BUCKETS] = {0};
    for (int32_t i = 0; i < n; i++) mass[weight_bucket(c[i].v)] += c[i].v;
    double acc = 0; /* mass of the buckets above b */
    int b = N_WEIGHT_BUCKETS - 1;
    while (b >= 0 && !(mass[b] > 0 && acc + mass[b] >= target)) acc += mass[b--];
    if (b < 0) return n; /* rounding kept the total below target: everything */
    int32_t above = 0, end;
    for (int32_t i = 0; i < n; i++)
        if (weight_bucket(c[i].v) > b) swap_cand(&c[i], &c[above++]);
    end = above;
    for (int32_t i = above; i < n; i++)
        if (weight_bucket(c[i].v) == b) swap_cand(&c[i], &c[end++]);
    return above + top_p_quickselect(c + above, end - above, target - acc);
}

/* Temperature and softmax in one pass: v <- exp((v - max) / T), so the
 * largest becomes exactly 1 (also when it is +inf) and nothing overflows.
 * x is NaN only for finite v beside a +inf max with T = +inf: weight 0.
 * Returns the sum, for normalisation later. */
static double softmax_unnormalised(candidate *cand, int32_t n, float temperature) {
    float mx = cand[0].v;
    for (int32_t i = 1; i < n; i++)
        if (cand[i].v > mx) mx = cand[i].v;
    float inv_t = 1.0f / temperature; /* +inf for a tiny T: x is then -inf, weight 0 */
    double sum = 0;
    for (int32_t i = 0; i < n; i++) {
        float v = cand[i].v;
        float x = (v - mx) * inv_t;
        float w = v == mx ? 1.0f : x >= -FLT_MAX ? expf(x) : 0.0f;
        cand[i].v = w;
        sum += w;
    }
    return sum;
}

/* Draw from cand[0..n) with probabilities proportional to v. */
static int32_t draw(moecl_sampler *s, const candidate *cand, int32_t n) {
    double sum = 0;
    for (int32_t i = 0; i < n; i++) sum += cand[i].v;
    double u = rng_uniform(s->rng) * sum;
    double acc = 0;
    int32_t last = 0; /* the last entry with weight, should rounding leave acc <= u */
    for (int32_t i = 0; i < n; i++) {
        if (cand[i].v <= 0.0f) continue;
        acc += cand[i].v;
        last = i;
        if (acc > u) return cand[i].id;
    }
    return cand[last].id;
}

/* Everything after the repetition penalty when temperature > 0. */
static int32_t sample_stochastic(moecl_sampler *s, candidate *cand, int32_t n) {
    const moecl_sampler_params *p = &s->params;
    bool sorted = false;
    if (p->top_k > 0 && p->top_k < n) {
        top_k(cand, n, p->top_k);
        n = p->top_k;
        sorted = true;
    }
    double sum = softmax_unnormalised(cand, n, p->temperature);

    /* The top weight is exactly 1, so min-p compares weights with min_p
     * itself; capped at 1 so the top token always survives. */
    float min_w = p->min_p > 0.0f ? fminf(p->min_p, 1.0f) : 0.0f;
    bool use_top_p = p->top_p < 1.0f;
    double nucleus = (double)p->top_p * sum; /* top-p mass in unnormalised units */

    if (sorted) {
        /* The prefix top-p keeps, cut further by min-p. */
        int32_t m = 0;
        double acc = 0;
        while (m < n) {
            if (m > 0 && cand[m].v < min_w) break;
            acc += cand[m++].v;
            if (use_top_p && acc >= nucleus) break;
        }
        return draw(s, cand, m);
    }
    if (use_top_p) n = top_p_select(cand, n, nucleus);
    /* What min-p cuts from a descending prefix is exactly what falls below
     * min_w, so unsorted it is a filter. The best (weight 1) stays. */
    if (min_w > 0.0f) {
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++)
            if (cand[i].v >= min_w) cand[m++] = cand[i];
        n = m;
    }
    return draw(s, cand, n);
}

/* ------------------------------------------------------------------------ */
/* Sampling                                                                 */
/* ------------------------------------------------------------------------ */

moecl_status moecl_sampler_sample(moecl_sampler *sampler, const float *logits, int32_t n_vocab,
                                  int32_t *out_token) {
    if (!sampler || !logits || !out_token)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_sampler_sample: NULL argument");
    if (n_vocab <= 0)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_sampler_sample: n_vocab %d must be > 0", (int)n_vocab);

    if ((size_t)n_vocab > sampler->cand_cap) {
        size_t bytes;
        if (!mc_mul_size((size_t)n_vocab, sizeof(candidate), &bytes))
            return mc_error(MOECL_ERR_NOMEM, "sampler: n_vocab %d too large", (int)n_vocab);
        candidate *c = malloc(bytes);
        if (!c) return mc_error(MOECL_ERR_NOMEM, "sampler: out of memory for %d candidates", (int)n_vocab);
        free(sampler->cand);
        sampler->cand = c;
        sampler->cand_cap = (size_t)n_vocab;
    }
    candidate *cand = sampler->cand;
    int32_t n = gather_candidates(cand, logits, n_vocab);
    n = apply_repeat_penalty(sampler, cand, n);
    if (n == 0)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_sampler_sample: all %d logits are -inf or NaN",
                        (int)n_vocab);

    int32_t token = sampler->params.temperature > 0.0f ? sample_stochastic(sampler, cand, n)
                                                       : cand[argmax(cand, n)].id;
    moecl_sampler_accept(sampler, token);
    *out_token = token;
    return MOECL_OK;
}
