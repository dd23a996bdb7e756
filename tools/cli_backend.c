/*
 * cli_backend.c - the backend, placement and KV cache options shared by the
 * commands (see cli_backend.h).
 */
#include "cli_backend.h"
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char cli_backend_help[] =
    "  --backend cpu|opencl|auto   auto: an OpenCL GPU if there is one, else the CPU\n"
    "  --device SEL[,SEL...]       device index or name substring (also $MOECL_DEVICE); several\n"
    "                              devices each take a share of the experts under one plan\n"
    "  --gpu-mem MiB               expert weights on the device (default: its memory less headroom)\n"
    "  --gpu-experts N             at most N experts per layer on the device\n"
    "  --device-dtype f32|f16      storage of expert weights on the device\n"
    "  --placement auto|experts|dense  what the planner puts on the devices (dense: the dense layers first)\n"
    "  --expert-profile FILE       routing frequencies (moecl stats --save-profile): hot experts\n"
    "                              go to the devices first\n"
    "  --calibrate TEXTFILE        measure the routing frequencies on this text first (up to 8192\n"
    "                              tokens on the CPU), then place by them\n"
    "  --kv-type f32|f16           KV cache cells (f16: half the memory; README: Limits and promises)\n"
    "  --kv-cells N                KV cells shared by all sequences (default: every sequence full)\n";

void cli_backend_init(cli_backend *b) {
    memset(b, 0, sizeof *b);
    b->backend = MOECL_BACKEND_AUTO;
    b->gpu_mem_mib = -1;
    b->gpu_experts = -1;
    b->device_dtype = MOECL_DTYPE_COUNT;
    b->placement = MOECL_PLACEMENT_AUTO;
    b->kv_type = MOECL_DTYPE_F32;
}

/* One of the names in names[0..n) (separated by '|' in the message): its index. */
static int pick(const char *v, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(v, names[i])) return i;
    return -1;
}

int cli_backend_option(cli_backend *b, const char *a, const char *v, char *err, size_t n_err) {
    static const char *const backends[] = {"auto", "cpu", "opencl"};
    static const moecl_backend_type backend_of[] = {MOECL_BACKEND_AUTO, MOECL_BACKEND_CPU, MOECL_BACKEND_OPENCL};
    static const char *const placements[] = {"auto", "experts", "dense"};
    static const moecl_placement placement_of[] = {MOECL_PLACEMENT_AUTO, MOECL_PLACEMENT_EXPERTS,
                                                   MOECL_PLACEMENT_DENSE};
    static const char *const dtypes[] = {"f32", "f16"};
    static const moecl_dtype dtype_of[] = {MOECL_DTYPE_F32, MOECL_DTYPE_F16};
    static const char *const known[] = {"--backend", "--device", "--gpu-mem", "--gpu-experts", "--device-dtype",
                                        "--placement", "--expert-profile", "--calibrate", "--kv-type", "--kv-cells"};
    const int k = pick(a, known, (int)(sizeof known / sizeof *known));
    if (k < 0) return 0;
    if (!v) {
        snprintf(err, n_err, "option %s needs a value", a);
        return -1;
    }
    int i = 0;
    bool ok = true;
    const char *what = NULL, *allowed = NULL; /* a name from a list; else a number from lo to hi */
    long lo = 0, hi = INT_MAX;
    switch (k) {
    case 0:
        what = "backend", allowed = "cpu, opencl, auto";
        if ((ok = (i = pick(v, backends, 3)) >= 0)) b->backend = backend_of[i];
        break;
    case 1: b->device = v; break;
    case 2: ok = cli_parse_int(v, lo, hi, &b->gpu_mem_mib); break;
    case 3: hi = 1 << 20, ok = cli_parse_int(v, lo, hi, &b->gpu_experts); break;
    case 4:
        what = "device dtype", allowed = "f32, f16";
        if ((ok = (i = pick(v, dtypes, 2)) >= 0)) b->device_dtype = dtype_of[i];
        break;
    case 5:
        what = "placement", allowed = "auto, experts, dense";
        if ((ok = (i = pick(v, placements, 3)) >= 0)) b->placement = placement_of[i];
        break;
    case 6: b->expert_profile = v; break;
    case 7: b->calibrate = v; break;
    case 8:
        what = "KV cache type", allowed = "f32, f16";
        if ((ok = (i = pick(v, dtypes, 2)) >= 0)) b->kv_type = dtype_of[i];
        break;
    case 9: lo = 1, ok = cli_parse_int(v, lo, hi, &b->kv_cells); break;
    }
    if (!ok && what) snprintf(err, n_err, "unknown %s %s (%s)", what, v, allowed);
    else if (!ok) snprintf(err, n_err, "option %s: '%s' is not a whole number from %ld to %ld", a, v, lo, hi);
    if (!ok) return -1;
    return 2;
}

moecl_status cli_backend_load_freq(const cli_backend *b, const moecl_model *model, int n_threads, float **freq) {
    *freq = NULL;
    if (!b->expert_profile && !b->calibrate) return MOECL_OK;
    if (b->expert_profile && b->calibrate) {
        fprintf(stderr, "moecl: --expert-profile and --calibrate both give the routing frequencies: use one\n");
        return MOECL_ERR_INVALID_ARG;
    }
    moecl_model_info in;
    moecl_status st = moecl_model_get_info(model, &in);
    if (st) return st;
    float *f = calloc((size_t)in.n_layer * (size_t)in.n_expert, sizeof *f);
    if (!f) return MOECL_ERR_NOMEM;
    st = b->expert_profile ? moecl_expert_profile_load(model, b->expert_profile, f)
                           : cli_calibrate_freq(model, b->calibrate, n_threads, f);
    if (st) {
        free(f);
        return st;
    }
    *freq = f;
    return MOECL_OK;
}

void cli_backend_apply(const cli_backend *b, const float *freq, moecl_context_params *cp) {
    cp->backend = b->backend;
    cp->device = b->device;
    if (b->gpu_mem_mib >= 0) cp->gpu_mem_mib = b->gpu_mem_mib;
    if (b->gpu_experts >= 0) cp->gpu_experts = b->gpu_experts;
    if (b->device_dtype != MOECL_DTYPE_COUNT) cp->device_dtype = b->device_dtype;
    cp->placement = b->placement;
    cp->expert_freq = freq;
    cp->kv_type = b->kv_type;
    cp->n_kv_cells = (uint32_t)b->kv_cells;
}
