/*
 * serve.c - `moecl serve`: an OpenAI-compatible HTTP server on
 * libmicrohttpd over the request engine (moecl_engine_*).
 *
 *   POST /v1/chat/completions   POST /v1/completions   (stream true: SSE)
 *   GET  /v1/models   GET /health   GET /metrics (Prometheus text)
 *
 * Threads: libmicrohttpd runs one thread per connection; the engine's
 * scheduler thread produces the text. They meet in a `job`: the engine's
 * callback appends to the job's bounded buffer (SSE chunks, or the whole
 * text for a plain response) and signals; the connection's thread waits on
 * it, sends, and watches its socket, so a client that goes away cancels its
 * request at once and a slow reader only fills its own buffer (the request
 * is cancelled if that overflows), never holding up the batch.
 */
#include "moecl.h"
#include "cli.h"
#include "cli_backend.h"
#include "serve_request.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_BODY (1u << 20)        /* bytes of a request body; more is 413 */
#define MAX_PENDING (1u << 20)     /* bytes of SSE not yet taken by a slow client; more cancels it */
#define WAIT_MS 20                 /* how often a waiting connection looks at its socket */

static const double k_ttft_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
#define N_TTFT (sizeof k_ttft_buckets / sizeof k_ttft_buckets[0])

typedef struct server {
    moecl_engine *engine;
    const moecl_tokenizer *tok;
    char model_name[256];
    int32_t n_layer, n_expert; /* the routing counters' shape */
    const char *api_key;       /* NULL: none */
    sr_defaults defaults;
    atomic_bool stopping;

    pthread_mutex_t mu;        /* the counters below */
    uint64_t requests[2][6];   /* [chat, completion][2xx,400,401,413,503,5xx] */
    uint64_t other_requests;   /* GET endpoints, 404, 405 */
    uint64_t ttft_count[N_TTFT + 1];
    double ttft_sum;
    uint64_t ttft_n;
    uint64_t disconnects, overflows;
} server;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------ */
/* Jobs: one request between the engine and a connection                    */
/* ------------------------------------------------------------------------ */

typedef struct job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;                  /* the connection, and the engine until its final event */
    server *srv;
    uint64_t id;
    sr_kind kind;
    bool stream, include_usage;
    long long created;
    double t_submit;
    bool first_seen;
    char *out;                 /* bytes ready to send (SSE), or the text (plain) */
    size_t out_len, out_sent, out_cap;
    bool overflow;             /* the client did not keep up: cancelled */
    bool left;                 /* the client left and it was counted */
    bool done;
    moecl_finish_reason finish;
    moecl_engine_usage usage;
    char error[256];
    MHD_socket fd;
} job;

static void job_release(job *j) {
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left) return;
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j->out);
    free(j);
}

/* Under j->mu. */
static bool job_append(job *j, const char *s, size_t n) {
    if (j->out_sent == j->out_len) j->out_sent = j->out_len = 0;
    if (j->stream && j->out_len - j->out_sent + n > MAX_PENDING) return false;
    if (j->out_len + n + 1 > j->out_cap) {
        if (j->out_sent) { /* drop what was sent */
            memmove(j->out, j->out + j->out_sent, j->out_len - j->out_sent);
            j->out_len -= j->out_sent;
            j->out_sent = 0;
        }
        size_t cap = j->out_cap ? j->out_cap : 4096;
        while (cap < j->out_len + n + 1) cap *= 2;
        char *o = realloc(j->out, cap);
        if (!o) return false;
        j->out = o;
        j->out_cap = cap;
    }
    memcpy(j->out + j->out_len, s, n);
    j->out_len += n;
    j->out[j->out_len] = '\0';
    return true;
}

static const char *finish_name(moecl_finish_reason f) {
    return f == MOECL_FINISH_LENGTH ? "length" : "stop";
}

static cJSON *usage_json(const moecl_engine_usage *u) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "prompt_tokens", u->prompt_tokens);
    cJSON_AddNumberToObject(o, "completion_tokens", u->completion_tokens);
    cJSON_AddNumberToObject(o, "total_tokens", u->prompt_tokens + u->completion_tokens);
    cJSON *d = cJSON_AddObjectToObject(o, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", u->cached_prompt_tokens);
    return o;
}

static void add_id_fields(cJSON *o, const job *j, const char *object) {
    char id[64];
    snprintf(id, sizeof id, "%s-%llu", j->kind == SR_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)j->id);
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)j->created);
    cJSON_AddStringToObject(o, "model", j->srv->model_name);
}

/* One SSE chunk: text (may be NULL), finish (NONE: null). */
static bool sse_chunk(job *j, const char *text, size_t n, bool role, moecl_finish_reason finish) {
    cJSON *o = cJSON_CreateObject();
    add_id_fields(o, j, j->kind == SR_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    char *clean = sr_utf8_clean(text ? text : "", text ? n : 0);
    if (j->kind == SR_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role) cJSON_AddStringToObject(d, "role", "assistant");
        if (text) cJSON_AddStringToObject(d, "content", clean ? clean : "");
    } else {
        cJSON_AddStringToObject(c, "text", clean ? clean : "");
        cJSON_AddNullToObject(c, "logprobs");
    }
    free(clean);
    if (finish == MOECL_FINISH_NONE) cJSON_AddNullToObject(c, "finish_reason");
    else cJSON_AddStringToObject(c, "finish_reason", finish_name(finish));
    if (j->include_usage) cJSON_AddNullToObject(o, "usage");
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    bool ok = s && job_append(j, "data: ", 6) && job_append(j, s, strlen(s)) && job_append(j, "\n\n", 2);
    free(s);
    return ok;
}

static bool sse_json(job *j, cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    bool ok = s && job_append(j, "data: ", 6) && job_append(j, s, strlen(s)) && job_append(j, "\n\n", 2);
    free(s);
    return ok;
}

static cJSON *error_json(const char *message, const char *type, const char *param, const char *code) {
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(o, "error");
    char *clean = sr_utf8_clean(message, strlen(message));
    cJSON_AddStringToObject(e, "message", clean ? clean : "error");
    free(clean);
    cJSON_AddStringToObject(e, "type", type);
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (code) cJSON_AddStringToObject(e, "code", code);
    else cJSON_AddNullToObject(e, "code");
    return o;
}

static void record_ttft(server *s, double t) {
    pthread_mutex_lock(&s->mu);
    size_t b = 0;
    while (b < N_TTFT && t > k_ttft_buckets[b]) b++;
    s->ttft_count[b]++;
    s->ttft_sum += t;
    s->ttft_n++;
    pthread_mutex_unlock(&s->mu);
}

/* The engine's callback (scheduler thread). */
static void on_event(const moecl_engine_event *ev, void *user) {
    job *j = user;
    if (!j->first_seen && ev->token >= 0) {
        j->first_seen = true;
        record_ttft(j->srv, now_s() - j->t_submit);
    }
    pthread_mutex_lock(&j->mu);
    bool ok = true;
    if (j->stream) {
        if (ev->text_len) ok = sse_chunk(j, ev->text, ev->text_len, false, MOECL_FINISH_NONE);
        if (ok && ev->finish == MOECL_FINISH_ERROR)
            ok = sse_json(j, error_json(ev->error && *ev->error ? ev->error : "generation failed", "server_error",
                                        NULL, NULL));
        else if (ok && ev->finish != MOECL_FINISH_NONE && ev->finish != MOECL_FINISH_CANCELLED)
            ok = sse_chunk(j, j->kind == SR_CHAT ? NULL : "", 0, false, ev->finish);
        if (ok && ev->finish != MOECL_FINISH_NONE && ev->finish != MOECL_FINISH_CANCELLED &&
            ev->finish != MOECL_FINISH_ERROR && j->include_usage) {
            cJSON *o = cJSON_CreateObject();
            add_id_fields(o, j, j->kind == SR_CHAT ? "chat.completion.chunk" : "text_completion");
            cJSON_AddArrayToObject(o, "choices");
            cJSON_AddItemToObject(o, "usage", usage_json(&ev->usage));
            ok = sse_json(j, o);
        }
        if (ok && ev->finish != MOECL_FINISH_NONE && ev->finish != MOECL_FINISH_CANCELLED)
            ok = job_append(j, "data: [DONE]\n\n", 14);
    } else if (ev->text_len) {
        ok = job_append(j, ev->text, ev->text_len);
    }
    if (!ok && !j->overflow && ev->finish == MOECL_FINISH_NONE) {
        j->overflow = true;
        moecl_engine_cancel(j->srv->engine, ev->request_id);
    }
    bool final = ev->finish != MOECL_FINISH_NONE;
    if (final) {
        j->done = true;
        j->finish = ev->finish;
        j->usage = ev->usage;
        snprintf(j->error, sizeof j->error, "%s", ev->error ? ev->error : "");
    }
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (final) job_release(j);
}

/* Whether the client closed its end (without reading anything). */
static bool client_gone(MHD_socket fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* Wait (under j->mu) for news, at most WAIT_MS. */
static void job_wait(job *j) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_nsec += WAIT_MS * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&j->cv, &j->mu, &dl);
}

static void count_disconnect(server *s, bool overflow) {
    pthread_mutex_lock(&s->mu);
    if (overflow) s->overflows++;
    else s->disconnects++;
    pthread_mutex_unlock(&s->mu);
}

/* The SSE body, produced as the engine goes. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    job *j = cls;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        if (j->out_sent < j->out_len) {
            size_t n = j->out_len - j->out_sent;
            if (n > max) n = max;
            memcpy(buf, j->out + j->out_sent, n);
            j->out_sent += n;
            pthread_mutex_unlock(&j->mu);
            return (ssize_t)n;
        }
        if (j->done || j->overflow) {
            bool clean = j->done && !j->overflow;
            pthread_mutex_unlock(&j->mu);
            return clean ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (atomic_load(&j->srv->stopping) || client_gone(j->fd)) {
            j->left = true;
            pthread_mutex_unlock(&j->mu);
            moecl_engine_cancel(j->srv->engine, j->id);
            count_disconnect(j->srv, false);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        job_wait(j);
    }
}

/* The response is gone (sent, or the connection closed): if the request
 * still runs, nobody will read it. */
static void stream_free(void *cls) {
    job *j = cls;
    pthread_mutex_lock(&j->mu);
    bool running = !j->done;
    /* MHD found the connection closed while it still had output to send
     * (the reader never saw the socket go): that is a client leaving too. */
    bool count = running && !j->left && !j->overflow && !atomic_load(&j->srv->stopping);
    j->left = j->left || count;
    pthread_mutex_unlock(&j->mu);
    if (running) moecl_engine_cancel(j->srv->engine, j->id);
    if (count) count_disconnect(j->srv, false);
    job_release(j);
}

/* ------------------------------------------------------------------------ */
/* Responses                                                                */
/* ------------------------------------------------------------------------ */

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *type, const char *body,
                                 bool retry_after) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    if (retry_after) MHD_add_response_header(r, "Retry-After", "1");
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, cJSON *o) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) return send_text(c, 500, "application/json", "{\"error\":{\"message\":\"out of memory\"}}", false);
    enum MHD_Result ret = send_text(c, status, "application/json", s, false);
    free(s);
    return ret;
}

static int status_class(unsigned status) {
    switch (status) {
    case 400: return 1;
    case 401: return 2;
    case 413: return 3;
    case 503: return 4;
    default: return status >= 500 ? 5 : 0;
    }
}

static enum MHD_Result send_error(server *s, struct MHD_Connection *c, int endpoint, unsigned status,
                                  const char *message, const char *type, const char *param, const char *code) {
    if (endpoint >= 0) {
        pthread_mutex_lock(&s->mu);
        s->requests[endpoint][status_class(status)]++;
        pthread_mutex_unlock(&s->mu);
    }
    cJSON *o = error_json(message, type, param, code);
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!txt) return MHD_NO;
    enum MHD_Result ret = send_text(c, status, "application/json", txt, status == 503);
    free(txt);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Completions                                                              */
/* ------------------------------------------------------------------------ */

static enum MHD_Result completion(server *s, struct MHD_Connection *c, sr_kind kind, const char *body, size_t len) {
    sr_request req;
    sr_error err;
    if (!sr_parse(body, len, kind, s->tok, &s->defaults, &req, &err))
        return send_error(s, c, kind, (unsigned)err.http_status, err.message, err.type, err.param, NULL);
    job *j = calloc(1, sizeof *j);
    if (!j) {
        sr_request_free(&req);
        return send_error(s, c, kind, 500, "out of memory", "server_error", NULL, NULL);
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->refs = 2;
    j->srv = s;
    j->kind = kind;
    j->stream = req.stream;
    j->include_usage = req.include_usage;
    j->created = (long long)time(NULL);
    j->t_submit = now_s();
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    j->fd = ci ? ci->connect_fd : -1;

    moecl_engine_request q = sr_engine_request(&req);
    q.callback = on_event;
    q.user_data = j;
    /* Held while submitting, so that the first chunk (the role) goes first. */
    pthread_mutex_lock(&j->mu);
    moecl_status st = moecl_engine_submit(s->engine, &q, &j->id);
    if (!st && j->stream && kind == SR_CHAT) sse_chunk(j, "", 0, true, MOECL_FINISH_NONE);
    pthread_mutex_unlock(&j->mu);
    sr_request_free(&req);
    if (st) {
        j->refs = 1;
        job_release(j);
        if (st == MOECL_ERR_BUSY)
            return send_error(s, c, kind, 503, "the server is busy: too many requests wait; retry later",
                              "server_error", NULL, "queue_full");
        if (st == MOECL_ERR_CONTEXT_FULL)
            return send_error(s, c, kind, 400, moecl_last_error(), "invalid_request_error",
                              kind == SR_CHAT ? "messages" : "prompt", "context_length_exceeded");
        if (st == MOECL_ERR_INVALID_ARG)
            return send_error(s, c, kind, 400, moecl_last_error(), "invalid_request_error", NULL, NULL);
        return send_error(s, c, kind, 500, moecl_last_error(), "server_error", NULL, NULL);
    }
    pthread_mutex_lock(&s->mu);
    s->requests[kind][0]++;
    pthread_mutex_unlock(&s->mu);

    if (j->stream) {
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, j,
                                                                   stream_free);
        if (!r) {
            moecl_engine_cancel(s->engine, j->id);
            job_release(j);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }

    /* A plain response: wait for the end, watching the socket. */
    pthread_mutex_lock(&j->mu);
    bool gone = false;
    while (!j->done) {
        if (atomic_load(&s->stopping) || client_gone(j->fd)) {
            gone = true;
            break;
        }
        job_wait(j);
    }
    pthread_mutex_unlock(&j->mu);
    if (gone) {
        moecl_engine_cancel(s->engine, j->id);
        count_disconnect(s, false);
        job_release(j);
        return MHD_NO; /* close the connection */
    }
    enum MHD_Result ret;
    if (j->finish == MOECL_FINISH_ERROR || j->finish == MOECL_FINISH_CANCELLED) {
        ret = send_error(s, c, -1, 500, j->finish == MOECL_FINISH_ERROR ? j->error : "the request was cancelled",
                         "server_error", NULL, NULL);
    } else {
        cJSON *o = cJSON_CreateObject();
        add_id_fields(o, j, kind == SR_CHAT ? "chat.completion" : "text_completion");
        cJSON *choices = cJSON_AddArrayToObject(o, "choices");
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddItemToArray(choices, ch);
        cJSON_AddNumberToObject(ch, "index", 0);
        char *clean = sr_utf8_clean(j->out ? j->out : "", j->out_len);
        if (kind == SR_CHAT) {
            cJSON *m = cJSON_AddObjectToObject(ch, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddStringToObject(m, "content", clean ? clean : "");
        } else {
            cJSON_AddStringToObject(ch, "text", clean ? clean : "");
            cJSON_AddNullToObject(ch, "logprobs");
        }
        free(clean);
        cJSON_AddStringToObject(ch, "finish_reason", finish_name(j->finish));
        cJSON_AddItemToObject(o, "usage", usage_json(&j->usage));
        ret = send_json(c, 200, o);
    }
    job_release(j);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* GET endpoints                                                            */
/* ------------------------------------------------------------------------ */

static enum MHD_Result models(server *s, struct MHD_Connection *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(o, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddItemToArray(data, m);
    cJSON_AddStringToObject(m, "id", s->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "moecl");
    moecl_engine_stats st;
    moecl_engine_get_stats(s->engine, &st);
    cJSON *meta = cJSON_AddObjectToObject(m, "meta");
    cJSON_AddNumberToObject(meta, "n_ctx", st.n_ctx);
    cJSON_AddNumberToObject(meta, "n_slots", st.n_slots);
    return send_json(c, 200, o);
}

typedef struct strbuf {
    char *s;
    size_t len, cap;
    bool failed;
} strbuf;

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *b, const char *fmt, ...) {
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 8192;
        while (cap < b->len + (size_t)n + 1) cap *= 2;
        char *g = realloc(b->s, cap);
        if (!g) {
            b->failed = true;
            return;
        }
        b->s = g;
        b->cap = cap;
    }
}

/* Tokens routed to each expert of each layer (dense layers stay at 0), and
 * the sum of their router weights. */
static void metrics_routing(server *s, strbuf *b) {
    const size_t n = (size_t)s->n_layer * (size_t)s->n_expert;
    uint64_t *tok = calloc(n ? n : 1, sizeof *tok);
    double *ws = calloc(n ? n : 1, sizeof *ws);
    if (!tok || !ws || moecl_engine_get_routing_counts(s->engine, tok, ws, n) != MOECL_OK) {
        b->failed = true;
    } else {
        sb_printf(b, "# HELP moecl_expert_tokens_total Tokens routed to each expert of each layer.\n"
                     "# TYPE moecl_expert_tokens_total counter\n");
        for (size_t i = 0; i < n; i++)
            sb_printf(b, "moecl_expert_tokens_total{layer=\"%zu\",expert=\"%zu\"} %llu\n", i / (size_t)s->n_expert,
                      i % (size_t)s->n_expert, (unsigned long long)tok[i]);
        sb_printf(b, "# HELP moecl_expert_weight_total Sum of the router weights of the tokens routed to each expert.\n"
                     "# TYPE moecl_expert_weight_total counter\n");
        for (size_t i = 0; i < n; i++)
            sb_printf(b, "moecl_expert_weight_total{layer=\"%zu\",expert=\"%zu\"} %.6f\n", i / (size_t)s->n_expert,
                      i % (size_t)s->n_expert, ws[i]);
    }
    free(tok);
    free(ws);
}

static enum MHD_Result metrics(server *s, struct MHD_Connection *c) {
    moecl_engine_stats st;
    moecl_engine_get_stats(s->engine, &st);
    strbuf b = {0};
    static const char *endpoint[2] = {"chat", "completion"};
    static const char *code[6] = {"200", "400", "401", "413", "503", "500"};
    pthread_mutex_lock(&s->mu);
    sb_printf(&b, "# HELP moecl_requests_total Completion requests by endpoint and HTTP status.\n"
                  "# TYPE moecl_requests_total counter\n");
    for (int e = 0; e < 2; e++)
        for (int k = 0; k < 6; k++)
            sb_printf(&b, "moecl_requests_total{endpoint=\"%s\",code=\"%s\"} %llu\n", endpoint[e], code[k],
                      (unsigned long long)s->requests[e][k]);
    sb_printf(&b, "# HELP moecl_client_disconnects_total Streams or waits ended because the client left.\n"
                  "# TYPE moecl_client_disconnects_total counter\nmoecl_client_disconnects_total %llu\n",
              (unsigned long long)s->disconnects);
    sb_printf(&b, "# HELP moecl_slow_client_cancels_total Requests cancelled because the client did not read.\n"
                  "# TYPE moecl_slow_client_cancels_total counter\nmoecl_slow_client_cancels_total %llu\n",
              (unsigned long long)s->overflows);
    sb_printf(&b, "# HELP moecl_time_to_first_token_seconds From submission to the first generated token.\n"
                  "# TYPE moecl_time_to_first_token_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t i = 0; i < N_TTFT; i++) {
        cum += s->ttft_count[i];
        sb_printf(&b, "moecl_time_to_first_token_seconds_bucket{le=\"%g\"} %llu\n", k_ttft_buckets[i],
                  (unsigned long long)cum);
    }
    sb_printf(&b, "moecl_time_to_first_token_seconds_bucket{le=\"+Inf\"} %llu\n",
              (unsigned long long)(cum + s->ttft_count[N_TTFT]));
    sb_printf(&b, "moecl_time_to_first_token_seconds_sum %.6f\nmoecl_time_to_first_token_seconds_count %llu\n",
              s->ttft_sum, (unsigned long long)s->ttft_n);
    pthread_mutex_unlock(&s->mu);
    sb_printf(&b, "# HELP moecl_prompt_tokens_total Prompt tokens read (prefill).\n"
                  "# TYPE moecl_prompt_tokens_total counter\nmoecl_prompt_tokens_total %llu\n",
              (unsigned long long)st.n_prompt_tokens);
    sb_printf(&b, "# HELP moecl_prompt_tokens_cached_total Prompt tokens reused from a slot's KV cache.\n"
                  "# TYPE moecl_prompt_tokens_cached_total counter\nmoecl_prompt_tokens_cached_total %llu\n",
              (unsigned long long)st.n_cached_tokens);
    sb_printf(&b, "# HELP moecl_prompt_tokens_shared_total Of the cached prompt tokens, those in KV blocks taken "
                  "from other slots.\n"
                  "# TYPE moecl_prompt_tokens_shared_total counter\nmoecl_prompt_tokens_shared_total %llu\n",
              (unsigned long long)st.n_shared_tokens);
    sb_printf(&b, "# HELP moecl_preemptions_total Requests preempted (KV pool full) and queued to be read again.\n"
                  "# TYPE moecl_preemptions_total counter\nmoecl_preemptions_total %llu\n",
              (unsigned long long)st.n_preempted);
    sb_printf(&b, "# HELP moecl_kv_full_total Requests ended because the KV pool cannot hold them even alone.\n"
                  "# TYPE moecl_kv_full_total counter\nmoecl_kv_full_total %llu\n", (unsigned long long)st.n_kv_full);
    sb_printf(&b, "# HELP moecl_kv_cells KV pool cells: budget, held by slots, held by more than one slot.\n"
                  "# TYPE moecl_kv_cells gauge\nmoecl_kv_cells{state=\"budget\"} %lld\n"
                  "moecl_kv_cells{state=\"held\"} %lld\nmoecl_kv_cells{state=\"shared\"} %lld\n",
              (long long)st.kv_cells, (long long)st.kv_cells_held, (long long)st.kv_cells_shared);
    sb_printf(&b, "# HELP moecl_completion_tokens_total Tokens generated.\n"
                  "# TYPE moecl_completion_tokens_total counter\nmoecl_completion_tokens_total %llu\n",
              (unsigned long long)st.n_generated_tokens);
    sb_printf(&b, "# HELP moecl_queue_depth Requests waiting for a slot.\n"
                  "# TYPE moecl_queue_depth gauge\nmoecl_queue_depth %d\n", st.n_queued);
    sb_printf(&b, "# HELP moecl_requests_running Requests in a slot.\n"
                  "# TYPE moecl_requests_running gauge\nmoecl_requests_running %d\n", st.n_running);
    sb_printf(&b, "# HELP moecl_slots Sequences decoded together.\n"
                  "# TYPE moecl_slots gauge\nmoecl_slots %d\n", st.n_slots);
    sb_printf(&b, "# HELP moecl_step_seconds_total Time in decode steps.\n"
                  "# TYPE moecl_step_seconds_total counter\nmoecl_step_seconds_total %.6f\n", st.step_seconds);
    sb_printf(&b, "# HELP moecl_batch_tokens Tokens per decode step.\n# TYPE moecl_batch_tokens histogram\n");
    cum = 0;
    for (int i = 0; i < 16; i++) {
        cum += st.batch_hist[i];
        sb_printf(&b, "moecl_batch_tokens_bucket{le=\"%d\"} %llu\n", 1 << i, (unsigned long long)cum);
    }
    sb_printf(&b, "moecl_batch_tokens_bucket{le=\"+Inf\"} %llu\n",
              (unsigned long long)(cum + st.batch_hist[16]));
    sb_printf(&b, "moecl_batch_tokens_sum %llu\nmoecl_batch_tokens_count %llu\n",
              (unsigned long long)st.n_batch_tokens, (unsigned long long)st.n_steps);
    sb_printf(&b, "# HELP moecl_last_batch_sequences Sequences in the last decode step.\n"
                  "# TYPE moecl_last_batch_sequences gauge\nmoecl_last_batch_sequences %d\n", st.last_batch_seqs);
    metrics_routing(s, &b);
    enum MHD_Result ret = b.failed ? MHD_NO
                                   : send_text(c, 200, "text/plain; version=0.0.4; charset=utf-8", b.s ? b.s : "",
                                               false);
    free(b.s);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct conn {
    char *body;
    size_t len, cap;
    bool too_big;
} conn;

static bool authorized(const server *s, struct MHD_Connection *c) {
    if (!s->api_key) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7)) return false;
    const char *k = h + 7, *want = s->api_key;
    size_t n = strlen(k), m = strlen(want);
    unsigned char diff = n != m;
    for (size_t i = 0; i < m; i++) diff |= (unsigned char)(want[i] ^ (i < n ? k[i] : 0)); /* no early exit */
    return diff == 0;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    server *s = cls;
    const bool post = !strcmp(method, "POST");
    const int endpoint = !strcmp(url, "/v1/chat/completions") ? SR_CHAT : !strcmp(url, "/v1/completions")
                                                                             ? SR_COMPLETION : -1;
    if (!*con_cls) { /* the headers only */
        conn *k = calloc(1, sizeof *k);
        if (!k) return MHD_NO;
        *con_cls = k;
        if (post && endpoint >= 0) {
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
            if (cl && strtoull(cl, NULL, 10) > MAX_BODY) k->too_big = true;
        }
        return MHD_YES;
    }
    conn *k = *con_cls;
    if (*upload_size) {
        if (!k->too_big && k->len + *upload_size > MAX_BODY) k->too_big = true;
        if (!k->too_big) {
            if (k->len + *upload_size + 1 > k->cap) {
                size_t cap = k->cap ? k->cap : 4096;
                while (cap < k->len + *upload_size + 1) cap *= 2;
                char *g = realloc(k->body, cap);
                if (!g) return MHD_NO;
                k->body = g;
                k->cap = cap;
            }
            memcpy(k->body + k->len, upload, *upload_size);
            k->len += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }

    if (endpoint >= 0) {
        if (!post) return send_error(s, c, -1, 405, "use POST", "invalid_request_error", NULL, NULL);
        if (!authorized(s, c))
            return send_error(s, c, endpoint, 401, "invalid or missing API key (Authorization: Bearer KEY)",
                              "invalid_request_error", NULL, "invalid_api_key");
        if (k->too_big) {
            char msg[96];
            snprintf(msg, sizeof msg, "the body is larger than %u bytes", MAX_BODY);
            return send_error(s, c, endpoint, 413, msg, "invalid_request_error", NULL, NULL);
        }
        return completion(s, c, (sr_kind)endpoint, k->body ? k->body : "", k->len);
    }
    pthread_mutex_lock(&s->mu);
    s->other_requests++;
    pthread_mutex_unlock(&s->mu);
    const bool get = !strcmp(method, "GET");
    if (!strcmp(url, "/health"))
        return get ? send_text(c, 200, "application/json", "{\"status\":\"ok\"}", false)
                   : send_error(s, c, -1, 405, "use GET", "invalid_request_error", NULL, NULL);
    if (!strcmp(url, "/metrics"))
        return get ? metrics(s, c) : send_error(s, c, -1, 405, "use GET", "invalid_request_error", NULL, NULL);
    if (!strcmp(url, "/v1/models")) {
        if (!get) return send_error(s, c, -1, 405, "use GET", "invalid_request_error", NULL, NULL);
        if (!authorized(s, c))
            return send_error(s, c, -1, 401, "invalid or missing API key (Authorization: Bearer KEY)",
                              "invalid_request_error", NULL, "invalid_api_key");
        return models(s, c);
    }
    return send_error(s, c, -1, 404, "no such endpoint", "invalid_request_error", NULL, NULL);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode why) {
    (void)cls, (void)c, (void)why;
    conn *k = *con_cls;
    if (!k) return;
    free(k->body);
    free(k);
    *con_cls = NULL;
}

/* ------------------------------------------------------------------------ */
/* The command                                                              */
/* ------------------------------------------------------------------------ */

static int usage(const char *msg, const char *arg) {
    fprintf(stderr, "moecl serve: ");
    fprintf(stderr, msg, arg);
    fprintf(stderr, "\n(see 'moecl help')\n");
    return 2;
}

static void log_quiet(moecl_log_level level, const char *message, void *user) {
    (void)user;
    fprintf(stderr, "moecl: %s: %s\n", level == MOECL_LOG_ERROR ? "error" : level == MOECL_LOG_WARN ? "warning" : "info",
            message);
}

int cmd_serve(int argc, char **argv);
int cmd_serve(int argc, char **argv) {
    const char *model_path = getenv("MOECL_MODEL"), *host = "127.0.0.1", *api_key = NULL;
    long port = 8080, parallel = 4, n_ctx = 0, n_batch = 0, n_queue = 0, threads = 0, n_predict = 0;
    bool verbose = false;
    moecl_engine_params ep = moecl_engine_default_params();
    cli_backend be; /* the backend, placement and KV options of `moecl run` */
    cli_backend_init(&be);
    sr_defaults defaults = {.sampling = moecl_sampler_default_params(), .max_tokens = 0};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x;
        char err[256];
        const int used = cli_backend_option(&be, a, v, err, sizeof err);
        if (used < 0) return usage("%s", err);
        if (used) {
            i += used - 1;
            continue;
        }
#define NEED() do { if (!v) return usage("option %s needs a value", a); i++; } while (0)
#define LONG(dst, lo, hi) do { NEED(); if (!cli_parse_long(v, lo, hi, &(dst))) return usage("bad number for %s", a); } while (0)
#define FLT(dst) do { NEED(); if (!cli_parse_float(v, &(dst))) return usage("bad number for %s", a); } while (0)
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { NEED(); model_path = v; }
        else if (!strcmp(a, "--host")) { NEED(); host = v; }
        else if (!strcmp(a, "--port")) LONG(port, 0, 65535);
        else if (!strcmp(a, "--parallel") || !strcmp(a, "-np")) LONG(parallel, 1, 1024);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) LONG(n_ctx, 1, 1 << 24);
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch")) LONG(n_batch, 1, 1 << 16);
        else if (!strcmp(a, "--queue")) LONG(n_queue, 1, 1 << 20);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) LONG(threads, 1, 1024);
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) LONG(n_predict, 0, 1 << 24);
        else if (!strcmp(a, "--api-key")) { NEED(); api_key = v; }
        else if (!strcmp(a, "--seed")) { NEED(); defaults.sampling.seed = strtoull(v, NULL, 0); }
        else if (!strcmp(a, "--temp")) FLT(defaults.sampling.temperature);
        else if (!strcmp(a, "--top-k")) { LONG(x, 0, INT_MAX); defaults.sampling.top_k = (int32_t)x; }
        else if (!strcmp(a, "--top-p")) FLT(defaults.sampling.top_p);
        else if (!strcmp(a, "--min-p")) FLT(defaults.sampling.min_p);
        else if (!strcmp(a, "--repeat-penalty")) FLT(defaults.sampling.repeat_penalty);
        else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) verbose = true;
        else return usage("unknown option %s", a);
#undef NEED
#undef LONG
#undef FLT
    }
    if (!model_path || !*model_path) return usage("%s", "serve needs a model: -m PATH");
    moecl_log_set(log_quiet, verbose ? MOECL_LOG_INFO : MOECL_LOG_WARN, NULL);
    defaults.max_tokens = (int32_t)n_predict;

    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        flags |= MHD_USE_IPv6;
    } else {
        return usage("--host %s is not an IPv4 or IPv6 address", host);
    }

    server s;
    memset(&s, 0, sizeof s);
    pthread_mutex_init(&s.mu, NULL);
    atomic_init(&s.stopping, false);
    s.api_key = api_key && *api_key ? api_key : NULL;
    s.defaults = defaults;
    const char *base = model_path + strlen(model_path);
    while (base > model_path && base[-1] == '/') base--;
    const char *end = base;
    while (base > model_path && base[-1] != '/') base--;
    snprintf(s.model_name, sizeof s.model_name, "%.*s", (int)(end - base), base);

    moecl_model *model = NULL;
    moecl_status st = moecl_model_load(model_path, NULL, &model);
    if (st) {
        fprintf(stderr, "moecl serve: cannot load the model: %s: %s\n", moecl_status_str(st), moecl_last_error());
        return 1;
    }
    float *freq = NULL;
    if ((st = cli_backend_load_freq(&be, model, (int)threads, &freq))) {
        fprintf(stderr, "moecl serve: cannot get the routing frequencies: %s: %s\n", moecl_status_str(st),
                moecl_last_error());
        moecl_model_free(model);
        return st == MOECL_ERR_INVALID_ARG && be.expert_profile && be.calibrate ? 2 : 1;
    }
    cli_backend_apply(&be, freq, &ep.context);
    ep.n_slots = (int32_t)parallel;
    ep.n_ctx = (int32_t)n_ctx;
    ep.n_batch = (int32_t)n_batch;
    ep.n_queue = (int32_t)n_queue;
    ep.context.n_threads = (int32_t)threads;
    /* Signals go to the main thread only: block them before any thread starts. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    st = moecl_engine_new(model, &ep, &s.engine);
    free(freq); /* the context keeps its own placement */
    if (st) {
        fprintf(stderr, "moecl serve: cannot start the engine: %s: %s\n", moecl_status_str(st), moecl_last_error());
        moecl_model_free(model);
        return 1;
    }
    s.tok = moecl_engine_get_tokenizer(s.engine);
    moecl_model_info mi;
    if (moecl_model_get_info(model, &mi) == MOECL_OK) {
        s.n_layer = mi.n_layer;
        s.n_expert = mi.n_expert;
    }
    struct MHD_Daemon *d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handler, &s,
                                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                            MHD_OPTION_NOTIFY_COMPLETED, completed, &s,
                                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
                                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
                                            MHD_OPTION_END);
    int rc = 0;
    if (!d) {
        fprintf(stderr, "moecl serve: cannot listen on %s port %ld: %s\n", host, port, strerror(errno));
        rc = 1;
    } else {
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        moecl_engine_stats es;
        moecl_engine_get_stats(s.engine, &es);
        printf("moecl serve: %s, %d slots x %d positions, listening on http://%s%s%s:%u\n", s.model_name, es.n_slots,
               es.n_ctx, flags & MHD_USE_IPv6 ? "[" : "", host, flags & MHD_USE_IPv6 ? "]" : "",
               di ? (unsigned)di->port : (unsigned)port);
        fflush(stdout);
        int sig = 0;
        sigwait(&sigs, &sig);
        fprintf(stderr, "moecl serve: signal %d, stopping\n", sig);
        atomic_store(&s.stopping, true);
        MHD_stop_daemon(d);
    }
    moecl_engine_free(s.engine);
    moecl_model_free(model);
    pthread_mutex_destroy(&s.mu);
    return rc;
}
