/*
 * backend_cpu.c - the CPU backend: matrix products and expert FFNs through
 * the kernels in kernels.c (the context's thread pool, single-threaded OpenBLAS), and
 * at decode three pool calls per layer over all the chosen experts.
 */
#include "backend/backend.h"
#include "backend/cpu/kernels.h"

#include <stdlib.h>

typedef struct cpu_backend {
    mc_pool *pool;        /* the context's; not owned */
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
    moecl_status st = reserve(c, mc_cpu_matmul_scratch_size(W, T, mc_pool_size(c->pool)));
    if (st) return st;
    mc_cpu_matmul(W, X, T, Y, c->pool, c->scratch);
    return MOECL_OK;
}

static moecl_status reserve_h(cpu_backend *c, size_t need) {
    if (need <= c->h_cap) return MOECL_OK;
    float *a = realloc(c->h1, need * sizeof(float));
    if (a) c->h1 = a;
    float *b = a ? realloc(c->h3, need * sizeof(float)) : NULL;
    if (b) c->h3 = b;
    if (!a || !b) return mc_error(MOECL_ERR_NOMEM, "cpu backend: out of memory for expert activations");
    c->h_cap = need;
    return MOECL_OK;
}

/* Rows [r0, r1) of W as a matrix of their own. */
static mc_tensor row_view(const mc_tensor *W, int64_t r0, int64_t r1) {
    size_t rb = 0;
    mc_dtype_row_bytes(W->type, W->cols, &rb); /* checked when the model was loaded */
    mc_tensor v = {.type = W->type, .rows = r1 - r0, .cols = W->cols, .data = (const char *)W->data + (size_t)r0 * rb,
                   .nbytes = (size_t)(r1 - r0) * rb};
    return v;
}

/* One thread's share [v0, v1) of the virtual rows of a phase: n matrices of
 * `rows` rows each (matrix j: W[j], one row of input X[j], output Y[j]),
 * laid end to end; a share may span several matrices. */
static void phase_rows(const mc_tensor *const *W, const float *const *X, float *const *Y, int64_t rows, int64_t v0,
                       int64_t v1) {
    while (v0 < v1) {
        const int64_t j = v0 / rows, r0 = v0 % rows, r1 = v1 - j * rows < rows ? v1 - j * rows : rows;
        const mc_tensor view = row_view(W[j], r0, r1);
        mc_cpu_matmul(&view, X[j], 1, Y[j] + r0, NULL, NULL);
        v0 = j * rows + r1;
    }
}

/* moe_single_rows' three phases as pool chunks. */
typedef struct single_job {
    const mc_tensor *const *Wgu, *const *Wd;
    const float *const *Xgu, *const *Xd;
    float *const *Ygu, *const *Yd;
    float *h1, *h3;
    int64_t D, F;
} single_job;

static void single_gate_up(void *arg, int64_t v0, int64_t v1, int tid) {
    (void)tid;
    const single_job *j = arg;
    phase_rows(j->Wgu, j->Xgu, j->Ygu, j->F, v0, v1);
}

static void single_swiglu(void *arg, int64_t v0, int64_t v1, int tid) {
    (void)tid;
    const single_job *j = arg;
    if (v1 > v0) mc_cpu_swiglu(j->h1 + v0, j->h3 + v0, v1 - v0);
}

static void single_down(void *arg, int64_t v0, int64_t v1, int tid) {
    (void)tid;
    const single_job *j = arg;
    phase_rows(j->Wd, j->Xd, j->Yd, j->D, v0, v1);
}

/* Decode: one row per expert. Every expert's gate and up products run in one
 * pool call, the SwiGLU and the down products in one each, each thread
 * taking an equal slice of all the experts' rows, instead of three calls
 * per expert: 128 small experts top-8 made 24 regions
 * of ~20 us of work each per layer. */
static void moe_single_rows(cpu_backend *c, const mc_layer *L, const mc_moe_work *w, int64_t D, int64_t F) {
    enum { MAX_USED = 64, ALIGN = 16 }; /* ALIGN: rows per share boundary, as the kernels' row tiles */
    const int n = w->n_used;
    const mc_tensor *Wgu[2 * MAX_USED], *Wd[MAX_USED];
    const float *Xgu[2 * MAX_USED], *Xd[MAX_USED];
    float *Ygu[2 * MAX_USED], *Yd[MAX_USED];
    for (int i = 0; i < n; i++) {
        const mc_expert *x = &L->experts[w->expert_ids[i]];
        const int64_t r = w->offsets[i];
        Wgu[2 * i] = &x->w1, Xgu[2 * i] = w->X + r * D, Ygu[2 * i] = c->h1 + i * F;
        Wgu[2 * i + 1] = &x->w3, Xgu[2 * i + 1] = w->X + r * D, Ygu[2 * i + 1] = c->h3 + i * F;
        Wd[i] = &x->w2, Xd[i] = c->h1 + i * F, Yd[i] = w->Y + r * D;
    }
    single_job j = {.Wgu = Wgu, .Xgu = Xgu, .Ygu = Ygu, .Wd = Wd, .Xd = Xd, .Yd = Yd, .h1 = c->h1, .h3 = c->h3,
                    .D = D, .F = F};
    /* Gate and up: 2n matrices of F rows; then the SwiGLU; then down: n
     * matrices of D rows. Static shares on row-tile boundaries, as before. */
    mc_pool_for(c->pool, 2 * n * F, MC_POOL_STATIC, ALIGN, 0, single_gate_up, &j);
    mc_pool_for(c->pool, n * F, MC_POOL_STATIC, 1, 0, single_swiglu, &j);
    mc_pool_for(c->pool, n * D, MC_POOL_STATIC, ALIGN, 0, single_down, &j);
}

/* Whether moe_single_rows applies: several threads, one row per expert,
 * and kernels that need no scratch at one row. */
static bool single_rows(const cpu_backend *c, const mc_layer *L, const mc_moe_work *w) {
    if (mc_pool_size(c->pool) < 2 || w->n_used < 1 || w->n_used > 64) return false;
    for (int i = 0; i < w->n_used; i++) {
        const mc_expert *x = &L->experts[w->expert_ids[i]];
        if (w->offsets[i + 1] - w->offsets[i] != 1 || mc_cpu_matmul_scratch_size(&x->w1, 1, 1) ||
            mc_cpu_matmul_scratch_size(&x->w3, 1, 1) || mc_cpu_matmul_scratch_size(&x->w2, 1, 1))
            return false;
    }
    return true;
}

/* Y_e = (silu(X_e·W1ᵀ) ⊙ X_e·W3ᵀ)·W2ᵀ for each expert with tokens. */
static moecl_status cpu_moe_submit(mc_backend *be, const mc_moe_work *w) {
    cpu_backend *c = be->impl;
    const mc_layer *L = &be->model->layers[w->layer];
    const int64_t D = be->model->hp.n_embd, F = be->model->hp.n_ff;
    if (single_rows(c, L, w)) {
        moecl_status st = reserve_h(c, (size_t)w->n_used * (size_t)F);
        if (st) return st;
        moe_single_rows(c, L, w, D, F);
        return MOECL_OK;
    }
    for (int i = 0; i < w->n_used; i++) {
        const mc_expert *x = &L->experts[w->expert_ids[i]];
        const int64_t r0 = w->offsets[i], n = w->offsets[i + 1] - r0;
        moecl_status st = reserve_h(c, (size_t)(n * F));
        if (st) return st;
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

moecl_status mc_backend_cpu_new(const moecl_model *model, mc_pool *pool, mc_backend **out) {
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
    c->pool = pool;
    be->iface = &cpu_iface;
    be->model = model;
    be->impl = c;
    *out = be;
    return MOECL_OK;
}
