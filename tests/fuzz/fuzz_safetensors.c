/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors header parser
 * (mc_st_open_memory): validate the input, then read every tensor's bytes
 * and look each name up, so that a wrong pointer or size shows under ASan.
 *
 * Built as fuzz_gguf.c is (see there).
 */
#include "formats/safetensors.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void quiet(moecl_log_level level, const char *message, void *user_data) {
    (void)level, (void)message, (void)user_data;
}

static uint64_t g_sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int once;
    if (!once++) moecl_log_set(quiet, MOECL_LOG_ERROR, NULL);
    mc_st_file f;
    if (mc_st_open_memory(data, size, "fuzz.safetensors", &f) != MOECL_OK) return 0;
    mc_st_set set = {.n_files = 1, .files = &f};
    uint64_t h = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const mc_st_tensor *t = &f.tensors[i];
        if (mc_st_set_find(&set, t->name) != t) __builtin_trap();
        if (t->nbytes && ((const uint8_t *)t->data < data || (const uint8_t *)t->data + t->nbytes > data + size))
            __builtin_trap();
        const uint8_t *p = t->data;
        for (size_t k = 0; k < t->nbytes; k++) h = (h ^ p[k]) * 0x100000001b3ull;
        h += (uint64_t)t->n_dims + strlen(t->name);
    }
    g_sink += h;
    mc_st_close(&f);
    return 0;
}
