/*
 * test_context_limits.c - the library's limits and refusals say what the
 * limit is and what was asked for:
 *   - n_ctx beyond MOECL_MAX_CTX: the limit;
 *   - a KV cache larger than the machine's memory: MOECL_ERR_NOMEM up front;
 *   - a batch longer than n_batch: n_batch; one that cannot fit the context
 *     either: MOECL_ERR_CONTEXT_FULL and by how much;
 *   - a GGUF tokenizer with far more ids than the embedding has rows:
 *     refused before it is built.
 *
 *   test_context_limits TINY_F32_DIR TINY_GGUF WORK_DIR
 */
#include "test_util.h"

#include "formats/gguf.h"
#include "moecl.h"

#include <string.h>
#include <sys/stat.h>

static void expect(const char *what, moecl_status st, moecl_status want, const char *msg, const char *words) {
    CHECKF(st == want, "%s: status %s, want %s (%s)", what, moecl_status_str(st), moecl_status_str(want), msg);
    CHECKF(strstr(msg, words) != NULL, "%s: message '%s' lacks '%s'", what, msg, words);
    fprintf(stderr, "  %-22s -> %s\n", what, msg);
}

/* The tiny GGUF with a tokenizer.ggml.tokens array of n ids. */
static bool write_vocab(const char *src, const char *dst, int n) {
    mc_gguf *g = NULL;
    mc_gguf_writer *w = NULL;
    bool ok = mc_gguf_open(src, &g) == MOECL_OK && mc_gguf_writer_new(dst, 32, &w) == MOECL_OK;
    for (int64_t i = 0; ok && i < mc_gguf_n_kv(g); i++) ok = !mc_gguf_writer_copy_kv(w, mc_gguf_kv_at(g, i));
    mc_gguf_str *toks = calloc((size_t)n, sizeof *toks);
    char(*text)[16] = calloc((size_t)n, 16);
    ok = ok && toks && text;
    for (int i = 0; ok && i < n; i++) {
        toks[i].len = (uint64_t)snprintf(text[i], 16, "t%d", i);
        toks[i].ptr = text[i];
    }
    ok = ok && !mc_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama", 5);
    ok = ok && !mc_gguf_writer_set_str_arr(w, "tokenizer.ggml.tokens", toks, (uint64_t)n);
    for (int64_t i = 0; ok && i < mc_gguf_n_tensors(g); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, i);
        ok = !mc_gguf_writer_add_tensor(w, t->name, t->ggml_type, t->n_dims, t->ne);
    }
    for (int64_t i = 0; ok && i < mc_gguf_n_tensors(g); i++)
        ok = !mc_gguf_writer_write_data(w, mc_gguf_tensor_at(g, i)->data, mc_gguf_tensor_at(g, i)->nbytes);
    ok = ok && !mc_gguf_writer_finish(w);
    if (!ok) fprintf(stderr, "writing %s: %s\n", dst, moecl_last_error());
    free(toks);
    free(text);
    mc_gguf_writer_free(w);
    mc_gguf_close(g);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: test_context_limits TINY_F32_DIR TINY_GGUF WORK_DIR\n");
        return 1;
    }
    moecl_log_set(NULL, MOECL_LOG_ERROR, NULL);
    moecl_model *m = NULL;
    if (moecl_model_load(argv[1], NULL, &m) != MOECL_OK) {
        fprintf(stderr, "load: %s\n", moecl_last_error());
        return 1;
    }
    moecl_context *ctx = NULL;
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_CPU;
    cp.n_threads = 1;

    cp.n_ctx = MOECL_MAX_CTX + 1;
    expect("n_ctx beyond the limit", moecl_context_new(m, &cp, &ctx), MOECL_ERR_INVALID_ARG, moecl_last_error(),
           "more than the limit of 16777216 positions");
    CHECK(ctx == NULL);

    /* 1024 sequences of 16 M positions: petabytes of KV cache. */
    cp.n_ctx = MOECL_MAX_CTX;
    cp.n_seq_max = MOECL_MAX_SEQ;
    expect("KV cache beyond memory", moecl_context_new(m, &cp, &ctx), MOECL_ERR_NOMEM, moecl_last_error(),
           "more than this machine's");
    CHECK(ctx == NULL);

    cp.n_ctx = 16;
    cp.n_seq_max = 1;
    cp.n_batch = 8;
    CHECKF(moecl_context_new(m, &cp, &ctx) == MOECL_OK, "context: %s", moecl_last_error());
    if (ctx) {
        int32_t toks[20];
        for (int i = 0; i < 20; i++) toks[i] = 3 + i;
        expect("batch beyond n_batch", moecl_decode(ctx, toks, 10), MOECL_ERR_INVALID_ARG,
               moecl_context_last_error(ctx), "more than the context's n_batch of 8");
        expect("batch beyond n_ctx", moecl_decode(ctx, toks, 20), MOECL_ERR_CONTEXT_FULL,
               moecl_context_last_error(ctx), "20 tokens do not fit in the context of 16 positions (0 held, 4 too many)");
        CHECK(moecl_decode(ctx, toks, 8) == MOECL_OK);
        CHECK(moecl_decode(ctx, toks, 8) == MOECL_OK);
        expect("context full", moecl_decode(ctx, toks, 1), MOECL_ERR_CONTEXT_FULL, moecl_context_last_error(ctx),
               "(1 too many)");
    }
    moecl_context_free(ctx);
    moecl_model_free(m);

    /* The tiny model has 128 embedding rows. */
    mkdir(argv[3], 0755);
    char path[4200];
    snprintf(path, sizeof path, "%s/vocab-big.gguf", argv[3]);
    CHECK(write_vocab(argv[2], path, 128 + 257));
    m = NULL;
    expect("tokenizer > embedding", moecl_model_load(path, NULL, &m), MOECL_ERR_FORMAT, moecl_last_error(),
           "the tokenizer has 385 ids but the model's embedding only 128 rows");
    CHECK(m == NULL);
    return t_done("test_context_limits");
}
