/*
 * backend.c - choosing backends for a context.
 */
#include "backend/backend.h"

#include <cblas.h>
#include <pthread.h>
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
