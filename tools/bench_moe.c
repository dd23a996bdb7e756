/*
 * bench_moe.c - tokens/s of prompt and generation with the experts on the
 * CPU, on an OpenCL device, or split between them.
 *
 * usage: bench-moe MODEL_DIR [cpu|opencl] [GPU_EXPERTS per layer, -1 all]
 *                  [PROMPT_TOKENS] [GEN_TOKENS] [DEVICE_DTYPE f32|f16]
 * MODEL_DIR is written as "mixtral-mini" random weights when it does not
 * exist. The device: $MOECL_DEVICE, else the first OpenCL device.
 */
#include "moecl.h"

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

int main(int argc, char **argv) {
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
