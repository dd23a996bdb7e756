/*
 * cli_backend.h - the backend, placement and KV cache options that every
 * command running a model accepts (`moecl run`, `chat`, `bench`, `serve`,
 * ...), parsed in one place so they mean the same everywhere.
 */
#ifndef MOECL_CLI_BACKEND_H
#define MOECL_CLI_BACKEND_H

#include "moecl.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct cli_backend {
    moecl_backend_type backend;  /* --backend auto|cpu|opencl */
    const char *device;          /* --device NAME */
    int gpu_mem_mib;             /* --gpu-mem MiB; -1: the library's default */
    int gpu_experts;             /* --gpu-experts N; -1: the library's default */
    moecl_dtype device_dtype;    /* --device-dtype f32|f16; MOECL_DTYPE_COUNT: the default */
    moecl_placement placement;   /* --placement auto|experts|dense */
    const char *expert_profile;  /* --expert-profile FILE */
    const char *calibrate;       /* --calibrate TEXTFILE */
    moecl_dtype kv_type;         /* --kv-type f32|f16 */
    int kv_cells;                /* --kv-cells N; 0: the library's default */
} cli_backend;

/* One line per option, for the commands' help. */
extern const char cli_backend_help[];

/* Defaults: nothing set. */
void cli_backend_init(cli_backend *b);

/* If argument a (with v the next argument, NULL if none) is one of these
 * options, take it: returns how many arguments it used (1 or 2). 0 if a is
 * not one of them; -1 for a missing or bad value, with err (n_err bytes)
 * saying what is wrong. */
int cli_backend_option(cli_backend *b, const char *a, const char *v, char *err, size_t n_err);

/* The routing frequencies --expert-profile or --calibrate give for model:
 * *freq is NULL when neither was given, else n_layer x n_expert shares the
 * caller frees. MOECL_ERR_INVALID_ARG if both were given. */
moecl_status cli_backend_load_freq(const cli_backend *b, const moecl_model *model, int n_threads, float **freq);

/* Set the options that were given in cp; freq (may be NULL) is the result
 * of cli_backend_load_freq and must outlive the context's creation. */
void cli_backend_apply(const cli_backend *b, const float *freq, moecl_context_params *cp);

/* --calibrate's measurement, in tools/moecl.c. */
moecl_status cli_calibrate_freq(const moecl_model *model, const char *path, int n_threads, float *freq);

#endif
