/*
 * bench_moe.c - tokens/s of prompt and generation with the experts on the
 * CPU, on an OpenCL device, or split between them.
 *
 * usage: bench-moe MODEL_DIR [cpu|opencl] [GPU_EXPERTS per layer, -1 all]
 *                  [PROMPT_TOKENS] [GEN_TOKENS] [DEVICE_DTYPE f32|f16]
 *        bench-moe --gemm MODEL_DIR [ROWS...]
 *        bench-moe --layers MODEL [THREADS] [PROMPT] [GEN]
 * MODEL_DIR is written as "mixtral-mini" random weights when it does not
 * exist. The device: $MOECL_DEVICE, else the first OpenCL device.
 *
 * --gemm: one expert's FFN (expert 0 of the first MoE layer, F32 weights) for ROWS token
 * rows (default 32 128 512) on the OpenCL device, three ways: our _tiled
 * and _blk kernels (the backend's moe_submit/moe_wait, weights resident) and
 * CLBlast's SGEMM for the three products (the SiLU·mul between them, a
 * trivial element-wise pass, not counted; "nan" when built without CLBlast).
 * Median of 5 after a warm-up.
 *
 * --layers: where the time of the routed experts goes, per MoE layer, on the
 * CPU (mc_context_trace): the router, the gather (plan and packing), the
 * expert FFNs and the weighted scatter, in microseconds per prompt of PROMPT
 * tokens (default 512) and per generated token (GEN, default 32, from the
 * prompt's end), beside the whole decode's time. MODEL: directory or GGUF.
 */
#include "moecl.h"
#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/opencl/opencl.h"
#include "model.h"

#ifdef MOECL_HAVE_CLBLAST /* meson: when CLBlast is installed */
#include <clblast_c.h>
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define REPS 5

/* The first layer with routed experts (a Qwen-MoE model's first layers may
 * be dense, with no experts); -1 when none has. */
static int first_moe_layer(const moecl_model *m) {
    for (int il = 0; il < m->hp.n_layer; il++)
        if (m->layers[il].experts) return il;
    return -1;
}

/* Median seconds of the backend's expert FFN over T rows of expert 0 of the
 * first MoE layer. */
static double time_backend(const moecl_model *m, const char *prompt_kernels, int T) {
    setenv("MOECL_CL_PROMPT", prompt_kernels, 1);
    const int L = m->hp.n_layer, E = m->hp.n_expert, D = m->hp.n_embd;
    uint8_t *place = calloc((size_t)L * E, 1);
    int64_t n_placed = 0;
    mc_opencl_params op = {.selector = getenv("MOECL_DEVICE"), .mem_budget = -1, .experts_per_layer = 1,
                           .dtype = MOECL_DTYPE_F32, .pool = NULL};
    mc_backend *be = NULL;
    if (mc_backend_opencl_new(m, &op, place, 1, &n_placed, &be)) {
        fprintf(stderr, "%s\n", moecl_last_error());
        exit(1);
    }
    float *X = malloc((size_t)T * D * sizeof(float)), *Y = malloc((size_t)T * D * sizeof(float));
    for (int64_t i = 0; i < (int64_t)T * D; i++) X[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    int id = 0;
    int64_t offs[2] = {0, T};
    mc_moe_work w = {.layer = first_moe_layer(m), .n_used = 1, .expert_ids = &id, .offsets = offs, .X = X, .Y = Y};
    double t[REPS + 1];
    for (int r = 0; r <= REPS; r++) {
        double t0 = now_s();
        if (be->iface->moe_submit(be, &w) || be->iface->moe_wait(be)) {
            fprintf(stderr, "%s\n", moecl_last_error());
            exit(1);
        }
        t[r] = now_s() - t0;
    }
    qsort(t + 1, REPS, sizeof(double), cmp_d);
    mc_backend_free(be);
    free(place);
    free(X);
    free(Y);
    unsetenv("MOECL_CL_PROMPT");
    return t[1 + REPS / 2];
}

#ifdef MOECL_HAVE_CLBLAST
/* Median seconds of X·W1ᵀ, X·W3ᵀ, H·W2ᵀ with CLBlast on the same device. */
static double time_clblast(const moecl_model *m, int T) {
    mc_cl_device dev;
    if (mc_cl_select(getenv("MOECL_DEVICE"), false, &dev)) {
        fprintf(stderr, "%s\n", moecl_last_error());
        exit(1);
    }
    const size_t D = (size_t)m->hp.n_embd, F = (size_t)m->hp.n_ff;
    const mc_expert *x = &m->layers[first_moe_layer(m)].experts[0];
    cl_int err;
    cl_context ctx = clCreateContext(NULL, 1, &dev.id, NULL, NULL, &err);
    cl_command_queue q = clCreateCommandQueue(ctx, dev.id, 0, &err);
    float *tmp = malloc(F * D * sizeof(float));
    cl_mem w[3];
    const mc_tensor *ws[3] = {&x->w1, &x->w3, &x->w2};
    for (int i = 0; i < 3; i++) {
        mc_cpu_to_f32(ws[i]->type, ws[i]->data, tmp, (int64_t)(F * D));
        w[i] = clCreateBuffer(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, F * D * sizeof(float), tmp, &err);
    }
    for (size_t i = 0; i < (size_t)T * F; i++) tmp[i] = (float)(i % 1000) / 1000.0f - 0.5f;
    cl_mem X = clCreateBuffer(ctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, (size_t)T * D * sizeof(float), tmp, &err);
    cl_mem H1 = clCreateBuffer(ctx, CL_MEM_READ_WRITE, (size_t)T * F * sizeof(float), NULL, &err);
    cl_mem H3 = clCreateBuffer(ctx, CL_MEM_READ_WRITE, (size_t)T * F * sizeof(float), NULL, &err);
    cl_mem Y = clCreateBuffer(ctx, CL_MEM_READ_WRITE, (size_t)T * D * sizeof(float), NULL, &err);
    double t[REPS + 1];
    for (int r = 0; r <= REPS; r++) {
        double t0 = now_s();
        CLBlastStatusCode s = 0;
        s |= CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, (size_t)T, F, D, 1.0f, X, 0,
                          D, w[0], 0, D, 0.0f, H1, 0, F, &q, NULL);
        s |= CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, (size_t)T, F, D, 1.0f, X, 0,
                          D, w[1], 0, D, 0.0f, H3, 0, F, &q, NULL);
        s |= CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, (size_t)T, D, F, 1.0f, H1,
                          0, F, w[2], 0, F, 0.0f, Y, 0, D, &q, NULL);
        clFinish(q);
        t[r] = now_s() - t0;
        if (s) {
            fprintf(stderr, "CLBlast failed: %d\n", (int)s);
            exit(1);
        }
    }
    qsort(t + 1, REPS, sizeof(double), cmp_d);
    cl_mem all[7] = {w[0], w[1], w[2], X, H1, H3, Y};
    for (int i = 0; i < 7; i++) clReleaseMemObject(all[i]);
    clReleaseCommandQueue(q);
    clReleaseContext(ctx);
    free(tmp);
    return t[1 + REPS / 2];
}
#else
static double time_clblast(const moecl_model *m, int T) { /* built without CLBlast: no column */
    (void)m;
    (void)T;
    return NAN;
}
#endif

static int bench_gemm(int argc, char **argv) {
    moecl_model *m = NULL;
    if (moecl_model_load(argv[2], NULL, &m)) {
        fprintf(stderr, "%s\n", moecl_last_error());
        return 1;
    }
    if (first_moe_layer(m) < 0) {
        fprintf(stderr, "%s: no layer has routed experts\n", argv[2]);
        moecl_model_free(m);
        return 1;
    }
    const double flops = 6.0 * m->hp.n_embd * m->hp.n_ff; /* per row: three products */
    int rows[16] = {32, 128, 512}, n = 3;
    if (argc > 3) {
        n = 0;
        for (int i = 3; i < argc && n < 16; i++) rows[n++] = atoi(argv[i]);
    }
    printf("one expert FFN, D=%d F=%d, F32 weights: ms (GFLOP/s)\n", m->hp.n_embd, m->hp.n_ff);
    printf("%6s %18s %18s %18s\n", "rows", "tiled", "blk", "clblast");
    for (int i = 0; i < n; i++) {
        const int T = rows[i];
        double a = time_backend(m, "tiled", T), b = time_backend(m, "blk", T), c = time_clblast(m, T);
        printf("%6d %9.2f (%5.1f) %9.2f (%5.1f) %9.2f (%5.1f)\n", T, a * 1e3, flops * T / a * 1e-9, b * 1e3,
               flops * T / b * 1e-9, c * 1e3, flops * T / c * 1e-9);
        fflush(stdout);
    }
    moecl_model_free(m);
    return 0;
}

/* Per-layer sums of the trace over some decodes. */
typedef struct layer_sum {
    double route, gather, experts, scatter; /* seconds */
} layer_sum;

static void add_trace(const moecl_model *m, const mc_moe_trace *tr, layer_sum *sum) {
    for (int il = 0; il < m->hp.n_layer; il++) {
        if (!m->layers[il].experts) continue;
        sum[il].route += (double)tr[il].route_ns * 1e-9;
        sum[il].gather += (double)tr[il].gather_ns * 1e-9;
        sum[il].experts += (double)(tr[il].t_end - tr[il].t_begin) * 1e-9;
        sum[il].scatter += (double)tr[il].scatter_ns * 1e-9;
    }
}

static void print_sums(const moecl_model *m, const char *what, const layer_sum *sum, double n, double total) {
    layer_sum all = {0};
    printf("%s: %.1f us per %s in all\n", what, total / n * 1e6, what);
    printf("%6s %10s %10s %10s %10s   (us per %s)\n", "layer", "route", "gather", "experts", "scatter", what);
    for (int il = 0; il < m->hp.n_layer; il++) {
        if (!m->layers[il].experts) {
            printf("%6d  dense\n", il);
            continue;
        }
        const layer_sum *s = &sum[il];
        printf("%6d %10.1f %10.1f %10.1f %10.1f\n", il, s->route / n * 1e6, s->gather / n * 1e6,
               s->experts / n * 1e6, s->scatter / n * 1e6);
        all.route += s->route;
        all.gather += s->gather;
        all.experts += s->experts;
        all.scatter += s->scatter;
    }
    const double moe = all.route + all.gather + all.experts + all.scatter;
    printf("%6s %10.1f %10.1f %10.1f %10.1f   = %.1f%% %.1f%% %.1f%% %.1f%% of the %s; the rest %.1f%%\n", "all",
           all.route / n * 1e6, all.gather / n * 1e6, all.experts / n * 1e6, all.scatter / n * 1e6,
           100 * all.route / total, 100 * all.gather / total, 100 * all.experts / total, 100 * all.scatter / total,
           what, 100 * (total - moe) / total);
}

static int bench_layers(int argc, char **argv) {
    const char *path = argv[2];
    const int n_threads = argc > 3 ? atoi(argv[3]) : 0, P = argc > 4 ? atoi(argv[4]) : 512,
              G = argc > 5 ? atoi(argv[5]) : 32;
    if (P < 1 || G < 1) {
        fprintf(stderr, "bench-moe --layers: PROMPT and GEN must be at least 1\n");
        return 1;
    }
    moecl_model *m = NULL;
    moecl_context *ctx = NULL;
    moecl_context_params cp = moecl_context_default_params();
    cp.n_ctx = (uint32_t)(P + G + 1);
    cp.n_batch = (uint32_t)P;
    cp.n_threads = n_threads;
    cp.backend = MOECL_BACKEND_CPU;
    if (moecl_model_load(path, NULL, &m) || moecl_context_new(m, &cp, &ctx)) {
        fprintf(stderr, "%s\n", moecl_last_error());
        moecl_model_free(m);
        return 1;
    }
    const int L = m->hp.n_layer, V = m->hp.n_vocab;
    mc_moe_trace *tr = calloc((size_t)L, sizeof *tr);
    layer_sum *sp = calloc((size_t)L, sizeof *sp), *sg = calloc((size_t)L, sizeof *sg);
    int32_t *toks = malloc((size_t)P * sizeof *toks);
    int rc = 1;
    if (!tr || !sp || !sg || !toks) goto done;
    for (int i = 0; i < P; i++) toks[i] = (int32_t)((i * 7919 + 13) % V);
    if (moecl_decode(ctx, toks, P)) goto fail; /* warm-up: weights faulted in, scratch sized */
    moecl_seq_truncate(ctx, 0, 0);
    mc_context_trace(ctx, tr);
    double t0 = now_s();
    if (moecl_decode(ctx, toks, P)) goto fail;
    const double t_prompt = now_s() - t0;
    add_trace(m, tr, sp);
    int32_t next = argmax(moecl_get_logits(ctx, -1), V);
    double t_gen = 0;
    for (int i = 0; i < G; i++) {
        t0 = now_s();
        if (moecl_decode(ctx, &next, 1)) goto fail;
        t_gen += now_s() - t0;
        add_trace(m, tr, sg);
        next = argmax(moecl_get_logits(ctx, -1), V);
    }
    mc_context_trace(ctx, NULL);
    const int fl = first_moe_layer(m);
    printf("%s: %d layers, %d experts top-%d, %s experts, %d threads (0: all cores)\n", path, L, m->hp.n_expert,
           m->hp.n_expert_used, fl < 0 ? "no" : moecl_dtype_name(m->layers[fl].experts[0].w1.type), n_threads);
    print_sums(m, "prompt", sp, 1, t_prompt);
    printf("(prompt of %d tokens: %.1f tok/s)\n", P, P / t_prompt);
    print_sums(m, "token", sg, G, t_gen);
    printf("(generation of %d tokens: %.2f tok/s)\n", G, G / t_gen);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "%s\n", moecl_last_error());
done:
    free(tr);
    free(sp);
    free(sg);
    free(toks);
    moecl_context_free(ctx);
    moecl_model_free(m);
    return rc;
}

int main(int argc, char **argv) {
    if (argc > 2 && !strcmp(argv[1], "--gemm")) return bench_gemm(argc, argv);
    if (argc > 2 && !strcmp(argv[1], "--layers")) return bench_layers(argc, argv);
    if (argc < 2) {
        fprintf(stderr, "usage: bench-moe MODEL_DIR [cpu|opencl] [GPU_EXPERTS] [PROMPT] [GEN] [f32|f16]\n");
        return 1;
    }
    const char *dir = argv[1], *backend = argc > 2 ? argv[2] : "cpu";
    int gpu_experts = argc > 3 ? atoi(argv[3]) : -1, P = argc > 4 ? atoi(argv[4]) : 128,
        G = argc > 5 ? atoi(argv[5]) : 32;
    const char *dt = argc > 6 ? argv[6] : "";
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        moecl_random_model_params rp = moecl_random_model_default_params();
        fprintf(stderr, "writing mixtral-mini to %s\n", dir);
        if (moecl_random_model_write(dir, &rp, NULL, NULL)) {
            fprintf(stderr, "%s\n", moecl_last_error());
            return 1;
        }
    }
    moecl_log_set(NULL, MOECL_LOG_INFO, NULL);
    moecl_model *m = NULL;
    if (moecl_model_load(dir, NULL, &m)) {
        fprintf(stderr, "%s\n", moecl_last_error());
        return 1;
    }
    moecl_model_info in;
    moecl_model_get_info(m, &in);
    moecl_context_params cp = moecl_context_default_params();
    cp.n_ctx = (uint32_t)(P + G + 1);
    cp.n_batch = (uint32_t)P;
    cp.backend = strcmp(backend, "opencl") ? MOECL_BACKEND_CPU : MOECL_BACKEND_OPENCL;
    cp.gpu_experts = gpu_experts;
    if (!strcmp(dt, "f16")) cp.device_dtype = MOECL_DTYPE_F16;
    if (!strcmp(dt, "f32")) cp.device_dtype = MOECL_DTYPE_F32;
    double t0 = now_s();
    moecl_context *ctx = NULL;
    if (moecl_context_new(m, &cp, &ctx)) {
        fprintf(stderr, "%s\n", moecl_last_error());
        return 1;
    }
    double t_new = now_s() - t0;
    int32_t *toks = malloc((size_t)P * sizeof *toks);
    for (int i = 0; i < P; i++) toks[i] = (int32_t)((i * 7919 + 13) % in.n_vocab);
    int32_t warm = toks[0]; /* first launch (lazy JIT on some drivers) is not timed */
    double t_warm = now_s();
    if (moecl_decode(ctx, &warm, 1)) return 1;
    t_warm = now_s() - t_warm;
    moecl_seq_truncate(ctx, 0, 0);
    t0 = now_s();
    if (moecl_decode(ctx, toks, P)) {
        fprintf(stderr, "%s\n", moecl_last_error());
        return 1;
    }
    double t_prompt = now_s() - t0;
    int32_t next = argmax(moecl_get_logits(ctx, -1), in.n_vocab);
    t0 = now_s();
    for (int i = 0; i < G; i++) {
        if (moecl_decode(ctx, &next, 1)) {
            fprintf(stderr, "%s\n", moecl_last_error());
            return 1;
        }
        next = argmax(moecl_get_logits(ctx, -1), in.n_vocab);
    }
    double t_gen = now_s() - t0;
    printf("%s backend=%s gpu_experts=%d: context %.0f ms, first token %.0f ms, prompt %d: %.1f tok/s, "
           "generation %d: %.2f tok/s, last token %d\n",
           dir, backend, gpu_experts, t_new * 1e3, t_warm * 1e3, P, P / t_prompt, G, G / t_gen, next);
    free(toks);
    moecl_context_free(ctx);
    moecl_model_free(m);
    return 0;
}
