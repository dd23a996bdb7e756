/*
 * test_tokenizer_bpe.c - byte-level BPE tokenizers (Qwen3, OLMoE, GPT-2)
 * against Hugging Face tokenizers' ids and transformers' chat templates
 * (tests/data/tokenizer-{qwen3,olmoe,gpt2}/refs.json, from
 * tools/make_bpe_refs.py).
 *
 *   test_tokenizer_bpe TOKENIZER REFS [--moecl-gguf OUT.gguf [--like REF.gguf]]
 *
 * TOKENIZER is a directory with tokenizer.json (and tokenizer_config.json)
 * or a GGUF file; with --moecl-gguf the tokenizer is first written to a GGUF
 * by moecl's own writer, read back, and that is what is checked (with
 * --like, its metadata is first compared with REF's, written by PyPI gguf
 * in llama.cpp's layout). Every corpus string must give the reference ids,
 * decode back to its text (to HF's decode where that differs) and stream
 * back whole, in whole characters; special-token
 * strings are checked both ways; each conversation of the chat set must give
 * transformers' ids; the other named pre-tokenizers (llama-bpe,
 * deepseek-llm, gpt-2) are checked on the Qwen3 vocabulary where the
 * references hold them. Skips (77) when the vocabulary file is absent.
 */
#include "formats/gguf.h"
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

static bool ids_equal(const int32_t *a, int na, const cJSON *ref) {
    if (!cJSON_IsArray(ref) || cJSON_GetArraySize(ref) != na) return false;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, ref) if (a[i++] != (int32_t)e->valuedouble) return false;
    return true;
}

static void print_diff(const int32_t *a, int n, const cJSON *ref) {
    fprintf(stderr, "  moecl:");
    for (int i = 0; i < n && i < 30; i++) fprintf(stderr, " %d", a[i]);
    fprintf(stderr, "\n  ref:  ");
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, ref) if (i++ < 30) fprintf(stderr, " %d", (int)e->valuedouble);
    fprintf(stderr, "\n");
}

static int32_t *tokenize(const moecl_tokenizer *tok, const char *s, size_t len, uint32_t flags, int *n) {
    int32_t cnt = 0;
    CHECK(moecl_tokenize(tok, s, len, flags, NULL, 0, &cnt) == MOECL_OK);
    int32_t *ids = malloc(((size_t)cnt + 1) * sizeof *ids);
    int32_t got = 0;
    CHECK(moecl_tokenize(tok, s, len, flags, ids, cnt, &got) == MOECL_OK && got == cnt);
    *n = got;
    return ids;
}

static char *detokenize(const moecl_tokenizer *tok, const int32_t *ids, int n, size_t *len) {
    size_t need = 0;
    CHECK(moecl_detokenize(tok, ids, n, 0, NULL, 0, &need) == MOECL_OK);
    char *s = malloc(need + 1);
    *len = 0;
    CHECK(moecl_detokenize(tok, ids, n, 0, s, need + 1, len) == MOECL_OK && *len == need);
    return s;
}

/* Streaming gives the whole decode back, in pieces of whole characters. */
static bool stream_ok(const moecl_tokenizer *tok, const int32_t *ids, int n, const char *whole, size_t whole_len,
                      bool valid) {
    moecl_detokenizer *d = NULL;
    if (moecl_detokenizer_new(tok, 0, &d) != MOECL_OK) return false;
    char *acc = malloc(whole_len + 1);
    size_t acc_len = 0;
    bool ok = true;
    for (int i = 0; i <= n && ok; i++) {
        const char *t;
        size_t l;
        moecl_status st = i < n ? moecl_detokenizer_push(d, ids[i], &t, &l) : moecl_detokenizer_flush(d, &t, &l);
        if (st || acc_len + l > whole_len) {
            ok = false;
            break;
        }
        /* a valid text's pieces start on a character boundary */
        if (valid && l && ((uint8_t)t[0] & 0xC0) == 0x80) ok = false;
        memcpy(acc + acc_len, t, l);
        acc_len += l;
    }
    ok = ok && acc_len == whole_len && memcmp(acc, whole, whole_len) == 0;
    free(acc);
    moecl_detokenizer_free(d);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* Corpus, special tokens, named pre-tokenizers                             */
/* ------------------------------------------------------------------------ */

/* ids of every case against ref_key (or the i-th array of `variant`). */
static int check_corpus(const moecl_tokenizer *tok, const cJSON *cases, const cJSON *variant, bool decode,
                        const char *what) {
    int n_bad = 0, k = 0, n_cases = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const cJSON *ref = variant ? cJSON_GetArrayItem(variant, k) : cJSON_GetObjectItem(c, "ids");
        k++;
        bool invalid = cJSON_IsTrue(cJSON_GetObjectItem(c, "invalid_utf8"));
        if (variant && invalid) continue; /* variants cover the shared corpus only */
        n_cases++;
        size_t len;
        char *s = t_unhex(cJSON_GetObjectItem(c, "hex")->valuestring, &len);
        int n;
        int32_t *ids = tokenize(tok, s, len, MOECL_TOKENIZE_NO_BOS, &n);
        if (!ids_equal(ids, n, ref)) {
            if (n_bad++ < 10) {
                fprintf(stderr, "%s: ids differ for \"%.60s\"\n", what, s);
                print_diff(ids, n, ref);
            }
        }
        if (decode) {
            size_t dl;
            char *dec = detokenize(tok, ids, n, &dl);
            const cJSON *hf = cJSON_GetObjectItem(c, "hf_decode");
            char *want = hf && !invalid ? strdup(hf->valuestring) : malloc(len + 1);
            size_t want_len = hf && !invalid ? strlen(want) : 0;
            /* the text itself, less the bytes (never in well-formed UTF-8) the vocabulary has no token for */
            if (!(hf && !invalid))
                for (size_t i = 0; i < len; i++)
                    if (!invalid || tok->bl_byte_id[(uint8_t)s[i]] >= 0) want[want_len++] = s[i];
            CHECKF(dl == want_len && memcmp(dec, want, dl) == 0, "%s: decode of \"%.40s\" gave \"%.40s\"", what, s,
                   dec);
            CHECKF(stream_ok(tok, ids, n, dec, dl, !invalid), "%s: streaming decode of \"%.40s\"", what, s);
            free(dec);
            free(want);
        }
        free(ids);
        free(s);
    }
    CHECKF(n_bad == 0, "%s: %d of %d strings tokenized differently from HF tokenizers", what, n_bad, n_cases);
    fprintf(stderr, "%s: %d strings, %d differ\n", what, n_cases, n_bad);
    return n_cases;
}

static void check_special(const moecl_tokenizer *tok, const cJSON *special) {
    const cJSON *c;
    cJSON_ArrayForEach(c, special) {
        const char *s = cJSON_GetObjectItem(c, "text")->valuestring;
        int n;
        int32_t *ids = tokenize(tok, s, strlen(s), MOECL_TOKENIZE_NO_BOS | MOECL_TOKENIZE_PARSE_SPECIAL, &n);
        if (!ids_equal(ids, n, cJSON_GetObjectItem(c, "ids"))) {
            CHECKF(false, "special tokens parsed in \"%s\"", s);
            print_diff(ids, n, cJSON_GetObjectItem(c, "ids"));
        }
        size_t dl;
        char *dec = detokenize(tok, ids, n, &dl);
        CHECKF(dl == strlen(s) && !memcmp(dec, s, dl), "decode of \"%s\" with its special tokens", s);
        free(dec);
        free(ids);
    }
}

/* The Qwen3 vocabulary under llama.cpp's other pre-tokenizers, set by name
 * and through a GGUF written with that name. */
static void check_variants(const char *tok_path, const cJSON *cases, const cJSON *variants, const char *tmp_gguf) {
    const cJSON *v;
    cJSON_ArrayForEach(v, variants) {
        const mc_named_pretok *np = mc_pretok_by_name(v->string, strlen(v->string));
        CHECKF(np != NULL, "pre-tokenizer %s is known", v->string);
        if (!np) continue;
        moecl_tokenizer *tok = NULL;
        CHECK(moecl_tokenizer_load(tok_path, &tok) == MOECL_OK);
        if (!tok) continue;
        CHECK(mc_tokenizer_set_named_pretok(tok, np) == MOECL_OK);
        char what[64];
        snprintf(what, sizeof what, "pre-tokenizer %s", v->string);
        check_corpus(tok, cases, v, false, what);
        if (tmp_gguf) {
            mc_gguf_writer *w = NULL;
            CHECK(mc_gguf_writer_new(tmp_gguf, 32, &w) == MOECL_OK);
            CHECK(mc_tokenizer_write_gguf(tok, w) == MOECL_OK);
            CHECK(mc_gguf_writer_finish(w) == MOECL_OK);
            mc_gguf_writer_free(w);
            moecl_tokenizer *g = NULL;
            CHECK(moecl_tokenizer_load(tmp_gguf, &g) == MOECL_OK);
            if (g) {
                CHECK(g->pre_name && !strcmp(g->pre_name, np->name));
                snprintf(what, sizeof what, "pre-tokenizer %s from GGUF", v->string);
                check_corpus(g, cases, v, false, what);
            }
            moecl_tokenizer_free(g);
            remove(tmp_gguf);
        }
        moecl_tokenizer_free(tok);
    }
}

/* ------------------------------------------------------------------------ */
/* Chat                                                                     */
/* ------------------------------------------------------------------------ */

/* The last error names every format there is to choose from. */
static void check_lists_formats(const char *what) {
    static const char *const names[] = {"mistral", "chatml", "qwen2", "qwen2.5", "qwen3", "olmoe", "--chat-format"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (i + 1 < sizeof names / sizeof *names || strcmp(what, "unknown format"))
            CHECKF(strstr(moecl_last_error(), names[i]) != NULL, "%s: the error names %s: %s", what, names[i],
                   moecl_last_error());
}

/* moecl chat's multi-turn conversation, built in the cache turn by turn:
 * the first user turn (after the system messages), then for each reply its
 * tokens as generated plus the end-of-turn token, and the next user turn
 * with MOECL_CHAT_NO_BOS. That must be what transformers gives for the
 * whole conversation. Conversations of another shape, with replies a model
 * would have tokenized with the text before (leading whitespace), or in
 * Qwen3's format (which rewrites replies' reasoning), are not checked.
 * Returns whether it was checked. */
static bool check_turn_by_turn(const moecl_tokenizer *tok, const char *fmt, const moecl_chat_message *m, int nm,
                               const cJSON *ref) {
    if (!strcmp(fmt, "qwen3")) return false;
    int first_user = 0;
    while (first_user < nm && !strcmp(m[first_user].role, "system")) first_user++;
    if (first_user == nm || (nm - first_user) % 2 == 0) return false;
    for (int i = first_user; i < nm; i++) {
        const char *want = (i - first_user) % 2 ? "assistant" : "user";
        if (strcmp(m[i].role, want) || (!strcmp(want, "assistant") && strchr(" \t\n", m[i].content[0]) &&
                                        m[i].content[0]))
            return false;
    }
    int32_t end = !strcmp(fmt, "olmoe") ? tok->eos_id : mc_tokenizer_find(tok, "<|im_end|>", 10);
    CHECK(end >= 0);
    int32_t *ids = malloc(((size_t)cJSON_GetArraySize(ref) + 64) * sizeof *ids);
    int32_t n = 0, cap = cJSON_GetArraySize(ref) + 64, cnt = 0;
    bool ok = moecl_chat_tokenize_format(tok, fmt, m, first_user + 1, 0, ids, cap, &cnt) == MOECL_OK;
    n = cnt;
    for (int i = first_user + 1; ok && i + 1 < nm; i += 2) {
        int k;
        int32_t *reply = tokenize(tok, m[i].content, strlen(m[i].content), MOECL_TOKENIZE_NO_BOS, &k);
        ok = n + k + 1 <= cap;
        if (ok) {
            memcpy(ids + n, reply, (size_t)k * sizeof *ids);
            n += k;
            ids[n++] = end;
            ok = moecl_chat_tokenize_format(tok, fmt, m + i + 1, 1, MOECL_CHAT_NO_BOS, ids + n, cap - n, &cnt) ==
                 MOECL_OK;
            n += cnt;
        }
        free(reply);
    }
    if (!ok || !ids_equal(ids, n, ref)) {
        CHECKF(false, "chat %s turn by turn (%d messages) differs from the whole conversation", fmt, nm);
        print_diff(ids, n, ref);
    }
    free(ids);
    return true;
}

/* Each template the references were rendered with (chat_templates) is
 * recognised as the format named, and its conversations are checked
 * through it (pass 1 of check_chat). */
static void check_chat(const moecl_tokenizer *tok, const cJSON *chats, const cJSON *templates) {
    moecl_tokenizer *mut = (moecl_tokenizer *)tok;
    char *own = mut->chat_template;
    const char *detected = moecl_chat_format(tok);
    const cJSON *tp;
    cJSON_ArrayForEach(tp, templates) {
        mut->chat_template = tp->valuestring;
        const char *got = moecl_chat_format(tok);
        CHECKF(got && !strcmp(got, tp->string), "the %s template is recognised (got %s)", tp->string,
               got ? got : moecl_last_error());
        mut->chat_template = own;
    }
    int n_bad = 0, n = 0, n_auto = 0, n_turns = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, chats) {
        const char *fmt = cJSON_GetObjectItem(c, "format")->valuestring;
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages");
        int nm = cJSON_GetArraySize(msgs);
        moecl_chat_message *m = calloc((size_t)nm + 1, sizeof *m);
        for (int i = 0; i < nm; i++) {
            const cJSON *e = cJSON_GetArrayItem(msgs, i);
            m[i].role = cJSON_GetObjectItem(e, "role")->valuestring;
            m[i].content = cJSON_GetObjectItem(e, "content")->valuestring;
        }
        uint32_t flags = cJSON_IsTrue(cJSON_GetObjectItem(c, "no_think")) ? MOECL_CHAT_NO_THINK : 0;
        for (int pass = 0; pass < 2; pass++) {
            /* pass 1: the format found in the tokenizer's own template, or in the template named fmt */
            const cJSON *fmt_template = cJSON_GetObjectItem(templates, fmt);
            if (pass == 1 && !(detected && !strcmp(detected, fmt)) && !fmt_template) break;
            if (pass == 1 && fmt_template) mut->chat_template = fmt_template->valuestring;
            const char *name = pass ? NULL : fmt;
            int32_t cnt = 0;
            moecl_status st = moecl_chat_tokenize_format(tok, name, m, nm, flags, NULL, 0, &cnt);
            CHECKF(st == MOECL_OK, "chat %s: %s", fmt, moecl_last_error());
            int32_t *ids = malloc(((size_t)cnt + 1) * sizeof *ids);
            st = moecl_chat_tokenize_format(tok, name, m, nm, flags, ids, cnt, &cnt);
            const cJSON *ref = cJSON_GetObjectItem(c, "ids");
            if (st || !ids_equal(ids, cnt, ref)) {
                if (n_bad++ < 5) {
                    fprintf(stderr, "chat %s differs:\n%s\n", fmt, cJSON_GetObjectItem(c, "text")->valuestring);
                    print_diff(ids, cnt, ref);
                }
            }
            mut->chat_template = own;
            if (pass == 0) n_turns += check_turn_by_turn(tok, fmt, m, nm, ref);
            n += 1;
            n_auto += pass;
            free(ids);
        }
        free(m);
    }
    CHECKF(n_bad == 0, "%d of %d conversations differ from transformers' apply_chat_template", n_bad, n);
    CHECKF(cJSON_GetArraySize(chats) == 0 || n_auto > 0, "the tokenizer's own template (%s) was recognised",
           detected ? detected : moecl_last_error());
    fprintf(stderr, "chat: %d conversations (%d through a recognised template; the tokenizer's own: %s), %d differ; "
            "%d built turn by turn\n", n, n_auto, detected ? detected : "(none)", n_bad, n_turns);
    CHECK(n_turns > 0 || cJSON_GetArraySize(chats) == 0);

    /* Clear errors: an unknown format name, an unknown role. */
    moecl_chat_message bad[] = {{"user", "hi"}, {"tool", "x"}};
    int32_t cnt;
    CHECK(moecl_chat_tokenize_format(tok, "nonesuch", bad, 1, 0, NULL, 0, &cnt) == MOECL_ERR_INVALID_ARG);
    CHECK(strstr(moecl_last_error(), "nonesuch") != NULL);
    check_lists_formats("unknown format");
    CHECK(moecl_chat_tokenize_format(tok, "chatml", bad, 2, 0, NULL, 0, &cnt) == MOECL_ERR_INVALID_ARG ||
          moecl_chat_tokenize_format(tok, "chatml", bad, 1, 0, NULL, 0, &cnt) == MOECL_ERR_UNSUPPORTED);
}

/* A template moecl does not know, and no template at all, are errors that say so. */
static void check_unknown_template(const moecl_tokenizer *tok) {
    moecl_tokenizer *mut = (moecl_tokenizer *)tok;
    char *saved = mut->chat_template;
    char other[] = "{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>{% endfor %}";
    mut->chat_template = other;
    CHECK(moecl_chat_format(tok) == NULL);
    CHECK(strstr(moecl_last_error(), "not one moecl recognises") != NULL);
    check_lists_formats("unrecognised template");
    moecl_chat_message m[] = {{"user", "hi"}};
    int32_t cnt;
    CHECK(moecl_chat_tokenize_format(tok, NULL, m, 1, 0, NULL, 0, &cnt) == MOECL_ERR_UNSUPPORTED);
    mut->chat_template = NULL;
    CHECK(moecl_chat_format(tok) == NULL);
    CHECK(strstr(moecl_last_error(), "no chat template") != NULL);
    check_lists_formats("no template");
    mut->chat_template = saved;
}

/* A GGUF naming a pre-tokenizer moecl does not know is refused by name, and
 * a tokenizer whose pre-tokenizer has no llama.cpp name is not written. */
static void check_pre_errors(moecl_tokenizer *tok, const char *out_gguf) {
    char *saved = tok->pre_name;
    char bogus[] = "nonesuch-pre";
    tok->pre_name = bogus;
    mc_gguf_writer *w = NULL;
    CHECK(mc_gguf_writer_new(out_gguf, 32, &w) == MOECL_OK);
    CHECK(mc_tokenizer_write_gguf(tok, w) == MOECL_OK);
    CHECK(mc_gguf_writer_finish(w) == MOECL_OK);
    mc_gguf_writer_free(w);
    moecl_tokenizer *g = NULL;
    CHECK(moecl_tokenizer_load(out_gguf, &g) == MOECL_ERR_UNSUPPORTED && !g);
    CHECK(strstr(moecl_last_error(), "\"nonesuch-pre\" is not a pre-tokenizer moecl knows") != NULL);
    tok->pre_name = NULL;
    CHECK(mc_gguf_writer_new(out_gguf, 32, &w) == MOECL_OK);
    CHECK(mc_tokenizer_write_gguf(tok, w) == MOECL_ERR_UNSUPPORTED);
    CHECK(strstr(moecl_last_error(), "none llama.cpp names") != NULL);
    mc_gguf_writer_free(w);
    tok->pre_name = saved;
    remove(out_gguf);
}

/* The tokenizer metadata of moecl's GGUF equals that of REF (written by PyPI
 * gguf as llama.cpp's converter writes it, tools/gguf_vocab.py): the same
 * model, pre-tokenizer, tokens, token types, merges and special ids; past
 * REF's tokens only the "[PAD<id>]" placeholders (UNUSED) of a model's
 * larger vocab_size. */
static void check_like(const char *ours_path, const char *ref_path) {
    mc_gguf *a = NULL, *b = NULL;
    CHECKF(mc_gguf_open(ours_path, &a) == MOECL_OK && mc_gguf_open(ref_path, &b) == MOECL_OK, "open: %s",
           moecl_last_error());
    if (!a || !b) goto done;
    static const char *const strs[] = {"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template"};
    for (size_t k = 0; k < sizeof strs / sizeof *strs; k++) {
        const mc_gguf_kv *x = mc_gguf_find_kv(a, strs[k]), *y = mc_gguf_find_kv(b, strs[k]);
        CHECKF((x == NULL) == (y == NULL), "%s present in both or neither", strs[k]);
        if (x && y)
            CHECKF(x->type == MC_GGUF_STRING && y->type == MC_GGUF_STRING && x->strs[0].len == y->strs[0].len &&
                       !memcmp(x->strs[0].ptr, y->strs[0].ptr, x->strs[0].len),
                   "%s equal", strs[k]);
    }
    static const char *const ids[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                      "tokenizer.ggml.padding_token_id"};
    for (size_t k = 0; k < sizeof ids / sizeof *ids; k++) {
        int64_t x = -1, y = -1;
        CHECK(mc_gguf_get_int(a, ids[k], false, &x) == MOECL_OK && mc_gguf_get_int(b, ids[k], false, &y) == MOECL_OK);
        CHECKF(x == y, "%s: moecl %lld, reference %lld", ids[k], (long long)x, (long long)y);
    }
    const mc_gguf_kv *ta = NULL, *tb = NULL, *ya = NULL, *yb = NULL, *ma = NULL, *mb = NULL;
    CHECK(mc_gguf_get_arr(a, "tokenizer.ggml.tokens", true, MC_GGUF_STRING, &ta) == MOECL_OK &&
          mc_gguf_get_arr(b, "tokenizer.ggml.tokens", true, MC_GGUF_STRING, &tb) == MOECL_OK &&
          mc_gguf_get_arr(a, "tokenizer.ggml.token_type", true, MC_GGUF_INT32, &ya) == MOECL_OK &&
          mc_gguf_get_arr(b, "tokenizer.ggml.token_type", true, MC_GGUF_INT32, &yb) == MOECL_OK &&
          mc_gguf_get_arr(a, "tokenizer.ggml.merges", true, MC_GGUF_STRING, &ma) == MOECL_OK &&
          mc_gguf_get_arr(b, "tokenizer.ggml.merges", true, MC_GGUF_STRING, &mb) == MOECL_OK);
    if (!ta || !tb || !ya || !yb || !ma || !mb) goto done;
    CHECK(ta->n >= tb->n && ya->n == ta->n && yb->n == tb->n);
    int n_bad = 0;
    for (uint64_t i = 0; i < ta->n && i < ya->n && n_bad < 5; i++) {
        char pad[32];
        int pl = snprintf(pad, sizeof pad, "[PAD%llu]", (unsigned long long)i);
        const mc_gguf_str *x = &ta->strs[i], *y = i < tb->n ? &tb->strs[i] : NULL;
        bool same_text = y ? x->len == y->len && !memcmp(x->ptr, y->ptr, x->len)
                           : x->len == (uint64_t)pl && !memcmp(x->ptr, pad, (size_t)pl);
        int64_t want_type = i < yb->n ? mc_gguf_arr_int(yb, i) : 5 /* UNUSED */;
        if (!same_text || mc_gguf_arr_int(ya, i) != want_type) {
            n_bad++;
            CHECKF(false, "token %llu: \"%.*s\" type %lld, reference \"%.*s\" type %lld", (unsigned long long)i,
                   (int)x->len, x->ptr, (long long)mc_gguf_arr_int(ya, i), y ? (int)y->len : pl, y ? y->ptr : pad,
                   (long long)want_type);
        }
    }
    CHECKF(ma->n == mb->n, "merges: %llu, reference %llu", (unsigned long long)ma->n, (unsigned long long)mb->n);
    for (uint64_t i = 0; i < ma->n && i < mb->n; i++)
        if (ma->strs[i].len != mb->strs[i].len || memcmp(ma->strs[i].ptr, mb->strs[i].ptr, ma->strs[i].len)) {
            CHECKF(false, "merge %llu differs from the reference", (unsigned long long)i);
            break;
        }
    fprintf(stderr, "moecl's GGUF against %s: %llu tokens (%llu past it), %llu merges compared\n", ref_path,
            (unsigned long long)ta->n, (unsigned long long)(ta->n - tb->n), (unsigned long long)ma->n);
done:
    mc_gguf_close(a);
    mc_gguf_close(b);
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    if (argc != 3 && !(argc == 5 && !strcmp(argv[3], "--moecl-gguf")) &&
        !(argc == 7 && !strcmp(argv[3], "--moecl-gguf") && !strcmp(argv[5], "--like"))) {
        fprintf(stderr, "usage: test_tokenizer_bpe TOKENIZER REFS [--moecl-gguf OUT.gguf [--like REF.gguf]]\n");
        return 2;
    }
    const char *path = argv[1], *refs_path = argv[2], *out_gguf = argc >= 5 ? argv[4] : NULL;
    const char *like = argc == 7 ? argv[6] : NULL;
    struct stat sb;
    if (stat(path, &sb) != 0 || stat(refs_path, &sb) != 0) {
        char why[600];
        snprintf(why, sizeof why, "%s or %s is absent (tools/make_bpe_refs.py fetch / refs make them)", path,
                 refs_path);
        return t_skip("test_tokenizer_bpe", why);
    }
    cJSON *refs = NULL;
    if (mc_json_load_file(refs_path, (size_t)64 << 20, &refs) != MOECL_OK) {
        fprintf(stderr, "test_tokenizer_bpe: %s\n", moecl_last_error());
        return 1;
    }
    moecl_tokenizer *tok = NULL;
    moecl_status st = moecl_tokenizer_load(path, &tok);
    CHECKF(st == MOECL_OK, "load %s: %s", path, moecl_last_error());
    if (!tok) return t_done("test_tokenizer_bpe");
    CHECK(tok->byte_level);
    if (out_gguf) check_pre_errors(tok, out_gguf);
    if (out_gguf) { /* moecl's writer, read back */
        mc_gguf_writer *w = NULL;
        CHECK(mc_gguf_writer_new(out_gguf, 32, &w) == MOECL_OK);
        /* padded past the tokenizer to a model's vocab_size, as moecl quantize writes it */
        CHECKF(mc_tokenizer_write_gguf_n(tok, w, tok->n_vocab + 7) == MOECL_OK, "write: %s", moecl_last_error());
        CHECK(mc_gguf_writer_finish(w) == MOECL_OK);
        mc_gguf_writer_free(w);
        if (like) check_like(out_gguf, like);
        moecl_tokenizer *g = NULL;
        CHECKF(moecl_tokenizer_load(out_gguf, &g) == MOECL_OK, "reload %s: %s", out_gguf, moecl_last_error());
        if (g) {
            CHECK(g->n_vocab == tok->n_vocab + 7 && g->tokens[tok->n_vocab + 6].kind == MC_TOK_UNUSED &&
                  g->tokens[tok->n_vocab].piece_len == 0);
            CHECK(g->bos_id == tok->bos_id && g->eos_id == tok->eos_id &&
                  g->pad_id == tok->pad_id && g->byte_level && !strcmp(g->pre_name, tok->pre_name));
            CHECK((g->chat_template == NULL) == (tok->chat_template == NULL));
            moecl_tokenizer_free(tok);
            tok = g;
        }
    }
    const cJSON *cases = cJSON_GetObjectItem(refs, "cases");
    CHECK(cJSON_GetArraySize(cases) >= 300);
    check_corpus(tok, cases, NULL, true, "reference");
    check_special(tok, cJSON_GetObjectItem(refs, "special"));
    const cJSON *chats = cJSON_GetObjectItem(refs, "chat");
    if (chats) {
        check_chat(tok, chats, cJSON_GetObjectItem(refs, "chat_templates"));
        check_unknown_template(tok);
    }
    /* The named pre-tokenizers: once, in the run on the tokenizer.json directory. */
    const cJSON *variants = cJSON_GetObjectItem(refs, "variants");
    if (variants && !out_gguf && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s/moecl_variant_%d.gguf", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
                 (int)getpid());
        check_variants(path, cases, variants, tmp);
    }
    moecl_tokenizer_free(tok);
    cJSON_Delete(refs);
    return t_done("test_tokenizer_bpe");
}
