/*
 * model.c - loading a Hugging Face Mixtral directory into a moecl_model.
 *
 * config.json gives the shapes; every tensor the architecture needs is looked
 * up by its Hugging Face name, its shape and dtype checked, and referenced in
 * place in the mapped safetensors files.
 */
#include "model.h"
#include "backend/cpu/kernels.h"
#include "tokenizer/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------ */
/* Tensor lookup                                                            */
/* ------------------------------------------------------------------------ */

typedef struct loader {
    moecl_model *m;
    const char *dir;
    moecl_progress_fn progress;
    void *progress_user;
    int64_t done, total; /* tensors bound, for progress */
} loader;

/* Find `name` and check it is a rows x cols matrix (cols == 0: a vector of
 * rows elements). */
static moecl_status bind(loader *ld, mc_tensor *t, const char *name, int64_t rows, int64_t cols) {
    const mc_st_tensor *st = mc_st_set_find(&ld->m->files, name);
    if (!st) return mc_error(MOECL_ERR_FORMAT, "%s: tensor '%s' is missing", ld->dir, name);
    bool ok = cols == 0 ? (st->n_dims == 1 && st->shape[0] == rows)
                        : (st->n_dims == 2 && st->shape[0] == rows && st->shape[1] == cols);
    if (!ok) {
        char got[96] = "";
        size_t len = 0;
        for (int i = 0; i < st->n_dims && len < sizeof got - 24; i++)
            len += (size_t)snprintf(got + len, sizeof got - len, "%s%lld", i ? ", " : "", (long long)st->shape[i]);
        if (cols == 0)
            return mc_error(MOECL_ERR_FORMAT, "%s: tensor '%s' has shape [%s], expected [%lld]", ld->dir, name,
                            got, (long long)rows);
        return mc_error(MOECL_ERR_FORMAT, "%s: tensor '%s' has shape [%s], expected [%lld, %lld]", ld->dir, name,
                        got, (long long)rows, (long long)cols);
    }
    t->type = st->type;
    t->rows = cols == 0 ? 1 : rows;
    t->cols = cols == 0 ? rows : cols;
    t->data = st->data;
    t->nbytes = st->nbytes;
    ld->done++;
    if (ld->progress && !ld->progress((float)ld->done / (float)ld->total, ld->progress_user))
        return mc_error(MOECL_ERR_ABORTED, "%s: loading cancelled by the progress callback", ld->dir);
    return MOECL_OK;
}

/* Bind a small tensor and keep a float32 copy of it. */
static moecl_status bind_f32(loader *ld, float **out, const char *name, int64_t rows, int64_t cols) {
    mc_tensor t;
    moecl_status st = bind(ld, &t, name, rows, cols);
    if (st != MOECL_OK) return st;
    size_t n = (size_t)(t.rows * t.cols), bytes;
    if (!mc_mul_size(n, sizeof(float), &bytes)) return mc_error(MOECL_ERR_FORMAT, "%s: '%s' too large", ld->dir, name);
    float *p = malloc(bytes);
    if (!p) return mc_error(MOECL_ERR_NOMEM, "%s: no memory for '%s'", ld->dir, name);
    mc_cpu_to_f32(t.type, t.data, p, (int64_t)n);
    *out = p;
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                  */
/* ------------------------------------------------------------------------ */

static moecl_status bind_layer(loader *ld, int il) {
    const mc_hparams *hp = &ld->m->hp;
    mc_layer *L = &ld->m->layers[il];
    const int64_t D = hp->n_embd, F = hp->n_ff;
    const int64_t q_dim = (int64_t)hp->n_head * hp->head_dim, kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    char name[160];
    moecl_status st;

#define NAME(...) (snprintf(name, sizeof name, __VA_ARGS__), name)
    if ((st = bind_f32(ld, &L->attn_norm, NAME("model.layers.%d.input_layernorm.weight", il), D, 0))) return st;
    if ((st = bind(ld, &L->wq, NAME("model.layers.%d.self_attn.q_proj.weight", il), q_dim, D))) return st;
    if ((st = bind(ld, &L->wk, NAME("model.layers.%d.self_attn.k_proj.weight", il), kv_dim, D))) return st;
    if ((st = bind(ld, &L->wv, NAME("model.layers.%d.self_attn.v_proj.weight", il), kv_dim, D))) return st;
    if ((st = bind(ld, &L->wo, NAME("model.layers.%d.self_attn.o_proj.weight", il), D, q_dim))) return st;
    if ((st = bind_f32(ld, &L->ffn_norm, NAME("model.layers.%d.post_attention_layernorm.weight", il), D, 0))) return st;
    if ((st = bind_f32(ld, &L->router, NAME("model.layers.%d.block_sparse_moe.gate.weight", il), hp->n_expert, D)))
        return st;
    L->experts = calloc((size_t)hp->n_expert, sizeof *L->experts);
    if (!L->experts) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", ld->dir);
    for (int e = 0; e < hp->n_expert; e++) {
        mc_expert *x = &L->experts[e];
        if ((st = bind(ld, &x->w1, NAME("model.layers.%d.block_sparse_moe.experts.%d.w1.weight", il, e), F, D))) return st;
        if ((st = bind(ld, &x->w2, NAME("model.layers.%d.block_sparse_moe.experts.%d.w2.weight", il, e), D, F))) return st;
        if ((st = bind(ld, &x->w3, NAME("model.layers.%d.block_sparse_moe.experts.%d.w3.weight", il, e), F, D))) return st;
    }
#undef NAME
    return MOECL_OK;
}

moecl_model_params moecl_model_default_params(void) {
    moecl_model_params p = {0};
    return p;
}

moecl_status moecl_model_load(const char *path, const moecl_model_params *params, moecl_model **out) {
    if (!out) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_model_load: out is NULL");
    *out = NULL;
    if (!path) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_model_load: path is NULL");
    mc_clear_error();
    moecl_model_params defaults = moecl_model_default_params();
    if (!params) params = &defaults;

    struct stat sb;
    if (stat(path, &sb) != 0) return mc_error(MOECL_ERR_IO, "%s: no such file or directory", path);
    if (!S_ISDIR(sb.st_mode))
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: not a model directory (expected config.json and *.safetensors)", path);

    moecl_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
    }

    loader ld = {.m = m, .dir = path, .progress = params->progress, .progress_user = params->progress_user_data};
    char cfg[4096];
    moecl_status st;
    if ((size_t)snprintf(cfg, sizeof cfg, "%s/config.json", path) >= sizeof cfg) {
        st = mc_error(MOECL_ERR_INVALID_ARG, "%s: path too long", path);
        goto fail;
    }
    if ((st = mc_hf_config_load(cfg, &m->hp))) goto fail;
    if ((st = mc_st_set_open_dir(path, &m->files))) goto fail;
    if ((st = mc_tokenizer_load_dir_optional(path, &m->tokenizer))) goto fail;

    const mc_hparams *hp = &m->hp;
    ld.total = 3 + (int64_t)hp->n_layer * (7 + 3 * (int64_t)hp->n_expert);
    if (!(m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers))) {
        st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    if ((st = bind(&ld, &m->tok_embd, "model.embed_tokens.weight", hp->n_vocab, hp->n_embd))) goto fail;
    for (int il = 0; il < hp->n_layer; il++)
        if ((st = bind_layer(&ld, il))) goto fail;
    if ((st = bind_f32(&ld, &m->out_norm, "model.norm.weight", hp->n_embd, 0))) goto fail;
    if (hp->tie_word_embeddings && !mc_st_set_find(&m->files, "lm_head.weight")) {
        m->lm_head = m->tok_embd;
        ld.done++;
    } else if ((st = bind(&ld, &m->lm_head, "lm_head.weight", hp->n_vocab, hp->n_embd))) {
        goto fail;
    }
    if (params->progress && !params->progress(1.0f, params->progress_user_data)) {
        st = mc_error(MOECL_ERR_ABORTED, "%s: loading cancelled by the progress callback", path);
        goto fail;
    }
    mc_log(MOECL_LOG_INFO, "%s: %d layers, %d experts (top-%d), hidden %d, vocab %d", path, hp->n_layer,
           hp->n_expert, hp->n_expert_used, hp->n_embd, hp->n_vocab);
    *out = m;
    return MOECL_OK;

fail:
    moecl_model_free(m);
    return st;
}

void moecl_model_free(moecl_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int il = 0; il < m->hp.n_layer; il++) {
            mc_layer *L = &m->layers[il];
            free(L->attn_norm);
            free(L->ffn_norm);
            free(L->router);
            free(L->experts);
        }
        free(m->layers);
    }
    free(m->out_norm);
    mc_st_set_close(&m->files);
    moecl_tokenizer_free(m->tokenizer);
    free(m->path);
    free(m);
}

/* ------------------------------------------------------------------------ */
/* Information                                                              */
/* ------------------------------------------------------------------------ */


moecl_status moecl_model_get_info(const moecl_model *m, moecl_model_info *info) {
    if (!m || !info) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_model_get_info: NULL argument");
    const mc_hparams *hp = &m->hp;
    memset(info, 0, sizeof *info);
    snprintf(info->architecture, sizeof info->architecture, "%s", hp->architecture);
    info->n_vocab = hp->n_vocab;
    info->n_embd = hp->n_embd;
    info->n_ff = hp->n_ff;
    info->n_layer = hp->n_layer;
    info->n_head = hp->n_head;
    info->n_head_kv = hp->n_head_kv;
    info->head_dim = hp->head_dim;
    info->n_expert = hp->n_expert;
    info->n_expert_used = hp->n_expert_used;
    info->n_ctx_train = hp->n_ctx_train;
    info->sliding_window = hp->sliding_window;
    info->rms_norm_eps = hp->rms_norm_eps;
    info->rope_theta = hp->rope_theta;
    info->bos_id = hp->bos_id;
    info->eos_id = hp->eos_id;
    info->tie_word_embeddings = hp->tie_word_embeddings;

    /* Parameters and bytes as stored in the files; the f32 copies of small
     * vectors are counted in their stored dtype. */
    uint64_t shared = 0, experts = 0;
    for (int i = 0; i < m->files.n_files; i++) {
        const mc_st_file *f = &m->files.files[i];
        for (int j = 0; j < f->n_tensors; j++) {
            const mc_st_tensor *t = &f->tensors[j];
            uint64_t n = 1;
            for (int d = 0; d < t->n_dims; d++) n *= (uint64_t)t->shape[d];
            if (strstr(t->name, ".experts.")) experts += n;
            else shared += n;
            if (t->type < MOECL_DTYPE_COUNT) info->bytes_by_dtype[t->type] += t->nbytes;
        }
    }
    info->n_params = shared + experts;
    info->n_params_active = shared + experts / (uint64_t)hp->n_expert * (uint64_t)hp->n_expert_used;
    return MOECL_OK;
}
