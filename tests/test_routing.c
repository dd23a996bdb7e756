/*
 * test_routing.c - the routing counters and the per-token routing callback
 * against the router choices of Hugging Face transformers in float64
 * (tests/data/NAME/routing.json, tools/make_routing_refs.py).
 *
 *   test_routing MODEL_DIR [cpu|opencl]
 *
 * The reference tokens are decoded as one batch, then again in another
 * sequence in two batches; the counters must equal the reference's counts
 * exactly and its weight sums within 1e-5, the callback must report every
 * token's experts (in order) and weights, with its sequence and position.
 * A decode that is aborted adds nothing; reset zeroes; off stops counting;
 * dense layers stay at zero and never reach the callback.
 */
#include "moecl.h"
#include "test_util.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <string.h>

#define MAX_T 64
#define MAX_L 16
#define MAX_K 8

typedef struct capture {
    int n_layer, k;
    int calls;
    bool bad;                            /* a call with arguments out of range */
    int32_t seen[2][MAX_T][MAX_L];       /* calls per (seq, pos, layer) */
    int32_t experts[2][MAX_T][MAX_L][MAX_K];
    float weights[2][MAX_T][MAX_L][MAX_K];
    int32_t token_of[2][MAX_T];          /* batch index reported for (seq, pos) */
} capture;

static void on_route(int32_t layer, int32_t token, int32_t seq, int32_t pos, const int32_t *experts,
                     const float *weights, int32_t k, void *user) {
    capture *c = user;
    c->calls++;
    if (layer < 0 || layer >= c->n_layer || seq < 0 || seq > 1 || pos < 0 || pos >= MAX_T || k != c->k ||
        token < 0 || token >= MAX_T) {
        c->bad = true;
        return;
    }
    c->seen[seq][pos][layer]++;
    c->token_of[seq][pos] = token;
    memcpy(c->experts[seq][pos][layer], experts, (size_t)k * sizeof *experts);
    memcpy(c->weights[seq][pos][layer], weights, (size_t)k * sizeof *weights);
}

static volatile bool g_abort;
static bool abort_cb(void *user) {
    (void)user;
    return g_abort;
}

typedef struct ref {
    int n_tok, L, E, K;
    int32_t tokens[MAX_T];
    bool dense[MAX_L];
    cJSON *root;
} ref;

/* Counters against the reference totals (times `times`). */
static void check_counts(moecl_context *ctx, const ref *r, int times, const char *what) {
    const size_t n = (size_t)r->L * (size_t)r->E;
    uint64_t tok[MAX_L * 64];
    double ws[MAX_L * 64];
    CHECK(moecl_context_get_routing_counts(ctx, tok, ws, n) == MOECL_OK);
    const cJSON *counts = cJSON_GetObjectItem(r->root, "counts"), *wsums = cJSON_GetObjectItem(r->root, "weight_sums");
    for (int l = 0; l < r->L; l++) {
        uint64_t sum = 0;
        for (int e = 0; e < r->E; e++) {
            const double rc = cJSON_GetArrayItem(cJSON_GetArrayItem(counts, l), e)->valuedouble;
            const double rw = cJSON_GetArrayItem(cJSON_GetArrayItem(wsums, l), e)->valuedouble;
            const size_t i = (size_t)l * r->E + e;
            sum += tok[i];
            CHECKF(tok[i] == (uint64_t)rc * times, "%s: layer %d expert %d: %llu tokens, reference %g x %d", what, l,
                   e, (unsigned long long)tok[i], rc, times);
            CHECKF(fabs(ws[i] - rw * times) <= 1e-5 * times, "%s: layer %d expert %d: weight sum %.8f, reference %.8f",
                   what, l, e, ws[i], rw * times);
        }
        CHECKF(sum == (r->dense[l] ? 0u : (uint64_t)r->n_tok * r->K * times), "%s: layer %d routes %llu", what, l,
               (unsigned long long)sum);
    }
}

/* The callback's record of sequence seq against the reference, token by token. */
static void check_capture(const capture *c, const ref *r, int seq, const char *what) {
    CHECKF(!c->bad, "%s: a callback with arguments out of range", what);
    const cJSON *layers = cJSON_GetObjectItem(r->root, "layers");
    for (int l = 0; l < r->L; l++) {
        const cJSON *lay = cJSON_GetArrayItem(layers, l);
        for (int t = 0; t < r->n_tok; t++) {
            if (r->dense[l]) {
                CHECKF(c->seen[seq][t][l] == 0, "%s: dense layer %d reached the callback", what, l);
                continue;
            }
            CHECKF(c->seen[seq][t][l] == 1, "%s: layer %d position %d: %d calls", what, l, t, c->seen[seq][t][l]);
            const cJSON *ex = cJSON_GetArrayItem(cJSON_GetObjectItem(lay, "experts"), t);
            const cJSON *wt = cJSON_GetArrayItem(cJSON_GetObjectItem(lay, "weights"), t);
            for (int j = 0; j < r->K; j++) {
                const int re = cJSON_GetArrayItem(ex, j)->valueint;
                const double rw = cJSON_GetArrayItem(wt, j)->valuedouble;
                CHECKF(c->experts[seq][t][l][j] == re, "%s: layer %d token %d choice %d: expert %d, reference %d", what,
                       l, t, j, c->experts[seq][t][l][j], re);
                CHECKF(fabs(c->weights[seq][t][l][j] - rw) <= 1e-5, "%s: layer %d token %d weight %d: %.7f vs %.7f",
                       what, l, t, j, c->weights[seq][t][l][j], rw);
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_routing MODEL_DIR [cpu|opencl]\n");
        return 2;
    }
    const bool opencl = argc > 2 && !strcmp(argv[2], "opencl");
    if (opencl && moecl_device_count() == 0) return t_skip("test_routing", "no OpenCL device");
    char path[4096];
    snprintf(path, sizeof path, "%s/routing.json", argv[1]);
    char *text = t_read_file(path, NULL);
    if (!text) {
        fprintf(stderr, "test_routing: cannot read %s\n", path);
        return 1;
    }
    ref r = {0};
    r.root = cJSON_Parse(text);
    free(text);
    if (!r.root) {
        fprintf(stderr, "test_routing: %s is not JSON\n", path);
        return 1;
    }
    r.L = cJSON_GetObjectItem(r.root, "n_layer")->valueint;
    r.E = cJSON_GetObjectItem(r.root, "n_expert")->valueint;
    r.K = cJSON_GetObjectItem(r.root, "n_expert_used")->valueint;
    const cJSON *toks = cJSON_GetObjectItem(r.root, "tokens");
    r.n_tok = cJSON_GetArraySize(toks);
    if (r.L > MAX_L || r.E > 64 || r.K > MAX_K || r.n_tok > MAX_T || r.n_tok < 4) {
        fprintf(stderr, "test_routing: %s is larger than this test holds\n", path);
        return 1;
    }
    for (int t = 0; t < r.n_tok; t++) r.tokens[t] = cJSON_GetArrayItem(toks, t)->valueint;
    for (int l = 0; l < r.L; l++)
        r.dense[l] = cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(r.root, "layers"), l), "dense"));

    moecl_model *model = NULL;
    if (moecl_model_load(argv[1], NULL, &model) != MOECL_OK) {
        fprintf(stderr, "test_routing: %s\n", moecl_last_error());
        return 1;
    }
    moecl_context_params cp = moecl_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 32;
    cp.n_seq_max = 2;
    cp.n_threads = 2;
    cp.backend = opencl ? MOECL_BACKEND_OPENCL : MOECL_BACKEND_CPU;
    if (opencl) cp.device = getenv("MOECL_DEVICE") ? getenv("MOECL_DEVICE") : "0";
    cp.abort_callback = abort_cb;
    moecl_context *ctx = NULL;
    if (moecl_context_new(model, &cp, &ctx) != MOECL_OK) {
        fprintf(stderr, "test_routing: %s\n", moecl_last_error());
        moecl_model_free(model);
        return 1;
    }
    const size_t n = (size_t)r.L * (size_t)r.E;
    capture *cap = calloc(1, sizeof *cap);
    cap->n_layer = r.L;
    cap->k = r.K;

    /* Off by default: a decode counts nothing. */
    CHECK(moecl_decode(ctx, r.tokens, 4) == MOECL_OK);
    uint64_t tok[MAX_L * 64];
    double ws[MAX_L * 64];
    CHECK(moecl_context_get_routing_counts(ctx, tok, ws, n) == MOECL_OK);
    bool zero = true;
    for (size_t i = 0; i < n; i++) zero = zero && tok[i] == 0 && ws[i] == 0.0;
    CHECKF(zero, "counters are off by default");
    moecl_seq_truncate(ctx, -1, 0);

    /* The reference tokens as one batch, sequence 0. */
    CHECK(moecl_context_set_routing_counters(ctx, true) == MOECL_OK);
    CHECK(moecl_context_set_routing_callback(ctx, on_route, cap) == MOECL_OK);
    CHECK(moecl_decode(ctx, r.tokens, r.n_tok) == MOECL_OK);
    check_counts(ctx, &r, 1, "one batch");
    check_capture(cap, &r, 0, "one batch");
    bool order = true;
    for (int t = 0; t < r.n_tok; t++) order = order && cap->token_of[0][t] == t;
    CHECKF(order, "one batch: the callback's token index is the position");

    /* An aborted decode adds nothing to the counters. */
    g_abort = true;
    CHECK(moecl_decode(ctx, r.tokens, 2) == MOECL_ERR_ABORTED);
    g_abort = false;
    check_counts(ctx, &r, 1, "after an aborted decode");

    /* Again in sequence 1, in two batches, with one token of sequence 0 first
     * in each batch (sequence 0 continues): the counts of sequence 1 alone
     * are the reference's, so count the total against 2x the reference minus
     * what sequence 0's extra tokens add (measured through the callback). */
    CHECK(moecl_context_reset_routing_counts(ctx) == MOECL_OK);
    CHECK(moecl_context_get_routing_counts(ctx, tok, ws, n) == MOECL_OK);
    zero = true;
    for (size_t i = 0; i < n; i++) zero = zero && tok[i] == 0 && ws[i] == 0.0;
    CHECKF(zero, "reset zeroes the counters");
    moecl_seq_truncate(ctx, -1, 0);
    memset(cap, 0, sizeof *cap);
    cap->n_layer = r.L;
    cap->k = r.K;
    const int split = 12;
    int32_t bt[MAX_T], bs[MAX_T];
    int nb = 0;
    for (int t = 0; t < split; t++) bt[nb] = r.tokens[t], bs[nb++] = 1;
    moecl_batch b1 = {.n_tokens = nb, .tokens = bt, .seq_id = bs};
    CHECK(moecl_decode_batch(ctx, &b1) == MOECL_OK);
    nb = 0;
    bt[nb] = r.tokens[0], bs[nb++] = 0; /* another sequence in the middle of the batch */
    for (int t = split; t < r.n_tok; t++) bt[nb] = r.tokens[t], bs[nb++] = 1;
    bt[nb] = r.tokens[1], bs[nb++] = 0;
    moecl_batch b2 = {.n_tokens = nb, .tokens = bt, .seq_id = bs};
    CHECK(moecl_decode_batch(ctx, &b2) == MOECL_OK);
    check_capture(cap, &r, 1, "two batches, sequence 1");
    CHECKF(cap->token_of[1][split] == 1 && cap->token_of[1][r.n_tok - 1] == nb - 2,
           "two batches: batch indices %d and %d", cap->token_of[1][split], cap->token_of[1][r.n_tok - 1]);
    CHECKF(cap->seen[0][0][0] == 1 && cap->seen[0][1][0] == 1 && cap->seen[0][2][0] == 0,
           "two batches: sequence 0's two tokens reach the callback");
    /* Totals = sequence 1 (the reference) + sequence 0's two tokens. */
    CHECK(moecl_context_get_routing_counts(ctx, tok, ws, n) == MOECL_OK);
    const cJSON *counts = cJSON_GetObjectItem(r.root, "counts");
    for (int l = 0; l < r.L; l++)
        for (int e = 0; e < r.E; e++) {
            uint64_t extra = 0;
            for (int p = 0; p < 2; p++)
                for (int j = 0; j < r.K && !r.dense[l]; j++) extra += cap->experts[0][p][l][j] == e;
            const uint64_t want = (uint64_t)cJSON_GetArrayItem(cJSON_GetArrayItem(counts, l), e)->valueint + extra;
            CHECKF(tok[(size_t)l * r.E + e] == want, "two batches: layer %d expert %d: %llu, want %llu", l, e,
                   (unsigned long long)tok[(size_t)l * r.E + e], (unsigned long long)want);
        }

    /* Off: totals stay; no callback after removing it. */
    CHECK(moecl_context_set_routing_counters(ctx, false) == MOECL_OK);
    CHECK(moecl_context_set_routing_callback(ctx, NULL, NULL) == MOECL_OK);
    uint64_t before[MAX_L * 64];
    memcpy(before, tok, n * sizeof *tok);
    const int calls = cap->calls;
    CHECK(moecl_decode(ctx, r.tokens, 3) == MOECL_OK);
    CHECK(moecl_context_get_routing_counts(ctx, tok, NULL, n) == MOECL_OK);
    CHECKF(!memcmp(before, tok, n * sizeof *tok), "counters off: totals unchanged");
    CHECKF(cap->calls == calls, "callback removed: no calls");

    /* Bad arguments. */
    CHECK(moecl_context_get_routing_counts(ctx, tok, ws, n - 1) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_context_get_routing_counts(NULL, tok, ws, n) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_context_set_routing_counters(NULL, true) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_context_reset_routing_counts(NULL) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_context_set_routing_callback(NULL, on_route, NULL) == MOECL_ERR_INVALID_ARG);

    free(cap);
    moecl_context_free(ctx);
    moecl_model_free(model);
    cJSON_Delete(r.root);
    return t_done("test_routing");
}
