/*
 * fuzz_tokenizer_json.c - libFuzzer target for tokenizer.json: the JSON
 * reader the library uses and the tokenizer built from it
 * (mc_tokenizer_parse); a tokenizer that loads then encodes and decodes a
 * few strings, so that a table the loader let through wrong shows under
 * ASan. The validator must agree with cJSON (fuzz_json_common.h).
 *
 * Built as fuzz_gguf.c is (see there).
 */
#include "fuzz_json_common.h"
#include "tokenizer/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const k_texts[] = {"Hello world", " a  b\tc\n", "\xe2\x96\x81x<s>y</s>", "\xf0\x9f\x98\x80\xc3\xa9", ""};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int once;
    if (!once++) moecl_log_set(fz_quiet, MOECL_LOG_ERROR, NULL);
    char *text = fz_text(data, size);
    if (!text) return 0;
    fz_check_validator(text, size, MC_JSON_TOKENIZER);
    moecl_tokenizer *tok = NULL;
    if (mc_tokenizer_parse("tokenizer.json", text, size, &tok) == MOECL_OK && tok) {
        for (size_t i = 0; i < sizeof k_texts / sizeof k_texts[0]; i++) {
            for (uint32_t flags = 0; flags < 4; flags++) {
                int32_t ids[256], n = 0;
                if (moecl_tokenize(tok, k_texts[i], strlen(k_texts[i]), flags, ids, 256, &n) != MOECL_OK) continue;
                for (int32_t k = 0; k < n; k++)
                    if (ids[k] < 0 || ids[k] >= tok->n_vocab) __builtin_trap();
                char out[4096];
                size_t len = 0;
                if (moecl_detokenize(tok, ids, n, flags & 1u, out, sizeof out, &len) == MOECL_OK &&
                    strlen(out) > len)
                    __builtin_trap();
            }
        }
        moecl_tokenizer_free(tok);
    }
    free(text);
    return 0;
}
