/*
 * backend_cpu.c - the CPU backend: matrix products and expert FFNs through
 * the kernels in kernels.c (OpenMP threads, single-threaded OpenBLAS).
 */
#include "backend/backend.h"
#include "backend/cpu/kernels.h"

#include <stdlib.h>

typedef struct cpu_backend {
    int n_threads;
    void *scratch;        /* matmul scratch, 64-byte aligned */
    size_t scratch_size;
    float *h1, *h3;       /* [rows, n_ff] expert hidden activations */
    size_t h_cap;         /* floats in each of h1, h3 */
} cpu_backend;

static moecl_status reserve(cpu_backend *c, size_t scratch_bytes) {
    if (scratch_bytes <= c->scratch_size) return MOECL_OK;
    size_t sz = (scratch_bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, sz);
    if (!p) return mc_error(MOECL_ERR_NOMEM, "cpu backend: cannot allocate %zu bytes of scratch", sz);
    free(c->scratch);
    c->scratch = p;
    c->scratch_size = sz;
    return MOECL_OK;
}

static moecl_status cpu_matmul(mc_backend *be, const mc_tensor *W, const float *X, int64_t T, float *Y) {
    cpu_backend *c = be->impl;
    moecl_status st = reserve(c, mc_cpu_matmul_scratch_size(W, T, c->n_threads));
    if (st) return st;
    mc_cpu_matmul(W, X, T, Y, c->n_threads, c->scratch);
    return MOECL_OK;
}

/* Y_e = (silu(X_e·W1ᵀ) ⊙ X_e·W3ᵀ)·W2ᵀ for each expert with tokens. */
static moecl_status cpu_moe_submit(mc_backend *be, const mc_moe_work *w) {
    cpu_backend *c = be->impl;
    const mc_layer *L = &be->model->layers[w->layer];
    const int64_t D = be->model->hp.n_embd, F = be->model->hp.n_ff;
    for (int i = 0; i < w->n_used; i++) {
        const mc_expert *x = &L->experts[w->expert_ids[i]];
        const int64_t r0 = w->offsets[i], n = w->offsets[i + 1] - r0;
        size_t need = (size_t)(n * F);
        if (need > c->h_cap) {
            float *a = realloc(c->h1, need * sizeof(float));
            if (a) c->h1 = a;
            float *b = a ? realloc(c->h3, need * sizeof(float)) : NULL;
            if (b) c->h3 = b;
            if (!a || !b) return mc_error(MOECL_ERR_NOMEM, "cpu backend: out of memory for expert activations");
            c->h_cap = need;
        }
        moecl_status st;
        if ((st = cpu_matmul(be, &x->w1, w->X + r0 * D, n, c->h1))) return st;
        if ((st = cpu_matmul(be, &x->w3, w->X + r0 * D, n, c->h3))) return st;
        mc_cpu_swiglu(c->h1, c->h3, n * F);
        if ((st = cpu_matmul(be, &x->w2, c->h1, n, w->Y + r0 * D))) return st;
    }
    return MOECL_OK;
}

static void cpu_free(mc_backend *be) {
    cpu_backend *c = be->impl;
    free(c->scratch);
    free(c->h1);
    free(c->h3);
    free(c);
    free(be);
}

static const mc_backend_i cpu_iface = {
    .name = "cpu",
    .free = cpu_free,
    .matmul = cpu_matmul,
    .moe_submit = cpu_moe_submit,
    .moe_wait = NULL,
};

moecl_status mc_backend_cpu_new(const moecl_model *model, int n_threads, mc_backend **out) {
    /* Every context makes this backend: the place to refuse a MOECL_CPU_ISA
     * the kernels do not know, rather than ignore it. */
    moecl_status st = mc_cpu_check_env();
    if (st) return st;
    mc_log(MOECL_LOG_INFO, "cpu: kernels %s, int8 kernels %s", mc_cpu_isa(), mc_cpu_int8_kernels());
    mc_backend *be = calloc(1, sizeof *be);
    cpu_backend *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return mc_error(MOECL_ERR_NOMEM, "cpu backend: out of memory");
    }
    c->n_threads = n_threads;
    be->iface = &cpu_iface;
    be->model = model;
    be->impl = c;
    *out = be;
    return MOECL_OK;
}
