/*
 * backend_opencl.c - the OpenCL backend: expert FFNs on an OpenCL device.
 *
 * At creation the backend opens a device, builds cl/moe_ffn.cl, chooses
 * which experts of each layer it holds within a memory budget and uploads
 * their weights once. moe_submit then enqueues, without blocking: one write
 * of the packed rows of all its experts of the layer, one grouped launch of
 * gate+up (SiLU·mul fused), one of down, one read back; moe_wait blocks.
 * Attention and the LM head stay on the CPU: matmul delegates to the CPU
 * kernels.
 */
#include "backend/backend.h"
#include "backend/opencl/opencl.h"
#include "backend/cpu/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Few rows per expert: matrix-vector kernels (_vec on GPUs, _rows on CPU
 * devices, where PoCL serializes work-group reductions); more: tiled. */
#define VEC_MAX_ROWS 8

typedef struct cl_layer {
    int n_slots;          /* experts of this layer held */
    cl_mem w1, w3;        /* [n_slots, n_ff, n_embd] */
    cl_mem w2;            /* [n_slots, n_embd, n_ff] */
} cl_layer;

typedef struct ocl_backend {
    mc_cl_device dev;
    cl_context ctx;
    cl_command_queue queue;
    cl_program prog;
    cl_kernel gate_up_vec, down_vec, gate_up_tiled, down_tiled;
    cl_kernel gate_up_rows, down_rows; /* the few-row kernels of CPU devices */
    bool few_rows_rows;   /* few rows: _rows kernels (CPU devices), else _vec; $MOECL_CL_FEW_ROWS=vec|rows */
    size_t wgs, ts, outs; /* tunables the program was built with */
    moecl_dtype dtype;    /* F32 or F16 weights on the device */
    int32_t *slot;        /* [n_layer * n_expert] slot on the device, -1: not here */
    cl_layer *layers;     /* [n_layer] */
    cl_mem x, h, y;       /* [cap_rows, n_embd], [cap_rows, n_ff], [cap_rows, n_embd] */
    cl_mem groups;        /* [n_expert] int4 */
    size_t cap_rows;
    cl_int *groups_host;  /* [n_expert * 4], read by the pending write */
    bool pending;         /* work enqueued and not waited for */
    mc_backend *cpu;      /* matmul */
    uint64_t weight_bytes;
} ocl_backend;

#define CL_CHECK(call, what)                                                                             \
    do {                                                                                                 \
        cl_int err_ = (call);                                                                            \
        if (err_ != CL_SUCCESS)                                                                          \
            return mc_error(MOECL_ERR_BACKEND, "opencl: %s on %s: %s", what, o->dev.name, mc_cl_strerror(err_)); \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Expert FFNs                                                              */
/* ------------------------------------------------------------------------ */

static moecl_status reserve_rows(mc_backend *be, size_t rows) {
    ocl_backend *o = be->impl;
    if (rows <= o->cap_rows) return MOECL_OK;
    const size_t D = (size_t)be->model->hp.n_embd, F = (size_t)be->model->hp.n_ff;
    size_t cap = o->cap_rows ? o->cap_rows : 16;
    while (cap < rows) cap *= 2;
    cl_mem bufs[3] = {o->x, o->h, o->y};
    for (int i = 0; i < 3; i++)
        if (bufs[i]) clReleaseMemObject(bufs[i]);
    o->x = o->h = o->y = NULL;
    o->cap_rows = 0;
    cl_int e1, e2, e3;
    o->x = clCreateBuffer(o->ctx, CL_MEM_READ_ONLY, cap * D * sizeof(float), NULL, &e1);
    o->h = clCreateBuffer(o->ctx, CL_MEM_READ_WRITE, cap * F * sizeof(float), NULL, &e2);
    o->y = clCreateBuffer(o->ctx, CL_MEM_WRITE_ONLY, cap * D * sizeof(float), NULL, &e3);
    if (e1 || e2 || e3)
        return mc_error(MOECL_ERR_BACKEND, "opencl: cannot allocate activations for %zu rows on %s: %s", cap,
                        o->dev.name, mc_cl_strerror(e1 ? e1 : e2 ? e2 : e3));
    o->cap_rows = cap;
    return MOECL_OK;
}

static moecl_status enqueue(mc_backend *be, const mc_moe_work *w) {
    ocl_backend *o = be->impl;
    const mc_hparams *hp = &be->model->hp;
    const cl_int D = hp->n_embd, F = hp->n_ff;
    const int64_t r0 = w->offsets[0], rows = w->offsets[w->n_used] - r0;
    const cl_layer *L = &o->layers[w->layer];
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
    CL_CHECK(clEnqueueWriteBuffer(o->queue, o->x, CL_FALSE, 0, xbytes, w->X + r0 * D, 0, NULL, NULL),
             "writing the rows");
    CL_CHECK(clEnqueueWriteBuffer(o->queue, o->groups, CL_FALSE, 0, (size_t)w->n_used * 4 * sizeof(cl_int),
                                  o->groups_host, 0, NULL, NULL),
             "writing the groups");

    const bool vec = max_rows <= VEC_MAX_ROWS, rows_k = vec && o->few_rows_rows;
    cl_kernel gu = vec ? o->gate_up_vec : o->gate_up_tiled, dn = vec ? o->down_vec : o->down_tiled;
    if (rows_k) {
        gu = o->gate_up_rows;
        dn = o->down_rows;
    }
    cl_int err = 0;
    err |= clSetKernelArg(gu, 0, sizeof(cl_mem), &o->x);
    err |= clSetKernelArg(gu, 1, sizeof(cl_mem), &L->w1);
    err |= clSetKernelArg(gu, 2, sizeof(cl_mem), &L->w3);
    err |= clSetKernelArg(gu, 3, sizeof(cl_mem), &o->h);
    err |= clSetKernelArg(gu, 4, sizeof(cl_mem), &o->groups);
    err |= clSetKernelArg(gu, 5, sizeof(cl_int), &D);
    err |= clSetKernelArg(gu, 6, sizeof(cl_int), &F);
    err |= clSetKernelArg(dn, 0, sizeof(cl_mem), &o->h);
    err |= clSetKernelArg(dn, 1, sizeof(cl_mem), &L->w2);
    err |= clSetKernelArg(dn, 2, sizeof(cl_mem), &o->y);
    err |= clSetKernelArg(dn, 3, sizeof(cl_mem), &o->groups);
    err |= clSetKernelArg(dn, 4, sizeof(cl_int), &D);
    err |= clSetKernelArg(dn, 5, sizeof(cl_int), &F);
    CL_CHECK(err, "setting kernel arguments");

    const size_t ts = o->ts, n_used = (size_t)w->n_used;
    if (rows_k) {
        size_t g1[2] = {(size_t)F, n_used}, g2[2] = {(size_t)D, n_used};
        CL_CHECK(clEnqueueNDRangeKernel(o->queue, gu, 2, NULL, g1, NULL, 0, NULL, NULL), "launching gate_up_rows");
        CL_CHECK(clEnqueueNDRangeKernel(o->queue, dn, 2, NULL, g2, NULL, 0, NULL, NULL), "launching down_rows");
    } else if (vec) {
        const size_t per = o->outs;
        size_t g1[2] = {((size_t)F + per - 1) / per * o->wgs, n_used};
        size_t g2[2] = {((size_t)D + per - 1) / per * o->wgs, n_used};
        size_t l[2] = {o->wgs, 1};
        CL_CHECK(clEnqueueNDRangeKernel(o->queue, gu, 2, NULL, g1, l, 0, NULL, NULL), "launching gate_up_vec");
        CL_CHECK(clEnqueueNDRangeKernel(o->queue, dn, 2, NULL, g2, l, 0, NULL, NULL), "launching down_vec");
    } else {
        const size_t rt = ((size_t)max_rows + ts - 1) / ts * ts;
        size_t g1[3] = {((size_t)F + ts - 1) / ts * ts, rt, n_used};
        size_t g2[3] = {((size_t)D + ts - 1) / ts * ts, rt, n_used};
        size_t l[3] = {ts, ts, 1};
        CL_CHECK(clEnqueueNDRangeKernel(o->queue, gu, 3, NULL, g1, l, 0, NULL, NULL), "launching gate_up_tiled");
        CL_CHECK(clEnqueueNDRangeKernel(o->queue, dn, 3, NULL, g2, l, 0, NULL, NULL), "launching down_tiled");
    }
    CL_CHECK(clEnqueueReadBuffer(o->queue, o->y, CL_FALSE, 0, xbytes, w->Y + r0 * D, 0, NULL, NULL),
             "reading the outputs");
    CL_CHECK(clFlush(o->queue), "flushing the queue");
    return MOECL_OK;
}

static moecl_status ocl_moe_submit(mc_backend *be, const mc_moe_work *w) {
    ocl_backend *o = be->impl;
    if (w->n_used <= 0) return MOECL_OK;
    o->pending = true;
    moecl_status st = enqueue(be, w);
    if (st) {
        clFinish(o->queue); /* nothing may still read or write host memory */
        o->pending = false;
    }
    return st;
}

static moecl_status ocl_moe_wait(mc_backend *be) {
    ocl_backend *o = be->impl;
    if (!o->pending) return MOECL_OK;
    o->pending = false;
    CL_CHECK(clFinish(o->queue), "waiting for the expert FFNs");
    return MOECL_OK;
}

static moecl_status ocl_matmul(mc_backend *be, const mc_tensor *W, const float *X, int64_t T, float *Y) {
    ocl_backend *o = be->impl;
    return o->cpu->iface->matmul(o->cpu, W, X, T, Y);
}

static void ocl_free(mc_backend *be) {
    if (!be) return;
    ocl_backend *o = be->impl;
    if (o) {
        if (o->queue) clFinish(o->queue);
        for (int l = 0; o->layers && l < be->model->hp.n_layer; l++) {
            cl_mem m[3] = {o->layers[l].w1, o->layers[l].w3, o->layers[l].w2};
            for (int i = 0; i < 3; i++)
                if (m[i]) clReleaseMemObject(m[i]);
        }
        cl_mem m[4] = {o->x, o->h, o->y, o->groups};
        for (int i = 0; i < 4; i++)
            if (m[i]) clReleaseMemObject(m[i]);
        cl_kernel k[6] = {o->gate_up_vec, o->down_vec,     o->gate_up_tiled,
                          o->down_tiled,  o->gate_up_rows, o->down_rows};
        for (int i = 0; i < 6; i++)
            if (k[i]) clReleaseKernel(k[i]);
        if (o->prog) clReleaseProgram(o->prog);
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

static const mc_backend_i ocl_iface = {
    .name = "opencl",
    .free = ocl_free,
    .matmul = ocl_matmul,
    .moe_submit = ocl_moe_submit,
    .moe_wait = ocl_moe_wait,
};

/* ------------------------------------------------------------------------ */
/* Creation: device, program, placement, weights                            */
/* ------------------------------------------------------------------------ */

static moecl_status open_device(ocl_backend *o, const mc_opencl_params *p) {
    moecl_status st = mc_cl_select(p->selector, p->gpu_only, &o->dev);
    if (st) return st;
    cl_int err;
    o->ctx = clCreateContext(NULL, 1, &o->dev.id, NULL, NULL, &err);
    CL_CHECK(err, "clCreateContext");
    o->queue = clCreateCommandQueue(o->ctx, o->dev.id, 0, &err);
    CL_CHECK(err, "clCreateCommandQueue");

    size_t max_wg = 0;
    clGetDeviceInfo(o->dev.id, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof max_wg, &max_wg, NULL);
    o->wgs = 64;
    while (o->wgs > 1 && o->wgs > max_wg) o->wgs /= 2;
    o->ts = max_wg >= 256 ? 16 : max_wg >= 64 ? 8 : 4;
    const char *fr = getenv("MOECL_CL_FEW_ROWS");
    o->few_rows_rows = fr && !strcmp(fr, "rows") ? true : fr && !strcmp(fr, "vec") ? false : !o->dev.is_gpu;
    o->outs = 1; /* GPUs want many small groups (CPU devices use the _rows kernels) */
    char opts[256];
    snprintf(opts, sizeof opts, "-cl-mad-enable -DWGS=%zu -DTS=%zu -DOUTS=%zu%s", o->wgs, o->ts, o->outs,
             o->dtype == MOECL_DTYPE_F16 ? " -DWEIGHT_F16" : "");
    if ((st = mc_cl_build(o->ctx, &o->dev, "moe_ffn.cl", opts, &o->prog))) return st;
    const char *names[6] = {"moe_gate_up_vec", "moe_down_vec",     "moe_gate_up_tiled",
                            "moe_down_tiled",  "moe_gate_up_rows", "moe_down_rows"};
    cl_kernel *ks[6] = {&o->gate_up_vec, &o->down_vec,     &o->gate_up_tiled,
                        &o->down_tiled,  &o->gate_up_rows, &o->down_rows};
    for (int i = 0; i < 6; i++) {
        *ks[i] = clCreateKernel(o->prog, names[i], &err);
        CL_CHECK(err, names[i]);
    }
    return MOECL_OK;
}

/* Copy one weight matrix, converted to the device dtype, into slot `slot` of buf. */
static moecl_status upload(ocl_backend *o, cl_mem buf, int slot, const mc_tensor *t, float *tmp32, uint16_t *tmp16) {
    const size_t n = (size_t)t->rows * (size_t)t->cols;
    const size_t ws = o->dtype == MOECL_DTYPE_F16 ? 2 : 4;
    const void *src;
    if (o->dtype == MOECL_DTYPE_F16 && t->type == MOECL_DTYPE_F16) {
        src = t->data;
    } else {
        mc_cpu_to_f32(t->type, t->data, tmp32, (int64_t)n);
        if (o->dtype == MOECL_DTYPE_F16) {
            for (size_t i = 0; i < n; i++) tmp16[i] = mc_f32_to_f16(tmp32[i]);
            src = tmp16;
        } else {
            src = tmp32;
        }
    }
    CL_CHECK(clEnqueueWriteBuffer(o->queue, buf, CL_TRUE, (size_t)slot * n * ws, n * ws, src, 0, NULL, NULL),
             "uploading expert weights");
    return MOECL_OK;
}

/* How many experts each layer puts on the device. */
static int64_t plan_placement(const moecl_model *m, const ocl_backend *o, const mc_opencl_params *p, int *n_of) {
    const mc_hparams *hp = &m->hp;
    const int E = hp->n_expert, L = hp->n_layer;
    const uint64_t mat = (uint64_t)hp->n_ff * (uint64_t)hp->n_embd * (o->dtype == MOECL_DTYPE_F16 ? 2 : 4);
    int64_t budget = p->mem_budget;
    if (budget < 0) { /* device memory less headroom for activations, the driver and other programs */
        uint64_t head = o->dev.global_mem / 10;
        if (head < ((uint64_t)512 << 20)) head = (uint64_t)512 << 20;
        budget = o->dev.global_mem > head ? (int64_t)(o->dev.global_mem - head) : 0;
    }
    int cap = E;
    if (p->experts_per_layer >= 0 && p->experts_per_layer < cap) cap = p->experts_per_layer;
    if (mat && o->dev.max_alloc / mat < (uint64_t)cap) cap = (int)(o->dev.max_alloc / mat);
    int64_t total = mat ? budget / (int64_t)(3 * mat) : 0;
    if (total > (int64_t)cap * L) total = (int64_t)cap * L;
    for (int l = 0; l < L; l++) n_of[l] = (int)(total / L + (l < total % L));
    return total;
}

moecl_status mc_backend_opencl_new(const moecl_model *model, const mc_opencl_params *p, uint8_t *placement,
                                   uint8_t index, int64_t *n_placed, mc_backend **out) {
    *out = NULL;
    *n_placed = 0;
    const mc_hparams *hp = &model->hp;
    const int E = hp->n_expert, L = hp->n_layer;
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
    moecl_dtype dt = p->dtype;
    if (dt == MOECL_DTYPE_COUNT) /* match the model: 16-bit floats stay F16 only when they are F16 */
        dt = model->layers[0].experts[0].w1.type == MOECL_DTYPE_F16 ? MOECL_DTYPE_F16 : MOECL_DTYPE_F32;
    if (dt != MOECL_DTYPE_F32 && dt != MOECL_DTYPE_F16) {
        ocl_free(be);
        return mc_error(MOECL_ERR_INVALID_ARG, "opencl: device dtype %s not supported (f32 or f16)",
                        moecl_dtype_name(dt));
    }
    o->dtype = dt;
    o->slot = malloc((size_t)L * (size_t)E * sizeof(int32_t));
    o->layers = calloc((size_t)L, sizeof *o->layers);
    o->groups_host = calloc((size_t)E * 4, sizeof(cl_int));
    int *n_of = calloc((size_t)L, sizeof(int));
    moecl_status st = (o->slot && o->layers && o->groups_host && n_of)
                          ? mc_backend_cpu_new(model, p->n_threads, &o->cpu)
                          : mc_error(MOECL_ERR_NOMEM, "opencl: out of memory");
    if (!st) st = open_device(o, p);
    if (st) {
        free(n_of);
        ocl_free(be);
        return st;
    }
    for (int64_t i = 0; i < (int64_t)L * E; i++) o->slot[i] = -1;
    int64_t total = plan_placement(model, o, p, n_of);

    cl_int err;
    o->groups = clCreateBuffer(o->ctx, CL_MEM_READ_ONLY, (size_t)E * 4 * sizeof(cl_int), NULL, &err);
    if (err) st = mc_error(MOECL_ERR_BACKEND, "opencl: clCreateBuffer: %s", mc_cl_strerror(err));
    const size_t n = (size_t)hp->n_ff * (size_t)hp->n_embd, ws = dt == MOECL_DTYPE_F16 ? 2 : 4;
    float *tmp32 = total ? malloc(n * sizeof(float)) : NULL;
    uint16_t *tmp16 = total && dt == MOECL_DTYPE_F16 ? malloc(n * sizeof(uint16_t)) : NULL;
    if (!st && total && (!tmp32 || (dt == MOECL_DTYPE_F16 && !tmp16)))
        st = mc_error(MOECL_ERR_NOMEM, "opencl: out of memory for weight conversion");
    for (int l = 0; l < L && !st; l++) {
        cl_layer *cl = &o->layers[l];
        if (!n_of[l]) continue;
        const size_t bytes = (size_t)n_of[l] * n * ws;
        cl_mem *bufs[3] = {&cl->w1, &cl->w3, &cl->w2};
        for (int i = 0; i < 3 && !st; i++) {
            *bufs[i] = clCreateBuffer(o->ctx, CL_MEM_READ_ONLY, bytes, NULL, &err);
            if (err)
                st = mc_error(MOECL_ERR_BACKEND, "opencl: cannot allocate %.1f MiB for layer %d on %s: %s",
                              (double)bytes / 1048576.0, l, o->dev.name, mc_cl_strerror(err));
        }
        cl->n_slots = n_of[l];
        for (int e = 0; e < n_of[l] && !st; e++) { /* the first experts of each layer */
            const mc_expert *x = &model->layers[l].experts[e];
            if (!(st = upload(o, cl->w1, e, &x->w1, tmp32, tmp16)) && !(st = upload(o, cl->w3, e, &x->w3, tmp32, tmp16)))
                st = upload(o, cl->w2, e, &x->w2, tmp32, tmp16);
            o->slot[(int64_t)l * E + e] = e;
        }
        o->weight_bytes += 3 * bytes;
    }
    free(tmp32);
    free(tmp16);
    if (st) {
        free(n_of);
        ocl_free(be);
        return st;
    }
    for (int l = 0; l < L; l++)
        for (int e = 0; e < n_of[l]; e++) placement[(int64_t)l * E + e] = index;
    mc_log(MOECL_LOG_INFO, "opencl: %s (%s, %s): %lld of %lld experts on the device as %s, %.1f MiB; layer 0: %d of %d",
           o->dev.name, o->dev.platform_name, o->dev.version, (long long)total, (long long)L * E,
           moecl_dtype_name(dt), (double)o->weight_bytes / 1048576.0, n_of[0], E);
    free(n_of);
    *n_placed = total;
    *out = be;
    return MOECL_OK;
}

void mc_backend_opencl_describe(const mc_backend *be, char *name, size_t len, uint64_t *bytes, moecl_dtype *dtype) {
    const ocl_backend *o = be->impl;
    snprintf(name, len, "%s", o->dev.name);
    *bytes = o->weight_bytes;
    *dtype = o->dtype;
}
