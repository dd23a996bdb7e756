/*
 * quantize.c - writing a model as a GGUF file, quantized.
 *
 * The source is any model moecl loads (a Hugging Face directory or a GGUF
 * file); the output is what llama.cpp's converter followed by llama-quantize
 * would write: the family's GGUF architecture and keys and llama.cpp's tensor
 * names (src/arch/), the experts of a layer stacked in 3-D tensors, Q and K
 * rows permuted where llama.cpp's RoPE for the family wants them
 * interleaved (Mixtral, as "llama"), the tokenizer as metadata. Matrices are converted row by
 * row (dequantize to float32, permute, quantize), a chunk of rows at a time
 * and in parallel, so memory stays at one chunk per thread.
 *
 * Which type each tensor gets follows llama-quantize's rules for Mixtral
 * (llama.cpp src/llama-quant.cpp, llama_tensor_get_type), for the types
 * moecl computes with.
 */
#include "guard.h"
#include "model.h"
#include "arch/arch.h"
#include "quant/quant.h"
#include "tokenizer/tokenizer.h"
#include "util/threadpool.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
    mc_pool *pool;
    bool allow_requantize;
    moecl_progress_fn progress;
    void *progress_user;
    int64_t rows_done, rows_total; /* progress: rows of every tensor (a vector counts as one) */
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

/* After every chunk of rows: the progress callback, which can cancel (the
 * CLI's Ctrl-C does so), so a cancel waits at most one chunk. */
static moecl_status step(job *j, int64_t rows) {
    j->rows_done += rows;
    if (j->progress && !j->progress((float)((double)j->rows_done / (double)j->rows_total), j->progress_user))
        return mc_error(MOECL_ERR_ABORTED, "%s: quantizing cancelled; nothing written", j->out);
    return MOECL_OK;
}

/* Rows [r0 + i0, r0 + i1) of W into rows [i0, i1) of the chunk, on thread tid. */
typedef struct rows_job {
    job *j;
    const mc_tensor *W;
    moecl_dtype t;
    bool permute;
    int64_t r0;
    size_t in_row, out_row;
} rows_job;

static void convert_rows(void *arg, int64_t i0, int64_t i1, int tid) {
    const rows_job *rj = arg;
    const int64_t cols = rj->W->cols;
    float *f = rj->j->rows_f32 + (size_t)tid * (size_t)cols;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t src = source_row(rj->r0 + i, rj->j->hp->head_dim, rj->permute);
        mc_dequantize_row(rj->W->type, (const char *)rj->W->data + (size_t)src * rj->in_row, f, cols);
        mc_quantize_row(rj->t, f, rj->j->chunk + (size_t)i * rj->out_row, cols);
    }
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
            rows_job rj = {.j = j, .W = W, .t = t, .permute = permute, .r0 = r0, .in_row = in_row, .out_row = out_row};
            mc_pool_for(j->pool, n, MC_POOL_DYNAMIC, 8, j->n_threads, convert_rows, &rj);
        }
        if ((st = mc_gguf_writer_write_data(j->w, j->chunk, (size_t)n * out_row))) return st;
        if ((st = step(j, n))) return st;
    }
    j->bytes_by_type[t] += (uint64_t)rows * out_row;
    return MOECL_OK;
}

/* A float32 vector or small matrix owned by the model (norms, router). */
static moecl_status write_f32(job *j, const float *v, size_t n) {
    j->bytes_by_type[MOECL_DTYPE_F32] += n * sizeof(float);
    moecl_status st = mc_gguf_writer_write_data(j->w, v, n * sizeof(float));
    return st ? st : step(j, 1);
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

static bool skip_copied_key(const char *key, const char *arch) {
    const size_t n = strlen(arch);
    return !strcmp(key, "general.file_type") || !strcmp(key, "general.quantization_version") ||
           !strcmp(key, "general.alignment") || (!strncmp(key, arch, n) && key[n] == '.') ||
           !strcmp(key, "general.architecture");
}

static moecl_status write_metadata(job *j, const moecl_model *m, const char *in_path) {
    const mc_hparams *hp = &m->hp;
    mc_gguf_writer *w = j->w;
    moecl_status st;
#define TRY(x)                  \
    do {                        \
        if ((st = (x))) return st; \
    } while (0)
    const mc_arch *A = hp->arch;
    const char *arch = A->gguf_arch;
    char key[128];
    TRY(mc_gguf_writer_set_str(w, "general.architecture", arch, strlen(arch)));
    if (m->gguf) { /* keep what the source says about itself and its tokenizer */
        for (int64_t i = 0; i < mc_gguf_n_kv(m->gguf); i++) {
            const mc_gguf_kv *kv = mc_gguf_kv_at(m->gguf, i);
            if (!skip_copied_key(kv->key, arch)) TRY(mc_gguf_writer_copy_kv(w, kv));
        }
    } else {
        const char *base = strrchr(in_path, '/');
        base = base && base[1] ? base + 1 : in_path;
        TRY(mc_gguf_writer_set_str(w, "general.name", base, strlen(base)));
    }
    TRY(mc_gguf_writer_set_u32(w, "general.file_type", (uint32_t)j->r->ftype));
    TRY(mc_gguf_writer_set_u32(w, "general.quantization_version", 2));
#define KEY(s) (snprintf(key, sizeof key, "%s.%s", arch, s), key)
    /* The family's integer keys; the head size only where it is not n_embd / n_head. */
    const bool explicit_hd = hp->head_dim * hp->n_head != hp->n_embd;
    for (int i = 0; i < A->n_keys; i++) {
        const mc_arch_key *k = &A->keys[i];
        if (!k->gguf || (k->hp == MC_HP_HEAD_DIM && !explicit_hd) ||
            (k->hp == MC_HP_N_FF_DENSE && hp->n_ff_dense == 0))
            continue;
        TRY(mc_gguf_writer_set_u32(w, KEY(k->gguf), (uint32_t)*mc_hp_field((mc_hparams *)hp, k->hp)));
    }
    if (explicit_hd) TRY(mc_gguf_writer_set_u32(w, KEY("attention.value_length"), (uint32_t)hp->head_dim));
    TRY(mc_gguf_writer_set_u32(w, KEY("rope.dimension_count"), (uint32_t)hp->head_dim));
    TRY(mc_gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), hp->rms_norm_eps));
    TRY(mc_gguf_writer_set_f32(w, KEY("rope.freq_base"), hp->rope_theta));
    /* Only where the model's router rule is not the one llama.cpp assumes for the family. */
    if (hp->norm_topk != A->gguf_norm_topk) TRY(mc_gguf_writer_set_bool(w, KEY("expert_weights_norm"), hp->norm_topk));
    /* llama.cpp's key for the window (LLM_KV_ATTENTION_SLIDING_WINDOW); not every
     * architecture of llama.cpp reads it (its "llama" does not, and attends beyond it). */
    if (hp->sliding_window > 0) {
        TRY(mc_gguf_writer_set_u32(w, KEY("attention.sliding_window"), (uint32_t)hp->sliding_window));
        mc_log(MOECL_LOG_WARN, "%s: sliding window %d: moecl reads it back; llama.cpp may ignore "
               "%s.attention.sliding_window for this architecture and attend to every position", j->out,
               hp->sliding_window, arch);
    }
#undef KEY
    if (!m->gguf && m->tokenizer) {
        TRY(mc_tokenizer_write_gguf_n(m->tokenizer, w, (int32_t)hp->n_vocab));
    } else if (!m->gguf) { /* no tokenizer.json: the special ids config.json gives */
        if (hp->bos_id >= 0) TRY(mc_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)hp->bos_id));
        if (hp->eos_id >= 0) TRY(mc_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)hp->eos_id));
    }
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

/* The output must not be one of the input's files under another name (a
 * symlink, a hard link, "./x"): compared by device and inode, against the
 * input file or every file of the input directory moecl reads (*.json:
 * config, index, tokenizer; *.safetensors: the shards). A missing output is
 * no file of the input. */
static bool read_from_dir(const char *name) {
    size_t n = strlen(name);
    return (n > 5 && !strcmp(name + n - 5, ".json")) || (n > 12 && !strcmp(name + n - 12, ".safetensors"));
}

static moecl_status check_output(const char *in_path, const char *out_path) {
    struct stat out, in;
    if (stat(out_path, &out) != 0) return MOECL_OK;
    if (S_ISDIR(out.st_mode))
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: is a directory; give the output file's name", out_path);
    if (stat(in_path, &in) != 0) return MOECL_OK; /* loading will say why */
    if (in.st_dev == out.st_dev && in.st_ino == out.st_ino)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: is the input %s; writing it would destroy the input", out_path,
                        in_path);
    if (!S_ISDIR(in.st_mode)) return MOECL_OK;
    DIR *d = opendir(in_path);
    if (!d) return MOECL_OK;
    moecl_status st = MOECL_OK;
    char p[4096];
    for (struct dirent *e; !st && (e = readdir(d));) {
        struct stat sb;
        if (read_from_dir(e->d_name) && (size_t)snprintf(p, sizeof p, "%s/%s", in_path, e->d_name) < sizeof p && stat(p, &sb) == 0 &&
            S_ISREG(sb.st_mode) && sb.st_dev == out.st_dev && sb.st_ino == out.st_ino)
            st = mc_error(MOECL_ERR_INVALID_ARG, "%s: is the input's file %s; writing it would destroy the input",
                          out_path, p);
    }
    closedir(d);
    return st;
}

typedef struct load_cancel {
    moecl_progress_fn fn;
    void *user;
} load_cancel;

/* Loading the input reports 0 %: its only use here is to be cancelled. */
static bool load_progress(float f, void *user) {
    (void)f;
    const load_cancel *c = user;
    return c->fn(0.0f, c->user);
}

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
    moecl_status st = check_output(in_path, out_path);
    if (st) return st;

    /* The temporary output first: a place that cannot take it fails before any work. */
    job j = {.out = out_path, .r = r, .allow_requantize = params->allow_requantize,
             .progress = params->progress, .progress_user = params->progress_user_data};
    if ((st = mc_gguf_writer_new(out_path, 32, &j.w))) return st;
    moecl_model *m = NULL;
    load_cancel lc = {params->progress, params->progress_user_data};
    moecl_model_params mp = moecl_model_default_params();
    if (params->progress) {
        mp.progress = load_progress;
        mp.progress_user_data = &lc;
    }
    if ((st = moecl_model_load(in_path, &mp, &m))) {
        mc_gguf_writer_free(j.w);
        return st;
    }
    const mc_hparams *hp = &m->hp;
    j.hp = hp;
    const moecl_dtype src_type = mc_model_expert_dtype(m);
    /* F32 holds every value of every other type exactly (the dequantized
     * weights, as the kernels compute with them): no flag needed for it. */
    if (!params->allow_requantize && is_quantized(src_type) && r->base != src_type && r->base != MOECL_DTYPE_F32) {
        mc_gguf_writer_free(j.w);
        moecl_model_free(m);
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: the weights are already quantized (%s); requantizing to %s loses "
                        "accuracy: allow it explicitly", in_path, moecl_dtype_name(src_type), r->name);
    }

    j.n_threads = params->n_threads > 0 ? params->n_threads : mc_pool_default_threads();
    const int L = hp->n_layer, max_entries = 3 + 24 * L;
    entry *es = calloc((size_t)max_entries, sizeof *es);
    if (!es) {
        mc_gguf_writer_free(j.w);
        moecl_model_free(m);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", out_path);
    }
    const bool has_output = !hp->tie_word_embeddings || m->lm_head.data != m->tok_embd.data;
    /* HF rows: permute where llama.cpp wants them interleaved; GGUF rows already are as it wants */
    const bool permute = hp->arch->gguf_rope_interleaved && !hp->rope_interleaved;
    const int64_t D = hp->n_embd, q_dim = (int64_t)hp->n_head * hp->head_dim;
    const int64_t kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    int n = 0;
    char nm[64];
#define NM(t, il) (snprintf(nm, sizeof nm, mc_arch_gguf_name(t), il), nm)
    add_mat(es, &n, NM(MC_TN_TOK_EMBD, 0), &m->tok_embd, choose(r, K_EMBD, 0, hp, m->tok_embd.cols, has_output), false);
    for (int il = 0; il < L; il++) {
        const mc_layer *ly = &m->layers[il];
        add_f32(es, &n, NM(MC_TN_ATTN_NORM, il), ly->attn_norm, D, 1);
        add_mat(es, &n, NM(MC_TN_ATTN_Q, il), &ly->wq, choose(r, K_Q, il, hp, ly->wq.cols, has_output), permute);
        add_mat(es, &n, NM(MC_TN_ATTN_K, il), &ly->wk, choose(r, K_K, il, hp, ly->wk.cols, has_output), permute);
        add_mat(es, &n, NM(MC_TN_ATTN_V, il), &ly->wv, choose(r, K_V, il, hp, ly->wv.cols, has_output), false);
        add_mat(es, &n, NM(MC_TN_ATTN_OUT, il), &ly->wo, choose(r, K_O, il, hp, ly->wo.cols, has_output), false);
        /* Optional tensors: what the layer has. The biases and QK-norms of a
         * family whose rows are permuted would need permuting too; none has them. */
        const float *vecs[6] = {ly->bq, ly->bk, ly->bv, ly->bo, ly->q_norm, ly->k_norm};
        const mc_tn vt[6] = {MC_TN_ATTN_Q_BIAS, MC_TN_ATTN_K_BIAS, MC_TN_ATTN_V_BIAS, MC_TN_ATTN_OUT_BIAS,
                             MC_TN_ATTN_Q_NORM, MC_TN_ATTN_K_NORM};
        const bool head = hp->qk_norm == MC_QK_NORM_HEAD;
        const int64_t vn[6] = {q_dim, kv_dim, kv_dim, D, head ? hp->head_dim : q_dim, head ? hp->head_dim : kv_dim};
        for (int k = 0; k < 6; k++)
            if (vecs[k]) add_f32(es, &n, NM(vt[k], il), vecs[k], vn[k], 1);
        add_f32(es, &n, NM(MC_TN_FFN_NORM, il), ly->ffn_norm, D, 1);
        const mc_expert *dense = ly->experts ? (ly->shexp.w1.data ? &ly->shexp : NULL) : &ly->ffn;
        if (dense) {
            const bool sh = ly->experts != NULL;
            const mc_tn dt[3] = {sh ? MC_TN_SHEXP_GATE : MC_TN_FFN_GATE, sh ? MC_TN_SHEXP_UP : MC_TN_FFN_UP,
                                 sh ? MC_TN_SHEXP_DOWN : MC_TN_FFN_DOWN};
            const mc_tensor *dm[3] = {&dense->w1, &dense->w3, &dense->w2};
            const enum kind dk[3] = {K_GATE, K_UP, K_DOWN};
            for (int k = 0; k < 3; k++)
                add_mat(es, &n, NM(dt[k], il), dm[k], choose(r, dk[k], il, hp, dm[k]->cols, has_output), false);
            if (sh) add_f32(es, &n, NM(MC_TN_SHEXP_INP, il), ly->shexp_gate, D, 1);
        }
        if (!ly->experts) continue;
        add_f32(es, &n, NM(MC_TN_ROUTER, il), ly->router, D, hp->n_expert);
        const mc_tn xn[3] = {MC_TN_EXPS_GATE, MC_TN_EXPS_UP, MC_TN_EXPS_DOWN};
        const enum kind xk[3] = {K_GATE, K_UP, K_DOWN};
        for (int k = 0; k < 3; k++) {
            entry *x = &es[n++];
            snprintf(x->name, sizeof x->name, mc_arch_gguf_name(xn[k]), il);
            x->what = E_EXPERTS;
            x->layer = il;
            x->which = k;
            x->n_dims = 3;
            x->ne[0] = k == 2 ? hp->n_ff : hp->n_embd;
            x->ne[1] = k == 2 ? hp->n_embd : hp->n_ff;
            x->ne[2] = hp->n_expert;
            x->type = choose(r, xk[k], il, hp, x->ne[0], has_output);
        }
    }
    add_f32(es, &n, NM(MC_TN_OUTPUT_NORM, 0), m->out_norm, D, 1);
    if (has_output)
        add_mat(es, &n, NM(MC_TN_OUTPUT, 0), &m->lm_head, choose(r, K_OUTPUT, 0, hp, m->lm_head.cols, has_output),
                false);
#undef NM
    for (int i = 0; i < n; i++)
        j.rows_total += es[i].what == E_F32 ? 1 : es[i].what == E_MATRIX ? es[i].ne[1] : es[i].ne[1] * es[i].ne[2];

    st = write_metadata(&j, m, in_path);
    if (!st) st = mc_pool_new(j.n_threads, &j.pool);
    for (int i = 0; i < n && !st; i++) {
        const int64_t ne[3] = {es[i].ne[0], es[i].ne[1], es[i].ne[2]};
        st = mc_gguf_writer_add_tensor(j.w, es[i].name, mc_gguf_type_of(es[i].type), es[i].n_dims, ne);
    }
    /* The input's weights are read here: a file truncated meanwhile is
     * MOECL_ERR_IO naming it (src/guard.c), and nothing is written. */
    if (!st && !(st = mc_guard_enter(m->guard))) {
        for (int i = 0; i < n && !st; i++)
            st = write_entry(&j, m, &es[i]);
        st = mc_guard_leave(m->guard, st);
    }
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
    mc_pool_free(j.pool);
    free(j.chunk);
    free(j.rows_f32);
    free(es);
    moecl_model_free(m);
    return st;
}
