/*
 * test_hf_config.c - config.json parsing: the real Mixtral-8x7B config, the
 * transformers 5 spelling of RoPE, defaults, and one broken variant per
 * rule, each of which must fail with the right status and a message naming
 * the file and the field.
 */
#include "formats/hf_config.h"
#include "test_util.h"

#include <cjson/cJSON.h>

#include <stdarg.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Inputs                                                                   */
/* ------------------------------------------------------------------------ */

/* mistralai/Mixtral-8x7B-v0.1 config.json as published. */
static const char k_mixtral[] =
    "{\n"
    "  \"architectures\": [\"MixtralForCausalLM\"],\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"bos_token_id\": 1,\n"
    "  \"eos_token_id\": 2,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 4096,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 14336,\n"
    "  \"max_position_embeddings\": 32768,\n"
    "  \"model_type\": \"mixtral\",\n"
    "  \"num_attention_heads\": 32,\n"
    "  \"num_experts_per_tok\": 2,\n"
    "  \"num_hidden_layers\": 32,\n"
    "  \"num_key_value_heads\": 8,\n"
    "  \"num_local_experts\": 8,\n"
    "  \"output_router_logits\": false,\n"
    "  \"rms_norm_eps\": 1e-05,\n"
    "  \"rope_theta\": 1000000.0,\n"
    "  \"router_aux_loss_coef\": 0.02,\n"
    "  \"sliding_window\": null,\n"
    "  \"tie_word_embeddings\": false,\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"transformers_version\": \"4.36.0.dev0\",\n"
    "  \"use_cache\": true,\n"
    "  \"vocab_size\": 32000\n"
    "}\n";

static const char *const k_required[] = {
    "vocab_size",        "hidden_size",       "intermediate_size",   "num_hidden_layers",
    "num_attention_heads", "num_local_experts", "num_experts_per_tok",
};

static char g_dir[512];
static char g_path[600]; /* the config every case writes and loads */

static void write_text(const char *path, const char *text) {
    FILE *fp = fopen(path, "wb");
    CHECKF(fp != NULL, "cannot create %s", path);
    if (!fp) return;
    CHECK(fwrite(text, 1, strlen(text), fp) == strlen(text));
    CHECK(fclose(fp) == 0);
}

/* Load k_mixtral changed by (key, json value) pairs ending with a NULL key;
 * a NULL value deletes the key. */
static moecl_status load_variant(mc_hparams *hp, ...) {
    cJSON *root = cJSON_Parse(k_mixtral);
    va_list ap;
    va_start(ap, hp);
    for (const char *key; (key = va_arg(ap, const char *));) {
        const char *value = va_arg(ap, const char *);
        cJSON_DeleteItemFromObjectCaseSensitive(root, key);
        if (!value) continue;
        cJSON *v = cJSON_Parse(value);
        CHECKF(v != NULL, "test bug: bad JSON value for %s", key);
        if (v) cJSON_AddItemToObject(root, key, v);
    }
    va_end(ap);
    char *text = cJSON_Print(root);
    write_text(g_path, text);
    cJSON_free(text);
    cJSON_Delete(root);
    return mc_hf_config_load(g_path, hp);
}

/* ------------------------------------------------------------------------ */
/* Expectations                                                             */
/* ------------------------------------------------------------------------ */

static bool is_zeroed(const mc_hparams *hp) {
    static const mc_hparams zero;
    return memcmp(hp, &zero, sizeof zero) == 0;
}

static void expect_err_at(int line, moecl_status got, const mc_hparams *hp, moecl_status want, const char *path,
                          const char *frag) {
    const char *msg = moecl_last_error();
    CHECKF(got == want, "line %d: status %d, want %d (%s)", line, got, want, msg);
    CHECKF(strstr(msg, path) != NULL, "line %d: message '%s' does not name '%s'", line, msg, path);
    CHECKF(strstr(msg, frag) != NULL, "line %d: message '%s' lacks '%s'", line, msg, frag);
    CHECKF(is_zeroed(hp), "line %d: hparams not zeroed after an error", line);
}

/* The base config changed by one (key, value), expected to fail. */
#define VARIANT_FAILS(key, value, want, frag)                                   \
    do {                                                                        \
        mc_hparams hp_;                                                         \
        moecl_status st_ = load_variant(&hp_, (key), (value), (const char *)NULL); \
        expect_err_at(__LINE__, st_, &hp_, (want), g_path, (frag));            \
    } while (0)

/* The file holds exactly text, expected to fail. */
#define TEXT_FAILS(text, want, frag)                                \
    do {                                                            \
        mc_hparams hp_;                                             \
        write_text(g_path, (text));                                 \
        moecl_status st_ = mc_hf_config_load(g_path, &hp_);         \
        expect_err_at(__LINE__, st_, &hp_, (want), g_path, (frag)); \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Good configs                                                             */
/* ------------------------------------------------------------------------ */

static void test_mixtral(void) {
    mc_hparams hp;
    write_text(g_path, k_mixtral);
    CHECK(mc_hf_config_load(g_path, &hp) == MOECL_OK);
    CHECK(strcmp(hp.architecture, "MixtralForCausalLM") == 0);
    CHECK(hp.n_vocab == 32000);
    CHECK(hp.n_embd == 4096);
    CHECK(hp.n_ff == 14336);
    CHECK(hp.n_layer == 32);
    CHECK(hp.n_head == 32);
    CHECK(hp.n_head_kv == 8);
    CHECK(hp.head_dim == 128);
    CHECK(hp.n_expert == 8);
    CHECK(hp.n_expert_used == 2);
    CHECK(hp.n_ctx_train == 32768);
    CHECK(hp.sliding_window == 0);
    CHECK(hp.rms_norm_eps == 1e-5f);
    CHECK(hp.rope_theta == 1e6f);
    CHECK(!hp.tie_word_embeddings);
    CHECK(hp.bos_id == 1);
    CHECK(hp.eos_id == 2);
}

/* transformers 5 moves rope_theta into rope_parameters. */
static void test_rope_parameters(void) {
    mc_hparams hp;
    CHECK(load_variant(&hp, "rope_theta", NULL, "rope_parameters", "{\"rope_type\": \"default\", \"rope_theta\": 500000.0}",
                       (const char *)NULL) == MOECL_OK);
    CHECK(hp.rope_theta == 5e5f);
    CHECK(load_variant(&hp, "rope_parameters", "{\"rope_type\": \"default\", \"rope_theta\": 1000000}",
                       (const char *)NULL) == MOECL_OK);
    CHECK(hp.rope_theta == 1e6f);
    CHECK(load_variant(&hp, "rope_theta", NULL, "rope_parameters", "{\"rope_type\": \"default\"}",
                       (const char *)NULL) == MOECL_OK);
    CHECK(hp.rope_theta == 1e6f);
    CHECK(load_variant(&hp, "rope_scaling", "null", "rope_parameters", "null", (const char *)NULL) == MOECL_OK);
    CHECK(load_variant(&hp, "rope_scaling", "{\"rope_type\": \"default\"}", (const char *)NULL) == MOECL_OK);
}

static void test_defaults(void) {
    static const char minimal[] = "{\"model_type\": \"mixtral\", \"vocab_size\": 1000, \"hidden_size\": 64,"
                                  " \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                                  " \"num_local_experts\": 4, \"num_experts_per_tok\": 1}";
    mc_hparams hp;
    write_text(g_path, minimal);
    CHECK(mc_hf_config_load(g_path, &hp) == MOECL_OK);
    CHECK(strcmp(hp.architecture, "MixtralForCausalLM") == 0);
    CHECK(hp.n_head_kv == 4);
    CHECK(hp.head_dim == 16);
    CHECK(hp.n_ctx_train == 32768);
    CHECK(hp.sliding_window == 0);
    CHECK(hp.rms_norm_eps == 1e-5f);
    CHECK(hp.rope_theta == 1e6f);
    CHECK(!hp.tie_word_embeddings);
    CHECK(hp.bos_id == -1 && hp.eos_id == -1);
}

static void test_optional_forms(void) {
    mc_hparams hp;
    CHECK(load_variant(&hp, "head_dim", "96", (const char *)NULL) == MOECL_OK);
    CHECK(hp.head_dim == 96);
    CHECK(load_variant(&hp, "head_dim", "null", (const char *)NULL) == MOECL_OK);
    CHECK(hp.head_dim == 128);
    CHECK(load_variant(&hp, "eos_token_id", "[2, 32000]", "bos_token_id", "null", (const char *)NULL) == MOECL_OK);
    CHECK(hp.eos_id == 2 && hp.bos_id == -1);
    CHECK(load_variant(&hp, "eos_token_id", "[]", (const char *)NULL) == MOECL_OK);
    CHECK(hp.eos_id == -1);
    CHECK(load_variant(&hp, "sliding_window", "4096", "tie_word_embeddings", "true", (const char *)NULL) == MOECL_OK);
    CHECK(hp.sliding_window == 4096 && hp.tie_word_embeddings);
    CHECK(load_variant(&hp, "hidden_act", NULL, "num_key_value_heads", NULL, (const char *)NULL) == MOECL_OK);
    CHECK(hp.n_head_kv == 32);
    CHECK(load_variant(&hp, "architectures", NULL, (const char *)NULL) == MOECL_OK);
    CHECK(load_variant(&hp, "model_type", NULL, (const char *)NULL) == MOECL_OK);
    CHECK(load_variant(&hp, "rms_norm_eps", "1e-6", "max_position_embeddings", "65536", (const char *)NULL) ==
          MOECL_OK);
    CHECK(hp.rms_norm_eps == 1e-6f && hp.n_ctx_train == 65536);
}

/* ------------------------------------------------------------------------ */
/* Broken configs                                                           */
/* ------------------------------------------------------------------------ */

static void test_architecture(void) {
    VARIANT_FAILS("architectures", "[\"LlamaForCausalLM\"]", MOECL_ERR_UNSUPPORTED,
                  "architecture 'LlamaForCausalLM' is not supported");
    VARIANT_FAILS("architectures", "\"MixtralForCausalLM\"", MOECL_ERR_FORMAT, "'architectures' is a string");
    VARIANT_FAILS("architectures", "[]", MOECL_ERR_FORMAT, "'architectures'");
    VARIANT_FAILS("model_type", "\"qwen2_moe\"", MOECL_ERR_UNSUPPORTED, "model_type 'qwen2_moe' is not supported");
    mc_hparams hp;
    moecl_status st = load_variant(&hp, "architectures", NULL, "model_type", "\"llama\"", (const char *)NULL);
    expect_err_at(__LINE__, st, &hp, MOECL_ERR_UNSUPPORTED, g_path, "model_type 'llama'");
    st = load_variant(&hp, "architectures", NULL, "model_type", NULL, (const char *)NULL);
    expect_err_at(__LINE__, st, &hp, MOECL_ERR_FORMAT, g_path, "neither 'architectures' nor 'model_type'");
    VARIANT_FAILS("quantization_config", "{\"quant_method\": \"gptq\", \"bits\": 4}", MOECL_ERR_UNSUPPORTED,
                  "quantization_config (gptq) is not supported");
    VARIANT_FAILS("hidden_act", "\"gelu\"", MOECL_ERR_UNSUPPORTED, "hidden_act 'gelu' is not supported");
    VARIANT_FAILS("hidden_act", "7", MOECL_ERR_FORMAT, "'hidden_act' is 7, expected a string");
}

static void test_json(void) {
    TEXT_FAILS("{\"vocab_size\": 32000,", MOECL_ERR_FORMAT, "not valid JSON");
    TEXT_FAILS("", MOECL_ERR_FORMAT, "not valid JSON");
    TEXT_FAILS("{} {}", MOECL_ERR_FORMAT, "trailing bytes");
    TEXT_FAILS("[1, 2]", MOECL_ERR_FORMAT, "not a JSON object");

    char p[700];
    snprintf(p, sizeof p, "%s/missing.json", g_dir);
    mc_hparams hp;
    expect_err_at(__LINE__, mc_hf_config_load(p, &hp), &hp, MOECL_ERR_IO, p, "cannot open");
    snprintf(p, sizeof p, "%s/big.json", g_dir);
    write_text(p, "{}");
    CHECK(truncate(p, 17 << 20) == 0); /* sparse */
    expect_err_at(__LINE__, mc_hf_config_load(p, &hp), &hp, MOECL_ERR_FORMAT, p, "limit");
}

static void test_required(void) {
    for (size_t i = 0; i < sizeof k_required / sizeof k_required[0]; i++) {
        char frag[128];
        snprintf(frag, sizeof frag, "missing required field '%s'", k_required[i]);
        VARIANT_FAILS(k_required[i], NULL, MOECL_ERR_FORMAT, frag);
        snprintf(frag, sizeof frag, "'%s' is a string, expected an integer", k_required[i]);
        VARIANT_FAILS(k_required[i], "\"8\"", MOECL_ERR_FORMAT, frag);
        snprintf(frag, sizeof frag, "'%s' is 4.5, expected an integer", k_required[i]);
        VARIANT_FAILS(k_required[i], "4.5", MOECL_ERR_FORMAT, frag);
        snprintf(frag, sizeof frag, "'%s' is 0, outside", k_required[i]);
        VARIANT_FAILS(k_required[i], "0", MOECL_ERR_FORMAT, frag);
        VARIANT_FAILS(k_required[i], "null", MOECL_ERR_FORMAT, "missing required field");
    }
}

static void test_ranges(void) {
    VARIANT_FAILS("vocab_size", "-5", MOECL_ERR_FORMAT, "'vocab_size' is -5, outside");
    VARIANT_FAILS("hidden_size", "1e300", MOECL_ERR_FORMAT, "'hidden_size' is 1e+300, outside");
    VARIANT_FAILS("num_hidden_layers", "5000", MOECL_ERR_FORMAT, "'num_hidden_layers' is 5000, outside [1, 4096]");
    VARIANT_FAILS("num_local_experts", "2000", MOECL_ERR_FORMAT, "'num_local_experts' is 2000, outside [1, 1024]");
    VARIANT_FAILS("num_experts_per_tok", "9", MOECL_ERR_FORMAT, "'num_experts_per_tok' is 9, outside [1, 8]");
    VARIANT_FAILS("num_key_value_heads", "5", MOECL_ERR_FORMAT,
                  "num_attention_heads (32) is not a multiple of num_key_value_heads (5)");
    VARIANT_FAILS("num_key_value_heads", "64", MOECL_ERR_FORMAT, "'num_key_value_heads' is 64, outside [1, 32]");
    VARIANT_FAILS("num_key_value_heads", "8.5", MOECL_ERR_FORMAT, "'num_key_value_heads' is 8.5");
    VARIANT_FAILS("hidden_size", "4100", MOECL_ERR_FORMAT,
                  "hidden_size (4100) is not a multiple of num_attention_heads (32)");
    VARIANT_FAILS("hidden_size", "4128", MOECL_ERR_FORMAT, "head_dim (129) must be even");
    VARIANT_FAILS("head_dim", "127", MOECL_ERR_FORMAT, "head_dim (127) must be even");
    VARIANT_FAILS("head_dim", "\"128\"", MOECL_ERR_FORMAT, "'head_dim' is a string");
    VARIANT_FAILS("max_position_embeddings", "0", MOECL_ERR_FORMAT, "'max_position_embeddings' is 0");
    VARIANT_FAILS("sliding_window", "-1", MOECL_ERR_FORMAT, "'sliding_window' is -1");
    VARIANT_FAILS("rms_norm_eps", "0", MOECL_ERR_FORMAT, "'rms_norm_eps' is 0");
    VARIANT_FAILS("rms_norm_eps", "-1e-05", MOECL_ERR_FORMAT, "'rms_norm_eps' is -1e-05");
    VARIANT_FAILS("rms_norm_eps", "\"1e-5\"", MOECL_ERR_FORMAT, "'rms_norm_eps' is a string");
    VARIANT_FAILS("rms_norm_eps", "1e-300", MOECL_ERR_FORMAT, "too small for a float");
    VARIANT_FAILS("rope_theta", "-1", MOECL_ERR_FORMAT, "'rope_theta' is -1");
    VARIANT_FAILS("rope_theta", "0", MOECL_ERR_FORMAT, "'rope_theta' is 0");
    /* cJSON would print an infinity as null, so this one is spliced in as text */
    char text[sizeof k_mixtral + 8];
    const char *at = strstr(k_mixtral, "1000000.0");
    snprintf(text, sizeof text, "%.*s1e999%s", (int)(at - k_mixtral), k_mixtral, at + strlen("1000000.0"));
    TEXT_FAILS(text, MOECL_ERR_FORMAT, "'rope_theta' is inf");
    VARIANT_FAILS("tie_word_embeddings", "\"yes\"", MOECL_ERR_FORMAT, "'tie_word_embeddings' is a string");
    VARIANT_FAILS("bos_token_id", "\"1\"", MOECL_ERR_FORMAT, "'bos_token_id' is a string");
    VARIANT_FAILS("eos_token_id", "99999", MOECL_ERR_FORMAT, "'eos_token_id' is 99999, outside [0, 31999]");
    VARIANT_FAILS("eos_token_id", "[\"2\"]", MOECL_ERR_FORMAT, "'eos_token_id' is a string");
}

static void test_rope_variants(void) {
    VARIANT_FAILS("rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}", MOECL_ERR_UNSUPPORTED,
                  "rope_scaling.type 'linear' is not supported");
    VARIANT_FAILS("rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0}", MOECL_ERR_UNSUPPORTED,
                  "rope_scaling.rope_type 'yarn' is not supported");
    VARIANT_FAILS("rope_scaling", "{\"factor\": 4.0}", MOECL_ERR_UNSUPPORTED, "'rope_scaling' without a type");
    VARIANT_FAILS("rope_scaling", "\"linear\"", MOECL_ERR_FORMAT, "'rope_scaling' is a string");
    VARIANT_FAILS("rope_parameters", "{\"rope_type\": \"llama3\", \"rope_theta\": 500000.0}", MOECL_ERR_UNSUPPORTED,
                  "rope_parameters.rope_type 'llama3' is not supported");
    VARIANT_FAILS("rope_parameters", "{\"rope_type\": 3}", MOECL_ERR_FORMAT, "'rope_parameters.rope_type' is not a string");
    VARIANT_FAILS("rope_parameters", "[1]", MOECL_ERR_FORMAT, "'rope_parameters' is an array");
    VARIANT_FAILS("rope_parameters", "{\"rope_type\": \"default\", \"rope_theta\": 10000.0}", MOECL_ERR_FORMAT,
                  "'rope_theta' (1e+06) and 'rope_parameters.rope_theta' (10000) disagree");
    VARIANT_FAILS("rope_parameters", "{\"rope_theta\": -3}", MOECL_ERR_FORMAT, "'rope_parameters.rope_theta' is -3");
}

/* ------------------------------------------------------------------------ */

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/moecl-cfg-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) return t_skip("hf_config", "cannot create a temporary directory");
    snprintf(g_path, sizeof g_path, "%s/config.json", g_dir);

    test_mixtral();
    test_rope_parameters();
    test_defaults();
    test_optional_forms();
    test_architecture();
    test_json();
    test_required();
    test_ranges();
    test_rope_variants();

    char p[700];
    snprintf(p, sizeof p, "%s/big.json", g_dir);
    remove(p);
    remove(g_path);
    CHECK(rmdir(g_dir) == 0);
    return t_done("hf_config");
}
