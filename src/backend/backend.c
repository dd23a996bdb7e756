/*
 * backend.c - choosing backends for a context.
 */
#include "backend/backend.h"
#include "backend/opencl/opencl.h"

#include <cblas.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Debian's OpenBLAS picks its kernels from the CPU it detects; an unknown
 * CPU falls back to a generic core (Prescott) that runs sgemm several times
 * slower. Say so once, with the fix, rather than run slowly in silence. */
char *openblas_get_corename(void);

/* Once a process, however many contexts are made on however many threads:
 * pthread_once also orders it before every later call (a plain static flag
 * was a data race between two contexts created at once). */
static pthread_once_t g_blas_once = PTHREAD_ONCE_INIT;

static void blas_init(void) {
    /* The CPU kernels call sgemm from their own OpenMP threads, so OpenBLAS
     * must not start threads of its own. The setting is process-wide: made
     * here once, before any context runs, so that the per-call check in
     * kernels.c finds it made and never writes it from two threads. */
    openblas_set_num_threads(1);
    const char *core = openblas_get_corename();
    if (!core) return;
#if defined(__x86_64__)
    __builtin_cpu_init();
    bool generic = !strcmp(core, "Prescott") || !strcmp(core, "Core2") || !strcmp(core, "Nehalem") ||
                   !strcmp(core, "Katmai") || !strcmp(core, "Northwood") || !strcmp(core, "Banias") ||
                   !strcmp(core, "Atom");
    if (generic && __builtin_cpu_supports("avx2"))
        mc_log(MOECL_LOG_WARN,
               "OpenBLAS chose the generic '%s' kernels on a CPU with AVX2; matrix products will be slow. "
               "Set OPENBLAS_CORETYPE=%s before starting the program.",
               core, __builtin_cpu_supports("avx512f") ? "SkylakeX" : "Haswell");
#endif
}

void mc_backend_check_blas(void) { pthread_once(&g_blas_once, blas_init); }

/* ------------------------------------------------------------------------ */
/* The host's read bandwidth, for the placement planner                     */
/* ------------------------------------------------------------------------ */

typedef struct host_probe {
    uint32_t version, n_threads;
    double read_bps;
} host_probe;

/* The host probe's reads: 16-float groups [g0, g1) summed into part[tid]. */
typedef struct probe_job {
    const float *buf;
    size_t n;
    double *part;
} probe_job;

static void probe_chunk(void *arg, int64_t g0, int64_t g1, int tid) {
    const probe_job *j = arg;
    double s = 0;
    for (int64_t g = g0; g < g1; g++) {
        float a = 0;
        for (int k = 0; k < 16; k++) a += j->buf[(size_t)g * 16 + (size_t)k];
        s += a;
    }
    j->part[tid] += s;
}

/* n_threads sum a buffer larger than the last-level cache (written first:
 * calloc's untouched pages all map one zero page, which stays in cache);
 * best of 4 after a warm-up. Cached beside the OpenCL programs, per thread
 * count; $MOECL_HOST_BW=GBPS sets it (tests), =off leaves it unknown (0). */
static pthread_mutex_t g_host_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_host_threads;   /* the last measurement of this process, also when the cache is off */
static double g_host_bps;

static double host_read_bps(int n_threads);

double mc_host_read_bps(int n_threads) {
    const char *env = getenv("MOECL_HOST_BW");
    if (env && !strcmp(env, "off")) return 0;
    if (env && atof(env) > 0) return atof(env) * 1e9;
    pthread_mutex_lock(&g_host_mu); /* one measurement at a time: two would halve each other's figure */
    if (g_host_threads != n_threads || g_host_bps <= 0) {
        g_host_bps = host_read_bps(n_threads);
        g_host_threads = n_threads;
    }
    const double bps = g_host_bps;
    pthread_mutex_unlock(&g_host_mu);
    return bps;
}

static double host_read_bps(int n_threads) {
    char name[48];
    snprintf(name, sizeof name, "host-probe-%d", n_threads);
    host_probe hp;
    if (mc_cl_available() && mc_cl_cache_blob_load(NULL, name, &hp, sizeof hp) && hp.version == 1 &&
        hp.n_threads == (uint32_t)n_threads && hp.read_bps > 0 && hp.read_bps < 1e14)
        return hp.read_bps;
    const size_t n = ((size_t)128 << 20) / sizeof(float);
    float *buf = malloc(n * sizeof(float));
    if (!buf) return 0;
    memset(buf, 1, n * sizeof(float));
    mc_pool *pool = NULL;
    if (mc_pool_new(n_threads, &pool) != MOECL_OK) pool = NULL; /* measured on one thread then */
    enum { MAX_T = 1024 };
    double part[MAX_T]; /* per pool thread: the pool has at most n_threads <= MAX_T used */
    probe_job j = {.buf = buf, .n = n, .part = part};
    double best = 0, sink = 0;
    for (int it = 0; it < 5; it++) {
        const int64_t t0 = mc_now_ns();
        memset(part, 0, sizeof part);
        mc_pool_for(pool, (int64_t)(n / 16), MC_POOL_STATIC, 1, n_threads < MAX_T ? n_threads : MAX_T, probe_chunk, &j);
        double s = 0;
        for (int t = 0; t < MAX_T; t++) s += part[t];
        const double dt = (double)(mc_now_ns() - t0) * 1e-9;
        sink += s;
        if (it > 0 && dt > 0 && (double)(n * sizeof(float)) / dt > best) best = (double)(n * sizeof(float)) / dt;
    }
    mc_pool_free(pool);
    free(buf);
    mc_log(MOECL_LOG_INFO, "host reads %.1f GB/s with %d threads (measured, cached; checksum %g)", best / 1e9,
           n_threads, sink);
    hp = (host_probe){.version = 1, .n_threads = (uint32_t)n_threads, .read_bps = best};
    if (mc_cl_available()) mc_cl_cache_blob_store(NULL, name, &hp, sizeof hp);
    return best;
}
