/*
 * test_engine.c - the request engine (moecl_engine_*) on the golden tiny
 * model tests/data/tiny-f32 (wide logit gaps: greedy ids do not depend on
 * how a batch is composed) and, for text and stop strings, on a random
 * model with the Mistral tokenizer.
 *
 *   test_engine DATA_DIR TOKENIZER_JSON
 *
 * Every request's ids are checked against the same request decoded alone
 * with moecl_decode, token by token.
 */
#include "test_util.h"
#include "tiny_model.h"

#include "engine/engine.h"
#include "moecl.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Collecting events                                                        */
/* ------------------------------------------------------------------------ */

#define MAX_IDS 512

typedef struct collector {
    uint64_t id;
    int32_t ids[MAX_IDS];
    int n_ids;
    int n_events;
    char text[8192];
    size_t text_len;
    bool done;
    bool bad_order;          /* an event after the final one, or a final event not last */
    moecl_engine_event last; /* the final event (text pointer not kept) */
    /* actions taken from inside the callback */
    moecl_engine *engine;
    int cancel_self_at;      /* cancel this request after this many tokens (0: never) */
    uint64_t cancel_other;   /* cancel this request ... */
    int cancel_other_at;     /* ... after this many tokens of ours */
    struct submit_at *submits;
    int block_at;            /* hold the scheduler in the callback after this many tokens ... */
    bool released;           /* ... until the test sets this (release()) */
    int linger_ms;           /* then wait this long before returning */
} collector;

typedef struct submit_at {
    int at;                  /* after this many tokens of the request whose callback this is */
    moecl_engine_request req;
    uint64_t *id;
    struct submit_at *next;
} submit_at;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;

static void on_event(const moecl_engine_event *ev, void *user) {
    collector *c = user;
    pthread_mutex_lock(&g_mu);
    if (c->done) c->bad_order = true;
    c->n_events++;
    if (ev->token >= 0 && c->n_ids < MAX_IDS) c->ids[c->n_ids++] = ev->token;
    if (ev->text == NULL || ev->text[ev->text_len] != '\0') c->bad_order = true;
    if (ev->text && c->text_len + ev->text_len < sizeof c->text) {
        memcpy(c->text + c->text_len, ev->text, ev->text_len);
        c->text_len += ev->text_len;
        c->text[c->text_len] = '\0';
    }
    int n = c->n_ids;
    if (ev->finish == MOECL_FINISH_NONE && c->block_at && n == c->block_at) {
        /* The scheduler waits here (at most 30 s): the test acts while no step runs. */
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += 30;
        pthread_cond_broadcast(&g_cv);
        while (!c->released && pthread_cond_timedwait(&g_cv, &g_mu, &dl) != ETIMEDOUT) {}
        if (c->linger_ms) {
            pthread_mutex_unlock(&g_mu);
            usleep((useconds_t)c->linger_ms * 1000);
            pthread_mutex_lock(&g_mu);
        }
    }
    if (ev->finish != MOECL_FINISH_NONE) {
        c->last = *ev;
        c->last.text = NULL;
        c->last.error = NULL;
        c->done = true;
        pthread_cond_broadcast(&g_cv);
    }
    pthread_mutex_unlock(&g_mu);
    if (ev->finish != MOECL_FINISH_NONE) return;
    if (c->cancel_self_at && n == c->cancel_self_at) moecl_engine_cancel(c->engine, ev->request_id);
    if (c->cancel_other_at && n == c->cancel_other_at) moecl_engine_cancel(c->engine, c->cancel_other);
    for (submit_at *s = c->submits; s; s = s->next)
        if (s->at == n && moecl_engine_submit(c->engine, &s->req, s->id) != MOECL_OK)
            fprintf(stderr, "submit from a callback failed: %s\n", moecl_last_error());
}

/* Wait (at most 60 s) until every collector is done. */
static bool wait_done(collector *const *cs, int n) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 60;
    pthread_mutex_lock(&g_mu);
    bool all = false;
    for (;;) {
        all = true;
        for (int i = 0; i < n; i++) all = all && cs[i]->done;
        if (all) break;
        if (pthread_cond_timedwait(&g_cv, &g_mu, &dl) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&g_mu);
    if (!all) fprintf(stderr, "timed out waiting for requests\n");
    return all;
}

static void release(collector *c) {
    pthread_mutex_lock(&g_mu);
    c->released = true;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
}

/* Wait (at most 30 s) until the collector holds n ids. */
static bool wait_ids(collector *c, int n) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 30;
    pthread_mutex_lock(&g_mu);
    while (c->n_ids < n && !c->done && pthread_cond_timedwait(&g_cv, &g_mu, &dl) != ETIMEDOUT) {}
    bool ok = c->n_ids >= n;
    pthread_mutex_unlock(&g_mu);
    return ok;
}

static moecl_engine_request greedy_request(const int32_t *prompt, int32_t n, int32_t max_tokens, collector *c) {
    moecl_engine_request q = moecl_engine_default_request();
    q.prompt = prompt;
    q.n_prompt = n;
    q.sampling.temperature = 0;
    q.max_tokens = max_tokens;
    q.ignore_eos = true;
    q.callback = on_event;
    q.user_data = c;
    return q;
}

/* ------------------------------------------------------------------------ */
/* The reference: one request alone, token by token                         */
/* ------------------------------------------------------------------------ */

static int reference(const moecl_model *m, const int32_t *prompt, int n_prompt, int n_gen, int32_t *out) {
    moecl_context_params cp = moecl_context_default_params();
    cp.n_ctx = 128;
    cp.n_batch = 64;
    cp.n_threads = 1;
    cp.backend = MOECL_BACKEND_CPU;
    moecl_context *ctx = NULL;
    if (moecl_context_new(m, &cp, &ctx)) return -1;
    moecl_model_info info;
    moecl_model_get_info(m, &info);
    int n = 0;
    if (moecl_decode(ctx, prompt, n_prompt) == MOECL_OK) {
        while (n < n_gen) {
            const float *l = moecl_get_logits(ctx, -1);
            int32_t best = 0;
            for (int32_t v = 1; v < info.n_vocab; v++)
                if (l[v] > l[best]) best = v;
            out[n++] = best;
            if (n == n_gen || moecl_decode(ctx, &best, 1) != MOECL_OK) break;
        }
    }
    moecl_context_free(ctx);
    return n;
}

static void make_prompt(int32_t *p, int n, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = 3 + (int32_t)((seed >> 33) % 125); /* ids in [3, 128) */
    }
}

static moecl_engine *engine_new_kv(const moecl_model *m, int slots, int n_ctx, int n_batch, int n_queue,
                                   uint32_t kv_cells) {
    moecl_engine_params ep = moecl_engine_default_params();
    ep.context.n_kv_cells = kv_cells;
    ep.n_slots = slots;
    ep.n_ctx = n_ctx;
    ep.n_batch = n_batch;
    ep.n_queue = n_queue;
    ep.context.n_threads = 2;
    ep.context.backend = MOECL_BACKEND_CPU;
    moecl_engine *e = NULL;
    moecl_status st = moecl_engine_new(m, &ep, &e);
    CHECKF(st == MOECL_OK, "%s", moecl_last_error());
    return e;
}

static moecl_engine *engine_new(const moecl_model *m, int slots, int n_ctx, int n_batch, int n_queue) {
    return engine_new_kv(m, slots, n_ctx, n_batch, n_queue, 0);
}

/* ------------------------------------------------------------------------ */
/* 8 concurrent requests = 8 requests alone                                 */
/* ------------------------------------------------------------------------ */

enum { N_REQ = 8 };
static const int k_len[N_REQ] = {1, 3, 5, 8, 12, 17, 23, 30};
static const int k_gen[N_REQ] = {20, 7, 12, 3, 15, 9, 25, 5};

/* kv_cells: the KV pool shared by the slots (0: slots x 64). A pool of
 * exactly the blocks of all 8 requests (16 blocks of 16: sequences growing
 * together take blocks in turn, so each one's blocks are scattered over the
 * pool) or of the largest 3 (8 blocks, half of what the 8 requests need in
 * all: finished requests' blocks are reused) gives the same ids. */
static void test_concurrent(const moecl_model *m, int slots, int n_batch, bool staggered, uint32_t kv_cells) {
    int32_t prompts[N_REQ][32], ref[N_REQ][32];
    static collector cs[N_REQ];
    collector *cp[N_REQ];
    static submit_at subs[N_REQ];
    uint64_t ids[N_REQ] = {0};
    memset(cs, 0, sizeof cs);
    memset(subs, 0, sizeof subs);
    for (int i = 0; i < N_REQ; i++) {
        make_prompt(prompts[i], k_len[i], 100 + (uint64_t)i);
        CHECK(reference(m, prompts[i], k_len[i], k_gen[i], ref[i]) == k_gen[i]);
        cp[i] = &cs[i];
    }
    moecl_engine *e = engine_new_kv(m, slots, 64, n_batch, 16, kv_cells);
    if (!e) return;
    for (int i = 0; i < N_REQ; i++) cs[i].engine = e;
    if (staggered) { /* request i starts when request 0 has generated i tokens: each at another step */
        for (int i = 1; i < N_REQ; i++) {
            subs[i].at = i;
            subs[i].req = greedy_request(prompts[i], k_len[i], k_gen[i], &cs[i]);
            subs[i].id = &ids[i];
            subs[i].next = cs[0].submits;
            cs[0].submits = &subs[i];
        }
        moecl_engine_request q = greedy_request(prompts[0], k_len[0], k_gen[0], &cs[0]);
        CHECK(moecl_engine_submit(e, &q, &ids[0]) == MOECL_OK);
    } else {
        for (int i = 0; i < N_REQ; i++) {
            moecl_engine_request q = greedy_request(prompts[i], k_len[i], k_gen[i], &cs[i]);
            CHECK(moecl_engine_submit(e, &q, &ids[i]) == MOECL_OK);
        }
    }
    CHECK(wait_done(cp, N_REQ));
    for (int i = 0; i < N_REQ; i++) {
        collector *c = &cs[i];
        CHECKF(c->done && !c->bad_order && c->last.finish == MOECL_FINISH_LENGTH, "request %d: finish %s", i,
               moecl_finish_reason_str(c->last.finish));
        CHECKF(c->n_ids == k_gen[i] && !memcmp(c->ids, ref[i], (size_t)k_gen[i] * sizeof(int32_t)),
               "request %d (slots %d, budget %d): %d ids, not those of the request alone", i, slots, n_batch,
               c->n_ids);
        CHECK(c->last.usage.prompt_tokens == k_len[i] && c->last.usage.completion_tokens == k_gen[i]);
        CHECK(c->last.request_id == ids[i] && ids[i] > 0);
    }
    moecl_engine_stats st;
    CHECK(moecl_engine_get_stats(e, &st) == MOECL_OK);
    CHECK(st.n_submitted == N_REQ && st.n_finished == N_REQ && st.n_running == 0 && st.n_queued == 0);
    int gen = 0, prompt = 0;
    for (int i = 0; i < N_REQ; i++) gen += k_gen[i], prompt += k_len[i];
    CHECK(st.n_generated_tokens == (uint64_t)gen);
    CHECK(st.n_prompt_tokens + st.n_cached_tokens == (uint64_t)prompt);
    CHECK(st.last_batch_tokens <= n_batch);
    uint64_t steps = 0;
    for (int b = 0; b < 17; b++) steps += st.batch_hist[b];
    CHECK(steps == st.n_steps && st.n_steps > 0);
    /* several sequences shared steps: fewer steps than tokens decoded */
    CHECKF(st.n_steps < st.n_batch_tokens, "%llu steps for %llu tokens", (unsigned long long)st.n_steps,
           (unsigned long long)st.n_batch_tokens);
    /* The pool: never more than its budget, no request cut short. */
    CHECK(st.kv_cells == (kv_cells ? kv_cells : (int64_t)slots * 64));
    CHECK(st.kv_cells_held <= st.kv_cells && st.n_kv_full == 0);
    if (kv_cells) {
        moecl_model_info mi;
        moecl_model_get_info(m, &mi);
        const uint64_t per_cell = 2ull * (uint64_t)mi.n_layer * (uint64_t)mi.n_head_kv * (uint64_t)mi.head_dim * 4;
        /* 128 cells hold half of what the 8 requests need: blocks were reused */
        CHECKF(st.kv_bytes > 0 && st.kv_bytes <= (uint64_t)kv_cells * per_cell, "%llu bytes for %u cells",
               (unsigned long long)st.kv_bytes, kv_cells);
    }
    fprintf(stderr, "  slots %d, budget %d, pool %lld cells: %llu idle caches freed, %.0f KiB allocated\n", slots, n_batch,
            (long long)st.kv_cells, (unsigned long long)st.n_kv_evicted, (double)st.kv_bytes / 1024.0);
    moecl_engine_free(e);
}

/* ------------------------------------------------------------------------ */
/* Cancellation                                                             */
/* ------------------------------------------------------------------------ */

static void test_cancel(const moecl_model *m) {
    int32_t p_short[4], p_long[60], ref[40];
    make_prompt(p_short, 4, 7);
    make_prompt(p_long, 60, 8);
    CHECK(reference(m, p_short, 4, 40, ref) == 40);

    /* Mid-prompt: a budget of 2 tokens per step leaves 1 for the long
     * prompt; the generating request cancels it after 5 of its tokens. */
    moecl_engine *e = engine_new(m, 2, 64, 2, 8);
    if (!e) return;
    collector g = {.engine = e, .block_at = 1}, l = {.engine = e};
    collector *both[2] = {&g, &l};
    moecl_engine_request qg = greedy_request(p_short, 4, 40, &g);
    moecl_engine_request ql = greedy_request(p_long, 60, 10, &l);
    uint64_t idg = 0, idl = 0;
    CHECK(moecl_engine_submit(e, &qg, &idg) == MOECL_OK);
    CHECK(wait_ids(&g, 1)); /* g holds the scheduler at its first token */
    CHECK(moecl_engine_submit(e, &ql, &idl) == MOECL_OK);
    pthread_mutex_lock(&g_mu);
    g.cancel_other = idl;
    g.cancel_other_at = 5;
    pthread_mutex_unlock(&g_mu);
    release(&g);
    CHECK(wait_done(both, 2));
    CHECKF(l.last.finish == MOECL_FINISH_CANCELLED && l.n_ids == 0 && l.last.token == -1 &&
           l.last.usage.completion_tokens == 0, "mid-prompt cancel: finish %s, %d ids",
           moecl_finish_reason_str(l.last.finish), l.n_ids);
    CHECK(g.last.finish == MOECL_FINISH_LENGTH && g.n_ids == 40 && !memcmp(g.ids, ref, sizeof ref));
    moecl_engine_stats st;
    moecl_engine_get_stats(e, &st);
    CHECKF(st.n_prompt_tokens < 4 + 60, "the cancelled prompt was read to the end (%llu tokens)",
           (unsigned long long)st.n_prompt_tokens);
    CHECK(st.n_running == 0 && st.n_queued == 0);
    CHECK(moecl_engine_cancel(e, idl) == MOECL_ERR_INVALID_ARG); /* finished: harmless */
    CHECK(moecl_engine_cancel(e, 999999) == MOECL_ERR_INVALID_ARG);
    moecl_engine_free(e);

    /* Mid-generation, from its own callback, in a one-slot engine; then the
     * slot serves the next request, and a queued request is cancelled. */
    e = engine_new(m, 1, 64, 8, 8);
    if (!e) return;
    collector a = {.engine = e, .cancel_self_at = 3}, b = {.engine = e}, q = {.engine = e};
    moecl_engine_request qa = greedy_request(p_short, 4, 30, &a);
    CHECK(moecl_engine_submit(e, &qa, NULL) == MOECL_OK);
    collector *pa[1] = {&a};
    CHECK(wait_done(pa, 1));
    CHECKF(a.last.finish == MOECL_FINISH_CANCELLED && a.n_ids == 3 && !memcmp(a.ids, ref, 3 * sizeof(int32_t)) &&
           a.last.usage.completion_tokens == 3, "mid-generation cancel: %s after %d ids",
           moecl_finish_reason_str(a.last.finish), a.n_ids);
    moecl_engine_request qb = greedy_request(p_short, 4, 30, &b);
    moecl_engine_request qq = greedy_request(p_long, 20, 5, &q);
    uint64_t idq = 0;
    b.block_at = 1; /* b holds the only slot while q is queued and cancelled */
    CHECK(moecl_engine_submit(e, &qb, NULL) == MOECL_OK);
    CHECK(wait_ids(&b, 1));
    CHECK(moecl_engine_submit(e, &qq, &idq) == MOECL_OK);
    CHECK(moecl_engine_cancel(e, idq) == MOECL_OK);
    release(&b);
    collector *pb[2] = {&b, &q};
    CHECK(wait_done(pb, 2));
    CHECK(b.last.finish == MOECL_FINISH_LENGTH && b.n_ids == 30 && !memcmp(b.ids, ref, 30 * sizeof(int32_t)));
    /* b's prompt is a's: all but its last token come from the slot's cache */
    CHECKF(b.last.usage.cached_prompt_tokens == 3, "cached %d", b.last.usage.cached_prompt_tokens);
    CHECK(q.last.finish == MOECL_FINISH_CANCELLED && q.n_ids == 0 && q.n_events == 1);

    /* From another thread while it generates without a limit. */
    collector c = {.engine = e, .block_at = 2};
    moecl_engine_request qc = greedy_request(p_short, 4, 0, &c);
    uint64_t idc = 0;
    CHECK(moecl_engine_submit(e, &qc, &idc) == MOECL_OK);
    CHECK(wait_ids(&c, 2));
    CHECK(moecl_engine_cancel(e, idc) == MOECL_OK);
    release(&c);
    collector *pc[1] = {&c};
    CHECK(wait_done(pc, 1));
    CHECKF(c.last.finish == MOECL_FINISH_CANCELLED && c.n_ids == 2,
           "cancel from another thread: %s after %d ids", moecl_finish_reason_str(c.last.finish), c.n_ids);
    moecl_engine_get_stats(e, &st);
    CHECK(st.n_running == 0 && st.n_queued == 0);

    /* Without a limit a request ends when its slot's context is full. */
    collector d = {.engine = e};
    moecl_engine_request qd = greedy_request(p_long, 60, 0, &d);
    CHECK(moecl_engine_submit(e, &qd, NULL) == MOECL_OK);
    collector *pd[1] = {&d};
    CHECK(wait_done(pd, 1));
    CHECKF(d.last.finish == MOECL_FINISH_LENGTH && d.n_ids == 64 - 60 + 1, "context full: %s after %d ids",
           moecl_finish_reason_str(d.last.finish), d.n_ids);
    moecl_engine_free(e);

    /* A bounded queue: with the slot busy, n_queue requests wait, the next is refused. */
    e = engine_new(m, 1, 64, 8, 2);
    if (!e) return;
    collector busy = {.engine = e, .block_at = 1, .linger_ms = 1000}, w1 = {.engine = e}, w2 = {.engine = e},
              w3 = {.engine = e};
    moecl_engine_request qbusy = greedy_request(p_short, 4, 0, &busy);
    CHECK(moecl_engine_submit(e, &qbusy, NULL) == MOECL_OK);
    CHECK(wait_ids(&busy, 1));
    moecl_engine_request q1 = greedy_request(p_short, 4, 2, &w1), q2 = greedy_request(p_short, 4, 2, &w2),
                         q3 = greedy_request(p_short, 4, 2, &w3);
    CHECK(moecl_engine_submit(e, &q1, NULL) == MOECL_OK);
    CHECK(moecl_engine_submit(e, &q2, NULL) == MOECL_OK);
    uint64_t id3 = 7;
    CHECK(moecl_engine_submit(e, &q3, &id3) == MOECL_ERR_BUSY && id3 == 0);
    moecl_engine_stats s2;
    moecl_engine_get_stats(e, &s2);
    CHECK(s2.n_queued == 2 && s2.n_running == 1);
    /* Freeing the engine ends every request with "cancelled": the scheduler,
     * released, lingers a second in the callback while free() stops it. */
    release(&busy);
    moecl_engine_free(e);
    CHECK(busy.done && busy.last.finish == MOECL_FINISH_CANCELLED);
    CHECK(w1.done && w1.last.finish == MOECL_FINISH_CANCELLED && w1.n_ids == 0);
    CHECK(w2.done && w2.last.finish == MOECL_FINISH_CANCELLED && !w3.done);
}

/* ------------------------------------------------------------------------ */
/* Prefix reuse                                                             */
/* ------------------------------------------------------------------------ */

static void test_prefix(const moecl_model *m) {
    int32_t pa[12], pc[9], gen_a[10], full[30], ref[12];
    make_prompt(pa, 12, 21);
    make_prompt(pc, 9, 22);
    CHECK(reference(m, pa, 12, 10, gen_a) == 10);

    /* Logits after a rewind to a common prefix and reading the rest equal
     * those of a fresh read (the mechanism the engine relies on). */
    memcpy(full, pa, sizeof pa);
    memcpy(full + 12, gen_a, sizeof gen_a);
    make_prompt(full + 22, 4, 23);
    moecl_context_params cp = moecl_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 32;
    cp.n_seq_max = 2;
    cp.backend = MOECL_BACKEND_CPU;
    moecl_context *ctx = NULL;
    CHECK(moecl_context_new(m, &cp, &ctx) == MOECL_OK);
    moecl_model_info info;
    moecl_model_get_info(m, &info);
    float *fresh = malloc((size_t)info.n_vocab * sizeof(float));
    if (ctx && fresh) {
        CHECK(moecl_decode(ctx, full, 26) == MOECL_OK);
        memcpy(fresh, moecl_get_logits(ctx, -1), (size_t)info.n_vocab * sizeof(float));
        CHECK(moecl_seq_truncate(ctx, 0, 0) == MOECL_OK);
        CHECK(moecl_decode(ctx, pa, 12) == MOECL_OK);  /* a different continuation first */
        CHECK(moecl_decode(ctx, pc, 9) == MOECL_OK);
        CHECK(moecl_seq_truncate(ctx, 0, 12) == MOECL_OK);
        CHECK(moecl_decode(ctx, full + 12, 14) == MOECL_OK);
        double err = t_nerr(moecl_get_logits(ctx, -1), fresh, (size_t)info.n_vocab);
        CHECKF(err <= 1e-4, "logits after prefix reuse: error %.3g", err);
    }
    free(fresh);
    moecl_context_free(ctx);

    /* The engine: a then c run in two slots; b continues a's conversation
     * and goes to a's slot, d repeats c's prompt and goes to c's. */
    moecl_engine *e = engine_new(m, 2, 64, 16, 8);
    if (!e) return;
    collector a = {.engine = e}, c = {.engine = e}, b = {.engine = e}, d = {.engine = e};
    moecl_engine_request qa = greedy_request(pa, 12, 10, &a), qc = greedy_request(pc, 9, 5, &c);
    CHECK(moecl_engine_submit(e, &qa, NULL) == MOECL_OK && moecl_engine_submit(e, &qc, NULL) == MOECL_OK);
    collector *p1[2] = {&a, &c};
    CHECK(wait_done(p1, 2));
    CHECK(a.n_ids == 10 && !memcmp(a.ids, gen_a, sizeof gen_a));
    CHECK(a.last.usage.cached_prompt_tokens == 0 && c.last.usage.cached_prompt_tokens == 0);

    CHECK(reference(m, full, 26, 12, ref) == 12);
    moecl_engine_request qb = greedy_request(full, 26, 12, &b), qd = greedy_request(pc, 9, 5, &d);
    CHECK(moecl_engine_submit(e, &qb, NULL) == MOECL_OK && moecl_engine_submit(e, &qd, NULL) == MOECL_OK);
    collector *p2[2] = {&b, &d};
    CHECK(wait_done(p2, 2));
    /* a decoded its prompt and 9 of its 10 tokens (the last is never fed back) */
    CHECKF(b.last.usage.cached_prompt_tokens == 21, "b reused %d tokens", b.last.usage.cached_prompt_tokens);
    CHECKF(d.last.usage.cached_prompt_tokens == 8, "d reused %d tokens", d.last.usage.cached_prompt_tokens);
    CHECK(b.n_ids == 12 && !memcmp(b.ids, ref, sizeof ref));
    CHECK(d.n_ids == 5 && !memcmp(d.ids, c.ids, 5 * sizeof(int32_t)));
    moecl_engine_stats st;
    moecl_engine_get_stats(e, &st);
    CHECK(st.n_cached_tokens == 29 && st.n_prompt_tokens == 12 + 9 + 5 + 1);
    moecl_engine_free(e);
}

/* ------------------------------------------------------------------------ */
/* Arguments                                                                */
/* ------------------------------------------------------------------------ */

static void test_args(const moecl_model *m) {
    moecl_engine_free(NULL);
    moecl_engine *e = (moecl_engine *)1;
    CHECK(moecl_engine_new(NULL, NULL, &e) == MOECL_ERR_INVALID_ARG && e == NULL);
    moecl_engine_params ep = moecl_engine_default_params();
    ep.n_slots = -1;
    CHECK(moecl_engine_new(m, &ep, &e) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_engine_submit(NULL, NULL, NULL) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_engine_cancel(NULL, 1) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_engine_get_stats(NULL, NULL) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_engine_get_tokenizer(NULL) == NULL);
    CHECK(strcmp(moecl_finish_reason_str(MOECL_FINISH_LENGTH), "length") == 0);
    CHECK(strcmp(moecl_finish_reason_str((moecl_finish_reason)99), "?") == 0);
    CHECK(strcmp(moecl_status_str(MOECL_ERR_BUSY), "busy") == 0);

    e = engine_new(m, 2, 16, 8, 4);
    if (!e) return;
    collector c = {0};
    int32_t p[20];
    make_prompt(p, 20, 5);
    moecl_engine_request q = greedy_request(p, 20, 4, &c);
    uint64_t id = 5;
    CHECK(moecl_engine_submit(e, &q, &id) == MOECL_ERR_CONTEXT_FULL && id == 0); /* 20 > n_ctx 16 */
    q.n_prompt = 0;
    CHECK(moecl_engine_submit(e, &q, NULL) == MOECL_ERR_INVALID_ARG);
    q.n_prompt = 3;
    p[1] = 128; /* outside tiny-f32's vocabulary */
    CHECK(moecl_engine_submit(e, &q, NULL) == MOECL_ERR_INVALID_ARG);
    p[1] = 3;
    q.callback = NULL;
    CHECK(moecl_engine_submit(e, &q, NULL) == MOECL_ERR_INVALID_ARG);
    q.callback = on_event;
    moecl_chat_message msg = {"user", "hi"};
    q.messages = &msg;
    q.n_messages = 1;
    CHECK(moecl_engine_submit(e, &q, NULL) == MOECL_ERR_INVALID_ARG); /* both prompt and messages */
    q.prompt = NULL;
    CHECK(moecl_engine_submit(e, &q, NULL) == MOECL_ERR_INVALID_ARG); /* no tokenizer */
    q = greedy_request(p, 3, 4, &c);
    const char *stop[1] = {"x"};
    q.stop = stop;
    q.n_stop = 1;
    CHECK(moecl_engine_submit(e, &q, NULL) == MOECL_ERR_INVALID_ARG); /* stop strings need a tokenizer */
    CHECK(!c.done && c.n_events == 0); /* nothing was queued */

    /* a stop id ends the request at that token */
    int32_t ref[8];
    CHECK(reference(m, p, 3, 8, ref) == 8);
    q = greedy_request(p, 3, 8, &c);
    q.stop_ids = &ref[4];
    q.n_stop_ids = 1;
    int first = 0;
    while (ref[first] != ref[4]) first++;
    CHECK(moecl_engine_submit(e, &q, NULL) == MOECL_OK);
    collector *pc[1] = {&c};
    CHECK(wait_done(pc, 1));
    CHECK(c.last.finish == MOECL_FINISH_STOP && c.n_ids == first + 1 && c.last.token == ref[4]);
    moecl_engine_free(e);
}

/* ------------------------------------------------------------------------ */
/* Text and stop strings (a random model with the Mistral tokenizer)        */
/* ------------------------------------------------------------------------ */

static void test_stop_rules(void) {
    char *stops[3] = {"world", "éz", "xyz"};
    size_t lens[3] = {5, strlen("éz"), 3};
    CHECK(mc_stop_find("Hello world", 11, stops, lens, 3) == 6);
    CHECK(mc_stop_find("Hello", 5, stops, lens, 3) == 5);
    CHECK(mc_stop_find("axyzworld", 9, stops, lens, 3) == 1); /* the earliest of several */
    CHECK(mc_stop_safe_len("Hello wor", 9, stops, lens, 1) == 6);
    CHECK(mc_stop_safe_len("Hello", 5, stops, lens, 3) == 5);
    CHECK(mc_stop_safe_len("Hello w", 7, stops, lens, 3) == 6);
    CHECK(mc_stop_safe_len("a\xc3\xa9", 3, stops, lens, 3) == 1);     /* "é" may start "éz" */
    CHECK(mc_stop_safe_len("a\xc3\xa9", 3, stops + 2, lens + 2, 1) == 3);
    CHECK(mc_stop_safe_len("xy", 2, stops, lens, 3) == 0);
    CHECK(mc_stop_safe_len("", 0, stops, lens, 3) == 0);
}

/* Run one request on the engine, collecting it. */
static void run_one(moecl_engine *e, moecl_engine_request *q, collector *c) {
    memset(c, 0, sizeof *c);
    c->engine = e;
    q->callback = on_event;
    q->user_data = c;
    moecl_status st = moecl_engine_submit(e, q, NULL);
    CHECKF(st == MOECL_OK, "%s", moecl_last_error());
    collector *pc[1] = {c};
    if (st == MOECL_OK) CHECK(wait_done(pc, 1));
}

static void test_text(const char *tokenizer_json) {
    char dir[512];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/moecl-engine-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        CHECK(false);
        return;
    }
    moecl_random_model_params p = tiny_params();
    p.n_vocab = 32000;
    p.seed = 11;
    CHECK(moecl_random_model_write(dir, &p, NULL, NULL) == MOECL_OK);
    char dst[600], cmd[1400];
    snprintf(dst, sizeof dst, "%s/tokenizer.json", dir);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", tokenizer_json, dst);
    CHECK(system(cmd) == 0);
    moecl_model *m = NULL;
    CHECK(moecl_model_load(dir, NULL, &m) == MOECL_OK);
    moecl_engine *e = m ? engine_new(m, 2, 128, 32, 4) : NULL;
    const moecl_tokenizer *tok = moecl_engine_get_tokenizer(e);
    CHECK(tok != NULL);
    if (!e || !tok) goto done;

    static collector c;
    int32_t prompt[16], n_prompt = 0;
    CHECK(moecl_tokenize(tok, "Once upon a time", 16, 0, prompt, 16, &n_prompt) == MOECL_OK);
    moecl_engine_request q = greedy_request(prompt, n_prompt, 40, &c);
    run_one(e, &q, &c);
    char full[8192];
    size_t full_len = 0;
    CHECK(moecl_detokenize(tok, c.ids, c.n_ids, MOECL_DETOKENIZE_SKIP_SPECIAL | MOECL_DETOKENIZE_KEEP_LEADING_SPACE,
                           full, sizeof full, &full_len) == MOECL_OK);
    CHECKF(c.text_len == full_len && !memcmp(c.text, full, full_len), "streamed text differs from detokenize");
    CHECKF(full_len >= 12, "the random model wrote only %zu bytes", full_len);
    if (full_len < 12) goto done;

    /* A stop string from the middle of the text: the text ends just before
     * its first occurrence, and no event showed any of it. */
    size_t at = full_len / 2;
    while (at > 0 && ((uint8_t)full[at] & 0xC0) == 0x80) at--;
    size_t end = at + 4;
    while (end < full_len && ((uint8_t)full[end] & 0xC0) == 0x80) end++;
    char stop[64];
    snprintf(stop, sizeof stop, "%.*s", (int)(end - at), full + at);
    const char *first = strstr(full, stop);
    const char *stops[2] = {"", stop}; /* the empty one is ignored */
    static collector s;
    q = greedy_request(prompt, n_prompt, 40, &s);
    q.stop = stops;
    q.n_stop = 2;
    run_one(e, &q, &s);
    CHECKF(s.last.finish == MOECL_FINISH_STOP && s.text_len == (size_t)(first - full) &&
           !memcmp(s.text, full, s.text_len), "stop \"%s\": got %zu bytes, finish %s", stop, s.text_len,
           moecl_finish_reason_str(s.last.finish));
    CHECK(s.last.usage.cached_prompt_tokens == n_prompt - 1); /* the same prompt again */

    /* A stop string whose start appears but never completes: the held
     * text is shown in the end, all of it. */
    char never[80];
    snprintf(never, sizeof never, "%.*s\x01never", (int)(end - at), full + at);
    const char *stops2[1] = {never};
    q = greedy_request(prompt, n_prompt, 40, &s);
    q.stop = stops2;
    q.n_stop = 1;
    run_one(e, &q, &s);
    CHECK(s.last.finish == MOECL_FINISH_LENGTH && s.text_len == full_len && !memcmp(s.text, full, full_len));

    /* Chat messages go through the model's chat format; the reply's
     * leading space is dropped. */
    moecl_chat_message msgs[2] = {{"system", "Be brief."}, {"user", "Hello"}};
    int32_t n_chat = 0;
    CHECK(moecl_chat_tokenize(tok, msgs, 2, 0, NULL, 0, &n_chat) == MOECL_OK);
    q = moecl_engine_default_request();
    q.messages = msgs;
    q.n_messages = 2;
    q.sampling.temperature = 0;
    q.max_tokens = 5;
    run_one(e, &q, &s);
    CHECK(s.last.finish == MOECL_FINISH_LENGTH && s.last.usage.prompt_tokens == n_chat && s.n_ids == 5);
    CHECK(s.text_len == 0 || s.text[0] != ' ');
    msgs[1].role = "robot";
    q.callback = on_event;
    CHECK(moecl_engine_submit(e, &q, NULL) == MOECL_ERR_INVALID_ARG);

    /* Sampling with a seed is reproducible through the engine. */
    static collector r1, r2;
    q = greedy_request(prompt, n_prompt, 16, &r1);
    q.sampling = moecl_sampler_default_params();
    q.sampling.temperature = 1.5f;
    q.sampling.top_k = 0;
    q.sampling.seed = 99;
    run_one(e, &q, &r1);
    run_one(e, &q, &r2);
    CHECK(r1.n_ids == 16 && r2.n_ids == 16 && !memcmp(r1.ids, r2.ids, sizeof(int32_t) * 16));

    /* Text across a preemption: two requests of 5 + 40 positions in a pool
     * of 3 blocks; the newer is preempted at position 16 and read again
     * later. Each one's streamed text is the text of its ids, once. */
    moecl_engine_free(e);
    e = engine_new_kv(m, 2, 128, 32, 4, 48);
    if (!e) goto done;
    static collector t1, t2;
    static submit_at sub_t2;
    int32_t prompt2[16], n_prompt2 = 0;
    CHECK(moecl_tokenize(tok, "The weather today", 17, 0, prompt2, 16, &n_prompt2) == MOECL_OK);
    memset(&t1, 0, sizeof t1);
    memset(&t2, 0, sizeof t2);
    t1.engine = t2.engine = e;
    sub_t2 = (submit_at){.at = 1, .req = greedy_request(prompt2, n_prompt2, 40, &t2)};
    t1.submits = &sub_t2;
    q = greedy_request(prompt, n_prompt, 40, &t1);
    CHECK(moecl_engine_submit(e, &q, NULL) == MOECL_OK);
    collector *pt[2] = {&t1, &t2};
    CHECK(wait_done(pt, 2));
    moecl_engine_stats est;
    moecl_engine_get_stats(e, &est);
    CHECKF(est.n_preempted >= 1 && est.n_kv_full == 0, "%llu preempted, %llu cut short",
           (unsigned long long)est.n_preempted, (unsigned long long)est.n_kv_full);
    for (int i = 0; i < 2; i++) {
        collector *c = pt[i];
        CHECK(c->last.finish == MOECL_FINISH_LENGTH && c->n_ids == 40 && !c->bad_order);
        CHECK(moecl_detokenize(tok, c->ids, c->n_ids, MOECL_DETOKENIZE_SKIP_SPECIAL | MOECL_DETOKENIZE_KEEP_LEADING_SPACE,
                               full, sizeof full, &full_len) == MOECL_OK);
        CHECKF(c->text_len == full_len && !memcmp(c->text, full, full_len),
               "request %d: streamed text (%zu bytes) is not the text of its ids (%zu)", i, c->text_len, full_len);
    }
    CHECK(t2.last.usage.prompt_tokens == n_prompt2 && t2.last.usage.completion_tokens == 40);
done:
    moecl_engine_free(e);
    moecl_model_free(m);
    remove_dir(dir);
}

/* ------------------------------------------------------------------------ */
/* A KV pool smaller than the slots' contexts                               */
/* ------------------------------------------------------------------------ */

static void test_kv_pool(const moecl_model *m) {
    int32_t pa[4], pb[4], pc[30], pd[30], ref_a[40], ref_b[40], ref_c[10], ref_d[10];
    make_prompt(pa, 4, 31);
    make_prompt(pb, 4, 32);
    make_prompt(pc, 30, 33);
    make_prompt(pd, 30, 34);
    CHECK(reference(m, pa, 4, 40, ref_a) == 40);
    CHECK(reference(m, pb, 4, 40, ref_b) == 40);
    CHECK(reference(m, pc, 30, 10, ref_c) == 10);
    CHECK(reference(m, pd, 30, 10, ref_d) == 10);

    /* 3 blocks of 16 for 2 slots of 64. A prompt larger than the pool can
     * never run: refused at once. */
    moecl_engine *e = engine_new_kv(m, 2, 64, 16, 8, 48);
    if (!e) return;
    int32_t big[60];
    make_prompt(big, 60, 35);
    collector x = {.engine = e};
    moecl_engine_request qx = greedy_request(big, 60, 1, &x);
    CHECK(moecl_engine_submit(e, &qx, NULL) == MOECL_ERR_CONTEXT_FULL);
    CHECKF(strstr(moecl_last_error(), "the KV cache holds 48 cells") != NULL, "%s", moecl_last_error());

    /* Exhaustion while generating: a and b (44 positions each, 3 blocks)
     * both start; at position 16 there is one block left for the two: the
     * older, a, gets it and b, the newer, is preempted (positions 0..15
     * hold its prompt and 12 of its ids; the 13th was sampled but has no
     * cell). It waits in the queue until a ends, then reads its prompt and
     * those 13 ids again and goes on: both produce their 40 ids alone. */
    collector a = {.engine = e}, b = {.engine = e};
    moecl_engine_request qa = greedy_request(pa, 4, 40, &a), qb = greedy_request(pb, 4, 40, &b);
    /* b is submitted from a's first token, so a cannot finish before b
     * starts however the threads are scheduled (it once did under CI load). */
    static submit_at sub_b;
    uint64_t id_b = 0;
    sub_b = (submit_at){.at = 1, .req = qb, .id = &id_b};
    a.submits = &sub_b;
    CHECK(moecl_engine_submit(e, &qa, NULL) == MOECL_OK);
    collector *ab[2] = {&a, &b};
    CHECK(wait_done(ab, 2) && id_b != 0);
    CHECKF(a.last.finish == MOECL_FINISH_LENGTH && a.n_ids == 40 && !memcmp(a.ids, ref_a, sizeof ref_a),
           "a: %s after %d ids", moecl_finish_reason_str(a.last.finish), a.n_ids);
    CHECKF(b.last.finish == MOECL_FINISH_LENGTH && b.n_ids == 40 && !memcmp(b.ids, ref_b, sizeof ref_b),
           "b: %s after %d ids (40 expected)", moecl_finish_reason_str(b.last.finish), b.n_ids);
    CHECK(!a.bad_order && !b.bad_order && b.n_events == 40); /* one event per id: none repeated */
    CHECK(b.last.status == MOECL_OK && b.last.usage.completion_tokens == 40 && b.last.usage.prompt_tokens == 4);
    moecl_engine_stats st;
    moecl_engine_get_stats(e, &st);
    CHECKF(st.n_kv_full == 0 && st.n_preempted == 1, "%llu ended by a full pool, %llu preempted",
           (unsigned long long)st.n_kv_full, (unsigned long long)st.n_preempted);
    CHECK(st.kv_cells == 48 && st.kv_cells_held <= 48 && st.kv_bytes > 0);
    CHECK(st.n_generated_tokens == 80);

    /* A request the pool cannot hold even alone (4 + 60 positions in 48
     * cells) ends at the pool's end with "length" and says why: 45 ids
     * (positions 0..47 hold its prompt and 44 of them). */
    int32_t px[4], ref_x[45];
    make_prompt(px, 4, 36);
    CHECK(reference(m, px, 4, 45, ref_x) == 45);
    collector y = {.engine = e};
    moecl_engine_request qy = greedy_request(px, 4, 60, &y);
    CHECK(moecl_engine_submit(e, &qy, NULL) == MOECL_OK);
    collector *py[1] = {&y};
    CHECK(wait_done(py, 1));
    CHECKF(y.last.finish == MOECL_FINISH_LENGTH && y.n_ids == 45 && !memcmp(y.ids, ref_x, sizeof ref_x),
           "y: %s after %d ids (45 expected)", moecl_finish_reason_str(y.last.finish), y.n_ids);
    CHECK(y.last.status == MOECL_ERR_CONTEXT_FULL);
    moecl_engine_get_stats(e, &st);
    CHECK(st.n_kv_full == 1 && st.n_preempted == 1);

    /* Admission: c and d need 3 blocks each (30 + 10 positions); d's prompt
     * (2 blocks) does not fit beside c's, so d waits in the queue, then runs
     * in c's freed blocks. Neither is cut short. */
    collector c = {.engine = e}, d = {.engine = e};
    moecl_engine_request qc = greedy_request(pc, 30, 10, &c), qd = greedy_request(pd, 30, 10, &d);
    CHECK(moecl_engine_submit(e, &qc, NULL) == MOECL_OK);
    CHECK(moecl_engine_submit(e, &qd, NULL) == MOECL_OK);
    collector *cd[2] = {&c, &d};
    CHECK(wait_done(cd, 2));
    CHECKF(c.last.finish == MOECL_FINISH_LENGTH && c.n_ids == 10 && !memcmp(c.ids, ref_c, sizeof ref_c), "c: %d ids",
           c.n_ids);
    CHECKF(d.last.finish == MOECL_FINISH_LENGTH && d.n_ids == 10 && !memcmp(d.ids, ref_d, sizeof ref_d), "d: %d ids",
           d.n_ids);
    moecl_engine_get_stats(e, &st);
    CHECKF(st.n_kv_full == 1 && st.n_preempted == 1, "c or d was cut short (%llu) or preempted (%llu)",
           (unsigned long long)st.n_kv_full, (unsigned long long)st.n_preempted);
    moecl_engine_free(e);
}

/* ------------------------------------------------------------------------ */
/* Prefix blocks shared across slots                                        */
/* ------------------------------------------------------------------------ */

/* a and b start with the same 40 tokens (2 whole blocks and a half): b,
 * started while a runs, takes a's 2 blocks instead of reading them. */
static void test_shared(const moecl_model *m) {
    int32_t pa[45], pb[47], pf[20], ref_a[12], ref_b[12], ref_f[5];
    make_prompt(pa, 40, 41);
    memcpy(pb, pa, 40 * sizeof *pa);
    make_prompt(pa + 40, 5, 42);
    make_prompt(pb + 40, 7, 43);
    make_prompt(pf, 20, 44);
    CHECK(reference(m, pa, 45, 12, ref_a) == 12);
    CHECK(reference(m, pb, 47, 12, ref_b) == 12);
    CHECK(reference(m, pf, 20, 5, ref_f) == 5);

    /* 3 slots, a pool of 6 blocks. b is submitted from a's first token
     * (a's prompt is read, its blocks entered in the table), and holds the
     * scheduler at its own first token: a then holds 46 positions (3
     * blocks), b 47 (3), 2 of them the same: 4 blocks held, 2 shared.
     * At b's second token b cancels a, and f (another prompt, 2 blocks)
     * arrives: a's idle cache is freed to make room for b's fourth block,
     * and b goes on with the blocks it shared with a. */
    moecl_engine *e = engine_new_kv(m, 3, 64, 64, 8, 96);
    if (!e) return;
    static collector a, b, f;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&f, 0, sizeof f);
    a.engine = b.engine = f.engine = e;
    b.block_at = 1;
    static submit_at sub_b, sub_f;
    uint64_t id_a = 0, id_b = 0, id_f = 0;
    sub_b = (submit_at){.at = 1, .req = greedy_request(pb, 47, 12, &b), .id = &id_b};
    sub_f = (submit_at){.at = 2, .req = greedy_request(pf, 20, 5, &f), .id = &id_f};
    a.submits = &sub_b;
    b.submits = &sub_f;
    b.cancel_other_at = 2;
    moecl_engine_request qa = greedy_request(pa, 45, 12, &a);
    CHECK(moecl_engine_submit(e, &qa, &id_a) == MOECL_OK);
    b.cancel_other = id_a;
    CHECK(wait_ids(&b, 1));
    moecl_engine_stats st;
    moecl_engine_get_stats(e, &st);
    CHECKF(st.kv_cells_held == 64 && st.kv_cells_shared == 32 && st.n_shared_tokens == 32,
           "two requests sharing 2 blocks: %lld cells held, %lld shared, %llu tokens shared", (long long)st.kv_cells_held,
           (long long)st.kv_cells_shared, (unsigned long long)st.n_shared_tokens);
    release(&b);
    collector *all[3] = {&a, &b, &f};
    CHECK(wait_done(all, 3));
    CHECKF(a.last.finish == MOECL_FINISH_CANCELLED && a.n_ids >= 2 && a.n_ids < 12 &&
           !memcmp(a.ids, ref_a, (size_t)a.n_ids * sizeof(int32_t)), "a: %s after %d ids",
           moecl_finish_reason_str(a.last.finish), a.n_ids);
    CHECKF(b.last.finish == MOECL_FINISH_LENGTH && b.n_ids == 12 && !memcmp(b.ids, ref_b, sizeof ref_b),
           "b: %s after %d ids, not those of b alone", moecl_finish_reason_str(b.last.finish), b.n_ids);
    CHECK(b.last.usage.cached_prompt_tokens == 32 && b.last.usage.prompt_tokens == 47);
    CHECK(a.last.usage.cached_prompt_tokens == 0);
    CHECKF(f.last.finish == MOECL_FINISH_LENGTH && f.n_ids == 5 && !memcmp(f.ids, ref_f, sizeof ref_f),
           "f: %d ids", f.n_ids);
    moecl_engine_get_stats(e, &st);
    CHECKF(st.n_kv_evicted >= 1 && st.n_kv_full == 0, "%llu idle caches freed, %llu cut short",
           (unsigned long long)st.n_kv_evicted, (unsigned long long)st.n_kv_full);
    CHECK(st.kv_cells_held <= 96 && st.n_cached_tokens >= 32);

    /* A prompt b's idle slot holds whole: its last token is read again. */
    static collector g;
    memset(&g, 0, sizeof g);
    g.engine = e;
    int32_t ref_g[6];
    CHECK(reference(m, pb, 32, 6, ref_g) == 6);
    moecl_engine_request qg = greedy_request(pb, 32, 6, &g);
    CHECK(moecl_engine_submit(e, &qg, NULL) == MOECL_OK);
    collector *pg[1] = {&g};
    CHECK(wait_done(pg, 1));
    CHECKF(g.n_ids == 6 && !memcmp(g.ids, ref_g, sizeof ref_g) && g.last.usage.cached_prompt_tokens == 31,
           "g: %d ids, %d cached", g.n_ids, g.last.usage.cached_prompt_tokens);
    moecl_engine_free(e);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_engine DATA_DIR TOKENIZER_JSON\n");
        return 1;
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny-f32", argv[1]);
    moecl_model *m = NULL;
    moecl_status st = moecl_model_load(path, NULL, &m);
    CHECKF(st == MOECL_OK, "%s", moecl_last_error());
    if (!m) return t_done("engine");
    test_args(m);
    test_stop_rules();
    test_concurrent(m, 8, 16, true, 0);    /* every request in a slot, chunked prompts, staggered starts */
    test_concurrent(m, 3, 8, false, 0);    /* queued requests, slots reused */
    test_concurrent(m, 8, 64, false, 0);   /* whole prompts in one step */
    test_concurrent(m, 8, 16, true, 256);  /* the same in a pool of 16 blocks: blocks reused, scattered */
    test_concurrent(m, 3, 8, false, 128);  /* 8 blocks for 3 slots */
    test_concurrent(m, 8, 64, false, 256);
    test_kv_pool(m);
    test_cancel(m);
    test_prefix(m);
    test_shared(m);
    moecl_model_free(m);
    test_text(argv[2]);
    return t_done("engine");
}
