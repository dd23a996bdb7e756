/*
 * context.c - a context (KV cache, scratch, backends) and the forward pass.
 *
 * One moecl_decode_batch call, T tokens:
 *   embed → for each layer:
 *     RMSNorm → Q,K,V = x·Wᵀ → RoPE → KV cache → attention → x += att·Woᵀ
 *     RMSNorm → router (host, f32) → gather per expert → expert FFNs on the
 *     backends that hold them (submitted together, waited together) →
 *     scatter: x += Σ w·y
 *   → final RMSNorm and LM head for the rows whose logits are kept.
 * With the dense layers on a device (placement dense, or auto when the
 * planner finds it worth it) the same steps run there, the hidden states
 * resident on it: forward_dense.
 */
#include "arch/arch.h"
#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/opencl/opencl.h"
#include "guard.h"
#include "kv_cache.h"
#include "model.h"
#include "ops.h"
#include "placement.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_BACKENDS (1 + MC_PLACE_MAX_DEV)

struct moecl_context {
    const moecl_model *model;
    moecl_context_params params;
    int n_threads;
    mc_pool *pool;        /* the CPU kernels' and attention's threads */
    int32_t n_ctx, n_batch, n_seq;

    /* Backends: [0] runs attention projections and the LM head (unless
     * dense_be holds the dense layers); experts of each layer are placed on
     * any of them. */
    mc_backend *backends[MAX_BACKENDS];
    int n_backends;
    int dense_be;         /* the backend running the dense layers (forward_dense); 0: the host */
    uint8_t *placement;   /* [n_layer * n_expert]: index into backends */
    moecl_placement_info place_info; /* the plan and its prediction (moecl_context_get_placement) */

    /* KV cache: blocks of cells shared by the n_seq sequences (kv_cache.h). */
    mc_kv kv;

    /* Per-batch scratch, sized for n_batch tokens. */
    float *x;             /* [B, n_embd] residual stream */
    float *xn;            /* [B, n_embd] normed */
    float *q;             /* [B, n_head * head_dim] */
    float *k, *v;         /* [B, kv_dim] */
    float *att;           /* [B, n_head * head_dim] */
    float *proj;          /* [B, n_embd] */
    int32_t *tok_seq, *tok_pos; /* [B] */
    int32_t *r_expert;    /* [B, top-k] */
    float *r_weight;      /* [B, top-k] */
    float *r_logits;      /* [B, n_expert] router logits, then probabilities */
    float *gx, *gy;       /* [B * top-k, n_embd] gathered rows, expert outputs */
    float *fh1, *fh3;     /* [B, max(n_ff_dense, n_ff_shexp)] a dense FFN's hidden activations */
    mc_gather_plan plan;
    int64_t *counts;      /* [n_expert] */
    float *att_scratch;   /* [n_threads, n_ctx] */
    int32_t *seq_count;   /* [n_seq] tokens per sequence in this batch */
    int32_t *tok_cell;    /* [B] the KV cell of each token's position (forward_dense) */
    int32_t *tab_off;     /* [B] where its sequence's block table starts in tab */
    int32_t *seq_tab;     /* [n_seq] the same per sequence, -1: not in this batch */
    int32_t *tab;         /* [tab_cap] the batch's block tables */
    int32_t tab_cap;
    int32_t *out_rows;    /* [B] the token of each kept logit row */
    int32_t *pair_row;    /* [B * top-k] a pair's row among the dense device's experts' rows, -1: elsewhere */
    int32_t *row_token;   /* [B * top-k] the token of each of those rows */

    /* Output: logits of the kept rows. */
    float *logits;        /* [n_out, n_vocab] */
    int32_t *logit_row;   /* [B] row in logits or -1 */
    float *xo;            /* [B, n_embd] final-normed rows */
    int32_t last_T;

    mc_moe_trace *trace;  /* [n_layer] or NULL: see mc_context_trace */
    struct route_stats *rs; /* routing counters and callback; NULL until one is set */
    int64_t experts_run;  /* distinct experts of the batch, summed over layers */

    char last_error[1024];
};

/* Routing counters and callback (the section at the end of this file). */
static void route_stats_free(struct route_stats *rs);
static void route_stats_begin(moecl_context *ctx);
static void route_stats_record(moecl_context *ctx, int il, int64_t T);
static void route_stats_commit(moecl_context *ctx);

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* Record an error both as the thread's last error and on the context. */
static moecl_status ctx_error(moecl_context *ctx, moecl_status st, const char *fmt, ...) MC_PRINTF(3, 4);
static moecl_status ctx_error(moecl_context *ctx, moecl_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, ap);
    va_end(ap);
    return mc_error(st, "%s", ctx->last_error);
}

/* A callee already set the thread's message: copy it to the context. */
static moecl_status ctx_keep(moecl_context *ctx, moecl_status st) {
    if (st != MOECL_OK) snprintf(ctx->last_error, sizeof ctx->last_error, "%s", moecl_last_error());
    return st;
}

const char *moecl_context_last_error(const moecl_context *ctx) { return ctx ? ctx->last_error : ""; }

/* ------------------------------------------------------------------------ */
/* Creation                                                                 */
/* ------------------------------------------------------------------------ */

moecl_context_params moecl_context_default_params(void) {
    moecl_context_params p = {0};
    p.backend = MOECL_BACKEND_AUTO;
    p.gpu_mem_mib = -1;
    p.gpu_experts = -1;
    p.device_dtype = MOECL_DTYPE_COUNT;
    return p;
}

/* Bytes one token reads outside the routed experts, as stored (attention,
 * norms, routers, dense and shared FFNs, the LM head): moecl_model_info's
 * bytes_per_token less its experts. */
static uint64_t dense_bytes_per_token(const moecl_model *m) {
    const mc_hparams *hp = &m->hp;
    uint64_t b = m->lm_head.nbytes + (uint64_t)hp->n_embd * 4;
    for (int il = 0; il < hp->n_layer; il++) {
        const mc_layer *L = &m->layers[il];
        b += L->wq.nbytes + L->wk.nbytes + L->wv.nbytes + L->wo.nbytes + (uint64_t)hp->n_embd * 4 * 2;
        const mc_expert *dense[2] = {&L->ffn, &L->shexp};
        for (int k = 0; k < 2; k++) b += dense[k]->w1.nbytes + dense[k]->w2.nbytes + dense[k]->w3.nbytes;
        if (L->experts) b += (uint64_t)hp->n_embd * 4 * (uint64_t)hp->n_expert;
    }
    return b;
}

/* One expert of layer l as stored on the host (w1 + w3 + w2); 0: a dense layer. */
static uint64_t host_expert_bytes(const moecl_model *m, int l) {
    const mc_expert *x = m->layers[l].experts;
    return x ? x[0].w1.nbytes + x[0].w3.nbytes + x[0].w2.nbytes : 0;
}

/* Open each device `sel` lists ("0,1": several; NULL or "": the first GPU).
 * A device that fails is an error when demanded, else a warning. */
static moecl_status open_devices(moecl_context *ctx, const char *sel, const mc_opencl_params *op, bool demanded,
                                 bool named, mc_backend **bes, int *n) {
    char list[512];
    snprintf(list, sizeof list, "%s", sel ? sel : "");
    char *save = NULL, *item = strtok_r(list, ",", &save);
    do {
        if (*n == MC_PLACE_MAX_DEV) {
            mc_log(MOECL_LOG_WARN, "opencl: at most %d devices take part in a plan; '%s' and later are left out",
                   MC_PLACE_MAX_DEV, item);
            break;
        }
        mc_opencl_params p = *op;
        p.selector = item;
        moecl_status st = mc_backend_opencl_open(ctx->model, &p, &bes[*n]);
        if (!st) {
            (*n)++;
            continue;
        }
        if (demanded) return ctx_keep(ctx, st);
        if (!named && strstr(moecl_last_error(), "no GPU device")) /* auto on a machine without a GPU */
            mc_log(MOECL_LOG_INFO, "opencl: %s; experts run on the CPU", moecl_last_error());
        else
            mc_log(MOECL_LOG_WARN, "falling back to the CPU backend: %s", moecl_last_error());
        mc_clear_error();
    } while ((item = strtok_r(NULL, ",", &save)) != NULL);
    return MOECL_OK;
}

/* Add the OpenCL devices as backends[1..] when asked for (OPENCL), or when
 * AUTO finds a GPU or a named device, and place the experts on them by the
 * planner (placement.h). Experts they do not take stay on the CPU
 * (backends[0]). Only OPENCL turns a failure into an error; AUTO says what
 * failed and carries on with the CPU. */
static moecl_status add_opencl(moecl_context *ctx, const moecl_context_params *params) {
    const moecl_model *m = ctx->model;
    const mc_hparams *hp = &m->hp;
    const int L = hp->n_layer, E = hp->n_expert;
    moecl_placement_info *pi = &ctx->place_info;
    pi->n_expert_host = 0;
    for (int l = 0; l < L; l++) pi->n_expert_host += m->layers[l].experts ? E : 0;
    pi->profiled = params->expert_freq != NULL;
    const bool demanded = params->backend == MOECL_BACKEND_OPENCL;
    if (params->placement == MOECL_PLACEMENT_DENSE && params->backend == MOECL_BACKEND_CPU)
        return ctx_error(ctx, MOECL_ERR_INVALID_ARG,
                         "moecl_context_new: placement dense puts the dense layers on an OpenCL device; the backend "
                         "is cpu");
    if (!demanded && params->backend != MOECL_BACKEND_AUTO) return MOECL_OK;
    const char *sel = params->device && *params->device ? params->device : getenv("MOECL_DEVICE");
    const bool named = sel && *sel;
    const bool dense_asked = params->placement == MOECL_PLACEMENT_DENSE;
    if (params->gpu_mem_mib == 0 || (params->gpu_experts == 0 && !dense_asked)) {
        if (demanded || named)
            mc_log(MOECL_LOG_WARN, "opencl: a budget of %s leaves every expert on the CPU",
                   params->gpu_mem_mib == 0 ? "0 MiB" : "0 experts per layer");
        return MOECL_OK;
    }
    mc_opencl_params op = {
        .gpu_only = !demanded && !named,
        .mem_budget = params->gpu_mem_mib < 0 ? -1 : (int64_t)params->gpu_mem_mib << 20,
        .experts_per_layer = params->gpu_experts,
        .dtype = params->device_dtype,
        .pool = ctx->pool,
    };
    if (!demanded && !named && mc_cl_devices(NULL, 0) == 0) {
        mc_log(MOECL_LOG_INFO, "opencl: no OpenCL device; experts run on the CPU");
        return MOECL_OK;
    }
    mc_backend *bes[MC_PLACE_MAX_DEV] = {NULL};
    int n = 0;
    moecl_status st = open_devices(ctx, sel, &op, demanded, named, bes, &n);
    if (st || n == 0) {
        for (int d = 0; d < n; d++) mc_backend_free(bes[d]);
        return st;
    }

    uint64_t *dev_b = calloc((size_t)L * (size_t)n, sizeof *dev_b), *host_b = calloc((size_t)L, sizeof *host_b);
    uint8_t *where = calloc((size_t)L * (size_t)E, 1);
    if (!dev_b || !host_b || !where) st = ctx_error(ctx, MOECL_ERR_NOMEM, "moecl_context_new: out of memory");
    mc_place_input in = {.n_layer = L, .n_expert = E, .n_expert_used = hp->n_expert_used, .expert_dev_bytes = dev_b,
                         .expert_host_bytes = host_b, .freq = params->expert_freq,
                         .dense_bytes = dense_bytes_per_token(m), .n_dev = n,
                         .host_read_bps = mc_host_read_bps(ctx->n_threads), .experts_per_layer = -1};
    mc_place_plan plan = {.where = where};
    const int32_t n_cells = ctx->kv.n_blocks_max * MC_KV_BLOCK;
    const int32_t n_out = params->logits_all ? ctx->n_batch : (ctx->n_seq < ctx->n_batch ? ctx->n_seq : ctx->n_batch);
    bool host_memory = false;
    if (!st) {
        for (int d = 0; d < n; d++) {
            mc_opencl_plan_info di;
            mc_backend_opencl_plan_info(bes[d], &di);
            if (d == 0) host_memory = di.host_memory;
            int most = di.max_per_layer; /* gpu_experts caps each device */
            if (params->gpu_experts >= 0 && params->gpu_experts < most) most = params->gpu_experts;
            in.dev[d] = (mc_place_dev){.budget = di.budget, .max_per_layer = most,
                                       .read_bps = di.read_bps, .rtt_s = di.rtt_s};
            for (int l = 0; l < L; l++) dev_b[(size_t)l * n + d] = mc_backend_opencl_expert_bytes(bes[d], l);
        }
        for (int l = 0; l < L; l++) host_b[l] = host_expert_bytes(m, l);
        /* The dense layers first (on the first device) when asked, or when
         * auto finds them faster there; what is left of its budget takes experts. */
        const int64_t need = (int64_t)mc_backend_opencl_dense_bytes(bes[0], n_cells, ctx->kv.type, ctx->n_batch, n_out);
        const bool dense = params->placement == MOECL_PLACEMENT_DENSE ||
                           (params->placement == MOECL_PLACEMENT_AUTO && !host_memory &&
                            mc_place_dense_worth(&in, 0, need));
        if (dense && need > in.dev[0].budget)
            st = ctx_error(ctx, MOECL_ERR_BACKEND,
                           "moecl_context_new: placement dense: the dense layers need %.1f MiB on the device (weights, "
                           "a KV cache of %d cells, activations for %d tokens); its budget is %.1f MiB",
                           (double)need / 1048576.0, n_cells, ctx->n_batch, (double)in.dev[0].budget / 1048576.0);
        if (dense && !st) {
            in.dense_dev = 1;
            in.dev[0].budget -= need;
            pi->dense_bytes = (uint64_t)need;
        }
        if (!st) mc_place_plan_make(&in, &plan);
    }
    /* Load each device its share; one that fails (AUTO) gives its share back to the host. */
    for (int d = 0; d < n && !st; d++) {
        int64_t n_placed = 0;
        moecl_status sl = plan.n_placed[d] ? mc_backend_opencl_load(bes[d], where, (uint8_t)(d + 1), &n_placed)
                                           : MOECL_OK;
        if (sl && demanded) {
            st = ctx_keep(ctx, sl);
            break;
        }
        if (sl) {
            mc_log(MOECL_LOG_WARN, "falling back to the CPU backend for device %d's share: %s", d, moecl_last_error());
            mc_clear_error();
        }
        if (!sl && d == 0 && in.dense_dev == 1) { /* the dense layers go with it */
            sl = mc_backend_opencl_dense_load(bes[0], n_cells, ctx->kv.type, ctx->n_batch, n_out);
            if (sl && params->placement == MOECL_PLACEMENT_DENSE) {
                st = ctx_keep(ctx, sl);
                break;
            }
            if (sl) {
                mc_log(MOECL_LOG_WARN, "the dense layers stay on the host: %s", moecl_last_error());
                mc_clear_error();
                sl = MOECL_OK;
            } else {
                ctx->dense_be = -1; /* resolved to its index below */
                pi->dense_device = true;
            }
            if (!pi->dense_device) {
                in.dense_dev = 0;
                pi->dense_bytes = 0;
            }
        }
        if (sl || (n_placed == 0 && !(d == 0 && pi->dense_device))) {
            for (int64_t i = 0; i < (int64_t)L * E; i++)
                if (where[i] == d + 1) where[i] = 0;
            mc_backend_free(bes[d]);
            bes[d] = NULL;
        }
    }
    if (!st) {
        mc_place_predict(&in, &plan); /* with what was really loaded */
        uint8_t index[MC_PLACE_MAX_DEV + 1] = {0};
        for (int d = 0; d < n; d++) {
            if (!bes[d]) continue;
            index[d + 1] = (uint8_t)ctx->n_backends;
            if (d == 0 && ctx->dense_be == -1) ctx->dense_be = ctx->n_backends;
            char name[128];
            uint64_t bytes;
            moecl_dtype dt;
            mc_backend_opencl_describe(bes[d], name, sizeof name, &bytes, &dt);
            const int k = pi->n_device++;
            snprintf(pi->device[k].name, sizeof pi->device[k].name, "%s", name);
            pi->device[k].n_expert = plan.n_placed[d];
            pi->device[k].bytes = bytes;
            pi->device[k].budget = in.dev[d].budget;
            pi->device[k].read_gbs = in.dev[d].read_bps / 1e9;
            pi->device[k].rtt_us = in.dev[d].rtt_s * 1e6;
            pi->device[k].gb_per_token = plan.dev_bytes_per_token[d] / 1e9;
            pi->n_expert_host -= plan.n_placed[d];
            ctx->backends[ctx->n_backends++] = bes[d];
            bes[d] = NULL;
        }
        for (int64_t i = 0; i < (int64_t)L * E; i++) ctx->placement[i] = index[where[i]];
        pi->host_read_gbs = in.host_read_bps / 1e9;
        pi->host_gb_per_token = plan.host_bytes_per_token / 1e9;
        pi->predicted_tok_s = plan.tok_s;
        pi->predicted_tok_s_host = plan.tok_s_host;
        if (pi->n_device == 0)
            mc_log(MOECL_LOG_WARN, "opencl: the budget holds no expert; every expert runs on the CPU");
    }

    for (int d = 0; d < n; d++) mc_backend_free(bes[d]);
    free(dev_b);
    free(host_b);
    free(where);
    return st;
}

static void *alloc_floats(size_t a, size_t b, bool *ok) {
    size_t n, bytes;
    if (!mc_mul_size(a, b, &n) || !mc_mul_size(n, sizeof(float), &bytes)) {
        *ok = false;
        return NULL;
    }
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) *ok = false;
    return p;
}

/* Whether a KV cache of kv_bytes can be held: it must not exceed the
 * machine's physical memory (the pool would accept more and the process
 * would be killed once the cache fills). */
static moecl_status check_kv_memory(double kv_bytes, uint32_t n_ctx, uint32_t n_seq, double per_position,
                                    bool explicit_cells) {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return MOECL_OK;
    const double phys = (double)pages * (double)page;
    if (kv_bytes <= phys) return MOECL_OK;
    if (explicit_cells)
        return mc_error(MOECL_ERR_NOMEM,
                        "moecl_context_new: a KV cache of %.0f cells needs %.1f GiB, more than this machine's %.1f GiB "
                        "of memory; at most %.0f cells fit",
                        kv_bytes / per_position, kv_bytes / 1073741824.0, phys / 1073741824.0, phys / per_position);
    const double fit = phys / per_position / n_seq;
    return mc_error(MOECL_ERR_NOMEM,
                    "moecl_context_new: the KV cache for %u positions x %u sequences needs %.1f GiB, more than this "
                    "machine's %.1f GiB of memory; at most %.0f positions per sequence fit (or set n_kv_cells)",
                    n_ctx, n_seq, kv_bytes / 1073741824.0, phys / 1073741824.0, fit);
}

static moecl_status context_new(const moecl_model *model, const moecl_context_params *params, moecl_context **out);

moecl_status moecl_context_new(const moecl_model *model, const moecl_context_params *params,
                               moecl_context **out) {
    if (!out) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_new: out is NULL");
    *out = NULL;
    if (!model) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_new: model is NULL");
    mc_clear_error();
    /* The OpenCL backend copies weights from the mapping. */
    moecl_status st = mc_guard_enter(model->guard);
    if (st) return st;
    st = mc_guard_leave(model->guard, context_new(model, params, out));
    if (st && *out) {
        moecl_context_free(*out);
        *out = NULL;
    }
    return st;
}

static moecl_status context_new(const moecl_model *model, const moecl_context_params *params, moecl_context **out) {
    moecl_context_params defaults = moecl_context_default_params();
    if (!params) params = &defaults;
    const mc_hparams *hp = &model->hp;

    if (params->backend != MOECL_BACKEND_AUTO && params->backend != MOECL_BACKEND_CPU &&
        params->backend != MOECL_BACKEND_OPENCL)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_new: unknown backend %d", (int)params->backend);
    if (params->placement != MOECL_PLACEMENT_DENSE && params->placement != MOECL_PLACEMENT_AUTO && params->placement != MOECL_PLACEMENT_EXPERTS)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_new: unknown placement %d", (int)params->placement);
    for (int64_t i = 0; params->expert_freq && i < (int64_t)hp->n_layer * hp->n_expert; i++)
        if (!(params->expert_freq[i] >= 0.0f && params->expert_freq[i] <= 1.0f))
            return mc_error(MOECL_ERR_INVALID_ARG,
                            "moecl_context_new: expert_freq[%lld] is %g, not a share of tokens in [0, 1]",
                            (long long)i, (double)params->expert_freq[i]);
    uint32_t n_ctx = params->n_ctx ? params->n_ctx : (uint32_t)(hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096);
    uint32_t n_batch = params->n_batch ? params->n_batch : 512;
    uint32_t n_seq = params->n_seq_max ? params->n_seq_max : 1;
    if (n_ctx > MOECL_MAX_CTX)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_new: n_ctx %u is more than the limit of %u positions",
                        n_ctx, (unsigned)MOECL_MAX_CTX);
    if (n_batch > MOECL_MAX_BATCH)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_new: n_batch %u is more than the limit of %u tokens",
                        n_batch, (unsigned)MOECL_MAX_BATCH);
    if (n_seq > MOECL_MAX_SEQ)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_new: n_seq_max %u is more than the limit of %u",
                        n_seq, (unsigned)MOECL_MAX_SEQ);
    if (n_batch > n_ctx * n_seq) n_batch = n_ctx * n_seq;
    if (params->kv_type != MOECL_DTYPE_F32 && params->kv_type != MOECL_DTYPE_F16)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_new: kv_type %s (%d); the KV cache holds f32 or f16",
                        moecl_dtype_name(params->kv_type), (int)params->kv_type);
    /* The pool: n_kv_cells, never more than every sequence full (each
     * sequence's last block partly used). */
    const int64_t all_blocks = (int64_t)n_seq * mc_kv_blocks_for(n_ctx);
    const int64_t asked = params->n_kv_cells ? mc_kv_blocks_for(params->n_kv_cells) : all_blocks;
    const int32_t n_blocks = (int32_t)(asked < all_blocks ? asked : all_blocks);
    {
        const double per_position =
            2.0 * hp->n_layer * hp->n_head_kv * hp->head_dim * (params->kv_type == MOECL_DTYPE_F16 ? 2 : 4);
        moecl_status sk = check_kv_memory(per_position * MC_KV_BLOCK * n_blocks, n_ctx, n_seq, per_position,
                                          params->n_kv_cells != 0);
        if (sk) return sk;
    }

    moecl_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return mc_error(MOECL_ERR_NOMEM, "moecl_context_new: out of memory");
    ctx->model = model;
    ctx->params = *params;
    ctx->n_ctx = (int32_t)n_ctx;
    ctx->n_batch = (int32_t)n_batch;
    ctx->n_seq = (int32_t)n_seq;
    ctx->n_threads = params->n_threads > 0 ? params->n_threads : mc_pool_default_threads();

    mc_backend_check_blas();
    moecl_status st = mc_pool_new(ctx->n_threads, &ctx->pool);
    if (!st) st = mc_backend_cpu_new(model, ctx->pool, &ctx->backends[0]);
    if (st) {
        mc_pool_free(ctx->pool);
        free(ctx);
        return st;
    }
    ctx->n_backends = 1;

    const size_t B = n_batch, D = (size_t)hp->n_embd, K = (size_t)hp->n_expert_used;
    const size_t q_dim = (size_t)hp->n_head * (size_t)hp->head_dim;
    const size_t kv_dim = (size_t)hp->n_head_kv * (size_t)hp->head_dim;
    bool ok = mc_kv_init(&ctx->kv, params->kv_type, hp->n_layer, (int64_t)kv_dim, n_blocks, (int32_t)n_seq) == MOECL_OK;
    ctx->seq_count = calloc(n_seq, sizeof(int32_t));
    ctx->x = alloc_floats(B, D, &ok);
    ctx->xn = alloc_floats(B, D, &ok);
    ctx->xo = alloc_floats(B, D, &ok);
    ctx->q = alloc_floats(B, q_dim, &ok);
    ctx->k = alloc_floats(B, kv_dim, &ok);
    ctx->v = alloc_floats(B, kv_dim, &ok);
    ctx->att = alloc_floats(B, q_dim, &ok);
    ctx->proj = alloc_floats(B, D, &ok);
    ctx->tok_seq = calloc(B, sizeof(int32_t));
    ctx->tok_pos = calloc(B, sizeof(int32_t));
    ctx->r_expert = calloc(B * K, sizeof(int32_t));
    ctx->r_weight = alloc_floats(B, K, &ok);
    ctx->r_logits = alloc_floats(B, (size_t)hp->n_expert, &ok);
    ctx->gx = alloc_floats(B * K, D, &ok);
    ctx->gy = alloc_floats(B * K, D, &ok);
    size_t F_host = hp->shared_expert ? (size_t)hp->n_ff_shexp : 0; /* the FFNs the host runs */
    for (int il = 0; il < hp->n_layer; il++)
        if (mc_hp_dense(hp, il) && (size_t)hp->n_ff_dense > F_host) F_host = (size_t)hp->n_ff_dense;
    ctx->fh1 = alloc_floats(B, F_host, &ok);
    ctx->fh3 = alloc_floats(B, F_host, &ok);
    ctx->plan.order = calloc((size_t)hp->n_expert, sizeof(int32_t));
    ctx->plan.offsets = calloc((size_t)hp->n_expert + 1, sizeof(int64_t));
    ctx->plan.row = calloc(B * K, sizeof(int64_t));
    ctx->counts = calloc((size_t)hp->n_expert, sizeof(int64_t));
    ctx->att_scratch = alloc_floats((size_t)ctx->n_threads, n_ctx, &ok);
    ctx->logit_row = calloc(B, sizeof(int32_t));
    ctx->tok_cell = calloc(B, sizeof(int32_t));
    ctx->tab_off = calloc(B, sizeof(int32_t));
    ctx->out_rows = calloc(B, sizeof(int32_t));
    ctx->pair_row = calloc(B * K, sizeof(int32_t));
    ctx->row_token = calloc(B * K, sizeof(int32_t));
    ctx->seq_tab = calloc(n_seq, sizeof(int32_t));
    ctx->logits = alloc_floats(params->logits_all ? B : (n_seq < B ? n_seq : B), (size_t)hp->n_vocab, &ok);
    ctx->placement = calloc((size_t)hp->n_layer * (size_t)hp->n_expert, 1);
    if (!ok || !ctx->seq_count || !ctx->tok_seq || !ctx->tok_pos || !ctx->r_expert ||
        !ctx->plan.order || !ctx->plan.offsets || !ctx->plan.row || !ctx->counts || !ctx->logit_row ||
        !ctx->placement || !ctx->tok_cell || !ctx->tab_off || !ctx->out_rows || !ctx->seq_tab ||
        !ctx->pair_row || !ctx->row_token) {
        moecl_context_free(ctx);
        return mc_error(MOECL_ERR_NOMEM,
                        "moecl_context_new: out of memory for a context of %u positions x %u sequences "
                        "(scratch for a batch of %u tokens)",
                        n_ctx, n_seq, n_batch);
    }
    st = add_opencl(ctx, params);
    if (!st && params->placement == MOECL_PLACEMENT_DENSE && ctx->dense_be <= 0)
        st = ctx_error(ctx, MOECL_ERR_BACKEND,
                       "moecl_context_new: placement dense: no OpenCL device took the dense layers (see the log)");
    if (st) {
        moecl_context_free(ctx);
        return st;
    }
    mc_log(MOECL_LOG_INFO,
           "context: %u positions x %u sequences, batch %u, %d threads, KV cache %s of at most %d cells (%.1f MiB), "
           "allocated in blocks of %d as sequences grow",
           n_ctx, n_seq, n_batch, ctx->n_threads, moecl_dtype_name(ctx->kv.type), n_blocks * MC_KV_BLOCK,
           (double)n_blocks * (double)ctx->kv.block_bytes / 1048576.0, MC_KV_BLOCK);
    *out = ctx;
    return MOECL_OK;
}

void moecl_context_free(moecl_context *ctx) {
    if (!ctx) return;
    for (int i = 0; i < ctx->n_backends; i++) mc_backend_free(ctx->backends[i]);
    mc_pool_free(ctx->pool);
    mc_kv_free(&ctx->kv);
    void *bufs[] = {ctx->seq_count, ctx->x, ctx->xn, ctx->xo, ctx->q,
                    ctx->k, ctx->v, ctx->att, ctx->proj, ctx->tok_seq, ctx->tok_pos, ctx->r_expert,
                    ctx->r_weight, ctx->r_logits, ctx->gx, ctx->gy, ctx->fh1, ctx->fh3, ctx->plan.order, ctx->plan.offsets,
                    ctx->plan.row, ctx->counts, ctx->att_scratch, ctx->logit_row, ctx->logits, ctx->placement,
                    ctx->tok_cell, ctx->tab_off, ctx->out_rows, ctx->seq_tab, ctx->tab,
                    ctx->pair_row, ctx->row_token};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    route_stats_free(ctx->rs);
    free(ctx);
}

moecl_status moecl_context_get_backend_info(const moecl_context *ctx, moecl_context_backend_info *info) {
    if (!ctx || !info) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_get_backend_info: NULL argument");
    memset(info, 0, sizeof *info);
    const int64_t E = ctx->model->hp.n_expert;
    for (int il = 0; il < ctx->model->hp.n_layer; il++) {
        if (!ctx->model->layers[il].experts) continue; /* a dense layer */
        for (int64_t e = 0; e < E; e++) {
            if (ctx->placement[il * E + e]) info->n_expert_device++;
            else info->n_expert_cpu++;
        }
    }
    info->backend = MOECL_BACKEND_CPU;
    info->device_dtype = MOECL_DTYPE_F32;
    for (int b = 1; b < ctx->n_backends; b++) { /* the first device's name and dtype; bytes of all */
        char name[128];
        uint64_t bytes = 0;
        moecl_dtype dt;
        mc_backend_opencl_describe(ctx->backends[b], name, sizeof name, &bytes, &dt);
        if (b == 1) {
            info->backend = MOECL_BACKEND_OPENCL;
            snprintf(info->device, sizeof info->device, "%s", name);
            info->device_dtype = dt;
        }
        info->device_bytes += bytes;
    }
    return MOECL_OK;
}

int32_t moecl_context_expert_backend(const moecl_context *ctx, int32_t layer, int32_t expert) {
    if (!ctx || layer < 0 || layer >= ctx->model->hp.n_layer || expert < 0 || expert >= ctx->model->hp.n_expert)
        return -1;
    return ctx->placement[(int64_t)layer * ctx->model->hp.n_expert + expert] ? MOECL_BACKEND_OPENCL
                                                                            : MOECL_BACKEND_CPU;
}

int32_t moecl_context_expert_device(const moecl_context *ctx, int32_t layer, int32_t expert) {
    if (!ctx || layer < 0 || layer >= ctx->model->hp.n_layer || expert < 0 || expert >= ctx->model->hp.n_expert)
        return -1;
    return ctx->placement[(int64_t)layer * ctx->model->hp.n_expert + expert];
}

moecl_status moecl_context_get_placement(const moecl_context *ctx, moecl_placement_info *info) {
    if (!ctx || !info) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_get_placement: NULL argument");
    *info = ctx->place_info;
    return MOECL_OK;
}

moecl_status moecl_expert_profile_load(const moecl_model *model, const char *path, float *freq) {
    if (!model || !path || !freq) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_expert_profile_load: NULL argument");
    const mc_hparams *hp = &model->hp;
    return mc_place_profile_load(path, hp->n_layer, hp->n_expert, hp->n_expert_used, freq);
}

/* ------------------------------------------------------------------------ */
/* Sequences                                                                */
/* ------------------------------------------------------------------------ */

int32_t moecl_seq_length(const moecl_context *ctx, int32_t seq) {
    if (!ctx || seq < 0 || seq >= ctx->n_seq) return 0;
    return ctx->kv.seq[seq].len;
}

moecl_status moecl_seq_truncate(moecl_context *ctx, int32_t seq, int32_t n_keep) {
    if (!ctx) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_seq_truncate: ctx is NULL");
    if (seq < -1 || seq >= ctx->n_seq || n_keep < 0)
        return ctx_error(ctx, MOECL_ERR_INVALID_ARG, "moecl_seq_truncate: sequence %d / n_keep %d out of range",
                         seq, n_keep);
    for (int32_t s = 0; s < ctx->n_seq; s++)
        if (seq == -1 || s == seq) mc_kv_truncate(&ctx->kv, s, n_keep);
    return MOECL_OK;
}

moecl_status moecl_context_get_kv_info(const moecl_context *ctx, moecl_kv_info *info) {
    if (!ctx || !info) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_get_kv_info: NULL argument");
    const mc_kv *kv = &ctx->kv;
    *info = (moecl_kv_info){
        .type = kv->type,
        .block_cells = MC_KV_BLOCK,
        .n_cells = (int64_t)kv->n_blocks_max * MC_KV_BLOCK,
        .n_cells_held = (int64_t)kv->n_held * MC_KV_BLOCK,
        .n_positions = 0,
        .bytes_per_cell = (uint64_t)kv->block_bytes / MC_KV_BLOCK,
        .bytes_allocated = mc_kv_bytes(kv),
    };
    for (int32_t s = 0; s < kv->n_seq; s++) info->n_positions += kv->seq[s].len;
    return MOECL_OK;
}

const mc_kv *mc_context_kv(const moecl_context *ctx) { return &ctx->kv; }

mc_kv *mc_context_kv_mut(moecl_context *ctx) { return &ctx->kv; }

int64_t mc_context_experts_run(const moecl_context *ctx) { return ctx->experts_run; }

void mc_context_trace(moecl_context *ctx, mc_moe_trace *trace) {
    if (ctx) ctx->trace = trace;
}

/* ------------------------------------------------------------------------ */
/* The forward pass                                                         */
/* ------------------------------------------------------------------------ */

static moecl_status matmul(moecl_context *ctx, const mc_tensor *W, const float *X, int64_t T, float *Y) {
    mc_backend *be = ctx->backends[0];
    return ctx_keep(ctx, be->iface->matmul(be, W, X, T, Y));
}

static void add_bias(float *y, const float *b, int64_t T, int64_t n) {
    if (!b) return;
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < n; i++) y[t * n + i] += b[i];
}

/* QK-norm of T rows of n_heads * head_dim: each head with a head_dim weight,
 * or each whole row with a row-long one (w's length tells which). */
static void qk_norm(float *x, const float *w, int64_t T, int n_heads, int head_dim, bool per_head, float eps) {
    if (!w) return;
    const int64_t row = (int64_t)n_heads * head_dim;
    for (int64_t t = 0; t < T; t++) {
        if (!per_head) {
            mc_rmsnorm(x + t * row, x + t * row, w, row, eps);
            continue;
        }
        for (int h = 0; h < n_heads; h++) {
            float *v = x + t * row + (int64_t)h * head_dim;
            mc_rmsnorm(v, v, w, head_dim, eps);
        }
    }
}

static moecl_status attention_block(moecl_context *ctx, int il, int64_t T) {
    const moecl_model *m = ctx->model;
    const mc_hparams *hp = &m->hp;
    const mc_layer *L = &m->layers[il];
    const int64_t D = hp->n_embd, kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    const int64_t q_dim = (int64_t)hp->n_head * hp->head_dim;
    moecl_status st;

    for (int64_t t = 0; t < T; t++)
        mc_rmsnorm(ctx->xn + t * D, ctx->x + t * D, L->attn_norm, D, hp->rms_norm_eps);
    if ((st = matmul(ctx, &L->wq, ctx->xn, T, ctx->q))) return st;
    if ((st = matmul(ctx, &L->wk, ctx->xn, T, ctx->k))) return st;
    if ((st = matmul(ctx, &L->wv, ctx->xn, T, ctx->v))) return st;
    add_bias(ctx->q, L->bq, T, q_dim);
    add_bias(ctx->k, L->bk, T, kv_dim);
    add_bias(ctx->v, L->bv, T, kv_dim);
    const bool per_head = hp->qk_norm == MC_QK_NORM_HEAD;
    qk_norm(ctx->q, L->q_norm, T, hp->n_head, hp->head_dim, per_head, hp->rms_norm_eps);
    qk_norm(ctx->k, L->k_norm, T, hp->n_head_kv, hp->head_dim, per_head, hp->rms_norm_eps);

    for (int64_t t = 0; t < T; t++) {
        mc_rope(ctx->q + t * q_dim, hp->n_head, hp->head_dim, ctx->tok_pos[t], hp->rope_theta, hp->rope_interleaved);
        mc_rope(ctx->k + t * kv_dim, hp->n_head_kv, hp->head_dim, ctx->tok_pos[t], hp->rope_theta, hp->rope_interleaved);
        mc_kv_store(&ctx->kv, mc_kv_row(&ctx->kv, ctx->tok_seq[t], il, 0, ctx->tok_pos[t]), ctx->k + t * kv_dim, kv_dim);
        mc_kv_store(&ctx->kv, mc_kv_row(&ctx->kv, ctx->tok_seq[t], il, 1, ctx->tok_pos[t]), ctx->v + t * kv_dim, kv_dim);
    }
    mc_attn_args a = {
        .T = T, .n_head = hp->n_head, .n_head_kv = hp->n_head_kv, .head_dim = hp->head_dim,
        .n_ctx = ctx->n_ctx, .window = hp->sliding_window, .seq = ctx->tok_seq, .pos = ctx->tok_pos,
        .q = ctx->q, .kv = &ctx->kv, .layer = il, .out = ctx->att, .scratch = ctx->att_scratch,
        .n_threads = ctx->n_threads, .pool = ctx->pool,
    };
    mc_attention(&a);
    if ((st = matmul(ctx, &L->wo, ctx->att, T, ctx->proj))) return st;
    add_bias(ctx->proj, L->bo, T, D);
    for (int64_t i = 0; i < T * D; i++) ctx->x[i] += ctx->proj[i];
    return MOECL_OK;
}

/* out[T, D] = (silu(xn·W1ᵀ) ⊙ xn·W3ᵀ)·W2ᵀ on the host backend: a dense
 * layer's FFN or the shared expert. */
static moecl_status host_ffn(moecl_context *ctx, const mc_expert *f, int64_t T, float *out) {
    moecl_status st;
    if ((st = matmul(ctx, &f->w1, ctx->xn, T, ctx->fh1))) return st;
    if ((st = matmul(ctx, &f->w3, ctx->xn, T, ctx->fh3))) return st;
    mc_cpu_swiglu(ctx->fh1, ctx->fh3, T * f->w1.rows);
    return matmul(ctx, &f->w2, ctx->fh1, T, out);
}

/* The routed experts: route, gather, run on the backends holding them,
 * scatter x += Σ w·y. */
static moecl_status routed_experts(moecl_context *ctx, int il, int64_t T) {
    const moecl_model *m = ctx->model;
    const mc_hparams *hp = &m->hp;
    const mc_layer *L = &m->layers[il];
    const int64_t D = hp->n_embd;
    const int K = hp->n_expert_used, E = hp->n_expert;
    const uint8_t *place = ctx->placement + (int64_t)il * E;

    mc_moe_trace *tr = ctx->trace ? &ctx->trace[il] : NULL;
    const int64_t t_route = tr ? mc_now_ns() : 0;
    /* Router logits through the backend's matrix product (threaded; SGEMM
     * for a prompt): a loop of dot products here cost as much as a layer's
     * experts at 128 experts (bench-moe --layers). */
    const mc_tensor router = {.type = MOECL_DTYPE_F32, .rows = E, .cols = D, .data = L->router,
                              .nbytes = (size_t)E * (size_t)D * sizeof(float)};
    moecl_status st = matmul(ctx, &router, ctx->xn, T, ctx->r_logits);
    if (st) return st;
    mc_route_logits(ctx->r_logits, T, E, K, hp->norm_topk, ctx->r_expert, ctx->r_weight);
    if (ctx->rs) route_stats_record(ctx, il, T);
    const int64_t t_gather = tr ? mc_now_ns() : 0;
    mc_gather_plan_build(&ctx->plan, ctx->r_expert, T, K, E, place, ctx->counts);
    ctx->experts_run += ctx->plan.n_used;
    mc_gather(&ctx->plan, ctx->xn, T, K, (int)D, ctx->gx);

    /* The plan orders experts by backend: each backend gets one contiguous
     * slice. Submit to the asynchronous backends first (a device starts on
     * its experts), then to the synchronous ones (the CPU computes its own
     * meanwhile, inside moe_submit), then wait for all. */
    int first[MAX_BACKENDS + 1];
    int i = 0;
    for (int b = 0; b < ctx->n_backends; b++) {
        first[b] = i;
        while (i < ctx->plan.n_used && place[ctx->plan.order[i]] == b) i++;
    }
    first[ctx->n_backends] = i;
    if (tr) {
        const int64_t now = mc_now_ns();
        *tr = (mc_moe_trace){.route_ns = t_gather - t_route, .gather_ns = now - t_gather, .t_begin = now,
                             .device_ns = -1, .async_first = true};
    }
    bool submitted[MAX_BACKENDS] = {false};
    for (int pass = 0; pass < 2; pass++) {
        const bool async = pass == 0;
        for (int b = 0; b < ctx->n_backends && !st; b++) {
            mc_backend *be = ctx->backends[b];
            int n_used = first[b + 1] - first[b];
            if (!n_used || (be->iface->moe_wait != NULL) != async) continue;
            mc_moe_work w = {
                .layer = il, .n_used = n_used, .expert_ids = ctx->plan.order + first[b],
                .offsets = ctx->plan.offsets + first[b], .X = ctx->gx, .Y = ctx->gy,
            };
            const int64_t t0 = tr ? mc_now_ns() : 0;
            st = be->iface->moe_submit(be, &w);
            submitted[b] = st == MOECL_OK;
            if (tr && async) {
                tr->n_async++;
                if (tr->n_sync) tr->async_first = false;
            }
            if (tr && !async) {
                tr->n_sync++;
                tr->sync_ns += mc_now_ns() - t0;
            }
        }
    }
    for (int b = 0; b < ctx->n_backends; b++) {
        mc_backend *be = ctx->backends[b];
        if (submitted[b] && be->iface->moe_wait) {
            moecl_status sw = be->iface->moe_wait(be);
            if (!st) st = sw;
            int64_t dn = be->iface->moe_device_ns ? be->iface->moe_device_ns(be) : -1;
            if (tr && dn >= 0) tr->device_ns = (tr->device_ns < 0 ? 0 : tr->device_ns) + dn;
        }
    }
    if (tr) tr->t_end = mc_now_ns();
    if (st) return ctx_keep(ctx, st);
    mc_scatter_add(&ctx->plan, ctx->gy, ctx->r_weight, T, K, (int)D, ctx->x);
    if (tr) tr->scatter_ns = mc_now_ns() - tr->t_end;
    return MOECL_OK;
}

/* The FFN half of a layer: a dense FFN, or the routed experts plus, when the
 * layer has one, the shared expert scaled by sigmoid(xn · gate). */
static moecl_status moe_block(moecl_context *ctx, int il, int64_t T) {
    const moecl_model *m = ctx->model;
    const mc_hparams *hp = &m->hp;
    const mc_layer *L = &m->layers[il];
    const int64_t D = hp->n_embd;
    moecl_status st;

    for (int64_t t = 0; t < T; t++)
        mc_rmsnorm(ctx->xn + t * D, ctx->x + t * D, L->ffn_norm, D, hp->rms_norm_eps);
    if (!L->experts) {
        if ((st = host_ffn(ctx, &L->ffn, T, ctx->proj))) return st;
        for (int64_t i = 0; i < T * D; i++) ctx->x[i] += ctx->proj[i];
        return MOECL_OK;
    }
    if ((st = routed_experts(ctx, il, T))) return st;
    if (L->shexp_gate) {
        if ((st = host_ffn(ctx, &L->shexp, T, ctx->proj))) return st;
        for (int64_t t = 0; t < T; t++) {
            double g = 0;
            for (int64_t i = 0; i < D; i++) g += (double)ctx->xn[t * D + i] * L->shexp_gate[i];
            const float s = (float)(1.0 / (1.0 + exp(-g)));
            for (int64_t i = 0; i < D; i++) ctx->x[t * D + i] += s * ctx->proj[t * D + i];
        }
    }
    return MOECL_OK;
}

static void embed(moecl_context *ctx, const int32_t *tokens, int64_t T) {
    const mc_tensor *E = &ctx->model->tok_embd;
    const int64_t D = E->cols;
    size_t row_bytes = 0;
    mc_dtype_row_bytes(E->type, D, &row_bytes); /* checked when the model was loaded */
    for (int64_t t = 0; t < T; t++)
        mc_cpu_to_f32(E->type, (const char *)E->data + (size_t)tokens[t] * row_bytes, ctx->x + t * D, D);
}

static moecl_status decode_batch(moecl_context *ctx, const moecl_batch *batch);
static moecl_status forward(moecl_context *ctx, const moecl_batch *batch, int64_t T);

/* The routed experts of layer il with the dense layers on device dv: the
 * router's logits came up with dense_attn; the experts dv holds run there
 * on its normed states and add themselves into its residual stream; the
 * others run on their backends from ctx->xn (which came up too, when the
 * layer has any) and their weighted sum goes into *delta (NULL when none ran). */
static moecl_status routed_dense(moecl_context *ctx, mc_backend *dv, int il, int64_t T, const float **delta) {
    const mc_hparams *hp = &ctx->model->hp;
    const int64_t D = hp->n_embd;
    const int K = hp->n_expert_used, E = hp->n_expert, db = ctx->dense_be;
    const uint8_t *place = ctx->placement + (int64_t)il * E;
    moecl_status st = MOECL_OK;
    *delta = NULL;
    mc_route_logits(ctx->r_logits, T, E, K, hp->norm_topk, ctx->r_expert, ctx->r_weight);
    if (ctx->rs) route_stats_record(ctx, il, T);
    mc_gather_plan_build(&ctx->plan, ctx->r_expert, T, K, E, place, ctx->counts);
    ctx->experts_run += ctx->plan.n_used;
    int first[MAX_BACKENDS + 1];
    int i = 0;
    for (int b = 0; b < ctx->n_backends; b++) {
        first[b] = i;
        while (i < ctx->plan.n_used && place[ctx->plan.order[i]] == b) i++;
    }
    first[ctx->n_backends] = i;
    const int n_here = first[db + 1] - first[db];
    const int64_t r0 = ctx->plan.offsets[first[db]], r1 = ctx->plan.offsets[first[db + 1]];
    for (int64_t p = 0; p < T * K; p++) {
        const int64_t r = ctx->plan.row[p];
        const bool here = r >= r0 && r < r1;
        ctx->pair_row[p] = here ? (int32_t)(r - r0) : -1;
        if (here) ctx->row_token[r - r0] = (int32_t)(p / K);
    }
    if (n_here) {
        const mc_dense_moe w = {.layer = il, .n_used = n_here, .expert_ids = ctx->plan.order + first[db],
                                .offsets = ctx->plan.offsets + first[db], .row_token = ctx->row_token,
                                .pair_row = ctx->pair_row, .weight = ctx->r_weight};
        if ((st = dv->iface->dense_experts(dv, &w))) return st;
    }
    if (ctx->plan.n_used == n_here) return MOECL_OK;
    /* The others (the CPU computes inside moe_submit, meanwhile the device its own). */
    mc_gather(&ctx->plan, ctx->xn, T, K, (int)D, ctx->gx);
    bool submitted[MAX_BACKENDS] = {false};
    for (int pass = 0; pass < 2 && !st; pass++) {
        for (int b = 0; b < ctx->n_backends && !st; b++) {
            mc_backend *be = ctx->backends[b];
            const int n_used = first[b + 1] - first[b];
            if (b == db || !n_used || (be->iface->moe_wait != NULL) != (pass == 0)) continue;
            const mc_moe_work w = {.layer = il, .n_used = n_used, .expert_ids = ctx->plan.order + first[b],
                                   .offsets = ctx->plan.offsets + first[b], .X = ctx->gx, .Y = ctx->gy};
            st = be->iface->moe_submit(be, &w);
            submitted[b] = st == MOECL_OK;
        }
    }
    for (int b = 0; b < ctx->n_backends; b++)
        if (submitted[b] && ctx->backends[b]->iface->moe_wait) {
            moecl_status sw = ctx->backends[b]->iface->moe_wait(ctx->backends[b]);
            if (!st) st = sw;
        }
    if (st) return ctx_keep(ctx, st);
    memset(ctx->proj, 0, (size_t)(T * D) * sizeof(float));
    for (int64_t p = 0; p < T * K; p++) {
        if (ctx->pair_row[p] >= 0) continue;
        const float w = ctx->r_weight[p], *y = ctx->gy + ctx->plan.row[p] * D;
        float *o = ctx->proj + (p / K) * D;
        for (int64_t d = 0; d < D; d++) o[d] += w * y[d];
    }
    *delta = ctx->proj;
    return MOECL_OK;
}

/* The KV cell of each token and the block tables of the batch's sequences,
 * for a device that keeps its own copy of the cells. */
static moecl_status batch_cells(moecl_context *ctx, int64_t T, int32_t *n_tab) {
    int32_t n = 0;
    for (int32_t s = 0; s < ctx->n_seq; s++) ctx->seq_tab[s] = -1;
    for (int64_t t = 0; t < T; t++) {
        const int32_t s = ctx->tok_seq[t];
        const mc_kv_seq *q = &ctx->kv.seq[s];
        if (ctx->seq_tab[s] < 0) {
            if (n + q->n_blocks > ctx->tab_cap) {
                int32_t cap = ctx->tab_cap ? ctx->tab_cap : 64;
                while (cap < n + q->n_blocks) cap *= 2;
                int32_t *tab = realloc(ctx->tab, (size_t)cap * sizeof *tab);
                if (!tab) return ctx_error(ctx, MOECL_ERR_NOMEM, "decode: out of memory for block tables");
                ctx->tab = tab;
                ctx->tab_cap = cap;
            }
            memcpy(ctx->tab + n, q->blocks, (size_t)q->n_blocks * sizeof *ctx->tab);
            ctx->seq_tab[s] = n;
            n += q->n_blocks;
        }
        ctx->tab_off[t] = ctx->seq_tab[s];
        const int32_t p = ctx->tok_pos[t];
        ctx->tok_cell[t] = q->blocks[p / MC_KV_BLOCK] * MC_KV_BLOCK + p % MC_KV_BLOCK;
    }
    *n_tab = n;
    return MOECL_OK;
}

/* The forward pass with the hidden states on the device that holds the
 * dense layers (backend.h, dense entries). Per layer the device runs the
 * attention half and the router's product and sends up the logits and the
 * new K/V rows, which the host stores in its own cells (so that the host can
 * take over at any time); the host routes and sends the choice down, where
 * the device runs its experts on its own normed states; experts on other
 * backends get the normed states and send their weighted sum down; the
 * device adds it and runs the layer's dense FFN or shared expert. One wait
 * per layer, for what comes up. */
static moecl_status forward_dense(moecl_context *ctx, const moecl_batch *batch, int64_t T, int32_t n_out) {
    const moecl_model *m = ctx->model;
    const mc_hparams *hp = &m->hp;
    const int64_t kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    mc_backend *dv = ctx->backends[ctx->dense_be];
    int32_t n_tab = 0;
    moecl_status st = batch_cells(ctx, T, &n_tab);
    if (st) return st;
    embed(ctx, batch->tokens, T);
    const mc_dense_batch db = {.T = T, .x = ctx->x, .pos = ctx->tok_pos, .cell = ctx->tok_cell,
                               .tab_off = ctx->tab_off, .tab = ctx->tab, .n_tab = n_tab,
                               .copy = (const int32_t (*)[2])ctx->kv.cow, .n_copy = ctx->kv.n_cow};
    if ((st = dv->iface->dense_begin(dv, &db))) return st;
    for (int il = 0; il < hp->n_layer; il++) {
        if (ctx->params.abort_callback && ctx->params.abort_callback(ctx->params.abort_user_data))
            return ctx_error(ctx, MOECL_ERR_ABORTED, "decode: aborted by the abort callback at layer %d", il);
        if (mc_guard_faulted(m->guard)) return MOECL_ERR_IO;
        const mc_layer *L = &m->layers[il];
        bool elsewhere = false; /* experts of this layer on other backends need the normed states */
        for (int e = 0; L->experts && e < hp->n_expert && !elsewhere; e++)
            elsewhere = ctx->placement[(int64_t)il * hp->n_expert + e] != ctx->dense_be;
        if ((st = dv->iface->dense_attn(dv, il, L->experts ? ctx->r_logits : NULL, elsewhere ? ctx->xn : NULL,
                                        ctx->k, ctx->v)))
            return st;
        for (int64_t t = 0; t < T; t++) {
            mc_kv_store(&ctx->kv, mc_kv_row(&ctx->kv, ctx->tok_seq[t], il, 0, ctx->tok_pos[t]), ctx->k + t * kv_dim, kv_dim);
            mc_kv_store(&ctx->kv, mc_kv_row(&ctx->kv, ctx->tok_seq[t], il, 1, ctx->tok_pos[t]), ctx->v + t * kv_dim, kv_dim);
        }
        const float *delta = NULL;
        if (L->experts && (st = routed_dense(ctx, dv, il, T, &delta))) return st;
        if ((st = dv->iface->dense_ffn(dv, il, delta))) return st;
    }
    for (int64_t t = 0; t < T; t++)
        if (ctx->logit_row[t] >= 0) ctx->out_rows[ctx->logit_row[t]] = (int32_t)t;
    return dv->iface->dense_head(dv, n_out, ctx->out_rows, ctx->logits);
}

/* The entry point: weight files re-checked before, faults on them caught
 * during (guard.h). */
moecl_status moecl_decode_batch(moecl_context *ctx, const moecl_batch *batch) {
    if (!ctx) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_decode_batch: ctx is NULL");
    mc_clear_error();
    ctx->last_error[0] = '\0';
    mc_guard *g = ctx->model->guard;
    moecl_status st = mc_guard_enter(g);
    if (st) return ctx_keep(ctx, st);
    st = mc_guard_leave(g, decode_batch(ctx, batch));
    return ctx_keep(ctx, st);
}

static moecl_status decode_batch(moecl_context *ctx, const moecl_batch *batch) {
    if (!batch || !batch->tokens)
        return ctx_error(ctx, MOECL_ERR_INVALID_ARG, "moecl_decode_batch: batch or batch->tokens is NULL");
    const moecl_model *m = ctx->model;
    const mc_hparams *hp = &m->hp;
    const int64_t T = batch->n_tokens;
    if (T < 1)
        return ctx_error(ctx, MOECL_ERR_INVALID_ARG, "decode: a batch of %lld tokens; at least 1 is needed",
                         (long long)T);
    if (T > ctx->n_batch && ctx->n_seq == 1 && ctx->kv.seq[0].len + T > (int64_t)ctx->n_ctx)
        return ctx_error(ctx, MOECL_ERR_CONTEXT_FULL,
                         "decode: %lld tokens do not fit in the context of %d positions (%d held, %lld too many)",
                         (long long)T, ctx->n_ctx, ctx->kv.seq[0].len, (long long)(ctx->kv.seq[0].len + T - ctx->n_ctx));
    if (T > ctx->n_batch)
        return ctx_error(ctx, MOECL_ERR_INVALID_ARG,
                         "decode: %lld tokens in one call, more than the context's n_batch of %d (split them, or "
                         "create the context with a larger n_batch)",
                         (long long)T, ctx->n_batch);

    /* Validate everything before touching any state. */
    memset(ctx->seq_count, 0, (size_t)ctx->n_seq * sizeof(int32_t));
    for (int64_t t = 0; t < T; t++) {
        int32_t tok = batch->tokens[t], s = batch->seq_id ? batch->seq_id[t] : 0;
        if (tok < 0 || tok >= hp->n_vocab)
            return ctx_error(ctx, MOECL_ERR_INVALID_ARG, "decode: token %lld has id %d, outside the vocabulary 0..%d",
                             (long long)t, tok, hp->n_vocab - 1);
        if (s < 0 || s >= ctx->n_seq)
            return ctx_error(ctx, MOECL_ERR_INVALID_ARG, "decode: token %lld has sequence %d; allowed 0..%d",
                             (long long)t, s, ctx->n_seq - 1);
        ctx->tok_seq[t] = s;
        ctx->tok_pos[t] = ctx->kv.seq[s].len + ctx->seq_count[s]++;
    }
    for (int32_t s = 0; s < ctx->n_seq; s++)
        if ((int64_t)ctx->kv.seq[s].len + ctx->seq_count[s] > ctx->n_ctx)
            return ctx_error(ctx, MOECL_ERR_CONTEXT_FULL,
                             "decode: sequence %d holds %d positions and %d more do not fit in the context of %d "
                             "(%lld too many)",
                             s, ctx->kv.seq[s].len, ctx->seq_count[s], ctx->n_ctx,
                             (long long)ctx->kv.seq[s].len + ctx->seq_count[s] - ctx->n_ctx);
    /* The pool must hold every new position; all-or-nothing. */
    int32_t need = 0;
    for (int32_t s = 0; s < ctx->n_seq; s++)
        if (ctx->seq_count[s]) need += mc_kv_blocks_needed(&ctx->kv, s, (int64_t)ctx->kv.seq[s].len + ctx->seq_count[s]);
    if (need > mc_kv_available(&ctx->kv))
        return ctx_error(ctx, MOECL_ERR_CONTEXT_FULL,
                         "decode: the KV cache is full: this batch needs %d more blocks of %d positions and %d of the "
                         "%d blocks (%d cells, shared by the sequences) are free",
                         need, MC_KV_BLOCK, mc_kv_available(&ctx->kv), ctx->kv.n_blocks_max,
                         ctx->kv.n_blocks_max * MC_KV_BLOCK);
    moecl_status st = MOECL_OK;
    ctx->kv.n_cow = 0; /* the copies on write of this batch only (forward_dense repeats them on the device) */
    for (int32_t s = 0; s < ctx->n_seq && !st; s++)
        if (ctx->seq_count[s]) st = mc_kv_grow(&ctx->kv, s, (int64_t)ctx->kv.seq[s].len + ctx->seq_count[s]);
    if (!st) st = forward(ctx, batch, T);
    if (st) { /* give back the blocks taken for positions that were not added */
        for (int32_t s = 0; s < ctx->n_seq; s++) mc_kv_truncate(&ctx->kv, s, ctx->kv.seq[s].len);
        return st;
    }
    for (int32_t s = 0; s < ctx->n_seq; s++) ctx->kv.seq[s].len += ctx->seq_count[s];
    if (ctx->rs) route_stats_commit(ctx);
    ctx->last_T = (int32_t)T;
    return MOECL_OK;
}

/* The forward pass of a validated batch whose positions have their KV
 * blocks; the sequences' lengths are not changed here. */
static moecl_status forward(moecl_context *ctx, const moecl_batch *batch, int64_t T) {
    const moecl_model *m = ctx->model;
    const mc_hparams *hp = &m->hp;
    const int64_t D = hp->n_embd;
    /* Rows that keep logits: all, or the last token of each sequence. */
    int32_t n_out = 0;
    for (int64_t t = 0; t < T; t++) {
        bool keep = ctx->params.logits_all;
        if (!keep) {
            keep = true;
            for (int64_t u = t + 1; u < T && keep; u++) keep = ctx->tok_seq[u] != ctx->tok_seq[t];
        }
        ctx->logit_row[t] = keep ? n_out++ : -1;
    }
    ctx->last_T = 0; /* logits are invalid until this call succeeds */
    ctx->experts_run = 0;

    moecl_status st;
    if (ctx->dense_be > 0) {
        if (ctx->rs) route_stats_begin(ctx);
        st = forward_dense(ctx, batch, T, n_out);
        if (st != MOECL_ERR_BACKEND) return st;
        /* The device failed: its cells are lost, the host's are current up
         * to this batch, which is computed again on the host from the start. */
        mc_log(MOECL_LOG_ERROR,
               "%s; the dense layers and this batch run on the CPU from now on (the device is not used again by "
               "this context; the KV cache is kept)",
               moecl_last_error());
        ctx->dense_be = 0;
        mc_clear_error();
        ctx->last_error[0] = '\0';
        ctx->experts_run = 0;
    }
    if (ctx->rs) route_stats_begin(ctx);
    embed(ctx, batch->tokens, T);
    for (int il = 0; il < hp->n_layer; il++) {
        if (ctx->params.abort_callback && ctx->params.abort_callback(ctx->params.abort_user_data))
            return ctx_error(ctx, MOECL_ERR_ABORTED, "decode: aborted by the abort callback at layer %d", il);
        if (mc_guard_faulted(m->guard)) return MOECL_ERR_IO; /* mc_guard_leave says why */
        if ((st = attention_block(ctx, il, T))) return st;
        if ((st = moe_block(ctx, il, T))) return st;
    }

    for (int64_t t = 0; t < T; t++)
        if (ctx->logit_row[t] >= 0)
            mc_rmsnorm(ctx->xo + (int64_t)ctx->logit_row[t] * D, ctx->x + t * D, m->out_norm, D, hp->rms_norm_eps);
    return matmul(ctx, &m->lm_head, ctx->xo, n_out, ctx->logits);
}

moecl_status moecl_decode(moecl_context *ctx, const int32_t *tokens, int32_t n_tokens) {
    moecl_batch b = {.n_tokens = n_tokens, .tokens = tokens, .seq_id = NULL};
    return moecl_decode_batch(ctx, &b);
}

const float *moecl_get_logits(moecl_context *ctx, int32_t i) {
    if (!ctx || ctx->last_T == 0) return NULL;
    if (i == -1) i = ctx->last_T - 1;
    if (i < 0 || i >= ctx->last_T || ctx->logit_row[i] < 0) return NULL;
    return ctx->logits + (int64_t)ctx->logit_row[i] * ctx->model->hp.n_vocab;
}

/* ------------------------------------------------------------------------ */
/* Routing counters and the routing callback                                */
/* ------------------------------------------------------------------------ */

/* Counts of a decode are kept apart until it succeeds, so the totals cover
 * exactly the batches whose results the caller got (an aborted or failed
 * decode changes nothing, as for the KV cache). */
struct route_stats {
    bool counting;
    uint64_t *tokens, *step_tokens; /* [n_layer * n_expert] totals; this decode's */
    double *wsum, *step_wsum;       /* [n_layer * n_expert] */
    moecl_routing_fn cb;
    void *cb_user;
};

static void route_stats_free(struct route_stats *rs) {
    if (!rs) return;
    free(rs->tokens);
    free(rs->step_tokens);
    free(rs->wsum);
    free(rs->step_wsum);
    free(rs);
}

static moecl_status route_stats_get(moecl_context *ctx, const char *fn, struct route_stats **out) {
    if (!ctx) return mc_error(MOECL_ERR_INVALID_ARG, "%s: ctx is NULL", fn);
    if (!ctx->rs) {
        const size_t n = (size_t)ctx->model->hp.n_layer * (size_t)ctx->model->hp.n_expert;
        struct route_stats *rs = calloc(1, sizeof *rs);
        if (rs) {
            rs->tokens = calloc(n, sizeof *rs->tokens);
            rs->step_tokens = calloc(n, sizeof *rs->step_tokens);
            rs->wsum = calloc(n, sizeof *rs->wsum);
            rs->step_wsum = calloc(n, sizeof *rs->step_wsum);
        }
        if (!rs || !rs->tokens || !rs->step_tokens || !rs->wsum || !rs->step_wsum) {
            route_stats_free(rs);
            return ctx_error(ctx, MOECL_ERR_NOMEM, "%s: out of memory", fn);
        }
        ctx->rs = rs;
    }
    *out = ctx->rs;
    return MOECL_OK;
}

static void route_stats_begin(moecl_context *ctx) {
    struct route_stats *rs = ctx->rs;
    if (!rs->counting) return;
    const size_t n = (size_t)ctx->model->hp.n_layer * (size_t)ctx->model->hp.n_expert;
    memset(rs->step_tokens, 0, n * sizeof *rs->step_tokens);
    memset(rs->step_wsum, 0, n * sizeof *rs->step_wsum);
}

/* After layer il's router chose r_expert / r_weight [T, K]. */
static void route_stats_record(moecl_context *ctx, int il, int64_t T) {
    struct route_stats *rs = ctx->rs;
    const int K = ctx->model->hp.n_expert_used, E = ctx->model->hp.n_expert;
    if (rs->counting) {
        uint64_t *c = rs->step_tokens + (int64_t)il * E;
        double *w = rs->step_wsum + (int64_t)il * E;
        for (int64_t i = 0; i < T * K; i++) {
            c[ctx->r_expert[i]]++;
            w[ctx->r_expert[i]] += ctx->r_weight[i];
        }
    }
    if (rs->cb)
        for (int64_t t = 0; t < T; t++)
            rs->cb(il, (int32_t)t, ctx->tok_seq[t], ctx->tok_pos[t], ctx->r_expert + t * K, ctx->r_weight + t * K, K,
                   rs->cb_user);
}

static void route_stats_commit(moecl_context *ctx) {
    struct route_stats *rs = ctx->rs;
    if (!rs->counting) return;
    const size_t n = (size_t)ctx->model->hp.n_layer * (size_t)ctx->model->hp.n_expert;
    for (size_t i = 0; i < n; i++) {
        rs->tokens[i] += rs->step_tokens[i];
        rs->wsum[i] += rs->step_wsum[i];
    }
}

moecl_status moecl_context_set_routing_counters(moecl_context *ctx, bool on) {
    if (ctx && !ctx->rs && !on) return MOECL_OK; /* nothing to turn off: allocate nothing */
    struct route_stats *rs = NULL;
    moecl_status st = route_stats_get(ctx, "moecl_context_set_routing_counters", &rs);
    if (st) return st;
    rs->counting = on;
    return MOECL_OK;
}

moecl_status moecl_context_get_routing_counts(const moecl_context *ctx, uint64_t *tokens, double *weight_sum,
                                              size_t n) {
    if (!ctx) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_get_routing_counts: ctx is NULL");
    const size_t need = (size_t)ctx->model->hp.n_layer * (size_t)ctx->model->hp.n_expert;
    if (n < need)
        return mc_error(MOECL_ERR_INVALID_ARG,
                        "moecl_context_get_routing_counts: n is %zu; n_layer x n_expert = %zu values are needed", n,
                        need);
    const struct route_stats *rs = ctx->rs;
    for (size_t i = 0; i < need; i++) {
        if (tokens) tokens[i] = rs ? rs->tokens[i] : 0;
        if (weight_sum) weight_sum[i] = rs ? rs->wsum[i] : 0.0;
    }
    return MOECL_OK;
}

moecl_status moecl_context_reset_routing_counts(moecl_context *ctx) {
    if (!ctx) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_context_reset_routing_counts: ctx is NULL");
    if (!ctx->rs) return MOECL_OK;
    const size_t n = (size_t)ctx->model->hp.n_layer * (size_t)ctx->model->hp.n_expert;
    memset(ctx->rs->tokens, 0, n * sizeof *ctx->rs->tokens);
    memset(ctx->rs->wsum, 0, n * sizeof *ctx->rs->wsum);
    return MOECL_OK;
}

moecl_status moecl_context_set_routing_callback(moecl_context *ctx, moecl_routing_fn cb, void *user_data) {
    if (ctx && !ctx->rs && !cb) return MOECL_OK;
    struct route_stats *rs = NULL;
    moecl_status st = route_stats_get(ctx, "moecl_context_set_routing_callback", &rs);
    if (st) return st;
    rs->cb = cb;
    rs->cb_user = user_data;
    return MOECL_OK;
}
