/*
 * test_tokenizer_scale.c - a GGUF vocabulary without tokenizer.ggml.merges
 * whose tokens are 64 KiB long loads in work linear in its bytes, with the
 * merge table the definition gives, and the progress callback can cancel it.
 *
 *   test_tokenizer_scale OUTDIR     writes OUTDIR/long-tokens.gguf, then loads it
 *
 * Before the tries (issue 9, defect 1) every split point of every token
 * hashed both halves: 12 s per 64 KiB token. The bound here is on steps
 * counted by the loader, not on time, so the test is as fast and as exact
 * on a loaded machine.
 */
#include "formats/gguf.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

#include <string.h>
#include <sys/stat.h>

#define LONG 65536
#define N_SHORT 16 /* a, aa, ..., a^16 */

typedef struct vocab {
    mc_gguf_str s[64];
    int32_t type[64];
    float score[64];
    int n;
    size_t bytes; /* of the normal tokens */
} vocab;

static void add(vocab *v, char *text, size_t len, int32_t type, float score) {
    v->s[v->n] = (mc_gguf_str){.ptr = text, .len = len};
    v->type[v->n] = type;
    v->score[v->n] = score;
    if (type == 1) v->bytes += len;
    v->n++;
}

static char *repeat(const char *unit, size_t len) {
    char *s = malloc(len + 1);
    size_t u = strlen(unit);
    for (size_t i = 0; i < len; i++) s[i] = unit[i % u];
    s[len] = 0;
    return s;
}

/* The vocabulary: <unk> <s> </s>, a^1..a^16, b, c, and the long ones. The
 * pairs by definition: a^n = a^k + a^(n-k) for n <= 16 (120), a^65536 =
 * a + a^65535 = a^65535 + a = a^16 + a^65520 = a^65520 + a^16 (4), a^65535
 * = a^15 + a^65520 = a^65520 + a^15 (2): 126. The others split into no two
 * tokens. */
#define EXPECTED_PAIRS 126

static void make_vocab(vocab *v) {
    memset(v, 0, sizeof *v);
    add(v, repeat("<unk>", 5), 5, 2, 0);
    add(v, repeat("<s>", 3), 3, 3, 0);
    add(v, repeat("</s>", 4), 4, 3, 0);
    for (int n = 1; n <= N_SHORT; n++) add(v, repeat("a", (size_t)n), (size_t)n, 1, (float)-n);
    add(v, repeat("b", 1), 1, 1, -1);
    add(v, repeat("c", 1), 1, 1, -1);
    add(v, repeat("a", LONG), LONG, 1, -100);
    add(v, repeat("a", LONG - 1), LONG - 1, 1, -101);
    add(v, repeat("a", LONG - 16), LONG - 16, 1, -102);
    add(v, repeat("b", LONG), LONG, 1, -103);
    add(v, repeat("c", LONG), LONG, 1, -104);
    add(v, repeat("ab", LONG), LONG, 1, -105);
    add(v, repeat("abc", LONG), LONG, 1, -106);
}

static bool write_vocab(const vocab *v, const char *path) {
    mc_gguf_writer *w = NULL;
    bool ok = mc_gguf_writer_new(path, 32, &w) == MOECL_OK &&
              mc_gguf_writer_set_str(w, "general.architecture", "llama", 5) == MOECL_OK &&
              mc_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama", 5) == MOECL_OK &&
              mc_gguf_writer_set_str_arr(w, "tokenizer.ggml.tokens", v->s, (uint64_t)v->n) == MOECL_OK &&
              mc_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MC_GGUF_INT32, v->type, (uint64_t)v->n) ==
                  MOECL_OK &&
              mc_gguf_writer_set_arr(w, "tokenizer.ggml.scores", MC_GGUF_FLOAT32, v->score, (uint64_t)v->n) ==
                  MOECL_OK &&
              mc_gguf_writer_finish(w) == MOECL_OK;
    if (!ok) fprintf(stderr, "writing %s: %s\n", path, moecl_last_error());
    mc_gguf_writer_free(w);
    return ok;
}

typedef struct progress_log {
    int calls, cancel_at;
} progress_log;

static bool on_progress(float fraction, void *user) {
    progress_log *p = user;
    CHECK(fraction >= 0.0f && fraction <= 1.0f);
    return ++p->calls != p->cancel_at;
}

/* Every slot of the pair table is a split of its result into two normal
 * tokens, with the rank of the result's score among the results' scores. */
static void check_pairs(const moecl_tokenizer *tok) {
    int n = 0, bad = 0;
    for (size_t i = 0; i <= tok->pair_mask; i++) {
        const mc_pair_slot *s = &tok->pairs[i];
        if (s->key == UINT64_MAX) continue;
        n++;
        const mc_token *l = &tok->tokens[s->key >> 32], *r = &tok->tokens[(uint32_t)s->key];
        const mc_token *t = &tok->tokens[s->result];
        bool ok = l->kind == MC_TOK_NORMAL && r->kind == MC_TOK_NORMAL && t->kind == MC_TOK_NORMAL &&
                  l->len + r->len == t->len && !memcmp(t->text, l->text, l->len) &&
                  !memcmp(t->text + l->len, r->text, r->len);
        if (!ok) bad++;
    }
    CHECKF(n == EXPECTED_PAIRS && tok->n_merges == EXPECTED_PAIRS, "%d pairs (n_merges %d), expected %d", n,
           tok->n_merges, EXPECTED_PAIRS);
    CHECKF(bad == 0, "%d pairs are not splits of their result", bad);
    /* Scores -1..-16 for a^1..a^16, then the long tokens: ranks 0.. by score. a^2 = a + a. */
    int32_t a = mc_tokenizer_find(tok, "a", 1), aa = mc_tokenizer_find(tok, "aa", 2);
    for (size_t i = 0; i <= tok->pair_mask; i++) {
        const mc_pair_slot *s = &tok->pairs[i];
        if (s->key == (((uint64_t)(uint32_t)a << 32) | (uint32_t)a))
            CHECKF(s->result == aa && s->rank == 0, "a + a -> %d rank %d, expected %d rank 0", s->result, s->rank, aa);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
        return 2;
    }
    mkdir(argv[1], 0777);
    char path[4096];
    snprintf(path, sizeof path, "%s/long-tokens.gguf", argv[1]);
    vocab v;
    make_vocab(&v);
    CHECK(write_vocab(&v, path));

    mc_gguf *g = NULL;
    moecl_status st = mc_gguf_open(path, &g);
    CHECKF(st == MOECL_OK, "%s", moecl_last_error());
    if (st) return t_done("tokenizer_scale");

    /* Loads, in at most 8 steps per byte of the normal tokens (4 without
     * hash-table probes beyond the first), with progress calls. */
    progress_log plog = {0};
    uint64_t work = 0;
    moecl_tokenizer *tok = NULL;
    st = mc_tokenizer_from_gguf_ex(g, on_progress, &plog, &work, &tok);
    CHECKF(st == MOECL_OK && tok, "%s", moecl_last_error());
    fprintf(stderr, "%zu bytes of normal tokens: %llu trie steps (%.2f per byte), %d progress calls\n", v.bytes,
            (unsigned long long)work, (double)work / (double)v.bytes, plog.calls);
    CHECKF(work <= 8 * (uint64_t)v.bytes, "%llu steps for %zu bytes", (unsigned long long)work, v.bytes);
    CHECKF(work >= 2 * (uint64_t)v.bytes, "%llu steps for %zu bytes: the count is not counting",
           (unsigned long long)work, v.bytes);
    CHECKF(plog.calls >= 1, "the progress callback was never called");
    if (tok) {
        check_pairs(tok);
        /* a + a (rank 0) twice, then aa + aa (a^4's rank, 2); the "▁" prepended is <unk> here */
        mc_ids ids = {0};
        CHECK(mc_tokenizer_encode(tok, "aaaa", 4, false, &ids) == MOECL_OK);
        CHECKF(ids.n >= 1 && ids.v[ids.n - 1] == mc_tokenizer_find(tok, "aaaa", 4), "\"aaaa\" does not end in a^4");
        free(ids.v);
    }
    moecl_tokenizer_free(tok);

    /* The progress callback cancels it: at the first call, and at the second. */
    for (int at = 1; at <= 2; at++) {
        plog = (progress_log){.cancel_at = at};
        tok = NULL;
        st = mc_tokenizer_from_gguf_ex(g, on_progress, &plog, NULL, &tok);
        CHECKF(st == MOECL_ERR_ABORTED && !tok && strstr(moecl_last_error(), "cancelled by the progress callback"),
               "cancel at call %d: status %d, %s", at, st, moecl_last_error());
        CHECKF(plog.calls == at, "%d calls after cancelling at %d", plog.calls, at);
    }
    mc_gguf_close(g);

    /* moecl_tokenizer_load on the file (no progress) gives the same table. */
    st = moecl_tokenizer_load(path, &tok);
    CHECKF(st == MOECL_OK, "%s", moecl_last_error());
    if (tok) check_pairs(tok);
    moecl_tokenizer_free(tok);
    for (int i = 0; i < v.n; i++) free((char *)v.s[i].ptr);
    return t_done("tokenizer_scale");
}
