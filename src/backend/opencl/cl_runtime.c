/*
 * cl_runtime.c - OpenCL devices, kernel sources and program builds.
 */
#include "backend/opencl/opencl.h"
#include "formats/atomic_file.h"

#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *mc_cl_strerror(cl_int err) {
    switch (err) {
#define E(x) case x: return #x;
        E(CL_SUCCESS) E(CL_DEVICE_NOT_FOUND) E(CL_DEVICE_NOT_AVAILABLE) E(CL_COMPILER_NOT_AVAILABLE)
        E(CL_MEM_OBJECT_ALLOCATION_FAILURE) E(CL_OUT_OF_RESOURCES) E(CL_OUT_OF_HOST_MEMORY)
        E(CL_BUILD_PROGRAM_FAILURE) E(CL_INVALID_VALUE) E(CL_INVALID_PLATFORM) E(CL_INVALID_DEVICE)
        E(CL_INVALID_CONTEXT) E(CL_INVALID_COMMAND_QUEUE) E(CL_INVALID_MEM_OBJECT) E(CL_INVALID_BINARY)
        E(CL_INVALID_BUILD_OPTIONS) E(CL_INVALID_PROGRAM) E(CL_INVALID_KERNEL_NAME) E(CL_INVALID_KERNEL)
        E(CL_INVALID_ARG_INDEX) E(CL_INVALID_ARG_VALUE) E(CL_INVALID_ARG_SIZE) E(CL_INVALID_KERNEL_ARGS)
        E(CL_INVALID_WORK_DIMENSION) E(CL_INVALID_WORK_GROUP_SIZE) E(CL_INVALID_WORK_ITEM_SIZE)
        E(CL_INVALID_GLOBAL_OFFSET) E(CL_INVALID_EVENT_WAIT_LIST) E(CL_INVALID_OPERATION)
        E(CL_INVALID_BUFFER_SIZE) E(CL_INVALID_GLOBAL_WORK_SIZE)
#undef E
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
    default: return "unknown OpenCL error";
    }
}

/* ------------------------------------------------------------------------ */
/* Devices                                                                  */
/* ------------------------------------------------------------------------ */

/* A string property, cut to len (the call fails on a buffer too small). */
static void info_str(cl_device_id d, cl_device_info what, char *buf, size_t len) {
    char tmp[1024];
    if (clGetDeviceInfo(d, what, sizeof tmp, tmp, NULL) != CL_SUCCESS) tmp[0] = '\0';
    tmp[sizeof tmp - 1] = '\0';
    snprintf(buf, len, "%s", tmp);
}

static void describe(cl_platform_id p, cl_device_id d, int index, mc_cl_device *out) {
    memset(out, 0, sizeof *out);
    out->platform = p;
    out->id = d;
    out->index = index;
    char tmp[1024];
    if (clGetPlatformInfo(p, CL_PLATFORM_NAME, sizeof tmp, tmp, NULL) != CL_SUCCESS) tmp[0] = '\0';
    tmp[sizeof tmp - 1] = '\0';
    snprintf(out->platform_name, sizeof out->platform_name, "%s", tmp);
    if (clGetPlatformInfo(p, CL_PLATFORM_VENDOR, sizeof tmp, tmp, NULL) != CL_SUCCESS) tmp[0] = '\0';
    tmp[sizeof tmp - 1] = '\0';
    snprintf(out->platform_vendor, sizeof out->platform_vendor, "%s", tmp);
    info_str(d, CL_DEVICE_VENDOR, out->vendor, sizeof out->vendor);
    info_str(d, CL_DEVICE_NAME, out->name, sizeof out->name);
    info_str(d, CL_DEVICE_VERSION, out->version, sizeof out->version);
    info_str(d, CL_DRIVER_VERSION, out->driver, sizeof out->driver);
    cl_device_type type = 0;
    cl_ulong mem = 0, alloc = 0;
    cl_uint cu = 0;
    clGetDeviceInfo(d, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    clGetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, NULL);
    clGetDeviceInfo(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof alloc, &alloc, NULL);
    clGetDeviceInfo(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, NULL);
    out->is_gpu = (type & CL_DEVICE_TYPE_GPU) != 0;
    out->global_mem = mem;
    out->max_alloc = alloc;
    out->compute_units = (int)cu;
    char clc[128];
    int major = 0, minor = 0;
    info_str(d, CL_DEVICE_OPENCL_C_VERSION, clc, sizeof clc); /* "OpenCL C 1.2 PoCL" */
    if (sscanf(clc, "OpenCL C %d.%d", &major, &minor) == 2) out->clc_version = major * 10 + minor;
    size_t wg = 0;
    cl_ulong local = 0;
    cl_bool avail = CL_FALSE, comp = CL_FALSE;
    clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
    clGetDeviceInfo(d, CL_DEVICE_LOCAL_MEM_SIZE, sizeof local, &local, NULL);
    clGetDeviceInfo(d, CL_DEVICE_AVAILABLE, sizeof avail, &avail, NULL);
    clGetDeviceInfo(d, CL_DEVICE_COMPILER_AVAILABLE, sizeof comp, &comp, NULL);
    out->max_wg = wg;
    out->local_mem = local;
    out->available = avail && comp;
    size_t n = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, 0, NULL, &n) == CL_SUCCESS && n) {
        char *ext = malloc(n + 1);
        if (ext && clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, n, ext, NULL) == CL_SUCCESS) {
            ext[n] = '\0';
            out->fp16 = strstr(ext, "cl_khr_fp16") != NULL;
        }
        free(ext);
    }
}

int mc_cl_devices(mc_cl_device *out, int cap) {
    if (!mc_cl_available()) return 0;
    cl_uint np = 0;
    if (clGetPlatformIDs(0, NULL, &np) != CL_SUCCESS || np == 0) return 0;
    cl_platform_id *plats = calloc(np, sizeof *plats);
    if (!plats || clGetPlatformIDs(np, plats, NULL) != CL_SUCCESS) {
        free(plats);
        return 0;
    }
    int count = 0;
    for (cl_uint p = 0; p < np; p++) {
        cl_uint nd = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd) != CL_SUCCESS || nd == 0) continue;
        cl_device_id *devs = calloc(nd, sizeof *devs);
        if (devs && clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, nd, devs, NULL) == CL_SUCCESS)
            for (cl_uint d = 0; d < nd; d++, count++)
                if (count < cap) describe(plats[p], devs[d], count, &out[count]);
        free(devs);
    }
    free(plats);
    return count;
}

static bool contains_nocase(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0) return true;
    return n == 0;
}

#define MAX_DEVICES 64

moecl_status mc_cl_select(const char *selector, bool gpu_only, mc_cl_device *out) {
    if (!mc_cl_available())
        return mc_error(MOECL_ERR_BACKEND, "opencl: the OpenCL backend is unavailable: %s", mc_cl_unavailable_reason());
    mc_cl_device *all = calloc(MAX_DEVICES, sizeof *all);
    if (!all) return mc_error(MOECL_ERR_NOMEM, "opencl: out of memory");
    int n = mc_cl_devices(all, MAX_DEVICES);
    if (n > MAX_DEVICES) n = MAX_DEVICES;
    if (n == 0) {
        free(all);
        return mc_error(MOECL_ERR_BACKEND, "opencl: no OpenCL platform or device found (is an ICD installed?)");
    }
    int pick = -1;
    bool is_index = selector && *selector;
    for (const char *s = selector; is_index && *s; s++) is_index = isdigit((unsigned char)*s);
    if (is_index) {
        long i = strtol(selector, NULL, 10);
        if (i >= 0 && i < n) pick = (int)i;
    } else if (!selector || !*selector) { /* the first GPU; else, if allowed, the first device */
        for (int i = 0; i < n && pick < 0; i++)
            if (all[i].is_gpu) pick = i;
        if (pick < 0 && !gpu_only) pick = 0;
    } else {
        for (int i = 0; i < n && pick < 0; i++) {
            char label[520];
            snprintf(label, sizeof label, "%s %s %s %s", all[i].platform_name, all[i].platform_vendor, all[i].vendor,
                     all[i].name);
            if (contains_nocase(label, selector)) pick = i;
        }
    }
    if (pick < 0) {
        char list[2048];
        size_t len = 0;
        list[0] = '\0';
        for (int i = 0; i < n && len < sizeof list - 1; i++)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%d: %s / %s%s", i ? "; " : "", i,
                                    all[i].platform_name, all[i].name, all[i].is_gpu ? " (GPU)" : "");
        free(all);
        if (!selector || !*selector)
            return mc_error(MOECL_ERR_BACKEND, "opencl: no GPU device (devices: %s)", list);
        return mc_error(MOECL_ERR_BACKEND, "opencl: no device matches '%s' (devices: %s)", selector, list);
    }
    *out = all[pick];
    free(all);
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Programs                                                                 */
/* ------------------------------------------------------------------------ */

/* The source of a kernel file: from $MOECL_CL_DIR if set (malloc'd into
 * *owned), else embedded. NULL with the error recorded if missing. */
static const char *source_text(const char *file, char **owned) {
    *owned = NULL;
    const char *dir = getenv("MOECL_CL_DIR");
    if (dir && *dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, file);
        FILE *f = fopen(path, "rb");
        if (!f) {
            mc_error(MOECL_ERR_IO, "opencl: cannot open %s (MOECL_CL_DIR)", path);
            return NULL;
        }
        char *buf = NULL;
        long n = -1;
        if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0)
            buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        fclose(f);
        if (!buf) {
            mc_error(MOECL_ERR_IO, "opencl: cannot read %s", path);
            return NULL;
        }
        buf[n] = '\0';
        mc_log(MOECL_LOG_INFO, "opencl: kernels from %s", path);
        *owned = buf;
        return buf;
    }
    for (const mc_cl_source *s = mc_cl_sources; s->name; s++)
        if (!strcmp(s->name, file)) return s->text;
    mc_error(MOECL_ERR_BACKEND, "opencl: no embedded kernel file %s", file);
    return NULL;
}

/* ---- the on-disk cache of program binaries --------------------------------
 * <dir>/<file>-<key>.bin, dir: $MOECL_CACHE_DIR, else $XDG_CACHE_HOME/moecl,
 * else ~/.cache/moecl; key: FNV-1a 64 of platform, device, device version,
 * driver version, source text and build options.
 *
 * Drivers trust a binary handed to them: PoCL aborts the process on a
 * truncated one, rusticl panics on a damaged one. So each file carries a
 * header, checked before the driver sees a byte:
 *
 *   offset  size  field
 *        0     8  magic "MOECLBIN"
 *        8     4  format version (1), little-endian
 *       12     4  header size (32)
 *       16     8  payload length in bytes
 *       24     8  FNV-1a 64 of the payload
 *       32     …  the driver's binary (CL_PROGRAM_BINARIES)
 *
 * A file that fails the check, does not build, or lacks a kernel the caller
 * needs is removed and the program compiled again from source, with a
 * warning naming the file. MOECL_CL_CACHE=0 (or off) disables the cache;
 * MOECL_CL_CACHE=off:NAME[,NAME...] disables it for the devices whose
 * platform, vendor, name or driver version contains one of the NAMEs. */

#define CACHE_MAGIC "MOECLBIN"
#define CACHE_VERSION 1u
#define CACHE_HEADER 32u
#define CACHE_MAX_BYTES ((uint64_t)1 << 30) /* far beyond any program binary seen (PoCL: ~2 MB) */

static uint64_t fnv1a(uint64_t h, const char *s) {
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return (h ^ 0xff) * 0x100000001b3ull; /* a separator, so fields cannot run together */
}

static uint64_t fnv1a_bytes(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void put_le(unsigned char *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* MOECL_CL_CACHE: unset, "1", "on": on; "0", "off": off; "off:a,b": off for
 * the devices a or b names. */
static bool cache_enabled(const mc_cl_device *dev) {
    const char *v = getenv("MOECL_CL_CACHE");
    if (!v || !*v) return true;
    if (!strcmp(v, "off") || !strcmp(v, "0")) return false;
    if (strncmp(v, "off:", 4) != 0) return true;
    char label[600];
    snprintf(label, sizeof label, "%s %s %s %s", dev->platform_name, dev->platform_vendor, dev->name, dev->driver);
    for (const char *p = v + 4; *p;) {
        size_t n = strcspn(p, ",");
        char name[128];
        if (n > 0 && n < sizeof name) {
            memcpy(name, p, n);
            name[n] = '\0';
            if (contains_nocase(label, name)) return false;
        }
        p += n + (p[n] == ',');
    }
    return true;
}

static bool cache_path(const mc_cl_device *dev, const char *file, const char *text, const char *opts, char *path,
                       size_t len) {
    if (!cache_enabled(dev)) return false;
    char dir[2048];
    const char *env = getenv("MOECL_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (env && *env) snprintf(dir, sizeof dir, "%s", env);
    else if (xdg && *xdg) snprintf(dir, sizeof dir, "%s/moecl", xdg);
    else if (home && *home) snprintf(dir, sizeof dir, "%s/.cache/moecl", home);
    else return false;
    uint64_t h = 0xcbf29ce484222325ull;
    const char *parts[6] = {dev->platform_name, dev->name, dev->version, dev->driver, text, opts};
    for (int i = 0; i < 6; i++) h = fnv1a(h, parts[i]);
    /* make the directory and its parents (ignore "exists") */
    for (char *p = dir + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(dir, 0755);
            *p = '/';
        }
    mkdir(dir, 0755);
    return snprintf(path, len, "%s/%s-%016llx.bin", dir, file, (unsigned long long)h) < (int)len;
}

/* The payload of a cache file whose header checks out (malloc'd, *n bytes);
 * NULL with *why set otherwise, *why "" when there is no file. */
static unsigned char *cache_read(const char *path, size_t *n, const char **why) {
    *why = "";
    /* O_NONBLOCK: a FIFO put in the cache must not hang the open */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat sb;
    unsigned char hdr[CACHE_HEADER], *bin = NULL;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) *why = "not a regular file";
    else if ((uint64_t)sb.st_size < CACHE_HEADER || read(fd, hdr, CACHE_HEADER) != (ssize_t)CACHE_HEADER)
        *why = "shorter than its header";
    else if (memcmp(hdr, CACHE_MAGIC, 8) != 0) *why = "no moecl cache header";
    else if (get_le(hdr + 8, 4) != CACHE_VERSION || get_le(hdr + 12, 4) != CACHE_HEADER) *why = "another format version";
    else if (get_le(hdr + 16, 8) > CACHE_MAX_BYTES || get_le(hdr + 16, 8) == 0) *why = "a length out of range";
    else if (get_le(hdr + 16, 8) != (uint64_t)sb.st_size - CACHE_HEADER) *why = "truncated or extended: its length differs";
    else if (!(bin = malloc((size_t)get_le(hdr + 16, 8)))) *why = "out of memory";
    if (bin) {
        *n = (size_t)get_le(hdr + 16, 8);
        size_t got = 0;
        while (got < *n) {
            ssize_t k = read(fd, bin + got, *n - got);
            if (k <= 0) break;
            got += (size_t)k;
        }
        if (got != *n) *why = "truncated while reading";
        else if (fnv1a_bytes(bin, *n) != get_le(hdr + 24, 8)) *why = "its checksum does not match";
        if (**why) {
            free(bin);
            bin = NULL;
        }
    }
    close(fd);
    return bin;
}

/* The cached program if it loads, builds and has every kernel named;
 * otherwise NULL, the file removed (it would fail again) and a warning. */
static cl_program cache_load(cl_context ctx, const mc_cl_device *dev, const char *path, const char *opts,
                             const char *const *kernels, int n_kernels) {
    size_t size = 0;
    const char *why;
    unsigned char *bin = cache_read(path, &size, &why);
    if (!bin) {
        if (*why) {
            mc_log(MOECL_LOG_WARN, "opencl: cached binary %s is damaged (%s); removed, compiling again", path, why);
            unlink(path);
        }
        return NULL;
    }
    cl_int status = CL_SUCCESS, err;
    const unsigned char *b = bin;
    cl_program prog = clCreateProgramWithBinary(ctx, 1, &dev->id, &size, &b, &status, &err);
    free(bin);
    if (err == CL_SUCCESS && status == CL_SUCCESS) err = clBuildProgram(prog, 1, &dev->id, opts, NULL, NULL);
    const char *missing = NULL;
    for (int i = 0; i < n_kernels && err == CL_SUCCESS && status == CL_SUCCESS && !missing; i++) {
        cl_kernel k = clCreateKernel(prog, kernels[i], &err);
        if (k) clReleaseKernel(k);
        if (err != CL_SUCCESS) missing = kernels[i];
    }
    if (err != CL_SUCCESS || status != CL_SUCCESS) {
        if (prog) clReleaseProgram(prog);
        mc_log(MOECL_LOG_WARN, "opencl: cached binary %s does not load (%s%s%s); removed, compiling again", path,
               mc_cl_strerror(err != CL_SUCCESS ? err : status), missing ? " for kernel " : "", missing ? missing : "");
        unlink(path);
        return NULL;
    }
    return prog;
}

static void cache_store(cl_program prog, const char *path) {
    size_t size = 0;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) != CL_SUCCESS || !size ||
        size > CACHE_MAX_BYTES)
        return;
    unsigned char *file = malloc(CACHE_HEADER + size);
    if (!file) return;
    unsigned char *bin = file + CACHE_HEADER;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) == CL_SUCCESS) {
        memcpy(file, CACHE_MAGIC, 8);
        put_le(file + 8, CACHE_VERSION, 4);
        put_le(file + 12, CACHE_HEADER, 4);
        put_le(file + 16, size, 8);
        put_le(file + 24, fnv1a_bytes(bin, size), 8);
        if (mc_afile_write_all(path, file, CACHE_HEADER + size, 0) == MOECL_OK)
            mc_log(MOECL_LOG_INFO, "opencl: cached the program binary at %s", path);
        else /* a cache that cannot be written costs a compile next time, nothing more */
            mc_log(MOECL_LOG_INFO, "opencl: not cached: %s", moecl_last_error());
    }
    free(file);
}

/* ---- small measurements kept beside the program binaries -----------------
 * <dir>/<name>-<key>.bin in the same format (header, length, checksum) and
 * written the same atomic way; the key covers the device as a program's
 * does (dev NULL: the host, keyed by name alone). */

static bool blob_path(const mc_cl_device *dev, const char *name, char *path, size_t len) {
    static const mc_cl_device host = {.name = "host"};
    return cache_path(dev ? dev : &host, name, "", "", path, len);
}

bool mc_cl_cache_blob_load(const mc_cl_device *dev, const char *name, void *buf, size_t len) {
    char path[4200];
    if (!blob_path(dev, name, path, sizeof path)) return false;
    size_t n = 0;
    const char *why;
    unsigned char *b = cache_read(path, &n, &why);
    if (!b && *why) {
        mc_log(MOECL_LOG_WARN, "opencl: cached measurement %s is damaged (%s); removed, measuring again", path, why);
        unlink(path);
    }
    bool ok = b && n == len;
    if (ok) memcpy(buf, b, len);
    free(b);
    return ok;
}

void mc_cl_cache_blob_store(const mc_cl_device *dev, const char *name, const void *data, size_t len) {
    char path[4200];
    if (!len || !blob_path(dev, name, path, sizeof path)) return;
    unsigned char *file = malloc(CACHE_HEADER + len);
    if (!file) return;
    memcpy(file, CACHE_MAGIC, 8);
    put_le(file + 8, CACHE_VERSION, 4);
    put_le(file + 12, CACHE_HEADER, 4);
    put_le(file + 16, len, 8);
    memcpy(file + CACHE_HEADER, data, len);
    put_le(file + 24, fnv1a_bytes(file + CACHE_HEADER, len), 8);
    if (mc_afile_write_all(path, file, CACHE_HEADER + len, 0) != MOECL_OK)
        mc_log(MOECL_LOG_INFO, "opencl: measurement not cached: %s", moecl_last_error());
    free(file);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

moecl_status mc_cl_build(cl_context ctx, const mc_cl_device *dev, const char *file, const char *options,
                         const char *const *kernels, int n_kernels, cl_program *out) {
    *out = NULL;
    char *owned;
    const char *text = source_text(file, &owned);
    if (!text) return MOECL_ERR_BACKEND;
    const char *extra = getenv("MOECL_CL_OPTIONS");
    char opts[1024];
    snprintf(opts, sizeof opts, "%s %s", options ? options : "", extra ? extra : "");

    double t0 = now_ms();
    char path[4200];
    bool cached = cache_path(dev, file, text, opts, path, sizeof path);
    cl_program prog = cached ? cache_load(ctx, dev, path, opts, kernels, n_kernels) : NULL;
    if (prog) {
        free(owned);
        mc_log(MOECL_LOG_INFO, "opencl: %s for %s from the cache in %.0f ms (%s)", file, dev->name, now_ms() - t0,
               path);
        *out = prog;
        return MOECL_OK;
    }
    cl_int err;
    prog = clCreateProgramWithSource(ctx, 1, &text, NULL, &err);
    free(owned);
    if (err != CL_SUCCESS)
        return mc_error(MOECL_ERR_BACKEND, "opencl: %s: clCreateProgramWithSource: %s", file, mc_cl_strerror(err));
    err = clBuildProgram(prog, 1, &dev->id, opts, NULL, NULL);
    if (err != CL_SUCCESS) {
        char log[2048] = "";
        clGetProgramBuildInfo(prog, dev->id, CL_PROGRAM_BUILD_LOG, sizeof log, log, NULL);
        log[sizeof log - 1] = '\0';
        clReleaseProgram(prog);
        return mc_error(MOECL_ERR_BACKEND, "opencl: building %s for %s with options '%s' failed: %s%s%s", file,
                        dev->name, opts, mc_cl_strerror(err), log[0] ? ": " : "", log);
    }
    mc_log(MOECL_LOG_INFO, "opencl: compiled %s for %s in %.0f ms", file, dev->name, now_ms() - t0);
    if (cached) cache_store(prog, path);
    *out = prog;
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Public: listing devices                                                  */
/* ------------------------------------------------------------------------ */

int32_t moecl_device_count(void) {
    if (!mc_cl_available()) {
        mc_error(MOECL_ERR_BACKEND, "opencl: %s", mc_cl_unavailable_reason());
        return 0;
    }
    int n = mc_cl_devices(NULL, 0);
    if (n == 0) mc_error(MOECL_ERR_BACKEND, "opencl: no OpenCL platform has a device (is an ICD installed?)");
    return n;
}

moecl_status moecl_device_get_info(int32_t index, moecl_device_info *info) {
    if (!info) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_device_get_info: info is NULL");
    if (index < 0 || index >= MAX_DEVICES)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_device_get_info: no device %d", index);
    mc_cl_device *all = calloc(MAX_DEVICES, sizeof *all);
    if (!all) return mc_error(MOECL_ERR_NOMEM, "moecl_device_get_info: out of memory");
    int n = mc_cl_devices(all, MAX_DEVICES);
    if (index >= n) {
        free(all);
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_device_get_info: no device %d (%d found)", index, n);
    }
    const mc_cl_device *d = &all[index];
    memset(info, 0, sizeof *info);
    snprintf(info->platform, sizeof info->platform, "%s", d->platform_name);
    snprintf(info->vendor, sizeof info->vendor, "%s", d->vendor);
    snprintf(info->name, sizeof info->name, "%s", d->name);
    snprintf(info->version, sizeof info->version, "%s", d->version);
    snprintf(info->driver, sizeof info->driver, "%s", d->driver);
    info->is_gpu = d->is_gpu;
    info->fp16 = d->fp16;
    info->global_mem = d->global_mem;
    info->max_alloc = d->max_alloc;
    info->compute_units = d->compute_units;
    free(all);
    return MOECL_OK;
}
