/*
 * stats.c - `moecl stats`: what the routers of a model do with a text.
 *
 *   moecl stats [-m PATH] (-p TEXT | -f FILE | --tokens 1,2,3) [--layer L] [--json FILE] [--html FILE]
 *               [--save-profile FILE] [--pictures DIR] [-c CTX] [--max-tokens N] [-t THREADS]
 *
 * The text is decoded in chunks of CTX positions (one sequence, one batch
 * per chunk) with the library's routing counters on (load per expert) and
 * its routing callback recording each token's experts (co-activation,
 * specialisation). Then, per MoE layer:
 *   load      tokens per expert; normalised entropy H(p)/log E of
 *             p = counts / sum; the Gini coefficient of the counts; max/mean,
 *             and an alert for any expert above 3x the mean;
 *   co-activation  tokens that chose both experts i and j;
 *   specialisation the tokens most often routed to each expert, and for each
 *             token class (letters, digits, punctuation, whitespace, other
 *             scripts) its distribution over the experts;
 *   consistency    the first tokens of the text routed alone, in the middle of
 *             a batch with two other sequences, and after other text in the
 *             same sequence: the fraction of (token, layer) whose expert set is
 *             the same as alone, and which layers differ.
 * Pictures (tools/stats_draw.c, cairo): a layer x expert load heatmap, the
 * co-activation matrix and the passage coloured by expert of one layer, as
 * PNG and SVG, embedded in one HTML file.
 */
#include "moecl.h"
#include "cli.h"
#include "stats.h"

#include "formats/atomic_file.h" /* internal: the one way moecl writes files */

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *const k_class_names[N_CLS] = {"letters", "digits", "punctuation", "whitespace", "other scripts",
                                          "special"};

#define ALERT_RATIO 3.0
#define TOP_TOKENS 8
#define PROBE_TOKENS 48

static int usage(const char *fmt, const char *arg) {
    fprintf(stderr, "moecl stats: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see 'moecl stats --help')\n");
    return 2;
}

/* ------------------------------------------------------------------------ */
/* Recording routes through the routing callback                            */
/* ------------------------------------------------------------------------ */

/* Token (seq, pos) is stored at row base[seq] + pos (seq ignored if base is NO_SEQ). */
#define NO_SEQ INT64_MIN
typedef struct recorder {
    int L, K;
    int64_t rows;
    int64_t base[4];
    int32_t *ex; /* [rows, L, K] */
    float *w;    /* [rows, L, K] or NULL */
} recorder;

static void on_route(int32_t layer, int32_t token, int32_t seq, int32_t pos, const int32_t *experts,
                     const float *weights, int32_t k, void *user) {
    (void)token;
    recorder *r = user;
    if (seq < 0 || seq > 3 || r->base[seq] == NO_SEQ || k != r->K) return;
    const int64_t row = r->base[seq] + pos;
    if (row < 0 || row >= r->rows) return;
    const int64_t at = (row * r->L + layer) * r->K;
    memcpy(r->ex + at, experts, (size_t)k * sizeof *experts);
    if (r->w) memcpy(r->w + at, weights, (size_t)k * sizeof *weights);
}

static bool recorder_init(recorder *r, int L, int K, int64_t rows, bool weights) {
    memset(r, 0, sizeof *r);
    r->L = L;
    r->K = K;
    r->rows = rows;
    for (int s = 0; s < 4; s++) r->base[s] = NO_SEQ;
    const size_t n = (size_t)rows * (size_t)L * (size_t)K;
    r->ex = malloc((n ? n : 1) * sizeof *r->ex);
    r->w = weights ? calloc(n ? n : 1, sizeof *r->w) : NULL;
    if (!r->ex || (weights && !r->w)) return false;
    for (size_t i = 0; i < n; i++) r->ex[i] = -1;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Measures of balance                                                      */
/* ------------------------------------------------------------------------ */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* H(p) / log E with p = c / sum c (0 log 0 = 0). */
static double norm_entropy(const uint64_t *c, int E) {
    double sum = 0, h = 0;
    for (int e = 0; e < E; e++) sum += (double)c[e];
    if (sum <= 0 || E < 2) return 0;
    for (int e = 0; e < E; e++)
        if (c[e]) {
            const double p = (double)c[e] / sum;
            h -= p * log(p);
        }
    return h / log((double)E);
}

/* Gini = sum_i sum_j |x_i - x_j| / (2 n^2 mean), from the sorted values:
 * sum_i (2i - n - 1) x_(i) / (n sum x), i = 1..n. */
static double gini(const uint64_t *c, int E) {
    uint64_t *s = malloc((size_t)E * sizeof *s);
    if (!s) return NAN;
    memcpy(s, c, (size_t)E * sizeof *s);
    qsort(s, (size_t)E, sizeof *s, cmp_u64);
    double num = 0, sum = 0;
    for (int i = 0; i < E; i++) {
        num += (2.0 * (i + 1) - E - 1) * (double)s[i];
        sum += (double)s[i];
    }
    free(s);
    return sum > 0 ? num / (E * sum) : 0;
}

/* ------------------------------------------------------------------------ */
/* Token classes                                                            */
/* ------------------------------------------------------------------------ */

static int token_class(const moecl_tokenizer *tok, int32_t id) {
    if (!tok) return -1; /* ids without a tokenizer: no class */
    if (moecl_token_is_special(tok, id)) return CLS_SPECIAL;
    size_t n = 0;
    const unsigned char *p = (const unsigned char *)moecl_token_to_piece(tok, id, &n);
    if (!p) return CLS_SPECIAL;
    size_t i = 0;
    if (n > 1 && p[0] == ' ') i = 1; /* the word's leading space */
    bool all_space = true;
    for (size_t j = i; j < n; j++) all_space = all_space && (p[j] == ' ' || (p[j] >= 9 && p[j] <= 13));
    if (n == 0 || all_space) return CLS_SPACE;
    const unsigned c = p[i];
    if (c < 0x80) {
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return CLS_LETTERS;
        if (c >= '0' && c <= '9') return CLS_DIGITS;
        if (c > 0x20 && c < 0x7f) return CLS_PUNCT;
        return CLS_SPACE;
    }
    /* The code point, if the bytes are one (a byte token alone may not be). */
    unsigned cp = 0;
    int more = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : -1;
    if (more < 0 || i + (size_t)more >= n + (more ? 0 : 1)) return CLS_OTHER_SCRIPT;
    cp = c & (0x3F >> more);
    for (int k = 1; k <= more; k++) {
        if (i + (size_t)k >= n || (p[i + k] & 0xC0) != 0x80) return CLS_OTHER_SCRIPT;
        cp = cp << 6 | (p[i + k] & 0x3F);
    }
    if (cp == 0xA0 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x3000) return CLS_SPACE;
    if ((cp >= 0xC0 && cp <= 0x24F && cp != 0xD7 && cp != 0xF7) || (cp >= 0x1E00 && cp <= 0x1EFF)) return CLS_LETTERS;
    if ((cp >= 0xA1 && cp <= 0xBF) || cp == 0xD7 || cp == 0xF7 || (cp >= 0x2010 && cp <= 0x206F) ||
        (cp >= 0x20A0 && cp <= 0x20CF) || (cp >= 0x3001 && cp <= 0x303F))
        return CLS_PUNCT;
    return CLS_OTHER_SCRIPT;
}

/* ------------------------------------------------------------------------ */
/* Specialisation: the tokens most often routed to each expert              */
/* ------------------------------------------------------------------------ */

typedef struct top_token {
    int32_t id;
    uint32_t count;
} top_token;

static int cmp_top(const void *a, const void *b) {
    const top_token *x = a, *y = b;
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

/* top[e * TOP_TOKENS + i] for layer l (count 0: fewer tokens than that). */
static bool top_tokens(const stats_data *d, int l, top_token *top) {
    const int64_t n = d->N * d->K;
    uint64_t *keys = malloc((size_t)(n ? n : 1) * sizeof *keys);
    if (!keys) return false;
    int64_t m = 0;
    for (int64_t t = 0; t < d->N; t++)
        for (int j = 0; j < d->K; j++) {
            const int32_t e = d->ex[(t * d->L + l) * d->K + j];
            if (e >= 0) keys[m++] = (uint64_t)e << 32 | (uint32_t)d->ids[t];
        }
    qsort(keys, (size_t)m, sizeof *keys, cmp_u64);
    memset(top, 0, (size_t)d->E * TOP_TOKENS * sizeof *top);
    top_token *cand = malloc((size_t)(m ? m : 1) * sizeof *cand);
    if (!cand) {
        free(keys);
        return false;
    }
    int64_t i = 0;
    while (i < m) {
        const uint32_t e = (uint32_t)(keys[i] >> 32);
        int64_t nc = 0;
        while (i < m && (uint32_t)(keys[i] >> 32) == e) {
            int64_t j = i;
            while (j < m && keys[j] == keys[i]) j++;
            cand[nc++] = (top_token){(int32_t)(uint32_t)keys[i], (uint32_t)(j - i)};
            i = j;
        }
        qsort(cand, (size_t)nc, sizeof *cand, cmp_top);
        for (int64_t k = 0; k < nc && k < TOP_TOKENS; k++) top[(int64_t)e * TOP_TOKENS + k] = cand[k];
    }
    free(cand);
    free(keys);
    return true;
}

/* ------------------------------------------------------------------------ */
/* Consistency                                                              */
/* ------------------------------------------------------------------------ */

static const char k_filler_a[] =
    "The committee met on a rainy Tuesday to discuss the budget for the new library, and after two hours "
    "of argument it agreed to meet again.";
static const char k_filler_b[] =
    "42 apples, 17 pears and 3 melons were sold at the market; the price of each rose by 5% in March.";

typedef struct consistency {
    int n_tokens;         /* tokens compared (the probe without its BOS) */
    double same[2];       /* [batch, after]: fraction of (token, MoE layer) with the expert set of alone */
    double *layer_same;   /* [2, L] per layer */
} consistency;

static bool same_set(const int32_t *a, const int32_t *b, int K) {
    for (int i = 0; i < K; i++) {
        bool found = false;
        for (int j = 0; j < K && !found; j++) found = a[i] == b[j];
        if (!found) return false;
    }
    return true;
}

static int decode_seq(moecl_context *ctx, const int32_t *ids, int n, int32_t seq) {
    int32_t *s = malloc((size_t)(n ? n : 1) * sizeof *s);
    if (!s) return 1;
    for (int i = 0; i < n; i++) s[i] = seq;
    moecl_batch b = {.n_tokens = n, .tokens = ids, .seq_id = s};
    moecl_status st = moecl_decode_batch(ctx, &b);
    free(s);
    if (st) fprintf(stderr, "moecl stats: decode: %s\n", moecl_last_error());
    return st ? 1 : 0;
}

static int measure_consistency(const moecl_model *model, const moecl_tokenizer *tok, const stats_data *d,
                               int32_t bos, int32_t n_vocab, int n_threads, consistency *out) {
    int rc = 1;
    const int skip = d->N > 0 && d->ids[0] == bos ? 1 : 0;
    const int P = (int)(d->N < PROBE_TOKENS ? d->N : PROBE_TOKENS);
    int32_t fa[256], fb[256], na = 0, nb = 0;
    if (!tok) { /* ids only: other ids, spread over the vocabulary */
        na = 24;
        nb = 20;
        for (int i = 0; i < na; i++) fa[i] = (int32_t)((7919u * (unsigned)i + 3) % (unsigned)n_vocab);
        for (int i = 0; i < nb; i++) fb[i] = (int32_t)((104729u * (unsigned)i + 11) % (unsigned)n_vocab);
    } else if (moecl_tokenize(tok, k_filler_a, strlen(k_filler_a), 0, fa, 256, &na) ||
               moecl_tokenize(tok, k_filler_b, strlen(k_filler_b), 0, fb, 256, &nb)) {
        fprintf(stderr, "moecl stats: cannot tokenize the consistency texts: %s\n", moecl_last_error());
        return 1;
    }
    out->n_tokens = P - skip;
    out->layer_same = calloc((size_t)2 * d->L, sizeof *out->layer_same);
    const int rows = P + na + nb + 8;
    moecl_context_params cp = moecl_context_default_params();
    cp.n_ctx = (uint32_t)(na + nb + P + 1);
    cp.n_seq_max = 3;
    cp.n_batch = (uint32_t)(na + nb + P);
    cp.n_threads = n_threads;
    recorder alone = {0}, batch = {0}, after = {0};
    moecl_context *ctx = NULL;
    int32_t *bt = malloc((size_t)(na + nb + P) * sizeof *bt), *bs = malloc((size_t)(na + nb + P) * sizeof *bs);
    if (!out->layer_same || !bt || !bs || !recorder_init(&alone, d->L, d->K, rows, false) ||
        !recorder_init(&batch, d->L, d->K, rows, false) || !recorder_init(&after, d->L, d->K, rows, false))
        goto done;
    if (moecl_context_new(model, &cp, &ctx)) {
        fprintf(stderr, "moecl stats: %s\n", moecl_last_error());
        goto done;
    }
    /* Alone: the probe in sequence 0 of a fresh context. */
    alone.base[0] = 0;
    moecl_context_set_routing_callback(ctx, on_route, &alone);
    if (decode_seq(ctx, d->ids, P, 0)) goto done;
    /* In the middle of one batch: filler A (sequence 0), the probe (1), filler B (2). */
    moecl_seq_truncate(ctx, -1, 0);
    batch.base[1] = 0;
    moecl_context_set_routing_callback(ctx, on_route, &batch);
    int n = 0;
    for (int i = 0; i < na; i++) bt[n] = fa[i], bs[n++] = 0;
    for (int i = 0; i < P; i++) bt[n] = d->ids[i], bs[n++] = 1;
    for (int i = 0; i < nb; i++) bt[n] = fb[i], bs[n++] = 2;
    moecl_batch b = {.n_tokens = n, .tokens = bt, .seq_id = bs};
    if (moecl_decode_batch(ctx, &b)) {
        fprintf(stderr, "moecl stats: decode: %s\n", moecl_last_error());
        goto done;
    }
    /* After other text: filler A, then the probe (without its BOS) in the same sequence. */
    moecl_seq_truncate(ctx, -1, 0);
    moecl_context_set_routing_callback(ctx, NULL, NULL);
    if (decode_seq(ctx, fa, na, 0)) goto done;
    after.base[0] = skip - na; /* position na holds probe token `skip` */
    moecl_context_set_routing_callback(ctx, on_route, &after);
    if (decode_seq(ctx, d->ids + skip, P - skip, 0)) goto done;

    const recorder *cmp[2] = {&batch, &after};
    for (int c = 0; c < 2; c++) {
        int64_t same = 0, total = 0;
        for (int l = 0; l < d->L; l++) {
            if (d->layers[l].dense) continue;
            int64_t ls = 0;
            for (int t = skip; t < P; t++) {
                const int64_t at = ((int64_t)t * d->L + l) * d->K;
                ls += same_set(alone.ex + at, cmp[c]->ex + at, d->K);
            }
            out->layer_same[c * d->L + l] = P > skip ? (double)ls / (P - skip) : 1.0;
            same += ls;
            total += P - skip;
        }
        out->same[c] = total ? (double)same / (double)total : 1.0;
    }
    rc = 0;
done:
    moecl_context_free(ctx);
    free(alone.ex);
    free(batch.ex);
    free(after.ex);
    free(bt);
    free(bs);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Output                                                                   */
/* ------------------------------------------------------------------------ */

static void json_str(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c < 0x20 || c == 0x7f) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* Token text for JSON and HTML: the piece, with invalid UTF-8 as \xNN. */
static void token_text(const moecl_tokenizer *tok, int32_t id, char *out, size_t cap) {
    size_t n = 0, o = 0;
    if (!tok) {
        snprintf(out, cap, "#%d", id);
        return;
    }
    const unsigned char *p = (const unsigned char *)moecl_token_to_piece(tok, id, &n);
    out[0] = '\0';
    if (!p) return;
    for (size_t i = 0; i < n && o + 8 < cap;) {
        const unsigned c = p[i];
        int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        bool ok = len > 0 && i + (size_t)len <= n && !(len == 2 && c < 0xC2);
        for (int k = 1; ok && k < len; k++) ok = (p[i + k] & 0xC0) == 0x80;
        if (!ok || c == 0) {
            o += (size_t)snprintf(out + o, cap - o, "\\x%02X", c);
            i++;
            continue;
        }
        memcpy(out + o, p + i, (size_t)len);
        o += (size_t)len;
        i += (size_t)len;
    }
    out[o] = '\0';
}

static void write_u64s(FILE *f, const uint64_t *v, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, "%s%llu", i ? "," : "", (unsigned long long)v[i]);
    fputc(']', f);
}

static void write_doubles(FILE *f, const double *v, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, "%s%.10g", i ? "," : "", v[i]);
    fputc(']', f);
}

static void write_json(FILE *f, const stats_data *d, const moecl_tokenizer *tok, const top_token *const *tops,
                       const consistency *cs) {
    char text[512];
    fprintf(f, "{\"format\": \"moecl-stats\", \"version\": 1, \"model\": ");
    json_str(f, d->model_name, strlen(d->model_name));
    fprintf(f, ",\n \"n_layer\": %d, \"n_expert\": %d, \"n_expert_used\": %d, \"tokens\": %lld, \"layer_shown\": %d,\n",
            d->L, d->E, d->K, (long long)d->N, d->layer_shown);
    fprintf(f, " \"alert_ratio\": %g, \"classes\": [", ALERT_RATIO);
    for (int c = 0; c < N_CLS; c++) fprintf(f, "%s\"%s\"", c ? ", " : "", k_class_names[c]);
    fprintf(f, "],\n \"layers\": [");
    for (int l = 0; l < d->L; l++) {
        const stats_layer *y = &d->layers[l];
        fprintf(f, "%s\n  {\"layer\": %d, \"dense\": %s", l ? "," : "", l, y->dense ? "true" : "false");
        if (y->dense) {
            fputc('}', f);
            continue;
        }
        fprintf(f, ", \"counts\": ");
        write_u64s(f, y->counts, d->E);
        fprintf(f, ", \"weight_sums\": ");
        write_doubles(f, y->wsum, d->E);
        fprintf(f, ",\n   \"entropy\": %.10g, \"gini\": %.10g, \"max_mean\": %.10g, \"alerts\": [", y->entropy, y->gini,
                y->max_mean);
        const double mean = (double)d->N * d->K / d->E;
        for (int e = 0, first = 1; e < d->E; e++)
            if ((double)y->counts[e] > ALERT_RATIO * mean) {
                fprintf(f, "%s%d", first ? "" : ", ", e);
                first = 0;
            }
        fprintf(f, "],\n   \"coactivation\": [");
        for (int i = 0; i < d->E; i++) {
            fputs(i ? ", " : "", f);
            write_u64s(f, y->coact + (size_t)i * d->E, d->E);
        }
        fprintf(f, "],\n   \"class_counts\": [");
        for (int c = 0; c < N_CLS; c++) {
            fputs(c ? ", " : "", f);
            write_u64s(f, y->cls + (size_t)c * d->E, d->E);
        }
        fprintf(f, "],\n   \"top_tokens\": [");
        for (int e = 0; e < d->E; e++) {
            fputs(e ? ", " : "", f);
            fputc('[', f);
            for (int k = 0, first = 1; k < TOP_TOKENS; k++) {
                const top_token *t = &tops[l][e * TOP_TOKENS + k];
                if (!t->count) break;
                token_text(tok, t->id, text, sizeof text);
                fprintf(f, "%s{\"id\": %d, \"count\": %u, \"text\": ", first ? "" : ", ", t->id, t->count);
                json_str(f, text, strlen(text));
                fputc('}', f);
                first = 0;
            }
            fputc(']', f);
        }
        fprintf(f, "]}");
    }
    fprintf(f, "],\n \"consistency\": {\"tokens\": %d, \"batch\": %.10g, \"after\": %.10g, \"batch_layers\": ",
            cs->n_tokens, cs->same[0], cs->same[1]);
    write_doubles(f, cs->layer_same, d->L);
    fprintf(f, ", \"after_layers\": ");
    write_doubles(f, cs->layer_same + d->L, d->L);
    fprintf(f, "},\n \"token_ids\": [");
    for (int64_t t = 0; t < d->N; t++) fprintf(f, "%s%d", t ? "," : "", d->ids[t]);
    fprintf(f, "],\n \"routes\": [");
    for (int64_t t = 0; t < d->N; t++) {
        fputs(t ? ",\n  [" : "\n  [", f);
        for (int l = 0; l < d->L; l++) {
            fputs(l ? ",[" : "[", f);
            if (!d->layers[l].dense)
                for (int j = 0; j < d->K; j++) fprintf(f, "%s%d", j ? "," : "", d->ex[(t * d->L + l) * d->K + j]);
            fputc(']', f);
        }
        fputc(']', f);
    }
    fprintf(f, "]}\n");
}

static void write_profile(FILE *f, const stats_data *d) {
    fprintf(f, "{\"format\": \"moecl-expert-profile\", \"version\": 1, \"model\": ");
    json_str(f, d->model_name, strlen(d->model_name));
    fprintf(f, ", \"n_layer\": %d, \"n_expert\": %d, \"n_expert_used\": %d, \"tokens\": %lld, \"freq\": [", d->L, d->E,
            d->K, (long long)d->N);
    for (int l = 0; l < d->L; l++) {
        fputs(l ? ",\n  [" : "\n  [", f);
        for (int e = 0; e < d->E; e++)
            fprintf(f, "%s%.9g", e ? ", " : "", d->N ? (double)d->layers[l].counts[e] / (double)d->N : 0.0);
        fputc(']', f);
    }
    fprintf(f, "]}\n");
}

static void html_escape(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else if (*s == '"') fputs("&quot;", f);
        else if (*s == ' ') fputs("&#x2423;", f); /* a visible space: leading spaces matter */
        else if (*s == '\n') fputs("\\n", f);
        else fputc(*s, f);
    }
}

static void html_pic(FILE *f, const char *title, const char *name, const stats_pic *p) {
    fprintf(f, "<h2>%s</h2>\n<p><img alt=\"%s\" width=\"%d\" height=\"%d\" src=\"data:image/svg+xml;base64,", title,
            title, p->width, p->height);
    stats_base64(f, p->svg, p->svg_len);
    fprintf(f, "\"></p>\n<p>Download: <a download=\"%s.svg\" href=\"data:image/svg+xml;base64,", name);
    stats_base64(f, p->svg, p->svg_len);
    fprintf(f, "\">SVG</a> · <a download=\"%s.png\" href=\"data:image/png;base64,", name);
    stats_base64(f, p->png, p->png_len);
    fprintf(f, "\">PNG</a></p>\n");
}

static void write_html(FILE *f, const stats_data *d, const moecl_tokenizer *tok, const top_token *const *tops,
                       const consistency *cs, const stats_pic pics[3]) {
    char text[512];
    fprintf(f, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>moecl stats: ");
    html_escape(f, d->model_name);
    fprintf(f, "</title>\n<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
               "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;"
               "text-align:right}th{background:#eee}.alert{color:#b00;font-weight:bold}"
               "td.tok{text-align:left;font-family:monospace}</style></head><body>\n");
    fprintf(f, "<h1>Routing of ");
    html_escape(f, d->model_name);
    fprintf(f, "</h1>\n<p>%lld tokens, %d layers, %d experts, top-%d. Made by <code>moecl stats</code> %s.</p>\n",
            (long long)d->N, d->L, d->E, d->K, moecl_version());
    fprintf(f, "<h2>Load per layer</h2>\n<table><tr><th>layer</th><th>entropy / log E</th><th>Gini</th>"
               "<th>max / mean</th><th>alerts (&gt; %g&times; mean)</th></tr>\n", ALERT_RATIO);
    for (int l = 0; l < d->L; l++) {
        const stats_layer *y = &d->layers[l];
        if (y->dense) {
            fprintf(f, "<tr><td>%d</td><td colspan=\"4\">dense</td></tr>\n", l);
            continue;
        }
        fprintf(f, "<tr><td>%d</td><td>%.3f</td><td>%.3f</td><td>%.2f</td><td class=\"alert\">", l, y->entropy, y->gini,
                y->max_mean);
        const double mean = (double)d->N * d->K / d->E;
        for (int e = 0; e < d->E; e++)
            if ((double)y->counts[e] > ALERT_RATIO * mean)
                fprintf(f, "expert %d (%.1f&times;) ", e, (double)y->counts[e] / mean);
        fprintf(f, "</td></tr>\n");
    }
    fprintf(f, "</table>\n");
    html_pic(f, "Load: layer &times; expert", "heatmap", &pics[0]);
    char title[128];
    snprintf(title, sizeof title, "Co-activation, layer %d", d->layer_shown);
    html_pic(f, title, "coactivation", &pics[1]);
    snprintf(title, sizeof title, "The passage by first-choice expert, layer %d", d->layer_shown);
    html_pic(f, title, "passage", &pics[2]);

    const int l = d->layer_shown;
    const stats_layer *y = &d->layers[l];
    fprintf(f, "<h2>Specialisation, layer %d</h2>\n<h3>Token classes: share of each class's routings per expert</h3>\n"
               "<table><tr><th>class</th><th>routings</th>", l);
    for (int e = 0; e < d->E; e++) fprintf(f, "<th>%d</th>", e);
    fprintf(f, "</tr>\n");
    for (int c = 0; c < N_CLS; c++) {
        uint64_t tot = 0;
        for (int e = 0; e < d->E; e++) tot += y->cls[(size_t)c * d->E + e];
        if (!tot) continue;
        fprintf(f, "<tr><th>%s</th><td>%llu</td>", k_class_names[c], (unsigned long long)tot);
        for (int e = 0; e < d->E; e++) {
            const double s = (double)y->cls[(size_t)c * d->E + e] / (double)tot;
            fprintf(f, "<td style=\"background:rgba(40,90,200,%.2f)\">%.0f%%</td>", s * d->E / d->K * 0.25 > 0.9 ? 0.9 :
                    s * d->E / d->K * 0.25, 100 * s);
        }
        fprintf(f, "</tr>\n");
    }
    fprintf(f, "</table>\n<h3>Tokens most often routed to each expert</h3>\n<table><tr><th>expert</th>"
               "<th>tokens</th><th>top tokens (count)</th></tr>\n");
    for (int e = 0; e < d->E; e++) {
        fprintf(f, "<tr><td>%d</td><td>%llu</td><td class=\"tok\">", e, (unsigned long long)y->counts[e]);
        for (int k = 0; k < TOP_TOKENS; k++) {
            const top_token *t = &tops[l][e * TOP_TOKENS + k];
            if (!t->count) break;
            token_text(tok, t->id, text, sizeof text);
            fputs("<b>", f);
            html_escape(f, text);
            fprintf(f, "</b> (%u) ", t->count);
        }
        fprintf(f, "</td></tr>\n");
    }
    fprintf(f, "</table>\n<h2>Consistency</h2>\n<p>The first %d tokens of the text routed alone, then in the middle of "
               "one batch with two other sequences, then after other text in the same sequence. Fraction of "
               "(token, layer) whose experts are the ones chosen alone:</p>\n<table><tr><th>layer</th>"
               "<th>in a batch</th><th>after other text</th></tr>\n",
            cs->n_tokens);
    for (int k = 0; k < d->L; k++)
        if (!d->layers[k].dense)
            fprintf(f, "<tr><td>%d</td><td>%.3f</td><td>%.3f</td></tr>\n", k, cs->layer_same[k],
                    cs->layer_same[d->L + k]);
    fprintf(f, "<tr><th>all</th><th>%.3f</th><th>%.3f</th></tr></table>\n</body></html>\n", cs->same[0], cs->same[1]);
}

/* Write what fn prints to path, atomically. */
typedef struct out_args {
    const stats_data *d;
    const moecl_tokenizer *tok;
    const top_token *const *tops;
    const consistency *cs;
    const stats_pic *pics;
} out_args;

static int write_out(const char *path, void (*fn)(FILE *, const out_args *), const out_args *a) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        fprintf(stderr, "moecl stats: out of memory\n");
        return 1;
    }
    fn(f, a);
    if (fclose(f) != 0) {
        free(buf);
        fprintf(stderr, "moecl stats: out of memory\n");
        return 1;
    }
    moecl_status st = mc_afile_write_all(path, buf, len, 0);
    free(buf);
    if (st) {
        fprintf(stderr, "moecl stats: cannot write %s: %s\n", path, moecl_last_error());
        return 1;
    }
    return 0;
}

static void out_json(FILE *f, const out_args *a) { write_json(f, a->d, a->tok, a->tops, a->cs); }
static void out_profile(FILE *f, const out_args *a) { write_profile(f, a->d); }
static void out_html(FILE *f, const out_args *a) { write_html(f, a->d, a->tok, a->tops, a->cs, a->pics); }

static void print_summary(const stats_data *d, const consistency *cs) {
    printf("%s: %lld tokens, %d layers, %d experts, top-%d\n", d->model_name, (long long)d->N, d->L, d->E, d->K);
    printf("layer  entropy  gini   max/mean  load per expert (%% of routings)\n");
    for (int l = 0; l < d->L; l++) {
        const stats_layer *y = &d->layers[l];
        if (y->dense) {
            printf("%5d  dense\n", l);
            continue;
        }
        printf("%5d  %7.3f  %5.3f  %8.2f ", l, y->entropy, y->gini, y->max_mean);
        const double tot = (double)d->N * d->K, mean = tot / d->E;
        for (int e = 0; e < d->E && e < 16; e++) printf(" %4.1f", tot > 0 ? 100.0 * (double)y->counts[e] / tot : 0.0);
        if (d->E > 16) printf(" ...");
        for (int e = 0; e < d->E; e++)
            if ((double)y->counts[e] > ALERT_RATIO * mean)
                printf("  ALERT: expert %d takes %.1fx the mean", e, (double)y->counts[e] / mean);
        printf("\n");
    }
    printf("consistency (%d tokens): same experts in a batch %.3f, after other text %.3f\n", cs->n_tokens, cs->same[0],
           cs->same[1]);
    int nd = 0;
    for (int l = 0; l < d->L; l++) nd += !d->layers[l].dense && cs->layer_same[l] < 1.0;
    if (nd) {
        printf("  layers that differ in a batch:");
        for (int l = 0; l < d->L; l++)
            if (!d->layers[l].dense && cs->layer_same[l] < 1.0) printf(" %d", l);
        printf("\n");
    }
}

/* ------------------------------------------------------------------------ */
/* The command                                                              */
/* ------------------------------------------------------------------------ */

/* "1,2,3" into a malloc'd array; NULL (after saying why) if malformed or an
 * id is outside the vocabulary. */
static int32_t *parse_ids(const char *s, int32_t n_vocab, int32_t *n) {
    int32_t *v = NULL;
    moecl_status st = cli_parse_ids(s, 0, (long)n_vocab - 1, &v, n);
    if (st == MOECL_ERR_INVALID_ARG)
        fprintf(stderr, "moecl stats: --tokens: bad id list '%s' (comma-separated ids from 0 to %d)\n", s,
                n_vocab - 1);
    else if (st)
        fprintf(stderr, "moecl stats: out of memory\n");
    return st ? NULL : v;
}

static const char *base_name(const char *path, char *buf, size_t cap) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    size_t len = n - b;
    if (len > 5 && !strncmp(path + n - 5, ".gguf", 5)) len -= 5;
    snprintf(buf, cap, "%.*s", (int)len, path + b);
    return buf;
}

static int write_pictures(const char *dir, const stats_pic pics[3]) {
    static const char *names[3] = {"heatmap", "coactivation", "passage"};
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "moecl stats: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    for (int i = 0; i < 3; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s.png", dir, names[i]);
        moecl_status st = mc_afile_write_all(path, pics[i].png, pics[i].png_len, 0);
        snprintf(path, sizeof path, "%s/%s.svg", dir, names[i]);
        if (!st) st = mc_afile_write_all(path, pics[i].svg, pics[i].svg_len, 0);
        if (st) {
            fprintf(stderr, "moecl stats: cannot write %s: %s\n", path, moecl_last_error());
            return 1;
        }
    }
    return 0;
}

int cmd_stats(int argc, char **argv);
int cmd_stats(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *file = NULL, *id_list = NULL, *json = NULL, *html = NULL, *profile = NULL,
               *pictures = NULL;
    int layer = -1, chunk = 512, max_tokens = 16384, threads = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED() do { if (!v) return usage("option %s needs a value", a); i++; } while (0)
#define INT(dst, lo, hi) do { NEED(); if (!cli_parse_int(v, lo, hi, &(dst))) return usage("bad number for %s", a); } while (0)
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { NEED(); model_path = v; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { NEED(); prompt = v; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { NEED(); file = v; }
        else if (!strcmp(a, "--tokens")) { NEED(); id_list = v; }
        else if (!strcmp(a, "--layer")) INT(layer, 0, 1 << 20);
        else if (!strcmp(a, "--json")) { NEED(); json = v; }
        else if (!strcmp(a, "--html")) { NEED(); html = v; }
        else if (!strcmp(a, "--save-profile")) { NEED(); profile = v; }
        else if (!strcmp(a, "--pictures")) { NEED(); pictures = v; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) INT(chunk, 2, 1 << 20);
        else if (!strcmp(a, "--max-tokens")) INT(max_tokens, 1, 1 << 24);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) INT(threads, 1, 1024);
        else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) moecl_log_set(NULL, MOECL_LOG_INFO, NULL);
        else return usage("unknown option %s", a);
#undef NEED
#undef INT
    }
    if ((prompt != NULL) + (file != NULL) + (id_list != NULL) != 1)
        return usage("%s", "give the text with -p TEXT, -f FILE or --tokens 1,2,3 (one of them)");
    if ((html || pictures) && !stats_have_cairo())
        return usage("%s", "--html and --pictures need cairo, and this moecl was built without it (Debian: "
                           "libcairo2-dev, then rebuild)");

    int rc = 1;
    size_t len = 0;
    char *text = NULL;
    if (file) {
        if (cli_read_text("moecl stats", file, CLI_TEXT_MAX_BYTES, &text, &len)) return 1;
    } else if (!(text = strdup(prompt ? prompt : id_list))) {
        return 1;
    }
    if (!file) len = strlen(text);
    moecl_model *model = NULL;
    char resolved[4200], name[256];
    if ((rc = cli_load_model(model_path, &model, resolved, sizeof resolved))) {
        free(text);
        return rc;
    }
    rc = 1;
    stats_data d = {0};
    top_token **tops = NULL;
    consistency cs = {0};
    stats_pic pics[3] = {{0}};
    const char **pieces = NULL;
    char *id_text = NULL;
    moecl_context *ctx = NULL;
    recorder rec = {0};
    moecl_model_info mi;
    moecl_model_get_info(model, &mi);
    const moecl_tokenizer *tok = moecl_model_get_tokenizer(model);
    if (!tok && !id_list) {
        fprintf(stderr, "moecl stats: %s has no tokenizer: give token ids with --tokens 1,2,3\n", resolved);
        goto done;
    }
    d.model_name = base_name(resolved, name, sizeof name);
    d.L = mi.n_layer;
    d.E = mi.n_expert;
    d.K = mi.n_expert_used;
    if (layer >= d.L) {
        fprintf(stderr, "moecl stats: --layer %d: the model has layers 0..%d\n", layer, d.L - 1);
        rc = 2;
        goto done;
    }

    int32_t n_ids = 0;
    if (id_list) {
        if (!(d.ids = parse_ids(id_list, mi.n_vocab, &n_ids))) {
            rc = 2;
            goto done;
        }
    } else {
        if (moecl_tokenize(tok, text, len, 0, NULL, 0, &n_ids) != MOECL_OK && n_ids <= 0) {
            fprintf(stderr, "moecl stats: cannot tokenize the text: %s\n", moecl_last_error());
            goto done;
        }
        d.ids = malloc((size_t)(n_ids ? n_ids : 1) * sizeof *d.ids);
        if (!d.ids || moecl_tokenize(tok, text, len, 0, d.ids, n_ids, &n_ids) != MOECL_OK) {
            fprintf(stderr, "moecl stats: cannot tokenize the text: %s\n", moecl_last_error());
            goto done;
        }
    }
    d.N = n_ids < max_tokens ? n_ids : max_tokens;
    if (n_ids > max_tokens)
        fprintf(stderr, "moecl stats: the text has %d tokens; the first %d are used (--max-tokens)\n", n_ids, max_tokens);
    if (d.N < 1) {
        fprintf(stderr, "moecl stats: the text has no tokens\n");
        goto done;
    }

    /* Route the text: chunks of `chunk` positions, each a fresh sequence. */
    if (chunk > mi.n_ctx_train && mi.n_ctx_train > 0) chunk = mi.n_ctx_train;
    moecl_context_params cp = moecl_context_default_params();
    cp.n_ctx = (uint32_t)chunk;
    cp.n_batch = (uint32_t)chunk;
    cp.n_threads = threads;
    if (moecl_context_new(model, &cp, &ctx) != MOECL_OK) {
        fprintf(stderr, "moecl stats: %s\n", moecl_last_error());
        goto done;
    }
    if (!recorder_init(&rec, d.L, d.K, d.N, true)) {
        fprintf(stderr, "moecl stats: out of memory for %lld tokens' routes\n", (long long)d.N);
        goto done;
    }
    moecl_context_set_routing_counters(ctx, true);
    moecl_context_set_routing_callback(ctx, on_route, &rec);
    for (int64_t s = 0; s < d.N; s += chunk) {
        const int n = (int)(d.N - s < chunk ? d.N - s : chunk);
        moecl_seq_truncate(ctx, 0, 0);
        rec.base[0] = s;
        if (moecl_decode(ctx, d.ids + s, n) != MOECL_OK) {
            fprintf(stderr, "moecl stats: decode: %s\n", moecl_last_error());
            goto done;
        }
    }
    d.ex = rec.ex;
    d.w = rec.w;

    /* Per layer: counts from the library's counters, the rest from the routes. */
    const size_t LE = (size_t)d.L * d.E;
    uint64_t *counts = calloc(LE, sizeof *counts);
    double *wsum = calloc(LE, sizeof *wsum);
    d.layers = calloc((size_t)d.L, sizeof *d.layers);
    tops = calloc((size_t)d.L, sizeof *tops);
    if (!counts || !wsum || !d.layers || !tops ||
        moecl_context_get_routing_counts(ctx, counts, wsum, LE) != MOECL_OK) {
        free(counts);
        free(wsum);
        fprintf(stderr, "moecl stats: out of memory\n");
        goto done;
    }
    int *cls_of = malloc((size_t)d.N * sizeof *cls_of);
    if (!cls_of) goto done;
    for (int64_t t = 0; t < d.N; t++) cls_of[t] = token_class(tok, d.ids[t]);
    for (int l = 0; l < d.L; l++) {
        stats_layer *y = &d.layers[l];
        y->counts = counts + (size_t)l * d.E;
        y->wsum = wsum + (size_t)l * d.E;
        uint64_t tot = 0;
        for (int e = 0; e < d.E; e++) tot += y->counts[e];
        y->dense = tot == 0;
        y->coact = calloc((size_t)d.E * d.E, sizeof *y->coact);
        y->cls = calloc((size_t)N_CLS * d.E, sizeof *y->cls);
        tops[l] = calloc((size_t)d.E * TOP_TOKENS, sizeof **tops);
        if (!y->coact || !y->cls || !tops[l]) goto done;
        if (y->dense) continue;
        y->entropy = norm_entropy(y->counts, d.E);
        y->gini = gini(y->counts, d.E);
        uint64_t mx = 0;
        for (int e = 0; e < d.E; e++) mx = y->counts[e] > mx ? y->counts[e] : mx;
        y->max_mean = (double)mx / ((double)tot / d.E);
        for (int64_t t = 0; t < d.N; t++) {
            const int32_t *ex = d.ex + (t * d.L + l) * d.K;
            for (int i = 0; i < d.K; i++) {
                if (ex[i] < 0) continue;
                if (cls_of[t] >= 0) y->cls[(size_t)cls_of[t] * d.E + ex[i]]++;
                y->coact[(size_t)ex[i] * d.E + ex[i]]++;
                for (int j = 0; j < d.K; j++)
                    if (j != i && ex[j] >= 0) y->coact[(size_t)ex[i] * d.E + ex[j]]++;
            }
        }
        if (!top_tokens(&d, l, tops[l])) goto done;
    }
    free(cls_of);
    /* The layer shown: the one asked for, else the middle MoE layer. */
    d.layer_shown = layer;
    if (d.layer_shown < 0) {
        d.layer_shown = d.L / 2;
        for (int k = 0; k < d.L && d.layers[d.layer_shown].dense; k++) d.layer_shown = (d.L / 2 + k) % d.L;
    }

    if (measure_consistency(model, tok, &d, mi.bos_id, mi.n_vocab, threads, &cs)) goto done;
    print_summary(&d, &cs);

    if (html || pictures) {
        pieces = calloc((size_t)d.N, sizeof *pieces);
        id_text = malloc((size_t)d.N * 16);
        if (!pieces || !id_text) goto done;
        for (int64_t t = 0; t < d.N; t++) {
            const char *p = tok ? moecl_token_to_piece(tok, d.ids[t], NULL) : NULL;
            if (!tok) { /* ids only: "#id " */
                snprintf(id_text + t * 16, 16, "#%d ", d.ids[t]);
                p = id_text + t * 16;
            } else if (moecl_token_is_special(tok, d.ids[t])) {
                p = "";
            }
            pieces[t] = p ? p : "";
        }
        d.piece = pieces;
        char err[256];
        if (!stats_draw_heatmap(&d, &pics[0], err, sizeof err) || !stats_draw_coactivation(&d, &pics[1], err, sizeof err) ||
            !stats_draw_passage(&d, &pics[2], err, sizeof err)) {
            fprintf(stderr, "moecl stats: drawing: %s\n", err);
            goto done;
        }
    }
    out_args oa = {&d, tok, (const top_token *const *)tops, &cs, pics};
    if (json && write_out(json, out_json, &oa)) goto done;
    if (profile && write_out(profile, out_profile, &oa)) goto done;
    if (html && write_out(html, out_html, &oa)) goto done;
    if (pictures && write_pictures(pictures, pics)) goto done;
    rc = 0;
done:
    for (int i = 0; i < 3; i++) stats_pic_free(&pics[i]);
    if (html || pictures) stats_draw_release();
    free(pieces);
    free(id_text);
    if (d.layers) {
        free(d.layers[0].counts);
        free(d.layers[0].wsum);
        for (int l = 0; l < d.L; l++) {
            free(d.layers[l].coact);
            free(d.layers[l].cls);
        }
    }
    if (tops)
        for (int l = 0; l < d.L; l++) free(tops[l]);
    free(tops);
    free(d.layers);
    free(cs.layer_same);
    free(rec.ex);
    free(rec.w);
    free(d.ids);
    moecl_context_free(ctx);
    moecl_model_free(model);
    free(text);
    return rc;
}
