/*
 * fuzz_config_json.c - libFuzzer target for config.json: the JSON reader the
 * library uses (json.c's validator, then cJSON) and the config reader
 * (mc_hf_config_parse), on one input. A config that is accepted must be
 * consistent, and the validator must agree with cJSON (fuzz_json_common.h).
 *
 * Built as fuzz_gguf.c is (see there).
 */
#include "formats/hf_config.h"
#include "fuzz_json_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int once;
    if (!once++) moecl_log_set(fz_quiet, MOECL_LOG_ERROR, NULL);
    char *text = fz_text(data, size);
    if (!text) return 0;
    fz_check_validator(text, size, MC_JSON_CONFIG);
    mc_hparams hp;
    if (mc_hf_config_parse("config.json", text, size, &hp) == MOECL_OK) {
        /* what the loader relies on from an accepted config */
        if (hp.n_vocab < 1 || hp.n_embd < 1 || hp.n_layer < 1 || hp.n_head < 1 || hp.n_head_kv < 1 ||
            hp.n_head % hp.n_head_kv != 0 || hp.n_expert < 1 || hp.n_expert_used < 1 ||
            hp.n_expert_used > hp.n_expert || hp.head_dim < 1)
            __builtin_trap();
    }
    free(text);
    return 0;
}
