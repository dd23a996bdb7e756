/*
 * backend.h - the private interface every compute backend implements.
 *
 * A backend is a table of functions plus its own state, in the style of
 * ggml-backend: the decode loop calls through the table and never asks
 * which backend it is talking to. Entries marked (optional) may be NULL; the
 * caller then uses the CPU implementation of that step.
 *
 * The work a backend receives:
 *   - matmul: Y = X·Wᵀ for the attention projections and the LM head.
 *   - moe: the expert FFNs of one layer for tokens already gathered per
 *     expert: rows offsets[i]..offsets[i+1] of X chose expert expert_ids[i].
 *     moe_submit may return before the work is done (a GPU enqueues it);
 *     moe_wait blocks until Y is written. Backends holding different experts
 *     of the same layer are submitted to one after another and waited on
 *     together: the asynchronous ones (with moe_wait) first, so that a
 *     device computes its experts while a synchronous backend (the CPU)
 *     computes its own inside moe_submit. tests/test_overlap.c shows it.
 *   - dense (optional, a device that holds the dense layers): the whole
 *     forward pass but the router's choice, with the hidden states resident
 *     on the device (context.c forward_dense). Per layer the router logits
 *     come up with the batch's new K and V rows (the host keeps its cells
 *     current, so a device failing mid-decode loses nothing: the batch is
 *     recomputed on the host) and the choice goes down; the device's experts
 *     read the normed states where they are. Experts on other backends get
 *     the normed states (up) and send their weighted sum (down).
 */
#ifndef MOECL_BACKEND_H
#define MOECL_BACKEND_H

#include "internal.h"
#include "model.h"
#include "util/threadpool.h"

typedef struct mc_backend mc_backend;

/* Gathered tokens of one layer for one backend. */
typedef struct mc_moe_work {
    int layer;
    int n_used;              /* experts with at least one row, in this work */
    const int *expert_ids;   /* [n_used] */
    const int64_t *offsets;  /* [n_used + 1] row ranges into X and Y */
    const float *X;          /* [offsets[n_used], n_embd] normed hidden states, packed */
    float *Y;                /* [offsets[n_used], n_embd] expert outputs, unweighted */
} mc_moe_work;

/* One batch for the dense entries: where each token's keys and values live.
 * Cells are the host pool's (kv_cache.h): position j of a sequence whose
 * block table is tab[off..] is cell tab[off + j / MC_KV_BLOCK] *
 * MC_KV_BLOCK + j % MC_KV_BLOCK, on the host and on the device alike. */
typedef struct mc_dense_batch {
    int64_t T;
    const float *x;          /* [T, n_embd] the embedded tokens */
    const int32_t *pos;      /* [T] each token's position in its sequence */
    const int32_t *cell;     /* [T] the cell of that position */
    const int32_t *tab_off;  /* [T] where the token's sequence's block table starts in tab */
    const int32_t *tab;      /* [n_tab] block ids */
    int32_t n_tab;
    /* Blocks the host copied on write for this batch (source, destination):
     * the device copies the same cells of every layer before the batch. */
    const int32_t (*copy)[2];
    int32_t n_copy;
} mc_dense_batch;

/* The routed experts of one layer that the dense device holds, run on its
 * normed states and added into its residual stream. */
typedef struct mc_dense_moe {
    int layer;
    int n_used;               /* experts with rows, here */
    const int *expert_ids;    /* [n_used] */
    const int64_t *offsets;   /* [n_used + 1] their rows in the layer's gathered order (offsets[0] may be > 0) */
    const int32_t *row_token; /* [offsets[n_used] - offsets[0]] the token of each of those rows */
    const int32_t *pair_row;  /* [T * K] pair (t, j)'s row less offsets[0] when its expert is here, else -1 */
    const float *weight;      /* [T * K] the router's weights */
} mc_dense_moe;

typedef struct mc_backend_i {
    const char *name;
    void (*free)(mc_backend *be);
    /* Y[T, W.rows] = X[T, W.cols] · Wᵀ, synchronous. */
    moecl_status (*matmul)(mc_backend *be, const mc_tensor *W, const float *X, int64_t T, float *Y);
    /* Start the expert FFNs of one layer. */
    moecl_status (*moe_submit)(mc_backend *be, const mc_moe_work *work);
    /* Wait for the last submitted work. (optional: NULL when submit is synchronous) */
    moecl_status (*moe_wait)(mc_backend *be);
    /* Nanoseconds the device was busy with the last waited work, by the
     * device's own clock (first write's start to the read's end), or -1 when
     * it was not measured. (optional; the OpenCL backend measures it only
     * with MOECL_CL_PROFILE=1, which enables queue profiling) */
    int64_t (*moe_device_ns)(mc_backend *be);

    /* The dense part (optional: all five or none; used only once the
     * backend was given the dense layers, mc_backend_opencl_dense_load).
     * Any failure is MOECL_ERR_BACKEND and leaves the backend unusable: the
     * caller recomputes the batch on the host. */
    /* Take a batch: upload its embedded tokens and its cells. */
    moecl_status (*dense_begin)(mc_backend *be, const mc_dense_batch *b);
    /* Layer il up to the router: RMSNorm, Q/K/V (+ biases, + QK-norm),
     * RoPE, the new K/V rows into the device's cells, attention, output
     * projection (+ bias), x += it, xn = ffn_norm(x), and in a MoE layer the
     * router logits (f32 weights). Blocks until the batch's K and V rows
     * [T, kv_dim] (f32, keys after RoPE: what the host stores in its own
     * cells), the logits [T, n_expert] (logits non-NULL, a MoE layer) and xn
     * [T, n_embd] (xn non-NULL) are in the caller's arrays. */
    moecl_status (*dense_attn)(mc_backend *be, int il, float *logits, float *xn, float *k, float *v);
    /* Enqueue the experts of w (held here) on xn and x += Σ weight · y for
     * their pairs. The arrays must stay unchanged until the next dense call. */
    moecl_status (*dense_experts)(mc_backend *be, const mc_dense_moe *w);
    /* Layer il's FFN half: x += delta [T, n_embd] (the weighted sum of the
     * experts held elsewhere; NULL: none), plus the layer's dense FFN, or its shared
     * expert scaled by its sigmoid gate, computed on the device's xn.
     * Enqueued only; delta must stay unchanged until the next dense call. */
    moecl_status (*dense_ffn)(mc_backend *be, int il, const float *delta);
    /* Final RMSNorm and LM head of rows[0..n_out) of x into logits
     * [n_out, n_vocab]; blocks. */
    moecl_status (*dense_head)(mc_backend *be, int32_t n_out, const int32_t *rows, float *logits);
} mc_backend_i;

/* One layer's routed experts as the context saw them, for tests and traces
 * (mc_context_trace). Host times are CLOCK_MONOTONIC nanoseconds. */
typedef struct mc_moe_trace {
    int64_t route_ns;       /* the router: logits, softmax, top-k, weights */
    int64_t gather_ns;      /* the plan and the packing of each expert's rows */
    int64_t scatter_ns;     /* x += Σ w·y */
    int64_t t_begin, t_end; /* the first moe_submit began .. the last moe_wait returned */
    int64_t sync_ns;        /* time inside the synchronous backends' moe_submit (they compute there) */
    int64_t device_ns;      /* the asynchronous backends' device busy time; -1: not measured */
    int n_sync, n_async;    /* backends of each kind that had work in this layer */
    bool async_first;       /* every asynchronous backend was submitted before any synchronous one began */
} mc_moe_trace;

/* Record each layer's mc_moe_trace of every later decode into
 * trace[0..n_layer) (the last decode's values stay); NULL stops. The array
 * belongs to the caller and must outlive the recording. */
void mc_context_trace(moecl_context *ctx, mc_moe_trace *trace);

struct mc_backend {
    const mc_backend_i *iface;
    const moecl_model *model;
    void *impl;
};

/* Warn once if OpenBLAS runs generic kernels on a CPU that has better ones. */
void mc_backend_check_blas(void);

/* Backends. */
/* The CPU backend computes on pool's threads (the context's; it must outlive
 * the backend; NULL: the calling thread alone). */
moecl_status mc_backend_cpu_new(const moecl_model *model, mc_pool *pool, mc_backend **out);

/* What the OpenCL backend is asked for (src/backend/opencl/). */
typedef struct mc_opencl_params {
    const char *selector;  /* device index or name substring; NULL or "": first GPU, see gpu_only */
    bool gpu_only;         /* without a selector, consider GPUs only (auto never picks PoCL) */
    int64_t mem_budget;    /* bytes of expert weights on the device; < 0: device memory minus headroom */
    int experts_per_layer; /* most experts of a layer on the device; < 0: no limit but the budget */
    moecl_dtype dtype;     /* F32 or F16 on the device; MOECL_DTYPE_COUNT: match the model */
    mc_pool *pool;         /* the context's threads, for the CPU kernels its matmul delegates to */
} mc_opencl_params;

/* Open a device, build the kernels, choose which experts of each layer the
 * device holds within the budget (the planner with uniform frequencies:
 * round-robin over the layers) and upload them. placement[l * n_expert + e]
 * is set to `index` for each expert taken, left alone for the others.
 * *n_placed: the experts taken (0 is a success: the caller may then drop
 * the backend). Fails with MOECL_ERR_BACKEND (no platform, no matching
 * device, a build or an allocation failure) leaving placement untouched. */
moecl_status mc_backend_opencl_new(const moecl_model *model, const mc_opencl_params *params, uint8_t *placement,
                                   uint8_t index, int64_t *n_placed, mc_backend **out);

/* The same in steps, so that a planner can see every device before any
 * holds a weight: open (device, storage types, the probe), then
 * mc_backend_opencl_load with the plan. A backend opened and never loaded
 * holds nothing and must only be freed. */
moecl_status mc_backend_opencl_open(const moecl_model *model, const mc_opencl_params *params, mc_backend **out);

typedef struct mc_opencl_plan_info {
    int64_t budget;     /* bytes of expert weights it may hold (params' mem_budget, or memory less headroom) */
    int max_per_layer;  /* experts of one layer its largest allocation holds */
    double read_bps;    /* measured read bandwidth, bytes/s; 0: unknown */
    double rtt_s;       /* measured host round trip, seconds */
    bool host_memory;   /* a CPU device (PoCL): it reads the host's own memory */
} mc_opencl_plan_info;
void mc_backend_opencl_plan_info(const mc_backend *be, mc_opencl_plan_info *info);

/* Bytes one expert of layer l (w1, w3, w2) takes on the device; 0 for a dense layer. */
uint64_t mc_backend_opencl_expert_bytes(const mc_backend *be, int layer);

/* Upload the experts with placement[l * n_expert + e] == index, any subset
 * of (layer, expert); *n_placed: how many. */
moecl_status mc_backend_opencl_load(mc_backend *be, const uint8_t *placement, uint8_t index, int64_t *n_placed);

/* The host's read bandwidth with n_threads, bytes/s (measured once, cached
 * beside the OpenCL programs); 0: unknown. backend.c. */
double mc_host_read_bps(int n_threads);

/* The dense layers on an OpenCL backend: device bytes they need (weights
 * in the device's float dtype, a KV cache of n_cells cells of kv_type per
 * layer, activations for n_batch tokens and n_out logit rows), and the
 * upload. Every dense weight goes to the device as F32 or F16 (quantized
 * ones are dequantized). load: MOECL_ERR_BACKEND on an allocation or build
 * failure, after which the backend holds no dense layer. */
uint64_t mc_backend_opencl_dense_bytes(const mc_backend *be, int32_t n_cells, moecl_dtype kv_type, int32_t n_batch,
                                       int32_t n_out);
moecl_status mc_backend_opencl_dense_load(mc_backend *be, int32_t n_cells, moecl_dtype kv_type, int32_t n_batch,
                                          int32_t n_out);

/* The OpenCL backend's device name, bytes of expert weights and their dtype. */
void mc_backend_opencl_describe(const mc_backend *be, char *name, size_t len, uint64_t *bytes, moecl_dtype *dtype);

static inline void mc_backend_free(mc_backend *be) {
    if (be) be->iface->free(be);
}

#endif
