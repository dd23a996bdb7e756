/*
 * bench_parallel.c - `moecl bench --parallel 1,2,4,8`: aggregate generation
 * speed with B sequences decoding together, as the engine's steps do (one
 * token of every sequence per moecl_decode_batch). Each expert's weights are
 * read once per step for all B tokens, so aggregate tokens/s should grow
 * with B until the step is compute-bound.
 *
 *   moecl bench --parallel LIST -m PATH [-p 32] [-n 32] [-t THREADS] [-r 3] [--backend cpu|opencl|auto]
 *               [--kv-type f32|f16] [--bw GB/s --gflops GFLOP/s]
 *
 * Per B it also gives the distinct experts a step runs (summed over layers)
 * and their bytes, the other bytes a step reads (attention and router
 * weights, LM head, the KV cells attended to), and with --bw and --gflops
 * (this machine's read bandwidth and sgemm rate, e.g. from `bench-blas
 * --threads N`) the roofline: a step takes at least
 * max(bytes / bandwidth, FLOPs / sgemm rate); "of roofline" is that bound
 * over the measured step time.
 */
#include "moecl.h"

#include "kv_cache.h" /* mc_context_experts_run */
#include "model.h"

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
 * already read, over reps runs of ng steps; *experts: distinct experts per
 * step (summed over layers), the mean over the last run. Returns < 0 on
 * failure. */
static double time_steps(const moecl_model *model, const moecl_context_params *base, int B, int np, int ng,
                         int reps, int32_t n_vocab, double *experts) {
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
        double t0 = now_s(), run = 0;
        for (int i = 0; i < ng; i++) {
            if (moecl_decode_batch(ctx, &gb) != MOECL_OK) goto done;
            run += (double)mc_context_experts_run(ctx);
        }
        if (r) t[r - 1] = (now_s() - t0) / ng;
        *experts = run / ng;
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

/* What one decode step of B tokens at mean position pos reads and
 * computes, besides the routed experts' weights. */
typedef struct step_cost {
    double other_bytes;     /* attention + router + dense/shared FFN weights, LM head, KV cells read */
    double expert_bytes;    /* of one routed expert (w1 + w3 + w2), the mean over MoE layers */
    double flops;           /* 2 x B x weights used per token + attention's dot products */
} step_cost;

static double tensor_params(const mc_tensor *t) { return (double)t->rows * (double)t->cols; }

static step_cost cost_of(const moecl_model *m, int B, double pos, double kv_bytes_per_cell) {
    const mc_hparams *hp = &m->hp;
    step_cost c = {0};
    double params = 0, n_moe = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const mc_layer *L = &m->layers[il];
        const mc_tensor *att[4] = {&L->wq, &L->wk, &L->wv, &L->wo};
        for (int i = 0; i < 4; i++) {
            c.other_bytes += (double)att[i]->nbytes;
            params += tensor_params(att[i]);
        }
        if (L->experts) {
            const mc_expert *x = &L->experts[0];
            c.expert_bytes += (double)(x->w1.nbytes + x->w3.nbytes + x->w2.nbytes);
            params += hp->n_expert_used * (tensor_params(&x->w1) + tensor_params(&x->w3) + tensor_params(&x->w2));
            c.other_bytes += (double)hp->n_expert * hp->n_embd * 4.0; /* router, f32 */
            params += (double)hp->n_expert * hp->n_embd;
            n_moe++;
        }
        const mc_expert *host = L->experts ? (L->shexp_gate ? &L->shexp : NULL) : &L->ffn;
        if (host) {
            c.other_bytes += (double)(host->w1.nbytes + host->w3.nbytes + host->w2.nbytes);
            params += tensor_params(&host->w1) + tensor_params(&host->w3) + tensor_params(&host->w2);
        }
    }
    c.other_bytes += (double)m->lm_head.nbytes + (double)B * pos * kv_bytes_per_cell;
    params += tensor_params(&m->lm_head);
    if (n_moe > 0) c.expert_bytes /= n_moe;
    c.flops = 2.0 * B * params + 4.0 * B * hp->n_layer * (double)hp->n_head * hp->head_dim * pos;
    return c;
}

int cmd_bench_parallel(int argc, char **argv);
int cmd_bench_parallel(int argc, char **argv) {
    const char *model_path = getenv("MOECL_MODEL"), *list = NULL;
    int np = 32, ng = 32, threads = 0, reps = 3;
    double bw = 0, gflops = 0;
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
        else if (!strcmp(a, "--kv-type")) {
            if (!strcmp(v, "f32")) cp.kv_type = MOECL_DTYPE_F32;
            else if (!strcmp(v, "f16")) cp.kv_type = MOECL_DTYPE_F16;
            else ok = false;
        } else if (!strcmp(a, "--bw")) ok = (bw = atof(v)) > 0;
        else if (!strcmp(a, "--gflops")) ok = (gflops = atof(v)) > 0;
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
    const bool roof = bw > 0 && gflops > 0;
    printf("threads %d, KV cache %s%s\n", threads, moecl_dtype_name(cp.kv_type), roof ? "" : " (--bw and --gflops: roofline)");
    if (roof) printf("roofline: %.1f GB/s read, %.1f GFLOP/s sgemm\n", bw, gflops);
    printf("%6s %10s %12s %10s %11s %9s %9s %10s %10s\n", "B", "ms/step", "tokens/s", "vs first", "experts/st",
           "exp MiB", "other MiB", "roof ms", "of roof");
    double base = 0;
    int rc = 0;
    for (int k = 0; k < nB; k++) {
        double experts = 0;
        double t = time_steps(model, &cp, Bs[k], np, ng, reps, in.n_vocab, &experts);
        if (t < 0) {
            rc = 1;
            break;
        }
        double tps = Bs[k] / t;
        if (k == 0) base = tps;
        const double per_cell = 2.0 * in.n_layer * in.n_head_kv * in.head_dim * (cp.kv_type == MOECL_DTYPE_F16 ? 2 : 4);
        const step_cost c = cost_of(model, Bs[k], np + ng / 2.0, per_cell);
        const double eb = experts * c.expert_bytes;
        double t_roof = 0;
        if (roof) {
            t_roof = (c.other_bytes + eb) / (bw * 1e9);
            if (c.flops / (gflops * 1e9) > t_roof) t_roof = c.flops / (gflops * 1e9);
        }
        printf("%6d %10.2f %12.1f %9.2fx %11.1f %9.1f %9.1f %10.2f %9.0f%%\n", Bs[k], t * 1e3, tps, tps / base,
               experts, eb / 1048576.0, c.other_bytes / 1048576.0, t_roof * 1e3, roof ? 100.0 * t_roof / t : 0.0);
        fflush(stdout);
    }
    moecl_model_free(model);
    return rc;
}
