/*
 * bench_parallel.c - `moecl bench --parallel 1,2,4,8`: aggregate generation
 * speed with B sequences decoding together, as the engine's steps do (one
 * token of every sequence per moecl_decode_batch). Each expert's weights are
 * read once per step for all B tokens, so aggregate tokens/s should grow
 * with B until the step is compute-bound.
 *
 *   moecl bench --parallel LIST -m PATH [-p 32] [-n 32] [-t THREADS] [-r 3] [--backend cpu|opencl|auto]
 */
#include "moecl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static bool parse_pos(const char *s, int hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > hi) return false;
    *out = (int)v;
    return true;
}

/* Median seconds per step of B sequences, each with a prompt of np tokens
 * already read, over reps runs of ng steps. Returns < 0 on failure. */
static double time_steps(const moecl_model *model, const moecl_context_params *base, int B, int np, int ng,
                         int reps, int32_t n_vocab) {
    moecl_context_params cp = *base;
    cp.n_seq_max = (uint32_t)B;
    cp.n_ctx = (uint32_t)(np + ng + 1);
    cp.n_batch = (uint32_t)(np > B ? np : B);
    moecl_context *ctx = NULL;
    int32_t *tok = malloc((size_t)(np > B ? np : B) * sizeof *tok), *seq = malloc((size_t)B * sizeof *seq);
    double *t = calloc((size_t)reps, sizeof *t), result = -1;
    if (!tok || !seq || !t || moecl_context_new(model, &cp, &ctx) != MOECL_OK) goto done;
    uint64_t s = 12345;
    for (int r = 0; r <= reps; r++) { /* run 0 warms up */
        moecl_seq_truncate(ctx, -1, 0);
        for (int b = 0; b < B; b++) { /* each sequence its own prompt */
            for (int i = 0; i < np; i++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                tok[i] = (int32_t)((s >> 33) % (uint64_t)n_vocab);
            }
            int32_t *ids = malloc((size_t)np * sizeof *ids);
            if (!ids) goto done;
            for (int i = 0; i < np; i++) ids[i] = b;
            moecl_batch pb = {.n_tokens = np, .tokens = tok, .seq_id = ids};
            moecl_status st = moecl_decode_batch(ctx, &pb);
            free(ids);
            if (st) goto done;
        }
        for (int b = 0; b < B; b++) {
            seq[b] = b;
            tok[b] = (int32_t)((uint64_t)(b * 7919 + 13) % (uint64_t)n_vocab);
        }
        moecl_batch gb = {.n_tokens = B, .tokens = tok, .seq_id = seq};
        double t0 = now_s();
        for (int i = 0; i < ng; i++)
            if (moecl_decode_batch(ctx, &gb) != MOECL_OK) goto done;
        if (r) t[r - 1] = (now_s() - t0) / ng;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    result = t[reps / 2];
done:
    if (result < 0) fprintf(stderr, "moecl bench: B=%d: %s\n", B, moecl_last_error());
    moecl_context_free(ctx);
    free(tok);
    free(seq);
    free(t);
    return result;
}

int cmd_bench_parallel(int argc, char **argv);
int cmd_bench_parallel(int argc, char **argv) {
    const char *model_path = getenv("MOECL_MODEL"), *list = NULL;
    int np = 32, ng = 32, threads = 0, reps = 3;
    moecl_context_params cp = moecl_context_default_params();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "moecl bench: option %s needs a value\n", a);
            return 2;
        }
        i++;
        bool ok = true;
        if (!strcmp(a, "--parallel")) list = v;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "-p")) ok = parse_pos(v, 1 << 16, &np);
        else if (!strcmp(a, "-n")) ok = parse_pos(v, 1 << 20, &ng);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) ok = parse_pos(v, 1024, &threads);
        else if (!strcmp(a, "-r")) ok = parse_pos(v, 1000, &reps);
        else if (!strcmp(a, "--backend")) {
            if (!strcmp(v, "cpu")) cp.backend = MOECL_BACKEND_CPU;
            else if (!strcmp(v, "opencl")) cp.backend = MOECL_BACKEND_OPENCL;
            else if (!strcmp(v, "auto")) cp.backend = MOECL_BACKEND_AUTO;
            else ok = false;
        } else if (!strcmp(a, "--device")) cp.device = v;
        else ok = false;
        if (!ok) {
            fprintf(stderr, "moecl bench --parallel: bad option %s %s\n", a, v);
            return 2;
        }
    }
    if (!model_path || !list) {
        fprintf(stderr, "moecl bench --parallel LIST needs -m PATH\n");
        return 2;
    }
    cp.n_threads = threads;
    int Bs[64], nB = 0;
    for (const char *p = list; *p && nB < 64;) {
        char *end;
        long b = strtol(p, &end, 10);
        if (end == p || b < 1 || b > 1024) {
            fprintf(stderr, "moecl bench: bad --parallel list '%s'\n", list);
            return 2;
        }
        Bs[nB++] = (int)b;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') {
            fprintf(stderr, "moecl bench: bad --parallel list '%s'\n", list);
            return 2;
        }
    }
    moecl_model *model = NULL;
    if (moecl_model_load(model_path, NULL, &model) != MOECL_OK) {
        fprintf(stderr, "moecl bench: cannot load %s: %s\n", model_path, moecl_last_error());
        return 1;
    }
    moecl_model_info in;
    moecl_model_get_info(model, &in);
    printf("model: %d layers, %d experts top-%d in %s; prompt %d tokens per sequence, %d steps, median of %d\n",
           in.n_layer, in.n_expert, in.n_expert_used, moecl_dtype_name(in.expert_dtype), np, ng, reps);
    printf("%6s %12s %14s %12s\n", "B", "ms/step", "tokens/s", "vs first B");
    double base = 0;
    int rc = 0;
    for (int k = 0; k < nB; k++) {
        double t = time_steps(model, &cp, Bs[k], np, ng, reps, in.n_vocab);
        if (t < 0) {
            rc = 1;
            break;
        }
        double tps = Bs[k] / t;
        if (k == 0) base = tps;
        printf("%6d %12.2f %14.1f %11.2fx\n", Bs[k], t * 1e3, tps, tps / base);
        fflush(stdout);
    }
    moecl_model_free(model);
    return rc;
}
