/*
 * serve_request.c - an OpenAI-style request body (chat or completion) into
 * an sr_request, every field checked for its type and range. Nothing here
 * touches the network or the engine, so the fuzzer drives it directly.
 */
#include "serve_request.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool fail(sr_error *err, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool fail(sr_error *err, const char *param, const char *fmt, ...) {
    err->http_status = 400;
    err->type = "invalid_request_error";
    err->param = param;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return false;
}

static const char *type_name(const cJSON *j) {
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsObject(j)) return "an object";
    return "invalid";
}

static char *dup_str(const char *s) {
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

/* A number that is a whole value within [lo, hi]. */
static bool get_int(const cJSON *j, double lo, double hi, double *out) {
    if (!cJSON_IsNumber(j)) return false;
    double v = j->valuedouble;
    if (!isfinite(v) || v != floor(v) || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* Optional number field within [lo, hi]; null counts as absent. */
static bool opt_number(const cJSON *root, const char *name, double lo, double hi, float *out, sr_error *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!j || cJSON_IsNull(j)) return true;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
        return fail(err, name, "'%s' must be a number, not %s", name, type_name(j));
    if (j->valuedouble < lo || j->valuedouble > hi)
        return fail(err, name, "'%s' is %g; allowed %g..%g", name, j->valuedouble, lo, hi);
    *out = (float)j->valuedouble;
    return true;
}

static bool opt_bool(const cJSON *root, const char *name, bool *out, sr_error *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!j || cJSON_IsNull(j)) return true;
    if (!cJSON_IsBool(j)) return fail(err, name, "'%s' must be a boolean, not %s", name, type_name(j));
    *out = cJSON_IsTrue(j);
    return true;
}

/* "content": a string, or an array of {"type": "text", "text": ...} parts. */
static bool message_content(const cJSON *c, int i, char **out, sr_error *err) {
    if (cJSON_IsString(c)) return (*out = dup_str(c->valuestring)) != NULL || fail(err, "messages", "out of memory");
    if (!cJSON_IsArray(c))
        return fail(err, "messages", "messages[%d].content must be a string or an array of text parts, not %s", i,
                    type_name(c));
    size_t len = 0;
    char *s = calloc(1, 1);
    if (!s) return fail(err, "messages", "out of memory");
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(t) || strcmp(t->valuestring, "text") || !cJSON_IsString(x)) {
            free(s);
            return fail(err, "messages", "messages[%d].content: only parts {\"type\": \"text\", \"text\": ...} are "
                        "supported", i);
        }
        size_t n = strlen(x->valuestring);
        char *g = realloc(s, len + n + 1);
        if (!g) {
            free(s);
            return fail(err, "messages", "out of memory");
        }
        s = g;
        memcpy(s + len, x->valuestring, n + 1);
        len += n;
    }
    *out = s;
    return true;
}

static bool parse_messages(const cJSON *root, sr_request *r, sr_error *err) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!msgs) return fail(err, "messages", "'messages' is required");
    if (!cJSON_IsArray(msgs)) return fail(err, "messages", "'messages' must be an array, not %s", type_name(msgs));
    int n = cJSON_GetArraySize(msgs);
    if (n < 1) return fail(err, "messages", "'messages' is empty");
    if (n > SR_MAX_MESSAGES) return fail(err, "messages", "more than %d messages", SR_MAX_MESSAGES);
    if (!(r->messages = calloc((size_t)n, sizeof *r->messages))) return fail(err, "messages", "out of memory");
    const cJSON *m;
    int i = 0;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsObject(m)) return fail(err, "messages", "messages[%d] must be an object, not %s", i, type_name(m));
        if (!cJSON_IsString(role)) return fail(err, "messages", "messages[%d].role must be a string", i);
        const char *rs = role->valuestring;
        if (!strcmp(rs, "developer")) rs = "system"; /* OpenAI's newer name for it */
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant"))
            return fail(err, "messages", "messages[%d].role is \"%.40s\"; allowed: system, user, assistant", i, rs);
        if (!content) return fail(err, "messages", "messages[%d].content is required", i);
        char *text = NULL;
        if (!message_content(content, i, &text, err)) return false;
        char *role_copy = dup_str(rs);
        if (!role_copy) {
            free(text);
            return fail(err, "messages", "out of memory");
        }
        r->messages[i].role = role_copy;
        r->messages[i].content = text;
        r->n_messages = ++i;
    }
    return true;
}

static bool parse_prompt(const cJSON *root, const moecl_tokenizer *tok, sr_request *r, sr_error *err) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!p) return fail(err, "prompt", "'prompt' is required");
    /* ["text"] is the one-prompt form of an array of strings */
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(cJSON_GetArrayItem(p, 0)))
        p = cJSON_GetArrayItem(p, 0);
    if (cJSON_IsString(p)) {
        if (!tok) return fail(err, "prompt", "this model has no tokenizer: give the prompt as an array of token ids");
        size_t len = strlen(p->valuestring);
        int32_t n = 0;
        if (moecl_tokenize(tok, p->valuestring, len, 0, NULL, 0, &n) != MOECL_OK)
            return fail(err, "prompt", "cannot tokenize the prompt: %s", moecl_last_error());
        if (!(r->prompt = malloc(((size_t)n + 1) * sizeof *r->prompt))) return fail(err, "prompt", "out of memory");
        if (moecl_tokenize(tok, p->valuestring, len, 0, r->prompt, n, &n) != MOECL_OK)
            return fail(err, "prompt", "cannot tokenize the prompt: %s", moecl_last_error());
        r->n_prompt = n;
    } else if (cJSON_IsArray(p)) {
        int n = cJSON_GetArraySize(p);
        if (!(r->prompt = malloc(((size_t)n + 1) * sizeof *r->prompt))) return fail(err, "prompt", "out of memory");
        const cJSON *x;
        cJSON_ArrayForEach(x, p) {
            double v;
            if (!get_int(x, 0, INT32_MAX, &v))
                return fail(err, "prompt", "'prompt' as an array must hold token ids (integers >= 0); item %d is %s",
                            r->n_prompt, type_name(x));
            r->prompt[r->n_prompt++] = (int32_t)v;
        }
    } else {
        return fail(err, "prompt", "'prompt' must be a string or an array of token ids, not %s", type_name(p));
    }
    if (r->n_prompt < 1) return fail(err, "prompt", "the prompt is empty");
    return true;
}

static bool parse_stop(const cJSON *root, sr_request *r, sr_error *err) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (!s || cJSON_IsNull(s)) return true;
    int n = cJSON_IsString(s) ? 1 : cJSON_IsArray(s) ? cJSON_GetArraySize(s) : -1;
    if (n < 0) return fail(err, "stop", "'stop' must be a string or an array of strings, not %s", type_name(s));
    if (n > SR_MAX_STOP) return fail(err, "stop", "'stop' holds %d strings; at most %d", n, SR_MAX_STOP);
    if (!(r->stop = calloc((size_t)n + 1, sizeof *r->stop))) return fail(err, "stop", "out of memory");
    for (int i = 0; i < n; i++) {
        const cJSON *x = cJSON_IsString(s) ? s : cJSON_GetArrayItem(s, i);
        if (!cJSON_IsString(x)) return fail(err, "stop", "stop[%d] must be a string, not %s", i, type_name(x));
        size_t len = strlen(x->valuestring);
        if (len == 0) return fail(err, "stop", "stop[%d] is empty", i);
        if (len > SR_MAX_STOP_LEN) return fail(err, "stop", "stop[%d] is longer than %d bytes", i, SR_MAX_STOP_LEN);
        if (!(r->stop[i] = dup_str(x->valuestring))) return fail(err, "stop", "out of memory");
        r->n_stop = i + 1;
    }
    return true;
}

static bool parse_fields(const cJSON *root, sr_kind kind, const moecl_tokenizer *tok, sr_request *r, sr_error *err) {
    if (!cJSON_IsObject(root)) return fail(err, NULL, "the body must be a JSON object, not %s", type_name(root));
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsString(model) && !cJSON_IsNull(model))
        return fail(err, "model", "'model' must be a string, not %s", type_name(model));
    if (kind == SR_CHAT ? !parse_messages(root, r, err) : !parse_prompt(root, tok, r, err)) return false;

    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
    if (!mt || cJSON_IsNull(mt)) mt = cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens");
    if (mt && !cJSON_IsNull(mt)) {
        double v;
        if (!cJSON_IsNumber(mt) || !get_int(mt, -1e18, 1e18, &v))
            return fail(err, "max_tokens", "'max_tokens' must be an integer, not %s", type_name(mt));
        if (v < 1) return fail(err, "max_tokens", "'max_tokens' is %g; it must be at least 1", v);
        r->max_tokens = v > INT32_MAX ? INT32_MAX : (int32_t)v;
    }
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(root, "n");
    if (n && !cJSON_IsNull(n)) {
        double v;
        if (!get_int(n, 1, 1, &v)) return fail(err, "n", "only n = 1 is supported");
    }
    if (!opt_number(root, "temperature", 0, 100, &r->sampling.temperature, err)) return false;
    if (!opt_number(root, "top_p", 0, 1, &r->sampling.top_p, err)) return false;
    if (!opt_number(root, "min_p", 0, 1, &r->sampling.min_p, err)) return false;
    if (!opt_number(root, "repeat_penalty", 0, 100, &r->sampling.repeat_penalty, err)) return false;
    const cJSON *tk = cJSON_GetObjectItemCaseSensitive(root, "top_k");
    if (tk && !cJSON_IsNull(tk)) {
        double v;
        if (!get_int(tk, -1, INT32_MAX, &v)) return fail(err, "top_k", "'top_k' must be an integer >= -1");
        r->sampling.top_k = (int32_t)v;
    }
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(root, "seed");
    if (seed && !cJSON_IsNull(seed)) {
        double v;
        if (!get_int(seed, -9007199254740992.0, 9007199254740992.0, &v))
            return fail(err, "seed", "'seed' must be an integer");
        r->sampling.seed = v < 0 ? (uint64_t)(int64_t)v : (uint64_t)v;
    }
    if (!parse_stop(root, r, err)) return false;
    if (!opt_bool(root, "stream", &r->stream, err)) return false;
    if (!opt_bool(root, "ignore_eos", &r->ignore_eos, err)) return false;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so))
            return fail(err, "stream_options", "'stream_options' must be an object, not %s", type_name(so));
        if (!opt_bool(so, "include_usage", &r->include_usage, err)) return false;
    }
    return true;
}

bool sr_parse(const char *body, size_t len, sr_kind kind, const moecl_tokenizer *tok, const sr_defaults *defaults,
              sr_request *out, sr_error *err) {
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    out->kind = kind;
    out->sampling = defaults ? defaults->sampling : moecl_sampler_default_params();
    out->max_tokens = defaults ? defaults->max_tokens : 0;
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return fail(err, NULL, "the body is not valid JSON");
    bool ok = parse_fields(root, kind, tok, out, err);
    cJSON_Delete(root);
    if (!ok) {
        sr_request_free(out);
        out->kind = kind;
    }
    return ok;
}

void sr_request_free(sr_request *r) {
    if (!r) return;
    for (int32_t i = 0; i < r->n_messages; i++) {
        free((char *)r->messages[i].role);
        free((char *)r->messages[i].content);
    }
    free(r->messages);
    free(r->prompt);
    for (int32_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    memset(r, 0, sizeof *r);
}

moecl_engine_request sr_engine_request(const sr_request *r) {
    moecl_engine_request q = moecl_engine_default_request();
    if (r->kind == SR_CHAT) {
        q.messages = r->messages;
        q.n_messages = r->n_messages;
    } else {
        q.prompt = r->prompt;
        q.n_prompt = r->n_prompt;
    }
    q.sampling = r->sampling;
    q.max_tokens = r->max_tokens;
    q.ignore_eos = r->ignore_eos;
    q.stop = (const char *const *)r->stop;
    q.n_stop = r->n_stop;
    return q;
}

/* Length of the well-formed UTF-8 character at s[0..n), 0 if ill-formed. */
static size_t utf8_char(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!len || len > n) return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && s[1] < 0xA0) return 0;  /* overlong */
    if (c == 0xED && s[1] > 0x9F) return 0;  /* surrogate */
    if (c == 0xF0 && s[1] < 0x90) return 0;  /* overlong */
    if (c == 0xF4 && s[1] > 0x8F) return 0;  /* past U+10FFFF */
    return len;
}

char *sr_utf8_clean(const char *s, size_t n) {
    char *out = malloc(n * 3 + 1); /* each bad byte becomes 3 bytes of U+FFFD */
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_char((const unsigned char *)s + i, n - i);
        if (k && !(k == 1 && s[i] == '\0')) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3); /* U+FFFD; also for NUL, which C strings cannot carry */
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    return out;
}
