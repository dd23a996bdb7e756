/*
 * test_sampling.c - the sampler: argument handling, greedy and the
 * repetition penalty exactly, every truncation stage statistically (chi-square
 * of 200k draws against probabilities computed here in double), determinism,
 * extreme logits, and the time of one call at n_vocab = 32000.
 */
#include "moecl.h"
#include "test_util.h"

#include <string.h>
#include <time.h>

static int n_draws = 200000; /* per chi-square test; fewer over large vocabularies */
#define MAX_VOCAB 4096 /* of the statistical tests */

/* Chi-square quantile at p = 1e-4 for df degrees of freedom: a correct
 * sampler fails one of these checks once in 10,000 seeds; the seeds are
 * fixed. Exact values up to df 8, Wilson-Hilferty above. */
static double chi2_crit(int df) {
    static const double exact[] = {0, 15.14, 18.42, 21.11, 23.51, 25.74, 27.86, 29.88, 31.83};
    if (df <= 8) return exact[df < 0 ? 0 : df];
    double a = 2.0 / (9.0 * df), z = 3.719;
    return df * pow(1 - a + z * sqrt(a), 3);
}

static moecl_sampler_params plain_params(float temperature) {
    moecl_sampler_params p = moecl_sampler_default_params();
    p.temperature = temperature;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    return p;
}

static moecl_sampler *make(const moecl_sampler_params *p) {
    moecl_sampler *s = NULL;
    moecl_status st = moecl_sampler_new(p, &s);
    CHECK(st == MOECL_OK && s != NULL);
    if (!s) exit(1);
    return s;
}

static int32_t sample1(moecl_sampler *s, const float *logits, int32_t n) {
    int32_t tok = -1;
    moecl_status st = moecl_sampler_sample(s, logits, n, &tok);
    CHECKF(st == MOECL_OK, "status %d", (int)st);
    return tok;
}

/* ---- reference distribution ------------------------------------------------- */

/* The probabilities the stages should give, by the obvious method: full sort,
 * double precision. No repetition penalty (tested exactly, separately). */
static void reference_probs(const float *logits, int n, const moecl_sampler_params *p, double *prob) {
    static int order[MAX_VOCAB];
    static double w[MAX_VOCAB];
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++) /* insertion sort: descending logit, then id */
        for (int j = i; j > 0 && logits[order[j]] > logits[order[j - 1]]; j--) {
            int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
        }
    int keep = n;
    if (p->top_k > 0 && p->top_k < n) keep = p->top_k;
    double sum = 0;
    for (int r = 0; r < keep; r++) {
        w[r] = exp(((double)logits[order[r]] - logits[order[0]]) / p->temperature);
        sum += w[r];
    }
    int m = keep;
    if (p->top_p < 1.0f) {
        double acc = 0;
        for (m = 0; m < keep;) {
            acc += w[m++] / sum;
            if (acc >= p->top_p) break;
        }
    }
    if (p->min_p > 0.0f) {
        int m2 = 1;
        while (m2 < m && w[m2] / sum >= p->min_p * w[0] / sum) m2++;
        m = m2;
    }
    double kept = 0;
    for (int r = 0; r < m; r++) kept += w[r];
    for (int i = 0; i < n; i++) prob[i] = 0;
    for (int r = 0; r < m; r++) prob[order[r]] = w[r] / kept;
}

/* Draw n_draws tokens and return the chi-square statistic against prob;
 * *df gets the degrees of freedom, *impossible the draws of p = 0 tokens. */
static double chi_square(const float *logits, int n, const moecl_sampler_params *p, const double *prob, int *df,
                         long *impossible) {
    moecl_sampler *s = make(p);
    static long count[MAX_VOCAB];
    memset(count, 0, sizeof count);
    for (int i = 0; i < n_draws; i++) {
        int32_t tok = sample1(s, logits, n);
        if (tok >= 0 && tok < n) count[tok]++;
    }
    moecl_sampler_free(s);
    double chi2 = 0;
    int cells = 0;
    *impossible = 0;
    for (int i = 0; i < n; i++) {
        if (prob[i] > 0) {
            double e = prob[i] * n_draws;
            chi2 += (count[i] - e) * (count[i] - e) / e;
            cells++;
        } else {
            *impossible += count[i];
        }
    }
    *df = cells - 1;
    return chi2;
}

static int n_nonzero(const double *prob, int n) {
    int k = 0;
    for (int i = 0; i < n; i++) k += prob[i] > 0;
    return k;
}

/* Check the sampler against the reference; expect_kept: tokens with p > 0. */
static void check_distribution(const char *what, const float *logits, int n, const moecl_sampler_params *p,
                               int expect_kept) {
    static double prob[MAX_VOCAB];
    reference_probs(logits, n, p, prob);
    CHECKF(n_nonzero(prob, n) == expect_kept, "%s: reference keeps %d, expected %d", what, n_nonzero(prob, n),
           expect_kept);
    int df;
    long impossible;
    double chi2 = chi_square(logits, n, p, prob, &df, &impossible);
    fprintf(stderr, "  %-38s chi2 %7.2f  df %2d  (bound %.2f)\n", what, chi2, df, chi2_crit(df));
    CHECKF(impossible == 0, "%s: %ld draws of excluded tokens", what, impossible);
    if (df >= 1) CHECKF(chi2 < chi2_crit(df), "%s: chi2 %.2f >= %.2f (df %d)", what, chi2, chi2_crit(df), df);
}

/* ---- tests ------------------------------------------------------------------ */

static void test_defaults_and_args(void) {
    moecl_sampler_params d = moecl_sampler_default_params();
    CHECK(d.temperature == 0.8f && d.top_k == 40 && d.top_p == 0.95f && d.min_p == 0.05f);
    CHECK(d.repeat_penalty == 1.0f && d.repeat_last_n == 64 && d.seed == 0x5EED);

    moecl_sampler_free(NULL);
    moecl_sampler_accept(NULL, 3);
    moecl_sampler_reset(NULL);

    CHECK(moecl_sampler_new(NULL, NULL) == MOECL_ERR_INVALID_ARG);
    moecl_sampler *s = (moecl_sampler *)1;
    moecl_sampler_params bad = d;
    bad.temperature = NAN;
    CHECK(moecl_sampler_new(&bad, &s) == MOECL_ERR_INVALID_ARG && s == NULL);
    bad = d;
    bad.repeat_penalty = 0.0f;
    CHECK(moecl_sampler_new(&bad, &s) == MOECL_ERR_INVALID_ARG);
    bad = d;
    bad.repeat_last_n = -1;
    CHECK(moecl_sampler_new(&bad, &s) == MOECL_ERR_INVALID_ARG);

    CHECK(moecl_sampler_new(NULL, &s) == MOECL_OK && s != NULL);
    float logits[4] = {0.1f, 0.2f, 0.3f, 0.4f};
    int32_t tok = 123;
    CHECK(moecl_sampler_sample(NULL, logits, 4, &tok) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_sampler_sample(s, NULL, 4, &tok) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_sampler_sample(s, logits, 4, NULL) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_sampler_sample(s, logits, 0, &tok) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_sampler_sample(s, logits, -5, &tok) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_sampler_sample(s, logits, 4, &tok) == MOECL_OK && tok >= 0 && tok < 4);
    CHECK(moecl_sampler_sample(s, logits, 1, &tok) == MOECL_OK && tok == 0);
    moecl_sampler_free(s);
}

static void test_greedy(void) {
    moecl_sampler_params p = plain_params(0.0f);
    moecl_sampler *s = make(&p);
    float a[6] = {0.5f, -1.0f, 3.0f, 2.9f, 3.0f, 1.0f};
    CHECK(sample1(s, a, 6) == 2); /* tie between 2 and 4: the lower id */
    float b[5] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
    CHECK(sample1(s, b, 5) == 0);
    float c[4] = {-INFINITY, -2.0f, -INFINITY, -2.0f};
    CHECK(sample1(s, c, 4) == 1);
    moecl_sampler_free(s);

    p.temperature = -1.0f; /* any value <= 0 */
    s = make(&p);
    CHECK(sample1(s, a, 6) == 2);
    moecl_sampler_free(s);
}

static void test_repeat_penalty(void) {
    /* Greedy honours the penalty, and sample() records what it picked. */
    moecl_sampler_params p = plain_params(0.0f);
    p.repeat_penalty = 1.5f;
    p.repeat_last_n = 4;
    moecl_sampler *s = make(&p);
    float a[3] = {1.0f, 0.9f, 0.1f};
    CHECK(sample1(s, a, 3) == 0);  /* nothing in history yet */
    CHECK(sample1(s, a, 3) == 1);  /* 1.0 / 1.5 = 0.67 < 0.9 */
    CHECK(sample1(s, a, 3) == 0);  /* both penalised: 0.67 > 0.6 > 0.1 */
    /* The ring forgets: four other tokens push 0 and 1 out of the window. */
    for (int i = 0; i < 4; i++) moecl_sampler_accept(s, 2);
    CHECK(sample1(s, a, 3) == 0);
    moecl_sampler_reset(s); /* forgets the history too */
    moecl_sampler_accept(s, 0);
    CHECK(sample1(s, a, 3) == 1);
    moecl_sampler_reset(s);
    CHECK(sample1(s, a, 3) == 0);
    moecl_sampler_free(s);

    /* Sign rule: positive logits are divided, negative ones multiplied, so
     * the penalty always lowers a token. */
    p.repeat_last_n = 8;
    p.repeat_penalty = 1.5f;
    s = make(&p);
    float neg[2] = {-1.0f, -1.2f};
    moecl_sampler_accept(s, 0);
    CHECK(sample1(s, neg, 2) == 1);  /* -1.5 < -1.2; dividing would give -0.67 */
    moecl_sampler_reset(s);
    float pos[2] = {2.0f, 1.5f};
    moecl_sampler_accept(s, 0);
    CHECK(sample1(s, pos, 2) == 1);  /* 1.33 < 1.5 */
    moecl_sampler_free(s);

    /* Once per distinct token, however often it repeats; ids outside the
     * vocabulary in the history are ignored. */
    p.repeat_penalty = 1.2f;
    s = make(&p);
    moecl_sampler_accept(s, 0);
    moecl_sampler_accept(s, 0);
    moecl_sampler_accept(s, 0);
    moecl_sampler_accept(s, -7);
    moecl_sampler_accept(s, 1000);
    CHECK(sample1(s, pos, 2) == 0);  /* 2 / 1.2 = 1.67 > 1.5; thrice: 1.16 */
    moecl_sampler_free(s);

    /* repeat_last_n 0 or penalty 1: off. */
    p.repeat_last_n = 0;
    p.repeat_penalty = 10.0f;
    s = make(&p);
    moecl_sampler_accept(s, 0);
    CHECK(sample1(s, pos, 2) == 0);
    CHECK(sample1(s, pos, 2) == 0);
    moecl_sampler_free(s);
    p.repeat_last_n = 8;
    p.repeat_penalty = 1.0f;
    s = make(&p);
    CHECK(sample1(s, pos, 2) == 0);
    CHECK(sample1(s, pos, 2) == 0);
    moecl_sampler_free(s);

    /* The penalty comes before the draw too: token 0 dominates until
     * penalised to 5 / 100 against 1. */
    p = plain_params(1.0f);
    p.repeat_penalty = 100.0f;
    p.repeat_last_n = 1;
    s = make(&p);
    float d[2] = {5.0f, 1.0f};
    int zeros = 0;
    for (int i = 0; i < 10000; i++) {
        moecl_sampler_accept(s, 0);
        zeros += sample1(s, d, 2) == 0;
    }
    /* p = 1 / (1 + e^0.95) = 0.2789 (0.982 unpenalised); 5 sigma = 224 */
    CHECKF(abs(zeros - 2789) < 224, "penalised token drawn %d / 10000 times (expected ~2789)", zeros);
    moecl_sampler_free(s);
}

static void test_top_k1_is_greedy(void) {
    uint64_t rs = 11;
    float logits[1000];
    const float temps[] = {0.05f, 0.7f, 1.0f, 5.0f, 100.0f};
    moecl_sampler_params g = plain_params(0.0f);
    moecl_sampler *greedy = make(&g);
    int mismatches = 0;
    for (int ti = 0; ti < 5; ti++) {
        moecl_sampler_params p = plain_params(temps[ti]);
        p.top_k = 1;
        moecl_sampler *s = make(&p);
        for (int rep = 0; rep < 50; rep++) {
            for (int i = 0; i < 1000; i++) logits[i] = roundf(t_rand_f(&rs) * 20.0f); /* many ties */
            if (sample1(s, logits, 1000) != sample1(greedy, logits, 1000)) mismatches++;
        }
        moecl_sampler_free(s);
    }
    CHECKF(mismatches == 0, "top-k 1 differs from greedy %d times", mismatches);
    moecl_sampler_free(greedy);
}

static void test_top_p_tiny(void) {
    float logits[5] = {1.0f, 2.0f, 0.5f, -1.0f, 1.9f}; /* the max holds ~37% */
    const float tiny[] = {1e-6f, 0.0f};
    for (int k = 0; k < 2; k++) {
        for (int top_k = 0; top_k <= 4; top_k += 4) { /* heap path and sorted path */
            moecl_sampler_params p = plain_params(1.0f);
            p.top_p = tiny[k];
            p.top_k = top_k;
            moecl_sampler *s = make(&p);
            int other = 0;
            for (int i = 0; i < 10000; i++) other += sample1(s, logits, 5) != 1;
            CHECKF(other == 0, "top_p %g top_k %d: %d draws not the max", (double)tiny[k], top_k, other);
            moecl_sampler_free(s);
        }
    }
}

static void test_min_p(void) {
    /* Weights relative to the max: 1, 0.5, 0.2, 0.05. */
    float logits[4] = {0, logf(0.5f), logf(0.2f), logf(0.05f)};
    moecl_sampler_params p = plain_params(1.0f);
    p.min_p = 0.3f;
    check_distribution("min-p 0.3 (keeps 2)", logits, 4, &p, 2);
    p.top_k = 3; /* the sorted path */
    check_distribution("top-k 3, min-p 0.3 (keeps 2)", logits, 4, &p, 2);
    p.top_k = 0;
    p.min_p = 0.1f;
    check_distribution("min-p 0.1 (keeps 3)", logits, 4, &p, 3);
    p.min_p = 0.3f;
    p.top_p = 0.99f; /* top-p keeps all 4, min-p cuts to 2: the heap path */
    check_distribution("top-p 0.99, min-p 0.3 (keeps 2)", logits, 4, &p, 2);
    p.top_p = 1.0f;
    p.min_p = 2.0f; /* more than the max itself: the max survives */
    check_distribution("min-p 2 (keeps the max)", logits, 4, &p, 1);
    p.min_p = 0.6f;
    check_distribution("min-p 0.6 (keeps 1)", logits, 4, &p, 1);
    p.top_k = 3;
    check_distribution("top-k 3, min-p 0.6 (keeps 1)", logits, 4, &p, 1);
}

/* The exact set top-p keeps, over many sizes (both selection methods) and
 * values: logits within +-0.25 give every token at least 1/(e^0.5 kept) of
 * the nucleus, so 30 draws per kept token must hit each of them (each is
 * missed with probability < e^-18) and nothing else. */
static void test_top_p_exact_set(void) {
    static float logits[1500];
    static double prob[1500];
    static char seen[1500];
    uint64_t rs = 4242;
    const int sizes[] = {17, 18, 33, 100, 257, 1023, 1024, 1500};
    int bad_sets = 0, configs = 0;
    for (int si = 0; si < 8; si++) {
        int n = sizes[si];
        for (int rep = 0; rep < (n > 300 ? 2 : 6); rep++) {
            for (int i = 0; i < n; i++) logits[i] = 0.25f * t_rand_f(&rs);
            if (rep & 1) /* ties: 5 distinct values */
                for (int i = 0; i < n; i++) logits[i] = roundf(logits[i] * 8.0f) / 8.0f;
            moecl_sampler_params p = plain_params(1.0f);
            p.top_p = 0.05f + 0.9f * (t_rand_f(&rs) + 1.0f) / 2.0f;
            p.seed = rs;
            reference_probs(logits, n, &p, prob);
            int kept = n_nonzero(prob, n);
            moecl_sampler *s = make(&p);
            memset(seen, 0, sizeof seen);
            for (int d = 0; d < 30 * kept; d++) seen[sample1(s, logits, n)] = 1;
            moecl_sampler_free(s);
            int wrong = 0;
            for (int i = 0; i < n; i++) wrong += seen[i] != (prob[i] > 0);
            configs++;
            if (wrong) {
                bad_sets++;
                fprintf(stderr, "  top-p %.3f over %d tokens: %d tokens wrongly in or out (reference keeps %d)\n",
                        (double)p.top_p, n, wrong, kept);
            }
        }
    }
    CHECKF(bad_sets == 0, "%d of %d top-p sets differ from the reference", bad_sets, configs);
}

static void test_distributions(void) {
    float logits[5] = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f};
    moecl_sampler_params p = plain_params(1.0f);
    check_distribution("T 1, no truncation", logits, 5, &p, 5);

    p.top_k = 2;
    check_distribution("T 1, top-k 2", logits, 5, &p, 2);

    /* A top-p between the mass of the best 2 and the best 3 keeps exactly 3. */
    double prob[5];
    p.top_k = 0;
    reference_probs(logits, 5, &p, prob);
    double top3 = prob[1] + prob[4] + prob[0]; /* order: 1, 4, 0, 2, 3 */
    double top2 = prob[1] + prob[4];
    p.top_p = (float)((top2 + top3) / 2);
    check_distribution("T 1, top-p keeping 3", logits, 5, &p, 3);
    p.top_k = 4;
    /* The same set after top-k 4: mass renormalised over 4 first. */
    double w[4] = {exp(2.0), exp(1.5), exp(1.0), exp(0.5)}, ws = w[0] + w[1] + w[2] + w[3];
    p.top_p = (float)(((w[0] + w[1]) / ws + (w[0] + w[1] + w[2]) / ws) / 2);
    check_distribution("T 1, top-k 4, top-p keeping 3", logits, 5, &p, 3);

    /* top_k >= n_vocab keeps all. */
    p = plain_params(1.0f);
    p.top_k = 5;
    check_distribution("T 1, top-k 5 = n_vocab", logits, 5, &p, 5);
    p.top_k = 1000;
    check_distribution("T 1, top-k 1000 > n_vocab", logits, 5, &p, 5);

    /* Temperature: matches exp(l / T), and is far from the T = 1 distribution. */
    const float temps[] = {0.5f, 2.0f};
    double p1[5];
    moecl_sampler_params one = plain_params(1.0f);
    reference_probs(logits, 5, &one, p1);
    for (int i = 0; i < 2; i++) {
        p = plain_params(temps[i]);
        char what[64];
        snprintf(what, sizeof what, "T %.1f, no truncation", (double)temps[i]);
        check_distribution(what, logits, 5, &p, 5);
        int df;
        long impossible;
        double chi2_vs_t1 = chi_square(logits, 5, &p, p1, &df, &impossible);
        CHECKF(chi2_vs_t1 > 1000, "T %.1f: draws look like T 1 (chi2 %.1f)", (double)temps[i], chi2_vs_t1);
    }
    p = plain_params(0.5f);
    p.top_k = 3;
    p.top_p = 0.8f; /* weights 1, e^-1, e^-2: cumulative 0.665, 0.910 */
    check_distribution("T 0.5, top-k 3, top-p 0.8 (keeps 2)", logits, 5, &p, 2);
}

/* More than 16 candidates: top-p without top-k partitions (quickselect)
 * instead of only insertion-sorting. Ties on purpose, across the cut too:
 * they go to the lower id. */
static void test_wide_vocab(void) {
    enum { N = 48 };
    float logits[N];
    uint64_t rs = 77;
    for (int i = 0; i < N; i++) logits[i] = roundf(t_rand_f(&rs) * 6.0f) * 0.5f; /* 25 distinct values */
    const float top_ps[] = {0.3f, 0.5f, 0.8f, 0.95f};
    n_draws = 50000;
    for (int i = 0; i < 4; i++) {
        for (int with_min_p = 0; with_min_p < 2; with_min_p++) {
            moecl_sampler_params p = plain_params(1.0f);
            p.top_p = top_ps[i];
            p.min_p = with_min_p ? 0.1f : 0.0f;
            double prob[N];
            reference_probs(logits, N, &p, prob);
            int kept = n_nonzero(prob, N);
            CHECK(kept > 1 && kept < N);
            char what[80];
            snprintf(what, sizeof what, "48 tokens, top-p %.2f%s (keeps %d)", (double)top_ps[i],
                     with_min_p ? ", min-p 0.1" : "", kept);
            check_distribution(what, logits, N, &p, kept);
            p.top_k = 40; /* the sorted path, same nucleus if it holds fewer than 40 */
            reference_probs(logits, N, &p, prob);
            snprintf(what, sizeof what, "  same after top-k 40 (keeps %d)", n_nonzero(prob, N));
            check_distribution(what, logits, N, &p, n_nonzero(prob, N));
        }
    }
    n_draws = 200000;
}

/* Large vocabularies: top-p without top-k first buckets the weights. */
static void test_large_vocab(void) {
    enum { N = MAX_VOCAB };
    static float logits[N];
    static double prob[N];
    uint64_t rs = 31;
    /* 40 strong tokens on a grid of 0.25 (ties), the rest far below. */
    for (int i = 0; i < N; i++) logits[i] = -4.0f + 4.0f * (t_rand_f(&rs) + 1.0f) / 2.0f;
    for (int i = 0; i < 40; i++) logits[(i * 97 + 13) % N] = 4.0f + roundf((t_rand_f(&rs) + 1.0f) * 8.0f) * 0.25f;
    const float top_ps[] = {0.5f, 0.8f, 0.9f};
    n_draws = 20000; /* every kept token still expects > 100 */
    for (int i = 0; i < 3; i++) {
        moecl_sampler_params p = plain_params(1.0f);
        p.top_p = top_ps[i];
        reference_probs(logits, N, &p, prob);
        int kept = n_nonzero(prob, N);
        CHECK(kept > 1 && kept < 60);
        char what[80];
        snprintf(what, sizeof what, "4096 tokens, top-p %.2f (keeps %d)", (double)top_ps[i], kept);
        check_distribution(what, logits, N, &p, kept);
    }
    n_draws = 200000;

    /* All equal: ties all the way, one bucket holds everything, and top-p
     * 0.5 keeps exactly the lower half of the ids. */
    for (int i = 0; i < N; i++) logits[i] = 2.5f;
    moecl_sampler_params p = plain_params(1.0f);
    p.top_p = 0.5f;
    moecl_sampler *s = make(&p);
    int32_t lo = N, hi = -1;
    for (int i = 0; i < 2000; i++) { /* misses id 0..9 or 2038..2047 with p < e^-9.8 */
        int32_t t = sample1(s, logits, N);
        if (t < lo) lo = t;
        if (t > hi) hi = t;
    }
    CHECKF(lo < 10 && hi >= N / 2 - 10 && hi < N / 2, "all equal, top-p 0.5: drew ids %d..%d, expected 0..%d",
           (int)lo, (int)hi, N / 2 - 1);
    moecl_sampler_free(s);
}

static void test_extremes(void) {
    moecl_sampler_params p = plain_params(1.0f);
    /* Large logits: only differences matter, nothing overflows. */
    float big[5] = {1e4f, 1e4f - 1.0f, 0.0f, -INFINITY, 1e4f - 2.0f};
    check_distribution("logits near 1e4, one -inf", big, 5, &p, 3); /* token 2: e^-10000 = 0 */
    float bigneg[3] = {-1e4f, -1e4f - 1.0f, -3e38f};
    check_distribution("logits near -1e4 and -3e38", bigneg, 3, &p, 2);

    /* NaN counts as -inf; +inf takes everything. */
    moecl_sampler *s = make(&p);
    float withnan[3] = {NAN, 0.0f, NAN};
    float withinf[3] = {1.0f, INFINITY, 5.0f};
    int bad = 0;
    for (int i = 0; i < 1000; i++) {
        bad += sample1(s, withnan, 3) != 1;
        bad += sample1(s, withinf, 3) != 1;
    }
    CHECKF(bad == 0, "%d draws of a NaN token or beside an +inf one", bad);
    moecl_sampler_free(s);

    /* Nothing possible: an error, for greedy and sampling alike. */
    float none[4] = {-INFINITY, NAN, -INFINITY, -INFINITY};
    float nans[2] = {NAN, NAN};
    for (int g = 0; g < 2; g++) {
        moecl_sampler_params q = g ? plain_params(0.0f) : moecl_sampler_default_params();
        s = make(&q);
        int32_t tok = 0;
        CHECK(moecl_sampler_sample(s, none, 4, &tok) == MOECL_ERR_INVALID_ARG);
        CHECK(moecl_sampler_sample(s, nans, 2, &tok) == MOECL_ERR_INVALID_ARG);
        CHECK(strlen(moecl_last_error()) > 0);
        CHECK(sample1(s, withnan, 3) == 1); /* still usable */
        moecl_sampler_free(s);
    }
}

static void test_logits_unchanged(void) {
    enum { N = 1000 };
    static float logits[N], copy[N];
    uint64_t rs = 5;
    for (int i = 0; i < N; i++) logits[i] = t_rand_f(&rs) * 8.0f;
    logits[7] = -INFINITY;
    logits[8] = NAN;
    memcpy(copy, logits, sizeof logits);
    moecl_sampler_params p = moecl_sampler_default_params();
    p.repeat_penalty = 1.3f;
    for (int g = 0; g < 2; g++) {
        p.temperature = g ? 0.0f : 0.8f;
        moecl_sampler *s = make(&p);
        for (int i = 0; i < 100; i++) moecl_sampler_accept(s, (int32_t)(t_rand_u64(&rs) % N));
        for (int i = 0; i < 100; i++) sample1(s, logits, N);
        moecl_sampler_free(s);
    }
    CHECK(memcmp(copy, logits, sizeof logits) == 0);
}

static void test_determinism(void) {
    enum { N = 200, STEPS = 500 };
    static float logits[STEPS][N];
    uint64_t rs = 99;
    for (int t = 0; t < STEPS; t++)
        for (int i = 0; i < N; i++) logits[t][i] = t_rand_f(&rs) * 3.0f;
    static int32_t seq[4][STEPS];
    const uint64_t seeds[4] = {1234, 1234, 1235, 1234};
    moecl_sampler_params p = moecl_sampler_default_params();
    p.repeat_penalty = 1.1f;
    for (int r = 0; r < 4; r++) {
        p.seed = seeds[r];
        moecl_sampler *s = make(&p);
        for (int t = 0; t < STEPS; t++) seq[r][t] = sample1(s, logits[t], N);
        if (r == 3) { /* reset: the same stream again from a fresh history */
            moecl_sampler_reset(s);
            int diff = 0;
            for (int t = 0; t < STEPS; t++) diff += sample1(s, logits[t], N) != seq[r][t];
            CHECKF(diff == 0, "after reset %d tokens differ", diff);
        }
        moecl_sampler_free(s);
    }
    CHECK(memcmp(seq[0], seq[1], sizeof seq[0]) == 0);
    CHECK(memcmp(seq[0], seq[3], sizeof seq[0]) == 0);
    int diff = 0;
    for (int t = 0; t < STEPS; t++) diff += seq[0][t] != seq[2][t];
    CHECKF(diff > STEPS / 2, "seeds 1234 and 1235 agree on %d of %d tokens", STEPS - diff, STEPS);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void time_one(const char *what, const moecl_sampler_params *p, const float *logits, int n) {
    moecl_sampler *s = make(p);
    for (int i = 0; i < 64; i++) moecl_sampler_accept(s, i * 97);
    int32_t tok;
    const int reps = 1000;
    sample1(s, logits, n); /* scratch allocated here, not in the loop */
    double t0 = now_s();
    long sum = 0;
    for (int i = 0; i < reps; i++) {
        moecl_sampler_sample(s, logits, n, &tok);
        sum += tok;
    }
    double us = (now_s() - t0) / reps * 1e6;
    printf("sampling n_vocab %d, %-40s %8.1f us/call\n", n, what, us);
    moecl_sampler_free(s);
    (void)sum;
}

static void test_timing(void) {
    enum { N = 32000 };
    static float logits[N];
    uint64_t rs = 2024;
    /* Roughly like a language model: a broad body and a few strong tokens. */
    for (int i = 0; i < N; i++) logits[i] = t_rand_f(&rs) * 4.0f;
    for (int i = 0; i < 20; i++) logits[t_rand_u64(&rs) % N] = 10.0f + 3.0f * t_rand_f(&rs);
    moecl_sampler_params p = moecl_sampler_default_params();
    time_one("defaults", &p, logits, N);
    p.repeat_penalty = 1.1f;
    time_one("defaults + repeat penalty 1.1", &p, logits, N);
    p = moecl_sampler_default_params();
    p.temperature = 0.0f;
    time_one("greedy", &p, logits, N);
    p = moecl_sampler_default_params();
    p.top_k = 0;
    time_one("top-k off (top-p 0.95, min-p 0.05)", &p, logits, N);
    p.min_p = 0.0f;
    time_one("top-k off, min-p off (top-p 0.95)", &p, logits, N);
    p = plain_params(1.0f);
    time_one("no truncation", &p, logits, N);

    /* Orders that hurt a naive quickselect. */
    p = moecl_sampler_default_params();
    p.top_k = 0;
    p.min_p = 0.0f;
    for (int i = 0; i < N; i++) logits[i] = (float)i * (8.0f / N);
    time_one("top-k off, top-p 0.95, ascending logits", &p, logits, N);
    for (int i = 0; i < N; i++) logits[i] = (float)(N - i) * (8.0f / N);
    time_one("top-k off, top-p 0.95, descending logits", &p, logits, N);
    for (int i = 0; i < N; i++) logits[i] = 1.0f;
    time_one("top-k off, top-p 0.95, all equal", &p, logits, N);
    p = moecl_sampler_default_params();
    time_one("defaults, all equal", &p, logits, N);
}

int main(void) {
    test_defaults_and_args();
    test_greedy();
    test_repeat_penalty();
    test_top_k1_is_greedy();
    test_top_p_tiny();
    test_min_p();
    test_distributions();
    test_wide_vocab();
    test_top_p_exact_set();
    test_large_vocab();
    test_extremes();
    test_logits_unchanged();
    test_determinism();
    test_timing();
    return t_done("test_sampling");
}
