/*
 * hf_config.c - the hyperparameters of a Mixtral model from a Hugging Face
 * config.json.
 *
 * A config is small, but it comes from the same untrusted place as the
 * weights: every field is type-checked (cJSON numbers are doubles, so an
 * integer field must be integral and in range before conversion) and every
 * value is range-checked, so the loader can size buffers from it safely.
 */
#include "hf_config.h"
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
/* Limits                                                                   */
/* ------------------------------------------------------------------------ */

/* Real configs are a few KB; the cap only keeps a wrong path from loading a
 * weight file into memory. */
#define HF_MAX_DIM (1 << 20)
#define HF_MAX_LAYERS 4096
#define HF_MAX_EXPERTS 1024
#define HF_MAX_CTX (1 << 30)

static const char k_arch[] = "MixtralForCausalLM";
static const char k_model_type[] = "mixtral";

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

static moecl_status check_architecture(const char *path, const cJSON *root, mc_hparams *hp) {
    const cJSON *archs = field(root, "architectures");
    const char *model_type;
    char buf[40];
    moecl_status st = opt_string(path, root, "model_type", &model_type);
    if (st != MOECL_OK) return st;
    if (archs) {
        if (!cJSON_IsArray(archs))
            return mc_error(MOECL_ERR_FORMAT, "%s: 'architectures' is %s, expected a list of names", path,
                            mc_json_describe(archs, buf, sizeof buf));
        if (!cJSON_IsString(archs->child))
            return mc_error(MOECL_ERR_FORMAT, "%s: 'architectures' does not start with a name", path);
        if (strcmp(archs->child->valuestring, k_arch) != 0)
            return mc_error(MOECL_ERR_UNSUPPORTED, "%s: architecture '%.64s' is not supported (moecl runs %s)",
                            path, archs->child->valuestring, k_arch);
    } else if (!model_type) {
        return mc_error(MOECL_ERR_FORMAT, "%s: neither 'architectures' nor 'model_type' is given", path);
    }
    if (model_type && strcmp(model_type, k_model_type) != 0)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: model_type '%.64s' is not supported (moecl runs %s)", path,
                        model_type, k_model_type);
    snprintf(hp->architecture, sizeof hp->architecture, "%s", k_arch);
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

static moecl_status read_rope(const char *path, const cJSON *root, float *theta) {
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
    float a = 1e6f, b = 0;
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
static moecl_status check_unsupported_features(const char *path, const cJSON *root) {
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
    return MOECL_OK;
}

static moecl_status read_dims(const char *path, const cJSON *root, mc_hparams *hp) {
    moecl_status st;
    if ((st = req_int(path, root, "vocab_size", 1, HF_MAX_DIM, &hp->n_vocab)) ||
        (st = req_int(path, root, "hidden_size", 1, HF_MAX_DIM, &hp->n_embd)) ||
        (st = req_int(path, root, "intermediate_size", 1, HF_MAX_DIM, &hp->n_ff)) ||
        (st = req_int(path, root, "num_hidden_layers", 1, HF_MAX_LAYERS, &hp->n_layer)) ||
        (st = req_int(path, root, "num_attention_heads", 1, HF_MAX_DIM, &hp->n_head)) ||
        (st = req_int(path, root, "num_local_experts", 1, HF_MAX_EXPERTS, &hp->n_expert)) ||
        (st = req_int(path, root, "num_experts_per_tok", 1, hp->n_expert, &hp->n_expert_used)) ||
        (st = opt_int(path, root, "num_key_value_heads", 1, hp->n_head, hp->n_head, &hp->n_head_kv)) ||
        (st = opt_int(path, root, "max_position_embeddings", 1, HF_MAX_CTX, 32768, &hp->n_ctx_train)) ||
        (st = opt_int(path, root, "sliding_window", 0, HF_MAX_CTX, 0, &hp->sliding_window)))
        return st;
    if (hp->n_head % hp->n_head_kv != 0)
        return mc_error(MOECL_ERR_FORMAT, "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                        path, hp->n_head, hp->n_head_kv);

    if (field(root, "head_dim")) {
        if ((st = req_int(path, root, "head_dim", 1, HF_MAX_DIM, &hp->head_dim))) return st;
    } else if (hp->n_embd % hp->n_head != 0) {
        return mc_error(MOECL_ERR_FORMAT, "%s: hidden_size (%d) is not a multiple of num_attention_heads (%d)",
                        path, hp->n_embd, hp->n_head);
    } else {
        hp->head_dim = hp->n_embd / hp->n_head;
    }
    /* RoPE rotates pairs of dimensions. */
    if (hp->head_dim % 2 != 0)
        return mc_error(MOECL_ERR_FORMAT, "%s: head_dim (%d) must be even", path, hp->head_dim);
    return MOECL_OK;
}

static moecl_status read_config(const char *path, const cJSON *root, mc_hparams *hp) {
    moecl_status st;
    if ((st = check_architecture(path, root, hp)) || (st = check_unsupported_features(path, root)) ||
        (st = read_dims(path, root, hp)) || (st = read_rope(path, root, &hp->rope_theta)) ||
        (st = opt_bool(path, root, "tie_word_embeddings", false, &hp->tie_word_embeddings)) ||
        (st = token_id(path, root, "bos_token_id", hp->n_vocab, &hp->bos_id)) ||
        (st = token_id(path, root, "eos_token_id", hp->n_vocab, &hp->eos_id)))
        return st;

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
