/*
 * cl_loader.c - the OpenCL ICD loader, opened at run time.
 *
 * libmoecl has no NEEDED libOpenCL: an application that embeds it must
 * start, and run on the CPU, on a machine without any OpenCL installed.
 * The first caller of mc_cl_available() dlopens the library and resolves
 * every entry point of MC_CL_ENTRY_POINTS (opencl.h) into mc_cl; a library
 * that cannot be opened, or lacks one of them, leaves OpenCL unavailable and
 * the reason in mc_cl_unavailable_reason(), logged once at INFO.
 *
 * $MOECL_OPENCL_LIBRARY names the library to open instead (a path or a
 * soname); the tests set it to a file that does not exist to run the CPU
 * suite as on a machine without OpenCL.
 */
#define MC_CL_LOADER /* the cl* names stay the header's declarations here */
#include "backend/opencl/opencl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mc_cl_api mc_cl;

_Static_assert(sizeof(void *) == sizeof(void (*)(void)), "dlsym's result must hold a function pointer");

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static bool g_available;
static char g_reason[1024]; /* "" when available */

/* Open the first library of names[0..n) that loads; the dlerror() of each
 * failure appended to why. */
static void *open_first(const char *const *names, int n, char *why, size_t len, const char **opened) {
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        void *lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (lib) {
            *opened = names[i];
            return lib;
        }
        const char *e = dlerror();
        if (used < len)
            used += (size_t)snprintf(why + used, len - used, "%s%s", i ? "; " : "", e ? e : names[i]);
    }
    return NULL;
}

static void load(void) {
    const char *env = getenv("MOECL_OPENCL_LIBRARY");
    const char *defaults[2] = {"libOpenCL.so.1", "libOpenCL.so"};
    const char *const *names = defaults;
    int n = 2;
    if (env && *env) {
        names = &env;
        n = 1;
    }
    char why[768] = "";
    const char *opened = NULL;
    void *lib = open_first(names, n, why, sizeof why, &opened);
    if (!lib) {
        snprintf(g_reason, sizeof g_reason, "cannot load the OpenCL library (%s)", why);
        mc_log(MOECL_LOG_INFO, "opencl: unavailable: %s", g_reason);
        return;
    }
    mc_cl_api api;
    memset(&api, 0, sizeof api);
    void *sym;
#define MC_CL_RESOLVE(name)                                                                                  \
    if (!(sym = dlsym(lib, "cl" #name))) {                                                                   \
        const char *e = dlerror();                                                                           \
        snprintf(g_reason, sizeof g_reason, "the OpenCL library %s lacks cl" #name " (%s)", opened,           \
                 e ? e : "no such symbol");                                                                  \
        mc_log(MOECL_LOG_INFO, "opencl: unavailable: %s", g_reason);                                        \
        dlclose(lib);                                                                                        \
        return;                                                                                              \
    }                                                                                                        \
    memcpy(&api.name, &sym, sizeof sym); /* POSIX: a data pointer from dlsym holds a function's address */
    MC_CL_ENTRY_POINTS(MC_CL_RESOLVE)
#undef MC_CL_RESOLVE
    mc_cl = api; /* published to other threads by pthread_once's return */
    g_available = true;
    mc_log(MOECL_LOG_DEBUG, "opencl: loaded %s", opened);
}

bool mc_cl_available(void) {
    pthread_once(&g_once, load);
    return g_available;
}

const char *mc_cl_unavailable_reason(void) {
    pthread_once(&g_once, load);
    return g_reason;
}
