/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader: validate the input,
 * then walk everything the reader returned (every key, nested array item,
 * string byte and tensor byte), so that a pointer or length the validation
 * let through that is wrong shows up under ASan.
 *
 * Built with clang -fsanitize=fuzzer by -Dfuzz=true (tools/fuzz.sh), and with
 * any compiler into fuzz_gguf_corpus (run_corpus.c), which replays the corpus
 * and the regressions in the normal tests.
 */
#include "formats/gguf.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void quiet(moecl_log_level level, const char *message, void *user_data) {
    (void)level, (void)message, (void)user_data;
}

static uint64_t g_sink; /* keeps the reads from being optimized away */

static uint64_t mix(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}


static uint64_t walk_value(uint64_t h, const mc_gguf_kv *kv) {
    if (kv->type == MC_GGUF_STRING) return mix(h, kv->strs[0].ptr, (size_t)kv->strs[0].len);
    if (kv->type != MC_GGUF_ARRAY) return mix(h, kv->data, mc_gguf_vtype_size(kv->type));
    for (uint64_t i = 0; i < kv->n; i++) {
        if (kv->arr_type == MC_GGUF_STRING) {
            h = mix(h, kv->strs[i].ptr, (size_t)kv->strs[i].len);
        } else if (kv->arr_type == MC_GGUF_ARRAY) {
            h = walk_value(h, &kv->items[i]);
        } else {
            double d = mc_gguf_arr_float(kv, i);
            h ^= (uint64_t)mc_gguf_arr_int(kv, i);
            h = mix(h, &d, sizeof d);
        }
    }
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int once;
    if (!once++) moecl_log_set(quiet, MOECL_LOG_ERROR, NULL);
    mc_gguf *g = NULL;
    if (mc_gguf_open_memory(data, size, "fuzz.gguf", &g) != MOECL_OK) return 0;
    uint64_t h = mc_gguf_version(g) + mc_gguf_alignment(g) + mc_gguf_file_size(g);
    for (int64_t i = 0; i < mc_gguf_n_kv(g); i++) {
        const mc_gguf_kv *kv = mc_gguf_kv_at(g, i);
        h = mix(h, kv->key, strlen(kv->key));
        h = walk_value(h, kv);
        if (mc_gguf_find_kv(g, kv->key) != kv) __builtin_trap();
        int64_t iv;
        double dv;
        bool bv;
        mc_gguf_str sv;
        const mc_gguf_kv *av;
        if (mc_gguf_get_int(g, kv->key, true, &iv) == MOECL_OK) h ^= (uint64_t)iv;
        if (mc_gguf_get_float(g, kv->key, true, &dv) == MOECL_OK) h ^= (uint64_t)(dv == dv);
        if (mc_gguf_get_bool(g, kv->key, true, &bv) == MOECL_OK) h ^= bv;
        if (mc_gguf_get_str(g, kv->key, true, &sv) == MOECL_OK) h ^= sv.len;
        if (mc_gguf_get_arr(g, kv->key, true, kv->arr_type, &av) == MOECL_OK) h ^= av->n;
    }
    for (int64_t i = 0; i < mc_gguf_n_tensors(g); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, i);
        if (mc_gguf_find_tensor(g, t->name) != t) __builtin_trap();
        if (t->n_dims < 1 || t->n_dims > 4 || !mc_gguf_type_name(t->ggml_type)) __builtin_trap();
        if (t->nbytes && ((const uint8_t *)t->data < data || (const uint8_t *)t->data + t->nbytes > data + size))
            __builtin_trap();
        h = mix(h, t->name, strlen(t->name));
        h = mix(h, t->data, t->nbytes);
    }
    g_sink += h;
    mc_gguf_close(g);
    return 0;
}
