/*
 * test_concurrent_load.c - moecl_model_load is documented thread-safe: four
 * threads released together each load the same Hugging Face model, the same
 * GGUF model (with its tokenizer) and tokenizer.json, make a CPU context
 * and decode a prompt (issue 9, defect 12). Every thread must get the logits
 * one thread alone gets afterwards, bit for bit (two threads per context:
 * each output row is summed whole by one of them, in one order, so the
 * split does not change the bits; under helgrind this runs the pool's
 * hand-offs with the real kernels).
 *
 *   test_concurrent_load HF_DIR MODEL.gguf TOKENIZER.json
 *
 * The races themselves (cJSON's global error position, the first-use flags)
 * do not fail a plain run; tools/helgrind.sh runs this program under
 * valgrind's helgrind, which reports them (tests/meson.build runs it when
 * valgrind is installed).
 */
#include "test_util.h"

#include <moecl.h>
#include <pthread.h>
#include <string.h>

#define N_THREADS 4
#define N_PROMPT 5

static const char *g_hf, *g_gguf, *g_tok;
static pthread_barrier_t g_start;

typedef struct result {
    moecl_status st;
    char err[512];
    float logits[2][1024]; /* HF, GGUF: last position */
    int32_t n_vocab[2];
    int32_t n_ids;
    int32_t ids[64];
} result;

static moecl_status run_model(const char *path, float *logits, int32_t *n_vocab) {
    moecl_model *m = NULL;
    moecl_context *ctx = NULL;
    moecl_status st = moecl_model_load(path, NULL, &m);
    moecl_context_params cp = moecl_context_default_params();
    cp.n_ctx = 16;
    cp.n_threads = 2;
    cp.backend = MOECL_BACKEND_CPU;
    if (!st) st = moecl_context_new(m, &cp, &ctx);
    const int32_t prompt[N_PROMPT] = {1, 7, 42, 3, 99};
    if (!st) st = moecl_decode(ctx, prompt, N_PROMPT);
    moecl_model_info info;
    if (!st) st = moecl_model_get_info(m, &info);
    if (!st) {
        *n_vocab = info.n_vocab > 1024 ? 1024 : info.n_vocab;
        memcpy(logits, moecl_get_logits(ctx, -1), (size_t)*n_vocab * sizeof *logits);
    }
    moecl_context_free(ctx);
    moecl_model_free(m);
    return st;
}

static void run_all(result *r) {
    r->st = run_model(g_hf, r->logits[0], &r->n_vocab[0]);
    if (!r->st) r->st = run_model(g_gguf, r->logits[1], &r->n_vocab[1]);
    moecl_tokenizer *tok = NULL;
    if (!r->st) r->st = moecl_tokenizer_load(g_tok, &tok);
    if (!r->st) r->st = moecl_tokenize(tok, "Hello, concurrent world", 23, 0, r->ids, 64, &r->n_ids);
    moecl_tokenizer_free(tok);
    if (r->st) snprintf(r->err, sizeof r->err, "%s", moecl_last_error());
}

static void *thread_main(void *arg) {
    pthread_barrier_wait(&g_start);
    run_all(arg);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s HF_DIR MODEL.gguf TOKENIZER.json\n", argv[0]);
        return 2;
    }
    g_hf = argv[1];
    g_gguf = argv[2];
    g_tok = argv[3];
    static result res[N_THREADS], ref;
    pthread_t th[N_THREADS];
    pthread_barrier_init(&g_start, NULL, N_THREADS);
    for (int i = 0; i < N_THREADS; i++) CHECK(pthread_create(&th[i], NULL, thread_main, &res[i]) == 0);
    for (int i = 0; i < N_THREADS; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&g_start);

    run_all(&ref); /* after the threads: the first-use paths ran on them */
    CHECKF(ref.st == MOECL_OK, "alone: %s", ref.err);
    for (int i = 0; i < N_THREADS; i++) {
        const result *r = &res[i];
        CHECKF(r->st == MOECL_OK, "thread %d: %s", i, r->err);
        if (r->st || ref.st) continue;
        for (int k = 0; k < 2; k++)
            CHECKF(r->n_vocab[k] == ref.n_vocab[k] &&
                       !memcmp(r->logits[k], ref.logits[k], (size_t)ref.n_vocab[k] * sizeof(float)),
                   "thread %d: the %s model's logits differ from one thread's alone", i, k ? "GGUF" : "HF");
        CHECKF(r->n_ids == ref.n_ids && !memcmp(r->ids, ref.ids, (size_t)ref.n_ids * sizeof(int32_t)),
               "thread %d: the ids differ", i);
    }
    return t_done("concurrent_load");
}
