/*
 * backend_opencl.c - the OpenCL backend: expert FFNs on an OpenCL device.
 *
 * At creation the backend opens a device, checks it has what the kernels
 * need, chooses which experts of each layer it holds within a memory budget,
 * builds the programs those experts' weight types need (cl/moe_ffn.cl for
 * F32/F16, cl/moe_ffn_q.cl once per quantized type) and uploads the weights
 * once. moe_submit then enqueues, without blocking: one write of the packed
 * rows of all its experts of the layer, one grouped launch of gate+up
 * (SiLU·mul fused), one of down, one read back; moe_wait blocks.
 * matmul delegates to the CPU kernels. Given the dense layers as well
 * (mc_backend_opencl_dense_load, the last section), the device runs the
 * whole layer but the router and the experts it does not hold: the dense
 * entries of backend.h over cl/dense.cl and the float down kernels.
 *
 * A device that fails in the middle of a decode (an enqueue, an allocation
 * or the wait) does not lose the call: the backend logs the error, computes
 * that work on the CPU and never touches the device again.
 *
 * Test hooks (environment, read when the backend is created):
 *   MOECL_CL_TEST_LIMITS=clc=11,wg=8,local=1024,max_alloc=4096
 *                          pretend the device reports these (OpenCL C
 *                          version major*10+minor, bytes)
 *   MOECL_CL_FAIL_ALLOC=N  the N-th buffer allocation (from 1) and every
 *                          later one fail
 *   MOECL_CL_FAIL_AT=submit:N | wait:N | dense:N
 *                          the N-th moe_submit / moe_wait / dense_attn (from
 *                          1) fails as if the device had returned
 *                          CL_OUT_OF_RESOURCES
 *   MOECL_CL_PROFILE=1     enable queue profiling: moe_device_ns gives the
 *                          device's busy time of each layer (the overlap test)
 * Tuning: MOECL_CL_FEW_ROWS=vec|rows, MOECL_CL_PROMPT=tiled|blk choose the
 * kernels (defaults by device type).
 */
#include "backend/backend.h"
#include "arch/arch.h"
#include "backend/opencl/opencl.h"
#include "backend/cpu/kernels.h"
#include "placement.h"
#include "quant/quant.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Few rows per expert: matrix-vector kernels (_vec on GPUs, _rows on CPU
 * devices, where PoCL serializes work-group reductions); more: tiled (GPUs)
 * or register-blocked (_blk, CPU devices). */
#define VEC_MAX_ROWS 8
#define QRB 4  /* token rows per work-item of the quantized kernels */
#define BLK_RB 4
#define BLK_CB 2
#define MIN_CLC 12 /* OpenCL C 1.2 */

/* The kernels, one table: family file, name. */
enum { K_GU_VEC, K_DN_VEC, K_GU_TILED, K_DN_TILED, K_GU_ROWS, K_DN_ROWS, K_GU_BLK, K_DN_BLK, K_SWIGLU, K_FLOAT_N };
enum { K_GU_Q, K_DN_Q, K_QUANT_N };
static const char *const float_kernels[K_FLOAT_N] = {
    "moe_gate_up_vec", "moe_down_vec", "moe_gate_up_tiled", "moe_down_tiled",
    "moe_gate_up_rows", "moe_down_rows", "moe_gate_up_blk", "moe_down_blk", "moe_swiglu",
};
static const char *const quant_kernels[K_QUANT_N] = {"moeq_gate_up", "moeq_down"};

typedef struct cl_layer {
    int n_slots;          /* experts of this layer held */
    moecl_dtype t13, t2;  /* storage on the device of w1/w3 and of w2 */
    size_t b13, b2;       /* bytes of one expert's w1 (= w3) and w2 on the device */
    cl_mem w1, w3;        /* [n_slots, n_ff, n_embd] elements, b13 bytes per slot */
    cl_mem w2;            /* [n_slots, n_embd, n_ff] elements, b2 bytes per slot */
} cl_layer;

/* One layer's dense tensors on the device (cl_mem only: released as an array). */
typedef struct dense_layer {
    cl_mem wq, wk, wv, wo;         /* fdtype [q_dim, D], [kv_dim, D] x2, [D, q_dim] */
    cl_mem w1, w3, w2;             /* fdtype: the dense FFN or the shared expert [ff, D] x2, [D, ff]; NULL: none */
    cl_mem attn_norm, ffn_norm;    /* float [D] */
    cl_mem bq, bk, bv, bo;         /* float biases or NULL */
    cl_mem qn, kn;                 /* float QK-norm weights or NULL */
    cl_mem gate;                   /* float [D] the shared expert's gate or NULL */
    cl_mem router;                 /* float [n_expert, D] or NULL (a dense layer) */
    cl_mem kc, vc;                 /* kv type [n_cells, kv_dim] this layer's KV cache, by cell */
} dense_layer;

typedef struct ocl_backend {
    mc_cl_device dev;
    cl_context ctx;
    cl_command_queue queue;
    cl_program prog[MOECL_DTYPE_COUNT];  /* per device weight type; F32 and F16 share the float file */
    cl_kernel kf[K_FLOAT_N];             /* float kernels, built for fdtype */
    cl_kernel kq[MOECL_DTYPE_COUNT][K_QUANT_N];
    bool cpu_device;      /* PoCL and other CPU devices: _rows and _blk kernels */
    bool few_rows_rows;   /* few rows: _rows kernels, else _vec; $MOECL_CL_FEW_ROWS=vec|rows */
    bool prompt_blk;      /* many rows: _blk kernels, else _tiled; $MOECL_CL_PROMPT=blk|tiled */
    size_t wgs, ts, outs; /* tunables the float program was built with */
    moecl_dtype fdtype;   /* F32 or F16: storage of float weights on the device */
    int32_t *slot;        /* [n_layer * n_expert] slot on the device, -1: not here */
    cl_layer *layers;     /* [n_layer] */
    cl_mem x, h, y;       /* [cap_rows, n_embd], [cap_rows, n_ff], [cap_rows, n_embd] */
    cl_mem h3;            /* [cap_rows, n_ff] the up product on the CLBlast path; NULL when it is off */
    int64_t blast_rows;   /* rows per expert (the most of a call) from which F32 layers use CLBlast; INT64_MAX: never */
    cl_mem groups;        /* [n_expert] int4 */
    size_t cap_rows;
    cl_int *groups_host;  /* [n_expert * 4], read by the pending write */
    bool pending;         /* work enqueued and not waited for */
    cl_event read_ev;     /* the pending read of the outputs; NULL when none */
    cl_event write_ev;    /* its first write, kept only when profiling; NULL when none */
    bool profile;         /* MOECL_CL_PROFILE=1: queue profiling, device_ns measured */
    int64_t device_ns;    /* device busy time of the last drained work; -1: unknown */
    mc_moe_work last;     /* the pending work, recomputed on the CPU if the wait fails */
    bool failed;          /* the device failed during a decode: everything runs on the CPU */
    mc_backend *cpu;      /* matmul, and the experts once the device failed */
    uint64_t weight_bytes;
    int64_t budget;       /* bytes of expert weights the planner may place here */
    int max_per_layer;    /* experts of one layer the largest allocation holds */
    double read_bps, rtt_s; /* mc_cl_probe's measurements; 0: unknown */
    /* The dense layers (mc_backend_opencl_dense_load); dense false: none. */
    bool dense;
    cl_program dprog;
    cl_kernel kd[11];     /* cl/dense.cl's kernels (KD_*) */
    dense_layer *dl;      /* [n_layer] */
    cl_mem d_out_norm, d_lm_head; /* float [D]; fdtype [n_vocab, D] */
    cl_mem d_x, d_xn, d_proj;     /* [d_batch, D] the residual stream (resident), normed, a product */
    cl_mem d_q, d_att;            /* [d_batch, q_dim] */
    cl_mem d_k, d_v;              /* [d_batch, kv_dim] */
    cl_mem d_h1, d_h3;            /* [d_batch, ff] a dense FFN's hidden activations */
    cl_mem d_xo, d_logits, d_rows;/* [d_out_cap, D], [d_out_cap, n_vocab], int [d_out_cap] */
    cl_mem d_pos, d_cell, d_tab_off; /* int [d_batch] */
    cl_mem d_tab;                 /* int [d_tab_cap] block tables */
    cl_mem d_groups_t, d_groups_o;/* int4 {0, 0, T or n_out, 0}: one group for the matrix products */
    cl_mem d_logits_r;            /* [d_batch, n_expert] router logits */
    cl_mem d_row_token, d_pair_row, d_weight; /* int [d_batch * K] x2, float [d_batch * K]: the experts here */
    int32_t d_batch, d_out_cap, d_tab_cap;
    size_t d_kv_esz;              /* bytes of one KV cell element on the device: 4 or 2 */
    int64_t d_T;                  /* tokens of the current batch */
    float eps;
    int64_t dl_D;                 /* n_embd */
    uint64_t dense_bytes;
    /* test hooks */
    long n_dense, fail_dense_at;
    long n_allocs, fail_alloc_at;
    long n_submits, n_waits, fail_submit_at, fail_wait_at;
} ocl_backend;

#define CL_CHECK(call, what)                                                                             \
    do {                                                                                                 \
        cl_int err_ = (call);                                                                            \
        if (err_ != CL_SUCCESS)                                                                          \
            return mc_error(MOECL_ERR_BACKEND, "opencl: %s on %s: %s", what, o->dev.name, mc_cl_strerror(err_)); \
    } while (0)

static bool is_quant(moecl_dtype t) { return mc_dtype_block(t) > 1; }

/* "3.5 MiB", "12.0 KiB", "640 bytes" */
static const char *human(uint64_t bytes, char *buf, size_t len) {
    if (bytes >= ((uint64_t)1 << 20)) snprintf(buf, len, "%.1f MiB", (double)bytes / 1048576.0);
    else if (bytes >= 1024) snprintf(buf, len, "%.1f KiB", (double)bytes / 1024.0);
    else snprintf(buf, len, "%llu bytes", (unsigned long long)bytes);
    return buf;
}

/* Every buffer comes from here, so that a test can make allocations fail. */
static cl_mem alloc_buf(ocl_backend *o, cl_mem_flags flags, size_t bytes, cl_int *err) {
    if (o->fail_alloc_at > 0 && ++o->n_allocs >= o->fail_alloc_at) {
        *err = CL_MEM_OBJECT_ALLOCATION_FAILURE;
        return NULL;
    }
    return clCreateBuffer(o->ctx, flags, bytes, NULL, err);
}

/* ------------------------------------------------------------------------ */
/* Expert FFNs                                                              */
/* ------------------------------------------------------------------------ */

static moecl_status reserve_rows(mc_backend *be, size_t rows) {
    ocl_backend *o = be->impl;
    if (rows <= o->cap_rows) return MOECL_OK;
    const size_t D = (size_t)be->model->hp.n_embd, F = (size_t)be->model->hp.n_ff;
    size_t cap = o->cap_rows ? o->cap_rows : 16;
    while (cap < rows) cap *= 2;
    cl_mem bufs[4] = {o->x, o->h, o->y, o->h3};
    for (int i = 0; i < 4; i++)
        if (bufs[i]) clReleaseMemObject(bufs[i]);
    o->x = o->h = o->y = o->h3 = NULL;
    o->cap_rows = 0;
    cl_int e1 = CL_SUCCESS, e2 = CL_SUCCESS, e3 = CL_SUCCESS;
    /* read-write: with the dense layers here a kernel gathers x and another reads y */
    o->x = alloc_buf(o, CL_MEM_READ_WRITE, cap * D * sizeof(float), &e1);
    if (!e1) o->h = alloc_buf(o, CL_MEM_READ_WRITE, cap * F * sizeof(float), &e2);
    if (!e1 && !e2) o->y = alloc_buf(o, CL_MEM_READ_WRITE, cap * D * sizeof(float), &e3);
    if (!e1 && !e2 && !e3 && o->blast_rows != INT64_MAX)
        o->h3 = alloc_buf(o, CL_MEM_READ_WRITE, cap * F * sizeof(float), &e3);
    if (e1 || e2 || e3)
        return mc_error(MOECL_ERR_BACKEND, "opencl: cannot allocate activations for %zu rows on %s: %s", cap,
                        o->dev.name, mc_cl_strerror(e1 ? e1 : e2 ? e2 : e3));
    o->cap_rows = cap;
    return MOECL_OK;
}

static moecl_status set_args(ocl_backend *o, cl_kernel k, cl_mem in, cl_mem wa, cl_mem wb, cl_mem out, cl_int D,
                             cl_int F) {
    cl_int err = 0, i = 0;
    err |= clSetKernelArg(k, (cl_uint)i++, sizeof(cl_mem), &in);
    err |= clSetKernelArg(k, (cl_uint)i++, sizeof(cl_mem), &wa);
    if (wb) err |= clSetKernelArg(k, (cl_uint)i++, sizeof(cl_mem), &wb);
    err |= clSetKernelArg(k, (cl_uint)i++, sizeof(cl_mem), &out);
    err |= clSetKernelArg(k, (cl_uint)i++, sizeof(cl_mem), &o->groups);
    err |= clSetKernelArg(k, (cl_uint)i++, sizeof(cl_int), &D);
    err |= clSetKernelArg(k, (cl_uint)i++, sizeof(cl_int), &F);
    CL_CHECK(err, "setting kernel arguments");
    return MOECL_OK;
}

/* One stage (gate+up: down = false) over n_out outputs with weights of type t. */
static moecl_status launch(ocl_backend *o, bool down, moecl_dtype t, size_t n_out, int64_t max_rows, size_t n_used) {
    const char *what = down ? "launching the down projection" : "launching the gate and up projections";
    if (is_quant(t)) {
        size_t g[3] = {n_out, ((size_t)max_rows + QRB - 1) / QRB, n_used};
        CL_CHECK(clEnqueueNDRangeKernel(o->queue, o->kq[t][down], 3, NULL, g, NULL, 0, NULL, NULL), what);
        return MOECL_OK;
    }
    const int d = down ? 1 : 0;
    if (max_rows <= VEC_MAX_ROWS && o->few_rows_rows) {
        size_t g[2] = {n_out, n_used};
        CL_CHECK(clEnqueueNDRangeKernel(o->queue, o->kf[K_GU_ROWS + d], 2, NULL, g, NULL, 0, NULL, NULL), what);
    } else if (max_rows <= VEC_MAX_ROWS) {
        size_t g[2] = {(n_out + o->outs - 1) / o->outs * o->wgs, n_used}, l[2] = {o->wgs, 1};
        CL_CHECK(clEnqueueNDRangeKernel(o->queue, o->kf[K_GU_VEC + d], 2, NULL, g, l, 0, NULL, NULL), what);
    } else if (o->prompt_blk) {
        size_t g[3] = {(n_out + BLK_CB - 1) / BLK_CB, ((size_t)max_rows + BLK_RB - 1) / BLK_RB, n_used};
        CL_CHECK(clEnqueueNDRangeKernel(o->queue, o->kf[K_GU_BLK + d], 3, NULL, g, NULL, 0, NULL, NULL), what);
    } else {
        const size_t ts = o->ts;
        size_t g[3] = {(n_out + ts - 1) / ts * ts, ((size_t)max_rows + ts - 1) / ts * ts, n_used};
        size_t l[3] = {ts, ts, 1};
        CL_CHECK(clEnqueueNDRangeKernel(o->queue, o->kf[K_GU_TILED + d], 3, NULL, g, l, 0, NULL, NULL), what);
    }
    return MOECL_OK;
}

static cl_kernel stage_kernel(ocl_backend *o, bool down, moecl_dtype t, int64_t max_rows) {
    if (is_quant(t)) return o->kq[t][down];
    const int d = down ? 1 : 0;
    if (max_rows <= VEC_MAX_ROWS) return o->kf[(o->few_rows_rows ? K_GU_ROWS : K_GU_VEC) + d];
    return o->kf[(o->prompt_blk ? K_GU_BLK : K_GU_TILED) + d];
}

/* The expert FFNs of an F32 layer through CLBlast: per expert, H = X·W1ᵀ
 * and H3 = X·W3ᵀ; H = silu(H) ⊙ H3 for all rows at once; per expert
 * Y = H·W2ᵀ. The groups (slot, first row, rows) are o->groups_host's. */
static moecl_status enqueue_blast(ocl_backend *o, const cl_layer *L, int n_used, int64_t rows, cl_int D, cl_int F) {
    const size_t d = (size_t)D, f = (size_t)F;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) { /* between the products: SwiGLU */
            const cl_int n = (cl_int)((size_t)rows * f);
            cl_int err = clSetKernelArg(o->kf[K_SWIGLU], 0, sizeof(cl_mem), &o->h);
            err |= clSetKernelArg(o->kf[K_SWIGLU], 1, sizeof(cl_mem), &o->h3);
            err |= clSetKernelArg(o->kf[K_SWIGLU], 2, sizeof(cl_int), &n);
            CL_CHECK(err, "setting the SwiGLU kernel's arguments");
            size_t g = ((size_t)n + 63) / 64 * 64;
            CL_CHECK(clEnqueueNDRangeKernel(o->queue, o->kf[K_SWIGLU], 1, NULL, &g, NULL, 0, NULL, NULL),
                     "launching SwiGLU");
        }
        for (int i = 0; i < n_used; i++) {
            const size_t slot = (size_t)o->groups_host[4 * i], r0 = (size_t)o->groups_host[4 * i + 1];
            const size_t n = (size_t)o->groups_host[4 * i + 2];
            int st = 0;
            if (pass == 0) {
                st = mc_clblast_sgemm_nt(o->queue, n, f, d, o->x, r0 * d, L->w1, slot * f * d, o->h, r0 * f);
                if (!st) st = mc_clblast_sgemm_nt(o->queue, n, f, d, o->x, r0 * d, L->w3, slot * f * d, o->h3, r0 * f);
            } else {
                st = mc_clblast_sgemm_nt(o->queue, n, d, f, o->h, r0 * f, L->w2, slot * d * f, o->y, r0 * d);
            }
            if (st)
                return mc_error(MOECL_ERR_BACKEND, "opencl: CLBlast's SGEMM on %s failed with status %d", o->dev.name,
                                st);
        }
    }
    return MOECL_OK;
}

static moecl_status dense_gather(ocl_backend *o, int64_t rows);

/* The expert FFNs of w: rows from w->X (or, X NULL, gathered on the device
 * from the dense layers' normed states), outputs into o->y and read into
 * w->Y (Y NULL: left on the device for the dense layers' scatter). */
static moecl_status enqueue(mc_backend *be, const mc_moe_work *w) {
    ocl_backend *o = be->impl;
    const mc_hparams *hp = &be->model->hp;
    const cl_int D = hp->n_embd, F = hp->n_ff;
    const int64_t r0 = w->offsets[0], rows = w->offsets[w->n_used] - r0;
    const cl_layer *L = &o->layers[w->layer];
    if (o->fail_submit_at > 0 && o->n_submits == o->fail_submit_at)
        return mc_error(MOECL_ERR_BACKEND, "opencl: enqueueing the expert FFNs of layer %d on %s: %s (injected)",
                        w->layer, o->dev.name, mc_cl_strerror(CL_OUT_OF_RESOURCES));
    moecl_status st = reserve_rows(be, (size_t)rows);
    if (st) return st;

    int64_t max_rows = 0;
    for (int i = 0; i < w->n_used; i++) {
        int32_t s = o->slot[(int64_t)w->layer * hp->n_expert + w->expert_ids[i]];
        if (s < 0)
            return mc_error(MOECL_ERR_BACKEND, "opencl: expert %d of layer %d is not on the device",
                            w->expert_ids[i], w->layer);
        int64_t n = w->offsets[i + 1] - w->offsets[i];
        if (n > max_rows) max_rows = n;
        o->groups_host[4 * i + 0] = s;
        o->groups_host[4 * i + 1] = (cl_int)(w->offsets[i] - r0);
        o->groups_host[4 * i + 2] = (cl_int)n;
        o->groups_host[4 * i + 3] = 0;
    }
    const size_t xbytes = (size_t)rows * (size_t)D * sizeof(float);
    if (w->X) {
        CL_CHECK(clEnqueueWriteBuffer(o->queue, o->x, CL_FALSE, 0, xbytes, w->X + r0 * D, 0, NULL,
                                      o->profile ? &o->write_ev : NULL),
                 "writing the rows");
    } else if ((st = dense_gather(o, rows))) { /* the dense layers' normed states, on the device */
        return st;
    }
    CL_CHECK(clEnqueueWriteBuffer(o->queue, o->groups, CL_FALSE, 0, (size_t)w->n_used * 4 * sizeof(cl_int),
                                  o->groups_host, 0, NULL, NULL),
             "writing the groups");
    if (L->t13 == MOECL_DTYPE_F32 && L->t2 == MOECL_DTYPE_F32 && max_rows >= o->blast_rows && o->h3) {
        if ((st = enqueue_blast(o, L, w->n_used, rows, D, F))) return st;
    } else {
        if ((st = set_args(o, stage_kernel(o, false, L->t13, max_rows), o->x, L->w1, L->w3, o->h, D, F))) return st;
        if ((st = set_args(o, stage_kernel(o, true, L->t2, max_rows), o->h, L->w2, NULL, o->y, D, F))) return st;
        if ((st = launch(o, false, L->t13, (size_t)F, max_rows, (size_t)w->n_used))) return st;
        if ((st = launch(o, true, L->t2, (size_t)D, max_rows, (size_t)w->n_used))) return st;
    }
    if (w->Y)
        CL_CHECK(clEnqueueReadBuffer(o->queue, o->y, CL_FALSE, 0, xbytes, w->Y + r0 * D, 0, NULL, &o->read_ev),
                 "reading the outputs");
    CL_CHECK(clFlush(o->queue), "flushing the queue");
    return MOECL_OK;
}

/* Block until the pending read has landed in host memory and the queue is
 * empty. The read's own event is waited on, not only clFinish: Mesa's
 * rusticl returns from clFinish before a non-blocking read already flushed
 * with clFlush has completed (measured: wrong, varying logits). The error
 * of the read, if any. */
static cl_int drain(ocl_backend *o) {
    cl_int err = CL_SUCCESS;
    o->device_ns = -1;
    if (o->read_ev) {
        err = clWaitForEvents(1, &o->read_ev);
        cl_int es = CL_COMPLETE;
        if (err == CL_SUCCESS &&
            clGetEventInfo(o->read_ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof es, &es, NULL) == CL_SUCCESS &&
            es < 0)
            err = es;
        cl_ulong t0 = 0, t1 = 0;
        if (err == CL_SUCCESS && o->write_ev &&
            clGetEventProfilingInfo(o->write_ev, CL_PROFILING_COMMAND_START, sizeof t0, &t0, NULL) == CL_SUCCESS &&
            clGetEventProfilingInfo(o->read_ev, CL_PROFILING_COMMAND_END, sizeof t1, &t1, NULL) == CL_SUCCESS &&
            t1 >= t0)
            o->device_ns = (int64_t)(t1 - t0);
        clReleaseEvent(o->read_ev);
        o->read_ev = NULL;
    }
    if (o->write_ev) {
        clReleaseEvent(o->write_ev);
        o->write_ev = NULL;
    }
    cl_int fin = clFinish(o->queue);
    return err != CL_SUCCESS ? err : fin;
}

/* The device failed (the error is the thread's last): say so, stop using
 * it, and compute w on the CPU so that the decode goes on. */
static moecl_status fall_back(mc_backend *be, const mc_moe_work *w) {
    ocl_backend *o = be->impl;
    mc_log(MOECL_LOG_ERROR,
           "opencl: %s; layer %d's experts of this call and all expert FFNs from now on run on the CPU "
           "(the device %s is not used again by this context)",
           moecl_last_error(), w->layer, o->dev.name);
    o->failed = true;
    drain(o); /* nothing may still read or write host memory; its error is the one above */
    mc_clear_error();
    return o->cpu->iface->moe_submit(o->cpu, w);
}

static moecl_status ocl_moe_submit(mc_backend *be, const mc_moe_work *w) {
    ocl_backend *o = be->impl;
    if (w->n_used <= 0) return MOECL_OK;
    if (o->failed) return o->cpu->iface->moe_submit(o->cpu, w);
    o->n_submits++;
    moecl_status st = enqueue(be, w);
    if (st) return fall_back(be, w);
    o->pending = true;
    o->last = *w; /* its arrays belong to the caller and live until the wait */
    return MOECL_OK;
}

static moecl_status ocl_moe_wait(mc_backend *be) {
    ocl_backend *o = be->impl;
    if (!o->pending) return MOECL_OK;
    o->pending = false;
    o->n_waits++;
    cl_int err = drain(o);
    if (o->fail_wait_at > 0 && o->n_waits == o->fail_wait_at) err = CL_OUT_OF_RESOURCES;
    if (err == CL_SUCCESS) return MOECL_OK;
    mc_error(MOECL_ERR_BACKEND, "opencl: waiting for the expert FFNs of layer %d on %s: %s%s", o->last.layer,
             o->dev.name, mc_cl_strerror(err), o->fail_wait_at > 0 ? " (injected)" : "");
    return fall_back(be, &o->last);
}

static int64_t ocl_moe_device_ns(mc_backend *be) {
    const ocl_backend *o = be->impl;
    return o->device_ns;
}

static moecl_status ocl_matmul(mc_backend *be, const mc_tensor *W, const float *X, int64_t T, float *Y) {
    ocl_backend *o = be->impl;
    return o->cpu->iface->matmul(o->cpu, W, X, T, Y);
}

static void dense_release(ocl_backend *o, int n_layer);

static void ocl_free(mc_backend *be) {
    if (!be) return;
    ocl_backend *o = be->impl;
    if (o) {
        if (o->queue) drain(o);
        dense_release(o, be->model->hp.n_layer);
        for (int l = 0; o->layers && l < be->model->hp.n_layer; l++) {
            cl_mem m[3] = {o->layers[l].w1, o->layers[l].w3, o->layers[l].w2};
            for (int i = 0; i < 3; i++)
                if (m[i]) clReleaseMemObject(m[i]);
        }
        cl_mem m[5] = {o->x, o->h, o->y, o->groups, o->h3};
        for (int i = 0; i < 5; i++)
            if (m[i]) clReleaseMemObject(m[i]);
        for (int i = 0; i < K_FLOAT_N; i++)
            if (o->kf[i]) clReleaseKernel(o->kf[i]);
        for (int t = 0; t < MOECL_DTYPE_COUNT; t++) {
            for (int i = 0; i < K_QUANT_N; i++)
                if (o->kq[t][i]) clReleaseKernel(o->kq[t][i]);
            if (o->prog[t]) clReleaseProgram(o->prog[t]);
        }
        if (o->queue) clReleaseCommandQueue(o->queue);
        if (o->ctx) clReleaseContext(o->ctx);
        mc_backend_free(o->cpu);
        free(o->layers);
        free(o->slot);
        free(o->groups_host);
        free(o);
    }
    free(be);
}

static moecl_status ocl_dense_begin(mc_backend *be, const mc_dense_batch *b);
static moecl_status ocl_dense_attn(mc_backend *be, int il, float *logits, float *xn, float *k, float *v);
static moecl_status ocl_dense_experts(mc_backend *be, const mc_dense_moe *w);
static moecl_status ocl_dense_ffn(mc_backend *be, int il, const float *delta);
static moecl_status ocl_dense_head(mc_backend *be, int32_t n_out, const int32_t *rows, float *logits);

static const mc_backend_i ocl_iface = {
    .name = "opencl",
    .free = ocl_free,
    .matmul = ocl_matmul,
    .moe_submit = ocl_moe_submit,
    .moe_wait = ocl_moe_wait,
    .moe_device_ns = ocl_moe_device_ns,
    .dense_begin = ocl_dense_begin,
    .dense_attn = ocl_dense_attn,
    .dense_experts = ocl_dense_experts,
    .dense_ffn = ocl_dense_ffn,
    .dense_head = ocl_dense_head,
};

/* ------------------------------------------------------------------------ */
/* Creation: device, features, programs                                     */
/* ------------------------------------------------------------------------ */

static long env_long(const char *name) {
    const char *s = getenv(name);
    return s && *s ? strtol(s, NULL, 10) : 0;
}

static void read_test_hooks(ocl_backend *o) {
    o->fail_alloc_at = env_long("MOECL_CL_FAIL_ALLOC");
    const char *at = getenv("MOECL_CL_FAIL_AT");
    long n = 0;
    if (at && sscanf(at, "submit:%ld", &n) == 1) o->fail_submit_at = n;
    if (at && sscanf(at, "wait:%ld", &n) == 1) o->fail_wait_at = n;
    if (at && sscanf(at, "dense:%ld", &n) == 1) o->fail_dense_at = n;
    const char *lim = getenv("MOECL_CL_TEST_LIMITS"); /* "clc=11,wg=8,local=1024,max_alloc=4096" */
    for (const char *p = lim; p && *p;) {
        char key[32];
        unsigned long long v;
        if (sscanf(p, "%31[a-z_]=%llu", key, &v) == 2) {
            if (!strcmp(key, "clc")) o->dev.clc_version = (int)v;
            if (!strcmp(key, "wg")) o->dev.max_wg = (size_t)v;
            if (!strcmp(key, "local")) o->dev.local_mem = v;
            if (!strcmp(key, "max_alloc")) o->dev.max_alloc = v;
        }
        p = strchr(p, ',');
        if (p) p++;
    }
}

/* What the kernels need, against what the device has; the tunables follow. */
static moecl_status check_device(ocl_backend *o) {
    const mc_cl_device *d = &o->dev;
    if (!d->available)
        return mc_error(MOECL_ERR_BACKEND, "opencl: device %s is not available or has no compiler", d->name);
    if (d->clc_version < MIN_CLC)
        return mc_error(MOECL_ERR_BACKEND, "opencl: device %s takes OpenCL C %d.%d; the kernels need %d.%d", d->name,
                        d->clc_version / 10, d->clc_version % 10, MIN_CLC / 10, MIN_CLC % 10);
    /* the _vec kernels: WGS work-items, 2 * ROWS(4) * WGS floats of local memory;
     * the _tiled ones: TS * TS work-items, 3 * TS * (TS + 1) floats */
    o->wgs = 64;
    while (o->wgs > 4 && (o->wgs > d->max_wg || 2 * 4 * o->wgs * sizeof(float) > d->local_mem)) o->wgs /= 2;
    o->ts = 16;
    while (o->ts > 4 && (o->ts * o->ts > d->max_wg || 3 * o->ts * (o->ts + 1) * sizeof(float) > d->local_mem))
        o->ts /= 2;
    if (d->max_wg < 16)
        return mc_error(MOECL_ERR_BACKEND, "opencl: device %s allows work-groups of %zu work-items; the kernels need 16",
                        d->name, d->max_wg);
    const uint64_t need = 3 * 4 * 5 * sizeof(float);
    if (d->local_mem < need)
        return mc_error(MOECL_ERR_BACKEND,
                        "opencl: device %s has %llu bytes of local memory; the kernels need %llu", d->name,
                        (unsigned long long)d->local_mem, (unsigned long long)need);
    return MOECL_OK;
}

static moecl_status open_device(ocl_backend *o, const mc_opencl_params *p) {
    moecl_status st = mc_cl_select(p->selector, p->gpu_only, &o->dev);
    if (st) return st;
    read_test_hooks(o);
    if ((st = check_device(o))) return st;
    cl_int err;
    o->ctx = clCreateContext(NULL, 1, &o->dev.id, NULL, NULL, &err);
    CL_CHECK(err, "clCreateContext");
    const char *prof = getenv("MOECL_CL_PROFILE");
    o->profile = prof && !strcmp(prof, "1");
    o->device_ns = -1;
    o->queue = clCreateCommandQueue(o->ctx, o->dev.id, o->profile ? CL_QUEUE_PROFILING_ENABLE : 0, &err);
    CL_CHECK(err, "clCreateCommandQueue");
    o->cpu_device = !o->dev.is_gpu;
    const char *fr = getenv("MOECL_CL_FEW_ROWS"), *pr = getenv("MOECL_CL_PROMPT");
    o->few_rows_rows = fr && !strcmp(fr, "rows") ? true : fr && !strcmp(fr, "vec") ? false : o->cpu_device;
    o->prompt_blk = pr && !strcmp(pr, "blk") ? true : pr && !strcmp(pr, "tiled") ? false : o->cpu_device;
    o->outs = 1; /* GPUs want many small groups (CPU devices use the _rows kernels) */
    /* (A CPU device shares the cores with the context's pool, whose workers
     * sleep after a short spin: MOECL_SPIN_US, threadpool.h.) */
    return MOECL_OK;
}

/* Build the program for device weight type t (once) and create its kernels. */
static moecl_status build_for(ocl_backend *o, moecl_dtype t) {
    if (o->prog[t]) return MOECL_OK;
    char opts[256];
    moecl_status st;
    cl_int err;
    if (!is_quant(t)) {
        snprintf(opts, sizeof opts, "-cl-mad-enable -DWGS=%zu -DTS=%zu -DOUTS=%zu -DRB=%d -DCB=%d%s", o->wgs, o->ts,
                 o->outs, BLK_RB, BLK_CB, t == MOECL_DTYPE_F16 ? " -DWEIGHT_F16" : "");
        if ((st = mc_cl_build(o->ctx, &o->dev, "moe_ffn.cl", opts, float_kernels, K_FLOAT_N, &o->prog[t]))) return st;
        for (int i = 0; i < K_FLOAT_N; i++) {
            o->kf[i] = clCreateKernel(o->prog[t], float_kernels[i], &err);
            CL_CHECK(err, float_kernels[i]);
        }
        return MOECL_OK;
    }
    snprintf(opts, sizeof opts, "-DQTYPE=%d -DQRB=%d", (int)t, QRB);
    if ((st = mc_cl_build(o->ctx, &o->dev, "moe_ffn_q.cl", opts, quant_kernels, K_QUANT_N, &o->prog[t]))) return st;
    for (int i = 0; i < K_QUANT_N; i++) {
        o->kq[t][i] = clCreateKernel(o->prog[t], quant_kernels[i], &err);
        CL_CHECK(err, quant_kernels[i]);
    }
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Placement and weights                                                    */
/* ------------------------------------------------------------------------ */

/* Device storage of a model matrix: its own block format when quantized
 * and the caller asked to match the model, else the float dtype. */
static moecl_dtype device_type(const ocl_backend *o, const mc_tensor *t, bool match) {
    return match && is_quant(t->type) ? t->type : o->fdtype;
}

static size_t device_bytes(moecl_dtype t, const mc_tensor *w) {
    size_t row = 0;
    mc_dtype_row_bytes(t, w->cols, &row); /* the model loader checked the shapes */
    return row * (size_t)w->rows;
}

/* Storage types and sizes of each layer's experts. The experts of a layer
 * share one type per matrix (GGUF stacks them); a layer whose experts
 * differ, or whose gate and up differ, keeps the float dtype. */
static void layer_types(const moecl_model *m, ocl_backend *o, bool match) {
    const mc_hparams *hp = &m->hp;
    for (int l = 0; l < hp->n_layer; l++) {
        const mc_expert *x = m->layers[l].experts;
        if (!x) continue; /* a dense layer: nothing to hold */
        bool same13 = x[0].w1.type == x[0].w3.type, same2 = true;
        for (int e = 1; e < hp->n_expert; e++) {
            same13 &= x[e].w1.type == x[0].w1.type && x[e].w3.type == x[0].w1.type;
            same2 &= x[e].w2.type == x[0].w2.type;
        }
        cl_layer *L = &o->layers[l];
        L->t13 = same13 ? device_type(o, &x[0].w1, match) : o->fdtype;
        L->t2 = same2 ? device_type(o, &x[0].w2, match) : o->fdtype;
        L->b13 = device_bytes(L->t13, &x[0].w1);
        L->b2 = device_bytes(L->t2, &x[0].w2);
    }
}

/* The bytes the planner may fill: the caller's budget, else the device's
 * memory less headroom for activations, the driver and other programs. */
static int64_t budget_of(const ocl_backend *o, const mc_opencl_params *p) {
    if (p->mem_budget >= 0) return p->mem_budget;
    uint64_t head = o->dev.global_mem / 10;
    if (head < ((uint64_t)512 << 20)) head = (uint64_t)512 << 20;
    return o->dev.global_mem > head ? (int64_t)(o->dev.global_mem - head) : 0;
}

/* The most experts of one layer the device's largest allocation holds (each
 * matrix of a layer's experts is one buffer); fails when not even one fits. */
static moecl_status max_per_layer(const moecl_model *m, const ocl_backend *o, int *out) {
    const mc_hparams *hp = &m->hp;
    int most = hp->n_expert;
    for (int l = 0; l < hp->n_layer; l++) {
        if (!m->layers[l].experts) continue;
        const cl_layer *cl = &o->layers[l];
        const size_t mat = cl->b13 > cl->b2 ? cl->b13 : cl->b2;
        char a[32], b[32];
        if (mat > o->dev.max_alloc)
            return mc_error(MOECL_ERR_BACKEND,
                            "opencl: device %s allocates at most %s in one buffer, less than one expert "
                            "matrix of layer %d (%s as %s)",
                            o->dev.name, human(o->dev.max_alloc, a, sizeof a), l, human(mat, b, sizeof b),
                            moecl_dtype_name(cl->b13 >= cl->b2 ? cl->t13 : cl->t2));
        const uint64_t n = o->dev.max_alloc / mat;
        if (n < (uint64_t)most) most = (int)n;
    }
    *out = most;
    return MOECL_OK;
}

/* Copy one weight matrix, in device type t, into slot `slot` of buf. */
static moecl_status upload(ocl_backend *o, cl_mem buf, int slot, moecl_dtype t, size_t bytes, const mc_tensor *w,
                           float *tmp32, uint16_t *tmp16) {
    const size_t n = (size_t)w->rows * (size_t)w->cols;
    const void *src = w->data;
    if (t != w->type) {
        if (is_quant(w->type)) mc_dequantize_row(w->type, w->data, tmp32, (int64_t)n);
        else mc_cpu_to_f32(w->type, w->data, tmp32, (int64_t)n);
        src = tmp32;
        if (t == MOECL_DTYPE_F16) {
            for (size_t i = 0; i < n; i++) tmp16[i] = mc_f32_to_f16(tmp32[i]);
            src = tmp16;
        }
    }
    CL_CHECK(clEnqueueWriteBuffer(o->queue, buf, CL_TRUE, (size_t)slot * bytes, bytes, src, 0, NULL, NULL),
             "uploading expert weights");
    return MOECL_OK;
}

/* Allocate and fill the weight buffers of the experts placement[] gives to
 * `index`; a layer's slots follow its expert numbers. */
static moecl_status upload_all(const moecl_model *model, ocl_backend *o, const uint8_t *placement, uint8_t index,
                               int *n_of) {
    const mc_hparams *hp = &model->hp;
    const int E = hp->n_expert;
    const size_t n = (size_t)hp->n_ff * (size_t)hp->n_embd;
    bool convert = false;
    for (int l = 0; l < hp->n_layer; l++) {
        n_of[l] = 0;
        if (!model->layers[l].experts) continue;
        for (int e = 0; e < E; e++) n_of[l] += placement[(int64_t)l * E + e] == index;
        if (n_of[l]) {
            const mc_expert *x = &model->layers[l].experts[0];
            convert |= o->layers[l].t13 != x->w1.type || o->layers[l].t2 != x->w2.type;
        }
    }
    float *tmp32 = convert ? malloc(n * sizeof(float)) : NULL;
    uint16_t *tmp16 = convert ? malloc(n * sizeof(uint16_t)) : NULL;
    moecl_status st = MOECL_OK;
    if (convert && (!tmp32 || !tmp16)) st = mc_error(MOECL_ERR_NOMEM, "opencl: out of memory for weight conversion");
    cl_int err;
    for (int l = 0; l < hp->n_layer && !st; l++) {
        cl_layer *cl = &o->layers[l];
        if (!n_of[l]) continue;
        const size_t b[3] = {cl->b13, cl->b13, cl->b2};
        const moecl_dtype t[3] = {cl->t13, cl->t13, cl->t2};
        cl_mem *bufs[3] = {&cl->w1, &cl->w3, &cl->w2};
        for (int i = 0; i < 3 && !st; i++) {
            const size_t bytes = (size_t)n_of[l] * b[i];
            char hb[32];
            *bufs[i] = alloc_buf(o, CL_MEM_READ_ONLY, bytes, &err);
            if (err)
                st = mc_error(MOECL_ERR_BACKEND, "opencl: cannot allocate %s for the experts of layer %d on %s: %s",
                              human(bytes, hb, sizeof hb), l, o->dev.name, mc_cl_strerror(err));
        }
        cl->n_slots = n_of[l];
        for (int e = 0, slot = 0; e < E && !st; e++) {
            if (placement[(int64_t)l * E + e] != index) continue;
            const mc_expert *x = &model->layers[l].experts[e];
            const mc_tensor *w[3] = {&x->w1, &x->w3, &x->w2};
            for (int i = 0; i < 3 && !st; i++) st = upload(o, *bufs[i], slot, t[i], b[i], w[i], tmp32, tmp16);
            o->slot[(int64_t)l * E + e] = slot++;
        }
        o->weight_bytes += (uint64_t)n_of[l] * (2 * cl->b13 + cl->b2);
    }
    free(tmp32);
    free(tmp16);
    return st;
}

moecl_status mc_backend_opencl_open(const moecl_model *model, const mc_opencl_params *p, mc_backend **out) {
    *out = NULL;
    const mc_hparams *hp = &model->hp;
    const int E = hp->n_expert, L = hp->n_layer;
    moecl_dtype dt = p->dtype;
    int l0 = 0; /* the first layer with experts */
    while (l0 < L - 1 && !model->layers[l0].experts) l0++;
    const mc_tensor *w0 = &model->layers[l0].experts[0].w1;
    const bool match = dt == MOECL_DTYPE_COUNT || dt == w0->type;
    if (dt == MOECL_DTYPE_COUNT) /* match the model; float weights other than F16 go to the device as F32 */
        dt = w0->type == MOECL_DTYPE_F16 ? MOECL_DTYPE_F16 : MOECL_DTYPE_F32;
    if (is_quant(dt) && dt == w0->type) dt = MOECL_DTYPE_F32; /* the float dtype of any float matrices */
    if (dt != MOECL_DTYPE_F32 && dt != MOECL_DTYPE_F16)
        return mc_error(MOECL_ERR_INVALID_ARG,
                        "opencl: device dtype %s not supported (f32, f16, or the model's own quantized type)",
                        moecl_dtype_name(dt));
    mc_backend *be = calloc(1, sizeof *be);
    ocl_backend *o = calloc(1, sizeof *o);
    if (be) {
        be->iface = &ocl_iface;
        be->model = model;
        be->impl = o;
    }
    if (!be || !o) {
        free(be);
        free(o);
        return mc_error(MOECL_ERR_NOMEM, "opencl: out of memory");
    }
    o->fdtype = dt;
    o->eps = hp->rms_norm_eps;
    o->dl_D = hp->n_embd;
    o->blast_rows = INT64_MAX;
    o->slot = malloc((size_t)L * (size_t)E * sizeof(int32_t));
    o->layers = calloc((size_t)L, sizeof *o->layers);
    o->groups_host = calloc((size_t)E * 4, sizeof(cl_int));
    moecl_status st = (o->slot && o->layers && o->groups_host) ? mc_backend_cpu_new(model, p->pool, &o->cpu)
                                                               : mc_error(MOECL_ERR_NOMEM, "opencl: out of memory");
    if (!st) st = open_device(o, p);
    if (!st) {
        for (int64_t i = 0; i < (int64_t)L * E; i++) o->slot[i] = -1;
        layer_types(model, o, match);
        o->budget = budget_of(o, p);
        st = max_per_layer(model, o, &o->max_per_layer);
    }
    if (st) {
        ocl_free(be);
        return st;
    }
    mc_cl_probe(o->ctx, o->queue, &o->dev, &o->read_bps, &o->rtt_s);
    *out = be;
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* CLBlast where it wins                                                    */
/* ------------------------------------------------------------------------ */

/* Seconds for one expert of layer l, slot 0, on `rows` rows, our kernels
 * (blast false) or CLBlast's: the best of 3 after a warm-up (CLBlast
 * compiles its kernels on first use); < 0 on a failure. */
static double time_expert(mc_backend *be, int l, int e, int64_t rows, bool blast, float *X, float *Y) {
    ocl_backend *o = be->impl;
    const int64_t keep = o->blast_rows;
    o->blast_rows = blast ? 0 : INT64_MAX;
    const int64_t off[2] = {0, rows};
    const mc_moe_work w = {.layer = l, .n_used = 1, .expert_ids = &e, .offsets = off, .X = X, .Y = Y};
    double best = -1;
    for (int it = 0; it < 4; it++) {
        const int64_t t0 = mc_now_ns();
        if (enqueue(be, &w) != MOECL_OK || drain(o) != CL_SUCCESS) {
            best = -1;
            break;
        }
        const double dt = (double)(mc_now_ns() - t0) * 1e-9;
        if (it > 0 && (best < 0 || dt < best)) best = dt;
    }
    o->blast_rows = keep;
    return best;
}

/* From how many rows per expert CLBlast's SGEMM beats our kernels on this
 * device, for the F32 layers: measured once per device and expert shape
 * and cached beside the programs. $MOECL_CLBLAST: off never; on from
 * VEC_MAX_ROWS + 1 rows (few rows stay ours; the tests); measure measures
 * on any device; unset (auto) measures on GPUs only: on CPU devices (PoCL)
 * our kernels won at every size measured (bench_moe). */
static void choose_blast(mc_backend *be) {
    ocl_backend *o = be->impl;
    const mc_hparams *hp = &be->model->hp;
    o->blast_rows = INT64_MAX;
    const char *env = getenv("MOECL_CLBLAST");
    const bool on = env && !strcmp(env, "on"), measure = env && !strcmp(env, "measure");
    if ((env && !strcmp(env, "off")) || (!on && !measure && !o->dev.is_gpu)) return;
    int l = 0, e = -1; /* an F32 layer with an expert here */
    for (; l < hp->n_layer && e < 0; l++) {
        if (!o->layers[l].n_slots || o->layers[l].t13 != MOECL_DTYPE_F32 || o->layers[l].t2 != MOECL_DTYPE_F32)
            continue;
        for (int x = 0; x < hp->n_expert && e < 0; x++)
            if (o->slot[(int64_t)l * hp->n_expert + x] >= 0) e = x;
    }
    if (e < 0 || !mc_clblast_available()) return;
    l--;
    if (on) {
        o->blast_rows = VEC_MAX_ROWS + 1;
        mc_log(MOECL_LOG_INFO, "opencl: CLBlast's SGEMM on %s from %d rows per expert (MOECL_CLBLAST=on)",
               o->dev.name, VEC_MAX_ROWS + 1);
        return;
    }
    char key[64];
    snprintf(key, sizeof key, "clblast-rows-%d-%d", hp->n_embd, hp->n_ff);
    int64_t cached[2];
    if (mc_cl_cache_blob_load(&o->dev, key, cached, sizeof cached) && cached[0] == 1 && cached[1] > VEC_MAX_ROWS) {
        o->blast_rows = cached[1];
        return;
    }
    static const int64_t sizes[] = {16, 32, 64, 128, 256, 512};
    const int n_sizes = (int)(sizeof sizes / sizeof sizes[0]);
    float *X = calloc((size_t)512 * (size_t)hp->n_embd, sizeof(float));
    float *Y = malloc((size_t)512 * (size_t)hp->n_embd * sizeof(float));
    int64_t from = INT64_MAX;
    char line[256] = "";
    size_t used = 0;
    o->blast_rows = 0; /* reserve_rows allocates the up product's buffer from now on */
    if (reserve_rows(be, 512) != MOECL_OK) {
        free(X);
        X = NULL;
    }
    for (int i = n_sizes - 1; X && Y && i >= 0; i--) { /* from the top: the crossover is the last size it wins */
        const double ours = time_expert(be, l, e, sizes[i], false, X, Y);
        const double blast = time_expert(be, l, e, sizes[i], true, X, Y);
        if (used < sizeof line)
            used += (size_t)snprintf(line + used, sizeof line - used, " %lld rows %.2f/%.2f", (long long)sizes[i],
                                     ours * 1e3, blast * 1e3);
        if (ours < 0 || blast < 0 || blast >= ours) break;
        from = sizes[i];
    }
    mc_clear_error();
    free(X);
    free(Y);
    o->blast_rows = from;
    if (from == INT64_MAX && o->h3) { /* not used: give its buffer back */
        clReleaseMemObject(o->h3);
        o->h3 = NULL;
    }
    char what[64] = "never wins";
    if (from != INT64_MAX) snprintf(what, sizeof what, "wins from %lld rows per expert", (long long)from);
    mc_log(MOECL_LOG_INFO, "opencl: CLBlast's SGEMM on %s %s (ms, ours/CLBlast:%s)", o->dev.name, what, line);
    cached[0] = 1;
    cached[1] = from;
    mc_cl_cache_blob_store(&o->dev, key, cached, sizeof cached);
}

void mc_backend_opencl_plan_info(const mc_backend *be, mc_opencl_plan_info *info) {
    const ocl_backend *o = be->impl;
    info->budget = o->budget;
    info->max_per_layer = o->max_per_layer;
    info->read_bps = o->read_bps;
    info->rtt_s = o->rtt_s;
    info->host_memory = o->cpu_device;
}

uint64_t mc_backend_opencl_expert_bytes(const mc_backend *be, int layer) {
    const ocl_backend *o = be->impl;
    if (!be->model->layers[layer].experts) return 0;
    return 2 * (uint64_t)o->layers[layer].b13 + o->layers[layer].b2;
}

moecl_status mc_backend_opencl_load(mc_backend *be, const uint8_t *placement, uint8_t index, int64_t *n_placed) {
    ocl_backend *o = be->impl;
    const moecl_model *model = be->model;
    const mc_hparams *hp = &model->hp;
    const int E = hp->n_expert, L = hp->n_layer;
    *n_placed = 0;
    int *n_of = calloc((size_t)L, sizeof(int));
    if (!n_of) return mc_error(MOECL_ERR_NOMEM, "opencl: out of memory");
    moecl_status st = MOECL_OK;
    for (int l = 0; l < L; l++) {
        for (int e = 0; model->layers[l].experts && e < E; e++) n_of[l] += placement[(int64_t)l * E + e] == index;
        *n_placed += n_of[l];
    }
    for (int l = 0; l < L && !st; l++) /* the programs the placed experts need */
        if (n_of[l] && !(st = build_for(o, o->layers[l].t13))) st = build_for(o, o->layers[l].t2);
    if (!st) {
        cl_int err;
        o->groups = alloc_buf(o, CL_MEM_READ_ONLY, (size_t)E * 4 * sizeof(cl_int), &err);
        if (err)
            st = mc_error(MOECL_ERR_BACKEND, "opencl: cannot allocate a buffer on %s: %s", o->dev.name,
                          mc_cl_strerror(err));
    }
    if (!st) st = upload_all(model, o, placement, index, n_of);
    if (!st) choose_blast(be);
    if (!st)
        mc_log(MOECL_LOG_INFO,
               "opencl: %s (%s, %s): %lld of %lld experts on the device as %s/%s, %.1f MiB; layer 0: %d of %d",
               o->dev.name, o->dev.platform_name, o->dev.version, (long long)*n_placed, (long long)L * E,
               moecl_dtype_name(o->layers[0].t13), moecl_dtype_name(o->layers[0].t2),
               (double)o->weight_bytes / 1048576.0, n_of[0], E);
    free(n_of);
    if (st) *n_placed = 0;
    return st;
}

moecl_status mc_backend_opencl_new(const moecl_model *model, const mc_opencl_params *p, uint8_t *placement,
                                   uint8_t index, int64_t *n_placed, mc_backend **out) {
    *out = NULL;
    *n_placed = 0;
    mc_backend *be = NULL;
    moecl_status st = mc_backend_opencl_open(model, p, &be);
    if (st) return st;
    const mc_hparams *hp = &model->hp;
    const int L = hp->n_layer, E = hp->n_expert;
    uint64_t *dev_b = calloc((size_t)L, sizeof *dev_b), *host_b = calloc((size_t)L, sizeof *host_b);
    uint8_t *where = calloc((size_t)L * (size_t)E, 1);
    if (!dev_b || !host_b || !where) st = mc_error(MOECL_ERR_NOMEM, "opencl: out of memory");
    if (!st) {
        mc_opencl_plan_info pi;
        mc_backend_opencl_plan_info(be, &pi);
        mc_place_input in = {.n_layer = L, .n_expert = E, .n_expert_used = hp->n_expert_used,
                             .expert_dev_bytes = dev_b, .expert_host_bytes = host_b, .n_dev = 1,
                             .experts_per_layer = p->experts_per_layer};
        in.dev[0] = (mc_place_dev){.budget = pi.budget, .max_per_layer = pi.max_per_layer};
        for (int l = 0; l < L; l++) host_b[l] = dev_b[l] = mc_backend_opencl_expert_bytes(be, l);
        mc_place_plan plan = {.where = where};
        mc_place_plan_make(&in, &plan);
        st = mc_backend_opencl_load(be, where, 1, n_placed);
        for (int64_t i = 0; !st && i < (int64_t)L * E; i++)
            if (where[i]) placement[i] = index;
    }
    free(dev_b);
    free(host_b);
    free(where);
    if (st) {
        mc_backend_free(be);
        return st;
    }
    *out = be;
    return MOECL_OK;
}

void mc_backend_opencl_describe(const mc_backend *be, char *name, size_t len, uint64_t *bytes, moecl_dtype *dtype) {
    const ocl_backend *o = be->impl;
    snprintf(name, len, "%s", o->dev.name);
    *bytes = o->weight_bytes;
    *dtype = o->layers[0].t13;
}

/* ------------------------------------------------------------------------ */
/* The dense layers on the device                                           */
/* ------------------------------------------------------------------------ */

/* cl/dense.cl's kernels; the matrix products use the float program's down
 * kernels with one group (slot 0, all rows). */
enum { KD_RMSNORM, KD_ADD_BIAS, KD_ADD, KD_ADD_GATED, KD_SWIGLU, KD_COPY_ROWS, KD_ROPE, KD_KV_STORE, KD_ATTENTION,
       KD_ROUTER, KD_SCATTER, KD_N };
static const char *const dense_kernels[KD_N] = {
    "dense_rmsnorm", "dense_add_bias", "dense_add", "dense_add_gated", "dense_swiglu",
    "dense_copy_rows", "dense_rope", "dense_kv_store", "dense_attention", "dense_router", "dense_scatter",
};

/* Sizes of one layer's dense tensors, in elements (weights) or floats. */
static int64_t dense_ff(const mc_layer *L) {
    return L->experts ? (L->shexp.w1.data ? L->shexp.w1.rows : 0) : L->ffn.w1.rows;
}

static uint64_t dense_weight_bytes(const ocl_backend *o, const mc_tensor *w) {
    return w->data ? device_bytes(o->fdtype, w) : 0;
}

uint64_t mc_backend_opencl_dense_bytes(const mc_backend *be, int32_t n_cells, moecl_dtype kv_type, int32_t n_batch,
                                       int32_t n_out) {
    const ocl_backend *o = be->impl;
    const moecl_model *m = be->model;
    const mc_hparams *hp = &m->hp;
    const uint64_t D = (uint64_t)hp->n_embd, qd = (uint64_t)hp->n_head * hp->head_dim;
    const uint64_t kvd = (uint64_t)hp->n_head_kv * hp->head_dim;
    uint64_t b = dense_weight_bytes(o, &m->lm_head) + D * 4, F = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const mc_layer *L = &m->layers[il];
        const mc_expert *f = L->experts ? &L->shexp : &L->ffn;
        b += dense_weight_bytes(o, &L->wq) + dense_weight_bytes(o, &L->wk) + dense_weight_bytes(o, &L->wv) +
             dense_weight_bytes(o, &L->wo);
        b += dense_weight_bytes(o, &f->w1) + dense_weight_bytes(o, &f->w3) + dense_weight_bytes(o, &f->w2);
        b += (2 * D + 2 * qd + 2 * kvd + D) * 4; /* norms, biases, gate: at most */
        if (L->router) b += (uint64_t)hp->n_expert * D * 4;
        b += 2 * (uint64_t)n_cells * kvd * (kv_type == MOECL_DTYPE_F16 ? 2 : 4);
        if ((uint64_t)dense_ff(L) > F) F = (uint64_t)dense_ff(L);
    }
    b += (uint64_t)n_batch * (3 * D + 2 * qd + 2 * kvd + 2 * F + (uint64_t)hp->n_expert + 3 * (uint64_t)hp->n_expert_used) * 4 +
         (uint64_t)n_out * (D + (uint64_t)hp->n_vocab) * 4;
    return b;
}

/* A float vector of n into a new read-only buffer (NULL src: none). */
static moecl_status dense_vec(ocl_backend *o, const float *src, size_t n, cl_mem *out) {
    *out = NULL;
    if (!src) return MOECL_OK;
    cl_int err;
    *out = alloc_buf(o, CL_MEM_READ_ONLY, n * sizeof(float), &err);
    CL_CHECK(err, "allocating a dense-layer vector");
    CL_CHECK(clEnqueueWriteBuffer(o->queue, *out, CL_TRUE, 0, n * sizeof(float), src, 0, NULL, NULL),
             "uploading a dense-layer vector");
    o->dense_bytes += n * sizeof(float);
    return MOECL_OK;
}

/* A weight matrix into a new buffer in the device's float dtype, converted
 * (dequantized) a slice of rows at a time. */
static moecl_status dense_mat(ocl_backend *o, const mc_tensor *w, cl_mem *out, float *tmp32, uint16_t *tmp16,
                              int64_t tmp_n) {
    *out = NULL;
    if (!w->data) return MOECL_OK;
    const size_t bytes = device_bytes(o->fdtype, w), esz = o->fdtype == MOECL_DTYPE_F16 ? 2 : 4;
    size_t src_row = 0;
    mc_dtype_row_bytes(w->type, w->cols, &src_row); /* checked by the loader */
    cl_int err;
    char hb[32];
    *out = alloc_buf(o, CL_MEM_READ_ONLY, bytes, &err);
    if (err)
        return mc_error(MOECL_ERR_BACKEND, "opencl: cannot allocate %s for a dense weight on %s: %s",
                        human(bytes, hb, sizeof hb), o->dev.name, mc_cl_strerror(err));
    if (w->cols > tmp_n)
        return mc_error(MOECL_ERR_BACKEND, "opencl: a dense weight of %lld columns is wider than the upload's %lld",
                        (long long)w->cols, (long long)tmp_n);
    const int64_t rows_per = tmp_n / w->cols;
    for (int64_t r0 = 0; r0 < w->rows; r0 += rows_per) {
        const int64_t nr = r0 + rows_per <= w->rows ? rows_per : w->rows - r0, n = nr * w->cols;
        const char *src = (const char *)w->data + (size_t)r0 * src_row;
        for (int64_t r = 0; r < nr; r++) { /* row by row: quantized blocks never straddle rows */
            if (is_quant(w->type)) mc_dequantize_row(w->type, src + (size_t)r * src_row, tmp32 + r * w->cols, w->cols);
            else mc_cpu_to_f32(w->type, src + (size_t)r * src_row, tmp32 + r * w->cols, w->cols);
        }
        const void *data = tmp32;
        if (o->fdtype == MOECL_DTYPE_F16) {
            for (int64_t i = 0; i < n; i++) tmp16[i] = mc_f32_to_f16(tmp32[i]);
            data = tmp16;
        }
        CL_CHECK(clEnqueueWriteBuffer(o->queue, *out, CL_TRUE, (size_t)r0 * (size_t)w->cols * esz, (size_t)n * esz,
                                      data, 0, NULL, NULL),
                 "uploading a dense weight");
    }
    o->dense_bytes += bytes;
    return MOECL_OK;
}

static void dense_release(ocl_backend *o, int n_layer) {
    for (int l = 0; o->dl && l < n_layer; l++) {
        cl_mem *m = (cl_mem *)&o->dl[l];
        for (size_t i = 0; i < sizeof o->dl[l] / sizeof(cl_mem); i++)
            if (m[i]) clReleaseMemObject(m[i]);
    }
    free(o->dl);
    o->dl = NULL;
    cl_mem *m[] = {&o->d_out_norm, &o->d_lm_head, &o->d_x, &o->d_xn, &o->d_q, &o->d_k, &o->d_v, &o->d_att,
                   &o->d_proj, &o->d_h1, &o->d_h3, &o->d_xo, &o->d_logits, &o->d_pos, &o->d_cell, &o->d_tab_off,
                   &o->d_tab, &o->d_rows, &o->d_groups_t, &o->d_groups_o, &o->d_logits_r, &o->d_row_token,
                   &o->d_pair_row, &o->d_weight};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        if (*m[i]) clReleaseMemObject(*m[i]);
        *m[i] = NULL;
    }
    for (int i = 0; i < KD_N; i++)
        if (o->kd[i]) clReleaseKernel(o->kd[i]);
    memset(o->kd, 0, sizeof o->kd);
    if (o->dprog) clReleaseProgram(o->dprog);
    o->dprog = NULL;
    o->dense = false;
}

moecl_status mc_backend_opencl_dense_load(mc_backend *be, int32_t n_cells, moecl_dtype kv_type, int32_t n_batch,
                                          int32_t n_out) {
    ocl_backend *o = be->impl;
    const moecl_model *m = be->model;
    const mc_hparams *hp = &m->hp;
    const size_t D = (size_t)hp->n_embd, qd = (size_t)hp->n_head * (size_t)hp->head_dim;
    const size_t kvd = (size_t)hp->n_head_kv * (size_t)hp->head_dim;
    moecl_status st = build_for(o, o->fdtype);
    char opts[128];
    snprintf(opts, sizeof opts, "-DHD=%d -DBLOCK=%d%s", hp->head_dim, 16, kv_type == MOECL_DTYPE_F16 ? " -DKV_F16" : "");
    if (!st) st = mc_cl_build(o->ctx, &o->dev, "dense.cl", opts, dense_kernels, KD_N, &o->dprog);
    for (int i = 0; i < KD_N && !st; i++) {
        cl_int err;
        o->kd[i] = clCreateKernel(o->dprog, dense_kernels[i], &err);
        if (err) st = mc_error(MOECL_ERR_BACKEND, "opencl: %s on %s: %s", dense_kernels[i], o->dev.name, mc_cl_strerror(err));
    }
    o->dl = calloc((size_t)hp->n_layer, sizeof *o->dl);
    int64_t tmp_n = (int64_t)1 << 20; /* floats converted at a time: at least one row of every matrix */
    for (int il = 0; il < hp->n_layer; il++) {
        const mc_layer *L = &m->layers[il];
        const int64_t c[3] = {L->wo.cols, L->ffn.w2.cols, L->shexp.w2.cols};
        for (int i = 0; i < 3; i++)
            if (c[i] > tmp_n) tmp_n = c[i];
    }
    if ((int64_t)D > tmp_n) tmp_n = (int64_t)D;
    float *tmp32 = malloc((size_t)tmp_n * sizeof(float));
    uint16_t *tmp16 = malloc((size_t)tmp_n * sizeof(uint16_t));
    if (!st && (!o->dl || !tmp32 || !tmp16)) st = mc_error(MOECL_ERR_NOMEM, "opencl: out of memory");
    const size_t kv_esz = kv_type == MOECL_DTYPE_F16 ? 2 : 4;
    o->d_kv_esz = kv_esz;
    size_t F = 0;
    for (int il = 0; il < hp->n_layer && !st; il++) {
        const mc_layer *L = &m->layers[il];
        dense_layer *d = &o->dl[il];
        const mc_expert *f = L->experts ? &L->shexp : &L->ffn;
        const size_t qn = L->q_norm ? (hp->qk_norm == MC_QK_NORM_HEAD ? (size_t)hp->head_dim : qd) : 0;
        const size_t kn = L->k_norm ? (hp->qk_norm == MC_QK_NORM_HEAD ? (size_t)hp->head_dim : kvd) : 0;
        const mc_tensor *mats[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &f->w1, &f->w3, &f->w2};
        cl_mem *mout[7] = {&d->wq, &d->wk, &d->wv, &d->wo, &d->w1, &d->w3, &d->w2};
        for (int i = 0; i < 7 && !st; i++) st = dense_mat(o, mats[i], mout[i], tmp32, tmp16, tmp_n);
        const float *vecs[10] = {L->attn_norm, L->ffn_norm, L->bq, L->bk, L->bv, L->bo, L->q_norm, L->k_norm,
                                 L->shexp_gate, L->router};
        const size_t vn[10] = {D, D, qd, kvd, kvd, D, qn, kn, D, (size_t)hp->n_expert * D};
        cl_mem *vout[10] = {&d->attn_norm, &d->ffn_norm, &d->bq, &d->bk, &d->bv, &d->bo, &d->qn, &d->kn, &d->gate,
                            &d->router};
        for (int i = 0; i < 10 && !st; i++) st = dense_vec(o, vecs[i], vn[i], vout[i]);
        if (f->w1.data && (size_t)f->w1.rows > F) F = (size_t)f->w1.rows;
        cl_int err = CL_SUCCESS;
        const size_t kvb = (size_t)n_cells * kvd * kv_esz;
        if (!st) d->kc = alloc_buf(o, CL_MEM_READ_WRITE, kvb, &err);
        if (!st && !err) d->vc = alloc_buf(o, CL_MEM_READ_WRITE, kvb, &err);
        if (!st && err) {
            char hb[32];
            st = mc_error(MOECL_ERR_BACKEND, "opencl: cannot allocate the KV cache of layer %d (%s) on %s: %s", il,
                          human(2 * kvb, hb, sizeof hb), o->dev.name, mc_cl_strerror(err));
        }
        o->dense_bytes += 2 * kvb;
    }
    if (!st) st = dense_vec(o, m->out_norm, D, &o->d_out_norm);
    if (!st) st = dense_mat(o, &m->lm_head, &o->d_lm_head, tmp32, tmp16, tmp_n);
    free(tmp32);
    free(tmp16);
    const size_t B = (size_t)n_batch;
    if (F == 0) F = 1;
    struct { cl_mem *m; size_t bytes; } act[] = {
        {&o->d_x, B * D * 4}, {&o->d_xn, B * D * 4}, {&o->d_q, B * qd * 4}, {&o->d_k, B * kvd * 4},
        {&o->d_v, B * kvd * 4}, {&o->d_att, B * qd * 4}, {&o->d_proj, B * D * 4}, {&o->d_h1, B * F * 4},
        {&o->d_h3, B * F * 4}, {&o->d_xo, (size_t)n_out * D * 4}, {&o->d_logits, (size_t)n_out * (size_t)hp->n_vocab * 4},
        {&o->d_pos, B * 4}, {&o->d_cell, B * 4}, {&o->d_tab_off, B * 4}, {&o->d_rows, (size_t)n_out * 4},
        {&o->d_groups_t, 16}, {&o->d_groups_o, 16}, {&o->d_logits_r, B * (size_t)hp->n_expert * 4},
        {&o->d_row_token, B * (size_t)hp->n_expert_used * 4}, {&o->d_pair_row, B * (size_t)hp->n_expert_used * 4},
        {&o->d_weight, B * (size_t)hp->n_expert_used * 4},
    };
    for (size_t i = 0; i < sizeof act / sizeof act[0] && !st; i++) {
        cl_int err;
        *act[i].m = alloc_buf(o, CL_MEM_READ_WRITE, act[i].bytes, &err);
        if (err) {
            char hb[32];
            st = mc_error(MOECL_ERR_BACKEND, "opencl: cannot allocate %s of dense-layer activations on %s: %s",
                          human(act[i].bytes, hb, sizeof hb), o->dev.name, mc_cl_strerror(err));
        }
        o->dense_bytes += act[i].bytes;
    }
    if (st) {
        dense_release(o, hp->n_layer);
        o->dense_bytes = 0;
        return st;
    }
    o->dense = true;
    o->d_batch = n_batch;
    o->d_out_cap = n_out;
    o->d_tab_cap = 0;
    char hb[32];
    mc_log(MOECL_LOG_INFO, "opencl: the dense layers on %s as %s, KV cache %s of %d cells: %s", o->dev.name,
           moecl_dtype_name(o->fdtype), moecl_dtype_name(kv_type), n_cells, human(o->dense_bytes, hb, sizeof hb));
    return MOECL_OK;
}

/* The device failed during a dense call (the error is the thread's last):
 * wait for nothing more and never use it again. */
static moecl_status dense_fail(ocl_backend *o, moecl_status st) {
    o->failed = true;
    o->pending = false;
    drain(o);
    return st;
}

/* Y[T, n_out] = X[T, n_in] · Wᵀ with the float program's down kernel. */
static moecl_status dense_matmul(ocl_backend *o, cl_mem W, cl_mem X, cl_mem Y, cl_mem groups, int64_t T, int n_out,
                                 int n_in) {
    cl_kernel k = stage_kernel(o, true, o->fdtype, T);
    cl_int D = n_out, F = n_in, err = 0;
    err |= clSetKernelArg(k, 0, sizeof(cl_mem), &X);
    err |= clSetKernelArg(k, 1, sizeof(cl_mem), &W);
    err |= clSetKernelArg(k, 2, sizeof(cl_mem), &Y);
    err |= clSetKernelArg(k, 3, sizeof(cl_mem), &groups);
    err |= clSetKernelArg(k, 4, sizeof(cl_int), &D);
    err |= clSetKernelArg(k, 5, sizeof(cl_int), &F);
    CL_CHECK(err, "setting a dense matrix product's arguments");
    return launch(o, true, o->fdtype, (size_t)n_out, T, 1);
}

/* Set args[0..n) of dense kernel i (cl_mem, cl_int or cl_float by size) and launch it over global g[0..dims). */
typedef struct karg { size_t size; const void *p; } karg;
static moecl_status dense_run(ocl_backend *o, int i, const karg *a, int n, int dims, const size_t *g) {
    cl_int err = 0;
    for (int j = 0; j < n; j++) err |= clSetKernelArg(o->kd[i], (cl_uint)j, a[j].size, a[j].p);
    CL_CHECK(err, dense_kernels[i]);
    for (int d = 0; d < dims; d++)
        if (!g[d]) return MOECL_OK;
    CL_CHECK(clEnqueueNDRangeKernel(o->queue, o->kd[i], (cl_uint)dims, NULL, g, NULL, 0, NULL, NULL), dense_kernels[i]);
    return MOECL_OK;
}
#define M(x) {sizeof(cl_mem), &(x)}
#define I(x) {sizeof(cl_int), &(x)}
#define FL(x) {sizeof(cl_float), &(x)}

static moecl_status dense_rms(ocl_backend *o, cl_mem x, cl_mem w, cl_mem out, size_t rows, cl_int n, cl_int sx,
                              cl_int so) {
    cl_float eps = o->eps;
    const karg a[] = {M(x), M(w), M(out), I(n), I(sx), I(so), FL(eps)};
    return dense_run(o, KD_RMSNORM, a, 7, 1, &rows);
}

static moecl_status dense_bias(ocl_backend *o, cl_mem y, cl_mem b, int64_t T, cl_int n) {
    if (!b) return MOECL_OK;
    const karg a[] = {M(y), M(b), I(n)};
    const size_t g[2] = {(size_t)n, (size_t)T};
    return dense_run(o, KD_ADD_BIAS, a, 3, 2, g);
}

static moecl_status dense_addv(ocl_backend *o, cl_mem x, cl_mem y, size_t n) {
    const karg a[] = {M(x), M(y)};
    return dense_run(o, KD_ADD, a, 2, 1, &n);
}

static moecl_status ocl_dense_begin(mc_backend *be, const mc_dense_batch *b) {
    ocl_backend *o = be->impl;
    const mc_hparams *hp = &be->model->hp;
    if (!o->dense || o->failed)
        return mc_error(MOECL_ERR_BACKEND, "opencl: %s holds no dense layers%s", o->dev.name,
                        o->failed ? " (it failed earlier)" : "");
    if (b->T > o->d_batch)
        return mc_error(MOECL_ERR_BACKEND, "opencl: a batch of %lld tokens; the dense layers on %s take %d",
                        (long long)b->T, o->dev.name, o->d_batch);
    cl_int err;
    if (b->n_tab > o->d_tab_cap) {
        if (o->d_tab) clReleaseMemObject(o->d_tab);
        o->d_tab = NULL;
        o->d_tab_cap = 0;
        int32_t cap = 64;
        while (cap < b->n_tab) cap *= 2;
        o->d_tab = alloc_buf(o, CL_MEM_READ_ONLY, (size_t)cap * 4, &err);
        if (err) return dense_fail(o, mc_error(MOECL_ERR_BACKEND, "opencl: cannot allocate block tables on %s: %s",
                                               o->dev.name, mc_cl_strerror(err)));
        o->d_tab_cap = cap;
    }
    o->d_T = b->T;
    const size_t T = (size_t)b->T;
    const cl_int grp[4] = {0, 0, (cl_int)b->T, 0};
    struct { cl_mem m; size_t bytes; const void *p; } w[] = {
        {o->d_x, T * (size_t)hp->n_embd * 4, b->x}, {o->d_pos, T * 4, b->pos}, {o->d_cell, T * 4, b->cell},
        {o->d_tab_off, T * 4, b->tab_off}, {o->d_tab, (size_t)b->n_tab * 4, b->tab}, {o->d_groups_t, 16, grp},
    };
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
        if (!w[i].bytes) continue;
        err = clEnqueueWriteBuffer(o->queue, w[i].m, CL_TRUE, 0, w[i].bytes, w[i].p, 0, NULL, NULL);
        if (err) return dense_fail(o, mc_error(MOECL_ERR_BACKEND, "opencl: writing a batch to %s: %s", o->dev.name,
                                               mc_cl_strerror(err)));
    }
    /* The host's copies on write, repeated in the device's cells (in queue
     * order, so before this batch's kernels read or write them). */
    const size_t blk = (size_t)16 * (size_t)hp->n_head_kv * (size_t)hp->head_dim * o->d_kv_esz;
    for (int32_t c = 0; c < b->n_copy; c++)
        for (int il = 0; il < hp->n_layer; il++)
            for (int kv = 0; kv < 2; kv++) {
                cl_mem m = kv ? o->dl[il].vc : o->dl[il].kc;
                err = clEnqueueCopyBuffer(o->queue, m, m, (size_t)b->copy[c][0] * blk, (size_t)b->copy[c][1] * blk, blk,
                                          0, NULL, NULL);
                if (err) return dense_fail(o, mc_error(MOECL_ERR_BACKEND, "opencl: copying KV block %d to %d on %s: %s",
                                                       b->copy[c][0], b->copy[c][1], o->dev.name, mc_cl_strerror(err)));
            }
    return MOECL_OK;
}

static moecl_status dense_attn_enqueue(mc_backend *be, int il, float *logits, float *xn, float *k, float *v) {
    ocl_backend *o = be->impl;
    const mc_hparams *hp = &be->model->hp;
    const dense_layer *d = &o->dl[il];
    const int64_t T = o->d_T;
    const cl_int D = hp->n_embd, hd = hp->head_dim, nh = hp->n_head, nkv = hp->n_head_kv;
    const cl_int qd = nh * hd, kvd = nkv * hd;
    moecl_status st;
    if ((st = dense_rms(o, o->d_x, d->attn_norm, o->d_xn, (size_t)T, D, D, D))) return st;
    if ((st = dense_matmul(o, d->wq, o->d_xn, o->d_q, o->d_groups_t, T, qd, D))) return st;
    if ((st = dense_matmul(o, d->wk, o->d_xn, o->d_k, o->d_groups_t, T, kvd, D))) return st;
    if ((st = dense_matmul(o, d->wv, o->d_xn, o->d_v, o->d_groups_t, T, kvd, D))) return st;
    if ((st = dense_bias(o, o->d_q, d->bq, T, qd)) || (st = dense_bias(o, o->d_k, d->bk, T, kvd)) ||
        (st = dense_bias(o, o->d_v, d->bv, T, kvd)))
        return st;
    const bool per_head = hp->qk_norm == MC_QK_NORM_HEAD;
    if (d->qn && (st = per_head ? dense_rms(o, o->d_q, d->qn, o->d_q, (size_t)T * (size_t)nh, hd, hd, hd)
                                : dense_rms(o, o->d_q, d->qn, o->d_q, (size_t)T, qd, qd, qd)))
        return st;
    if (d->kn && (st = per_head ? dense_rms(o, o->d_k, d->kn, o->d_k, (size_t)T * (size_t)nkv, hd, hd, hd)
                                : dense_rms(o, o->d_k, d->kn, o->d_k, (size_t)T, kvd, kvd, kvd)))
        return st;
    cl_float theta = hp->rope_theta;
    cl_int inter = hp->rope_interleaved ? 1 : 0, window = hp->sliding_window;
    {
        const karg a[] = {M(o->d_q), M(o->d_pos), I(nh), FL(theta), I(inter)};
        const size_t g[3] = {(size_t)hd / 2, (size_t)nh, (size_t)T};
        if ((st = dense_run(o, KD_ROPE, a, 5, 3, g))) return st;
        const karg b[] = {M(o->d_k), M(o->d_pos), I(nkv), FL(theta), I(inter)};
        const size_t gk[3] = {(size_t)hd / 2, (size_t)nkv, (size_t)T};
        if ((st = dense_run(o, KD_ROPE, b, 5, 3, gk))) return st;
    }
    {
        const karg a[] = {M(o->d_k), M(o->d_v), M(d->kc), M(d->vc), M(o->d_cell), I(kvd)};
        const size_t g[2] = {(size_t)kvd, (size_t)T};
        if ((st = dense_run(o, KD_KV_STORE, a, 6, 2, g))) return st;
    }
    {
        const karg a[] = {M(o->d_q), M(d->kc), M(d->vc), M(o->d_att), M(o->d_pos), M(o->d_tab_off), M(o->d_tab),
                          I(nh), I(nkv), I(window)};
        const size_t g[2] = {(size_t)nh, (size_t)T};
        if ((st = dense_run(o, KD_ATTENTION, a, 10, 2, g))) return st;
    }
    if ((st = dense_matmul(o, d->wo, o->d_att, o->d_proj, o->d_groups_t, T, D, qd))) return st;
    if ((st = dense_bias(o, o->d_proj, d->bo, T, D))) return st;
    if ((st = dense_addv(o, o->d_x, o->d_proj, (size_t)T * (size_t)D))) return st;
    if ((st = dense_rms(o, o->d_x, d->ffn_norm, o->d_xn, (size_t)T, D, D, D))) return st;
    const cl_int E = hp->n_expert;
    if (logits && d->router) {
        const karg a[] = {M(o->d_xn), M(d->router), M(o->d_logits_r), I(D)};
        const size_t g[2] = {(size_t)E, (size_t)T};
        if ((st = dense_run(o, KD_ROUTER, a, 4, 2, g))) return st;
    }
    /* what comes up, then one wait */
    struct { cl_mem m; size_t bytes; void *dst; } up[4] = {
        {o->d_k, (size_t)T * (size_t)kvd * 4, k}, {o->d_v, (size_t)T * (size_t)kvd * 4, v},
        {o->d_logits_r, (size_t)T * (size_t)E * 4, logits && d->router ? logits : NULL},
        {o->d_xn, (size_t)T * (size_t)D * 4, xn},
    };
    cl_event ev[4] = {NULL, NULL, NULL, NULL};
    int n_ev = 0;
    cl_int err = CL_SUCCESS;
    for (int i = 0; i < 4 && !err; i++)
        if (up[i].dst) {
            err = clEnqueueReadBuffer(o->queue, up[i].m, CL_FALSE, 0, up[i].bytes, up[i].dst, 0, NULL, &ev[n_ev]);
            if (!err) n_ev++;
        }
    if (!err) err = clFlush(o->queue);
    /* Wait on the reads' own events (rusticl: see drain). */
    cl_int werr = n_ev ? clWaitForEvents((cl_uint)n_ev, ev) : CL_SUCCESS;
    for (int i = 0; i < n_ev; i++) {
        cl_int es = CL_COMPLETE;
        if (clGetEventInfo(ev[i], CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof es, &es, NULL) == CL_SUCCESS && es < 0 &&
            !werr)
            werr = es;
        clReleaseEvent(ev[i]);
    }
    if (!err) err = werr;
    CL_CHECK(err, "reading a layer's K/V rows and router logits");
    return MOECL_OK;
}

static moecl_status ocl_dense_attn(mc_backend *be, int il, float *logits, float *xn, float *k, float *v) {
    ocl_backend *o = be->impl;
    if (o->failed) return mc_error(MOECL_ERR_BACKEND, "opencl: %s failed earlier", o->dev.name);
    o->n_dense++;
    if (o->fail_dense_at > 0 && o->n_dense == o->fail_dense_at)
        return dense_fail(o, mc_error(MOECL_ERR_BACKEND, "opencl: the attention of layer %d on %s: %s (injected)", il,
                                      o->dev.name, mc_cl_strerror(CL_OUT_OF_RESOURCES)));
    moecl_status st = dense_attn_enqueue(be, il, logits, xn, k, v);
    return st ? dense_fail(o, st) : MOECL_OK;
}

/* o->x[r] = xn[row_token[r]] for the rows of the experts here (enqueue). */
static moecl_status dense_gather(ocl_backend *o, int64_t rows) {
    const cl_int D = (cl_int)o->dl_D;
    const karg a[] = {M(o->d_xn), M(o->x), M(o->d_row_token), I(D)};
    const size_t g[2] = {(size_t)D, (size_t)rows};
    return dense_run(o, KD_COPY_ROWS, a, 4, 2, g);
}

static moecl_status dense_experts_enqueue(mc_backend *be, const mc_dense_moe *w) {
    ocl_backend *o = be->impl;
    const mc_hparams *hp = &be->model->hp;
    const int64_t T = o->d_T, rows = w->offsets[w->n_used] - w->offsets[0];
    const cl_int K = hp->n_expert_used, D = hp->n_embd;
    struct { cl_mem m; size_t bytes; const void *p; } up[3] = {
        {o->d_row_token, (size_t)rows * 4, w->row_token}, {o->d_pair_row, (size_t)T * (size_t)K * 4, w->pair_row},
        {o->d_weight, (size_t)T * (size_t)K * 4, w->weight},
    };
    for (int i = 0; i < 3; i++)
        if (up[i].bytes)
            CL_CHECK(clEnqueueWriteBuffer(o->queue, up[i].m, CL_FALSE, 0, up[i].bytes, up[i].p, 0, NULL, NULL),
                     "writing the router's choice");
    const mc_moe_work mw = {.layer = w->layer, .n_used = w->n_used, .expert_ids = w->expert_ids,
                            .offsets = w->offsets, .X = NULL, .Y = NULL};
    moecl_status st = enqueue(be, &mw); /* gathers from xn, leaves y on the device */
    if (st) return st;
    const karg a[] = {M(o->d_x), M(o->y), M(o->d_pair_row), M(o->d_weight), I(K), I(D)};
    const size_t g[2] = {(size_t)D, (size_t)T};
    if ((st = dense_run(o, KD_SCATTER, a, 6, 2, g))) return st;
    CL_CHECK(clFlush(o->queue), "flushing the queue");
    return MOECL_OK;
}

static moecl_status ocl_dense_experts(mc_backend *be, const mc_dense_moe *w) {
    ocl_backend *o = be->impl;
    if (o->failed) return mc_error(MOECL_ERR_BACKEND, "opencl: %s failed earlier", o->dev.name);
    if (w->n_used <= 0) return MOECL_OK;
    o->n_submits++;
    moecl_status st = dense_experts_enqueue(be, w);
    return st ? dense_fail(o, st) : MOECL_OK;
}

/* x += FFN(xn) with one layer's w1, w3, w2 of width ff; gate: the shared expert's. */
static moecl_status dense_ffn_enqueue(ocl_backend *o, const dense_layer *d, int64_t T, cl_int D, cl_int ff) {
    moecl_status st;
    if ((st = dense_matmul(o, d->w1, o->d_xn, o->d_h1, o->d_groups_t, T, ff, D))) return st;
    if ((st = dense_matmul(o, d->w3, o->d_xn, o->d_h3, o->d_groups_t, T, ff, D))) return st;
    {
        const karg a[] = {M(o->d_h1), M(o->d_h3)};
        const size_t g = (size_t)T * (size_t)ff;
        if ((st = dense_run(o, KD_SWIGLU, a, 2, 1, &g))) return st;
    }
    if ((st = dense_matmul(o, d->w2, o->d_h1, o->d_proj, o->d_groups_t, T, D, ff))) return st;
    if (!d->gate) return dense_addv(o, o->d_x, o->d_proj, (size_t)T * (size_t)D);
    const karg a[] = {M(o->d_x), M(o->d_proj), M(o->d_xn), M(d->gate), I(D)};
    const size_t g = (size_t)T;
    return dense_run(o, KD_ADD_GATED, a, 5, 1, &g);
}

static moecl_status ocl_dense_ffn(mc_backend *be, int il, const float *delta) {
    ocl_backend *o = be->impl;
    const moecl_model *m = be->model;
    if (o->failed) return mc_error(MOECL_ERR_BACKEND, "opencl: %s failed earlier", o->dev.name);
    const int64_t T = o->d_T;
    const cl_int D = m->hp.n_embd;
    const mc_layer *L = &m->layers[il];
    const mc_expert *f = L->experts ? &L->shexp : &L->ffn;
    moecl_status st = MOECL_OK;
    if (delta) {
        cl_int err = clEnqueueWriteBuffer(o->queue, o->d_proj, CL_FALSE, 0, (size_t)T * (size_t)D * 4, delta, 0, NULL,
                                          NULL);
        if (err) st = mc_error(MOECL_ERR_BACKEND, "opencl: writing the experts' sum to %s: %s", o->dev.name,
                               mc_cl_strerror(err));
        if (!st) st = dense_addv(o, o->d_x, o->d_proj, (size_t)T * (size_t)D);
    }
    if (!st && f->w1.data) st = dense_ffn_enqueue(o, &o->dl[il], T, D, (cl_int)f->w1.rows);
    if (!st) {
        cl_int err = clFlush(o->queue);
        if (err) st = mc_error(MOECL_ERR_BACKEND, "opencl: flushing %s: %s", o->dev.name, mc_cl_strerror(err));
    }
    return st ? dense_fail(o, st) : MOECL_OK;
}

static moecl_status dense_head_enqueue(mc_backend *be, int32_t n_out, const int32_t *rows, float *logits) {
    ocl_backend *o = be->impl;
    const mc_hparams *hp = &be->model->hp;
    const cl_int D = hp->n_embd, V = hp->n_vocab;
    if (n_out > o->d_out_cap)
        return mc_error(MOECL_ERR_BACKEND, "opencl: %d rows of logits; the device holds %d", n_out, o->d_out_cap);
    const cl_int grp[4] = {0, 0, n_out, 0};
    CL_CHECK(clEnqueueWriteBuffer(o->queue, o->d_rows, CL_TRUE, 0, (size_t)n_out * 4, rows, 0, NULL, NULL),
             "writing the logit rows");
    CL_CHECK(clEnqueueWriteBuffer(o->queue, o->d_groups_o, CL_TRUE, 0, sizeof grp, grp, 0, NULL, NULL),
             "writing the logit rows");
    moecl_status st;
    const karg a[] = {M(o->d_x), M(o->d_xo), M(o->d_rows), I(D)};
    const size_t g[2] = {(size_t)D, (size_t)n_out};
    if ((st = dense_run(o, KD_COPY_ROWS, a, 4, 2, g))) return st;
    if ((st = dense_rms(o, o->d_xo, o->d_out_norm, o->d_xo, (size_t)n_out, D, D, D))) return st;
    if ((st = dense_matmul(o, o->d_lm_head, o->d_xo, o->d_logits, o->d_groups_o, n_out, V, D))) return st;
    cl_event ev = NULL;
    cl_int err = clEnqueueReadBuffer(o->queue, o->d_logits, CL_FALSE, 0, (size_t)n_out * (size_t)V * 4, logits, 0,
                                     NULL, &ev);
    if (!err) err = clWaitForEvents(1, &ev);
    if (ev) {
        cl_int es = CL_COMPLETE;
        if (!err && clGetEventInfo(ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof es, &es, NULL) == CL_SUCCESS && es < 0)
            err = es;
        clReleaseEvent(ev);
    }
    CL_CHECK(err, "reading the logits");
    return MOECL_OK;
}

static moecl_status ocl_dense_head(mc_backend *be, int32_t n_out, const int32_t *rows, float *logits) {
    ocl_backend *o = be->impl;
    if (o->failed) return mc_error(MOECL_ERR_BACKEND, "opencl: %s failed earlier", o->dev.name);
    if (n_out <= 0) return MOECL_OK;
    moecl_status st = dense_head_enqueue(be, n_out, rows, logits);
    return st ? dense_fail(o, st) : MOECL_OK;
}
#undef M
#undef I
#undef FL
