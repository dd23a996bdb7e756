/*
 * probe.c - measuring a device for the placement planner (opencl.h,
 * mc_cl_probe): its read bandwidth and one host round trip, once per device,
 * cached beside the program binaries.
 */
#include "backend/opencl/opencl.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The cache entry: a version, so that a change of method measures again. */
typedef struct probe_entry {
    uint32_t version;
    uint32_t pad;
    double read_bps, rtt_s;
} probe_entry;
#define PROBE_VERSION 2u

static double now_s(void) { return (double)mc_now_ns() * 1e-9; }

/* Larger than any device's last-level cache (an H100's L2 is 50 MB; a CPU
 * device's L3 here 32 MB), smaller than what any device can allocate. */
static size_t probe_bytes(const mc_cl_device *dev) {
    size_t b = dev->is_gpu ? (size_t)256 << 20 : (size_t)128 << 20;
    while (b > ((size_t)1 << 20) && (b > dev->max_alloc || b > dev->global_mem / 4)) b /= 2;
    return b;
}

static bool measure(cl_context ctx, cl_command_queue q, const mc_cl_device *dev, double *read_bps, double *rtt_s) {
    cl_program prog = NULL;
    const char *const names[2] = {"probe_read", "probe_read_chunks"};
    if (mc_cl_build(ctx, dev, "probe.cl", "", names, 2, &prog)) return false;
    cl_int err;
    cl_kernel k = clCreateKernel(prog, names[dev->is_gpu ? 0 : 1], &err);
    const size_t bytes = probe_bytes(dev);
    const size_t gs = (size_t)(dev->compute_units > 0 ? dev->compute_units : 1) * (dev->is_gpu ? 2048 : 16);
    cl_mem src = NULL, out = NULL;
    void *host = calloc(1, bytes);
    bool ok = k && err == CL_SUCCESS && host;
    if (ok) src = clCreateBuffer(ctx, CL_MEM_READ_ONLY, bytes, NULL, &err);
    ok = ok && err == CL_SUCCESS;
    if (ok) out = clCreateBuffer(ctx, CL_MEM_READ_WRITE, gs * sizeof(float), NULL, &err);
    ok = ok && err == CL_SUCCESS;
    ok = ok && clEnqueueWriteBuffer(q, src, CL_TRUE, 0, bytes, host, 0, NULL, NULL) == CL_SUCCESS;
    const cl_int n4 = (cl_int)(bytes / 16);
    if (ok) {
        err = clSetKernelArg(k, 0, sizeof src, &src);
        err |= clSetKernelArg(k, 1, sizeof out, &out);
        err |= clSetKernelArg(k, 2, sizeof n4, &n4);
        ok = err == CL_SUCCESS;
    }
    /* best of 5 after a warm-up: the device's rate, not the machine's load */
    double best = 0;
    for (int it = 0; it < 6 && ok; it++) {
        const double t0 = now_s();
        ok = clEnqueueNDRangeKernel(q, k, 1, NULL, &gs, NULL, 0, NULL, NULL) == CL_SUCCESS &&
             clFinish(q) == CL_SUCCESS;
        const double dt = now_s() - t0;
        if (ok && it > 0 && dt > 0 && (double)bytes / dt > best) best = (double)bytes / dt;
    }
    /* round trip: 16 KiB up (a token's hidden state at hidden 4096), a launch, 16 KiB back; median of 15 */
    double rt[15];
    const size_t small = 16384 < bytes ? 16384 : bytes;
    const size_t one = 1;
    const cl_int n_small = 1;
    if (ok) ok = clSetKernelArg(k, 2, sizeof n_small, &n_small) == CL_SUCCESS;
    for (int it = 0; it < 15 && ok; it++) {
        const double t0 = now_s();
        ok = clEnqueueWriteBuffer(q, src, CL_FALSE, 0, small, host, 0, NULL, NULL) == CL_SUCCESS &&
             clEnqueueNDRangeKernel(q, k, 1, NULL, &one, NULL, 0, NULL, NULL) == CL_SUCCESS &&
             clEnqueueReadBuffer(q, src, CL_TRUE, 0, small, host, 0, NULL, NULL) == CL_SUCCESS;
        rt[it] = now_s() - t0;
    }
    if (ok) {
        for (int i = 1; i < 15; i++) /* insertion sort */
            for (int j = i; j > 0 && rt[j] < rt[j - 1]; j--) {
                double t = rt[j];
                rt[j] = rt[j - 1];
                rt[j - 1] = t;
            }
        *read_bps = best;
        *rtt_s = rt[7];
    }
    clFinish(q);
    if (src) clReleaseMemObject(src);
    if (out) clReleaseMemObject(out);
    if (k) clReleaseKernel(k);
    clReleaseProgram(prog);
    free(host);
    return ok && best > 0;
}

bool mc_cl_probe_measure(cl_context ctx, cl_command_queue queue, const mc_cl_device *dev, double *read_bps,
                         double *rtt_s) {
    *read_bps = *rtt_s = 0;
    return measure(ctx, queue, dev, read_bps, rtt_s);
}

/* This process's measurements, also when the disk cache is off: a device
 * is measured once a process at most. Keyed like the disk cache. */
#define MEMO_N 8
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char key[400];
    double read_bps, rtt_s;
} g_memo[MEMO_N];
static int g_n_memo;

static void probe(cl_context ctx, cl_command_queue queue, const mc_cl_device *dev, double *read_bps, double *rtt_s);

void mc_cl_probe(cl_context ctx, cl_command_queue queue, const mc_cl_device *dev, double *read_bps, double *rtt_s) {
    *read_bps = *rtt_s = 0;
    const char *env = getenv("MOECL_CL_PROBE");
    if (env && !strcmp(env, "off")) return;
    double gbps = 0, us = 0;
    if (env && sscanf(env, "%lf,%lf", &gbps, &us) >= 1 && gbps > 0) {
        *read_bps = gbps * 1e9;
        *rtt_s = us > 0 ? us * 1e-6 : 0;
        return;
    }
    char key[400];
    snprintf(key, sizeof key, "%s|%s|%s|%s", dev->platform_name, dev->name, dev->version, dev->driver);
    pthread_mutex_lock(&g_mu); /* one probe at a time: two would share the memory bus and halve each other */
    int i = 0;
    while (i < g_n_memo && strcmp(g_memo[i].key, key)) i++;
    if (i < g_n_memo) {
        *read_bps = g_memo[i].read_bps;
        *rtt_s = g_memo[i].rtt_s;
    } else {
        probe(ctx, queue, dev, read_bps, rtt_s);
        if (*read_bps > 0 && g_n_memo < MEMO_N) {
            snprintf(g_memo[g_n_memo].key, sizeof g_memo[g_n_memo].key, "%s", key);
            g_memo[g_n_memo].read_bps = *read_bps;
            g_memo[g_n_memo++].rtt_s = *rtt_s;
        }
    }
    pthread_mutex_unlock(&g_mu);
}

/* From the disk cache, else measured and cached. */
static void probe(cl_context ctx, cl_command_queue queue, const mc_cl_device *dev, double *read_bps, double *rtt_s) {
    probe_entry e;
    if (mc_cl_cache_blob_load(dev, "probe", &e, sizeof e) && e.version == PROBE_VERSION && e.read_bps > 0 &&
        e.read_bps < 1e15 && e.rtt_s >= 0 && e.rtt_s < 10) {
        *read_bps = e.read_bps;
        *rtt_s = e.rtt_s;
        return;
    }
    const double t0 = now_s();
    if (!measure(ctx, queue, dev, read_bps, rtt_s)) {
        mc_log(MOECL_LOG_WARN, "opencl: could not measure %s's bandwidth (%s); no prediction for it", dev->name,
               moecl_last_error());
        mc_clear_error();
        *read_bps = *rtt_s = 0;
        return;
    }
    mc_log(MOECL_LOG_INFO, "opencl: %s reads %.1f GB/s, round trip %.0f us (measured in %.2f s, cached)", dev->name,
           *read_bps / 1e9, *rtt_s * 1e6, now_s() - t0);
    e = (probe_entry){.version = PROBE_VERSION, .read_bps = *read_bps, .rtt_s = *rtt_s};
    mc_cl_cache_blob_store(dev, "probe", &e, sizeof e);
}
