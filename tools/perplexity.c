/*
 * moecl perplexity: perplexity of a model on a text, and its divergence from a
 * base model's predictions. Uses only the public API (include/moecl.h).
 *
 * Chunking follows llama.cpp's perplexity tool, so the two can be compared on
 * the same GGUF: the whole text is tokenized once (BOS first when the
 * tokenizer adds one); chunk c is tokens [c*n_ctx, (c+1)*n_ctx), evaluated
 * from an empty cache with its first token replaced by BOS; only the second
 * half is scored (positions first = n_ctx/2 .. n_ctx-2 predict the next
 * token), so every scored token has at least n_ctx/2 tokens of context. The
 * estimate's uncertainty is the standard error of the mean NLL, carried
 * through exp: PPL * sqrt(var(nll) / (N-1)).
 *
 * --kl-save FILE writes, for every scored position, the base model's top-K
 * log-probabilities and their ids (K = --kl-top-k, default 64; all of the
 * vocabulary when K >= n_vocab). --kl-base FILE reads them back and reports
 * KL(base || this model) per position, with the tail outside the base's top K
 * merged into one outcome on both sides:
 *
 *     KL = sum_{i in top K} p_i (log p_i - log q_i) + p_t (log p_t - log q_t),
 *     p_t = 1 - sum_{top K} p_i,  q_t = 1 - sum_{top K} q_i
 *
 * Merging outcomes never increases a divergence, so this is a lower bound of
 * the full KL, exact when K covers the vocabulary (the base's top-K mass is
 * printed so the gap can be judged). Top-1 agreement: this model's argmax is
 * the base's. Storing top-K keeps the file at 8K bytes a position (0.5 KiB
 * for K = 64) instead of 4 x n_vocab.
 *
 * File layout (little-endian): a 64-byte header
 *   "MCKL" u32 version=1 u32 n_vocab u32 n_ctx u32 n_chunks u32 top_k
 *   u32 n_scored (positions per chunk) u32 reserved u64 FNV-1a hash of the
 *   evaluated token ids, then zeros to 64 bytes;
 * then per scored position (chunk-major): i32 ids[K] (most likely first),
 * f32 logp[K].
 */
#include "moecl.h"
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KL_MAGIC "MCKL"
#define KL_VERSION 1u
#define KL_HEADER 64

int cmd_perplexity(int argc, char **argv);

static int usage(const char *fmt, const char *arg) {
    fprintf(stderr, "moecl perplexity: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see 'moecl help perplexity')\n");
    return 2;
}

static int fail(const char *what, moecl_status st) {
    const char *msg = moecl_last_error();
    fprintf(stderr, "moecl perplexity: %s: %s%s%s\n", what, moecl_status_str(st), *msg ? ": " : "", msg);
    return 1;
}

/* "1,2,3" into a malloc'd array. */
static int parse_ids(const char *s, int32_t **out, int *n) {
    moecl_status st = cli_parse_ids(s, 0, INT32_MAX, out, n);
    if (st == MOECL_ERR_INVALID_ARG) return usage("bad token list '%s' (expected comma-separated ids)", s);
    return st ? 1 : 0;
}

static uint64_t fnv1a(const int32_t *ids, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < 4; b++) {
            h ^= (uint8_t)((uint32_t)ids[i] >> (8 * b));
            h *= 1099511628211ull;
        }
    return h;
}

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

typedef struct kl_header {
    uint32_t n_vocab, n_ctx, n_chunks, top_k, n_scored;
    uint64_t hash;
} kl_header;

static void header_encode(const kl_header *h, unsigned char out[KL_HEADER]) {
    memset(out, 0, KL_HEADER);
    memcpy(out, KL_MAGIC, 4);
    put_u32(out + 4, KL_VERSION);
    put_u32(out + 8, h->n_vocab);
    put_u32(out + 12, h->n_ctx);
    put_u32(out + 16, h->n_chunks);
    put_u32(out + 20, h->top_k);
    put_u32(out + 24, h->n_scored);
    put_u32(out + 32, (uint32_t)h->hash);
    put_u32(out + 36, (uint32_t)(h->hash >> 32));
}

/* Open a --kl-base file and check it was made on the same tokens, vocabulary
 * and chunking as this run (*k: its top-K). NULL after saying why. */
static FILE *kl_open_base(const char *path, const kl_header *want, uint32_t *k) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "moecl perplexity: cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    unsigned char b[KL_HEADER];
    const char *why = NULL;
    char detail[256] = "";
    if (fread(b, 1, KL_HEADER, f) != KL_HEADER) why = "is shorter than its 64-byte header";
    else if (memcmp(b, KL_MAGIC, 4)) why = "is not a logits file written by --kl-save (bad magic)";
    else if (get_u32(b + 4) != KL_VERSION) {
        why = "has an unsupported version";
        snprintf(detail, sizeof detail, " %u (this moecl reads %u)", get_u32(b + 4), KL_VERSION);
    } else {
        kl_header h = {get_u32(b + 8), get_u32(b + 12), get_u32(b + 16), get_u32(b + 20), get_u32(b + 24),
                       (uint64_t)get_u32(b + 32) | (uint64_t)get_u32(b + 36) << 32};
        if (h.n_vocab != want->n_vocab) {
            why = "was made with another vocabulary";
            snprintf(detail, sizeof detail, " (%u tokens; this model has %u)", h.n_vocab, want->n_vocab);
        } else if (h.n_ctx != want->n_ctx || h.n_chunks != want->n_chunks || h.n_scored != want->n_scored) {
            why = "was made with other chunking";
            snprintf(detail, sizeof detail, " (-c %u, %u chunks; this run: -c %u, %u chunks)", h.n_ctx, h.n_chunks,
                     want->n_ctx, want->n_chunks);
        } else if (h.hash != want->hash) {
            why = "was made on other text (the token ids differ)";
        } else if (h.top_k == 0 || h.top_k > h.n_vocab) {
            why = "has a top-K outside 1..n_vocab";
        } else {
            long expect = KL_HEADER + (long)h.n_chunks * h.n_scored * h.top_k * 8;
            if (fseek(f, 0, SEEK_END) || ftell(f) != expect) {
                why = "has the wrong size (truncated or padded)";
                snprintf(detail, sizeof detail, " (expected %ld bytes)", expect);
            } else if (fseek(f, KL_HEADER, SEEK_SET)) {
                why = "cannot be read";
            }
            *k = h.top_k;
        }
    }
    if (why) {
        fprintf(stderr, "moecl perplexity: %s %s%s\n", path, why, detail);
        fclose(f);
        return NULL;
    }
    return f;
}

typedef struct pair {
    float v;
    int32_t id;
} pair;

static int pair_desc(const void *a, const void *b) {
    const pair *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* pair_desc order: is a before b? */
static bool before(pair a, pair b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

/* The k largest logits, most likely first (ties: lower id first), into
 * out[0..k): a heap of the k best so far whose root is the worst of them,
 * O(n log k) rather than sorting the whole vocabulary at every position. */
static void top_k_select(const float *lg, int32_t n, uint32_t k, pair *out) {
    uint32_t m = 0;
    for (int32_t v = 0; v < n; v++) {
        pair x = {lg[v], v};
        uint32_t i;
        if (m < k) {
            for (i = m++; i > 0 && before(out[(i - 1) / 2], x); i = (i - 1) / 2) out[i] = out[(i - 1) / 2];
            out[i] = x;
        } else if (before(x, out[0])) {
            for (i = 0;;) {
                uint32_t c = 2 * i + 1;
                if (c >= m) break;
                if (c + 1 < m && before(out[c], out[c + 1])) c++;
                if (!before(x, out[c])) break;
                out[i] = out[c];
                i = c;
            }
            out[i] = x;
        }
    }
    qsort(out, m, sizeof *out, pair_desc);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Value at quantile q of sorted v[0..n) (linear interpolation). */
static double quantile(const double *v, size_t n, double q) {
    double pos = q * (double)(n - 1);
    size_t i = (size_t)pos;
    if (i + 1 >= n) return v[n - 1];
    return v[i] + (pos - (double)i) * (v[i + 1] - v[i]);
}

int cmd_perplexity(int argc, char **argv) {
    const char *model_path = NULL, *text_path = NULL, *token_list = NULL, *kl_save = NULL, *kl_base = NULL;
    long n_ctx = 512, n_batch = 512, threads = 0, max_chunks = -1, top_k = 64;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED() do { if (!v) return usage("option %s needs a value", a); i++; } while (0)
#define LONG(dst, lo, hi) do { NEED(); if (!cli_parse_long(v, lo, hi, &(dst))) return usage("bad number for %s", a); } while (0)
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { NEED(); model_path = v; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { NEED(); text_path = v; }
        else if (!strcmp(a, "--tokens")) { NEED(); token_list = v; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) LONG(n_ctx, 4, 1 << 20);
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch")) LONG(n_batch, 1, 1 << 16);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) LONG(threads, 1, 1024);
        else if (!strcmp(a, "--chunks")) LONG(max_chunks, 1, INT32_MAX);
        else if (!strcmp(a, "--kl-save")) { NEED(); kl_save = v; }
        else if (!strcmp(a, "--kl-base")) { NEED(); kl_base = v; }
        else if (!strcmp(a, "--kl-top-k")) LONG(top_k, 1, INT32_MAX);
        else return usage("unknown option %s", a);
#undef NEED
#undef LONG
    }
    if (!model_path) return usage("%s", "-m PATH is required");
    if (!text_path == !token_list) return usage("%s", "give -f TEXT or --tokens IDS (one of them)");
    if (kl_save && kl_base) return usage("%s", "give --kl-save or --kl-base, not both");

    moecl_model *model = NULL;
    moecl_context *ctx = NULL;
    int32_t *tokens = NULL;
    pair *pairs = NULL;
    double *kls = NULL;
    float *rec = NULL;
    FILE *kf = NULL;
    int rc = 1, n_tok = 0;
    char tmp_path[4200] = "";
    moecl_status st = moecl_model_load(model_path, NULL, &model);
    if (st) {
        rc = fail("cannot load the model", st);
        goto out;
    }
    const moecl_tokenizer *tok = moecl_model_get_tokenizer(model);
    moecl_model_info info;
    if ((st = moecl_model_get_info(model, &info))) {
        rc = fail("model info", st);
        goto out;
    }
    const int32_t n_vocab = info.n_vocab;
    bool add_bos = false;
    int32_t bos = -1;
    if (text_path) {
        size_t len;
        char *text;
        if (cli_read_text("moecl perplexity", text_path, CLI_TEXT_MAX_BYTES, &text, &len)) goto out;
        if (!tok) {
            free(text);
            fprintf(stderr, "moecl perplexity: %s has no tokenizer: give --tokens\n", model_path);
            goto out;
        }
        int32_t need = 0;
        st = moecl_tokenize(tok, text, len, 0, NULL, 0, &need);
        if (!st && !(tokens = malloc((size_t)(need > 0 ? need : 1) * sizeof *tokens))) st = MOECL_ERR_NOMEM;
        if (!st) st = moecl_tokenize(tok, text, len, 0, tokens, need, &n_tok);
        free(text);
        if (st) {
            rc = fail("cannot tokenize the text", st);
            goto out;
        }
        bos = moecl_tokenizer_bos_id(tok);
        add_bos = n_tok > 0 && bos >= 0 && tokens[0] == bos;
    } else if ((rc = parse_ids(token_list, &tokens, &n_tok))) {
        goto out;
    }
    rc = 1;
    for (int i = 0; i < n_tok; i++)
        if (tokens[i] >= n_vocab) {
            fprintf(stderr, "moecl perplexity: token id %d is outside the vocabulary (%d)\n", tokens[i], n_vocab);
            goto out;
        }
    if (n_tok < 2 * n_ctx) {
        fprintf(stderr, "moecl perplexity: the text has %d tokens; -c %ld needs at least %ld (two chunks)\n", n_tok,
                n_ctx, 2 * n_ctx);
        goto out;
    }
    int n_chunks = (int)(n_tok / n_ctx);
    if (max_chunks > 0 && max_chunks < n_chunks) n_chunks = (int)max_chunks;
    const int first = (int)(n_ctx / 2), n_scored = (int)n_ctx - 1 - first;
    if (n_batch > n_ctx) n_batch = n_ctx;

    moecl_context_params cp = moecl_context_default_params();
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_batch = (uint32_t)n_batch;
    cp.n_threads = (int32_t)threads;
    cp.logits_all = true;
    if ((st = moecl_context_new(model, &cp, &ctx))) {
        rc = fail("cannot create the context", st);
        goto out;
    }
    /* The evaluated ids (chunk starts replaced by BOS) identify the text of a KL file. */
    for (int c = 0; add_bos && c < n_chunks; c++) tokens[(size_t)c * n_ctx] = bos;
    kl_header hdr = {(uint32_t)n_vocab, (uint32_t)n_ctx, (uint32_t)n_chunks, 0, (uint32_t)n_scored,
                     fnv1a(tokens, (size_t)n_chunks * n_ctx)};
    uint32_t k = 0;
    if (kl_save) {
        k = (uint32_t)(top_k < n_vocab ? top_k : n_vocab);
        hdr.top_k = k;
        snprintf(tmp_path, sizeof tmp_path, "%s.partial", kl_save);
        if (!(kf = fopen(tmp_path, "wb"))) {
            fprintf(stderr, "moecl perplexity: cannot create %s: %s\n", tmp_path, strerror(errno));
            goto out;
        }
        unsigned char b[KL_HEADER];
        header_encode(&hdr, b);
        if (fwrite(b, 1, KL_HEADER, kf) != KL_HEADER) goto write_err;
    } else if (kl_base && !(kf = kl_open_base(kl_base, &hdr, &k))) {
        goto out;
    }
    if ((kl_save || kl_base) && !(pairs = malloc((size_t)n_vocab * sizeof *pairs))) goto nomem;
    if (kl_base && !(kls = malloc((size_t)n_chunks * n_scored * sizeof *kls))) goto nomem;
    if ((kl_save || kl_base) && !(rec = malloc((size_t)k * 8))) goto nomem;

    fprintf(stderr, "perplexity: %d tokens, %d chunks of %ld (scoring the last %d of each), batch %ld\n", n_tok,
            n_chunks, n_ctx, n_scored, n_batch);
    double nll = 0, nll2 = 0, kl_sum = 0, kl_sum2 = 0, mass_sum = 0;
    long count = 0, same_top = 0;
    for (int c = 0; c < n_chunks; c++) {
        const int32_t *chunk = tokens + (size_t)c * n_ctx;
        if ((st = moecl_seq_truncate(ctx, 0, 0))) {
            rc = fail("cannot clear the cache", st);
            goto out;
        }
        for (int b0 = 0; b0 < n_ctx; b0 += (int)n_batch) {
            int nb = (int)(n_ctx - b0 < n_batch ? n_ctx - b0 : n_batch);
            if ((st = moecl_decode(ctx, chunk + b0, nb))) {
                rc = fail("decode failed", st);
                goto out;
            }
            for (int j = b0; j < b0 + nb; j++) {
                if (j < first || j >= n_ctx - 1) continue;
                const float *lg = moecl_get_logits(ctx, j - b0); /* [n_vocab] */
                double mx = lg[0];
                int32_t arg = 0;
                for (int32_t v = 1; v < n_vocab; v++)
                    if (lg[v] > mx) mx = lg[v], arg = v;
                double s = 0;
                for (int32_t v = 0; v < n_vocab; v++) s += exp((double)lg[v] - mx);
                const double lse = mx + log(s);
                const double x = lse - (double)lg[chunk[j + 1]];
                nll += x;
                nll2 += x * x;
                count++;
                if (kl_save) {
                    top_k_select(lg, n_vocab, k, pairs);
                    for (uint32_t i = 0; i < k; i++) {
                        int32_t id = pairs[i].id;
                        float lp = (float)((double)pairs[i].v - lse);
                        memcpy((char *)rec + 4 * i, &id, 4);
                        memcpy((char *)rec + 4 * (k + i), &lp, 4);
                    }
                    if (fwrite(rec, 8, k, kf) != k) goto write_err;
                } else if (kl_base) {
                    if (fread(rec, 8, k, kf) != k) {
                        fprintf(stderr, "moecl perplexity: cannot read %s\n", kl_base);
                        goto out;
                    }
                    double kl = 0, pm = 0, qm = 0;
                    int32_t top = -1;
                    for (uint32_t i = 0; i < k; i++) {
                        int32_t id;
                        float lp;
                        memcpy(&id, (char *)rec + 4 * i, 4);
                        memcpy(&lp, (char *)rec + 4 * (k + i), 4);
                        if (id < 0 || id >= n_vocab) {
                            fprintf(stderr, "moecl perplexity: %s: token id %d out of range\n", kl_base, id);
                            goto out;
                        }
                        if (i == 0) top = id;
                        /* q rounded as a saved file rounds p: a model against its own file gives exactly 0 */
                        const double p = exp((double)lp), lq = (double)(float)((double)lg[id] - lse);
                        kl += p * ((double)lp - lq);
                        pm += p;
                        qm += exp(lq);
                    }
                    const double pt = 1.0 - pm, qt = 1.0 - qm;
                    if (pt > 1e-12 && qt > 1e-300) kl += pt * (log(pt) - log(qt));
                    if (kl < 0) kl = 0; /* rounding of an exact zero */
                    kls[count - 1] = kl;
                    kl_sum += kl;
                    kl_sum2 += kl * kl;
                    mass_sum += pm;
                    same_top += arg == top;
                }
            }
        }
        printf("[%d]%.4f,", c + 1, exp(nll / (double)count));
        fflush(stdout);
    }
    printf("\n");
    {
        const double mean = nll / (double)count, var = nll2 / (double)count - mean * mean;
        const double ppl = exp(mean);
        printf("Final estimate: PPL = %.4f +/- %.5f (%ld tokens scored, mean NLL %.6f)\n", ppl,
               var > 0 && count > 1 ? sqrt(var / (double)(count - 1)) * ppl : 0.0, count, mean);
    }
    if (kl_save) {
        int e = fclose(kf);
        kf = NULL;
        if (e || rename(tmp_path, kl_save)) goto write_err;
        *tmp_path = 0;
        printf("saved the top-%u log-probabilities of %ld positions to %s\n", k, count, kl_save);
    }
    if (kl_base) {
        const double m = kl_sum / (double)count, var = kl_sum2 / (double)count - m * m;
        qsort(kls, (size_t)count, sizeof *kls, cmp_double);
        printf("KL divergence from %s (top-%u, base top-%u mass %.4f):\n", kl_base, k, k, mass_sum / (double)count);
        printf("  mean %.6f +/- %.6f\n", m, var > 0 && count > 1 ? sqrt(var / (double)(count - 1)) : 0.0);
        printf("  median %.6f  p90 %.6f  p99 %.6f  max %.6f\n", quantile(kls, (size_t)count, 0.5),
               quantile(kls, (size_t)count, 0.9), quantile(kls, (size_t)count, 0.99), kls[count - 1]);
        printf("  top-1 agreement %.4f %% (%ld of %ld)\n", 100.0 * (double)same_top / (double)count, same_top, count);
    }
    rc = 0;
    goto out;
nomem:
    fprintf(stderr, "moecl perplexity: out of memory\n");
    goto out;
write_err:
    fprintf(stderr, "moecl perplexity: cannot write %s: %s\n", kl_save, strerror(errno));
out:
    if (kf) fclose(kf);
    if (*tmp_path) remove(tmp_path); /* a half-written logits file is never left under its name */
    free(rec);
    free(kls);
    free(pairs);
    free(tokens);
    moecl_context_free(ctx);
    moecl_model_free(model);
    return rc;
}
