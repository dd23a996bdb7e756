/*
 * test_tokenizer.c - the tokenizer against Hugging Face tokenizers' ids
 * (tests/data/tokenizer/refs.json, from tools/make_tokenizer_refs.py) on the
 * Mistral v1 vocabulary (models/tokenizer.json), in both the legacy
 * (normalizer) and the Metaspace form; round trips, streaming, invalid UTF-8,
 * the API's buffer rules, and malformed tokenizer.json files.
 *
 *   test_tokenizer MODELS/tokenizer.json TESTS/data/tokenizer/refs.json
 */
#include "formats/json.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static moecl_tokenizer *parse_text(const char *text, moecl_status *st) {
    moecl_tokenizer *tok = NULL;
    *st = mc_tokenizer_parse("test.json", text, strlen(text), &tok);
    if (*st == MOECL_OK) *st = mc_tokenizer_read_configs(tok, NULL);
    return tok;
}

static bool ids_equal(const int32_t *a, int na, const cJSON *ref) {
    if (cJSON_GetArraySize(ref) != na) return false;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, ref) if (a[i++] != (int32_t)e->valuedouble) return false;
    return true;
}

static void print_ids(const char *label, const int32_t *a, int n) {
    fprintf(stderr, "  %s:", label);
    for (int i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", a[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

static void print_ref(const cJSON *ref) {
    fprintf(stderr, "  ref:");
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, ref) if (i++ < 40) fprintf(stderr, " %d", (int)e->valuedouble);
    fprintf(stderr, "\n");
}

/* Tokenize into a fresh buffer. */
static int32_t *tokenize(const moecl_tokenizer *tok, const char *s, size_t len, uint32_t flags, int *n) {
    int32_t cnt = 0;
    moecl_status st = moecl_tokenize(tok, s, len, flags, NULL, 0, &cnt);
    CHECK(st == MOECL_OK);
    int32_t *ids = malloc(((size_t)cnt + 1) * sizeof *ids);
    int32_t got = 0;
    st = moecl_tokenize(tok, s, len, flags, ids, cnt, &got);
    CHECK(st == MOECL_OK && got == cnt);
    *n = got;
    return ids;
}

static char *detokenize(const moecl_tokenizer *tok, const int32_t *ids, int n, uint32_t flags, size_t *len) {
    size_t need = 0;
    CHECK(moecl_detokenize(tok, ids, n, flags, NULL, 0, &need) == MOECL_OK);
    char *s = malloc(need + 1);
    CHECK(moecl_detokenize(tok, ids, n, flags, s, need + 1, len) == MOECL_OK && *len == need);
    return s;
}

static bool valid_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = (uint8_t)s[i];
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!len || i + (size_t)len > n) return false;
        for (int k = 1; k < len; k++)
            if (((uint8_t)s[i + k] & 0xC0) != 0x80) return false;
        i += (size_t)len;
    }
    return true;
}

/* Streaming: every push gives whole characters (for valid input), and all
 * of it together is the whole decode. */
static void check_stream(const moecl_tokenizer *tok, const int32_t *ids, int n, const char *whole, size_t whole_len,
                         bool valid) {
    moecl_detokenizer *d = NULL;
    CHECK(moecl_detokenizer_new(tok, 0, &d) == MOECL_OK);
    char *acc = malloc(whole_len + 64);
    size_t acc_len = 0;
    bool ok = true;
    for (int i = 0; i < n && ok; i++) {
        const char *t;
        size_t l;
        if (moecl_detokenizer_push(d, ids[i], &t, &l) != MOECL_OK || acc_len + l > whole_len) ok = false;
        else {
            if (valid && !valid_utf8(t, l)) ok = false;
            memcpy(acc + acc_len, t, l);
            acc_len += l;
        }
    }
    const char *t;
    size_t l;
    CHECK(moecl_detokenizer_flush(d, &t, &l) == MOECL_OK);
    if (ok && acc_len + l <= whole_len) {
        memcpy(acc + acc_len, t, l);
        acc_len += l;
    } else {
        ok = false;
    }
    CHECKF(ok && acc_len == whole_len && memcmp(acc, whole, whole_len) == 0, "stream of \"%.40s\"", whole);
    free(acc);
    moecl_detokenizer_free(d);
}

/* ------------------------------------------------------------------------ */
/* The reference corpus                                                     */
/* ------------------------------------------------------------------------ */

static void test_reference(const moecl_tokenizer *tok, const moecl_tokenizer *ms, const moecl_tokenizer *msp,
                           const cJSON *refs) {
    const cJSON *cases = cJSON_GetObjectItem(refs, "cases"), *c;
    CHECK(cJSON_GetArraySize(cases) >= 300);
    int n_cases = 0, n_bad = 0, n_ms_bad = 0;
    cJSON_ArrayForEach(c, cases) {
        size_t len;
        char *s = t_unhex(cJSON_GetObjectItem(c, "hex")->valuestring, &len);
        const cJSON *ref = cJSON_GetObjectItem(c, "ids");
        int n;
        int32_t *ids = tokenize(tok, s, len, MOECL_TOKENIZE_NO_BOS, &n);
        n_cases++;
        if (!ids_equal(ids, n, ref)) {
            n_bad++;
            fprintf(stderr, "ids differ for \"%.60s\"\n", s);
            print_ids("moecl", ids, n);
            print_ref(ref);
        }
        /* BOS per the tokenizer's post-processor. */
        int nb;
        int32_t *with_bos = tokenize(tok, s, len, 0, &nb);
        CHECK(nb == n + 1 && with_bos[0] == 1 && memcmp(with_bos + 1, ids, (size_t)n * sizeof *ids) == 0);
        free(with_bos);

        /* decode(encode(x)) == x, except where "▁" in the text reads back as
         * a space (HF's decode gives the same, recorded as hf_decode). */
        size_t dl;
        char *dec = detokenize(tok, ids, n, 0, &dl);
        const cJSON *hf_dec = cJSON_GetObjectItem(c, "hf_decode");
        const char *want = hf_dec ? hf_dec->valuestring : s;
        size_t want_len = hf_dec ? strlen(want) : len;
        CHECKF(dl == want_len && memcmp(dec, want, dl) == 0, "round trip of \"%.60s\" gave \"%.60s\"", s, dec);
        check_stream(tok, ids, n, dec, dl, true);
        free(dec);
        free(ids);

        /* The Metaspace form of the same vocabulary. */
        ids = tokenize(ms, s, len, MOECL_TOKENIZE_NO_BOS, &n);
        if (!ids_equal(ids, n, cJSON_GetObjectItem(c, "ms"))) {
            n_ms_bad++;
            fprintf(stderr, "metaspace ids differ for \"%.60s\"\n", s);
            print_ids("moecl", ids, n);
            print_ref(cJSON_GetObjectItem(c, "ms"));
        }
        free(ids);
        ids = tokenize(msp, s, len, MOECL_TOKENIZE_NO_BOS, &n);
        if (!ids_equal(ids, n, cJSON_GetObjectItem(c, "msp"))) {
            n_ms_bad++;
            fprintf(stderr, "metaspace (split) ids differ for \"%.60s\"\n", s);
            print_ids("moecl", ids, n);
            print_ref(cJSON_GetObjectItem(c, "msp"));
        }
        free(ids);
        ids = tokenize(ms, s, len, MOECL_TOKENIZE_NO_BOS, &n);
        dec = detokenize(ms, ids, n, 0, &dl);
        /* In this form a leading space merges into the prepended "▁" and is
         * lost (HF decodes it the same way). */
        if (!hf_dec && s[0] != ' ')
            CHECKF(dl == len && memcmp(dec, s, dl) == 0, "metaspace round trip of \"%.60s\"", s);
        free(dec);
        free(ids);
        free(s);
    }
    /* Cutting words at "x▁" (word_split) must not change any id: random
     * mixtures of the corpus, tokenized with and without it. */
    moecl_tokenizer *mut = (moecl_tokenizer *)tok;
    uint64_t seed = 7;
    int n_all = cJSON_GetArraySize(cases), n_split_bad = 0;
    CHECK(tok->word_split != NULL);
    for (int r = 0; r < 200; r++) {
        char mix[4096];
        size_t ml = 0;
        for (int k = 0; k < 6; k++) {
            const cJSON *pick = cJSON_GetArrayItem(cases, (int)(t_rand_u64(&seed) % (uint64_t)n_all));
            size_t pl;
            char *p = t_unhex(cJSON_GetObjectItem(pick, "hex")->valuestring, &pl);
            if (ml + pl + 2 < sizeof mix) {
                memcpy(mix + ml, p, pl);
                ml += pl;
                mix[ml++] = " \n\t "[t_rand_u64(&seed) % 4];
            }
            free(p);
        }
        int n1, n2;
        int32_t *a = tokenize(tok, mix, ml, 0, &n1);
        char *ws = mut->word_split;
        mut->word_split = NULL;
        int32_t *b = tokenize(tok, mix, ml, 0, &n2);
        mut->word_split = ws;
        if (n1 != n2 || memcmp(a, b, (size_t)n1 * sizeof *a)) n_split_bad++;
        free(a);
        free(b);
    }
    CHECKF(n_split_bad == 0, "%d of 200 mixtures tokenize differently when words are cut at x▁", n_split_bad);
    CHECKF(n_bad == 0, "%d of %d strings tokenized differently from HF tokenizers", n_bad, n_cases);
    CHECKF(n_ms_bad == 0, "%d of %d strings tokenized differently from HF (Metaspace form)", n_ms_bad, n_cases);
    fprintf(stderr, "reference: %d strings, %d differ (legacy form), %d differ (Metaspace forms)\n", n_cases, n_bad,
            n_ms_bad);

    const cJSON *special = cJSON_GetObjectItem(refs, "special");
    cJSON_ArrayForEach(c, special) {
        const char *s = cJSON_GetObjectItem(c, "text")->valuestring;
        int n;
        int32_t *ids = tokenize(tok, s, strlen(s), MOECL_TOKENIZE_NO_BOS | MOECL_TOKENIZE_PARSE_SPECIAL, &n);
        CHECKF(ids_equal(ids, n, cJSON_GetObjectItem(c, "ids")), "special tokens parsed in \"%s\"", s);
        free(ids);
        ids = tokenize(ms, s, strlen(s), MOECL_TOKENIZE_NO_BOS | MOECL_TOKENIZE_PARSE_SPECIAL, &n);
        CHECKF(ids_equal(ids, n, cJSON_GetObjectItem(c, "ms")), "special tokens parsed in \"%s\" (Metaspace)", s);
        free(ids);
    }
}

/* ------------------------------------------------------------------------ */
/* Invalid UTF-8, long inputs, decoding details                             */
/* ------------------------------------------------------------------------ */

static void test_invalid_utf8(const moecl_tokenizer *tok) {
    static const struct { const char *s; size_t len; } cases[] = {
        {"\xff", 1}, {"a\xe4\xbd", 3}, {"\xc0\x80", 2}, {"\xed\xa0\x80", 3}, {"x\x80y", 3},
        {"\xf4\x90\x80\x80", 4}, {"\xe4\xbd\xa0\xe4", 4}, {"caf\xe9", 4}, {"\xfe\xfe\xfe", 3},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int n;
        int32_t *ids = tokenize(tok, cases[k].s, cases[k].len, MOECL_TOKENIZE_NO_BOS, &n);
        size_t dl;
        char *dec = detokenize(tok, ids, n, 0, &dl);
        CHECKF(dl == cases[k].len && memcmp(dec, cases[k].s, dl) == 0, "invalid UTF-8 case %zu round trip", k);
        check_stream(tok, ids, n, dec, dl, false);
        free(dec);
        free(ids);
    }
    /* Each stray byte is its own byte token: "\xff" -> "▁" <0xFF>. */
    int n;
    int32_t *ids = tokenize(tok, "\xff", 1, MOECL_TOKENIZE_NO_BOS, &n);
    CHECK(n == 2 && ids[0] == 28705 && ids[1] == 3 + 0xff);
    free(ids);
    ids = tokenize(tok, "x\x80y", 3, MOECL_TOKENIZE_NO_BOS, &n);
    bool has = false;
    for (int i = 0; i < n; i++) has |= ids[i] == 3 + 0x80;
    CHECK(has);
    free(ids);
}

static void test_long_inputs(const moecl_tokenizer *tok) {
    /* One word of 200,000 bytes and a run of 200,000 spaces: the heap keeps
     * these O(n log n); a quadratic merge loop would take minutes. */
    size_t n = 200000;
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++) s[i] = "abcdefghij"[(i * 7 + i / 13) % 10];
    int nt;
    int32_t *ids = tokenize(tok, s, n, MOECL_TOKENIZE_NO_BOS, &nt);
    size_t dl;
    char *dec = detokenize(tok, ids, nt, 0, &dl);
    CHECK(dl == n && memcmp(dec, s, n) == 0);
    free(dec);
    free(ids);
    memset(s, ' ', n);
    ids = tokenize(tok, s, n, MOECL_TOKENIZE_NO_BOS, &nt);
    CHECK(nt > 0 && nt < (int)n / 4);
    dec = detokenize(tok, ids, nt, 0, &dl);
    CHECK(dl == n && memcmp(dec, s, n) == 0);
    free(dec);
    free(ids);
    free(s);
}

static void test_decoding(const moecl_tokenizer *tok) {
    /* "你" is E4 BD A0: split over byte tokens it must stream out once, whole. */
    int32_t ids[] = {3 + 0xE4, 3 + 0xBD, 3 + 0xA0, 3 + 'A'};
    moecl_detokenizer *d;
    CHECK(moecl_detokenizer_new(tok, 0, &d) == MOECL_OK);
    const char *t;
    size_t l;
    CHECK(moecl_detokenizer_push(d, ids[0], &t, &l) == MOECL_OK && l == 0 && !strcmp(t, ""));
    CHECK(moecl_detokenizer_push(d, ids[1], &t, &l) == MOECL_OK && l == 0);
    CHECK(moecl_detokenizer_push(d, ids[2], &t, &l) == MOECL_OK && l == 3 && !memcmp(t, "\xe4\xbd\xa0", 3));
    CHECK(moecl_detokenizer_push(d, ids[3], &t, &l) == MOECL_OK && l == 1 && t[0] == 'A');
    /* A lead byte then ASCII: the lead byte can no longer complete, so it goes out as it is. */
    CHECK(moecl_detokenizer_push(d, 3 + 0xE4, &t, &l) == MOECL_OK && l == 0);
    CHECK(moecl_detokenizer_push(d, 3 + 'B', &t, &l) == MOECL_OK && l == 2 && !memcmp(t, "\xe4" "B", 2));
    CHECK(moecl_detokenizer_push(d, 3 + 0xF0, &t, &l) == MOECL_OK && l == 0);
    CHECK(moecl_detokenizer_flush(d, &t, &l) == MOECL_OK && l == 1 && (uint8_t)t[0] == 0xF0);
    CHECK(moecl_detokenizer_push(d, -1, &t, &l) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_detokenizer_push(d, 32000, &t, &l) == MOECL_ERR_INVALID_ARG);
    /* The leading space is dropped once per stream; special tokens can be skipped. */
    moecl_detokenizer_free(d);
    CHECK(moecl_detokenizer_new(tok, MOECL_DETOKENIZE_SKIP_SPECIAL, &d) == MOECL_OK);
    CHECK(moecl_detokenizer_push(d, 1, &t, &l) == MOECL_OK && l == 0);
    CHECK(moecl_detokenizer_push(d, 22557, &t, &l) == MOECL_OK && l == 5 && !strcmp(t, "Hello"));
    CHECK(moecl_detokenizer_push(d, 22557, &t, &l) == MOECL_OK && !strcmp(t, " Hello"));
    CHECK(moecl_detokenizer_push(d, 2, &t, &l) == MOECL_OK && l == 0);
    moecl_detokenizer_reset(d);
    CHECK(moecl_detokenizer_push(d, 22557, &t, &l) == MOECL_OK && !strcmp(t, "Hello"));
    moecl_detokenizer_free(d);
    moecl_detokenizer_free(NULL);

    int32_t hello[] = {1, 22557, 1526, 2};
    char buf[64];
    size_t len;
    CHECK(moecl_detokenize(tok, hello, 4, 0, buf, sizeof buf, &len) == MOECL_OK && !strcmp(buf, "<s> Hello world</s>"));
    CHECK(moecl_detokenize(tok, hello, 4, MOECL_DETOKENIZE_SKIP_SPECIAL, buf, sizeof buf, &len) == MOECL_OK &&
          !strcmp(buf, "Hello world") && len == 11);
    CHECK(moecl_detokenize(tok, hello + 1, 2, MOECL_DETOKENIZE_KEEP_LEADING_SPACE, buf, sizeof buf, &len) ==
              MOECL_OK && !strcmp(buf, " Hello world"));
    CHECK(moecl_detokenize(tok, hello + 1, 2, 0, buf, 11, &len) == MOECL_ERR_INVALID_ARG && len == 11);
    CHECK(moecl_detokenize(tok, hello + 1, 2, 0, buf, 12, &len) == MOECL_OK && !strcmp(buf, "Hello world"));

    size_t pl;
    CHECK(!strcmp(moecl_token_to_piece(tok, 22557, &pl), " Hello") && pl == 6);
    CHECK(moecl_token_to_piece(tok, 3, &pl) && pl == 1);
    CHECK(!strcmp(moecl_token_to_piece(tok, 3 + '\n', NULL), "\n"));
    CHECK(!moecl_token_to_piece(tok, 32000, &pl) && pl == 0);
    CHECK(!strcmp(moecl_token_text(tok, 22557), "\xe2\x96\x81Hello"));
    CHECK(!strcmp(moecl_token_text(tok, 3 + 0x0A), "<0x0A>"));
    CHECK(moecl_token_is_special(tok, 1) && moecl_token_is_special(tok, 2) && !moecl_token_is_special(tok, 22557));
}

static void test_api(const moecl_tokenizer *tok) {
    CHECK(moecl_tokenizer_n_vocab(tok) == 32000);
    CHECK(moecl_tokenizer_bos_id(tok) == 1 && moecl_tokenizer_eos_id(tok) == 2);
    CHECK(moecl_tokenizer_n_vocab(NULL) == 0 && moecl_tokenizer_bos_id(NULL) == -1);
    int32_t ids[4], n = -1;
    /* "Hello world" is <s> ▁Hello ▁world: 3 ids. */
    CHECK(moecl_tokenize(tok, "Hello world", 11, 0, NULL, 0, &n) == MOECL_OK && n == 3);
    CHECK(moecl_tokenize(tok, "Hello world", 11, 0, ids, 2, &n) == MOECL_ERR_INVALID_ARG && n == 3);
    CHECK(moecl_tokenize(tok, "Hello world", 11, 0, ids, 3, &n) == MOECL_OK && n == 3 && ids[0] == 1 &&
          ids[1] == 22557 && ids[2] == 1526);
    CHECK(moecl_tokenize(tok, NULL, 0, 0, ids, 4, &n) == MOECL_OK && n == 1 && ids[0] == 1);
    CHECK(moecl_tokenize(tok, NULL, 0, MOECL_TOKENIZE_NO_BOS, ids, 4, &n) == MOECL_OK && n == 0);
    CHECK(moecl_tokenize(NULL, "x", 1, 0, ids, 4, &n) == MOECL_ERR_INVALID_ARG && n == 0);
    CHECK(moecl_tokenize(tok, "x", 1, 0, ids, 4, NULL) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_tokenize(tok, "x", 1, 0, NULL, 4, &n) == MOECL_ERR_INVALID_ARG);
    /* Special-token text is plain text by default. */
    CHECK(moecl_tokenize(tok, "<s>", 3, MOECL_TOKENIZE_NO_BOS, ids, 4, &n) == MOECL_OK && n > 1);
    CHECK(moecl_tokenize(tok, "<s>", 3, MOECL_TOKENIZE_NO_BOS | MOECL_TOKENIZE_PARSE_SPECIAL, ids, 4, &n) ==
              MOECL_OK && n == 1 && ids[0] == 1);
    moecl_tokenizer_free(NULL);
    CHECK(moecl_model_get_tokenizer(NULL) == NULL);
    moecl_tokenizer *t = (moecl_tokenizer *)1;
    CHECK(moecl_tokenizer_load("/nonexistent/tokenizer.json", &t) == MOECL_ERR_IO && t == NULL);
    CHECK(moecl_tokenizer_load(NULL, &t) == MOECL_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------------ */
/* Chat: mistral-common's ids for Mixtral-Instruct conversations            */
/* ------------------------------------------------------------------------ */

static void test_chat(const moecl_tokenizer *tok, const cJSON *refs) {
    const cJSON *chats = cJSON_GetObjectItem(refs, "chat"), *c;
    CHECK(cJSON_GetArraySize(chats) >= 5);
    int k = 0;
    cJSON_ArrayForEach(c, chats) {
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages"), *m;
        moecl_chat_message mv[16];
        int32_t n = 0;
        cJSON_ArrayForEach(m, msgs) {
            mv[n].role = cJSON_GetObjectItem(m, "role")->valuestring;
            mv[n].content = cJSON_GetObjectItem(m, "content")->valuestring;
            n++;
        }
        int32_t cnt = 0, ids[512];
        CHECK(moecl_chat_tokenize(tok, mv, n, 0, NULL, 0, &cnt) == MOECL_OK);
        moecl_status st = moecl_chat_tokenize(tok, mv, n, 0, ids, 512, &cnt);
        CHECKF(st == MOECL_OK && ids_equal(ids, cnt, cJSON_GetObjectItem(c, "ids")), "chat %d", k);
        if (st == MOECL_OK && cnt > 1) {
            int32_t cnt2 = 0, ids2[512];
            CHECK(moecl_chat_tokenize(tok, mv, n, MOECL_CHAT_NO_BOS, ids2, 512, &cnt2) == MOECL_OK &&
                  cnt2 == cnt - 1 && !memcmp(ids2, ids + 1, (size_t)cnt2 * sizeof *ids));
            CHECK(moecl_chat_tokenize(tok, mv, n, 0, ids2, cnt - 1, &cnt2) == MOECL_ERR_INVALID_ARG && cnt2 == cnt);
        }
        k++;
    }
    int32_t cnt, ids[64];
    moecl_chat_message bad[] = {{"user", "a"}, {"assistant", "b"}};
    CHECK(moecl_chat_tokenize(tok, bad, 2, 0, ids, 64, &cnt) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_chat_tokenize(tok, bad + 1, 1, 0, ids, 64, &cnt) == MOECL_ERR_INVALID_ARG);
    moecl_chat_message sys_only[] = {{"system", "s"}};
    CHECK(moecl_chat_tokenize(tok, sys_only, 1, 0, ids, 64, &cnt) == MOECL_ERR_INVALID_ARG);
    moecl_chat_message odd[] = {{"tool", "x"}};
    CHECK(moecl_chat_tokenize(tok, odd, 1, 0, ids, 64, &cnt) == MOECL_ERR_INVALID_ARG &&
          strstr(moecl_last_error(), "\"tool\""));
    moecl_chat_message null_content[] = {{"user", NULL}};
    CHECK(moecl_chat_tokenize(tok, null_content, 1, 0, ids, 64, &cnt) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_chat_tokenize(tok, NULL, 0, 0, ids, 64, &cnt) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_chat_tokenize(NULL, bad, 1, 0, ids, 64, &cnt) == MOECL_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------------ */
/* Malformed and unsupported files                                          */
/* ------------------------------------------------------------------------ */

/* A three-token BPE model: TINY_BODY completes an object opened before it. */
#define TINY_BODY(extra) "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, " \
                         "\"merges\": [\"a b\"]" extra "}}"
#define TINY_MODEL(extra) "{" TINY_BODY(extra)

static void test_malformed(void) {
    static const struct { const char *json; moecl_status st; const char *msg; } cases[] = {
        {"not json", MOECL_ERR_FORMAT, "not valid JSON"},
        {"[1, 2]", MOECL_ERR_FORMAT, "expected an object"},
        {"{\"version\": \"1.0\"}", MOECL_ERR_FORMAT, "no \"model\""},
        {"{\"model\": 3}", MOECL_ERR_FORMAT, "\"model\" is a number"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": [], \"merges\": []}}", MOECL_ERR_FORMAT, "model.vocab is an array"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": {}}}", MOECL_ERR_FORMAT,
         "model.merges is an object"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"0\"}, \"merges\": []}}", MOECL_ERR_FORMAT,
         "model.vocab[\"a\"] is not an id"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", MOECL_ERR_FORMAT, "not an id"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}", MOECL_ERR_FORMAT,
         "id 0 is given to both"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"ab\": 1}, \"merges\": [\"a b\"]}}", MOECL_ERR_FORMAT,
         "merges[0] names \"b\""},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [[\"a\", \"b\"]]}}",
         MOECL_ERR_FORMAT, "makes \"ab\", which is not in the vocabulary"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"ab\"]}}", MOECL_ERR_FORMAT,
         "merges[0] is not"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [7]}}", MOECL_ERR_FORMAT,
         "merges[0] is not"},
        {TINY_MODEL(", \"byte_fallback\": true"), MOECL_ERR_FORMAT, "no byte token <0x00>"},
        {TINY_MODEL(", \"unk_token\": \"<unk>\""), MOECL_ERR_FORMAT, "unk_token \"<unk>\" is not in the vocabulary"},
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}", MOECL_ERR_UNSUPPORTED, "\"WordPiece\""},
        {"{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}", MOECL_ERR_UNSUPPORTED, "\"Unigram\""},
        {"{\"model\": {\"type\": 5, \"vocab\": {}}}", MOECL_ERR_FORMAT, "model.type is a number"},
        {TINY_MODEL(", \"continuing_subword_prefix\": \"##\""), MOECL_ERR_UNSUPPORTED, "continuing_subword_prefix"},
        {TINY_MODEL(", \"dropout\": 0.1"), MOECL_ERR_UNSUPPORTED, "dropout"},
        {TINY_MODEL(", \"ignore_merges\": true"), MOECL_ERR_UNSUPPORTED, "ignore_merges"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}", MOECL_ERR_FORMAT, "vocabulary is empty"},
        /* a large id in a small file: 16M slots (~700 MB) for 2 tokens (found by fuzz_tokenizer_json) */
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 16000000}, \"merges\": []}}", MOECL_ERR_FORMAT,
         "the largest id is 16000000 but only 2 tokens are named"},
        {"{\"normalizer\": {\"type\": \"NFKC\"}, " TINY_BODY(""), MOECL_ERR_UNSUPPORTED, "normalizer type \"NFKC\""},
        {"{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, " TINY_BODY(""), MOECL_ERR_FORMAT,
         "byte-level vocabulary without the token for byte 0x00"},
        {"{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Isolated\"}, "
         TINY_BODY(""), MOECL_ERR_UNSUPPORTED, "Split pre_tokenizer is supported only with a ByteLevel"},
        {"{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
         "{\"Regex\": \"(unclosed\"}, \"behavior\": \"Isolated\"}, {\"type\": \"ByteLevel\"}]}, " TINY_BODY(""),
         MOECL_ERR_FORMAT, "does not compile"},
        {"{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Sideways\"}, "
         TINY_BODY(""), MOECL_ERR_UNSUPPORTED, "behavior \"Sideways\""},
        {"{\"normalizer\": {\"type\": \"NFC\"}, " TINY_BODY(""), MOECL_ERR_UNSUPPORTED,
         "NFC normalizer is supported only with a ByteLevel"},
        {"{\"decoder\": {\"type\": \"WordPiece\"}, " TINY_BODY(""), MOECL_ERR_UNSUPPORTED,
         "decoder type \"WordPiece\""},
        {"{\"normalizer\": 3, " TINY_BODY(""), MOECL_ERR_FORMAT, "normalizer must be null or an object"},
        {"{\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"Regex\": \" +\"}, \"content\": \"_\"}, "
         TINY_BODY(""), MOECL_ERR_UNSUPPORTED, "regex"},
        {"{\"added_tokens\": {}, " TINY_BODY(""), MOECL_ERR_FORMAT, "added_tokens is an object"},
        {"{\"added_tokens\": [{\"id\": \"x\", \"content\": \"<s>\"}], " TINY_BODY(""), MOECL_ERR_FORMAT,
         "added_tokens[0] needs"},
        {"{\"added_tokens\": [{\"id\": 0, \"content\": \"<s>\"}], " TINY_BODY(""), MOECL_ERR_FORMAT,
         "the vocabulary gives to \"a\""},
        {"{\"added_tokens\": [{\"id\": 5, \"content\": \"ab\"}], " TINY_BODY(""), MOECL_ERR_FORMAT,
         "is already id 2"},
        {"{\"added_tokens\": [{\"id\": 5, \"content\": \"<x>\", \"lstrip\": true}], " TINY_BODY(""),
         MOECL_ERR_UNSUPPORTED, "lstrip"},
        {TINY_MODEL("") "  x", MOECL_ERR_FORMAT, "trailing bytes"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        moecl_status st;
        moecl_tokenizer *tok = parse_text(cases[k].json, &st);
        CHECKF(st == cases[k].st && strstr(moecl_last_error(), cases[k].msg), "malformed case %zu: got %s: %s", k,
               moecl_status_str(st), moecl_last_error());
        moecl_tokenizer_free(tok);
    }
    /* The tiny one itself is fine, in both merge spellings. */
    moecl_status st;
    moecl_tokenizer *tok = parse_text(TINY_MODEL(""), &st);
    CHECK(st == MOECL_OK);
    int32_t ids[8], n;
    CHECK(tok && moecl_tokenize(tok, "abab", 4, 0, ids, 8, &n) == MOECL_OK && n == 2 && ids[0] == 2 && ids[1] == 2);
    moecl_tokenizer_free(tok);
    tok = parse_text("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"<unk>\": 3}, "
                     "\"merges\": [[\"a\", \"b\"]], \"unk_token\": \"<unk>\", \"fuse_unk\": true}}", &st);
    CHECK(st == MOECL_OK);
    /* Characters outside the vocabulary without byte fallback: <unk>, fused. */
    CHECK(tok && moecl_tokenize(tok, "abxyza", 6, 0, ids, 8, &n) == MOECL_OK && n == 3 && ids[0] == 2 &&
          ids[1] == 3 && ids[2] == 0);
    moecl_tokenizer_free(tok);
}

/* Fuzzing, deterministic: random byte strings (mostly not UTF-8) round-trip
 * through tokenize/detokenize; mutated tokenizer.json files are refused or
 * loaded, never crash (run under ASan/UBSan). */
static void test_fuzz(const moecl_tokenizer *tok) {
    uint64_t seed = 99;
    int bad = 0;
    for (int r = 0; r < 2000; r++) {
        char s[64];
        size_t n = t_rand_u64(&seed) % sizeof s;
        for (size_t i = 0; i < n; i++) {
            uint64_t x = t_rand_u64(&seed);
            s[i] = (char)(x % 3 == 0 ? "ab \n\xe4\xbd\xa0\xf0\x9f"[x / 3 % 9] : (char)(x >> 8));
        }
        if (memmem(s, n, "\xe2\x96\x81", 3)) continue; /* "▁" reads back as a space */
        int nt;
        int32_t *ids = tokenize(tok, s, n, MOECL_TOKENIZE_NO_BOS, &nt);
        size_t dl;
        char *dec = detokenize(tok, ids, nt, 0, &dl);
        if (dl != n || memcmp(dec, s, n)) bad++;
        else check_stream(tok, ids, nt, dec, dl, false);
        free(dec);
        free(ids);
    }
    CHECKF(bad == 0, "%d random byte strings did not round-trip", bad);

    const char *base = "{\"added_tokens\": [{\"id\": 5, \"content\": \"<s>\", \"special\": true}], "
                       "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", "
                       "\"prepend\": \"_\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, "
                       "\"content\": \"_\"}]}, \"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"_\"}, "
                       "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, "
                       "\"_\": 3, \"_ab\": 4}, \"merges\": [\"a b\", \"_ ab\"]}}";
    size_t bl = strlen(base);
    int loaded = 0;
    for (int r = 0; r < 3000; r++) {
        char m[1024];
        memcpy(m, base, bl + 1);
        int edits = 1 + (int)(t_rand_u64(&seed) % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = t_rand_u64(&seed) % bl;
            static const char alphabet[] = "{}[]\":,0159 abx\\-";
            m[at] = alphabet[t_rand_u64(&seed) % (sizeof alphabet - 1)];
        }
        moecl_tokenizer *t = NULL;
        if (mc_tokenizer_parse("fuzz.json", m, bl, &t) == MOECL_OK) {
            loaded++;
            int32_t ids[64], n;
            if (mc_tokenizer_read_configs(t, NULL) == MOECL_OK &&
                moecl_tokenize(t, "ab ab<s>ba", 10, MOECL_TOKENIZE_PARSE_SPECIAL, ids, 64, &n) == MOECL_OK) {
                char out[256];
                size_t ol;
                moecl_detokenize(t, ids, n, 0, out, sizeof out, &ol);
            }
            moecl_tokenizer_free(t);
        }
    }
    CHECK(loaded > 0);
}

/* A directory: tokenizer_config.json and generation_config.json. */
static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void test_configs(void) {
    char dir[] = "/tmp/moecl_tok_XXXXXX", path[256];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    write_file(path, "{\"added_tokens\": [{\"id\": 3, \"content\": \"<s>\", \"special\": true}, "
                     "{\"id\": 4, \"content\": \"</s>\", \"special\": true}], "
                     "\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": "
                     "[{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}]},"
                     TINY_BODY(""));
    moecl_tokenizer *tok;
    int32_t ids[8], n;
    CHECK(moecl_tokenizer_load(dir, &tok) == MOECL_OK);
    CHECK(moecl_tokenize(tok, "ab", 2, 0, ids, 8, &n) == MOECL_OK && n == 2 && ids[0] == 3 && ids[1] == 2);
    CHECK(moecl_tokenizer_eos_id(tok) == 4);
    moecl_tokenizer_free(tok);

    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    write_file(path, "{\"add_bos_token\": false, \"bos_token\": {\"content\": \"<s>\"}, \"eos_token\": \"</s>\"}");
    CHECK(moecl_tokenizer_load(dir, &tok) == MOECL_OK);
    CHECK(moecl_tokenize(tok, "ab", 2, 0, ids, 8, &n) == MOECL_OK && n == 1 && ids[0] == 2);
    moecl_tokenizer_free(tok);
    write_file(path, "{\"add_bos_token\": true, \"add_eos_token\": true}");
    CHECK(moecl_tokenizer_load(dir, &tok) == MOECL_OK);
    CHECK(moecl_tokenize(tok, "ab", 2, 0, ids, 8, &n) == MOECL_OK && n == 3 && ids[0] == 3 && ids[2] == 4);
    CHECK(moecl_tokenize(tok, "ab", 2, MOECL_TOKENIZE_NO_BOS, ids, 8, &n) == MOECL_OK && n == 1);
    moecl_tokenizer_free(tok);

    write_file(path, "{\"add_bos_token\": \"yes\"}");
    CHECK(moecl_tokenizer_load(dir, &tok) == MOECL_ERR_FORMAT && strstr(moecl_last_error(), "add_bos_token"));
    write_file(path, "{\"bos_token\": \"<start>\"}");
    CHECK(moecl_tokenizer_load(dir, &tok) == MOECL_ERR_FORMAT && strstr(moecl_last_error(), "<start>"));
    write_file(path, "{nope");
    CHECK(moecl_tokenizer_load(dir, &tok) == MOECL_ERR_FORMAT && strstr(moecl_last_error(), "tokenizer_config.json"));
    write_file(path, "{}");
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    write_file(path, "{\"bos_token_id\": 3, \"eos_token_id\": [4, 2]}");
    CHECK(moecl_tokenizer_load(dir, &tok) == MOECL_OK && moecl_tokenizer_eos_id(tok) == 4);
    moecl_tokenizer_free(tok);
    write_file(path, "{\"eos_token_id\": 99}");
    CHECK(moecl_tokenizer_load(dir, &tok) == MOECL_ERR_FORMAT && strstr(moecl_last_error(), "eos_token_id"));
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    unlink(path);
    rmdir(dir);
}

/* The model loader picks up tokenizer.json: absent or of an unsupported kind is fine,
 * malformed is an error. */
static void test_model_hook(void) {
    const char *data = getenv("MOECL_TEST_DATA");
    if (!data) {
        fprintf(stderr, "test_tokenizer: MOECL_TEST_DATA not set, model hook not tested\n");
        return;
    }
    char dir[] = "/tmp/moecl_tokm_XXXXXX", src[1024], dst[1024], tj[1024];
    CHECK(mkdtemp(dir) != NULL);
    const char *files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof src, "%s/tiny-f32/%s", data, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        CHECK(symlink(src, dst) == 0);
    }
    moecl_model *m = NULL;
    CHECK(moecl_model_load(dir, NULL, &m) == MOECL_OK && moecl_model_get_tokenizer(m) == NULL);
    moecl_model_free(m);
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    write_file(tj, TINY_MODEL(""));
    CHECK(moecl_model_load(dir, NULL, &m) == MOECL_OK && moecl_tokenizer_n_vocab(moecl_model_get_tokenizer(m)) == 3);
    moecl_model_free(m);
    /* A kind moecl does not read: the weights load without a tokenizer (a warning says why). */
    write_file(tj, "{\"model\": {\"type\": \"Unigram\"}}");
    CHECK(moecl_model_load(dir, NULL, &m) == MOECL_OK && moecl_model_get_tokenizer(m) == NULL);
    moecl_model_free(m);
    m = NULL;
    write_file(tj, "{");
    CHECK(moecl_model_load(dir, NULL, &m) == MOECL_ERR_FORMAT && m == NULL);
    unlink(tj);
    for (int i = 0; i < 2; i++) {
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        unlink(dst);
    }
    rmdir(dir);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_tokenizer tokenizer.json refs.json\n");
        return 2;
    }
    moecl_tokenizer *tok = NULL, *ms = NULL, *msp = NULL;
    moecl_status st = moecl_tokenizer_load(argv[1], &tok);
    CHECKF(st == MOECL_OK, "%s", moecl_last_error());
    char *text = NULL;
    size_t len;
    cJSON *refs = NULL;
    CHECK(mc_read_text_file(argv[2], (size_t)64 << 20, &text, &len) == MOECL_OK);
    CHECK(text && mc_json_parse(argv[2], MC_JSON_DATA, text, len, &refs) == MOECL_OK);
    free(text);
    /* The Metaspace form: the same file with no normalizer and a Metaspace
     * pre-tokenizer and decoder (prepend_scheme "first"). */
    CHECK(mc_read_text_file(argv[1], (size_t)64 << 20, &text, &len) == MOECL_OK);
    cJSON *j = NULL;
    CHECK(text && mc_json_parse(argv[1], MC_JSON_DATA, text, len, &j) == MOECL_OK);
    free(text);
    if (j) {
        cJSON_ReplaceItemInObject(j, "normalizer", cJSON_CreateNull());
        cJSON_ReplaceItemInObject(j, "pre_tokenizer", cJSON_Parse("{\"type\": \"Metaspace\", \"replacement\": "
                                  "\"\\u2581\", \"prepend_scheme\": \"first\", \"split\": false}"));
        cJSON_ReplaceItemInObject(j, "decoder", cJSON_Parse("{\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", "
                                  "\"prepend_scheme\": \"first\", \"split\": false}"));
        char *ms_text = cJSON_PrintUnformatted(j);
        CHECK(mc_tokenizer_parse("metaspace.json", ms_text, strlen(ms_text), &ms) == MOECL_OK);
        if (ms) mc_tokenizer_read_configs(ms, NULL);
        free(ms_text);
        /* ... and with prepend_scheme "always", split true. */
        cJSON_ReplaceItemInObject(j, "pre_tokenizer", cJSON_Parse("{\"type\": \"Metaspace\", \"replacement\": "
                                  "\"\\u2581\", \"prepend_scheme\": \"always\", \"split\": true}"));
        ms_text = cJSON_PrintUnformatted(j);
        CHECK(mc_tokenizer_parse("metaspace-split.json", ms_text, strlen(ms_text), &msp) == MOECL_OK);
        if (msp) mc_tokenizer_read_configs(msp, NULL);
        free(ms_text);
        cJSON_Delete(j);
    }
    /* The older spelling of merges ("a b" strings, as on the Hugging Face
     * hub's Mixtral repositories) gives the same tokenizer. */
    moecl_tokenizer *strm = NULL;
    CHECK(mc_read_text_file(argv[1], (size_t)64 << 20, &text, &len) == MOECL_OK);
    j = NULL;
    CHECK(text && mc_json_parse(argv[1], MC_JSON_DATA, text, len, &j) == MOECL_OK);
    free(text);
    if (j) {
        cJSON *merges = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "merges"), *e;
        cJSON *strs = cJSON_CreateArray();
        cJSON_ArrayForEach(e, merges) {
            char buf[512];
            snprintf(buf, sizeof buf, "%s %s", cJSON_GetArrayItem(e, 0)->valuestring,
                     cJSON_GetArrayItem(e, 1)->valuestring);
            cJSON_AddItemToArray(strs, cJSON_CreateString(buf));
        }
        cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "model"), "merges", strs);
        char *t2 = cJSON_PrintUnformatted(j);
        CHECK(mc_tokenizer_parse("string-merges.json", t2, strlen(t2), &strm) == MOECL_OK);
        free(t2);
        cJSON_Delete(j);
    }
    if (strm && tok) {
        CHECK(strm->n_merges == tok->n_merges && strm->n_merges == 58980);
        bool same = true;
        for (size_t i = 0; i <= tok->pair_mask && same; i++) {
            const mc_pair_slot *a = &tok->pairs[i], *b = &strm->pairs[i];
            same = a->key == b->key && (a->key == UINT64_MAX || (a->rank == b->rank && a->result == b->result));
        }
        CHECKF(same, "merges as strings and as pairs give different merge tables");
    }
    moecl_tokenizer_free(strm);

    if (tok && ms && msp && refs) {
        test_reference(tok, ms, msp, refs);
        test_invalid_utf8(tok);
        test_long_inputs(tok);
        test_decoding(tok);
        test_api(tok);
        test_chat(tok, refs);
        test_fuzz(tok);
    }
    test_malformed();
    test_configs();
    test_model_hook();
    cJSON_Delete(refs);
    moecl_tokenizer_free(tok);
    moecl_tokenizer_free(ms);
    moecl_tokenizer_free(msp);
    return t_done("test_tokenizer");
}
