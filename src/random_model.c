/*
 * random_model.c - writing models of any family (src/arch/) with
 * deterministic random weights in Hugging Face layout, for benchmarks,
 * tests and the default model.
 *
 * The family's entry in the table of architectures gives the tensor names,
 * the config.json keys and the per-block options (QK-norm, biases, shared
 * expert, dense layers), so a family needs no code here.
 *
 * Weights are uniform with the variance of a sensible initialisation
 * (1/fan_in), so activations keep their scale through the layers; router
 * weights are larger so that tokens really choose between experts. Each
 * tensor has its own stream derived from (seed, tensor index), so a tensor's
 * values do not depend on the dtype or on the tensors before it; a Mixtral
 * model's tensors keep the indices (and so the values) they had before the
 * other families came.
 */
#include "arch/arch.h"
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
        .arch = NULL, .n_dense_layers = 0, .n_ff_dense = 0, .n_ff_shexp = 0, .norm_topk = -1,
        .bos_id = 1, .eos_id = 2,
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

/* The shape after defaults, as the family's config will state it. */
typedef struct shape {
    const mc_arch *arch;
    mc_hparams hp;       /* the integer hyperparameters, for the family's key table */
    bool norm_topk;
} shape;

static moecl_status make_shape(const char *dir, const moecl_random_model_params *p, shape *s) {
    memset(s, 0, sizeof *s);
    const char *name = p->arch && *p->arch ? p->arch : "mixtral";
    for (int i = 0; mc_arches[i]; i++)
        if (!strcmp(mc_arches[i]->name, name)) s->arch = mc_arches[i];
    if (!s->arch) {
        char list[256] = "";
        for (int i = 0; mc_arches[i]; i++) {
            if (i) strncat(list, ", ", sizeof list - strlen(list) - 1);
            strncat(list, mc_arches[i]->name, sizeof list - strlen(list) - 1);
        }
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: unknown architecture '%s' (%s)", dir, name, list);
    }
    const mc_arch *a = s->arch;
    mc_hparams *hp = &s->hp;
    hp->arch = a;
    hp->n_vocab = p->n_vocab;
    hp->n_embd = p->n_embd;
    hp->n_ff = p->n_ff;
    hp->n_layer = p->n_layer;
    hp->n_head = p->n_head;
    hp->n_head_kv = p->n_head_kv;
    hp->head_dim = p->head_dim > 0 ? p->head_dim : (p->n_head > 0 ? p->n_embd / p->n_head : 0);
    hp->n_expert = p->n_expert;
    hp->n_expert_used = p->n_expert_used;
    hp->n_ctx_train = p->n_ctx_train;
    hp->sparse_step = 1;
    const int64_t active = (int64_t)p->n_ff * p->n_expert_used;
    hp->n_ff_dense = p->n_ff_dense > 0 ? p->n_ff_dense : (int32_t)(active < INT32_MAX ? active : INT32_MAX);
    hp->n_ff_shexp = !a->shared_expert ? 0 : p->n_ff_shexp > 0 ? p->n_ff_shexp
                                           : (int32_t)(active < INT32_MAX ? active : INT32_MAX);
    /* The family's usual rule: what its released models use, which is
     * what llama.cpp's graph applies (a->gguf_norm_topk). */
    s->norm_topk = p->norm_topk < 0 ? a->gguf_norm_topk : p->norm_topk != 0;

    if (p->n_vocab < 1 || p->n_embd < 1 || p->n_ff < 1 || p->n_layer < 1 || p->n_layer > MC_MAX_LAYERS ||
        p->n_head < 1 || p->n_head_kv < 1 || p->n_head % p->n_head_kv || hp->head_dim < 2 || hp->head_dim % 2 ||
        p->n_expert < 1 || p->n_expert > 1024 || p->n_expert_used < 1 || p->n_expert_used > p->n_expert ||
        p->n_ctx_train < 1 || p->n_ff_dense < 0 || p->n_ff_shexp < 0 ||
        (p->dtype != MOECL_DTYPE_F32 && p->dtype != MOECL_DTYPE_F16 && p->dtype != MOECL_DTYPE_BF16))
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: inconsistent random model shape", dir);
    if (p->n_dense_layers < 0 || p->n_dense_layers > p->n_layer || (p->n_dense_layers && !a->dense_layers))
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: %d dense layers: %s", dir, p->n_dense_layers,
                        a->dense_layers ? "more than the layers" : "the family has none");
    if (p->n_ff_shexp && !a->shared_expert)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: a shared expert width, but %s has no shared expert", dir,
                        a->name);
    if (p->norm_topk >= 0 && (p->norm_topk != 0) != a->norm_topk && !a->hf_norm_topk)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: %s %s renormalises the top-k router weights", dir, a->name,
                        a->norm_topk ? "always" : "never");
    for (int k = 0; k < a->n_keys; k++)
        if (a->keys[k].hp == MC_HP_HEAD_DIM && !a->keys[k].hf && hp->head_dim * p->n_head != p->n_embd)
            return mc_error(MOECL_ERR_INVALID_ARG, "%s: %s's config has no head_dim: it must be hidden / heads (%d)",
                            dir, a->name, p->n_embd / p->n_head);
    for (int il = 0; il < p->n_dense_layers; il++) mc_hp_set_dense(hp, il);
    return MOECL_OK;
}

static moecl_status write_config(const char *dir, const moecl_random_model_params *p, const shape *s) {
    const mc_arch *a = s->arch;
    cJSON *c = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(c, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(a->hf_arch));
    cJSON_AddStringToObject(c, "model_type", a->hf_model_type);
    cJSON_AddStringToObject(c, "_comment", "RANDOM WEIGHTS written by moecl: for tests and benchmarks; the text it writes is noise");
    /* The integer hyperparameters under the family's own keys. */
    mc_hparams hp = s->hp;
    for (int k = 0; k < a->n_keys; k++) {
        const mc_arch_key *key = &a->keys[k];
        if (!key->hf) continue;
        if (key->hp == MC_HP_SLIDING_WINDOW) cJSON_AddNullToObject(c, key->hf);
        else cJSON_AddNumberToObject(c, key->hf, *mc_hp_field(&hp, key->hp));
    }
    if (a->dense_layers) {
        cJSON *only = cJSON_AddArrayToObject(c, "mlp_only_layers");
        for (int il = 0; il < p->n_dense_layers; il++) cJSON_AddItemToArray(only, cJSON_CreateNumber(il));
    }
    if (a->hf_norm_topk) cJSON_AddBoolToObject(c, a->hf_norm_topk, s->norm_topk);
    if (a->hf_attn_bias) cJSON_AddBoolToObject(c, a->hf_attn_bias, 0);
    if (a->hf_qkv_bias) cJSON_AddBoolToObject(c, a->hf_qkv_bias, a->qkv_bias);
    cJSON_AddNumberToObject(c, "rope_theta", p->rope_theta);
    cJSON_AddNumberToObject(c, "rms_norm_eps", p->rms_norm_eps);
    cJSON_AddBoolToObject(c, "tie_word_embeddings", 0);
    if (p->bos_id >= 0) cJSON_AddNumberToObject(c, "bos_token_id", p->bos_id);
    if (p->eos_id >= 0) cJSON_AddNumberToObject(c, "eos_token_id", p->eos_id);
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
    shape sh;
    moecl_status st = make_shape(dir, p, &sh);
    if (st) return st;
    const mc_arch *a = sh.arch;
    const mc_hparams *hp = &sh.hp;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return mc_error(MOECL_ERR_IO, "%s: cannot create directory: %s", dir, strerror(errno));

    /* The tensor list, in the family's Hugging Face names. */
    const int64_t V = p->n_vocab, D = p->n_embd, F = p->n_ff, FD = hp->n_ff_dense, FS = hp->n_ff_shexp;
    const int64_t q_dim = (int64_t)p->n_head * hp->head_dim, kv_dim = (int64_t)p->n_head_kv * hp->head_dim;
    size_t n_specs = 3 + (size_t)p->n_layer * (16 + 3 * (size_t)p->n_expert);
    spec *specs = calloc(n_specs, sizeof *specs);
    if (!specs) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", dir);
    size_t n = 0;
#define ADD(nd, r, c, sc, isnorm, tn, il, e)                                       \
    do {                                                                           \
        snprintf(specs[n].name, sizeof specs[n].name, a->hf_names[tn], il, e);     \
        specs[n].n_dims = nd; specs[n].shape[0] = r; specs[n].shape[1] = c;        \
        specs[n].scale = sc; specs[n].norm = isnorm; n++;                          \
    } while (0)
    const float sd = 1.7320508f / sqrtf((float)D), sf = 1.7320508f / sqrtf((float)F),
                sq = 1.7320508f / sqrtf((float)q_dim), sfd = 1.7320508f / sqrtf((float)FD),
                sfs = FS ? 1.7320508f / sqrtf((float)FS) : 0.0f;
    ADD(2, V, D, 1.0f, false, MC_TN_TOK_EMBD, 0, 0);
    for (int l = 0; l < p->n_layer; l++) {
        ADD(1, D, 0, 0.1f, true, MC_TN_ATTN_NORM, l, 0);
        ADD(2, q_dim, D, sd, false, MC_TN_ATTN_Q, l, 0);
        ADD(2, kv_dim, D, sd, false, MC_TN_ATTN_K, l, 0);
        ADD(2, kv_dim, D, sd, false, MC_TN_ATTN_V, l, 0);
        ADD(2, D, q_dim, sq, false, MC_TN_ATTN_OUT, l, 0);
        ADD(1, D, 0, 0.1f, true, MC_TN_FFN_NORM, l, 0);
        if (mc_hp_dense(hp, l)) {
            ADD(2, FD, D, sd, false, MC_TN_FFN_GATE, l, 0);
            ADD(2, D, FD, sfd, false, MC_TN_FFN_DOWN, l, 0);
            ADD(2, FD, D, sd, false, MC_TN_FFN_UP, l, 0);
        } else {
            ADD(2, p->n_expert, D, 4.0f * sd, false, MC_TN_ROUTER, l, 0);
            for (int e = 0; e < p->n_expert; e++) {
                ADD(2, F, D, sd, false, MC_TN_EXP_GATE, l, e);
                ADD(2, D, F, sf, false, MC_TN_EXP_DOWN, l, e);
                ADD(2, F, D, sd, false, MC_TN_EXP_UP, l, e);
            }
            if (a->shared_expert) {
                ADD(2, FS, D, sd, false, MC_TN_SHEXP_GATE, l, 0);
                ADD(2, D, FS, sfs, false, MC_TN_SHEXP_DOWN, l, 0);
                ADD(2, FS, D, sd, false, MC_TN_SHEXP_UP, l, 0);
                ADD(2, 1, D, 4.0f * sd, false, MC_TN_SHEXP_INP, l, 0);
            }
        }
        /* The family's extras after the tensors every family has (a
         * Mixtral model's indices stay as they were). */
        if (a->qkv_bias) {
            ADD(1, q_dim, 0, 0.1f, false, MC_TN_ATTN_Q_BIAS, l, 0);
            ADD(1, kv_dim, 0, 0.1f, false, MC_TN_ATTN_K_BIAS, l, 0);
            ADD(1, kv_dim, 0, 0.1f, false, MC_TN_ATTN_V_BIAS, l, 0);
        }
        if (a->qk_norm != MC_QK_NORM_NONE) {
            const bool head = a->qk_norm == MC_QK_NORM_HEAD;
            ADD(1, head ? hp->head_dim : q_dim, 0, 0.1f, true, MC_TN_ATTN_Q_NORM, l, 0);
            ADD(1, head ? hp->head_dim : kv_dim, 0, 0.1f, true, MC_TN_ATTN_K_NORM, l, 0);
        }
    }
    ADD(1, D, 0, 0.1f, true, MC_TN_OUTPUT_NORM, 0, 0);
    ADD(2, V, D, 4.0f * sd, false, MC_TN_OUTPUT, 0, 0);
#undef ADD

/* config.json first: the weights file is what says the model is there. */
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    mc_st_writer *w = NULL;
    st = write_config(dir, p, &sh);
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
