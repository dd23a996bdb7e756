/*
 * bench_blas.c - what this machine can do, and how close the CPU kernels get.
 *
 *   bench-blas [--threads N] [--quick] [--sweep] [--quant]
 *
 * (a) memory: read bandwidth of a buffer far larger than L3 (plain parallel
 *     sum), and the bandwidth mc_cpu_matmul reaches at T=1 on a weight of the
 *     same size, per dtype (weight bytes / time);
 * (b) OpenBLAS sgemm GFLOP/s, square and at the expert shapes of
 *     Mixtral-mini prompts, and mc_cpu_matmul at the same shapes (whichever
 *     path its thresholds pick: at M=128 F16/BF16 use the fused kernels);
 * (c) with --sweep: GFLOP/s of mc_cpu_matmul against T at expert shapes.
 *     To place MC_SMALL_T / MC_SMALL_T_16, build it twice, with
 *     -DMC_SMALL_T=0 -DMC_SMALL_T_16=0 (sgemm at every T) and with both
 *     =100000 (fused kernels at every T), and compare.
 * (d) with --quant: the quantized types at a Mixtral expert shape
 *     (14336x4096): T=1 and 2 in weight GB/s (and as a fraction of the read
 *     bandwidth of (a)), T=32 and 128 in GFLOP/s; --quant-only skips (b).
 * First of all, the cost of an empty mc_pool_for: what MOECL_SPIN_US decides
 * (0: the workers sleep at once, a futex wake per call).
 *
 * Each figure is the median of several runs. Thread counts measured: 1 and N
 * (default: all processors). Not a test: it checks nothing.
 */
#include "backend/cpu/kernels.h"
#include "quant/quant.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <emmintrin.h>
#endif

/* For the record in --sweep output: the threshold kernels.c was built with,
 * when the bench is built with the same -DMC_SMALL_T (else "default"). */
#ifdef MC_SMALL_T
#define MC_SMALL_T_BUILD MC_SMALL_T
#else
#define MC_SMALL_T_BUILD -1
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void *xalloc(size_t bytes) {
    void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!p) {
        fprintf(stderr, "bench-blas: cannot allocate %zu bytes\n", bytes);
        exit(1);
    }
    return p;
}

static int g_runs = 7;
static double g_read_gbs[2]; /* read bandwidth of (a) at 1 and N threads */

/* ---- (a) memory bandwidth ------------------------------------------------- */

/* Sum of n floats read as `streams` (1 or 4) sequential streams side by
 * side, eight independent accumulators. The matvec kernels read 4 weight
 * rows at once, and CPUs differ in which pattern they stream faster (a Zen 4
 * core: one stream, 2x; a Sapphire Rapids core: several, 2x), so both are
 * measured and the better one is "the read bandwidth". SSE2 is baseline on
 * x86-64 and already far faster than memory. */
static float sum_floats(const float *p, size_t n, int streams) {
    size_t len = n / (size_t)streams / 32 * 32, i = 0;
    float s = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    __m128 a[8];
    for (int j = 0; j < 8; j++) a[j] = _mm_setzero_ps();
    if (streams == 1) {
        for (; i + 32 <= n; i += 32)
            for (int j = 0; j < 8; j++) a[j] = _mm_add_ps(a[j], _mm_load_ps(p + i + 4 * j));
    } else { /* 4 streams */
        const float *q[4] = {p, p + len, p + 2 * len, p + 3 * len};
        for (size_t k = 0; k < len; k += 8)
            for (int j = 0; j < 4; j++) {
                a[2 * j] = _mm_add_ps(a[2 * j], _mm_load_ps(q[j] + k));
                a[2 * j + 1] = _mm_add_ps(a[2 * j + 1], _mm_load_ps(q[j] + k + 4));
            }
        i = 4 * len;
    }
    for (int j = 1; j < 8; j++) a[0] = _mm_add_ps(a[0], a[j]);
    float t[4];
    _mm_storeu_ps(t, a[0]);
    s = t[0] + t[1] + t[2] + t[3];
#else
    (void)len;
#endif
    for (; i < n; i++) s += p[i];
    return s;
}

static volatile float g_sink;

/* One pool per thread count, made on first use. */
static mc_pool *g_pools[65];
static mc_pool *pool_of(int nth) {
    if (nth > 64) nth = 64;
    if (!g_pools[nth] && mc_pool_new(nth, &g_pools[nth])) {
        fprintf(stderr, "bench-blas: %s\n", moecl_last_error());
        exit(1);
    }
    return g_pools[nth];
}

typedef struct read_job {
    const float *buf;
    int streams;
    float part[64]; /* one sum per thread */
} read_job;

static void read_chunk(void *arg, int64_t a, int64_t b, int tid) {
    read_job *j = arg;
    j->part[tid] += sum_floats(j->buf + a, (size_t)(b - a), j->streams);
}

static double bench_read(const float *buf, size_t n, int nth, int streams) {
    double t[16];
    for (int r = 0; r < g_runs; r++) {
        double t0 = now();
        read_job j = {.buf = buf, .streams = streams};
        mc_pool_for(pool_of(nth), (int64_t)n, MC_POOL_STATIC, 32, nth, read_chunk, &j);
        t[r] = now() - t0;
        float total = 0;
        for (int i = 0; i < 64; i++) total += j.part[i];
        g_sink = total;
    }
    return (double)n * sizeof(float) / median(t, g_runs) * 1e-9;
}

/* Seconds per mc_cpu_matmul call: the median of g_runs samples, each the
 * mean over enough back-to-back calls to take >= 20 ms (short calls are
 * otherwise all timer and scheduler noise). */
static double time_matmul(const mc_tensor *W, const float *X, int64_t T, float *Y, int nth, void *scratch) {
    double t[16];
    double t0 = now();
    mc_cpu_matmul(W, X, T, Y, pool_of(nth), scratch); /* warm-up, and a first estimate */
    double once = now() - t0;
    int reps = once >= 20e-3 ? 1 : (int)(20e-3 / (once + 1e-7)) + 1;
    for (int r = 0; r < g_runs; r++) {
        t0 = now();
        for (int k = 0; k < reps; k++) mc_cpu_matmul(W, X, T, Y, pool_of(nth), scratch);
        t[r] = (now() - t0) / reps;
    }
    return median(t, g_runs);
}

static float *rand_floats(size_t n, uint32_t seed) {
    float *x = xalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)(seed >> 8) * (2.0f / 16777216.0f) - 1.0f;
    }
    return x;
}

static void section_memory(size_t bytes, int nmax) {
    printf("\n== (a) memory bandwidth: %.0f MiB buffer, median of %d ==\n", (double)bytes / 1048576, g_runs);
    float *buf = xalloc(bytes);
    size_t n = bytes / sizeof(float);
    /* 0x3c00 in every 16-bit half: a finite value as f32, f16 (1.0), bf16. */
    for (size_t i = 0; i < n; i++) ((uint32_t *)buf)[i] = 0x3c003c00u;

    double raw[2] = {0};
    int ths[2] = {1, nmax};
    for (int k = 0; k < (nmax > 1 ? 2 : 1); k++) {
        double one = bench_read(buf, n, ths[k], 1);
        raw[k] = bench_read(buf, n, ths[k], 4);
        printf("read (parallel sum)  threads=%d  1 stream/thread %6.1f GB/s   4 streams/thread %6.1f GB/s\n",
               ths[k], one, raw[k]);
        if (one > raw[k]) raw[k] = one;
    }

    /* The same bytes as a weight matrix, T = 1. */
    printf("mc_cpu_matmul T=1 over the same bytes (weight bytes / time; fraction of the better read figure):\n");
    for (int dt = 0; dt < MOECL_DTYPE_COUNT; dt++) {
        /* Float types: 128 KiB rows. Quantized: 16384 weights a row; the
         * 0x3c00 pattern makes every f16 scale 1.0 (finite). */
        const bool quant = mc_dtype_block((moecl_dtype)dt) > 1;
        int64_t cols = quant ? 16384 : (int64_t)(131072 / mc_dtype_size((moecl_dtype)dt));
        size_t rowb;
        mc_dtype_row_bytes((moecl_dtype)dt, cols, &rowb);
        int64_t rows = (int64_t)(bytes / rowb);
        mc_tensor W = {.type = (moecl_dtype)dt, .rows = rows, .cols = cols, .data = buf, .nbytes = (size_t)rows * rowb};
        float *X = rand_floats((size_t)cols, 1);
        float *Y = xalloc((size_t)rows * sizeof *Y);
        for (int k = 0; k < (nmax > 1 ? 2 : 1); k++) {
            double s = time_matmul(&W, X, 1, Y, ths[k], NULL);
            double gbs = (double)W.nbytes / s * 1e-9;
            g_read_gbs[k] = raw[k];
            printf("  %-4s rows=%-6lld cols=%-6lld threads=%d  %7.1f GB/s  %5.1f%% of read  (%.2f ms)\n",
                   moecl_dtype_name((moecl_dtype)dt), (long long)rows, (long long)cols, ths[k], gbs,
                   100 * gbs / raw[k], s * 1e3);
        }
        free(X);
        free(Y);
    }
    free(buf);
}

/* ---- (b) sgemm and large-T matmul ----------------------------------------- */

/* GFLOP/s of Y[M,N] = X[M,K] · W[N,K]ᵀ through OpenBLAS with nth threads of
 * its own. */
static double bench_sgemm(int M, int N, int K, int nth) {
    float *X = rand_floats((size_t)M * K, 2), *W = rand_floats((size_t)N * K, 3);
    float *Y = xalloc((size_t)M * N * sizeof(float));
    openblas_set_num_threads(nth);
    double t[16];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, X, K, W, K, 0.0f, Y, N);
    for (int r = 0; r < g_runs; r++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, X, K, W, K, 0.0f, Y, N);
        t[r] = now() - t0;
    }
    /* mc_cpu_matmul expects (and keeps) OpenBLAS at one thread. */
    openblas_set_num_threads(1);
    free(X);
    free(W);
    free(Y);
    return 2.0 * M * N * K / median(t, g_runs) * 1e-9;
}

/* A weight [rows, cols] of dtype dt filled from random floats. */
static mc_tensor make_weight(moecl_dtype dt, int64_t rows, int64_t cols) {
    size_t n = (size_t)rows * (size_t)cols, es = dt == MOECL_DTYPE_F32 ? 4 : 2;
    float *f = rand_floats(n, 4);
    void *d = f;
    if (dt != MOECL_DTYPE_F32) {
        uint16_t *h = xalloc(n * 2);
        for (size_t i = 0; i < n; i++)
            h[i] = dt == MOECL_DTYPE_BF16 ? mc_f32_to_bf16(f[i]) : (uint16_t)(0x3800 | (i & 0x3ff)); /* f16 in [0.5,1) */
        free(f);
        d = h;
    }
    return (mc_tensor){.type = dt, .rows = rows, .cols = cols, .data = d, .nbytes = n * es};
}

/* GFLOP/s of mc_cpu_matmul with T rows of X against W. */
static double bench_matmul_w(const mc_tensor *W, int64_t T, int nth, double *seconds) {
    float *X = rand_floats((size_t)(T * W->cols), 5);
    float *Y = xalloc((size_t)(T * W->rows) * sizeof(float));
    size_t ss = mc_cpu_matmul_scratch_size(W, T, nth);
    void *scratch = ss ? xalloc(ss) : NULL;
    double s = time_matmul(W, X, T, Y, nth, scratch);
    free(scratch);
    free(X);
    free(Y);
    if (seconds) *seconds = s;
    return 2.0 * (double)T * (double)W->rows * (double)W->cols / s * 1e-9;
}

static double bench_matmul(moecl_dtype dt, int64_t T, int64_t rows, int64_t cols, int nth) {
    mc_tensor W = make_weight(dt, rows, cols);
    double g = bench_matmul_w(&W, T, nth, NULL);
    free((void *)W.data);
    return g;
}

static void section_gemm(int nmax, bool quick) {
    printf("\n== (b) GFLOP/s, Y[M,N] = X[M,K] · W[N,K]^T, median of %d ==\n", g_runs);
    static const int shapes[][3] = {
        {512, 512, 512}, {1024, 1024, 1024}, {2048, 2048, 2048}, /* square */
        {128, 3584, 1024}, {128, 1024, 3584},                    /* Mixtral-mini expert, 128-token prompt */
    };
    int nshapes = quick ? 4 : 5;
    int ths[2] = {1, nmax};
    int nk = nmax > 1 ? 2 : 1;
    printf("%-16s %-8s %10s %10s %10s %10s %9s\n", "M x N x K", "threads", "sgemm", "mc f32", "mc bf16",
           "mc f16", "f32/sgemm");
    for (int i = 0; i < nshapes; i++) {
        int M = shapes[i][0], N = shapes[i][1], K = shapes[i][2];
        if (quick && M == 2048) continue;
        for (int k = 0; k < nk; k++) {
            double g = bench_sgemm(M, N, K, ths[k]);
            double f32 = bench_matmul(MOECL_DTYPE_F32, M, N, K, ths[k]);
            double bf16 = bench_matmul(MOECL_DTYPE_BF16, M, N, K, ths[k]);
            double f16 = bench_matmul(MOECL_DTYPE_F16, M, N, K, ths[k]);
            char dims[32];
            snprintf(dims, sizeof dims, "%dx%dx%d", M, N, K);
            printf("%-16s %-8d %10.1f %10.1f %10.1f %10.1f %8.0f%%\n", dims, ths[k], g, f32, bf16, f16, 100 * f32 / g);
        }
    }
}

/* ---- (c) T sweep ---------------------------------------------------------- */

static void section_sweep(int nmax, bool quick) {
    if (MC_SMALL_T_BUILD >= 0)
        printf("\n== (c) mc_cpu_matmul GFLOP/s against T; built with -DMC_SMALL_T=%d ==\n", (int)MC_SMALL_T_BUILD);
    else
        printf("\n== (c) mc_cpu_matmul GFLOP/s against T; default MC_SMALL_T ==\n");
    static const int64_t shapes[][2] = {{3584, 1024}, {1024, 3584}, {14336, 4096}, {4096, 14336}};
    static const int64_t Ts[] = {1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256};
    int ths[2] = {1, nmax};
    int nk = nmax > 1 ? 2 : 1;
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        if (quick && si >= 2) continue;
        for (int dt = 0; dt <= MOECL_DTYPE_BF16; dt++) { /* the float types; quantized: see --quant */
            mc_tensor W = make_weight((moecl_dtype)dt, shapes[si][0], shapes[si][1]);
            for (int k = 0; k < nk; k++) {
                printf("rows=%-6lld cols=%-5lld %-4s threads=%d:", (long long)shapes[si][0], (long long)shapes[si][1],
                       moecl_dtype_name((moecl_dtype)dt), ths[k]);
                for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++)
                    printf(" %lld:%.0f", (long long)Ts[ti], bench_matmul_w(&W, Ts[ti], ths[k], NULL));
                printf("\n");
                fflush(stdout);
            }
            free((void *)W.data);
        }
    }
}

/* ---- (d) quantized weights ------------------------------------------------ */

/* A [rows, cols] weight of quantized type dt: 64 rows of uniform random
 * floats quantized, repeated (quantizing them all would take longer than
 * the benchmark). */
static mc_tensor make_quant_weight(moecl_dtype dt, int64_t rows, int64_t cols) {
    size_t rb;
    mc_dtype_row_bytes(dt, cols, &rb);
    char *d = xalloc(rb * (size_t)rows);
    float *f = rand_floats((size_t)cols * 64, 6);
    for (int64_t r = 0; r < rows; r++) {
        if (r < 64) mc_quantize_row(dt, f + r * cols, d + (size_t)r * rb, cols);
        else memcpy(d + (size_t)r * rb, d + (size_t)(r % 64) * rb, rb);
    }
    free(f);
    return (mc_tensor){.type = dt, .rows = rows, .cols = cols, .data = d, .nbytes = rb * (size_t)rows};
}

static void section_quant(int nmax) {
    printf("\n== (d) quantized weights 14336x4096 (rows x cols), median of %d ==\n", g_runs);
    printf("%-5s %-8s %10s %7s %10s %7s %12s %12s\n", "type", "threads", "T=1 GB/s", "of read", "T=2 GB/s",
           "of read", "T=32 GFLOP/s", "T=128 GFLOP/s");
    int ths[2] = {1, nmax};
    for (int dt = MOECL_DTYPE_F32; dt < MOECL_DTYPE_COUNT; dt++) {
        if (dt == MOECL_DTYPE_F16) continue; /* BF16 stands for the 16-bit types */
        mc_tensor W = mc_dtype_block((moecl_dtype)dt) > 1 ? make_quant_weight((moecl_dtype)dt, 14336, 4096)
                                                           : make_weight((moecl_dtype)dt, 14336, 4096);
        for (int k = 0; k < (nmax > 1 ? 2 : 1); k++) {
            double s1, s2;
            bench_matmul_w(&W, 1, ths[k], &s1);
            bench_matmul_w(&W, 2, ths[k], &s2);
            double g32 = bench_matmul_w(&W, 32, ths[k], NULL), g128 = bench_matmul_w(&W, 128, ths[k], NULL);
            double b1 = (double)W.nbytes / s1 * 1e-9, b2 = (double)W.nbytes / s2 * 1e-9;
            double rd = g_read_gbs[k];
            printf("%-5s %-8d %10.1f %6.0f%% %10.1f %6.0f%% %12.1f %12.1f\n", moecl_dtype_name((moecl_dtype)dt), ths[k],
                   b1, rd > 0 ? 100 * b1 / rd : 0, b2, rd > 0 ? 100 * b2 / rd : 0, g32, g128);
            fflush(stdout);
        }
        free((void *)W.data);
    }
}

/* Cost of an mc_pool_for that does nothing: the floor under every
 * multi-threaded kernel call, and what MOECL_SPIN_US changes. */
static void nothing(void *arg, int64_t a, int64_t b, int tid) {
    (void)a, (void)b, (void)tid;
    g_sink = *(const float *)arg;
}

static void section_overhead(int nmax) {
    if (nmax < 2) return;
    enum { N = 201 };
    double t[N];
    for (int r = 0; r < N; r++) {
        static const float zero = 0;
        double t0 = now();
        mc_pool_for(pool_of(nmax), nmax, MC_POOL_STATIC, 1, nmax, nothing, (void *)&zero);
        t[r] = now() - t0;
        /* what a decode step does between kernels: a little serial work */
        double t1 = now();
        while (now() - t1 < 50e-6) {
        }
    }
    printf("empty mc_pool_for (%d threads, after 50 us of serial work): %.1f us median\n", nmax,
           median(t, N) * 1e6);
}

/* --act-error: what 8-bit activations cost in accuracy. One Gaussian row
 * against a Gaussian 4096x4096 weight in each quantized type, the default
 * kernels (int8 activations wherever the CPU has int8 kernels: AVX2 and
 * up) against the float kernels on the same quantized weight. */
static double gauss(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    double u = ((double)(*s >> 11) + 0.5) / 9007199254740992.0;
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    double v = (double)(*s >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static void section_act_error(void) {
    const int64_t rows = 4096, cols = 4096;
    float *w = xalloc((size_t)(rows * cols) * sizeof(float)), *x = xalloc((size_t)cols * sizeof(float));
    float *y0 = xalloc((size_t)rows * sizeof(float)), *y1 = xalloc((size_t)rows * sizeof(float));
    uint64_t s = 7;
    for (int64_t i = 0; i < rows * cols; i++) w[i] = (float)gauss(&s);
    for (int64_t i = 0; i < cols; i++) x[i] = (float)gauss(&s);
    printf("8-bit activations vs float activations, T=1, 4096x4096 Gaussian (RMS error / RMS output):\n");
    for (int t = MOECL_DTYPE_Q8_0; t < MOECL_DTYPE_COUNT; t++) {
        size_t rb = 0;
        mc_dtype_row_bytes((moecl_dtype)t, cols, &rb);
        char *q = xalloc(rb * (size_t)rows);
        for (int64_t r = 0; r < rows; r++) mc_quantize_row((moecl_dtype)t, w + r * cols, q + (size_t)r * rb, cols);
        mc_tensor W = {.type = (moecl_dtype)t, .rows = rows, .cols = cols, .data = q, .nbytes = rb * (size_t)rows};
        mc_cpu_force_scalar(true);
        mc_cpu_matmul(&W, x, 1, y0, NULL, NULL);
        mc_cpu_force_scalar(false);
        mc_cpu_matmul(&W, x, 1, y1, NULL, NULL);
        double se = 0, sr = 0;
        for (int64_t r = 0; r < rows; r++) {
            se += ((double)y1[r] - y0[r]) * ((double)y1[r] - y0[r]);
            sr += (double)y0[r] * y0[r];
        }
        printf("  %-5s %.2e%s\n", moecl_dtype_name((moecl_dtype)t), sqrt(se / sr),
               mc_cpu_quant_int8((moecl_dtype)t, 1) ? "" : "  (float path on this CPU: no int8 kernels)");
        free(q);
    }
    /* The activations' own rounding, whatever the kernels: x rounded to int8
     * with one float scale per 32 values (what moecl does) or per 256 (as
     * llama.cpp's Q8_K for the K-quants), dotted in float64 with the
     * unquantized weights. */
    printf("activation scale per 32 vs per 256 values (RMS error / RMS output, float64 products):\n");
    for (int blk = 32; blk <= 256; blk *= 8) {
        float *xr = xalloc((size_t)cols * sizeof(float));
        for (int64_t j = 0; j < cols; j += blk) {
            float amax = 0;
            for (int i = 0; i < blk; i++) amax = fmaxf(amax, fabsf(x[j + i]));
            const float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
            for (int i = 0; i < blk; i++) xr[j + i] = d * (float)lrintf(x[j + i] * id);
        }
        double se = 0, sr = 0;
        for (int64_t r = 0; r < rows; r++) {
            double a = 0, b = 0;
            for (int64_t c = 0; c < cols; c++) {
                a += (double)w[r * cols + c] * x[c];
                b += (double)w[r * cols + c] * xr[c];
            }
            se += (a - b) * (a - b);
            sr += a * a;
        }
        printf("  per %-3d %.2e\n", blk, sqrt(se / sr));
        free(xr);
    }
    free(w);
    free(x);
    free(y0);
    free(y1);
}

int main(int argc, char **argv) {
    int nmax = mc_pool_default_threads();
    bool quick = false, sweep = false, quant = false, quant_only = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) nmax = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) quick = true;
        else if (!strcmp(argv[i], "--sweep")) sweep = true;
        else if (!strcmp(argv[i], "--quant")) quant = true;
        else if (!strcmp(argv[i], "--quant-only")) quant = quant_only = true;
        else if (!strcmp(argv[i], "--act-error")) {
            section_act_error();
            return 0;
        } else {
            fprintf(stderr, "usage: bench-blas [--threads N] [--quick] [--sweep] [--quant | --quant-only] [--act-error]\n");
            return 2;
        }
    }
    if (nmax < 1) nmax = 1;
    if (nmax > 64) nmax = 64;
    if (quick) g_runs = 3;

    printf("OpenBLAS core: %s\nOpenBLAS config: %s\n", openblas_get_corename(), openblas_get_config());
    printf("kernels ISA: %s   int8 kernels: %s   physical cores: %d   threads measured: 1 and %d   spin: %d us\n",
           mc_cpu_isa(), mc_cpu_int8_kernels(), mc_pool_default_threads(), nmax, mc_pool_spin_us());
    openblas_set_num_threads(1);
    section_overhead(nmax);
    section_memory(quick ? (size_t)256 << 20 : (size_t)1 << 30, nmax);
    if (!quant_only) section_gemm(nmax, quick);
    if (sweep) section_sweep(nmax, quick);
    if (quant) section_quant(nmax);
    return 0;
}
