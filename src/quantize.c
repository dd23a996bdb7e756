/*
 * quantize.c - writing a model as a GGUF file, quantized.
 *
 * The source is any model moecl loads (a Hugging Face directory or a GGUF
 * file); the output is what llama.cpp's converter followed by llama-quantize
 * would write: architecture "llama", llama.cpp's tensor names with the experts
 * of a layer stacked in 3-D tensors, Q and K rows permuted for its
 * interleaved RoPE, the tokenizer as metadata. Matrices are converted row by
 * row (dequantize to float32, permute, quantize), a chunk of rows at a time
 * and in parallel, so memory stays at one chunk per thread.
 *
 * Which type each tensor gets follows llama-quantize's rules for Mixtral
 * (llama.cpp src/llama-quant.cpp, llama_tensor_get_type), for the types
 * moecl computes with.
 */
#include "model.h"
#include "quant/quant.h"
#include "tokenizer/tokenizer.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp's llama_ftype numbers, written as general.file_type. */
enum {
    FT_ALL_F32 = 0,
    FT_F16 = 1,
    FT_Q4_0 = 2,
    FT_Q8_0 = 7,
    FT_Q4_K_S = 14,
    FT_Q4_K_M = 15,
    FT_Q5_K_S = 16,
    FT_Q5_K_M = 17,
    FT_Q6_K = 18,
    FT_BF16 = 32,
};

typedef struct recipe {
    const char *name;
    moecl_dtype base;
    int ftype;
    bool pure;   /* every matrix in base: no per-tensor choices */
} recipe;

static const recipe k_recipes[] = {
    {"f32", MOECL_DTYPE_F32, FT_ALL_F32, true},   {"f16", MOECL_DTYPE_F16, FT_F16, true},
    {"bf16", MOECL_DTYPE_BF16, FT_BF16, true},    {"q8_0", MOECL_DTYPE_Q8_0, FT_Q8_0, false},
    {"q4_0", MOECL_DTYPE_Q4_0, FT_Q4_0, false},   {"q4_K_S", MOECL_DTYPE_Q4_K, FT_Q4_K_S, false},
    {"q4_K_M", MOECL_DTYPE_Q4_K, FT_Q4_K_M, false}, {"q5_K_S", MOECL_DTYPE_Q5_K, FT_Q5_K_S, false},
    {"q5_K_M", MOECL_DTYPE_Q5_K, FT_Q5_K_M, false}, {"q6_K", MOECL_DTYPE_Q6_K, FT_Q6_K, false},
    {"q4_K", MOECL_DTYPE_Q4_K, FT_Q4_K_S, true},  {"q5_K", MOECL_DTYPE_Q5_K, FT_Q5_K_S, true},
};

/* The kinds of matrix the recipes tell apart. */
enum kind { K_EMBD, K_OUTPUT, K_Q, K_K, K_V, K_O, K_GATE, K_UP, K_DOWN };

/* llama.cpp's use_more_bits: the first and last eighth of the layers, and
 * every third one between. */
static bool more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

static bool fits(moecl_dtype t, int64_t cols) { return cols % mc_dtype_block(t) == 0; }

/* The type of one matrix: the recipe's choice, then a fallback when its rows
 * are not whole blocks (llama.cpp falls back from the K-quants to Q5_0 / Q5_1
 * / Q8_0, which moecl does not all compute with: here always Q8_0, then F16). */
static moecl_dtype choose(const recipe *r, enum kind k, int il, const mc_hparams *hp, int64_t cols, bool has_output) {
    moecl_dtype t = r->base;
    const bool kq4m = r->ftype == FT_Q4_K_M, kq5m = r->ftype == FT_Q5_K_M, kq4s = r->ftype == FT_Q4_K_S;
    const bool eight = hp->n_expert == 8;
    if (!r->pure) {
        if (k == K_OUTPUT || (k == K_EMBD && !has_output)) {
            t = !fits(MOECL_DTYPE_Q6_K, cols) ? MOECL_DTYPE_Q8_0 : t != MOECL_DTYPE_Q8_0 ? MOECL_DTYPE_Q6_K : t;
        } else if (k == K_V) {
            if ((kq4m || kq5m) && more_bits(il, hp->n_layer)) t = MOECL_DTYPE_Q6_K;
            else if (kq4s && il < 4) t = MOECL_DTYPE_Q5_K;
            if (eight) t = MOECL_DTYPE_Q8_0;
        } else if (k == K_K) {
            if (eight) t = MOECL_DTYPE_Q8_0;
        } else if (k == K_DOWN) {
            if ((kq4m || kq5m) && more_bits(il, hp->n_layer)) t = MOECL_DTYPE_Q6_K;
            else if (kq4s && il < hp->n_layer / 8) t = MOECL_DTYPE_Q5_K;
        } else if (k == K_O) {
            if (eight && (kq4s || kq4m)) t = MOECL_DTYPE_Q5_K;
        }
    }
    if (!fits(t, cols)) t = fits(MOECL_DTYPE_Q8_0, cols) ? MOECL_DTYPE_Q8_0 : MOECL_DTYPE_F16;
    return t;
}

/* ------------------------------------------------------------------------ */
/* Writing one matrix                                                       */
/* ------------------------------------------------------------------------ */

typedef struct job {
    const char *out;
    mc_gguf_writer *w;
    const recipe *r;
    const mc_hparams *hp;
    int n_threads;
    bool allow_requantize;
    moecl_progress_fn progress;
    void *progress_user;
    int64_t done, total;
    uint64_t bytes_by_type[MOECL_DTYPE_COUNT];
    char *chunk;          /* output rows of one chunk */
    float *rows_f32;      /* [n_threads][cols] */
    size_t chunk_cap, f32_cap;
} job;

#define CHUNK_ROWS 256

static moecl_status reserve(job *j, size_t chunk, size_t f32) {
    if (chunk > j->chunk_cap) {
        free(j->chunk);
        if (!(j->chunk = malloc(chunk))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", j->out);
        j->chunk_cap = chunk;
    }
    if (f32 > j->f32_cap) {
        free(j->rows_f32);
        if (!(j->rows_f32 = malloc(f32))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", j->out);
        j->f32_cap = f32;
    }
    return MOECL_OK;
}

/* Source row of output row r: llama.cpp's converter reorders the rows of
 * each Q/K head from rotate-half pairs (i, i + d/2) to adjacent ones (2i,
 * 2i + 1). */
static int64_t source_row(int64_t r, int head_dim, bool permute) {
    if (!permute) return r;
    const int64_t h = r / head_dim, k = r % head_dim, half = head_dim / 2;
    return h * head_dim + (k % 2) * half + k / 2;
}

/* Convert the matrix W to type t and append its bytes to the file. */
static moecl_status write_matrix(job *j, const mc_tensor *W, moecl_dtype t, bool permute) {
    const int64_t rows = W->rows, cols = W->cols;
    size_t out_row, in_row, f32_bytes, chunk_bytes;
    if (!mc_dtype_row_bytes(t, cols, &out_row) || !mc_dtype_row_bytes(W->type, cols, &in_row) ||
        !mc_mul_size(out_row, CHUNK_ROWS, &chunk_bytes) ||
        !mc_mul_size((size_t)cols * sizeof(float), (size_t)j->n_threads, &f32_bytes))
        return mc_error(MOECL_ERR_FORMAT, "%s: a %lld-column row does not convert to %s", j->out, (long long)cols,
                        moecl_dtype_name(t));
    moecl_status st = reserve(j, chunk_bytes, f32_bytes);
    if (st) return st;
    for (int64_t r0 = 0; r0 < rows; r0 += CHUNK_ROWS) {
        const int64_t n = rows - r0 < CHUNK_ROWS ? rows - r0 : CHUNK_ROWS;
        if (t == W->type && !permute) { /* same type: the bytes as they are */
            memcpy(j->chunk, (const char *)W->data + (size_t)r0 * in_row, (size_t)n * out_row);
        } else {
#pragma omp parallel for num_threads(j->n_threads) schedule(dynamic, 8)
            for (int64_t i = 0; i < n; i++) {
                float *f = j->rows_f32 + (size_t)omp_get_thread_num() * (size_t)cols;
                const int64_t src = source_row(r0 + i, j->hp->head_dim, permute);
                mc_dequantize_row(W->type, (const char *)W->data + (size_t)src * in_row, f, cols);
                mc_quantize_row(t, f, j->chunk + (size_t)i * out_row, cols);
            }
        }
        if ((st = mc_gguf_writer_write_data(j->w, j->chunk, (size_t)n * out_row))) return st;
    }
    j->bytes_by_type[t] += (uint64_t)rows * out_row;
    return MOECL_OK;
}

static moecl_status step(job *j) {
    j->done++;
    if (j->progress && !j->progress((float)j->done / (float)j->total, j->progress_user))
        return mc_error(MOECL_ERR_ABORTED, "%s: quantizing cancelled by the progress callback", j->out);
    return MOECL_OK;
}

/* A float32 vector or small matrix owned by the model (norms, router). */
static moecl_status write_f32(job *j, const float *v, size_t n) {
    j->bytes_by_type[MOECL_DTYPE_F32] += n * sizeof(float);
    return mc_gguf_writer_write_data(j->w, v, n * sizeof(float));
}

/* ------------------------------------------------------------------------ */
/* The tensor list                                                          */
/* ------------------------------------------------------------------------ */

typedef struct entry {
    char name[64];
    moecl_dtype type;
    int n_dims;
    int64_t ne[3];
    enum { E_F32, E_MATRIX, E_EXPERTS } what;
    const float *f32;        /* E_F32 */
    const mc_tensor *mat;    /* E_MATRIX */
    int layer, which;        /* E_EXPERTS: 0 gate (w1), 1 up (w3), 2 down (w2) */
    bool permute;
} entry;

static void add_f32(entry *e, int *n, const char *name, const float *v, int64_t ne0, int64_t ne1) {
    entry *x = &e[(*n)++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->type = MOECL_DTYPE_F32;
    x->n_dims = ne1 > 1 ? 2 : 1;
    x->ne[0] = ne0;
    x->ne[1] = ne1;
    x->what = E_F32;
    x->f32 = v;
}

static void add_mat(entry *e, int *n, const char *name, const mc_tensor *t, moecl_dtype type, bool permute) {
    entry *x = &e[(*n)++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->type = type;
    x->n_dims = 2;
    x->ne[0] = t->cols;
    x->ne[1] = t->rows;
    x->what = E_MATRIX;
    x->mat = t;
    x->permute = permute;
}

/* ------------------------------------------------------------------------ */
/* Metadata                                                                 */
/* ------------------------------------------------------------------------ */

static bool skip_copied_key(const char *key) {
    return !strcmp(key, "general.file_type") || !strcmp(key, "general.quantization_version") ||
           !strcmp(key, "general.alignment") || !strncmp(key, "llama.", 6) || !strcmp(key, "general.architecture");
}

static moecl_status write_metadata(job *j, const moecl_model *m, const char *in_path) {
    const mc_hparams *hp = &m->hp;
    mc_gguf_writer *w = j->w;
    moecl_status st;
#define TRY(x)                  \
    do {                        \
        if ((st = (x))) return st; \
    } while (0)
    TRY(mc_gguf_writer_set_str(w, "general.architecture", "llama", 5));
    if (m->gguf) { /* keep what the source says about itself and its tokenizer */
        for (int64_t i = 0; i < mc_gguf_n_kv(m->gguf); i++) {
            const mc_gguf_kv *kv = mc_gguf_kv_at(m->gguf, i);
            if (!skip_copied_key(kv->key)) TRY(mc_gguf_writer_copy_kv(w, kv));
        }
    } else {
        const char *base = strrchr(in_path, '/');
        base = base && base[1] ? base + 1 : in_path;
        TRY(mc_gguf_writer_set_str(w, "general.name", base, strlen(base)));
    }
    TRY(mc_gguf_writer_set_u32(w, "general.file_type", (uint32_t)j->r->ftype));
    TRY(mc_gguf_writer_set_u32(w, "general.quantization_version", 2));
    TRY(mc_gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)hp->n_vocab));
    TRY(mc_gguf_writer_set_u32(w, "llama.context_length", (uint32_t)hp->n_ctx_train));
    TRY(mc_gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)hp->n_embd));
    TRY(mc_gguf_writer_set_u32(w, "llama.block_count", (uint32_t)hp->n_layer));
    TRY(mc_gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)hp->n_ff));
    TRY(mc_gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)hp->head_dim));
    TRY(mc_gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)hp->n_head));
    TRY(mc_gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)hp->n_head_kv));
    if (hp->head_dim * hp->n_head != hp->n_embd) {
        TRY(mc_gguf_writer_set_u32(w, "llama.attention.key_length", (uint32_t)hp->head_dim));
        TRY(mc_gguf_writer_set_u32(w, "llama.attention.value_length", (uint32_t)hp->head_dim));
    }
    TRY(mc_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", hp->rms_norm_eps));
    TRY(mc_gguf_writer_set_f32(w, "llama.rope.freq_base", hp->rope_theta));
    TRY(mc_gguf_writer_set_u32(w, "llama.expert_count", (uint32_t)hp->n_expert));
    TRY(mc_gguf_writer_set_u32(w, "llama.expert_used_count", (uint32_t)hp->n_expert_used));
    if (!m->gguf && m->tokenizer) TRY(mc_tokenizer_write_gguf_n(m->tokenizer, w, (int32_t)hp->n_vocab));
#undef TRY
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Public                                                                   */
/* ------------------------------------------------------------------------ */

moecl_quantize_params moecl_quantize_default_params(void) {
    moecl_quantize_params p = {.type = "q4_K_M"};
    return p;
}

static moecl_status write_entry(job *j, const moecl_model *m, const entry *e) {
    moecl_status st;
    if (e->what == E_F32) return write_f32(j, e->f32, (size_t)(e->ne[0] * e->ne[1]));
    if (e->what == E_MATRIX) return write_matrix(j, e->mat, e->type, e->permute);
    for (int x = 0; x < m->hp.n_expert; x++) {
        const mc_expert *ex = &m->layers[e->layer].experts[x];
        const mc_tensor *t = e->which == 0 ? &ex->w1 : e->which == 1 ? &ex->w3 : &ex->w2;
        if ((st = write_matrix(j, t, e->type, false))) return st;
    }
    return MOECL_OK;
}

static bool is_quantized(moecl_dtype t) { return mc_dtype_block(t) > 1; }

moecl_status moecl_quantize(const char *in_path, const char *out_path, const moecl_quantize_params *params) {
    if (!in_path || !out_path || !params || !params->type)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_quantize: NULL argument");
    mc_clear_error();
    const recipe *r = NULL;
    for (size_t i = 0; i < sizeof k_recipes / sizeof *k_recipes; i++)
        if (!strcmp(k_recipes[i].name, params->type)) r = &k_recipes[i];
    if (!r)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_quantize: unknown type '%s' (f32, f16, bf16, q8_0, q4_0, q4_K, "
                        "q5_K, q6_K, q4_K_S, q4_K_M, q5_K_S, q5_K_M)", params->type);
    if (!strcmp(in_path, out_path))
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: the output would overwrite the input", out_path);

    moecl_model *m = NULL;
    moecl_status st = moecl_model_load(in_path, NULL, &m);
    if (st) return st;
    const mc_hparams *hp = &m->hp;
    const moecl_dtype src_type = m->layers[0].experts[0].w1.type;
    if (!params->allow_requantize && is_quantized(src_type) && r->base != src_type) {
        moecl_model_free(m);
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: the weights are already quantized (%s); requantizing to %s loses "
                        "accuracy: allow it explicitly", in_path, moecl_dtype_name(src_type), r->name);
    }

    job j = {.out = out_path, .r = r, .hp = hp, .allow_requantize = params->allow_requantize,
             .progress = params->progress, .progress_user = params->progress_user_data};
    j.n_threads = params->n_threads > 0 ? params->n_threads : omp_get_num_procs();
    const int L = hp->n_layer, max_entries = 3 + 10 * L;
    entry *es = calloc((size_t)max_entries, sizeof *es);
    if (!es) {
        moecl_model_free(m);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", out_path);
    }
    const bool has_output = !hp->tie_word_embeddings || m->lm_head.data != m->tok_embd.data;
    const bool permute = !hp->rope_interleaved; /* HF rows: permute; GGUF rows already are */
    int n = 0;
    add_mat(es, &n, "token_embd.weight", &m->tok_embd,
            choose(r, K_EMBD, 0, hp, m->tok_embd.cols, has_output), false);
    for (int il = 0; il < L; il++) {
        const mc_layer *ly = &m->layers[il];
        char nm[64];
#define NM(s) (snprintf(nm, sizeof nm, "blk.%d." s, il), nm)
        add_f32(es, &n, NM("attn_norm.weight"), ly->attn_norm, hp->n_embd, 1);
        add_mat(es, &n, NM("attn_q.weight"), &ly->wq, choose(r, K_Q, il, hp, ly->wq.cols, has_output), permute);
        add_mat(es, &n, NM("attn_k.weight"), &ly->wk, choose(r, K_K, il, hp, ly->wk.cols, has_output), permute);
        add_mat(es, &n, NM("attn_v.weight"), &ly->wv, choose(r, K_V, il, hp, ly->wv.cols, has_output), false);
        add_mat(es, &n, NM("attn_output.weight"), &ly->wo, choose(r, K_O, il, hp, ly->wo.cols, has_output), false);
        add_f32(es, &n, NM("ffn_norm.weight"), ly->ffn_norm, hp->n_embd, 1);
        add_f32(es, &n, NM("ffn_gate_inp.weight"), ly->router, hp->n_embd, hp->n_expert);
        const char *xn[3] = {"ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"};
        const enum kind xk[3] = {K_GATE, K_UP, K_DOWN};
        for (int k = 0; k < 3; k++) {
            entry *x = &es[n++];
            snprintf(x->name, sizeof x->name, "blk.%d.%s", il, xn[k]);
            x->what = E_EXPERTS;
            x->layer = il;
            x->which = k;
            x->n_dims = 3;
            x->ne[0] = k == 2 ? hp->n_ff : hp->n_embd;
            x->ne[1] = k == 2 ? hp->n_embd : hp->n_ff;
            x->ne[2] = hp->n_expert;
            x->type = choose(r, xk[k], il, hp, x->ne[0], has_output);
        }
#undef NM
    }
    add_f32(es, &n, "output_norm.weight", m->out_norm, hp->n_embd, 1);
    if (has_output)
        add_mat(es, &n, "output.weight", &m->lm_head, choose(r, K_OUTPUT, 0, hp, m->lm_head.cols, has_output), false);
    j.total = n;

    st = mc_gguf_writer_new(out_path, 32, &j.w);
    if (!st) st = write_metadata(&j, m, in_path);
    for (int i = 0; i < n && !st; i++) {
        const int64_t ne[3] = {es[i].ne[0], es[i].ne[1], es[i].ne[2]};
        st = mc_gguf_writer_add_tensor(j.w, es[i].name, mc_gguf_type_of(es[i].type), es[i].n_dims, ne);
    }
    for (int i = 0; i < n && !st; i++)
        if (!(st = write_entry(&j, m, &es[i]))) st = step(&j);
    if (!st) st = mc_gguf_writer_finish(j.w);
    if (!st) {
        char sizes[256] = "";
        size_t len = 0;
        for (int t = 0; t < MOECL_DTYPE_COUNT && len < sizeof sizes - 40; t++)
            if (j.bytes_by_type[t])
                len += (size_t)snprintf(sizes + len, sizeof sizes - len, "%s%s %.1f MiB", len ? ", " : "",
                                        moecl_dtype_name((moecl_dtype)t), (double)j.bytes_by_type[t] / 1048576.0);
        mc_log(MOECL_LOG_INFO, "%s: %d tensors as %s: %s", out_path, n, r->name, sizes);
    }
    mc_gguf_writer_free(j.w);
    free(j.chunk);
    free(j.rows_f32);
    free(es);
    moecl_model_free(m);
    return st;
}
