/*
 * tokenizer_load.c - reading a Hugging Face tokenizer.json (and the
 * tokenizer_config.json / generation_config.json beside it) into a
 * moecl_tokenizer, strictly: anything moecl would tokenize differently from
 * the reference is refused with a message naming the field.
 */
#include "tokenizer/tokenizer.h"
#include "formats/json.h"
#include "util/fileio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


/* ------------------------------------------------------------------------ */
/* Hash tables                                                              */
/* ------------------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

int32_t mc_tokenizer_find(const moecl_tokenizer *tok, const char *s, size_t len) {
    for (size_t i = hash_bytes(s, len) & tok->str_mask;; i = (i + 1) & tok->str_mask) {
        int32_t id = tok->str_table[i];
        if (id < 0) return -1;
        const mc_token *t = &tok->tokens[id];
        if (t->len == len && memcmp(t->text, s, len) == 0) return id;
    }
}

/* Insert id under its string; returns the id already there, or -1. */
static int32_t str_insert(moecl_tokenizer *tok, int32_t id) {
    const mc_token *n = &tok->tokens[id];
    for (size_t i = hash_bytes(n->text, n->len) & tok->str_mask;; i = (i + 1) & tok->str_mask) {
        int32_t o = tok->str_table[i];
        if (o < 0) {
            tok->str_table[i] = id;
            return -1;
        }
        if (tok->tokens[o].len == n->len && memcmp(tok->tokens[o].text, n->text, n->len) == 0) return o;
    }
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* ------------------------------------------------------------------------ */
/* Small JSON helpers                                                       */
/* ------------------------------------------------------------------------ */

static const char *type_name(const cJSON *j) {
    if (!j) return "missing";
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsObject(j)) return "an object";
    return "invalid";
}

static bool is_int(const cJSON *j, double lo, double hi) {
    if (!cJSON_IsNumber(j)) return false;
    const double v = j->valuedouble;
    /* The range before the cast: converting a value outside int64_t (1e400
     * parses as inf; NaN fails both tests) is undefined behaviour. */
    return v >= lo && v <= hi && v == (double)(int64_t)v;
}

/* A cJSON string as bytes. cJSON cuts strings at an escaped NUL (\u0000),
 * which no tokenizer vocabulary needs. */
static const char *jstr(const cJSON *j) { return cJSON_IsString(j) ? j->valuestring : NULL; }

static char *dup_str(const char *s) {
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

/* ------------------------------------------------------------------------ */
/* Pieces: how each token reads back as text                                */
/* ------------------------------------------------------------------------ */

/* HF's ByteLevel decoder: a token all of whose characters are in GPT-2's
 * map reads back as their bytes (at most as many as its text's); one with
 * any other character (an added token like "<|im_end|>" or a run of plain
 * spaces) as its text. */
static bool byte_level_piece(const mc_token *t, char *p, size_t *n) {
    const uint8_t *s = (const uint8_t *)t->text;
    size_t k = 0;
    for (uint32_t i = 0; i < t->len;) {
        int l = mc_utf8_len(s + i, t->len - i);
        uint32_t cp = 0;
        if (l == 1) cp = s[i];
        else if (l == 2) cp = ((uint32_t)(s[i] & 0x1F) << 6) | (s[i + 1] & 0x3F);
        int b = l == 1 || l == 2 ? mc_bl_char_byte(cp) : -1;
        if (b < 0) return false;
        p[k++] = (char)b;
        i += (uint32_t)l;
    }
    *n = k;
    return true;
}

static moecl_status make_piece(moecl_tokenizer *tok, mc_token *t) {
    size_t cap = t->len + 1;
    char *p = malloc(cap);
    if (!p) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    size_t n = 0;
    if (tok->dec_byte_level && t->kind != MC_TOK_UNUSED && byte_level_piece(t, p, &n)) {
        /* each character mapped back to its byte */
    } else if (t->kind == MC_TOK_BYTE && tok->byte_fallback) {
        p[n++] = (char)t->byte;
    } else if (t->kind != MC_TOK_NORMAL || !tok->dec_metaspace) {
        memcpy(p, t->text, t->len);
        n = t->len;
    } else {
        size_t rl = strlen(tok->dec_replacement);
        for (size_t i = 0; i < t->len;) {
            if (rl && i + rl <= t->len && memcmp(t->text + i, tok->dec_replacement, rl) == 0) {
                p[n++] = ' ';
                i += rl;
            } else {
                p[n++] = t->text[i++];
            }
        }
    }
    p[n] = '\0';
    t->piece = p;
    t->piece_len = (uint32_t)n;
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* normalizer, pre_tokenizer, decoder                                       */
/* ------------------------------------------------------------------------ */

static moecl_status add_step(moecl_tokenizer *tok, mc_norm_step s) {
    mc_norm_step *n = realloc(tok->norm, (size_t)(tok->n_norm + 1) * sizeof *n);
    if (!n) {
        free(s.a);
        free(s.b);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    }
    tok->norm = n;
    tok->norm[tok->n_norm++] = s;
    return MOECL_OK;
}

/* A Replace pattern: {"String": "x"} (a Regex pattern is not supported). */
static const char *replace_pattern(const cJSON *j) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "pattern");
    return jstr(cJSON_GetObjectItemCaseSensitive(p, "String"));
}

static moecl_status parse_normalizer(moecl_tokenizer *tok, const cJSON *j, const char *where) {
    if (!j || cJSON_IsNull(j)) return MOECL_OK;
    const char *type = jstr(cJSON_GetObjectItemCaseSensitive(j, "type"));
    if (!cJSON_IsObject(j) || !type)
        return mc_error(MOECL_ERR_FORMAT, "%s: %s must be null or an object with a \"type\"", tok->path, where);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "normalizers");
        if (!cJSON_IsArray(list))
            return mc_error(MOECL_ERR_FORMAT, "%s: %s.normalizers is %s, expected an array", tok->path, where,
                            type_name(list));
        const cJSON *e;
        moecl_status st;
        cJSON_ArrayForEach(e, list) if ((st = parse_normalizer(tok, e, where))) return st;
        return MOECL_OK;
    }
    if (!strcmp(type, "NFC")) {
        tok->nfc = true;
        return MOECL_OK;
    }
    if (!strcmp(type, "Prepend")) {
        const char *p = jstr(cJSON_GetObjectItemCaseSensitive(j, "prepend"));
        if (!p) return mc_error(MOECL_ERR_FORMAT, "%s: %s Prepend has no \"prepend\" string", tok->path, where);
        mc_norm_step s = {.op = MC_NORM_PREPEND, .a = dup_str(p)};
        if (!s.a) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
        return add_step(tok, s);
    }
    if (!strcmp(type, "Replace")) {
        const char *pat = replace_pattern(j), *content = jstr(cJSON_GetObjectItemCaseSensitive(j, "content"));
        if (!pat || !content || !*pat)
            return mc_error(MOECL_ERR_UNSUPPORTED,
                            "%s: %s Replace needs a non-empty {\"String\": ...} pattern and a content string "
                            "(regex patterns are not supported)", tok->path, where);
        mc_norm_step s = {.op = MC_NORM_REPLACE, .a = dup_str(pat), .b = dup_str(content)};
        if (!s.a || !s.b) {
            free(s.a);
            free(s.b);
            return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
        }
        return add_step(tok, s);
    }
    return mc_error(MOECL_ERR_UNSUPPORTED, "%s: %s type \"%s\" is not supported (moecl reads Llama/Mistral-style "
                    "tokenizers: Prepend, Replace, Metaspace; byte-level ones: NFC)", tok->path, where, type);
}

/* Metaspace's prepend_scheme, or the older add_prefix_space boolean. */
static moecl_status metaspace_scheme(moecl_tokenizer *tok, const cJSON *j, const char *where, int *scheme) {
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(j, "prepend_scheme");
    const cJSON *ap = cJSON_GetObjectItemCaseSensitive(j, "add_prefix_space");
    if (jstr(ps)) {
        if (!strcmp(ps->valuestring, "never")) *scheme = 0;
        else if (!strcmp(ps->valuestring, "always")) *scheme = 1;
        else if (!strcmp(ps->valuestring, "first")) *scheme = 2;
        else return mc_error(MOECL_ERR_FORMAT, "%s: %s prepend_scheme \"%s\" is not never/always/first", tok->path,
                             where, ps->valuestring);
    } else if (cJSON_IsBool(ap)) {
        *scheme = cJSON_IsTrue(ap) ? 1 : 0;
    } else {
        *scheme = 1;
    }
    return MOECL_OK;
}

/* One regex split (HF "Split", or the regex of "ByteLevel"/"Digits"). */
static moecl_status add_split(moecl_tokenizer *tok, const char *pattern, bool literal, int behavior, bool invert) {
    mc_pretok_split *n = realloc(tok->splits, (size_t)(tok->n_splits + 1) * sizeof *n);
    if (!n) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    tok->splits = n;
    mc_pretok_split *s = &tok->splits[tok->n_splits];
    *s = (mc_pretok_split){.literal = literal, .invert = invert, .behavior = behavior, .pattern = dup_str(pattern)};
    if (!s->pattern) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    tok->n_splits++;
    return mc_pretok_compile(tok->path, s);
}

static moecl_status parse_split(moecl_tokenizer *tok, const cJSON *j) {
    static const char *const behaviors[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext",
                                            "Contiguous"};
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(j, "pattern");
    const char *re = jstr(cJSON_GetObjectItemCaseSensitive(pat, "Regex"));
    const char *str = jstr(cJSON_GetObjectItemCaseSensitive(pat, "String"));
    const char *beh = jstr(cJSON_GetObjectItemCaseSensitive(j, "behavior"));
    if ((!re && !str) || !beh)
        return mc_error(MOECL_ERR_FORMAT, "%s: pre_tokenizer Split needs a {\"Regex\"} or {\"String\"} pattern and "
                        "a behavior", tok->path);
    int b = -1;
    for (int i = 0; i < 5; i++)
        if (!strcmp(beh, behaviors[i])) b = i;
    if (b < 0)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: pre_tokenizer Split behavior \"%s\" is not supported", tok->path,
                        beh);
    if (tok->byte_level)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: pre_tokenizer: a Split after ByteLevel is not supported",
                        tok->path);
    return add_split(tok, re ? re : str, !re, b, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "invert")));
}

/* HF's ByteLevel regex (GPT-2's), used when use_regex is true. */
static const char gpt2_regex[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static moecl_status parse_byte_level(moecl_tokenizer *tok, const cJSON *j) {
    if (tok->byte_level) return mc_error(MOECL_ERR_UNSUPPORTED, "%s: pre_tokenizer: ByteLevel twice", tok->path);
    tok->byte_level = true;
    const cJSON *ap = cJSON_GetObjectItemCaseSensitive(j, "add_prefix_space");
    const cJSON *ur = cJSON_GetObjectItemCaseSensitive(j, "use_regex");
    tok->bl_prefix_space = cJSON_IsTrue(ap);
    /* HF prepends the space to every piece earlier splits made; moecl only
     * to the whole text, so ByteLevel must come first to add one. */
    if (tok->bl_prefix_space && tok->n_splits)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: pre_tokenizer: ByteLevel with add_prefix_space after a Split is "
                        "not supported", tok->path);
    if (!ur || cJSON_IsTrue(ur)) return add_split(tok, gpt2_regex, false, MC_SPLIT_ISOLATED, false);
    return MOECL_OK;
}

static moecl_status parse_pre_tokenizer(moecl_tokenizer *tok, const cJSON *j, bool in_sequence) {
    if (!j || cJSON_IsNull(j)) return MOECL_OK;
    const char *type = jstr(cJSON_GetObjectItemCaseSensitive(j, "type"));
    if (!cJSON_IsObject(j) || !type)
        return mc_error(MOECL_ERR_FORMAT, "%s: pre_tokenizer must be null or an object with a \"type\"", tok->path);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "pretokenizers"), *e;
        if (!cJSON_IsArray(list))
            return mc_error(MOECL_ERR_FORMAT, "%s: pre_tokenizer.pretokenizers is %s, expected an array", tok->path,
                            type_name(list));
        if (cJSON_GetArraySize(list) == 1) return parse_pre_tokenizer(tok, cJSON_GetArrayItem(list, 0), false);
        moecl_status st;
        cJSON_ArrayForEach(e, list) if ((st = parse_pre_tokenizer(tok, e, true))) return st;
        return MOECL_OK;
    }
    if (!strcmp(type, "Split")) return parse_split(tok, j);
    if (!strcmp(type, "ByteLevel")) return parse_byte_level(tok, j);
    if (!strcmp(type, "Digits")) { /* Rust's char::is_numeric is \p{N} */
        bool one = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "individual_digits"));
        return add_split(tok, one ? "\\p{N}" : "\\p{N}+", false, MC_SPLIT_ISOLATED, false);
    }
    if (strcmp(type, "Metaspace") || in_sequence)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: pre_tokenizer type \"%s\" is not supported (moecl reads "
                        "SentencePiece-style BPE tokenizers: Metaspace or none; and byte-level ones: ByteLevel, "
                        "Split, Digits)", tok->path, type);
    const char *rep = jstr(cJSON_GetObjectItemCaseSensitive(j, "replacement"));
    if (!rep || !*rep) return mc_error(MOECL_ERR_FORMAT, "%s: pre_tokenizer Metaspace has no replacement", tok->path);
    mc_norm_step s = {.op = MC_NORM_METASPACE};
    moecl_status st = metaspace_scheme(tok, j, "pre_tokenizer", &s.prepend_scheme);
    if (st) return st;
    const cJSON *split = cJSON_GetObjectItemCaseSensitive(j, "split");
    s.split = split ? cJSON_IsTrue(split) : true;
    if (!(s.a = dup_str(rep))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    return add_step(tok, s);
}

static moecl_status set_replacement(moecl_tokenizer *tok, const char *rep) {
    free(tok->dec_replacement);
    tok->dec_metaspace = true;
    if (!(tok->dec_replacement = dup_str(rep))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    return MOECL_OK;
}

static moecl_status parse_decoder(moecl_tokenizer *tok, const cJSON *j) {
    if (!j || cJSON_IsNull(j)) return MOECL_OK;
    const char *type = jstr(cJSON_GetObjectItemCaseSensitive(j, "type"));
    if (!cJSON_IsObject(j) || !type)
        return mc_error(MOECL_ERR_FORMAT, "%s: decoder must be null or an object with a \"type\"", tok->path);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "decoders");
        if (!cJSON_IsArray(list))
            return mc_error(MOECL_ERR_FORMAT, "%s: decoder.decoders is %s, expected an array", tok->path,
                            type_name(list));
        const cJSON *e;
        moecl_status st;
        cJSON_ArrayForEach(e, list) if ((st = parse_decoder(tok, e))) return st;
        return MOECL_OK;
    }
    if (!strcmp(type, "ByteFallback") || !strcmp(type, "Fuse")) return MOECL_OK;
    if (!strcmp(type, "ByteLevel")) {
        tok->dec_byte_level = true;
        return MOECL_OK;
    }
    if (!strcmp(type, "Replace")) {
        const char *pat = replace_pattern(j), *content = jstr(cJSON_GetObjectItemCaseSensitive(j, "content"));
        if (!pat || !content || strcmp(content, " "))
            return mc_error(MOECL_ERR_UNSUPPORTED, "%s: decoder Replace: only {\"String\": \"▁\"} -> \" \" is "
                            "supported", tok->path);
        return set_replacement(tok, pat);
    }
    if (!strcmp(type, "Strip")) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "content");
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "start"), *b = cJSON_GetObjectItemCaseSensitive(j, "stop");
        if (!jstr(c) || strcmp(c->valuestring, " ") || !is_int(a, 0, 64) || !is_int(b, 0, 0))
            return mc_error(MOECL_ERR_UNSUPPORTED, "%s: decoder Strip: only content \" \" with start N, stop 0 is "
                            "supported", tok->path);
        tok->dec_strip_left = (int)a->valuedouble;
        return MOECL_OK;
    }
    if (!strcmp(type, "Metaspace")) {
        const char *rep = jstr(cJSON_GetObjectItemCaseSensitive(j, "replacement"));
        if (!rep || !*rep) return mc_error(MOECL_ERR_FORMAT, "%s: decoder Metaspace has no replacement", tok->path);
        int scheme;
        moecl_status st = metaspace_scheme(tok, j, "decoder", &scheme);
        if (st) return st;
        tok->dec_strip_left = scheme ? 1 : 0;
        return set_replacement(tok, rep);
    }
    return mc_error(MOECL_ERR_UNSUPPORTED, "%s: decoder type \"%s\" is not supported (moecl reads Llama/Mistral-"
                    "style tokenizers)", tok->path, type);
}

/* ------------------------------------------------------------------------ */
/* model: vocabulary and merges                                             */
/* ------------------------------------------------------------------------ */

static bool byte_token_value(const char *s, size_t len, uint8_t *out) {
    static const char hex[] = "0123456789ABCDEF";
    if (len != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return false;
    const char *h = strchr(hex, s[3]), *l = strchr(hex, s[4]);
    if (!h || !l || !s[3] || !s[4]) return false;
    *out = (uint8_t)((h - hex) * 16 + (l - hex));
    return true;
}

static moecl_status pair_insert(moecl_tokenizer *tok, int32_t left, int32_t right, int32_t rank, int32_t result) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    for (size_t i = hash_u64(key) & tok->pair_mask;; i = (i + 1) & tok->pair_mask) {
        mc_pair_slot *s = &tok->pairs[i];
        if (s->key == UINT64_MAX) {
            s->key = key;
            s->rank = rank;
            s->result = result;
            tok->n_merges++;
            return MOECL_OK;
        }
        if (s->key == key) return MOECL_OK; /* a repeated merge: the first (best) rank stands, as in HF */
    }
}

/* Split merge e (a "left right" string or a ["left", "right"] array). */
static bool merge_parts(const cJSON *e, const char **l, size_t *ll, const char **r, size_t *rl) {
    if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && jstr(cJSON_GetArrayItem(e, 0)) &&
        jstr(cJSON_GetArrayItem(e, 1))) {
        *l = cJSON_GetArrayItem(e, 0)->valuestring;
        *r = cJSON_GetArrayItem(e, 1)->valuestring;
        *ll = strlen(*l);
        *rl = strlen(*r);
        return true;
    }
    const char *s = jstr(e);
    if (!s) return false;
    const char *sp = strchr(s, ' ');
    if (!sp || strchr(sp + 1, ' ')) return false;
    *l = s;
    *ll = (size_t)(sp - s);
    *r = sp + 1;
    *rl = strlen(sp + 1);
    return true;
}

static moecl_status parse_merges(moecl_tokenizer *tok, const cJSON *merges) {
    int n = cJSON_GetArraySize(merges);
    if ((size_t)n > (size_t)INT32_MAX / 4) return mc_error(MOECL_ERR_FORMAT, "%s: too many merges", tok->path);
    tok->pair_mask = pow2_at_least((size_t)n * 2 + 16) - 1;
    if (!(tok->pairs = malloc((tok->pair_mask + 1) * sizeof *tok->pairs)))
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    for (size_t i = 0; i <= tok->pair_mask; i++) tok->pairs[i].key = UINT64_MAX;
    const cJSON *e;
    int32_t rank = 0;
    char *buf = NULL;
    size_t cap = 0;
    moecl_status st = MOECL_OK;
    cJSON_ArrayForEach(e, merges) {
        const char *l, *r;
        size_t ll, rl;
        if (!merge_parts(e, &l, &ll, &r, &rl)) {
            st = mc_error(MOECL_ERR_FORMAT, "%s: model.merges[%d] is not \"left right\" or [\"left\", \"right\"]",
                          tok->path, rank);
            break;
        }
        int32_t a = mc_tokenizer_find(tok, l, ll), b = mc_tokenizer_find(tok, r, rl);
        if (a < 0 || b < 0) {
            st = mc_error(MOECL_ERR_FORMAT, "%s: model.merges[%d] names \"%.*s\", which is not in the vocabulary",
                          tok->path, rank, (int)(a < 0 ? ll : rl), a < 0 ? l : r);
            break;
        }
        if (ll + rl + 1 > cap) {
            cap = (ll + rl + 1) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
                break;
            }
            buf = nb;
        }
        memcpy(buf, l, ll);
        memcpy(buf + ll, r, rl);
        int32_t c = mc_tokenizer_find(tok, buf, ll + rl);
        if (c < 0) {
            st = mc_error(MOECL_ERR_FORMAT, "%s: model.merges[%d] makes \"%.*s\", which is not in the vocabulary",
                          tok->path, rank, (int)(ll + rl), buf);
            break;
        }
        if ((st = pair_insert(tok, a, b, rank, c))) break;
        rank++;
    }
    free(buf);
    return st;
}

static moecl_status parse_model(moecl_tokenizer *tok, const cJSON *model, const cJSON *added) {
    const char *P = tok->path;
    if (!cJSON_IsObject(model)) return mc_error(MOECL_ERR_FORMAT, "%s: \"model\" is %s, expected an object", P,
                                                type_name(model));
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (type && !jstr(type))
        return mc_error(MOECL_ERR_FORMAT, "%s: model.type is %s, expected a string", P, type_name(type));
    if (type && strcmp(type->valuestring, "BPE"))
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: model type \"%s\" is not supported (moecl reads BPE tokenizers)",
                        P, type->valuestring);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab))
        return mc_error(MOECL_ERR_FORMAT, "%s: model.vocab is %s, expected an object", P, type_name(vocab));
    if (!type && !merges) return mc_error(MOECL_ERR_UNSUPPORTED, "%s: model has no type and no merges", P);
    if (!cJSON_IsArray(merges))
        return mc_error(MOECL_ERR_FORMAT, "%s: model.merges is %s, expected an array", P, type_name(merges));
    const char *unsupported[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(model, unsupported[i]);
        if (x && !cJSON_IsNull(x) && !(jstr(x) && !*x->valuestring))
            return mc_error(MOECL_ERR_UNSUPPORTED, "%s: model.%s is not supported", P, unsupported[i]);
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: BPE dropout is not supported", P);
    tok->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));
    tok->byte_fallback = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
    tok->fuse_unk = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "fuse_unk"));

    /* The id space: the vocabulary and the added tokens. */
    int64_t max_id = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if (!is_int(e, 0, (double)(1 << 24)))
            return mc_error(MOECL_ERR_FORMAT, "%s: model.vocab[\"%s\"] is not an id in 0..16777216", P, e->string);
        if ((int64_t)e->valuedouble > max_id) max_id = (int64_t)e->valuedouble;
    }
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        return mc_error(MOECL_ERR_FORMAT, "%s: added_tokens is %s, expected an array", P, type_name(added));
    int ai = 0;
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!is_int(id, 0, (double)(1 << 24)) || !jstr(content) || !*content->valuestring)
            return mc_error(MOECL_ERR_FORMAT, "%s: added_tokens[%d] needs an integer \"id\" and a non-empty "
                            "\"content\" string", P, ai);
        if ((int64_t)id->valuedouble > max_id) max_id = (int64_t)id->valuedouble;
        ai++;
    }
    if (max_id < 0) return mc_error(MOECL_ERR_FORMAT, "%s: the vocabulary is empty", P);
    /* Every id up to the largest gets a slot (the gaps unused), so a large id
     * in a small file would cost hundreds of MB: real vocabularies number
     * their tokens densely, so the id space may be at most twice the tokens
     * named, plus 1024. */
    const int64_t named = (int64_t)cJSON_GetArraySize(vocab) + ai;
    if (max_id + 1 > 2 * named + 1024)
        return mc_error(MOECL_ERR_FORMAT, "%s: the largest id is %lld but only %lld tokens are named (model.vocab "
                        "and added_tokens): ids may run to at most twice the tokens, plus 1024", P,
                        (long long)max_id, (long long)named);
    tok->n_vocab = (int32_t)max_id + 1;
    if (!(tok->tokens = calloc((size_t)tok->n_vocab, sizeof *tok->tokens)))
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
    tok->str_mask = pow2_at_least((size_t)tok->n_vocab * 2) - 1;
    if (!(tok->str_table = malloc((tok->str_mask + 1) * sizeof *tok->str_table)))
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
    memset(tok->str_table, 0xff, (tok->str_mask + 1) * sizeof *tok->str_table);

    cJSON_ArrayForEach(e, vocab) {
        int32_t id = (int32_t)e->valuedouble;
        mc_token *t = &tok->tokens[id];
        if (t->text)
            return mc_error(MOECL_ERR_FORMAT, "%s: model.vocab: id %d is given to both \"%s\" and \"%s\"", P, id,
                            t->text, e->string);
        if (!(t->text = dup_str(e->string))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
        t->len = (uint32_t)strlen(t->text);
        if (byte_token_value(t->text, t->len, &t->byte)) t->kind = MC_TOK_BYTE;
        if (str_insert(tok, id) >= 0)
            return mc_error(MOECL_ERR_FORMAT, "%s: model.vocab: \"%s\" appears twice", P, t->text);
    }
    cJSON_ArrayForEach(e, added) {
        int32_t id = (int32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        const char *content = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
        bool special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special"));
        const cJSON *norm = cJSON_GetObjectItemCaseSensitive(e, "normalized");
        const char *flags[] = {"lstrip", "rstrip", "single_word"};
        for (int f = 0; f < 3; f++)
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, flags[f])))
                return mc_error(MOECL_ERR_UNSUPPORTED, "%s: added token \"%s\": %s is not supported", P, content,
                                flags[f]);
        mc_token *t = &tok->tokens[id];
        if (t->text && strcmp(t->text, content))
            return mc_error(MOECL_ERR_FORMAT, "%s: added token \"%s\" has id %d, which the vocabulary gives to \"%s\"",
                            P, content, id, t->text);
        if (!t->text) {
            if (!(t->text = dup_str(content))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
            t->len = (uint32_t)strlen(content);
            int32_t o = str_insert(tok, id);
            if (o >= 0)
                return mc_error(MOECL_ERR_FORMAT, "%s: added token \"%s\" (id %d) is already id %d", P, content, id, o);
        }
        t->kind = special ? MC_TOK_SPECIAL : MC_TOK_ADDED;
        t->normalized = norm ? cJSON_IsTrue(norm) : !special; /* HF's default */
        if (!special) tok->has_nonspecial_added = true;
    }
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        mc_token *t = &tok->tokens[id];
        if (!t->text) {
            t->kind = MC_TOK_UNUSED;
            if (!(t->text = dup_str(""))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
        }
    }

    /* Byte and single-character lookups used on every character. */
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        tok->byte_id[b] = mc_tokenizer_find(tok, name, 6);
        if (tok->byte_fallback && tok->byte_id[b] < 0)
            return mc_error(MOECL_ERR_FORMAT, "%s: byte_fallback is on but the vocabulary has no byte token %s", P,
                            name);
    }
    for (int c = 0; c < 128; c++) {
        char s = (char)c;
        tok->ascii_id[c] = mc_tokenizer_find(tok, &s, 1);
    }

    tok->unk_id = -1;
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (jstr(unk)) {
        tok->unk_id = mc_tokenizer_find(tok, unk->valuestring, strlen(unk->valuestring));
        if (tok->unk_id < 0)
            return mc_error(MOECL_ERR_FORMAT, "%s: model.unk_token \"%s\" is not in the vocabulary", P,
                            unk->valuestring);
    } else if (unk && !cJSON_IsNull(unk)) {
        return mc_error(MOECL_ERR_FORMAT, "%s: model.unk_token is %s, expected a string", P, type_name(unk));
    }
    return parse_merges(tok, merges);
}

/* Settle word_split: the space marker of the normalizer or pre-tokenizer,
 * if every vocabulary token holds it only as a leading run. */
static moecl_status find_word_split(moecl_tokenizer *tok) {
    const char *m = NULL;
    for (int i = 0; i < tok->n_norm; i++) {
        if (tok->norm[i].op == MC_NORM_REPLACE && !strcmp(tok->norm[i].a, " ")) m = tok->norm[i].b;
        if (tok->norm[i].op == MC_NORM_METASPACE) m = tok->norm[i].a;
    }
    size_t ml = m ? strlen(m) : 0;
    if (!ml) return MOECL_OK;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        const mc_token *t = &tok->tokens[id];
        if (t->kind != MC_TOK_NORMAL) continue;
        size_t i = 0;
        while (i + ml <= t->len && !memcmp(t->text + i, m, ml)) i += ml;
        for (; i + ml <= t->len; i++)
            if (!memcmp(t->text + i, m, ml)) return MOECL_OK; /* "x▁" in a token: no cutting */
    }
    if (!(tok->word_split = dup_str(m))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    return MOECL_OK;
}

/* What byte-level BPE needs, and what only it supports. */
static moecl_status check_byte_level(moecl_tokenizer *tok) {
    const char *P = tok->path;
    if (!tok->byte_level) {
        if (tok->nfc || tok->n_splits || tok->ignore_merges || tok->dec_byte_level)
            return mc_error(MOECL_ERR_UNSUPPORTED, "%s: %s is supported only with a ByteLevel pre_tokenizer", P,
                            tok->nfc ? "an NFC normalizer" : tok->n_splits ? "a Split pre_tokenizer"
                            : tok->ignore_merges ? "model.ignore_merges" : "a ByteLevel decoder");
        return MOECL_OK;
    }
    if (tok->n_norm || tok->byte_fallback || tok->dec_metaspace)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: a ByteLevel pre_tokenizer with %s is not supported", P,
                        tok->n_norm ? "a Prepend/Replace/Metaspace step" : tok->byte_fallback ? "byte_fallback"
                        : "a Metaspace/Replace decoder");
    /* Bytes no well-formed UTF-8 holds (0xC0, 0xC1, 0xF5..0xFF) may be
     * missing (GPT-NeoX's vocabulary lacks them); any other is needed. */
    mc_tokenizer_bl_bytes(tok);
    for (int b = 0; b < 256; b++)
        if (tok->bl_byte_id[b] < 0 && b != 0xC0 && b != 0xC1 && b < 0xF5)
            return mc_error(MOECL_ERR_FORMAT, "%s: a byte-level vocabulary without the token for byte 0x%02X (U+%04X)",
                            P, b, (unsigned)mc_bl_byte_char((uint8_t)b));
    return mc_tokenizer_name_pretok(tok);
}

static moecl_status collect_added(moecl_tokenizer *tok) {
    for (int32_t id = 0; id < tok->n_vocab; id++)
        if (tok->tokens[id].kind == MC_TOK_SPECIAL || tok->tokens[id].kind == MC_TOK_ADDED) tok->n_added++;
    if (!tok->n_added) return MOECL_OK;
    if (!(tok->added = malloc((size_t)tok->n_added * sizeof *tok->added)))
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    int n = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++)
        if (tok->tokens[id].kind == MC_TOK_SPECIAL || tok->tokens[id].kind == MC_TOK_ADDED) tok->added[n++] = id;
    /* Longest first, so the longest match wins at a position (few tokens:
     * an insertion sort, stable, and no qsort_r, whose signature differs by
     * platform). */
    for (int i = 1; i < n; i++) {
        int32_t id = tok->added[i];
        int j = i;
        for (; j > 0 && tok->tokens[tok->added[j - 1]].len < tok->tokens[id].len; j--) tok->added[j] = tok->added[j - 1];
        tok->added[j] = id;
    }
    for (int i = 0; i < n; i++) tok->added_first[(uint8_t)tok->tokens[tok->added[i]].text[0]] = true;
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* The whole file                                                           */
/* ------------------------------------------------------------------------ */

moecl_status mc_tokenizer_parse(const char *path, const char *text, size_t len, moecl_tokenizer **out) {
    *out = NULL;
    moecl_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok || !(tok->path = dup_str(path))) {
        free(tok);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
    }
    tok->bos_id = tok->eos_id = tok->unk_id = tok->pad_id = -1;
    cJSON *root = NULL;
    moecl_status st = mc_json_parse(path, MC_JSON_TOKENIZER, text, len, &root);
    if (st) goto fail;
    if (!cJSON_IsObject(root)) {
        st = mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.json is %s, expected an object", path, type_name(root));
        goto fail;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!model) {
        st = mc_error(MOECL_ERR_FORMAT, "%s: no \"model\" (is this a Hugging Face tokenizer.json?)", path);
        goto fail;
    }
    if ((st = parse_model(tok, model, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")))) goto fail;
    if ((st = parse_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), "normalizer"))) goto fail;
    if ((st = parse_pre_tokenizer(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), false))) goto fail;
    if ((st = parse_decoder(tok, cJSON_GetObjectItemCaseSensitive(root, "decoder")))) goto fail;
    if ((st = check_byte_level(tok))) goto fail;
    if ((st = collect_added(tok))) goto fail;
    if ((st = find_word_split(tok))) goto fail;
    for (int32_t id = 0; id < tok->n_vocab; id++)
        if ((st = make_piece(tok, &tok->tokens[id]))) goto fail;

    /* BOS from the post-processor: a template that starts with a special
     * token (in a Sequence of processors, as Llama 3 has, the template). */
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    const char *pp_type = jstr(cJSON_GetObjectItemCaseSensitive(pp, "type"));
    if (pp_type && !strcmp(pp_type, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(pp, "processors")) {
            const char *t = jstr(cJSON_GetObjectItemCaseSensitive(e, "type"));
            if (t && !strcmp(t, "TemplateProcessing")) {
                pp = e;
                pp_type = t;
            }
        }
    }
    if (pp_type && !strcmp(pp_type, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
        const cJSON *first = cJSON_GetArrayItem(single, 0), *last = cJSON_GetArrayItem(single, cJSON_GetArraySize(single) - 1);
        const char *bos = jstr(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(first, "SpecialToken"), "id"));
        const char *eos = jstr(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(last, "SpecialToken"), "id"));
        if (bos) {
            tok->bos_id = mc_tokenizer_find(tok, bos, strlen(bos));
            tok->add_bos = tok->bos_id >= 0;
        }
        if (eos && last != first) {
            tok->eos_id = mc_tokenizer_find(tok, eos, strlen(eos));
            tok->add_eos = tok->eos_id >= 0;
        }
    }
    cJSON_Delete(root);
    *out = tok;
    return MOECL_OK;
fail:
    cJSON_Delete(root);
    moecl_tokenizer_free(tok);
    return st;
}

/* ------------------------------------------------------------------------ */
/* tokenizer_config.json and generation_config.json                         */
/* ------------------------------------------------------------------------ */

/* Read dir/name if it exists: *out NULL (and OK) if it does not. */
static moecl_status read_optional_json(const char *dir, const char *name, mc_json_kind kind, cJSON **out) {
    *out = NULL;
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: path too long", dir);
    struct stat sb;
    if (stat(path, &sb) != 0 && errno == ENOENT) return MOECL_OK;
    moecl_status st = mc_json_load_file(path, kind, out);
    if (!st && !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return mc_error(MOECL_ERR_FORMAT, "%s: expected a JSON object", path);
    }
    return st;
}

/* "bos_token": "<s>" or {"content": "<s>", ...}; absent or null: keep *id. */
static moecl_status config_token(moecl_tokenizer *tok, const char *file, const cJSON *cfg, const char *key,
                                 int32_t *id) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!j || cJSON_IsNull(j)) return MOECL_OK;
    const char *s = cJSON_IsObject(j) ? jstr(cJSON_GetObjectItemCaseSensitive(j, "content")) : jstr(j);
    if (!s) return mc_error(MOECL_ERR_FORMAT, "%s: \"%s\" is %s, expected a string", file, key, type_name(j));
    int32_t t = mc_tokenizer_find(tok, s, strlen(s));
    if (t < 0) return mc_error(MOECL_ERR_FORMAT, "%s: \"%s\" is \"%s\", which is not in the vocabulary", file, key, s);
    *id = t;
    return MOECL_OK;
}

static moecl_status config_bool(const char *file, const cJSON *cfg, const char *key, bool *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!j || cJSON_IsNull(j)) return MOECL_OK;
    if (!cJSON_IsBool(j)) return mc_error(MOECL_ERR_FORMAT, "%s: \"%s\" is %s, expected a boolean", file, key,
                                          type_name(j));
    *out = cJSON_IsTrue(j);
    return MOECL_OK;
}

/* generation_config.json: an id, or a list whose first element is used. */
static moecl_status config_id(moecl_tokenizer *tok, const char *file, const cJSON *cfg, const char *key, int32_t *id) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!j || cJSON_IsNull(j)) return MOECL_OK;
    if (cJSON_IsArray(j)) j = cJSON_GetArrayItem(j, 0);
    if (!is_int(j, 0, (double)tok->n_vocab - 1))
        return mc_error(MOECL_ERR_FORMAT, "%s: \"%s\" is not a token id in 0..%d", file, key, tok->n_vocab - 1);
    *id = (int32_t)j->valuedouble;
    return MOECL_OK;
}

moecl_status mc_tokenizer_read_configs(moecl_tokenizer *tok, const char *dir) {
    /* Defaults for SentencePiece-style vocabularies without a config. */
    if (tok->bos_id < 0 && !tok->byte_level) tok->bos_id = mc_tokenizer_find(tok, "<s>", 3);
    if (tok->eos_id < 0 && !tok->byte_level) tok->eos_id = mc_tokenizer_find(tok, "</s>", 4);
    if (!dir) return MOECL_OK;
    cJSON *cfg = NULL, *gen = NULL;
    moecl_status st = read_optional_json(dir, "tokenizer_config.json", MC_JSON_TOKENIZER_CONFIG, &cfg);
    if (st) return st;
    const char *file = "tokenizer_config.json";
    if (cfg && ((st = config_token(tok, file, cfg, "bos_token", &tok->bos_id)) ||
                (st = config_token(tok, file, cfg, "eos_token", &tok->eos_id)) ||
                (st = config_token(tok, file, cfg, "pad_token", &tok->pad_id)) ||
                (st = config_bool(file, cfg, "add_bos_token", &tok->add_bos)) ||
                (st = config_bool(file, cfg, "add_eos_token", &tok->add_eos))))
        goto done;
    const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    if (jstr(tmpl) && !(tok->chat_template = dup_str(tmpl->valuestring))) {
        st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    if ((st = read_optional_json(dir, "generation_config.json", MC_JSON_CONFIG, &gen))) goto done;
    file = "generation_config.json";
    if (gen && ((st = config_id(tok, file, gen, "bos_token_id", &tok->bos_id)) ||
                (st = config_id(tok, file, gen, "eos_token_id", &tok->eos_id))))
        goto done;
    if (tok->add_bos && tok->bos_id < 0) tok->add_bos = false;
    if (tok->add_eos && tok->eos_id < 0) tok->add_eos = false;
done:
    cJSON_Delete(cfg);
    cJSON_Delete(gen);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Public: loading and freeing                                              */
/* ------------------------------------------------------------------------ */

/* Whether path (a file, not a directory) starts with GGUF's magic; an
 * error if it cannot be opened or is not a regular file. */
static moecl_status sniff_gguf(const char *path, bool *yes) {
    char magic[4] = {0};
    int fd;
    *yes = false;
    moecl_status st = mc_open_regular(path, &fd, NULL);
    if (st != MOECL_OK) return st;
    ssize_t r;
    do r = read(fd, magic, 4);
    while (r < 0 && errno == EINTR);
    close(fd);
    *yes = r == 4 && !memcmp(magic, "GGUF", 4);
    return MOECL_OK;
}

moecl_status moecl_tokenizer_load(const char *path, moecl_tokenizer **out) {
    if (!out) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_tokenizer_load: out is NULL");
    *out = NULL;
    if (!path) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_tokenizer_load: path is NULL");
    mc_clear_error();
    struct stat sb;
    if (stat(path, &sb) != 0) return mc_error(MOECL_ERR_IO, "%s: %s", path, strerror(errno));
    bool is_dir = S_ISDIR(sb.st_mode);
    bool gguf = false;
    moecl_status st = is_dir ? MOECL_OK : sniff_gguf(path, &gguf);
    if (st != MOECL_OK) return st;
    if (gguf) return mc_tokenizer_load_gguf(path, out);
    char file[4096];
    if ((size_t)snprintf(file, sizeof file, is_dir ? "%s/tokenizer.json" : "%s", path) >= sizeof file)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: path too long", path);
    char *text;
    size_t len;
    st = mc_read_text_file(file, mc_json_max_bytes(MC_JSON_TOKENIZER), &text, &len);
    if (st) return st;
    moecl_tokenizer *tok;
    st = mc_tokenizer_parse(file, text, len, &tok);
    free(text);
    if (st) return st;
    if ((st = mc_tokenizer_read_configs(tok, is_dir ? path : NULL))) {
        moecl_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return MOECL_OK;
}

void moecl_tokenizer_free(moecl_tokenizer *tok) {
    if (!tok) return;
    if (tok->tokens)
        for (int32_t i = 0; i < tok->n_vocab; i++) {
            free(tok->tokens[i].text);
            free(tok->tokens[i].piece);
        }
    free(tok->tokens);
    free(tok->str_table);
    free(tok->pairs);
    for (int i = 0; i < tok->n_norm; i++) {
        free(tok->norm[i].a);
        free(tok->norm[i].b);
    }
    free(tok->norm);
    for (int i = 0; i < tok->n_splits; i++) mc_pretok_free(&tok->splits[i]);
    free(tok->splits);
    free(tok->pre_name);
    free(tok->added);
    free(tok->word_split);
    free(tok->dec_replacement);
    free(tok->chat_template);
    free(tok->path);
    free(tok);
}

/* ------------------------------------------------------------------------ */
/* Shared with tokenizer_gguf.c                                             */
/* ------------------------------------------------------------------------ */

moecl_status mc_tokenizer_alloc_vocab(moecl_tokenizer *tok, int32_t n_vocab) {
    tok->n_vocab = n_vocab;
    if (!(tok->tokens = calloc((size_t)n_vocab, sizeof *tok->tokens)))
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    tok->str_mask = pow2_at_least((size_t)n_vocab * 2) - 1;
    if (!(tok->str_table = malloc((tok->str_mask + 1) * sizeof *tok->str_table)))
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    memset(tok->str_table, 0xff, (tok->str_mask + 1) * sizeof *tok->str_table);
    return MOECL_OK;
}

int32_t mc_tokenizer_str_insert(moecl_tokenizer *tok, int32_t id) { return str_insert(tok, id); }

moecl_status mc_tokenizer_alloc_pairs(moecl_tokenizer *tok, size_t n) {
    tok->pair_mask = pow2_at_least(n * 2 + 16) - 1;
    if (!(tok->pairs = malloc((tok->pair_mask + 1) * sizeof *tok->pairs)))
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    for (size_t i = 0; i <= tok->pair_mask; i++) tok->pairs[i].key = UINT64_MAX;
    return MOECL_OK;
}

void mc_tokenizer_pair_insert(moecl_tokenizer *tok, int32_t left, int32_t right, int32_t rank, int32_t result) {
    (void)pair_insert(tok, left, right, rank, result);
}

bool mc_tokenizer_byte_token(const char *s, size_t len, uint8_t *out) { return byte_token_value(s, len, out); }

moecl_status mc_tokenizer_finish(moecl_tokenizer *tok) {
    moecl_status st;
    if ((st = collect_added(tok)) || (st = find_word_split(tok))) return st;
    for (int32_t id = 0; id < tok->n_vocab; id++)
        if ((st = make_piece(tok, &tok->tokens[id]))) return st;
    return MOECL_OK;
}

moecl_status mc_tokenizer_load_dir_optional(const char *dir, moecl_tokenizer **out) {
    *out = NULL;
    char file[4096];
    if ((size_t)snprintf(file, sizeof file, "%s/tokenizer.json", dir) >= sizeof file)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: path too long", dir);
    struct stat sb;
    if (stat(file, &sb) != 0 && errno == ENOENT) return MOECL_OK;
    return moecl_tokenizer_load(dir, out);
}
