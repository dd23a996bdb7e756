/*
 * engine.c - the request engine: a bounded queue of requests, n_slots
 * sequences of one context, and one scheduler thread doing continuous
 * batching with chunked prefill.
 *
 * One step of the scheduler:
 *
 *   sweep      cancelled requests leave the queue and their slots
 *   admit      queued requests take free slots (longest cached prefix first)
 *              while the KV pool has the cells for their whole prompts; the
 *              whole blocks at the start of a prompt that any slot holds
 *              are shared, not read again (kv_cache.h)
 *   batch      one token per generating slot, then prompt chunks, oldest
 *              request first, until n_batch tokens
 *   fit        if the KV pool cannot hold the batch: free the caches of idle
 *              slots (least recently used first), then hold back prompt
 *              chunks (newest first), then preempt the newest request: its
 *              blocks are freed and it goes back to the head of the queue
 *              with its prompt and the tokens generated so far, read again
 *              when blocks free up (vLLM's recompute); only a request the
 *              pool cannot hold even alone ends, with "length"
 *   decode     one moecl_decode_batch
 *   sample     every slot whose last batch token finished its prompt or was
 *              a generated token samples its next token; text goes through
 *              the streaming detokenizer and the stop-string hold-back
 *
 * Locking: `mu` guards the queue, the slots' request pointers, the cancel
 * flags and the counters. Everything else about a running request (its
 * sampler, detokenizer, text) is touched only by the scheduler thread, and
 * callbacks run with `mu` released, so they may submit or cancel.
 */
#include "engine/engine.h"

#include "kv_cache.h"

#include <math.h>
#include <stdio.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct request {
    uint64_t id;
    int32_t *prompt;        /* [n_prompt] the prompt, then after a preemption the tokens generated too */
    int32_t n_prompt;
    int32_t n_prompt_user;  /* tokens of the prompt as submitted (usage) */
    moecl_sampler *sampler;
    moecl_detokenizer *detok; /* NULL without a tokenizer */
    int32_t max_tokens;     /* <= 0: no limit but the context */
    char **stop;            /* [n_stop] NUL-terminated, non-empty */
    size_t *stop_len;
    int n_stop;
    int32_t *stop_ids;      /* [n_stop_ids], EOS appended unless ignore_eos */
    int32_t n_stop_ids;
    moecl_engine_callback callback;
    void *user_data;
    bool cancel;            /* under mu */

    /* Scheduler state. */
    uint64_t admitted;      /* first admission's order: prompt chunks go oldest first, the newest is preempted */
    bool started;           /* admitted once (a preempted request keeps its place and its usage) */
    int32_t n_read;         /* prompt tokens in the slot's KV (cached ones included) */
    int32_t n_cached;       /* prompt tokens reused from the cache */
    int32_t n_gen;          /* tokens generated */
    int32_t next_token;     /* generated, not yet decoded */
    char *hold;             /* text produced but not yet shown (a possible stop-string start) */
    size_t hold_len, hold_cap;
    struct request *next;   /* queue link */
} request;

typedef struct slot {
    request *req;           /* NULL: free (changed under mu) */
    int32_t *cache;         /* [n_ctx] ids whose K/V the sequence holds */
    int32_t n_cache;
    uint64_t last_used;     /* step of its last request's end: ties go to the least recently used */
    int32_t batch_last;     /* index of its last token in this step's batch, -1 if none */
    int32_t batch_n;        /* tokens it has in this step's batch */
} slot;

struct moecl_engine {
    const moecl_model *model;
    const moecl_tokenizer *tok;
    moecl_context *ctx;
    int32_t n_vocab, n_ctx, n_batch, n_slots, n_queue, eos_id;
    int64_t n_kv_cells;     /* the KV pool's cells (a limit shared by all slots) */
    slot *slots;            /* [n_slots] */
    int32_t *batch_tok, *batch_seq; /* [n_batch] */
    bool *idle;             /* [n_slots] scratch: slots without a request */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool thread_started;
    atomic_bool shutdown;   /* also read by the context's abort callback */
    request *queue_head, *queue_tail;
    int32_t n_queued, n_running;
    uint64_t next_id, n_admitted;
    moecl_engine_stats stats;
    size_t n_route;          /* n_layer * n_expert */
    uint64_t *route_tokens;  /* [n_route] the context's routing counters, copied after each step, under mu */
    double *route_wsum;      /* [n_route] */
};

/* ------------------------------------------------------------------------ */
/* Stop strings                                                             */
/* ------------------------------------------------------------------------ */

size_t mc_stop_find(const char *text, size_t n_text, char *const *stop, const size_t *len, int n) {
    size_t best = n_text;
    for (int i = 0; i < n; i++) {
        if (len[i] > n_text) continue;
        const char *p = memmem(text, n_text, stop[i], len[i]);
        if (p && (size_t)(p - text) < best) best = (size_t)(p - text);
    }
    return best;
}

size_t mc_stop_safe_len(const char *text, size_t n_text, char *const *stop, const size_t *len, int n) {
    size_t keep = 0; /* longest suffix of text that is a proper prefix of a stop string */
    for (int i = 0; i < n; i++) {
        size_t most = len[i] - 1 < n_text ? len[i] - 1 : n_text;
        for (size_t k = most; k > keep; k--)
            if (!memcmp(text + n_text - k, stop[i], k)) {
                keep = k;
                break;
            }
    }
    size_t safe = n_text - keep;
    while (safe > 0 && safe < n_text && ((uint8_t)text[safe] & 0xC0) == 0x80) safe--;
    return safe;
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

static void request_free(request *r) {
    if (!r) return;
    free(r->prompt);
    moecl_sampler_free(r->sampler);
    moecl_detokenizer_free(r->detok);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->stop_len);
    free(r->stop_ids);
    free(r->hold);
    free(r);
}

/* The prompt ids of a request: copied, or the chat messages rendered. */
static moecl_status request_prompt(const moecl_engine *e, const moecl_engine_request *q, request *r) {
    if ((q->prompt != NULL) == (q->messages != NULL))
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_submit: give either prompt ids or chat messages");
    if (q->prompt) {
        if (q->n_prompt < 1) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_submit: the prompt is empty");
        for (int32_t i = 0; i < q->n_prompt; i++)
            if (q->prompt[i] < 0 || q->prompt[i] >= e->n_vocab)
                return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_submit: prompt token %d has id %d, outside the "
                                "vocabulary 0..%d", i, q->prompt[i], e->n_vocab - 1);
        if (!(r->prompt = malloc((size_t)q->n_prompt * sizeof *r->prompt)))
            return mc_error(MOECL_ERR_NOMEM, "moecl_engine_submit: out of memory");
        memcpy(r->prompt, q->prompt, (size_t)q->n_prompt * sizeof *r->prompt);
        r->n_prompt = r->n_prompt_user = q->n_prompt;
        return MOECL_OK;
    }
    if (!e->tok) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_submit: chat messages need the model's tokenizer");
    if (q->n_messages < 1) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_submit: no chat messages");
    int32_t n = 0;
    moecl_status st = moecl_chat_tokenize(e->tok, q->messages, q->n_messages, 0, NULL, 0, &n);
    if (st) return st;
    if (n < 1) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_submit: the chat renders to no tokens");
    if (!(r->prompt = malloc((size_t)n * sizeof *r->prompt)))
        return mc_error(MOECL_ERR_NOMEM, "moecl_engine_submit: out of memory");
    if ((st = moecl_chat_tokenize(e->tok, q->messages, q->n_messages, 0, r->prompt, n, &n))) return st;
    r->n_prompt = r->n_prompt_user = n;
    return MOECL_OK;
}

static moecl_status request_new(const moecl_engine *e, const moecl_engine_request *q, request **out) {
    *out = NULL;
    if (!q->callback) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_submit: the request has no callback");
    if (q->n_stop < 0 || q->n_stop_ids < 0 || (q->n_stop && !q->stop) || (q->n_stop_ids && !q->stop_ids))
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_submit: bad stop strings or stop ids");
    request *r = calloc(1, sizeof *r);
    if (!r) return mc_error(MOECL_ERR_NOMEM, "moecl_engine_submit: out of memory");
    moecl_status st = request_prompt(e, q, r);
    if (!st && r->n_prompt > e->n_ctx)
        st = mc_error(MOECL_ERR_CONTEXT_FULL, "moecl_engine_submit: the prompt has %d tokens; the context holds %d",
                      r->n_prompt, e->n_ctx);
    if (!st && r->n_prompt > e->n_kv_cells)
        st = mc_error(MOECL_ERR_CONTEXT_FULL,
                      "moecl_engine_submit: the prompt has %d tokens; the KV cache holds %lld cells for all slots",
                      r->n_prompt, (long long)e->n_kv_cells);
    if (!st) st = moecl_sampler_new(&q->sampling, &r->sampler);
    if (!st && e->tok &&
        (st = moecl_detokenizer_new(e->tok, MOECL_DETOKENIZE_SKIP_SPECIAL |
                                    (q->messages ? 0 : MOECL_DETOKENIZE_KEEP_LEADING_SPACE), &r->detok)))
        goto fail;
    if (st) goto fail;
    for (int32_t i = 0; i < r->n_prompt; i++) moecl_sampler_accept(r->sampler, r->prompt[i]);

    if (q->n_stop) {
        if (!e->tok) {
            st = mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_submit: stop strings need the model's tokenizer");
            goto fail;
        }
        r->stop = calloc((size_t)q->n_stop, sizeof *r->stop);
        r->stop_len = calloc((size_t)q->n_stop, sizeof *r->stop_len);
        if (!r->stop || !r->stop_len) goto nomem;
        for (int32_t i = 0; i < q->n_stop; i++) {
            if (!q->stop[i] || !q->stop[i][0]) continue;
            size_t n = strlen(q->stop[i]);
            if (!(r->stop[r->n_stop] = malloc(n + 1))) goto nomem;
            memcpy(r->stop[r->n_stop], q->stop[i], n + 1);
            r->stop_len[r->n_stop++] = n;
        }
    }
    int32_t eos = q->ignore_eos ? -1 : e->eos_id;
    if (!(r->stop_ids = malloc(((size_t)q->n_stop_ids + 1) * sizeof *r->stop_ids))) goto nomem;
    for (int32_t i = 0; i < q->n_stop_ids; i++) r->stop_ids[r->n_stop_ids++] = q->stop_ids[i];
    if (eos >= 0) r->stop_ids[r->n_stop_ids++] = eos;
    r->max_tokens = q->max_tokens;
    r->callback = q->callback;
    r->user_data = q->user_data;
    *out = r;
    return MOECL_OK;
nomem:
    st = mc_error(MOECL_ERR_NOMEM, "moecl_engine_submit: out of memory");
fail:
    request_free(r);
    return st;
}

/* Append text to what the request holds back. */
static bool hold_append(request *r, const char *text, size_t n) {
    if (r->hold_len + n + 1 > r->hold_cap) {
        size_t cap = r->hold_cap ? r->hold_cap : 64;
        while (cap < r->hold_len + n + 1) cap *= 2;
        char *h = realloc(r->hold, cap);
        if (!h) return false;
        r->hold = h;
        r->hold_cap = cap;
    }
    memcpy(r->hold + r->hold_len, text, n);
    r->hold_len += n;
    r->hold[r->hold_len] = '\0';
    return true;
}

static void emit(request *r, int32_t token, size_t n_text, moecl_finish_reason finish, moecl_status status,
                 const char *error) {
    char empty = '\0';
    char saved = '\0';
    if (r->hold && n_text < r->hold_len) { /* terminate the shown part in place */
        saved = r->hold[n_text];
        r->hold[n_text] = '\0';
    }
    moecl_engine_event ev = {
        .request_id = r->id,
        .token = token,
        .text = r->hold && n_text ? r->hold : &empty,
        .text_len = n_text,
        .finish = finish,
        .usage = {.prompt_tokens = r->n_prompt_user, .cached_prompt_tokens = r->n_cached, .completion_tokens = r->n_gen},
        .status = status,
        .error = error ? error : "",
    };
    r->callback(&ev, r->user_data);
    if (r->hold && n_text < r->hold_len) r->hold[n_text] = saved;
    if (n_text) {
        memmove(r->hold, r->hold + n_text, r->hold_len - n_text + 1);
        r->hold_len -= n_text;
    }
}

/* ------------------------------------------------------------------------ */
/* Creation and parameters                                                  */
/* ------------------------------------------------------------------------ */

moecl_engine_params moecl_engine_default_params(void) {
    moecl_engine_params p = {0};
    p.context = moecl_context_default_params();
    return p;
}

moecl_engine_request moecl_engine_default_request(void) {
    moecl_engine_request q;
    memset(&q, 0, sizeof q);
    q.sampling = moecl_sampler_default_params();
    return q;
}

const char *moecl_finish_reason_str(moecl_finish_reason reason) {
    switch (reason) {
    case MOECL_FINISH_NONE: return "none";
    case MOECL_FINISH_STOP: return "stop";
    case MOECL_FINISH_LENGTH: return "length";
    case MOECL_FINISH_CANCELLED: return "cancelled";
    case MOECL_FINISH_ERROR: return "error";
    }
    return "?";
}

const moecl_tokenizer *moecl_engine_get_tokenizer(const moecl_engine *engine) {
    return engine ? engine->tok : NULL;
}

static bool abort_on_shutdown(void *user) {
    moecl_engine *e = user;
    return atomic_load(&e->shutdown);
}

static void *scheduler_main(void *arg);

moecl_status moecl_engine_new(const moecl_model *model, const moecl_engine_params *params, moecl_engine **out) {
    if (!out) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_new: out is NULL");
    *out = NULL;
    if (!model) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_new: model is NULL");
    moecl_engine_params p = params ? *params : moecl_engine_default_params();
    if (p.n_slots < 0 || p.n_ctx < 0 || p.n_batch < 0 || p.n_queue < 0)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_new: negative n_slots, n_ctx, n_batch or n_queue");
    moecl_model_info info;
    moecl_status st = moecl_model_get_info(model, &info);
    if (st) return st;
    if (!p.n_slots) p.n_slots = 4;
    if (!p.n_ctx) p.n_ctx = info.n_ctx_train < 4096 ? info.n_ctx_train : 4096;
    if (!p.n_batch) p.n_batch = 512;
    if (p.n_batch < p.n_slots) p.n_batch = p.n_slots;
    if (!p.n_queue) p.n_queue = 64;

    moecl_engine *e = calloc(1, sizeof *e);
    if (!e) return mc_error(MOECL_ERR_NOMEM, "moecl_engine_new: out of memory");
    e->model = model;
    e->tok = moecl_model_get_tokenizer(model);
    e->n_vocab = info.n_vocab;
    e->n_slots = p.n_slots;
    e->n_queue = p.n_queue;
    e->eos_id = e->tok && moecl_tokenizer_eos_id(e->tok) >= 0 ? moecl_tokenizer_eos_id(e->tok) : info.eos_id;
    e->next_id = 1;
    atomic_init(&e->shutdown, false);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);

    moecl_context_params cp = p.context;
    cp.n_ctx = (uint32_t)p.n_ctx;
    cp.n_batch = (uint32_t)p.n_batch;
    cp.n_seq_max = (uint32_t)p.n_slots;
    cp.logits_all = false;
    cp.abort_callback = abort_on_shutdown;
    cp.abort_user_data = e;
    if ((st = moecl_context_new(model, &cp, &e->ctx))) goto fail;
    /* Routing counters cost a few adds per token and layer: always on, for
     * moecl_engine_get_routing_counts. */
    e->n_route = (size_t)info.n_layer * (size_t)info.n_expert;
    e->route_tokens = calloc(e->n_route ? e->n_route : 1, sizeof *e->route_tokens);
    e->route_wsum = calloc(e->n_route ? e->n_route : 1, sizeof *e->route_wsum);
    if (!e->route_tokens || !e->route_wsum) goto nomem;
    if ((st = moecl_context_set_routing_counters(e->ctx, true))) goto fail;
    /* the context may clamp the budget (never above n_slots * n_ctx) */
    e->n_ctx = p.n_ctx;
    e->n_batch = (int64_t)p.n_batch < (int64_t)p.n_slots * p.n_ctx ? p.n_batch : p.n_slots * p.n_ctx;
    e->slots = calloc((size_t)e->n_slots, sizeof *e->slots);
    e->batch_tok = malloc((size_t)e->n_batch * sizeof *e->batch_tok);
    e->batch_seq = malloc((size_t)e->n_batch * sizeof *e->batch_seq);
    e->idle = calloc((size_t)e->n_slots, sizeof *e->idle);
    if (!e->slots || !e->batch_tok || !e->batch_seq || !e->idle) goto nomem;
    for (int32_t s = 0; s < e->n_slots; s++)
        if (!(e->slots[s].cache = malloc((size_t)e->n_ctx * sizeof(int32_t)))) goto nomem;
    {
        moecl_kv_info kvi;
        moecl_context_get_kv_info(e->ctx, &kvi);
        e->n_kv_cells = kvi.n_cells;
        e->stats.kv_cells = kvi.n_cells;
    }
    e->stats.n_slots = e->n_slots;
    e->stats.n_ctx = e->n_ctx;
    e->stats.n_batch = e->n_batch;
    if (pthread_create(&e->thread, NULL, scheduler_main, e) != 0) {
        st = mc_error(MOECL_ERR_BACKEND, "moecl_engine_new: cannot start the scheduler thread");
        goto fail;
    }
    e->thread_started = true;
    mc_log(MOECL_LOG_INFO, "engine: %d slots x %d positions, %lld KV cells shared, %d tokens per step, queue %d",
           e->n_slots, e->n_ctx, (long long)e->n_kv_cells, e->n_batch, e->n_queue);
    *out = e;
    return MOECL_OK;
nomem:
    st = mc_error(MOECL_ERR_NOMEM, "moecl_engine_new: out of memory");
fail:
    moecl_engine_free(e);
    return st;
}

void moecl_engine_free(moecl_engine *e) {
    if (!e) return;
    if (e->thread_started) {
        pthread_mutex_lock(&e->mu);
        atomic_store(&e->shutdown, true);
        pthread_cond_broadcast(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    }
    /* The scheduler ended every request; free what it could not have seen. */
    for (request *r = e->queue_head, *n; r; r = n) {
        n = r->next;
        request_free(r);
    }
    if (e->slots)
        for (int32_t s = 0; s < e->n_slots; s++) free(e->slots[s].cache);
    free(e->slots);
    free(e->batch_tok);
    free(e->batch_seq);
    free(e->idle);
    moecl_context_free(e->ctx);
    free(e->route_tokens);
    free(e->route_wsum);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

/* ------------------------------------------------------------------------ */
/* Submit, cancel, stats                                                    */
/* ------------------------------------------------------------------------ */

moecl_status moecl_engine_submit(moecl_engine *e, const moecl_engine_request *q, uint64_t *id) {
    if (id) *id = 0;
    if (!e || !q) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_submit: NULL engine or request");
    request *r;
    moecl_status st = request_new(e, q, &r);
    if (st) return st;
    pthread_mutex_lock(&e->mu);
    if (e->n_queued >= e->n_queue || atomic_load(&e->shutdown)) {
        int32_t n = e->n_queued;
        pthread_mutex_unlock(&e->mu);
        request_free(r);
        return mc_error(MOECL_ERR_BUSY, "moecl_engine_submit: the queue is full (%d requests wait for a slot)", n);
    }
    r->id = e->next_id++;
    if (e->queue_tail) e->queue_tail->next = r;
    else e->queue_head = r;
    e->queue_tail = r;
    e->n_queued++;
    e->stats.n_submitted++;
    if (id) *id = r->id;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return MOECL_OK;
}

moecl_status moecl_engine_cancel(moecl_engine *e, uint64_t id) {
    if (!e) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_cancel: engine is NULL");
    bool found = false;
    pthread_mutex_lock(&e->mu);
    for (request *r = e->queue_head; r && !found; r = r->next)
        if (r->id == id) found = r->cancel = true;
    for (int32_t s = 0; s < e->n_slots && !found; s++)
        if (e->slots[s].req && e->slots[s].req->id == id) found = e->slots[s].req->cancel = true;
    if (found) pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return found ? MOECL_OK
                 : mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_cancel: no queued or running request %llu",
                            (unsigned long long)id);
}

moecl_status moecl_engine_get_stats(moecl_engine *e, moecl_engine_stats *stats) {
    if (!e || !stats) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_get_stats: NULL argument");
    pthread_mutex_lock(&e->mu);
    *stats = e->stats;
    stats->n_running = e->n_running;
    stats->n_queued = e->n_queued;
    pthread_mutex_unlock(&e->mu);
    return MOECL_OK;
}

moecl_status moecl_engine_get_routing_counts(moecl_engine *e, uint64_t *tokens, double *weight_sum, size_t n) {
    if (!e) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_engine_get_routing_counts: engine is NULL");
    if (n < e->n_route)
        return mc_error(MOECL_ERR_INVALID_ARG,
                        "moecl_engine_get_routing_counts: n is %zu; n_layer x n_expert = %zu values are needed", n,
                        e->n_route);
    pthread_mutex_lock(&e->mu);
    if (tokens) memcpy(tokens, e->route_tokens, e->n_route * sizeof *tokens);
    if (weight_sum) memcpy(weight_sum, e->route_wsum, e->n_route * sizeof *weight_sum);
    pthread_mutex_unlock(&e->mu);
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* The scheduler                                                            */
/* ------------------------------------------------------------------------ */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The request leaves its slot (its KV stays for prefix reuse), gets its
 * final event, and is freed. */
static void finish(moecl_engine *e, int32_t s, moecl_finish_reason why, int32_t token, moecl_status st,
                   const char *error) {
    slot *sl = &e->slots[s];
    request *r = sl->req;
    pthread_mutex_lock(&e->mu);
    sl->req = NULL;
    sl->last_used = e->stats.n_steps;
    e->n_running--;
    e->stats.n_finished++;
    pthread_mutex_unlock(&e->mu);
    /* What the detokenizer and the hold-back kept is shown unless the
     * request was stopped by a stop string (then the hold is cut there). */
    if (why != MOECL_FINISH_ERROR && why != MOECL_FINISH_CANCELLED && r->detok) {
        const char *t;
        size_t n;
        if (moecl_detokenizer_flush(r->detok, &t, &n) == MOECL_OK && n) hold_append(r, t, n);
    }
    size_t shown = r->hold_len;
    if (r->n_stop) {
        size_t at = mc_stop_find(r->hold ? r->hold : "", r->hold_len, r->stop, r->stop_len, r->n_stop);
        if (at < shown) {
            shown = at;
            why = MOECL_FINISH_STOP;
        }
    }
    if (why == MOECL_FINISH_CANCELLED || why == MOECL_FINISH_ERROR) shown = 0;
    emit(r, token, shown, why, st, error);
    request_free(r);
}

/* A token was sampled for the request in slot s: show its text, then
 * decide whether the request is done. */
static void on_token(moecl_engine *e, int32_t s, int32_t tok) {
    request *r = e->slots[s].req;
    r->n_gen++;
    pthread_mutex_lock(&e->mu);
    e->stats.n_generated_tokens++;
    pthread_mutex_unlock(&e->mu);
    for (int32_t i = 0; i < r->n_stop_ids; i++)
        if (tok == r->stop_ids[i]) {
            finish(e, s, MOECL_FINISH_STOP, tok, MOECL_OK, NULL);
            return;
        }
    if (r->detok) {
        const char *t;
        size_t n;
        /* an id past the tokenizer's vocabulary (padded embeddings) shows nothing */
        if (moecl_detokenizer_push(r->detok, tok, &t, &n) == MOECL_OK && n && !hold_append(r, t, n)) {
            finish(e, s, MOECL_FINISH_ERROR, tok, MOECL_ERR_NOMEM, "out of memory for the text of a request");
            return;
        }
    }
    const bool at_limit = r->max_tokens > 0 && r->n_gen >= r->max_tokens;
    const bool full = e->slots[s].n_cache >= e->n_ctx; /* no room to decode this token */
    if (r->n_stop && mc_stop_find(r->hold, r->hold_len, r->stop, r->stop_len, r->n_stop) < r->hold_len) {
        finish(e, s, MOECL_FINISH_STOP, tok, MOECL_OK, NULL);
        return;
    }
    if (at_limit || full) {
        finish(e, s, MOECL_FINISH_LENGTH, tok, MOECL_OK, NULL);
        return;
    }
    size_t shown = r->n_stop ? mc_stop_safe_len(r->hold, r->hold_len, r->stop, r->stop_len, r->n_stop) : r->hold_len;
    emit(r, tok, shown, MOECL_FINISH_NONE, MOECL_OK, NULL);
    r->next_token = tok;
}

static int32_t common_prefix(const int32_t *a, int32_t na, const int32_t *b, int32_t nb) {
    int32_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* KV blocks the pool can give to a new request's prompt: free blocks, plus
 * those only idle slots keep for prefix reuse (freed on demand), less those
 * the running requests still need for the rest of their prompts. */
static int32_t kv_blocks_for_admission(moecl_engine *e) {
    mc_kv *kv = mc_context_kv_mut(e->ctx);
    int64_t n = mc_kv_available(kv);
    for (int32_t s = 0; s < e->n_slots; s++) {
        const request *r = e->slots[s].req;
        e->idle[s] = !r;
        if (r) n -= mc_kv_blocks_needed(kv, s, r->n_prompt);
    }
    n += mc_kv_blocks_freed_by(kv, e->idle);
    return n < 0 ? 0 : (int32_t)n;
}

/* The free slot to take blocks shared from other slots: an empty one, else
 * the least recently used (its cache is the one lost). */
static int32_t slot_for_sharing(const moecl_engine *e) {
    int32_t best = -1;
    for (int32_t s = 0; s < e->n_slots; s++) {
        const slot *sl = &e->slots[s];
        if (sl->req) continue;
        if (best < 0 || (sl->n_cache == 0) > (e->slots[best].n_cache == 0) ||
            ((sl->n_cache == 0) == (e->slots[best].n_cache == 0) && sl->last_used < e->slots[best].last_used))
            best = s;
    }
    return best;
}

/* Under mu: queued requests take free slots, in order, while the KV pool
 * can hold their whole prompts (FIFO: a request that does not fit holds
 * back the ones behind it, so a long prompt is not starved). Each goes to
 * the free slot sharing the longest prefix with its prompt (ties: least
 * recently used), unless more whole blocks of the prompt are in the table
 * of shared blocks: then a free slot takes those. A preempted request also
 * waits until every generating request has a block to grow into, so it is
 * not preempted again at once. At least one prompt token is always read,
 * for its logits. */
static void admit(moecl_engine *e) {
    mc_kv *kv = mc_context_kv_mut(e->ctx);
    while (e->queue_head) {
        request *r = e->queue_head;
        int32_t need = mc_kv_blocks_for(r->n_prompt);
        if (r->started)
            for (int32_t s = 0; s < e->n_slots; s++) need += e->slots[s].req != NULL;
        if (need > kv_blocks_for_admission(e)) return;
        int32_t best = -1, best_lcp = -1;
        for (int32_t s = 0; s < e->n_slots; s++) {
            const slot *sl = &e->slots[s];
            if (sl->req) continue;
            int32_t l = common_prefix(sl->cache, sl->n_cache, r->prompt, r->n_prompt);
            if (l > best_lcp || (l == best_lcp && sl->last_used < e->slots[best].last_used)) {
                best = s;
                best_lcp = l;
            }
        }
        if (best < 0) return;
        e->queue_head = r->next;
        if (!e->queue_head) e->queue_tail = NULL;
        r->next = NULL;
        e->n_queued--;
        e->n_running++;
        int32_t shared = mc_kv_match(kv, r->prompt, r->n_prompt), n_reuse = best_lcp;
        if (shared >= r->n_prompt) shared = r->n_prompt - 1;
        if (shared > best_lcp) {
            const int32_t s = slot_for_sharing(e);
            if (mc_kv_share(kv, s, r->prompt, shared) == MOECL_OK) {
                best = s;
                n_reuse = shared;
                memcpy(e->slots[s].cache, r->prompt, (size_t)shared * sizeof *r->prompt);
                e->stats.n_shared_tokens += (uint64_t)shared;
            }
        }
        slot *sl = &e->slots[best];
        if (n_reuse >= r->n_prompt) n_reuse = r->n_prompt - 1;
        moecl_seq_truncate(e->ctx, best, n_reuse);
        sl->n_cache = n_reuse;
        sl->req = r;
        r->n_read = n_reuse;
        if (!r->started) {
            r->started = true;
            r->n_cached = n_reuse;
            r->admitted = e->n_admitted++;
        }
        e->stats.n_cached_tokens += (uint64_t)n_reuse;
    }
}

/* Under mu: take the cancelled requests out of the queue into *out. */
static void sweep_queue(moecl_engine *e, request **out, bool all) {
    request **pp = &e->queue_head;
    e->queue_tail = NULL;
    while (*pp) {
        request *r = *pp;
        if (r->cancel || all) {
            *pp = r->next;
            r->next = *out;
            *out = r;
            e->n_queued--;
            e->stats.n_finished++;
        } else {
            e->queue_tail = r;
            pp = &r->next;
        }
    }
}

static void end_unqueued(request *list) {
    while (list) {
        request *n = list->next;
        emit(list, -1, 0, MOECL_FINISH_CANCELLED, MOECL_OK, NULL);
        request_free(list);
        list = n;
    }
}

/* KV blocks the first T tokens of the batch need beyond those held. */
static int32_t batch_blocks(moecl_engine *e, int32_t T) {
    const mc_kv *kv = mc_context_kv(e->ctx);
    for (int32_t s = 0; s < e->n_slots; s++) e->slots[s].batch_n = 0;
    for (int32_t t = 0; t < T; t++) {
        e->slots[e->batch_seq[t]].batch_n++;
        e->slots[e->batch_seq[t]].batch_last = t;
    }
    int32_t need = 0;
    for (int32_t s = 0; s < e->n_slots; s++)
        if (e->slots[s].batch_n) need += mc_kv_blocks_needed(kv, s, (int64_t)kv->seq[s].len + e->slots[s].batch_n);
    return need;
}

/* The request in slot s needs more of the pool than there is, with no
 * other request running: it ends, as at the end of its context. */
static void end_alone(moecl_engine *e, int32_t s) {
    char msg[256];
    snprintf(msg, sizeof msg, "the KV cache of %lld cells cannot hold the request's %d positions even alone",
             (long long)e->n_kv_cells, e->slots[s].n_cache + 1);
    pthread_mutex_lock(&e->mu);
    e->stats.n_kv_full++;
    pthread_mutex_unlock(&e->mu);
    finish(e, s, MOECL_FINISH_LENGTH, -1, MOECL_ERR_CONTEXT_FULL, msg);
}

/* Preempt the request in slot s: its blocks go back to the pool and it goes
 * back to the head of the queue. A generating request's prompt becomes what
 * its slot held plus its last sampled token (prompt and generated tokens),
 * so when it is read again the next token sampled is the one it would have
 * sampled next; its sampler, detokenizer and held-back text carry on, so its
 * client sees neither a repeat nor a gap. */
static void preempt(moecl_engine *e, int32_t s) {
    slot *sl = &e->slots[s];
    request *r = sl->req;
    if (r->n_read == r->n_prompt) {
        const int32_t n = sl->n_cache + 1;
        if ((int64_t)mc_kv_blocks_for(n) > mc_context_kv(e->ctx)->n_blocks_max) {
            end_alone(e, s);
            return;
        }
        int32_t *p = realloc(r->prompt, (size_t)n * sizeof *p);
        if (!p) {
            finish(e, s, MOECL_FINISH_ERROR, -1, MOECL_ERR_NOMEM, "out of memory to preempt a request");
            return;
        }
        memcpy(p, sl->cache, (size_t)sl->n_cache * sizeof *p);
        p[sl->n_cache] = r->next_token;
        r->prompt = p;
        r->n_prompt = n;
    }
    r->n_read = 0;
    moecl_seq_truncate(e->ctx, s, 0);
    sl->n_cache = 0;
    pthread_mutex_lock(&e->mu);
    sl->req = NULL;
    sl->last_used = e->stats.n_steps;
    e->n_running--;
    r->next = e->queue_head;
    e->queue_head = r;
    if (!e->queue_tail) e->queue_tail = r;
    e->n_queued++;
    e->stats.n_preempted++;
    pthread_mutex_unlock(&e->mu);
}

/* Make the batch of T tokens fit in the KV pool (see the top of the file);
 * returns its new length. Generating tokens come first in the batch, prompt
 * chunks after them oldest first, so holding back prompt tokens from the end
 * holds back the newest chunk first. */
static int32_t fit_kv(moecl_engine *e, int32_t T) {
    const mc_kv *kv = mc_context_kv(e->ctx);
    for (;;) {
        const int32_t need = batch_blocks(e, T);
        if (need <= mc_kv_available(kv)) break;
        int32_t idle = -1; /* the least recently used idle slot that holds blocks */
        for (int32_t s = 0; s < e->n_slots; s++)
            if (!e->slots[s].req && kv->seq[s].n_blocks && (idle < 0 || e->slots[s].last_used < e->slots[idle].last_used))
                idle = s;
        if (idle >= 0) {
            moecl_seq_truncate(e->ctx, idle, 0);
            e->slots[idle].n_cache = 0;
            pthread_mutex_lock(&e->mu);
            e->stats.n_kv_evicted++;
            pthread_mutex_unlock(&e->mu);
            continue;
        }
        const request *last = T ? e->slots[e->batch_seq[T - 1]].req : NULL;
        if (last && last->n_read < last->n_prompt) { /* a prompt token: it waits for a later step */
            T--;
            continue;
        }
        /* Only generating tokens are left: preempt the newest request
         * (in the batch or not: its blocks are what is freed). */
        int32_t victim = -1, n_running = 0;
        for (int32_t s = 0; s < e->n_slots; s++) {
            if (!e->slots[s].req) continue;
            n_running++;
            if (victim < 0 || e->slots[s].req->admitted > e->slots[victim].req->admitted) victim = s;
        }
        if (victim < 0) break; /* nothing left to hold back */
        int32_t u = 0;
        for (int32_t t = 0; t < T; t++)
            if (e->batch_seq[t] != victim) {
                e->batch_tok[u] = e->batch_tok[t];
                e->batch_seq[u++] = e->batch_seq[t];
            }
        T = u;
        if (n_running > 1) preempt(e, victim);
        else end_alone(e, victim);
    }
    batch_blocks(e, T);
    for (int32_t s = 0; s < e->n_slots; s++)
        if (!e->slots[s].batch_n) e->slots[s].batch_last = -1;
    if (T == 0) {
        /* Nothing fits and nothing generates: cannot happen while admission
         * keeps every running prompt within the pool, but never spin. */
        int32_t newest = -1;
        for (int32_t s = 0; s < e->n_slots; s++)
            if (e->slots[s].req && (newest < 0 || e->slots[s].req->admitted > e->slots[newest].req->admitted))
                newest = s;
        if (newest >= 0)
            finish(e, newest, MOECL_FINISH_ERROR, -1, MOECL_ERR_CONTEXT_FULL, "the KV cache is full");
    }
    return T;
}

/* One decode step over every running slot. */
static void step(moecl_engine *e) {
    int32_t T = 0, n_seqs = 0;
    for (int32_t s = 0; s < e->n_slots; s++) {
        slot *sl = &e->slots[s];
        sl->batch_last = -1;
        sl->batch_n = 0;
        if (sl->req && sl->req->n_read == sl->req->n_prompt) { /* generating: its last token */
            e->batch_tok[T] = sl->req->next_token;
            e->batch_seq[T] = s;
            sl->batch_last = T++;
            sl->batch_n = 1;
        }
    }
    /* Prompt chunks, oldest request first, in what the budget leaves. */
    for (;;) {
        int32_t pick = -1;
        for (int32_t s = 0; s < e->n_slots; s++) {
            const request *r = e->slots[s].req;
            if (r && r->n_read < r->n_prompt && e->slots[s].batch_n == 0 &&
                (pick < 0 || r->admitted < e->slots[pick].req->admitted))
                pick = s;
        }
        if (pick < 0 || T >= e->n_batch) break;
        slot *sl = &e->slots[pick];
        request *r = sl->req;
        int32_t n = r->n_prompt - r->n_read;
        if (n > e->n_batch - T) n = e->n_batch - T;
        for (int32_t i = 0; i < n; i++) {
            e->batch_tok[T] = r->prompt[r->n_read + i];
            e->batch_seq[T++] = pick;
        }
        sl->batch_last = T - 1;
        sl->batch_n = n;
    }
    T = fit_kv(e, T);
    if (T == 0) return;

    double t0 = now_s();
    moecl_batch b = {.n_tokens = T, .tokens = e->batch_tok, .seq_id = e->batch_seq};
    moecl_status st = moecl_decode_batch(e->ctx, &b);
    double dt = now_s() - t0;
    int32_t n_prompt_read = 0;
    for (int32_t s = 0; s < e->n_slots; s++) n_seqs += e->slots[s].batch_n > 0;
    for (int32_t s = 0; s < e->n_slots; s++)
        if (e->slots[s].batch_n && e->slots[s].req->n_read < e->slots[s].req->n_prompt)
            n_prompt_read += e->slots[s].batch_n;
    pthread_mutex_lock(&e->mu);
    e->stats.n_steps++;
    e->stats.n_batch_tokens += (uint64_t)T;
    e->stats.n_prompt_tokens += st ? 0 : (uint64_t)n_prompt_read;
    e->stats.last_batch_tokens = T;
    e->stats.last_batch_seqs = n_seqs;
    int bucket = 0;
    while (bucket < 16 && (1 << bucket) < T) bucket++;
    e->stats.batch_hist[bucket]++;
    e->stats.step_seconds += dt;
    if (!st) moecl_context_get_routing_counts(e->ctx, e->route_tokens, e->route_wsum, e->n_route);
    e->stats.kv_cells_held = (int64_t)mc_context_kv(e->ctx)->n_held * MC_KV_BLOCK;
    e->stats.kv_cells_shared = (int64_t)mc_kv_blocks_shared(mc_context_kv(e->ctx)) * MC_KV_BLOCK;
    e->stats.kv_bytes = mc_kv_bytes(mc_context_kv(e->ctx));
    pthread_mutex_unlock(&e->mu);

    if (st) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", moecl_context_last_error(e->ctx));
        const bool aborted = st == MOECL_ERR_ABORTED && atomic_load(&e->shutdown);
        for (int32_t s = 0; s < e->n_slots; s++) {
            slot *sl = &e->slots[s];
            if (!sl->batch_n) continue;
            sl->n_cache = moecl_seq_length(e->ctx, s); /* a failed decode changes nothing */
            if (aborted) finish(e, s, MOECL_FINISH_CANCELLED, -1, MOECL_OK, NULL);
            else finish(e, s, MOECL_FINISH_ERROR, -1, st, msg);
        }
        return;
    }
    for (int32_t s = 0; s < e->n_slots; s++) {
        slot *sl = &e->slots[s];
        if (!sl->batch_n) continue;
        request *r = sl->req;
        for (int32_t i = sl->batch_last - sl->batch_n + 1; i <= sl->batch_last; i++) sl->cache[sl->n_cache++] = e->batch_tok[i];
        mc_kv_publish(mc_context_kv_mut(e->ctx), s, sl->cache, sl->n_cache);
        if (r->n_read < r->n_prompt) {
            r->n_read += sl->batch_n;
            if (r->n_read < r->n_prompt) continue; /* more of the prompt next step */
        }
        const float *logits = moecl_get_logits(e->ctx, sl->batch_last);
        int32_t tok = -1;
        moecl_status ss = logits ? moecl_sampler_sample(r->sampler, logits, e->n_vocab, &tok) : MOECL_ERR_BACKEND;
        if (ss) {
            finish(e, s, MOECL_FINISH_ERROR, -1, ss, "sampling failed");
            continue;
        }
        on_token(e, s, tok);
    }
}

static void *scheduler_main(void *arg) {
    moecl_engine *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        const bool down = atomic_load(&e->shutdown);
        request *gone = NULL;
        sweep_queue(e, &gone, down);
        if (!down) admit(e);
        bool any = false;
        int32_t cancelled[1024], n_cancelled = 0; /* n_seq_max is at most 1024 */
        for (int32_t s = 0; s < e->n_slots; s++) {
            if (!e->slots[s].req) continue;
            if (e->slots[s].req->cancel || down) cancelled[n_cancelled++] = s;
            else any = true;
        }
        if (gone || n_cancelled) {
            pthread_mutex_unlock(&e->mu);
            end_unqueued(gone);
            for (int32_t i = 0; i < n_cancelled; i++) finish(e, cancelled[i], MOECL_FINISH_CANCELLED, -1, MOECL_OK, NULL);
            pthread_mutex_lock(&e->mu);
            continue; /* slots were freed: admit again */
        }
        if (down) break;
        if (!any) {
            pthread_cond_wait(&e->cv, &e->mu);
            continue;
        }
        pthread_mutex_unlock(&e->mu);
        step(e);
        pthread_mutex_lock(&e->mu);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}
