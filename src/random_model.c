/*
 * random_model.c - writing Mixtral models with deterministic random weights
 * in Hugging Face layout, for benchmarks, tests and the default model.
 *
 * Weights are uniform with the variance of a sensible initialisation
 * (1/fan_in), so activations keep their scale through the layers; router
 * weights are larger so that tokens really choose between experts. Each
 * tensor has its own stream derived from (seed, tensor index), so a tensor's
 * values do not depend on the dtype or on the tensors before it.
 */
#include "formats/atomic_file.h"
#include "formats/safetensors.h"
#include "internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

moecl_random_model_params moecl_random_model_default_params(void) {
    moecl_random_model_params p = {
        .n_vocab = 32000, .n_embd = 1024, .n_ff = 3584, .n_layer = 8, .n_head = 16, .n_head_kv = 4,
        .head_dim = 0, .n_expert = 8, .n_expert_used = 2, .n_ctx_train = 32768,
        .rope_theta = 1e6f, .rms_norm_eps = 1e-5f, .dtype = MOECL_DTYPE_F32, .seed = 42,
    };
    return p;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct spec {
    char name[128];
    int n_dims;
    int64_t shape[2];
    float scale;  /* values uniform in [-scale, scale], or 1 ± scale for norms */
    bool norm;
} spec;

static moecl_status write_config(const char *dir, const moecl_random_model_params *p, int head_dim) {
    cJSON *c = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(c, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("MixtralForCausalLM"));
    cJSON_AddStringToObject(c, "model_type", "mixtral");
    cJSON_AddStringToObject(c, "_comment", "RANDOM WEIGHTS written by moecl: for tests and benchmarks; the text it writes is noise");
    cJSON_AddNumberToObject(c, "vocab_size", p->n_vocab);
    cJSON_AddNumberToObject(c, "hidden_size", p->n_embd);
    cJSON_AddNumberToObject(c, "intermediate_size", p->n_ff);
    cJSON_AddNumberToObject(c, "num_hidden_layers", p->n_layer);
    cJSON_AddNumberToObject(c, "num_attention_heads", p->n_head);
    cJSON_AddNumberToObject(c, "num_key_value_heads", p->n_head_kv);
    cJSON_AddNumberToObject(c, "head_dim", head_dim);
    cJSON_AddNumberToObject(c, "num_local_experts", p->n_expert);
    cJSON_AddNumberToObject(c, "num_experts_per_tok", p->n_expert_used);
    cJSON_AddNumberToObject(c, "max_position_embeddings", p->n_ctx_train);
    cJSON_AddNumberToObject(c, "rope_theta", p->rope_theta);
    cJSON_AddNumberToObject(c, "rms_norm_eps", p->rms_norm_eps);
    cJSON_AddNullToObject(c, "sliding_window");
    cJSON_AddBoolToObject(c, "tie_word_embeddings", 0);
    cJSON_AddNumberToObject(c, "bos_token_id", 1);
    cJSON_AddNumberToObject(c, "eos_token_id", 2);
    cJSON_AddStringToObject(c, "hidden_act", "silu");
    cJSON_AddStringToObject(c, "torch_dtype", p->dtype == MOECL_DTYPE_F32 ? "float32"
                                              : p->dtype == MOECL_DTYPE_F16 ? "float16" : "bfloat16");
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    if (!text) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory writing config.json", dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t len = strlen(text);
    text[len] = '\n'; /* over the NUL: the file ends with a newline */
    moecl_status st = mc_afile_write_all(path, text, len + 1, 0);
    free(text);
    return st;
}

moecl_status moecl_random_model_write(const char *dir, const moecl_random_model_params *p,
                                      moecl_progress_fn progress, void *progress_user_data) {
    if (!dir || !p) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_random_model_write: NULL argument");
    mc_clear_error();
    int head_dim = p->head_dim > 0 ? p->head_dim : (p->n_head > 0 ? p->n_embd / p->n_head : 0);
    if (p->n_vocab < 1 || p->n_embd < 1 || p->n_ff < 1 || p->n_layer < 1 || p->n_head < 1 || p->n_head_kv < 1 ||
        p->n_head % p->n_head_kv || head_dim < 2 || head_dim % 2 || p->n_expert < 1 || p->n_expert > 1024 ||
        p->n_expert_used < 1 || p->n_expert_used > p->n_expert || p->n_ctx_train < 1 ||
        (p->dtype != MOECL_DTYPE_F32 && p->dtype != MOECL_DTYPE_F16 && p->dtype != MOECL_DTYPE_BF16))
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: inconsistent random model shape", dir);
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return mc_error(MOECL_ERR_IO, "%s: cannot create directory: %s", dir, strerror(errno));

    /* The tensor list, in Hugging Face names. */
    const int64_t V = p->n_vocab, D = p->n_embd, F = p->n_ff;
    const int64_t q_dim = (int64_t)p->n_head * head_dim, kv_dim = (int64_t)p->n_head_kv * head_dim;
    size_t n_specs = 3 + (size_t)p->n_layer * (7 + 3 * (size_t)p->n_expert);
    spec *specs = calloc(n_specs, sizeof *specs);
    if (!specs) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", dir);
    size_t n = 0;
#define ADD(nd, r, c, sc, isnorm, ...)                                              \
    do {                                                                           \
        snprintf(specs[n].name, sizeof specs[n].name, __VA_ARGS__);                \
        specs[n].n_dims = nd; specs[n].shape[0] = r; specs[n].shape[1] = c;        \
        specs[n].scale = sc; specs[n].norm = isnorm; n++;                          \
    } while (0)
    const float sd = 1.7320508f / sqrtf((float)D), sf = 1.7320508f / sqrtf((float)F),
                sq = 1.7320508f / sqrtf((float)q_dim);
    ADD(2, V, D, 1.0f, false, "model.embed_tokens.weight");
    for (int l = 0; l < p->n_layer; l++) {
        ADD(1, D, 0, 0.1f, true, "model.layers.%d.input_layernorm.weight", l);
        ADD(2, q_dim, D, sd, false, "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(2, kv_dim, D, sd, false, "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(2, kv_dim, D, sd, false, "model.layers.%d.self_attn.v_proj.weight", l);
        ADD(2, D, q_dim, sq, false, "model.layers.%d.self_attn.o_proj.weight", l);
        ADD(1, D, 0, 0.1f, true, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(2, p->n_expert, D, 4.0f * sd, false, "model.layers.%d.block_sparse_moe.gate.weight", l);
        for (int e = 0; e < p->n_expert; e++) {
            ADD(2, F, D, sd, false, "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", l, e);
            ADD(2, D, F, sf, false, "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", l, e);
            ADD(2, F, D, sd, false, "model.layers.%d.block_sparse_moe.experts.%d.w3.weight", l, e);
        }
    }
    ADD(1, D, 0, 0.1f, true, "model.norm.weight");
    ADD(2, V, D, 4.0f * sd, false, "lm_head.weight");
#undef ADD

    /* config.json first: the weights file is what says the model is there. */
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    mc_st_writer *w = NULL;
    moecl_status st = write_config(dir, p, head_dim);
    if (!st) st = mc_st_writer_new(path, &w);
    for (size_t i = 0; i < n && !st; i++)
        st = mc_st_writer_declare(w, specs[i].name, p->dtype, specs[i].n_dims, specs[i].shape);
    if (!st) st = mc_st_writer_begin_data(w, "format", "pt");

    /* Values in chunks; converted to the stored dtype. */
    enum { CHUNK = 1 << 16 };
    float *vals = malloc(CHUNK * sizeof(float));
    uint16_t *half = malloc(CHUNK * sizeof(uint16_t));
    if (!st && (!vals || !half)) st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory", dir);
    for (size_t i = 0; i < n && !st; i++) {
        uint64_t s = p->seed * 0x100000001b3ull + i;
        int64_t count = specs[i].shape[0] * (specs[i].n_dims == 2 ? specs[i].shape[1] : 1);
        for (int64_t off = 0; off < count && !st; off += CHUNK) {
            int64_t m = count - off < CHUNK ? count - off : CHUNK;
            for (int64_t j = 0; j < m; j++) {
                float u = (float)((double)(splitmix(&s) >> 40) * (2.0 / 16777216.0) - 1.0);
                vals[j] = specs[i].norm ? 1.0f + specs[i].scale * u : specs[i].scale * u;
            }
            if (p->dtype == MOECL_DTYPE_F32) {
                st = mc_st_writer_write(w, vals, (size_t)m * 4);
            } else {
                for (int64_t j = 0; j < m; j++)
                    half[j] = p->dtype == MOECL_DTYPE_F16 ? mc_f32_to_f16(vals[j]) : mc_f32_to_bf16(vals[j]);
                st = mc_st_writer_write(w, half, (size_t)m * 2);
            }
        }
        if (!st && progress && !progress((float)(i + 1) / (float)n, progress_user_data))
            st = mc_error(MOECL_ERR_ABORTED, "%s: cancelled by the progress callback", dir);
    }
    free(vals);
    free(half);
    free(specs);
    if (st) {
        if (w) mc_st_writer_abort(w);
        return st;
    }
    /* The weights appear under their final name only once complete. */
    return mc_st_writer_finish(w);
}
