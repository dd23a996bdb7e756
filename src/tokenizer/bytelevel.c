/*
 * bytelevel.c - the pieces byte-level BPE adds to the tokenizer: GPT-2's
 * byte <-> character map, pre-tokenizer regexes matched with PCRE2, NFC
 * through utf8proc, and the pre-tokenizers llama.cpp names in GGUF files.
 *
 * GPT-2's map spells every byte as a printable character so that BPE can
 * run over strings: the bytes that are printable in Latin-1 ('!'..'~',
 * '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 (controls, space,
 * 0x7F..0xA0, 0xAD) take U+0100, U+0101, ... in byte order. So ' ' is 'Ġ'
 * (U+0120) and '\n' is 'Ċ' (U+010A).
 *
 * The regexes are those of the families' tokenizer.json files, written for
 * Oniguruma (what Hugging Face tokenizers uses); they use nothing that PCRE2
 * reads differently, in UTF mode with Unicode properties (PCRE2_UCP: \s,
 * \p{L}, \p{N} by Unicode). HF applies each Split to every piece the
 * previous one left, and so do we.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/tokenizer.h"

#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ------------------------------------------------------------------------ */
/* GPT-2's byte map                                                         */
/* ------------------------------------------------------------------------ */

static bool printable_byte(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

uint32_t mc_bl_byte_char(uint8_t b) {
    if (printable_byte(b)) return b;
    uint32_t n = 0; /* how many non-printable bytes come before b */
    for (unsigned c = 0; c < b; c++) n += !printable_byte(c);
    return 0x100 + n;
}

int mc_bl_char_byte(uint32_t cp) {
    if (cp < 0x100) return printable_byte(cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68) return -1;
    uint32_t n = cp - 0x100;
    for (unsigned c = 0; c < 256; c++)
        if (!printable_byte(c) && n-- == 0) return (int)c;
    return -1;
}

void mc_tokenizer_bl_bytes(moecl_tokenizer *tok) {
    for (int b = 0; b < 256; b++) {
        uint32_t cp = mc_bl_byte_char((uint8_t)b);
        char s[2];
        size_t n = 0;
        if (cp < 0x80) s[n++] = (char)cp;
        else {
            s[n++] = (char)(0xC0 | (cp >> 6));
            s[n++] = (char)(0x80 | (cp & 0x3F));
        }
        int32_t id = mc_tokenizer_find(tok, s, n);
        tok->bl_byte_id[b] = id >= 0 && tok->tokens[id].kind == MC_TOK_NORMAL ? id : -1;
    }
}

/* ------------------------------------------------------------------------ */
/* Regexes                                                                  */
/* ------------------------------------------------------------------------ */

moecl_status mc_pretok_compile(const char *path, mc_pretok_split *s) {
    int err = 0;
    PCRE2_SIZE at = 0;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (s->literal ? PCRE2_LITERAL : 0);
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)s->pattern, PCRE2_ZERO_TERMINATED, opts, &err, &at, NULL);
    if (!code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return mc_error(MOECL_ERR_FORMAT, "%s: pre-tokenizer regex \"%.80s\" does not compile (at offset %zu: %s)", path,
                        s->pattern, (size_t)at, (const char *)msg);
    }
    /* The JIT is several times faster; where the platform lacks it the
     * interpreter gives the same matches. */
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    s->code = code;
    return MOECL_OK;
}

void mc_pretok_free(mc_pretok_split *s) {
    pcre2_code_free((pcre2_code *)s->code);
    free(s->pattern);
    s->code = NULL;
    s->pattern = NULL;
}

static moecl_status spans_push(mc_spans *sp, size_t start, size_t end, bool match) {
    if (sp->n == sp->cap) {
        size_t cap = sp->cap ? sp->cap * 2 : 64;
        mc_span *v = realloc(sp->v, cap * sizeof *v);
        if (!v) return mc_error(MOECL_ERR_NOMEM, "tokenizer: out of memory splitting text");
        sp->v = v;
        sp->cap = cap;
    }
    sp->v[sp->n++] = (mc_span){start, end, match};
    return MOECL_OK;
}

/* The matches of one split in text[start, end) and the gaps between them
 * (HF's find_matches), into parts. */
static moecl_status find_matches(const mc_pretok_split *sp, pcre2_match_data *md, const char *text, size_t start,
                                 size_t end, mc_spans *parts) {
    parts->n = 0;
    moecl_status st = MOECL_OK;
    size_t prev = start, pos = start;
    while (pos < end) {
        int rc = pcre2_match(sp->code, (PCRE2_SPTR)text + start, end - start, pos - start, PCRE2_NO_UTF_CHECK, md,
                             NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return mc_error(MOECL_ERR_INVALID_ARG, "tokenizer: pre-tokenizer regex \"%.60s\" failed: %s", sp->pattern,
                            (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = start + ov[0], me = start + ov[1];
        if (me == ms) { /* an empty match splits nothing: step over one character */
            pos = ms + 1;
            while (pos < end && ((uint8_t)text[pos] & 0xC0) == 0x80) pos++;
            continue;
        }
        if (ms > prev && (st = spans_push(parts, prev, ms, sp->invert))) return st;
        if ((st = spans_push(parts, ms, me, !sp->invert))) return st;
        prev = pos = me;
    }
    if (prev < end) st = spans_push(parts, prev, end, sp->invert);
    return st;
}

/* The pieces of one split in text[start, end), merged by its behaviour as
 * HF's SplitDelimiterBehavior does, appended to out. */
static moecl_status split_one(const mc_pretok_split *sp, pcre2_match_data *md, const char *text, size_t start,
                              size_t end, mc_spans *parts, mc_spans *out) {
    moecl_status st = find_matches(sp, md, text, start, end, parts);
    if (st) return st;
    size_t n0 = out->n;
    bool prev_match = false;
    switch (sp->behavior) {
    case MC_SPLIT_ISOLATED:
        for (size_t i = 0; i < parts->n && !st; i++) st = spans_push(out, parts->v[i].start, parts->v[i].end, false);
        break;
    case MC_SPLIT_REMOVED:
        for (size_t i = 0; i < parts->n && !st; i++)
            if (!parts->v[i].match) st = spans_push(out, parts->v[i].start, parts->v[i].end, false);
        break;
    case MC_SPLIT_MERGED_PREV: /* a match joins the piece before it */
    case MC_SPLIT_CONTIGUOUS:  /* runs of matches, runs of non-matches */
        for (size_t i = 0; i < parts->n && !st; i++) {
            bool m = parts->v[i].match;
            bool join = sp->behavior == MC_SPLIT_MERGED_PREV ? (m && !prev_match) : (m == prev_match);
            if (join && out->n > n0) out->v[out->n - 1].end = parts->v[i].end;
            else st = spans_push(out, parts->v[i].start, parts->v[i].end, false);
            prev_match = m;
        }
        break;
    case MC_SPLIT_MERGED_NEXT: /* a match joins the piece after it: walk backwards, then reverse */
        for (size_t k = parts->n; k-- > 0 && !st;) {
            bool m = parts->v[k].match;
            if (m && !prev_match && out->n > n0) out->v[out->n - 1].start = parts->v[k].start;
            else st = spans_push(out, parts->v[k].start, parts->v[k].end, false);
            prev_match = m;
        }
        for (size_t a = n0, b = out->n; a + 1 < b; a++, b--) {
            mc_span t = out->v[a];
            out->v[a] = out->v[b - 1];
            out->v[b - 1] = t;
        }
        break;
    default:
        st = mc_error(MOECL_ERR_INVALID_ARG, "tokenizer: unknown split behaviour %d", sp->behavior);
    }
    return st;
}

moecl_status mc_pretok_split_text(const moecl_tokenizer *tok, const char *text, size_t n, mc_spans *out,
                                  mc_spans *tmp) {
    out->n = 0;
    moecl_status st = spans_push(out, 0, n, false);
    if (st || !tok->n_splits || n == 0) return st;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return mc_error(MOECL_ERR_NOMEM, "tokenizer: out of memory");
    mc_spans cur = {0};
    for (int k = 0; k < tok->n_splits && !st; k++) {
        mc_spans t = cur; /* cur <- out; out <- the pieces of every piece of cur */
        cur = *out;
        *out = t;
        out->n = 0;
        for (size_t i = 0; i < cur.n && !st; i++)
            st = split_one(&tok->splits[k], md, text, cur.v[i].start, cur.v[i].end, tmp, out);
    }
    free(cur.v);
    pcre2_match_data_free(md);
    return st;
}

/* ------------------------------------------------------------------------ */
/* NFC                                                                      */
/* ------------------------------------------------------------------------ */

moecl_status mc_nfc(const char *text, size_t n, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    size_t i = 0;
    while (i < n && (uint8_t)text[i] < 0x80) i++;
    if (i == n) return MOECL_OK; /* ASCII is its own NFC */
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)n, &dst,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (r < 0) {
        free(dst);
        if (r == UTF8PROC_ERROR_NOMEM) return mc_error(MOECL_ERR_NOMEM, "tokenizer: out of memory normalizing text");
        return mc_error(MOECL_ERR_INVALID_ARG, "tokenizer: NFC failed: %s", utf8proc_errmsg(r));
    }
    *out = (char *)dst;
    *out_len = (size_t)r;
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Pre-tokenizers by llama.cpp's names                                      */
/* ------------------------------------------------------------------------ */

/* GPT-2's (HF ByteLevel with use_regex; GPT-NeoX and OLMo use it too). */
static const char *const re_gpt2[] = {
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", NULL};
/* Qwen2/2.5/3's tokenizer.json: one digit at a time. */
static const char *const re_qwen2[] = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+",
    NULL};
/* Llama 3's tokenizer.json: up to three digits together. */
static const char *const re_llama3[] = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    NULL};
/* DeepSeek LLM's tokenizer.json (as llama.cpp lists it): newlines alone,
 * runs of cased letters, of ASCII/full-width punctuation, trailing spaces,
 * runs of CJK and Hangul, runs of digits. The classes are written as code
 * points so that no compatibility character (U+2126 Ohm, U+212A Kelvin) is
 * lost to an editor's normalization. */
static const char *const re_deepseek_llm[] = {
    "[\\r\\n]",
    "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}"
    "\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}"
    "\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}"
    "\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}"
    "\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}"
    "\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}"
    "\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}"
    "\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}"
    "\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}"
    "\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}"
    "\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}"
    "\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}"
    "\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}"
    "\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}"
    "\\x{1E900}-\\x{1E943}]+",
    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
    "\\s+$",
    "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+",
    "\\p{N}+",
    NULL};

/* NFC: the Qwen and GPT-NeoX/OLMo tokenizer.json files have an NFC
 * normalizer; GPT-2's, Llama 3's and DeepSeek's have none. */
static const mc_named_pretok named[] = {
    {"gpt-2", re_gpt2, false, false},
    {"olmo", re_gpt2, true, false},
    {"qwen2", re_qwen2, true, false},
    {"llama-bpe", re_llama3, false, true},
    {"llama3", re_llama3, false, true},
    {"deepseek-llm", re_deepseek_llm, false, false},
};

const mc_named_pretok *mc_pretok_by_name(const char *name, size_t len) {
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        if (strlen(named[i].name) == len && !memcmp(named[i].name, name, len)) return &named[i];
    return NULL;
}

const char *mc_pretok_names(void) { return "gpt-2, olmo, qwen2, llama-bpe (llama3), deepseek-llm"; }

static void free_splits(moecl_tokenizer *tok) {
    for (int i = 0; i < tok->n_splits; i++) mc_pretok_free(&tok->splits[i]);
    free(tok->splits);
    tok->splits = NULL;
    tok->n_splits = 0;
}

moecl_status mc_tokenizer_set_named_pretok(moecl_tokenizer *tok, const mc_named_pretok *np) {
    free_splits(tok);
    int n = 0;
    while (np->regex[n]) n++;
    if (!(tok->splits = calloc((size_t)n, sizeof *tok->splits)))
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    for (int i = 0; i < n; i++) {
        mc_pretok_split *s = &tok->splits[tok->n_splits++];
        size_t len = strlen(np->regex[i]);
        if (!(s->pattern = malloc(len + 1))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
        memcpy(s->pattern, np->regex[i], len + 1);
        s->behavior = MC_SPLIT_ISOLATED;
        moecl_status st = mc_pretok_compile(tok->path, s);
        if (st) return st;
    }
    tok->nfc = np->nfc;
    tok->ignore_merges = np->ignore_merges;
    tok->bl_prefix_space = false;
    free(tok->pre_name);
    size_t len = strlen(np->name);
    if (!(tok->pre_name = malloc(len + 1))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    memcpy(tok->pre_name, np->name, len + 1);
    return MOECL_OK;
}

moecl_status mc_tokenizer_name_pretok(moecl_tokenizer *tok) {
    free(tok->pre_name);
    tok->pre_name = NULL;
    if (!tok->byte_level || tok->bl_prefix_space) return MOECL_OK;
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++) {
        const mc_named_pretok *np = &named[i];
        if (np->nfc != tok->nfc || np->ignore_merges != tok->ignore_merges) continue;
        int n = 0;
        while (np->regex[n]) n++;
        if (n != tok->n_splits) continue;
        bool same = true;
        for (int k = 0; k < n && same; k++) {
            const mc_pretok_split *s = &tok->splits[k];
            same = !s->literal && !s->invert && s->behavior == MC_SPLIT_ISOLATED && !strcmp(s->pattern, np->regex[k]);
        }
        if (!same) continue;
        size_t len = strlen(np->name);
        if (!(tok->pre_name = malloc(len + 1))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
        memcpy(tok->pre_name, np->name, len + 1);
        return MOECL_OK;
    }
    return MOECL_OK;
}
