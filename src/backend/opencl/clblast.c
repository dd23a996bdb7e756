/*
 * clblast.c - CLBlast's SGEMM, opened at run time like OpenCL itself.
 *
 * libmoecl neither links CLBlast nor needs its headers: the one entry point
 * used, CLBlastSgemm, is declared here from CLBlast's C API (clblast_c.h,
 * 1.x: enums are C ints, status 0 is success). The first call of
 * mc_clblast_available() dlopens $MOECL_CLBLAST_LIBRARY if set, else
 * libclblast.so.1, else libclblast.so. CLBlast links the ICD loader itself;
 * it must be the same libOpenCL.so.1 moecl opened (the default), so that
 * buffers and queues are shared. Built with -Dclblast=false, this file
 * reports CLBlast unavailable and opens nothing.
 */
#include "backend/opencl/opencl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* clblast_c.h: CLBlastLayoutRowMajor 101, CLBlastTransposeNo 111, CLBlastTransposeYes 112 */
enum { BLAST_ROW_MAJOR = 101, BLAST_NO_TRANS = 111, BLAST_TRANS = 112 };
typedef int (*sgemm_fn)(int layout, int a_transpose, int b_transpose, size_t m, size_t n, size_t k, float alpha,
                        cl_mem a, size_t a_offset, size_t a_ld, cl_mem b, size_t b_offset, size_t b_ld, float beta,
                        cl_mem c, size_t c_offset, size_t c_ld, cl_command_queue *queue, cl_event *event);

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static sgemm_fn g_sgemm;

static void load(void) {
#if MOECL_CLBLAST
    const char *env = getenv("MOECL_CLBLAST_LIBRARY");
    const char *names[3] = {env && *env ? env : "libclblast.so.1", "libclblast.so", NULL};
    for (int i = 0; names[i] && !g_sgemm; i++) {
        void *lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!lib) continue;
        void *sym = dlsym(lib, "CLBlastSgemm");
        if (sym) {
            memcpy(&g_sgemm, &sym, sizeof sym); /* POSIX: a data pointer from dlsym holds a function's address */
            mc_log(MOECL_LOG_DEBUG, "opencl: loaded %s", names[i]);
        } else {
            dlclose(lib);
        }
        if (env && *env) break; /* a library named is the only one tried */
    }
    if (!g_sgemm) mc_log(MOECL_LOG_DEBUG, "opencl: CLBlast is not installed; our kernels do every product");
#endif
}

bool mc_clblast_available(void) {
    pthread_once(&g_once, load);
    return g_sgemm != NULL;
}

int mc_clblast_sgemm_nt(cl_command_queue queue, size_t m, size_t n, size_t k, cl_mem a, size_t a_off, cl_mem b,
                        size_t b_off, cl_mem c, size_t c_off) {
    if (!mc_clblast_available()) return -1;
    return g_sgemm(BLAST_ROW_MAJOR, BLAST_NO_TRANS, BLAST_TRANS, m, n, k, 1.0f, a, a_off, k, b, b_off, k, 0.0f, c,
                   c_off, n, &queue, NULL);
}
