/*
 * fuzz_serve_request.c - libFuzzer target for the request parser of moecl
 * serve (tools/serve_request.c): the first byte picks the endpoint (even:
 * chat, odd: completion), the rest is the JSON body. A parsed request is
 * then rendered as the engine would (chat format or prompt ids) and its
 * text cleaned for JSON, so a bad count or pointer shows under ASan.
 *
 * Built as fuzz_gguf.c is (see there), with the Mistral tokenizer of
 * models/tokenizer.json for string prompts and chat messages.
 */
#include "serve_request.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef MOECL_FUZZ_TOKENIZER
#define MOECL_FUZZ_TOKENIZER "models/tokenizer.json"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void quiet(moecl_log_level level, const char *message, void *user_data) {
    (void)level, (void)message, (void)user_data;
}

static moecl_tokenizer *g_tok;
static uint64_t g_sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int once;
    if (!once++) {
        moecl_log_set(quiet, MOECL_LOG_ERROR, NULL);
        if (moecl_tokenizer_load(MOECL_FUZZ_TOKENIZER, &g_tok) != MOECL_OK) g_tok = NULL; /* ids only then */
    }
    if (size < 1) return 0;
    const sr_kind kind = data[0] & 1 ? SR_COMPLETION : SR_CHAT;
    const char *body = (const char *)data + 1;
    const size_t len = size - 1;
    sr_defaults d = {.sampling = moecl_sampler_default_params(), .max_tokens = 0};
    sr_request r;
    sr_error err;
    if (!sr_parse(body, len, kind, g_tok, &d, &r, &err)) {
        if (err.http_status != 400 || !err.message[0] || !err.type) __builtin_trap();
        return 0;
    }
    moecl_engine_request q = sr_engine_request(&r);
    if (kind == SR_CHAT) {
        if (q.n_messages < 1 || q.prompt) __builtin_trap();
        int32_t n = 0;
        if (g_tok && moecl_chat_tokenize(g_tok, q.messages, q.n_messages, 0, NULL, 0, &n) == MOECL_OK) {
            int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
            if (ids && moecl_chat_tokenize(g_tok, q.messages, q.n_messages, 0, ids, n, &n) == MOECL_OK)
                for (int32_t i = 0; i < n; i++) g_sink += (uint64_t)ids[i];
            free(ids);
        }
    } else {
        if (q.n_prompt < 1 || !q.prompt || q.messages) __builtin_trap();
        for (int32_t i = 0; i < q.n_prompt; i++) g_sink += (uint64_t)q.prompt[i];
    }
    if (r.max_tokens < 0 || r.n_stop < 0 || r.n_stop > SR_MAX_STOP) __builtin_trap();
    for (int32_t i = 0; i < r.n_stop; i++) {
        size_t n = strlen(r.stop[i]);
        if (n == 0 || n > SR_MAX_STOP_LEN) __builtin_trap();
    }
    /* The text cleaner: what it returns is clean already. */
    char *clean = sr_utf8_clean(body, len);
    if (clean) {
        size_t n = strlen(clean);
        char *again = sr_utf8_clean(clean, n);
        if (again && strcmp(again, clean)) __builtin_trap();
        free(again);
        g_sink += n;
    }
    free(clean);
    sr_request_free(&r);
    return 0;
}
