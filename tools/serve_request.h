/*
 * serve_request.h - the JSON body of an OpenAI-style request turned into an
 * engine request (moecl serve; fuzzed by tests/fuzz/fuzz_serve_request.c).
 */
#ifndef MOECL_SERVE_REQUEST_H
#define MOECL_SERVE_REQUEST_H

#include "moecl.h"

#include <stdbool.h>
#include <stddef.h>

typedef enum sr_kind {
    SR_CHAT = 0,       /* POST /v1/chat/completions: "messages" */
    SR_COMPLETION = 1, /* POST /v1/completions: "prompt", a string or an array of token ids */
} sr_kind;

/* Defaults for what a request leaves out (the server's command line). */
typedef struct sr_defaults {
    moecl_sampler_params sampling;
    int32_t max_tokens; /* <= 0: until a stop or the context is full */
} sr_defaults;

/* A parsed request. Everything is owned by it (sr_request_free). */
typedef struct sr_request {
    sr_kind kind;
    bool stream;
    bool include_usage;          /* stream_options.include_usage */
    bool ignore_eos;             /* "ignore_eos" (as llama.cpp's server): EOS does not end the text */
    moecl_chat_message *messages;/* [n_messages] (chat); role and content malloc'd */
    int32_t n_messages;
    int32_t *prompt;             /* [n_prompt] (completion) */
    int32_t n_prompt;
    char **stop;                 /* [n_stop] */
    int32_t n_stop;
    moecl_sampler_params sampling;
    int32_t max_tokens;
} sr_request;

/* Why a request was refused: an HTTP status (400) and an OpenAI error. */
typedef struct sr_error {
    int http_status;
    char message[256];
    const char *type;   /* "invalid_request_error" */
    const char *param;  /* the field at fault, or NULL */
} sr_error;

/* Parse body[0..len) (not NUL-terminated). tok tokenizes a string prompt
 * (NULL: only arrays of ids are accepted). On success returns true and
 * fills *out; otherwise false, *out empty and *err set. Unknown fields are
 * ignored. Bounded: at most SR_MAX_MESSAGES messages, SR_MAX_STOP stop
 * strings of SR_MAX_STOP_LEN bytes. */
#define SR_MAX_MESSAGES 1024
#define SR_MAX_STOP 16
#define SR_MAX_STOP_LEN 256
bool sr_parse(const char *body, size_t len, sr_kind kind, const moecl_tokenizer *tok, const sr_defaults *defaults,
              sr_request *out, sr_error *err);

void sr_request_free(sr_request *r);

/* The request as the engine takes it; points into r (callback unset). */
moecl_engine_request sr_engine_request(const sr_request *r);

/* Bytes of s[0..n) with every ill-formed UTF-8 sequence replaced by U+FFFD,
 * so the text can go into JSON. Returns a malloc'd NUL-terminated string
 * (NULL when out of memory). */
char *sr_utf8_clean(const char *s, size_t n);

#endif
