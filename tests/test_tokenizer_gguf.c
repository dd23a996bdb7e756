/*
 * test_tokenizer_gguf.c - the tokenizer read from GGUF metadata
 * (tokenizer.ggml.*) against the same vocabulary's tokenizer.json and Hugging
 * Face tokenizers' reference ids; merging by rank (tokenizer.ggml.merges)
 * against merging by score (SentencePiece / llama.cpp); broken metadata.
 *
 *   test_tokenizer_gguf VOCAB.gguf MODELS/tokenizer.json TESTS/data/tokenizer/refs.json
 *
 * VOCAB.gguf is tests/data/tokenizer-gguf/mistral-v1.gguf (tools/make_vocab_gguf.py).
 * Variants of it (a key dropped or replaced) are built in memory here.
 */
#include "formats/gguf.h"
#include "formats/json.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_RANDOM 20000        /* random strings: GGUF (both modes) against tokenizer.json */
#define N_RANK_VS_SCORE 200000 /* random strings: merging by rank against merging by score */

/* ------------------------------------------------------------------------ */
/* A GGUF writer in memory: the file's metadata with keys dropped or added  */
/* ------------------------------------------------------------------------ */

typedef struct mbuf {
    uint8_t *p;
    size_t n, cap;
} mbuf;

static void put(mbuf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_u32(mbuf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(mbuf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(mbuf *b, const char *s, uint64_t n) {
    put_u64(b, n);
    put(b, s, (size_t)n);
}

static size_t scalar_size(mc_gguf_vtype t) {
    static const size_t sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return sz[t];
}

/* The value of kv (type, then value), copied. */
static void put_value(mbuf *b, const mc_gguf_kv *kv) {
    put_u32(b, kv->type);
    if (kv->type == MC_GGUF_STRING) {
        put_str(b, kv->strs[0].ptr, kv->strs[0].len);
    } else if (kv->type == MC_GGUF_ARRAY) {
        put_u32(b, kv->arr_type);
        put_u64(b, kv->n);
        if (kv->arr_type == MC_GGUF_STRING)
            for (uint64_t i = 0; i < kv->n; i++) put_str(b, kv->strs[i].ptr, kv->strs[i].len);
        else
            put(b, kv->data, (size_t)kv->n * scalar_size(kv->arr_type));
    } else {
        put(b, kv->data, scalar_size(kv->type));
    }
}

/* Extra key/value pairs, already serialized (key included). */
typedef struct extra {
    mbuf kvs;
    int n;
} extra;

static void extra_key(extra *e, const char *key) {
    put_str(&e->kvs, key, strlen(key));
    e->n++;
}
static void extra_u32(extra *e, const char *key, uint32_t v) {
    extra_key(e, key);
    put_u32(&e->kvs, MC_GGUF_UINT32);
    put_u32(&e->kvs, v);
}
static void extra_str(extra *e, const char *key, const char *v) {
    extra_key(e, key);
    put_u32(&e->kvs, MC_GGUF_STRING);
    put_str(&e->kvs, v, strlen(v));
}
/* A copy of src's array of kv, with n elements (n > kv->n: the last repeated) and
 * element i replaced by what set() writes when it is given. */
static void extra_arr_copy(extra *e, const mc_gguf_kv *kv, uint64_t n, uint64_t at, const void *val) {
    extra_key(e, kv->key);
    put_u32(&e->kvs, MC_GGUF_ARRAY);
    put_u32(&e->kvs, kv->arr_type);
    put_u64(&e->kvs, n);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t j = i < kv->n ? i : kv->n - 1;
        if (kv->arr_type == MC_GGUF_STRING) {
            const char *s = i == at && val ? val : kv->strs[j].ptr;
            put_str(&e->kvs, s, i == at && val ? strlen(val) : kv->strs[j].len);
        } else {
            size_t sz = scalar_size(kv->arr_type);
            put(&e->kvs, i == at && val ? val : (const uint8_t *)kv->data + j * sz, sz);
        }
    }
}

/* g's metadata minus the keys in drop (NULL-terminated, prefixes ending in
 * '*' match), plus e's; a GGUF v3 file without tensors. */
static uint8_t *rebuild(const mc_gguf *g, const char *const *drop, const extra *e, size_t *size) {
    mbuf b = {0}, kvs = {0};
    int64_t n = 0;
    for (int64_t i = 0; i < mc_gguf_n_kv(g); i++) {
        const mc_gguf_kv *kv = mc_gguf_kv_at(g, i);
        bool skip = false;
        for (int k = 0; drop && drop[k]; k++) {
            size_t l = strlen(drop[k]);
            if (drop[k][l - 1] == '*' ? !strncmp(kv->key, drop[k], l - 1) : !strcmp(kv->key, drop[k])) skip = true;
        }
        if (skip) continue;
        put_str(&kvs, kv->key, strlen(kv->key));
        put_value(&kvs, kv);
        n++;
    }
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, 0);
    put_u64(&b, (uint64_t)(n + (e ? e->n : 0)));
    put(&b, kvs.p, kvs.n);
    if (e && e->n) put(&b, e->kvs.p, e->kvs.n);
    static const uint8_t zeros[32] = {0};
    put(&b, zeros, (32 - b.n % 32) % 32);
    free(kvs.p);
    *size = b.n;
    return b.p;
}

/* Open the variant and read its tokenizer; *st the tokenizer's status (or the reader's). */
static moecl_tokenizer *variant(const mc_gguf *g, const char *const *drop, extra *e, moecl_status *st) {
    size_t size;
    uint8_t *data = rebuild(g, drop, e, &size);
    mc_gguf *v = NULL;
    moecl_tokenizer *tok = NULL;
    *st = mc_gguf_open_memory(data, size, "variant.gguf", &v);
    if (!*st) *st = mc_tokenizer_from_gguf(v, &tok);
    mc_gguf_close(v);
    free(data);
    if (e) {
        free(e->kvs.p);
        *e = (extra){0};
    }
    return tok;
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* The expected errors stay quiet; the last warning is kept for a check. */
static char g_warning[1024];
static void quiet_log(moecl_log_level level, const char *message, void *user) {
    (void)user;
    if (level == MOECL_LOG_WARN) snprintf(g_warning, sizeof g_warning, "%s", message);
}

static mc_ids encode(const moecl_tokenizer *tok, const char *s, size_t len, bool special) {
    mc_ids ids = {0};
    CHECK(mc_tokenizer_encode(tok, s, len, special, &ids) == MOECL_OK);
    return ids;
}

static bool ids_eq(mc_ids a, mc_ids b) { return a.n == b.n && (!a.n || !memcmp(a.v, b.v, a.n * sizeof *a.v)); }

static bool ids_eq_ref(mc_ids a, const cJSON *ref) {
    if ((size_t)cJSON_GetArraySize(ref) != a.n) return false;
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, ref) if (a.v[i++] != (int32_t)e->valuedouble) return false;
    return true;
}

static char *detok(const moecl_tokenizer *tok, const int32_t *ids, size_t n, uint32_t flags, size_t *len) {
    size_t need = 0;
    CHECK(moecl_detokenize(tok, ids, (int32_t)n, flags, NULL, 0, &need) == MOECL_OK);
    char *s = malloc(need + 1);
    CHECK(moecl_detokenize(tok, ids, (int32_t)n, flags, s, need + 1, len) == MOECL_OK);
    return s;
}

static void put_utf8(char *s, size_t *n, uint32_t cp) {
    if (cp < 0x80) s[(*n)++] = (char)cp;
    else if (cp < 0x800) {
        s[(*n)++] = (char)(0xC0 | cp >> 6);
        s[(*n)++] = (char)(0x80 | (cp & 63));
    } else if (cp < 0x10000) {
        s[(*n)++] = (char)(0xE0 | cp >> 12);
        s[(*n)++] = (char)(0x80 | ((cp >> 6) & 63));
        s[(*n)++] = (char)(0x80 | (cp & 63));
    } else {
        s[(*n)++] = (char)(0xF0 | cp >> 18);
        s[(*n)++] = (char)(0x80 | ((cp >> 12) & 63));
        s[(*n)++] = (char)(0x80 | ((cp >> 6) & 63));
        s[(*n)++] = (char)(0x80 | (cp & 63));
    }
}

/* A random string (at most ~400 bytes into s): vocabulary pieces with their
 * "▁" as spaces, runs of spaces, random code points of every plane, special
 * token strings, invalid bytes. */
static size_t random_text(const moecl_tokenizer *tok, uint64_t *seed, char *s) {
    static const char *lits[] = {"<s>", "</s>", "<unk>", "[INST]", " ", "  ", "    ", "\n", "\t", "▁", "<0x41>"};
    size_t n = 0;
    int parts = 1 + (int)(t_rand_u64(seed) % 12);
    for (int p = 0; p < parts; p++) {
        uint64_t r = t_rand_u64(seed) % 100;
        if (r < 55) { /* a vocabulary token, ▁ -> ' ' */
            const mc_token *t = &tok->tokens[t_rand_u64(seed) % (uint64_t)tok->n_vocab];
            if (t->kind != MC_TOK_NORMAL) continue;
            for (uint32_t i = 0; i < t->len && n < 380;) {
                if (i + 3 <= t->len && !memcmp(t->text + i, "\xe2\x96\x81", 3)) {
                    s[n++] = ' ';
                    i += 3;
                } else {
                    s[n++] = t->text[i++];
                }
            }
        } else if (r < 70) {
            const char *l = lits[t_rand_u64(seed) % (sizeof lits / sizeof *lits)];
            memcpy(s + n, l, strlen(l));
            n += strlen(l);
        } else if (r < 80) { /* a run of spaces */
            for (int k = (int)(t_rand_u64(seed) % 20); k > 0; k--) s[n++] = ' ';
        } else if (r < 97) { /* random code points: BMP, CJK, astral */
            for (int k = 1 + (int)(t_rand_u64(seed) % 4); k > 0; k--) {
                uint32_t cp;
                uint64_t w = t_rand_u64(seed) % 4;
                if (w == 0) cp = 0x20 + (uint32_t)(t_rand_u64(seed) % 0x5F);
                else if (w == 1) cp = 0x80 + (uint32_t)(t_rand_u64(seed) % 0x2000);
                else if (w == 2) cp = 0x4E00 + (uint32_t)(t_rand_u64(seed) % 0x5000);
                else cp = 0x10000 + (uint32_t)(t_rand_u64(seed) % 0x100000);
                if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD;
                put_utf8(s, &n, cp);
            }
        } else { /* bytes that are not UTF-8 */
            s[n++] = (char)(0x80 + t_rand_u64(seed) % 0x80);
        }
        if (n > 380) break;
    }
    s[n] = '\0';
    return n;
}

/* ------------------------------------------------------------------------ */
/* Same ids as tokenizer.json and the references                            */
/* ------------------------------------------------------------------------ */

static void test_same_vocabulary(const moecl_tokenizer *json, const moecl_tokenizer *gg, const char *what) {
    CHECKF(gg->n_vocab == json->n_vocab, "%s: %d tokens, tokenizer.json %d", what, gg->n_vocab, json->n_vocab);
    CHECK(gg->bos_id == json->bos_id && gg->eos_id == json->eos_id && gg->unk_id == json->unk_id);
    CHECK(gg->add_bos == json->add_bos && gg->add_eos == json->add_eos && gg->byte_fallback == json->byte_fallback);
    CHECK((gg->word_split != NULL) == (json->word_split != NULL));
    int bad = 0;
    for (int32_t id = 0; id < gg->n_vocab && id < json->n_vocab; id++) {
        const mc_token *a = &gg->tokens[id], *b = &json->tokens[id];
        if (a->kind != b->kind || a->len != b->len || memcmp(a->text, b->text, a->len) ||
            a->piece_len != b->piece_len || memcmp(a->piece, b->piece, a->piece_len))
            bad++;
    }
    CHECKF(bad == 0, "%s: %d tokens differ from tokenizer.json's (text, kind or piece)", what, bad);
}

static void test_refs(const moecl_tokenizer *tok, const cJSON *refs, const char *what) {
    const cJSON *c;
    int n = 0, bad = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(refs, "cases")) {
        size_t len;
        char *s = t_unhex(cJSON_GetObjectItem(c, "hex")->valuestring, &len);
        mc_ids ids = encode(tok, s, len, false);
        if (!ids_eq_ref(ids, cJSON_GetObjectItem(c, "ids"))) {
            bad++;
            fprintf(stderr, "  %s: differs from HF on \"%.60s\"\n", what, s);
        }
        n++;
        free(ids.v);
        free(s);
    }
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(refs, "special")) {
        const char *s = cJSON_GetObjectItem(c, "text")->valuestring;
        mc_ids ids = encode(tok, s, strlen(s), true);
        if (!ids_eq_ref(ids, cJSON_GetObjectItem(c, "ids"))) {
            bad++;
            fprintf(stderr, "  %s: differs from HF on \"%.60s\" (special tokens parsed)\n", what, s);
        }
        n++;
        free(ids.v);
    }
    CHECKF(bad == 0, "%s: %d of %d reference strings differ from HF tokenizers", what, bad, n);
    fprintf(stderr, "%s: %d reference strings, %d differ\n", what, n, bad);
}

/* Random strings: the same ids as tokenizer.json, with and without special
 * tokens parsed, and the same text back. */
static void test_random(const moecl_tokenizer *json, const moecl_tokenizer *gg, const char *what) {
    uint64_t seed = 12345;
    int bad = 0, bad_dec = 0;
    char s[512];
    for (int r = 0; r < N_RANDOM; r++) {
        size_t len = random_text(json, &seed, s);
        bool special = r & 1;
        mc_ids a = encode(json, s, len, special), b = encode(gg, s, len, special);
        if (!ids_eq(a, b) && bad++ < 5) fprintf(stderr, "  %s: differs from tokenizer.json on \"%s\"\n", what, s);
        size_t la, lb;
        char *da = detok(json, a.v, a.n, 0, &la), *db = detok(gg, a.v, a.n, 0, &lb);
        if ((la != lb || memcmp(da, db, la)) && bad_dec++ < 5)
            fprintf(stderr, "  %s: decodes \"%s\" differently\n", what, s);
        free(da);
        free(db);
        free(a.v);
        free(b.v);
    }
    /* Random ids, special ones skipped or not. */
    for (int r = 0; r < 2000; r++) {
        int32_t ids[16];
        for (int k = 0; k < 16; k++) ids[k] = (int32_t)(t_rand_u64(&seed) % (uint64_t)json->n_vocab);
        uint32_t flags = r & 1 ? MOECL_DETOKENIZE_SKIP_SPECIAL : 0;
        size_t la, lb;
        char *da = detok(json, ids, 16, flags, &la), *db = detok(gg, ids, 16, flags, &lb);
        if (la != lb || memcmp(da, db, la)) bad_dec++;
        free(da);
        free(db);
    }
    CHECKF(bad == 0, "%s: %d of %d random strings tokenized differently from tokenizer.json", what, bad, N_RANDOM);
    CHECKF(bad_dec == 0, "%s: %d random decodes differ from tokenizer.json's", what, bad_dec);
    fprintf(stderr, "%s: %d random strings and 2000 random id sequences against tokenizer.json, %d + %d differ\n",
            what, N_RANDOM, bad, bad_dec);
}

/* Merging by score (SentencePiece) against merging by rank (HF) on a large corpus. */
static void test_rank_vs_score(const moecl_tokenizer *rank, const moecl_tokenizer *score) {
    uint64_t seed = 99;
    int bad = 0;
    char s[512];
    for (int r = 0; r < N_RANK_VS_SCORE; r++) {
        size_t len = random_text(rank, &seed, s);
        mc_ids a = encode(rank, s, len, false), b = encode(score, s, len, false);
        if (!ids_eq(a, b) && bad++ < 5) fprintf(stderr, "  rank and score merging differ on \"%s\"\n", s);
        free(a.v);
        free(b.v);
    }
    CHECKF(bad == 0, "%d of %d random strings merge differently by score than by rank", bad, N_RANK_VS_SCORE);
    fprintf(stderr, "rank vs score: %d random strings, %d differ\n", N_RANK_VS_SCORE, bad);
}

/* ------------------------------------------------------------------------ */
/* Broken metadata                                                          */
/* ------------------------------------------------------------------------ */

static void expect_error(const mc_gguf *g, const char *const *drop, extra *e, moecl_status want, const char *needle,
                         const char *what) {
    moecl_status st;
    moecl_tokenizer *tok = variant(g, drop, e, &st);
    const char *msg = moecl_last_error();
    CHECKF(st == want && !tok && strstr(msg, needle), "%s: status %d (want %d), message \"%s\" (want \"%s\")", what,
           (int)st, (int)want, msg, needle);
    moecl_tokenizer_free(tok);
}

static void test_broken(const mc_gguf *g) {
    const mc_gguf_kv *tokens = mc_gguf_find_kv(g, "tokenizer.ggml.tokens");
    const mc_gguf_kv *scores = mc_gguf_find_kv(g, "tokenizer.ggml.scores");
    const mc_gguf_kv *types = mc_gguf_find_kv(g, "tokenizer.ggml.token_type");
    const mc_gguf_kv *merges = mc_gguf_find_kv(g, "tokenizer.ggml.merges");
    CHECK(tokens && scores && types && merges);
    if (!tokens || !scores || !types || !merges) return;
    extra e = {0};
    moecl_status st;

    /* No tokenizer at all: no error, no tokenizer. */
    const char *all[] = {"tokenizer.*", NULL};
    moecl_tokenizer *tok = variant(g, all, NULL, &st);
    CHECK(st == MOECL_OK && tok == NULL);

    const char *d_scores[] = {"tokenizer.ggml.scores", NULL};
    extra_arr_copy(&e, scores, scores->n - 1, UINT64_MAX, NULL);
    expect_error(g, d_scores, &e, MOECL_ERR_FORMAT, "tokenizer.ggml.scores' has 31999 values", "short scores");

    const char *d_types[] = {"tokenizer.ggml.token_type", NULL};
    extra_arr_copy(&e, types, types->n + 1, UINT64_MAX, NULL);
    expect_error(g, d_types, &e, MOECL_ERR_FORMAT, "tokenizer.ggml.token_type' has 32001 values", "long types");

    {
        /* token_type given as an array of strings */
        mc_gguf_kv as_str = *tokens;
        as_str.key = "tokenizer.ggml.token_type";
        extra_arr_copy(&e, &as_str, tokens->n, UINT64_MAX, NULL);
        expect_error(g, d_types, &e, MOECL_ERR_FORMAT, "tokenizer.ggml.token_type' is an array of string",
                     "types as strings");
    }

    int32_t nine = 9;
    extra_arr_copy(&e, types, types->n, 500, &nine);
    expect_error(g, d_types, &e, MOECL_ERR_FORMAT, "token_type[500] = 9", "type 9");

    int32_t byte = 6;
    extra_arr_copy(&e, types, types->n, 500, &byte);
    expect_error(g, d_types, &e, MOECL_ERR_FORMAT, "tokens[500]", "a BYTE token that is not <0xXX>");

    const char *d_tokens[] = {"tokenizer.ggml.tokens", NULL};
    expect_error(g, d_tokens, NULL, MOECL_ERR_FORMAT, "'tokenizer.ggml.tokens' is missing", "missing tokens");
    const char *d_tokens_model[] = {"tokenizer.ggml.tokens", "tokenizer.ggml.model", NULL};
    tok = variant(g, d_tokens_model, NULL, &st);
    CHECK(st == MOECL_OK && !tok); /* scores and types alone: nothing to read */
    const char *d_types_only[] = {"tokenizer.ggml.token_type", NULL};
    expect_error(g, d_types_only, NULL, MOECL_ERR_FORMAT, "'tokenizer.ggml.token_type' is missing", "missing types");

    char dup[64]; /* strings in the mapping are not NUL-terminated */
    snprintf(dup, sizeof dup, "%.*s", (int)tokens->strs[999].len, tokens->strs[999].ptr);
    extra_arr_copy(&e, tokens, tokens->n, 1000, dup);
    expect_error(g, d_tokens, &e, MOECL_ERR_FORMAT, "tokens[1000]", "a repeated token");

    extra_arr_copy(&e, tokens, tokens->n, 1000, "\xff\xfe");
    expect_error(g, d_tokens, &e, MOECL_ERR_FORMAT, "tokens[1000] is not valid UTF-8", "invalid UTF-8");

    extra_arr_copy(&e, tokens, tokens->n, 1000, "");
    expect_error(g, d_tokens, &e, MOECL_ERR_FORMAT, "tokens[1000] is empty", "empty token");

    extra_arr_copy(&e, tokens, tokens->n, 3 + 0x41, "A-not-a-byte"); /* <0x41> gone, its type still BYTE */
    expect_error(g, d_tokens, &e, MOECL_ERR_FORMAT, "tokens[68]", "a byte token renamed");

    const char *d_bos[] = {"tokenizer.ggml.bos_token_id", NULL};
    extra_u32(&e, "tokenizer.ggml.bos_token_id", 32000);
    expect_error(g, d_bos, &e, MOECL_ERR_FORMAT, "tokenizer.ggml.bos_token_id' = 32000 is not a token id",
                 "bos out of range");
    extra_str(&e, "tokenizer.ggml.bos_token_id", "<s>");
    expect_error(g, d_bos, &e, MOECL_ERR_FORMAT, "tokenizer.ggml.bos_token_id", "bos as a string");
    extra_u32(&e, "tokenizer.ggml.padding_token_id", 99999);
    expect_error(g, NULL, &e, MOECL_ERR_FORMAT, "tokenizer.ggml.padding_token_id", "pad out of range");

    const char *d_model[] = {"tokenizer.ggml.model", NULL};
    extra_str(&e, "tokenizer.ggml.model", "gpt2");
    expect_error(g, d_model, &e, MOECL_ERR_FORMAT, "\"gpt2\" vocabulary with BYTE tokens", "gpt2");
    extra_str(&e, "tokenizer.ggml.model", "bert");
    expect_error(g, d_model, &e, MOECL_ERR_UNSUPPORTED, "\"bert\" is not supported", "bert");

    const char *d_merges[] = {"tokenizer.ggml.merges", NULL};
    extra_arr_copy(&e, merges, merges->n, 7, "▁t nosuchtoken");
    expect_error(g, d_merges, &e, MOECL_ERR_FORMAT, "merges[7] names \"nosuchtoken\"", "merge of an unknown token");
    extra_arr_copy(&e, merges, merges->n, 7, "▁thenoseparator");
    expect_error(g, d_merges, &e, MOECL_ERR_FORMAT, "merges[7] is not \"left right\"", "merge without a space");
    extra_arr_copy(&e, merges, merges->n, 7, "Q ▁▁▁▁");
    expect_error(g, d_merges, &e, MOECL_ERR_FORMAT, "merges[7] makes", "merge making an unknown token");

    float nan = 0.0f / 0.0f;
    extra_arr_copy(&e, scores, scores->n, 400, &nan);
    const char *d_scores_merges[] = {"tokenizer.ggml.scores", "tokenizer.ggml.merges", NULL};
    expect_error(g, d_scores_merges, &e, MOECL_ERR_FORMAT, "scores[400] is not a finite", "NaN score");

    /* Settings: a chat template, no space prefix. */
    const char *d_prefix[] = {"tokenizer.ggml.add_space_prefix", "tokenizer.chat_template", NULL};
    extra_key(&e, "tokenizer.ggml.add_space_prefix");
    put_u32(&e.kvs, MC_GGUF_BOOL);
    put(&e.kvs, "\0", 1);
    extra_str(&e, "tokenizer.chat_template", "{{ messages }}");
    tok = variant(g, d_prefix, &e, &st);
    CHECK(st == MOECL_OK && tok);
    if (tok) {
        CHECK(tok->chat_template && !strcmp(tok->chat_template, "{{ messages }}"));
        CHECK(tok->dec_strip_left == 0);
        mc_ids ids = encode(tok, "Hello world", 11, false); /* "Hello" without "▁": not id 22557 */
        CHECK(ids.n >= 2 && ids.v[0] != 22557 && ids.v[ids.n - 1] == 1526);
        free(ids.v);
    }
    moecl_tokenizer_free(tok);

    /* llama.cpp's own conversion of a tokenizer.json: every score -1000, no merges.
     * It loads (with a warning) and tokenizes as llama.cpp does: the leftmost pair first. */
    float m1000 = -1000.0f;
    extra_key(&e, "tokenizer.ggml.scores");
    put_u32(&e.kvs, MC_GGUF_ARRAY);
    put_u32(&e.kvs, MC_GGUF_FLOAT32);
    put_u64(&e.kvs, scores->n);
    for (uint64_t i = 0; i < scores->n; i++) put(&e.kvs, &m1000, 4);
    g_warning[0] = '\0';
    tok = variant(g, d_scores_merges, &e, &st);
    CHECK(st == MOECL_OK && tok);
    CHECKF(strstr(g_warning, "every token has the same score"), "warning: \"%s\"", g_warning);
    if (tok) {
        mc_ids ids = encode(tok, "Hello", 5, false);
        CHECK(ids.n >= 1);
        free(ids.v);
    }
    moecl_tokenizer_free(tok);
}

static int cmp_float_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x > y ? -1 : x < y ? 1 : 0;
}

/* The merge table built from scores (tries, linear) against its definition
 * evaluated the slow way, as the loader did before: every split of every
 * normal token at a character boundary into two normal tokens, ranked by
 * the token's score among those of all tokens that have a split. */
static void test_pairs_definition(const moecl_tokenizer *tok, const mc_gguf *g) {
    const mc_gguf_kv *scores = mc_gguf_find_kv(g, "tokenizer.ggml.scores");
    CHECK(scores);
    if (!scores) return;
    const int32_t n = tok->n_vocab;
    int32_t *splits = calloc((size_t)n, sizeof *splits);
    float *cand = malloc((size_t)n * sizeof *cand);
    int n_cand = 0, n_pairs = 0;
    for (int32_t id = 0; id < n; id++) {
        const mc_token *t = &tok->tokens[id];
        if (t->kind != MC_TOK_NORMAL) continue;
        for (uint32_t k = 1; k < t->len; k++) {
            if (((uint8_t)t->text[k] & 0xC0) == 0x80) continue;
            int32_t l = mc_tokenizer_find(tok, t->text, k), r = mc_tokenizer_find(tok, t->text + k, t->len - k);
            if (l >= 0 && r >= 0 && tok->tokens[l].kind == MC_TOK_NORMAL && tok->tokens[r].kind == MC_TOK_NORMAL)
                splits[id]++;
        }
        n_pairs += splits[id];
        if (splits[id]) cand[n_cand++] = (float)mc_gguf_arr_float(scores, (uint64_t)id);
    }
    CHECKF(tok->n_merges == n_pairs, "%d pairs from scores, %d by definition", tok->n_merges, n_pairs);
    /* every slot: a split of its result, with the rank = distinct candidate scores above the result's */
    qsort(cand, (size_t)n_cand, sizeof *cand, cmp_float_desc);
    int n_distinct = 0;
    for (int c = 0; c < n_cand; c++)
        if (c == 0 || cand[c] != cand[n_distinct - 1]) cand[n_distinct++] = cand[c];
    int bad = 0, seen = 0;
    for (size_t i = 0; i <= tok->pair_mask; i++) {
        const mc_pair_slot *sl = &tok->pairs[i];
        if (sl->key == UINT64_MAX) continue;
        seen++;
        const mc_token *l = &tok->tokens[sl->key >> 32], *r = &tok->tokens[(uint32_t)sl->key];
        const mc_token *t = &tok->tokens[sl->result];
        float sc = (float)mc_gguf_arr_float(scores, (uint64_t)sl->result);
        int lo = 0, hi = n_distinct; /* the first distinct score <= sc: how many are above */
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (cand[mid] > sc) lo = mid + 1;
            else hi = mid;
        }
        if (!(splits[sl->result] && l->kind == MC_TOK_NORMAL && r->kind == MC_TOK_NORMAL &&
              l->len + r->len == t->len && !memcmp(t->text, l->text, l->len) &&
              !memcmp(t->text + l->len, r->text, r->len) && sl->rank == lo) && bad++ < 5)
            fprintf(stderr, "pair %s + %s -> %s rank %d, expected rank %d\n", l->text, r->text, t->text, sl->rank, lo);
    }
    CHECKF(bad == 0 && seen == n_pairs, "%d of %d pairs differ from the definition", bad, seen);
    free(splits);
    free(cand);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: test_tokenizer_gguf VOCAB.gguf tokenizer.json refs.json\n");
        return 2;
    }
    moecl_log_set(quiet_log, MOECL_LOG_WARN, NULL);
    mc_gguf *g = NULL;
    moecl_tokenizer *json = NULL, *by_rank = NULL, *by_score = NULL, *public_load = NULL;
    cJSON *refs = NULL;
    moecl_status st = mc_gguf_open(argv[1], &g);
    CHECKF(st == MOECL_OK, "open %s: %s", argv[1], moecl_last_error());
    if (!st) st = mc_tokenizer_from_gguf(g, &by_rank);
    CHECKF(st == MOECL_OK && by_rank, "tokenizer from %s: %s", argv[1], moecl_last_error());
    CHECK(moecl_tokenizer_load(argv[2], &json) == MOECL_OK);
    CHECK(mc_json_load_file(argv[3], MC_JSON_DATA, &refs) == MOECL_OK);
    CHECK(moecl_tokenizer_load(argv[1], &public_load) == MOECL_OK && public_load);
    if (!g || !by_rank || !json || !refs || !public_load) return t_done("test_tokenizer_gguf");
    const char *no_merges[] = {"tokenizer.ggml.merges", NULL};
    by_score = variant(g, no_merges, NULL, &st);
    CHECKF(st == MOECL_OK && by_score, "the file without merges: %s", moecl_last_error());
    if (!by_score) return t_done("test_tokenizer_gguf");
    CHECK(by_rank->n_merges == json->n_merges);

    test_same_vocabulary(json, by_rank, "GGUF (merges)");
    test_same_vocabulary(json, by_score, "GGUF (scores)");
    test_same_vocabulary(json, public_load, "moecl_tokenizer_load(.gguf)");
    test_refs(json, refs, "tokenizer.json");
    test_refs(by_rank, refs, "GGUF by rank");
    test_refs(by_score, refs, "GGUF by score");
    test_random(json, by_rank, "GGUF by rank");
    test_random(json, by_score, "GGUF by score");
    test_rank_vs_score(by_rank, by_score);
    test_pairs_definition(by_score, g);
    test_broken(g);

    moecl_tokenizer_free(json);
    moecl_tokenizer_free(by_rank);
    moecl_tokenizer_free(by_score);
    moecl_tokenizer_free(public_load);
    mc_gguf_close(g);
    cJSON_Delete(refs);
    return t_done("test_tokenizer_gguf");
}
