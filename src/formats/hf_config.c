/*
 * hf_config.c - the hyperparameters of a model from a Hugging Face
 * config.json, read through its family's entry in the table of
 * architectures (src/arch/): which keys hold which value, which options
 * apply, which keys name something not implemented.
 *
 * A config is small, but it comes from the same untrusted place as the
 * weights: every field is type-checked (cJSON numbers are doubles, so an
 * integer field must be integral and in range before conversion) and every
 * value is range-checked, so the loader can size buffers from it safely.
 */
#include "hf_config.h"
#include "arch/arch.h"
#include "json.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Typed field access                                                       */
/* ------------------------------------------------------------------------ */

/* Absent and null both mean "not given" for optional fields. */
static const cJSON *field(const cJSON *obj, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsNull(v) ? NULL : v;
}

/* v (named name for messages) as an integer in [lo, hi]. */
static moecl_status as_int(const char *path, const char *name, const cJSON *v, int64_t lo, int64_t hi,
                           int32_t *out) {
    char buf[40];
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return mc_error(MOECL_ERR_FORMAT, "%s: '%s' is %s, expected an integer", path, name,
                        mc_json_describe(v, buf, sizeof buf));
    double d = v->valuedouble;
    if (d < (double)lo || d > (double)hi)
        return mc_error(MOECL_ERR_FORMAT, "%s: '%s' is %s, outside [%lld, %lld]", path, name,
                        mc_json_describe(v, buf, sizeof buf), (long long)lo, (long long)hi);
    *out = (int32_t)d;
    return MOECL_OK;
}

static moecl_status req_int(const char *path, const cJSON *root, const char *name, int64_t lo, int64_t hi,
                            int32_t *out) {
    const cJSON *v = field(root, name);
    if (!v) return mc_error(MOECL_ERR_FORMAT, "%s: missing required field '%s'", path, name);
    return as_int(path, name, v, lo, hi, out);
}

static moecl_status opt_int(const char *path, const cJSON *root, const char *name, int64_t lo, int64_t hi,
                            int32_t def, int32_t *out) {
    const cJSON *v = field(root, name);
    if (!v) {
        *out = def;
        return MOECL_OK;
    }
    return as_int(path, name, v, lo, hi, out);
}

/* A float in (0, hi]; NaN and infinities cannot come out of JSON numbers
 * except through overflow ("1e999"), which the range check refuses. */
static moecl_status as_positive_float(const char *path, const char *name, const cJSON *v, double hi, float *out) {
    char buf[40];
    if (!cJSON_IsNumber(v))
        return mc_error(MOECL_ERR_FORMAT, "%s: '%s' is %s, expected a number", path, name,
                        mc_json_describe(v, buf, sizeof buf));
    double d = v->valuedouble;
    if (!(d > 0.0 && d <= hi))
        return mc_error(MOECL_ERR_FORMAT, "%s: '%s' is %s, expected a number in (0, %g]", path, name,
                        mc_json_describe(v, buf, sizeof buf), hi);
    if ((float)d == 0.0f)
        return mc_error(MOECL_ERR_FORMAT, "%s: '%s' is %s, too small for a float", path, name,
                        mc_json_describe(v, buf, sizeof buf));
    *out = (float)d;
    return MOECL_OK;
}

static moecl_status opt_bool(const char *path, const cJSON *root, const char *name, bool def, bool *out) {
    const cJSON *v = field(root, name);
    char buf[40];
    if (!v) {
        *out = def;
        return MOECL_OK;
    }
    if (!cJSON_IsBool(v))
        return mc_error(MOECL_ERR_FORMAT, "%s: '%s' is %s, expected true or false", path, name,
                        mc_json_describe(v, buf, sizeof buf));
    *out = cJSON_IsTrue(v);
    return MOECL_OK;
}

/* A string field; *out NULL if absent or null. */
static moecl_status opt_string(const char *path, const cJSON *obj, const char *name, const char **out) {
    const cJSON *v = field(obj, name);
    char buf[40];
    *out = NULL;
    if (!v) return MOECL_OK;
    if (!cJSON_IsString(v))
        return mc_error(MOECL_ERR_FORMAT, "%s: '%s' is %s, expected a string", path, name,
                        mc_json_describe(v, buf, sizeof buf));
    *out = v->valuestring;
    return MOECL_OK;
}

/* bos/eos: an integer, or a list whose first element is used (generation
 * stops on any of them, but moecl keeps one); -1 if absent. */
static moecl_status token_id(const char *path, const cJSON *root, const char *name, int32_t n_vocab,
                             int32_t *out) {
    const cJSON *v = field(root, name);
    *out = -1;
    if (!v) return MOECL_OK;
    if (cJSON_IsArray(v)) {
        if (!v->child) return MOECL_OK;
        v = v->child;
    }
    return as_int(path, name, v, 0, (int64_t)n_vocab - 1, out);
}

/* ------------------------------------------------------------------------ */
/* The pieces of a Mixtral config                                           */
/* ------------------------------------------------------------------------ */

/* The family: from 'architectures' (its first name), else from 'model_type';
 * when both are given they must name the same family. */
static moecl_status check_architecture(const char *path, const cJSON *root, mc_hparams *hp) {
    const cJSON *archs = field(root, "architectures");
    const char *model_type;
    char buf[40], names[256];
    moecl_status st = opt_string(path, root, "model_type", &model_type);
    if (st != MOECL_OK) return st;
    const mc_arch *arch = NULL;
    if (archs) {
        if (!cJSON_IsArray(archs))
            return mc_error(MOECL_ERR_FORMAT, "%s: 'architectures' is %s, expected a list of names", path,
                            mc_json_describe(archs, buf, sizeof buf));
        if (!cJSON_IsString(archs->child))
            return mc_error(MOECL_ERR_FORMAT, "%s: 'architectures' does not start with a name", path);
        if (!(arch = mc_arch_by_hf(archs->child->valuestring)))
            return mc_error(MOECL_ERR_UNSUPPORTED, "%s: architecture '%.64s' is not supported (moecl runs %s)",
                            path, archs->child->valuestring, mc_arch_list(0, names, sizeof names));
    } else if (!model_type) {
        return mc_error(MOECL_ERR_FORMAT, "%s: neither 'architectures' nor 'model_type' is given", path);
    }
    if (model_type && !arch && !(arch = mc_arch_by_model_type(model_type)))
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: model_type '%.64s' is not supported (moecl runs %s)", path,
                        model_type, mc_arch_list(1, names, sizeof names));
    if (model_type && strcmp(model_type, arch->hf_model_type) != 0)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: model_type '%.64s' is not supported with architecture %s "
                        "(expected '%s')", path, model_type, arch->hf_arch, arch->hf_model_type);
    hp->arch = arch;
    snprintf(hp->architecture, sizeof hp->architecture, "%s", arch->hf_arch);
    return MOECL_OK;
}

/* rope_scaling (transformers 4) or rope_parameters (transformers 5) may
 * name a RoPE variant; only plain RoPE is implemented. */
static moecl_status check_rope_type(const char *path, const cJSON *obj, const char *obj_name) {
    const char *type = NULL;
    char name[64];
    snprintf(name, sizeof name, "%s.rope_type", obj_name);
    const cJSON *v = field(obj, "rope_type");
    if (!v) {
        v = field(obj, "type"); /* the older spelling */
        snprintf(name, sizeof name, "%s.type", obj_name);
    }
    if (v && !cJSON_IsString(v))
        return mc_error(MOECL_ERR_FORMAT, "%s: '%s' is not a string", path, name);
    if (v) type = v->valuestring;
    if (type && strcmp(type, "default") != 0)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: %s '%.64s' is not supported (only default RoPE)", path, name,
                        type);
    return MOECL_OK;
}

static moecl_status read_rope(const char *path, const cJSON *root, float def, float *theta) {
    char buf[40];
    const cJSON *scaling = field(root, "rope_scaling");
    if (scaling && !cJSON_IsObject(scaling))
        return mc_error(MOECL_ERR_FORMAT, "%s: 'rope_scaling' is %s, expected an object or null", path,
                        mc_json_describe(scaling, buf, sizeof buf));
    moecl_status st = scaling ? check_rope_type(path, scaling, "rope_scaling") : MOECL_OK;
    if (st == MOECL_OK && scaling && !field(scaling, "rope_type") && !field(scaling, "type"))
        st = mc_error(MOECL_ERR_UNSUPPORTED, "%s: 'rope_scaling' without a type is not supported", path);
    if (st != MOECL_OK) return st;

    const cJSON *params = field(root, "rope_parameters");
    if (params && !cJSON_IsObject(params))
        return mc_error(MOECL_ERR_FORMAT, "%s: 'rope_parameters' is %s, expected an object", path,
                        mc_json_describe(params, buf, sizeof buf));
    if (params && (st = check_rope_type(path, params, "rope_parameters")) != MOECL_OK) return st;

    const cJSON *top = field(root, "rope_theta");
    const cJSON *nested = params ? field(params, "rope_theta") : NULL;
    float a = def, b = 0;
    if (top && (st = as_positive_float(path, "rope_theta", top, 1e12, &a)) != MOECL_OK) return st;
    if (nested && (st = as_positive_float(path, "rope_parameters.rope_theta", nested, 1e12, &b)) != MOECL_OK)
        return st;
    if (top && nested && a != b)
        return mc_error(MOECL_ERR_FORMAT, "%s: 'rope_theta' (%g) and 'rope_parameters.rope_theta' (%g) disagree",
                        path, (double)a, (double)b);
    *theta = nested ? b : a;
    return MOECL_OK;
}

/* Quantized checkpoints (GPTQ, AWQ, FP8, bitsandbytes) keep weights in types
 * moecl does not read; say so here rather than at the first odd tensor. */
static moecl_status check_unsupported_features(const char *path, const cJSON *root, const mc_arch *arch) {
    const cJSON *q = field(root, "quantization_config");
    if (q) {
        const cJSON *m = cJSON_IsObject(q) ? field(q, "quant_method") : NULL;
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: quantization_config (%.32s) is not supported", path,
                        cJSON_IsString(m) ? m->valuestring : "unknown method");
    }
    const char *act;
    moecl_status st = opt_string(path, root, "hidden_act", &act);
    if (st != MOECL_OK) return st;
    if (act && strcmp(act, "silu") != 0)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: hidden_act '%.32s' is not supported (only silu)", path, act);
    /* Keys of the family that switch on something moecl does not implement. */
    for (const char *const *k = arch->hf_refused; k && *k; k++) {
        const cJSON *v = field(root, *k);
        char buf[40];
        if (v && !cJSON_IsFalse(v))
            return mc_error(MOECL_ERR_UNSUPPORTED, "%s: '%s' (%s) is not supported by moecl for %s", path, *k,
                            cJSON_IsTrue(v) ? "true" : mc_json_describe(v, buf, sizeof buf), arch->name);
    }
    return MOECL_OK;
}

/* The integer hyperparameters at the keys the family names, in its order
 * (so that ranges can depend on earlier values). */
static moecl_status read_dims(const char *path, const cJSON *root, mc_hparams *hp) {
    const mc_arch *arch = hp->arch;
    moecl_status st;
    for (int i = 0; i < arch->n_keys; i++) {
        const mc_arch_key *k = &arch->keys[i];
        int32_t *out = mc_hp_field(hp, k->hp);
        int64_t lo, hi;
        mc_hp_range(k->hp, hp, &lo, &hi);
        if (k->hp == MC_HP_HEAD_DIM) { /* explicit, else hidden_size / num_attention_heads */
            if (k->hf && field(root, k->hf)) {
                if ((st = req_int(path, root, k->hf, lo, hi, out))) return st;
            } else if (hp->n_embd % hp->n_head != 0) {
                return mc_error(MOECL_ERR_FORMAT, "%s: hidden_size (%d) is not a multiple of num_attention_heads (%d)",
                                path, hp->n_embd, hp->n_head);
            } else {
                *out = hp->n_embd / hp->n_head;
            }
            continue;
        }
        const int64_t def = k->hp == MC_HP_N_HEAD_KV ? hp->n_head : k->def;
        if (!k->hf) *out = (int32_t)def;
        else if (k->required) st = req_int(path, root, k->hf, lo, hi, out);
        else st = opt_int(path, root, k->hf, lo, hi, (int32_t)def, out);
        if (st) return st;
    }
    if (hp->n_head % hp->n_head_kv != 0)
        return mc_error(MOECL_ERR_FORMAT, "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                        path, hp->n_head, hp->n_head_kv);
    /* RoPE rotates pairs of dimensions. */
    if (hp->head_dim % 2 != 0)
        return mc_error(MOECL_ERR_FORMAT, "%s: head_dim (%d) must be even", path, hp->head_dim);
    return MOECL_OK;
}

/* Which layers have a dense FFN: those in mlp_only_layers and those off the
 * decoder_sparse_step grid ((il + 1) % step != 0), as transformers decides. */
static moecl_status read_dense_layers(const char *path, const cJSON *root, mc_hparams *hp) {
    if (!hp->arch->dense_layers) return MOECL_OK;
    bool any = false;
    for (int il = 0; il < hp->n_layer; il++)
        if ((il + 1) % hp->sparse_step != 0) {
            mc_hp_set_dense(hp, il);
            any = true;
        }
    const cJSON *list = field(root, "mlp_only_layers");
    char buf[40];
    if (list && !cJSON_IsArray(list))
        return mc_error(MOECL_ERR_FORMAT, "%s: 'mlp_only_layers' is %s, expected a list of layer numbers", path,
                        mc_json_describe(list, buf, sizeof buf));
    for (const cJSON *v = list ? list->child : NULL; v; v = v->next) {
        int32_t il;
        moecl_status st = as_int(path, "mlp_only_layers[]", v, 0, hp->n_layer - 1, &il);
        if (st) return st;
        mc_hp_set_dense(hp, il);
        any = true;
    }
    if (any && hp->n_ff_dense <= 0)
        return mc_error(MOECL_ERR_FORMAT, "%s: dense layers (mlp_only_layers, decoder_sparse_step) need "
                        "'intermediate_size'", path);
    return MOECL_OK;
}

static moecl_status read_config(const char *path, const cJSON *root, mc_hparams *hp) {
    moecl_status st;
    if ((st = check_architecture(path, root, hp))) return st;
    const mc_arch *arch = hp->arch;
    bool attn_bias = false, qkv_bias = arch->qkv_bias;
    hp->norm_topk = arch->norm_topk;
    if ((st = check_unsupported_features(path, root, arch)) || (st = read_dims(path, root, hp)) ||
        (st = read_dense_layers(path, root, hp)) ||
        (st = read_rope(path, root, arch->rope_theta_default, &hp->rope_theta)) ||
        (st = opt_bool(path, root, "tie_word_embeddings", false, &hp->tie_word_embeddings)) ||
        (arch->hf_attn_bias && (st = opt_bool(path, root, arch->hf_attn_bias, false, &attn_bias))) ||
        (arch->hf_qkv_bias && (st = opt_bool(path, root, arch->hf_qkv_bias, arch->qkv_bias, &qkv_bias))) ||
        (arch->hf_norm_topk && (st = opt_bool(path, root, arch->hf_norm_topk, arch->norm_topk, &hp->norm_topk))) ||
        (st = token_id(path, root, "bos_token_id", hp->n_vocab, &hp->bos_id)) ||
        (st = token_id(path, root, "eos_token_id", hp->n_vocab, &hp->eos_id)))
        return st;
    hp->attn_bias = attn_bias;
    hp->qkv_bias = qkv_bias || attn_bias;
    hp->qk_norm = arch->qk_norm;
    hp->shared_expert = arch->shared_expert;

    const cJSON *eps = field(root, "rms_norm_eps");
    hp->rms_norm_eps = 1e-5f;
    if (eps) return as_positive_float(path, "rms_norm_eps", eps, 1.0, &hp->rms_norm_eps);
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Public                                                                   */
/* ------------------------------------------------------------------------ */

static moecl_status config_from_root(const char *path, cJSON *root, mc_hparams *hp);

moecl_status mc_hf_config_load(const char *path, mc_hparams *hp) {
    if (!hp) return mc_error(MOECL_ERR_INVALID_ARG, "mc_hf_config_load: no output");
    memset(hp, 0, sizeof *hp);
    if (!path) return mc_error(MOECL_ERR_INVALID_ARG, "mc_hf_config_load: no path");
    cJSON *root = NULL;
    moecl_status st = mc_json_load_file(path, MC_JSON_CONFIG, &root);
    return st != MOECL_OK ? st : config_from_root(path, root, hp);
}

moecl_status mc_hf_config_parse(const char *path, const char *text, size_t len, mc_hparams *hp) {
    if (!hp) return mc_error(MOECL_ERR_INVALID_ARG, "mc_hf_config_parse: no output");
    memset(hp, 0, sizeof *hp);
    if (!path || !text) return mc_error(MOECL_ERR_INVALID_ARG, "mc_hf_config_parse: no path or text");
    cJSON *root = NULL;
    moecl_status st = mc_json_parse(path, MC_JSON_CONFIG, text, len, &root);
    return st != MOECL_OK ? st : config_from_root(path, root, hp);
}

/* Validate root into *hp, then free root. */
static moecl_status config_from_root(const char *path, cJSON *root, mc_hparams *hp) {
    moecl_status st;
    mc_hparams tmp = {0};
    if (!cJSON_IsObject(root))
        st = mc_error(MOECL_ERR_FORMAT, "%s: not a JSON object", path);
    else
        st = read_config(path, root, &tmp);
    cJSON_Delete(root);
    if (st == MOECL_OK) *hp = tmp;
    return st;
}
