/*
 * model.c - loading a Mixtral model into a moecl_model: a Hugging Face
 * directory (config.json + safetensors) or a GGUF file as llama.cpp writes it.
 *
 * config.json or the GGUF metadata gives the shapes; every tensor the
 * architecture needs is looked up by its name in that format, its shape and
 * dtype checked, and referenced in place in the mapped files (never copied:
 * a quantized model occupies its file size). GGUF experts come stacked as 3-D
 * tensors or one per expert; llama.cpp's converter permuted the Q and K rows
 * for its RoPE, which the interleaved RoPE undoes.
 */
#include "model.h"
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

/* Tensor names in each format: printf patterns of the layer (and expert). */
typedef struct naming {
    const char *embd, *out_norm, *lm_head;
    const char *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *router;
    const char *w1, *w2, *w3;    /* one tensor per expert: layer, expert */
    const char *w1s, *w2s, *w3s; /* the experts of a layer stacked [E, rows, cols]: layer; NULL: none */
} naming;

static const naming k_hf_names = {
    .embd = "model.embed_tokens.weight",
    .out_norm = "model.norm.weight",
    .lm_head = "lm_head.weight",
    .attn_norm = "model.layers.%d.input_layernorm.weight",
    .wq = "model.layers.%d.self_attn.q_proj.weight",
    .wk = "model.layers.%d.self_attn.k_proj.weight",
    .wv = "model.layers.%d.self_attn.v_proj.weight",
    .wo = "model.layers.%d.self_attn.o_proj.weight",
    .ffn_norm = "model.layers.%d.post_attention_layernorm.weight",
    .router = "model.layers.%d.block_sparse_moe.gate.weight",
    .w1 = "model.layers.%d.block_sparse_moe.experts.%d.w1.weight",
    .w2 = "model.layers.%d.block_sparse_moe.experts.%d.w2.weight",
    .w3 = "model.layers.%d.block_sparse_moe.experts.%d.w3.weight",
};

/* llama.cpp's names (architecture "llama" with experts). */
static const naming k_gguf_names = {
    .embd = "token_embd.weight",
    .out_norm = "output_norm.weight",
    .lm_head = "output.weight",
    .attn_norm = "blk.%d.attn_norm.weight",
    .wq = "blk.%d.attn_q.weight",
    .wk = "blk.%d.attn_k.weight",
    .wv = "blk.%d.attn_v.weight",
    .wo = "blk.%d.attn_output.weight",
    .ffn_norm = "blk.%d.ffn_norm.weight",
    .router = "blk.%d.ffn_gate_inp.weight",
    .w1 = "blk.%d.ffn_gate.%d.weight",
    .w2 = "blk.%d.ffn_down.%d.weight",
    .w3 = "blk.%d.ffn_up.%d.weight",
    .w1s = "blk.%d.ffn_gate_exps.weight",
    .w2s = "blk.%d.ffn_down_exps.weight",
    .w3s = "blk.%d.ffn_up_exps.weight",
};

typedef struct loader {
    moecl_model *m;
    const char *dir; /* the directory or file, for messages */
    const naming *names;
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
 * The tensor is bound as a matrix of want[n-2] rows of want[n-1] columns
 * (a vector: one row), slice `slice` of the outermost dimension when n = 3. */
static moecl_status bind_shape(loader *ld, mc_tensor *t, const char *name, int n, const int64_t *want, int64_t slice) {
    found f;
    if (!find(ld, name, &f)) return mc_error(MOECL_ERR_FORMAT, "%s: tensor '%s' is missing", ld->dir, name);
    if (f.type == MOECL_DTYPE_COUNT) return MOECL_ERR_UNSUPPORTED; /* find() recorded the message */
    bool ok = f.n_dims == n;
    for (int i = 0; ok && i < n; i++) ok = f.shape[i] == want[i];
    if (!ok) return shape_error(ld, name, &f, n, want);
    const int64_t cols = want[n - 1], rows = n >= 2 ? want[n - 2] : 1;
    size_t row_bytes, bytes;
    if (!mc_dtype_row_bytes(f.type, cols, &row_bytes) || !mc_mul_size(row_bytes, (size_t)rows, &bytes))
        return mc_error(MOECL_ERR_FORMAT, "%s: tensor '%s': %lld columns are not whole %s blocks", ld->dir, name,
                        (long long)cols, moecl_dtype_name(f.type));
    t->type = f.type;
    t->rows = rows;
    t->cols = cols;
    t->data = (const char *)f.data + (size_t)slice * bytes;
    t->nbytes = bytes;
    return MOECL_OK;
}

/* A rows x cols matrix (cols == 0: a vector of rows elements). */
static moecl_status bind(loader *ld, mc_tensor *t, const char *name, int64_t rows, int64_t cols) {
    const int64_t mat[2] = {rows, cols}, vec[1] = {rows};
    moecl_status st = cols == 0 ? bind_shape(ld, t, name, 1, vec, 0) : bind_shape(ld, t, name, 2, mat, 0);
    return st ? st : progress(ld);
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
    for (int64_t r = 0; r < t.rows; r++) /* row by row: quantized blocks never span rows */
        mc_cpu_to_f32(t.type, (const char *)t.data + (size_t)r * (t.nbytes / (size_t)t.rows), p + r * t.cols, t.cols);
    *out = p;
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                  */
/* ------------------------------------------------------------------------ */

/* The experts of a layer: stacked 3-D tensors when the file has them, else one
 * tensor per expert. */
static moecl_status bind_experts(loader *ld, int il) {
    const mc_hparams *hp = &ld->m->hp;
    const naming *nm = ld->names;
    mc_layer *L = &ld->m->layers[il];
    const int64_t D = hp->n_embd, F = hp->n_ff, E = hp->n_expert;
    char name[160];
    moecl_status st;
    if (nm->w1s) {
        snprintf(name, sizeof name, nm->w1s, il);
        found f;
        if (find(ld, name, &f)) {
            const char *pat[3] = {nm->w1s, nm->w3s, nm->w2s};
            const int64_t shapes[3][3] = {{E, F, D}, {E, F, D}, {E, D, F}};
            for (int k = 0; k < 3; k++) {
                snprintf(name, sizeof name, pat[k], il);
                for (int e = 0; e < E; e++) {
                    mc_expert *x = &L->experts[e];
                    mc_tensor *t = k == 0 ? &x->w1 : k == 1 ? &x->w3 : &x->w2;
                    if ((st = bind_shape(ld, t, name, 3, shapes[k], e))) return st;
                }
                if ((st = progress(ld))) return st;
            }
            ld->done += 3 * E - 3;
            return MOECL_OK;
        }
    }
    for (int e = 0; e < hp->n_expert; e++) {
        mc_expert *x = &L->experts[e];
        snprintf(name, sizeof name, nm->w1, il, e);
        if ((st = bind(ld, &x->w1, name, F, D))) return st;
        snprintf(name, sizeof name, nm->w2, il, e);
        if ((st = bind(ld, &x->w2, name, D, F))) return st;
        snprintf(name, sizeof name, nm->w3, il, e);
        if ((st = bind(ld, &x->w3, name, F, D))) return st;
    }
    return MOECL_OK;
}

static moecl_status bind_layer(loader *ld, int il) {
    const mc_hparams *hp = &ld->m->hp;
    const naming *nm = ld->names;
    mc_layer *L = &ld->m->layers[il];
    const int64_t D = hp->n_embd;
    const int64_t q_dim = (int64_t)hp->n_head * hp->head_dim, kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    char name[160];
    moecl_status st;

#define NAME(pat) (snprintf(name, sizeof name, pat, il), name)
    if ((st = bind_f32(ld, &L->attn_norm, NAME(nm->attn_norm), D, 0))) return st;
    if ((st = bind(ld, &L->wq, NAME(nm->wq), q_dim, D))) return st;
    if ((st = bind(ld, &L->wk, NAME(nm->wk), kv_dim, D))) return st;
    if ((st = bind(ld, &L->wv, NAME(nm->wv), kv_dim, D))) return st;
    if ((st = bind(ld, &L->wo, NAME(nm->wo), D, q_dim))) return st;
    if ((st = bind_f32(ld, &L->ffn_norm, NAME(nm->ffn_norm), D, 0))) return st;
    if ((st = bind_f32(ld, &L->router, NAME(nm->router), hp->n_expert, D))) return st;
#undef NAME
    L->experts = calloc((size_t)hp->n_expert, sizeof *L->experts);
    if (!L->experts) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", ld->dir);
    return bind_experts(ld, il);
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

/* A Mixtral as llama.cpp writes it: architecture "llama" with experts. */
static moecl_status gguf_hparams(const mc_gguf *g, mc_hparams *hp) {
    const char *path = mc_gguf_path(g);
    mc_gguf_str arch_s = {0};
    moecl_status st = mc_gguf_get_str(g, "general.architecture", true, &arch_s);
    if (st) return st;
    char arch[32];
    if (arch_s.len >= sizeof arch || (arch_s.len != 5 || memcmp(arch_s.ptr, "llama", 5)))
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: general.architecture is '%.*s'; moecl runs Mixtral models, "
                        "which llama.cpp writes as 'llama' with experts", path,
                        (int)(arch_s.len > 64 ? 64 : arch_s.len), arch_s.ptr);
    memcpy(arch, arch_s.ptr, arch_s.len);
    arch[arch_s.len] = '\0';
    snprintf(hp->architecture, sizeof hp->architecture, "%s", arch);

    int32_t n_rot = 0, v_len = 0;
    if ((st = gg_int(g, arch, "expert_count", false, 0, GG_MAX_EXPERTS, 0, &hp->n_expert))) return st;
    if (hp->n_expert == 0)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: %s.expert_count is absent or 0: a dense model, not a "
                        "mixture of experts", path, arch);
    if ((st = gg_int(g, arch, "embedding_length", true, 1, GG_MAX_DIM, 0, &hp->n_embd)) ||
        (st = gg_int(g, arch, "feed_forward_length", true, 1, GG_MAX_DIM, 0, &hp->n_ff)) ||
        (st = gg_int(g, arch, "block_count", true, 1, GG_MAX_LAYERS, 0, &hp->n_layer)) ||
        (st = gg_int(g, arch, "attention.head_count", true, 1, GG_MAX_DIM, 0, &hp->n_head)) ||
        (st = gg_int(g, arch, "expert_used_count", true, 1, hp->n_expert, 0, &hp->n_expert_used)) ||
        (st = gg_int(g, arch, "attention.head_count_kv", false, 1, hp->n_head, hp->n_head, &hp->n_head_kv)) ||
        (st = gg_int(g, arch, "context_length", false, 1, GG_MAX_CTX, 4096, &hp->n_ctx_train)) ||
        (st = gg_float(g, arch, "attention.layer_norm_rms_epsilon", true, 1.0, 0, &hp->rms_norm_eps)) ||
        (st = gg_float(g, arch, "rope.freq_base", false, 1e12, 10000.0, &hp->rope_theta)))
        return st;
    if (hp->n_head % hp->n_head_kv != 0)
        return mc_error(MOECL_ERR_FORMAT, "%s: %s.attention.head_count (%d) is not a multiple of head_count_kv (%d)",
                        path, arch, hp->n_head, hp->n_head_kv);
    int32_t def_hd = hp->n_embd % hp->n_head == 0 ? hp->n_embd / hp->n_head : 0;
    if ((st = gg_int(g, arch, "attention.key_length", def_hd == 0, 1, GG_MAX_DIM, def_hd, &hp->head_dim)) ||
        (st = gg_int(g, arch, "attention.value_length", false, 1, GG_MAX_DIM, hp->head_dim, &v_len)) ||
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

    /* The vocabulary: the key, else the embedding's rows. */
    const mc_gguf_tensor *embd = mc_gguf_find_tensor(g, "token_embd.weight");
    int32_t n_vocab_t = embd && embd->n_dims == 2 && embd->ne[1] <= GG_MAX_DIM ? (int32_t)embd->ne[1] : 0;
    if ((st = gg_int(g, arch, "vocab_size", n_vocab_t == 0, 1, GG_MAX_DIM, n_vocab_t, &hp->n_vocab))) return st;
    hp->bos_id = hp->eos_id = -1;
    int64_t id = -1;
    if ((st = mc_gguf_get_int(g, "tokenizer.ggml.bos_token_id", false, &id))) return st;
    hp->bos_id = id >= 0 && id < hp->n_vocab ? (int32_t)id : -1;
    id = -1;
    if ((st = mc_gguf_get_int(g, "tokenizer.ggml.eos_token_id", false, &id))) return st;
    hp->eos_id = id >= 0 && id < hp->n_vocab ? (int32_t)id : -1;
    hp->tie_word_embeddings = !mc_gguf_find_tensor(g, "output.weight");
    hp->rope_interleaved = true; /* the converter permuted the Q and K rows */
    hp->sliding_window = 0;
    return MOECL_OK;
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

    loader ld = {.m = m, .dir = path, .names = is_dir ? &k_hf_names : &k_gguf_names, .progress = params->progress,
                 .progress_user = params->progress_user_data};
    moecl_status st;
    if (is_dir) {
        char cfg[4096];
        if ((size_t)snprintf(cfg, sizeof cfg, "%s/config.json", path) >= sizeof cfg) {
            st = mc_error(MOECL_ERR_INVALID_ARG, "%s: path too long", path);
            goto fail;
        }
        if ((st = mc_hf_config_load(cfg, &m->hp))) goto fail;
        if ((st = mc_st_set_open_dir(path, &m->files))) goto fail;
        if ((st = mc_tokenizer_load_dir_optional(path, &m->tokenizer))) goto fail;
        if (m->tokenizer && (st = check_vocab(path, moecl_tokenizer_n_vocab(m->tokenizer), m->hp.n_vocab))) goto fail;
    } else {
        if ((st = mc_gguf_open(path, &m->gguf))) goto fail;
        if ((st = gguf_hparams(m->gguf, &m->hp))) goto fail;
        const mc_gguf_kv *toks = mc_gguf_find_kv(m->gguf, "tokenizer.ggml.tokens");
        if (toks && (st = check_vocab(path, (int64_t)toks->n, m->hp.n_vocab))) goto fail;
        if ((st = mc_tokenizer_from_gguf(m->gguf, &m->tokenizer))) goto fail;
    }

    if ((st = mc_guard_new_model(m, &m->guard))) goto fail; /* from here on, reads of the mapping are guarded */
    const mc_hparams *hp = &m->hp;
    ld.total = 3 + (int64_t)hp->n_layer * (7 + 3 * (int64_t)hp->n_expert);
    if (!(m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers))) {
        st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    if ((st = bind(&ld, &m->tok_embd, ld.names->embd, hp->n_vocab, hp->n_embd))) goto fail;
    for (int il = 0; il < hp->n_layer; il++)
        if ((st = bind_layer(&ld, il))) goto fail;
    if ((st = bind_f32(&ld, &m->out_norm, ld.names->out_norm, hp->n_embd, 0))) goto fail;
    found lm;
    if (hp->tie_word_embeddings && !find(&ld, ld.names->lm_head, &lm)) {
        m->lm_head = m->tok_embd;
        ld.done++;
    } else if ((st = bind(&ld, &m->lm_head, ld.names->lm_head, hp->n_vocab, hp->n_embd))) {
        goto fail;
    }
    if (params->progress && !params->progress(1.0f, params->progress_user_data)) {
        st = mc_error(MOECL_ERR_ABORTED, "%s: loading cancelled by the progress callback", path);
        goto fail;
    }
    if ((st = mc_guard_leave(m->guard, MOECL_OK))) goto fail;
    mc_log(MOECL_LOG_INFO, "%s: %d layers, %d experts (top-%d), hidden %d, vocab %d, experts in %s", path,
           hp->n_layer, hp->n_expert, hp->n_expert_used, hp->n_embd, hp->n_vocab,
           moecl_dtype_name(m->layers[0].experts[0].w1.type));
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
        if (strstr(t->name, "_exps.") || strstr(t->name, ".ffn_gate.") || strstr(t->name, ".ffn_up.") ||
            strstr(t->name, ".ffn_down."))
            experts += n;
        else
            shared += n;
        if (t->dtype < MOECL_DTYPE_COUNT) info->bytes_by_dtype[t->dtype] += t->nbytes;
    }
    uint64_t per_token = m->lm_head.nbytes + (uint64_t)hp->n_embd * 4; /* LM head, final norm */
    for (int il = 0; il < hp->n_layer; il++) {
        const mc_layer *L = &m->layers[il];
        uint64_t ex = 0;
        for (int e = 0; e < hp->n_expert; e++)
            ex += L->experts[e].w1.nbytes + L->experts[e].w2.nbytes + L->experts[e].w3.nbytes;
        per_token += L->wq.nbytes + L->wk.nbytes + L->wv.nbytes + L->wo.nbytes;
        per_token += (uint64_t)hp->n_embd * 4 * (2 + (uint64_t)hp->n_expert); /* norms, router (f32 copies) */
        per_token += ex / (uint64_t)hp->n_expert * (uint64_t)hp->n_expert_used;
    }
    info->bytes_per_token = per_token;
    info->expert_dtype = m->layers[0].experts[0].w1.type;
    info->n_params = shared + experts;
    info->n_params_active = shared + experts / (uint64_t)hp->n_expert * (uint64_t)hp->n_expert_used;
    return MOECL_OK;
}

