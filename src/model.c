/*
 * model.c - loading a model of any family in the table of architectures
 * (src/arch/) into a moecl_model: a Hugging Face directory (config.json +
 * safetensors) or a GGUF file as llama.cpp writes it.
 *
 * config.json or the GGUF metadata gives the shapes and options; every
 * tensor those call for is looked up by the family's name for it in that
 * format, its shape and dtype checked, and referenced in place in the mapped
 * files (never copied: a quantized model occupies its file size). Experts
 * come stacked as 3-D tensors (GGUF), gate and up fused in one (transformers
 * 5), or one per expert; for Mixtral llama.cpp's converter permuted the Q
 * and K rows for its RoPE, which the interleaved RoPE undoes.
 */
#include "model.h"
#include "arch/arch.h"
#include "guard.h"
#include "backend/cpu/kernels.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------ */
/* Tensor lookup                                                            */
/* ------------------------------------------------------------------------ */

typedef struct loader {
    moecl_model *m;
    const char *dir; /* the directory or file, for messages */
    const char *const *names; /* [MC_TN_COUNT] printf patterns of the layer (and expert); NULL: none */
    const char *const *alt;   /* other spellings, or NULL */
    moecl_progress_fn progress;
    void *progress_user;
    int64_t done, total; /* tensors bound, for progress */
} loader;

/* A tensor found in either format, its shape outermost first (as PyTorch). */
typedef struct found {
    moecl_dtype type;
    int n_dims;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
} found;

static bool find(loader *ld, const char *name, found *f) {
    if (ld->m->gguf) {
        const mc_gguf_tensor *t = mc_gguf_find_tensor(ld->m->gguf, name);
        if (!t) return false;
        f->type = t->dtype;
        f->n_dims = t->n_dims;
        for (int i = 0; i < t->n_dims; i++) f->shape[i] = t->ne[t->n_dims - 1 - i];
        f->data = t->data;
        f->nbytes = t->nbytes;
        if (t->dtype == MOECL_DTYPE_COUNT) { /* reported by the caller, which knows the name */
            const char *tn = mc_gguf_type_name(t->ggml_type);
            mc_error(MOECL_ERR_UNSUPPORTED, "%s: tensor '%s' is stored as %s, which moecl does not compute with "
                     "(f32, f16, bf16, q8_0, q4_0, q4_K, q5_K, q6_K)", ld->dir, name, tn ? tn : "?");
        }
        return true;
    }
    const mc_st_tensor *st = mc_st_set_find(&ld->m->files, name);
    if (!st) return false;
    f->type = st->type;
    f->n_dims = st->n_dims;
    memcpy(f->shape, st->shape, sizeof f->shape);
    f->data = st->data;
    f->nbytes = st->nbytes;
    return true;
}

/* The name of tensor t of layer il (expert e) in this format, into buf: the
 * first spelling, or the other one when only that is in the files. NULL
 * when the format has no such tensor. */
static const char *tname(loader *ld, mc_tn t, int il, int e, char *buf, size_t n) {
    const char *pat = ld->names[t];
    if (!pat) return NULL;
    snprintf(buf, n, pat, il, e);
    found f;
    if (ld->alt && ld->alt[t] && !find(ld, buf, &f)) {
        char other[160];
        snprintf(other, sizeof other, ld->alt[t], il, e);
        if (find(ld, other, &f)) snprintf(buf, n, "%s", other);
    }
    return buf;
}

static bool has(loader *ld, mc_tn t, int il) {
    char name[160];
    found f;
    return tname(ld, t, il, 0, name, sizeof name) && find(ld, name, &f);
}

static moecl_status shape_error(loader *ld, const char *name, const found *f, int n, const int64_t *want) {
    char got[96], exp[96];
    return mc_error(MOECL_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected %s", ld->dir, name,
                    mc_shape_str(f->n_dims, f->shape, got, sizeof got), mc_shape_str(n, want, exp, sizeof exp));
}

static moecl_status progress(loader *ld) {
    ld->done++;
    if (ld->progress && !ld->progress((float)ld->done / (float)ld->total, ld->progress_user))
        return mc_error(MOECL_ERR_ABORTED, "%s: loading cancelled by the progress callback", ld->dir);
    return MOECL_OK;
}

/* Find `name` and check its shape: n_dims entries of want, outermost first.
 * The tensor is bound as a matrix of `rows` rows (0: want[n-2], or one for
 * a vector) of want[n-1] columns, starting at row row0 of slice `slice` of
 * the outermost dimension when n = 3. */
static moecl_status bind_part(loader *ld, mc_tensor *t, const char *name, int n, const int64_t *want, int64_t slice,
                              int64_t row0, int64_t rows) {
    found f;
    if (!find(ld, name, &f)) return mc_error(MOECL_ERR_FORMAT, "%s: tensor '%s' is missing", ld->dir, name);
    if (f.type == MOECL_DTYPE_COUNT) return MOECL_ERR_UNSUPPORTED; /* find() recorded the message */
    bool ok = f.n_dims == n;
    for (int i = 0; ok && i < n; i++) ok = f.shape[i] == want[i];
    if (!ok) return shape_error(ld, name, &f, n, want);
    const int64_t cols = want[n - 1], all_rows = n >= 2 ? want[n - 2] : 1;
    if (!rows) rows = all_rows;
    size_t row_bytes, bytes;
    if (!mc_dtype_row_bytes(f.type, cols, &row_bytes) || !mc_mul_size(row_bytes, (size_t)all_rows, &bytes))
        return mc_error(MOECL_ERR_FORMAT, "%s: tensor '%s': %lld columns are not whole %s blocks", ld->dir, name,
                        (long long)cols, moecl_dtype_name(f.type));
    t->type = f.type;
    t->rows = rows;
    t->cols = cols;
    t->data = (const char *)f.data + (size_t)slice * bytes + (size_t)row0 * row_bytes;
    t->nbytes = row_bytes * (size_t)rows;
    return MOECL_OK;
}

/* A rows x cols matrix (cols == 0: a vector of rows elements). */
static moecl_status bind(loader *ld, mc_tensor *t, const char *name, int64_t rows, int64_t cols) {
    const int64_t mat[2] = {rows, cols}, vec[1] = {rows};
    moecl_status st = cols == 0 ? bind_part(ld, t, name, 1, vec, 0, 0, 0) : bind_part(ld, t, name, 2, mat, 0, 0, 0);
    return st ? st : progress(ld);
}

/* A float32 copy of a bound tensor. */
static moecl_status copy_f32(loader *ld, const mc_tensor *t, const char *name, float **out) {
    size_t n = (size_t)(t->rows * t->cols), bytes;
    if (!mc_mul_size(n, sizeof(float), &bytes)) return mc_error(MOECL_ERR_FORMAT, "%s: '%s' too large", ld->dir, name);
    float *p = malloc(bytes);
    if (!p) return mc_error(MOECL_ERR_NOMEM, "%s: no memory for '%s'", ld->dir, name);
    for (int64_t r = 0; r < t->rows; r++) /* row by row: quantized blocks never span rows */
        mc_cpu_to_f32(t->type, (const char *)t->data + (size_t)r * (t->nbytes / (size_t)t->rows), p + r * t->cols,
                      t->cols);
    *out = p;
    return MOECL_OK;
}

/* Bind a small tensor and keep a float32 copy of it. */
static moecl_status bind_f32(loader *ld, float **out, const char *name, int64_t rows, int64_t cols) {
    mc_tensor t;
    moecl_status st = bind(ld, &t, name, rows, cols);
    return st ? st : copy_f32(ld, &t, name, out);
}

/* Tensor t of layer il: a matrix, or a vector (cols == 0) kept as float32. */
static moecl_status bind_tn(loader *ld, mc_tn t, int il, mc_tensor *mat, float **vec, int64_t rows, int64_t cols) {
    char name[160];
    if (!tname(ld, t, il, 0, name, sizeof name))
        return mc_error(MOECL_ERR_FORMAT, "%s: the %s format of %s has no name for a tensor this model needs", ld->dir,
                        ld->m->gguf ? "GGUF" : "Hugging Face", ld->m->hp.arch->name);
    return vec ? bind_f32(ld, vec, name, rows, cols) : bind(ld, mat, name, rows, cols);
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                  */
/* ------------------------------------------------------------------------ */

/* The experts of a layer: stacked 3-D tensors when the file has them (GGUF),
 * gate and up fused in one 3-D tensor (transformers 5: gate_up_proj[e] is
 * the F gate rows then the F up rows, as its forward splits it with
 * chunk(2)), else one tensor per expert. */
static moecl_status bind_experts(loader *ld, int il) {
    const mc_hparams *hp = &ld->m->hp;
    mc_layer *L = &ld->m->layers[il];
    const int64_t D = hp->n_embd, F = hp->n_ff, E = hp->n_expert;
    char name[160];
    moecl_status st;
    if (has(ld, MC_TN_EXPS_GATE, il) || has(ld, MC_TN_EXPS_GATE_UP, il)) {
        const bool fused = !has(ld, MC_TN_EXPS_GATE, il);
        const mc_tn which[3] = {fused ? MC_TN_EXPS_GATE_UP : MC_TN_EXPS_GATE, MC_TN_EXPS_UP, MC_TN_EXPS_DOWN};
        const int64_t shapes[3][3] = {{E, fused ? 2 * F : F, D}, {E, F, D}, {E, D, F}};
        for (int k = 0; k < 3; k++) {
            if (fused && k == 1) continue;
            tname(ld, which[k], il, 0, name, sizeof name);
            for (int e = 0; e < E; e++) {
                mc_expert *x = &L->experts[e];
                if (k == 2) st = bind_part(ld, &x->w2, name, 3, shapes[k], e, 0, 0);
                else if (!fused) st = bind_part(ld, k == 0 ? &x->w1 : &x->w3, name, 3, shapes[k], e, 0, 0);
                else if (!(st = bind_part(ld, &x->w1, name, 3, shapes[k], e, 0, F)))
                    st = bind_part(ld, &x->w3, name, 3, shapes[k], e, F, F);
                if (st) return st;
            }
            if ((st = progress(ld))) return st;
        }
        ld->done += 3 * E - 3;
        return MOECL_OK;
    }
    for (int e = 0; e < hp->n_expert; e++) {
        mc_expert *x = &L->experts[e];
        const char *n1 = tname(ld, MC_TN_EXP_GATE, il, e, name, sizeof name);
        if (!n1) return mc_error(MOECL_ERR_FORMAT, "%s: the experts of layer %d are missing", ld->dir, il);
        if ((st = bind(ld, &x->w1, name, F, D))) return st;
        tname(ld, MC_TN_EXP_DOWN, il, e, name, sizeof name);
        if ((st = bind(ld, &x->w2, name, D, F))) return st;
        tname(ld, MC_TN_EXP_UP, il, e, name, sizeof name);
        if ((st = bind(ld, &x->w3, name, F, D))) return st;
    }
    return MOECL_OK;
}

/* A gate/up/down FFN of width F (a dense layer's, or the shared expert). */
static moecl_status bind_ffn(loader *ld, int il, mc_tn gate, mc_tn up, mc_tn down, int64_t F, mc_expert *x) {
    const int64_t D = ld->m->hp.n_embd;
    moecl_status st;
    if ((st = bind_tn(ld, gate, il, &x->w1, NULL, F, D)) || (st = bind_tn(ld, up, il, &x->w3, NULL, F, D)) ||
        (st = bind_tn(ld, down, il, &x->w2, NULL, D, F)))
        return st;
    return MOECL_OK;
}

static moecl_status bind_layer(loader *ld, int il) {
    const mc_hparams *hp = &ld->m->hp;
    mc_layer *L = &ld->m->layers[il];
    const int64_t D = hp->n_embd;
    const int64_t q_dim = (int64_t)hp->n_head * hp->head_dim, kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    moecl_status st;

    if ((st = bind_tn(ld, MC_TN_ATTN_NORM, il, NULL, &L->attn_norm, D, 0)) ||
        (st = bind_tn(ld, MC_TN_ATTN_Q, il, &L->wq, NULL, q_dim, D)) ||
        (st = bind_tn(ld, MC_TN_ATTN_K, il, &L->wk, NULL, kv_dim, D)) ||
        (st = bind_tn(ld, MC_TN_ATTN_V, il, &L->wv, NULL, kv_dim, D)) ||
        (st = bind_tn(ld, MC_TN_ATTN_OUT, il, &L->wo, NULL, D, q_dim)))
        return st;
    if (hp->qkv_bias && ((st = bind_tn(ld, MC_TN_ATTN_Q_BIAS, il, NULL, &L->bq, q_dim, 0)) ||
                         (st = bind_tn(ld, MC_TN_ATTN_K_BIAS, il, NULL, &L->bk, kv_dim, 0)) ||
                         (st = bind_tn(ld, MC_TN_ATTN_V_BIAS, il, NULL, &L->bv, kv_dim, 0))))
        return st;
    if (hp->attn_bias && (st = bind_tn(ld, MC_TN_ATTN_OUT_BIAS, il, NULL, &L->bo, D, 0))) return st;
    if (hp->qk_norm != MC_QK_NORM_NONE) {
        const bool head = hp->qk_norm == MC_QK_NORM_HEAD;
        if ((st = bind_tn(ld, MC_TN_ATTN_Q_NORM, il, NULL, &L->q_norm, head ? hp->head_dim : q_dim, 0)) ||
            (st = bind_tn(ld, MC_TN_ATTN_K_NORM, il, NULL, &L->k_norm, head ? hp->head_dim : kv_dim, 0)))
            return st;
    }
    if ((st = bind_tn(ld, MC_TN_FFN_NORM, il, NULL, &L->ffn_norm, D, 0))) return st;
    if (mc_hp_dense(hp, il))
        return bind_ffn(ld, il, MC_TN_FFN_GATE, MC_TN_FFN_UP, MC_TN_FFN_DOWN, hp->n_ff_dense, &L->ffn);

    if ((st = bind_tn(ld, MC_TN_ROUTER, il, NULL, &L->router, hp->n_expert, D))) return st;
    if (hp->shared_expert) {
        if ((st = bind_ffn(ld, il, MC_TN_SHEXP_GATE, MC_TN_SHEXP_UP, MC_TN_SHEXP_DOWN, hp->n_ff_shexp, &L->shexp)))
            return st;
        /* transformers keeps the gate as a [1, D] linear; llama.cpp's converter writes [D] */
        char name[160];
        mc_tensor g;
        tname(ld, MC_TN_SHEXP_INP, il, 0, name, sizeof name);
        found f;
        const bool vec = find(ld, name, &f) && f.n_dims == 1;
        if ((st = vec ? bind(ld, &g, name, D, 0) : bind(ld, &g, name, 1, D)) ||
            (st = copy_f32(ld, &g, name, &L->shexp_gate)))
            return st;
    }
    L->experts = calloc((size_t)hp->n_expert, sizeof *L->experts);
    if (!L->experts) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", ld->dir);
    return bind_experts(ld, il);
}

/* Tensors bound, for progress: an estimate is enough (the loader reports
 * 1.0 at the end), but never below the count. */
static int64_t tensor_count(const mc_hparams *hp) {
    int64_t per_layer = 7 + 3 * (int64_t)hp->n_expert + 4 + 2 + 4;
    return 3 + (int64_t)hp->n_layer * per_layer;
}

moecl_model_params moecl_model_default_params(void) {
    moecl_model_params p = {0};
    return p;
}

/* ------------------------------------------------------------------------ */
/* GGUF hyperparameters                                                     */
/* ------------------------------------------------------------------------ */

#define GG_MAX_DIM (1 << 20)
#define GG_MAX_LAYERS 4096
#define GG_MAX_EXPERTS 1024
#define GG_MAX_CTX (1 << 30)

/* An integer metadata value in [lo, hi]; absent and not required: def. */
static moecl_status gg_int(const mc_gguf *g, const char *arch, const char *key, bool required, int64_t lo, int64_t hi,
                           int64_t def, int32_t *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    int64_t v = def;
    moecl_status st = mc_gguf_get_int(g, full, required, &v);
    if (st) return st;
    if (v < lo || v > hi)
        return mc_error(MOECL_ERR_FORMAT, "%s: %s = %lld is out of range [%lld, %lld]", mc_gguf_path(g), full,
                        (long long)v, (long long)lo, (long long)hi);
    *out = (int32_t)v;
    return MOECL_OK;
}

static moecl_status gg_float(const mc_gguf *g, const char *arch, const char *key, bool required, double hi,
                             double def, float *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    double v = def;
    moecl_status st = mc_gguf_get_float(g, full, required, &v);
    if (st) return st;
    if (!(v > 0 && v <= hi))
        return mc_error(MOECL_ERR_FORMAT, "%s: %s = %g is out of range (0, %g]", mc_gguf_path(g), full, v, hi);
    *out = (float)v;
    return MOECL_OK;
}

/* A model as llama.cpp writes it: general.architecture picks the family,
 * whose table names the keys under "<arch>.". */
static moecl_status gguf_hparams(const mc_gguf *g, mc_hparams *hp) {
    const char *path = mc_gguf_path(g);
    mc_gguf_str arch_s = {0};
    moecl_status st = mc_gguf_get_str(g, "general.architecture", true, &arch_s);
    if (st) return st;
    const mc_arch *A = mc_arch_by_gguf(arch_s.ptr, arch_s.len);
    char names[256];
    if (!A)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: general.architecture is '%.*s'; moecl runs %s (Mixtral is "
                        "'llama' with experts)", path, (int)(arch_s.len > 64 ? 64 : arch_s.len), arch_s.ptr,
                        mc_arch_list(2, names, sizeof names));
    const char *arch = A->gguf_arch;
    hp->arch = A;
    snprintf(hp->architecture, sizeof hp->architecture, "%s", arch);

    int32_t n_rot = 0, v_len = 0;
    if ((st = gg_int(g, arch, "expert_count", false, 0, GG_MAX_EXPERTS, 0, &hp->n_expert))) return st;
    if (hp->n_expert == 0)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: %s.expert_count is absent or 0: a dense model, not a "
                        "mixture of experts", path, arch);
    /* The vocabulary: the key, else the embedding's rows. */
    const mc_gguf_tensor *embd = mc_gguf_find_tensor(g, mc_arch_gguf_name(MC_TN_TOK_EMBD));
    int32_t n_vocab_t = embd && embd->n_dims == 2 && embd->ne[1] <= GG_MAX_DIM ? (int32_t)embd->ne[1] : 0;
    for (int i = 0; i < A->n_keys; i++) {
        const mc_arch_key *k = &A->keys[i];
        int32_t *out = mc_hp_field(hp, k->hp);
        int64_t lo, hi, def = k->def;
        bool required = k->required;
        mc_hp_range(k->hp, hp, &lo, &hi);
        if (k->hp == MC_HP_N_EXPERT) continue; /* read above */
        if (k->hp == MC_HP_N_VOCAB) {
            def = n_vocab_t;
            required = n_vocab_t == 0;
        } else if (k->hp == MC_HP_N_HEAD_KV) {
            def = hp->n_head;
        } else if (k->hp == MC_HP_HEAD_DIM) {
            def = hp->n_embd % hp->n_head == 0 ? hp->n_embd / hp->n_head : 0;
            required = def == 0;
        }
        if (!k->gguf) {
            *out = (int32_t)def;
            continue;
        }
        if ((st = gg_int(g, arch, k->gguf, required, lo, hi, def, out))) return st;
    }
    if ((st = gg_float(g, arch, "attention.layer_norm_rms_epsilon", true, 1.0, 0, &hp->rms_norm_eps)) ||
        (st = gg_float(g, arch, "rope.freq_base", false, 1e12, 10000.0, &hp->rope_theta)))
        return st;
    if (hp->n_head % hp->n_head_kv != 0)
        return mc_error(MOECL_ERR_FORMAT, "%s: %s.attention.head_count (%d) is not a multiple of head_count_kv (%d)",
                        path, arch, hp->n_head, hp->n_head_kv);
    if ((st = gg_int(g, arch, "attention.value_length", false, 1, GG_MAX_DIM, hp->head_dim, &v_len)) ||
        (st = gg_int(g, arch, "rope.dimension_count", false, 1, GG_MAX_DIM, hp->head_dim, &n_rot)))
        return st;
    if (v_len != hp->head_dim)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: key length %d and value length %d differ", path, hp->head_dim, v_len);
    if (n_rot != hp->head_dim || hp->head_dim % 2)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: RoPE over %d of %d head dimensions: only full, even rotation is "
                        "supported", path, n_rot, hp->head_dim);
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    mc_gguf_str scaling = {0};
    if ((st = mc_gguf_get_str(g, key, false, &scaling))) return st;
    if (scaling.len && !(scaling.len == 4 && !memcmp(scaling.ptr, "none", 4)))
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: RoPE scaling '%.*s' is not supported", path,
                        (int)(scaling.len > 32 ? 32 : scaling.len), scaling.ptr);
    /* The router rule: llama.cpp's graph fixes it per family; moecl's writer
     * says so when a model differs from that. */
    snprintf(key, sizeof key, "%s.expert_weights_norm", arch);
    hp->norm_topk = A->gguf_norm_topk;
    if ((st = mc_gguf_get_bool(g, key, false, &hp->norm_topk))) return st;

    hp->bos_id = hp->eos_id = -1;
    int64_t id = -1;
    if ((st = mc_gguf_get_int(g, "tokenizer.ggml.bos_token_id", false, &id))) return st;
    hp->bos_id = id >= 0 && id < hp->n_vocab ? (int32_t)id : -1;
    id = -1;
    if ((st = mc_gguf_get_int(g, "tokenizer.ggml.eos_token_id", false, &id))) return st;
    hp->eos_id = id >= 0 && id < hp->n_vocab ? (int32_t)id : -1;
    hp->tie_word_embeddings = !mc_gguf_find_tensor(g, mc_arch_gguf_name(MC_TN_OUTPUT));
    hp->rope_interleaved = A->gguf_rope_interleaved;
    hp->qk_norm = A->qk_norm;
    hp->shared_expert = A->shared_expert;
    /* Optional tensors llama.cpp loads when present: the biases. */
    char name[64];
    snprintf(name, sizeof name, mc_arch_gguf_name(MC_TN_ATTN_Q_BIAS), 0);
    hp->qkv_bias = mc_gguf_find_tensor(g, name) != NULL;
    snprintf(name, sizeof name, mc_arch_gguf_name(MC_TN_ATTN_OUT_BIAS), 0);
    hp->attn_bias = mc_gguf_find_tensor(g, name) != NULL;
    /* A dense layer has a plain FFN and no router. */
    bool any_dense = false;
    for (int il = 0; A->dense_layers && il < hp->n_layer; il++) {
        char r[64], f[64];
        snprintf(r, sizeof r, mc_arch_gguf_name(MC_TN_ROUTER), il);
        snprintf(f, sizeof f, mc_arch_gguf_name(MC_TN_FFN_GATE), il);
        if (!mc_gguf_find_tensor(g, r) && mc_gguf_find_tensor(g, f)) {
            mc_hp_set_dense(hp, il);
            any_dense = true;
        }
    }
    if (any_dense && hp->n_ff_dense <= 0)
        return mc_error(MOECL_ERR_FORMAT, "%s: dense layers need %s.feed_forward_length", path, arch);
    /* llama.cpp's key for it; moecl quantize writes it */
    return gg_int(g, arch, "attention.sliding_window", false, 0, GG_MAX_CTX, 0, &hp->sliding_window);
}

/* Where the model and its tokenizer meet: a tokenizer with more ids than
 * the embedding has rows makes ids the model cannot take, and a huge one
 * costs memory for nothing (16.7 M ids are 2 GB). More than VOCAB_SLACK ids
 * over is refused, before a GGUF's tokenizer is built; any other mismatch is
 * logged (fewer ids than rows is the usual padded embedding). */
#define VOCAB_SLACK 256
static moecl_status check_vocab(const char *path, int64_t n_tok, int32_t n_vocab) {
    if (n_tok > (int64_t)n_vocab + VOCAB_SLACK)
        return mc_error(MOECL_ERR_FORMAT, "%s: the tokenizer has %lld ids but the model's embedding only %d rows "
                        "(at most %d more ids are accepted)", path, (long long)n_tok, n_vocab, VOCAB_SLACK);
    if (n_tok != n_vocab)
        mc_log(n_tok > n_vocab ? MOECL_LOG_WARN : MOECL_LOG_INFO,
               "%s: the tokenizer has %lld ids, the model's embedding %d rows%s", path, (long long)n_tok, n_vocab,
               n_tok > n_vocab ? ": the ids past the embedding cannot be decoded" : "");
    return MOECL_OK;
}

static bool has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

moecl_status moecl_model_load(const char *path, const moecl_model_params *params, moecl_model **out) {
    if (!out) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_model_load: out is NULL");
    *out = NULL;
    if (!path) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_model_load: path is NULL");
    mc_clear_error();
    moecl_model_params defaults = moecl_model_default_params();
    if (!params) params = &defaults;

    struct stat sb;
    if (stat(path, &sb) != 0) return mc_error(MOECL_ERR_IO, "%s: %s", path, strerror(errno));
    const bool is_dir = S_ISDIR(sb.st_mode);
    if (!is_dir && !has_suffix(path, ".gguf"))
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: not a model (expected a directory with config.json and "
                        "*.safetensors, or a .gguf file)", path);

    moecl_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
    }

    loader ld = {.m = m, .dir = path, .progress = params->progress, .progress_user = params->progress_user_data};
    moecl_status st;
    if (is_dir) {
        char cfg[4096];
        if ((size_t)snprintf(cfg, sizeof cfg, "%s/config.json", path) >= sizeof cfg) {
            st = mc_error(MOECL_ERR_INVALID_ARG, "%s: path too long", path);
            goto fail;
        }
        if ((st = mc_hf_config_load(cfg, &m->hp))) goto fail;
        if ((st = mc_st_set_open_dir(path, &m->files))) goto fail;
        /* A tokenizer moecl cannot read yet does not keep the weights from
         * loading: the model then takes token ids only. */
        if ((st = mc_tokenizer_load_dir_optional(path, &m->tokenizer)) == MOECL_ERR_UNSUPPORTED) {
            mc_log(MOECL_LOG_WARN, "%s: no tokenizer (%s); the model takes token ids", path, moecl_last_error());
            mc_clear_error();
            st = MOECL_OK;
        }
        if (st) goto fail;
        if (m->tokenizer && (st = check_vocab(path, moecl_tokenizer_n_vocab(m->tokenizer), m->hp.n_vocab))) goto fail;
    } else {
        if ((st = mc_gguf_open(path, &m->gguf))) goto fail;
        if ((st = gguf_hparams(m->gguf, &m->hp))) goto fail;
        const mc_gguf_kv *toks = mc_gguf_find_kv(m->gguf, "tokenizer.ggml.tokens");
        if (toks && (st = check_vocab(path, (int64_t)toks->n, m->hp.n_vocab))) goto fail;
        /* The progress callback can cancel a merge table built from scores. */
        st = mc_tokenizer_from_gguf_ex(m->gguf, params->progress, params->progress_user_data, NULL, &m->tokenizer);
        if (st == MOECL_ERR_UNSUPPORTED) {
            mc_log(MOECL_LOG_WARN, "%s: no tokenizer (%s); the model takes token ids", path, moecl_last_error());
            mc_clear_error();
            st = MOECL_OK;
        }
        if (st) goto fail;
    }

    if ((st = mc_guard_new_model(m, &m->guard))) goto fail; /* from here on, reads of the mapping are guarded */
    const mc_hparams *hp = &m->hp;
    int n_dense = 0;
    for (int il = 0; il < hp->n_layer; il++) n_dense += mc_hp_dense(hp, il);
    if (n_dense == hp->n_layer) {
        st = mc_error(MOECL_ERR_UNSUPPORTED, "%s: every layer is dense (mlp_only_layers, decoder_sparse_step): not a "
                      "mixture of experts", path);
        goto fail;
    }
    const char *k_gguf[MC_TN_COUNT]; /* per call: loads run on several threads at once */
    for (int t = 0; t < MC_TN_COUNT; t++) k_gguf[t] = mc_arch_gguf_name((mc_tn)t);
    ld.names = is_dir ? hp->arch->hf_names : k_gguf;
    ld.alt = is_dir ? hp->arch->hf_alt : NULL;
    ld.total = tensor_count(hp);
    if (!(m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers))) {
        st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    if ((st = bind_tn(&ld, MC_TN_TOK_EMBD, 0, &m->tok_embd, NULL, hp->n_vocab, hp->n_embd))) goto fail;
    for (int il = 0; il < hp->n_layer; il++)
        if ((st = bind_layer(&ld, il))) goto fail;
    if ((st = bind_tn(&ld, MC_TN_OUTPUT_NORM, 0, NULL, &m->out_norm, hp->n_embd, 0))) goto fail;
    if (hp->tie_word_embeddings && !has(&ld, MC_TN_OUTPUT, 0)) {
        m->lm_head = m->tok_embd;
        ld.done++;
    } else if ((st = bind_tn(&ld, MC_TN_OUTPUT, 0, &m->lm_head, NULL, hp->n_vocab, hp->n_embd))) {
        goto fail;
    }
    if (params->progress && !params->progress(1.0f, params->progress_user_data)) {
        st = mc_error(MOECL_ERR_ABORTED, "%s: loading cancelled by the progress callback", path);
        goto fail;
    }
    if ((st = mc_guard_leave(m->guard, MOECL_OK))) goto fail;
    mc_log(MOECL_LOG_INFO, "%s: %s, %d layers, %d experts (top-%d), hidden %d, vocab %d, experts in %s", path,
           hp->arch->name, hp->n_layer, hp->n_expert, hp->n_expert_used, hp->n_embd, hp->n_vocab,
           moecl_dtype_name(mc_model_expert_dtype(m)));
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
            float *vecs[] = {L->attn_norm, L->bq, L->bk, L->bv, L->bo, L->q_norm, L->k_norm, L->ffn_norm, L->router,
                             L->shexp_gate};
            for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++) free(vecs[i]);
            free(L->experts);
        }
        free(m->layers);
    }
    free(m->out_norm);
    mc_guard_free(m->guard); /* before the files are unmapped */
    mc_st_set_close(&m->files);
    mc_gguf_close(m->gguf);
    moecl_tokenizer_free(m->tokenizer);
    free(m->path);
    free(m);
}

/* ------------------------------------------------------------------------ */
/* Information                                                              */
/* ------------------------------------------------------------------------ */


/* Routed experts in llama.cpp's names: stacked (ffn_gate_exps) or one per
 * expert (ffn_gate.E); a dense layer's ffn_gate is not one. */
static bool is_gguf_expert(const char *name) {
    if (strstr(name, "_exps.")) return true;
    const char *parts[3] = {".ffn_gate.", ".ffn_up.", ".ffn_down."};
    for (int i = 0; i < 3; i++) {
        const char *p = strstr(name, parts[i]);
        if (p && p[strlen(parts[i])] >= '0' && p[strlen(parts[i])] <= '9') return true;
    }
    return false;
}

moecl_dtype mc_model_expert_dtype(const moecl_model *m) {
    for (int il = 0; il < m->hp.n_layer; il++)
        if (m->layers[il].experts) return m->layers[il].experts[0].w1.type;
    return MOECL_DTYPE_F32;
}

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
    for (int64_t i = 0; m->gguf && i < mc_gguf_n_tensors(m->gguf); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(m->gguf, i);
        uint64_t n = 1;
        for (int d = 0; d < t->n_dims; d++) n *= (uint64_t)t->ne[d];
        if (is_gguf_expert(t->name)) experts += n;
        else shared += n;
        if (t->dtype < MOECL_DTYPE_COUNT) info->bytes_by_dtype[t->dtype] += t->nbytes;
    }
    uint64_t per_token = m->lm_head.nbytes + (uint64_t)hp->n_embd * 4; /* LM head, final norm */
    for (int il = 0; il < hp->n_layer; il++) {
        const mc_layer *L = &m->layers[il];
        per_token += L->wq.nbytes + L->wk.nbytes + L->wv.nbytes + L->wo.nbytes;
        per_token += (uint64_t)hp->n_embd * 4 * 2; /* norms (f32 copies) */
        const mc_expert *dense[2] = {&L->ffn, &L->shexp};
        for (int k = 0; k < 2; k++) per_token += dense[k]->w1.nbytes + dense[k]->w2.nbytes + dense[k]->w3.nbytes;
        if (!L->experts) continue;
        uint64_t ex = 0;
        for (int e = 0; e < hp->n_expert; e++)
            ex += L->experts[e].w1.nbytes + L->experts[e].w2.nbytes + L->experts[e].w3.nbytes;
        per_token += (uint64_t)hp->n_embd * 4 * (uint64_t)hp->n_expert; /* router (f32 copy) */
        per_token += ex / (uint64_t)hp->n_expert * (uint64_t)hp->n_expert_used;
    }
    info->bytes_per_token = per_token;
    info->expert_dtype = mc_model_expert_dtype(m);
    info->n_params = shared + experts;
    info->n_params_active = shared + experts / (uint64_t)hp->n_expert * (uint64_t)hp->n_expert_used;
    return MOECL_OK;
}

