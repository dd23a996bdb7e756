/*
 * bench_device.c - what an OpenCL device can do, for tools/gpu_bench.sh.
 *
 *   bench-device [--small]
 *
 * On the device $MOECL_DEVICE names (default: the first GPU, else the first
 * device), prints key=value lines:
 *   device=NAME
 *   read_gbs=      read bandwidth (the planner's probe kernel, measured now,
 *                  not the cached value)
 *   rtt_us=        one host round trip: 16 KiB up, a launch, 16 KiB back
 *   sgemm_n=N      the square size of the SGEMM below (4096; --small: 256)
 *   sgemm_gflops=  CLBlast's SGEMM, C = A·Bᵀ, best of 3 after a warm-up;
 *                  "nan" without CLBlast
 * Not a test: it checks nothing; exit 1 only when no device opens.
 */
#include "backend/opencl/opencl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double sgemm_gflops(cl_context ctx, cl_command_queue q, size_t n) {
    if (!mc_clblast_available()) return NAN;
    cl_int e1, e2, e3;
    const size_t bytes = n * n * sizeof(float);
    float *host = malloc(bytes);
    if (!host) return NAN;
    for (size_t i = 0; i < n * n; i++) host[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    cl_mem a = clCreateBuffer(ctx, CL_MEM_READ_ONLY, bytes, NULL, &e1);
    cl_mem b = clCreateBuffer(ctx, CL_MEM_READ_ONLY, bytes, NULL, &e2);
    cl_mem c = clCreateBuffer(ctx, CL_MEM_READ_WRITE, bytes, NULL, &e3);
    double best = NAN;
    if (!e1 && !e2 && !e3 && !clEnqueueWriteBuffer(q, a, CL_TRUE, 0, bytes, host, 0, NULL, NULL) &&
        !clEnqueueWriteBuffer(q, b, CL_TRUE, 0, bytes, host, 0, NULL, NULL)) {
        for (int it = 0; it < 4; it++) {
            const int64_t t0 = mc_now_ns();
            if (mc_clblast_sgemm_nt(q, n, n, n, a, 0, b, 0, c, 0) != 0 || clFinish(q) != CL_SUCCESS) break;
            const double g = 2.0 * (double)n * (double)n * (double)n / ((double)(mc_now_ns() - t0) * 1e-9) / 1e9;
            if (it > 0 && (isnan(best) || g > best)) best = g;
        }
    }
    if (a) clReleaseMemObject(a);
    if (b) clReleaseMemObject(b);
    if (c) clReleaseMemObject(c);
    free(host);
    return best;
}

int main(int argc, char **argv) {
    const bool small = argc > 1 && !strcmp(argv[1], "--small");
    mc_cl_device dev;
    if (mc_cl_select(getenv("MOECL_DEVICE"), false, &dev) != MOECL_OK) {
        fprintf(stderr, "bench-device: %s\n", moecl_last_error());
        return 1;
    }
    cl_int err;
    cl_context ctx = clCreateContext(NULL, 1, &dev.id, NULL, NULL, &err);
    cl_command_queue q = err == CL_SUCCESS ? clCreateCommandQueue(ctx, dev.id, 0, &err) : NULL;
    if (err != CL_SUCCESS) {
        fprintf(stderr, "bench-device: %s: %s\n", dev.name, mc_cl_strerror(err));
        return 1;
    }
    double bw = 0, rtt = 0;
    if (!mc_cl_probe_measure(ctx, q, &dev, &bw, &rtt)) fprintf(stderr, "bench-device: probe: %s\n", moecl_last_error());
    const size_t n = small ? 256 : 4096;
    printf("device=%s\nread_gbs=%.2f\nrtt_us=%.1f\nsgemm_n=%zu\nsgemm_gflops=%.1f\n", dev.name, bw / 1e9, rtt * 1e6, n,
           sgemm_gflops(ctx, q, n));
    clReleaseCommandQueue(q);
    clReleaseContext(ctx);
    return 0;
}
