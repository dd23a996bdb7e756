/*
 * tokenizer.c - encoding (normalize, BPE by merge rank with a heap) and
 * decoding (whole and streaming) for the tokenizers tokenizer_load.c reads.
 *
 * The rules are those of Hugging Face tokenizers for this family, which the
 * reference test (tests/test_tokenizer.c) holds us to id for id:
 *   - added tokens are cut out of the text first (special ones only when the
 *     caller asks); every remaining segment is normalized on its own, so the
 *     legacy Prepend("▁") applies to each non-empty segment;
 *   - a segment is one word unless a Metaspace pre-tokenizer splits it;
 *   - a word starts as its UTF-8 characters; a character the vocabulary lacks
 *     becomes its <0xXX> byte tokens (byte_fallback) or <unk>;
 *   - the adjacent pair with the lowest merge rank is merged first, the
 *     leftmost on ties, until no pair has a merge.
 * Invalid UTF-8 (which HF cannot be given) is defined here: each byte that
 * does not belong to a well-formed sequence is a character of its own, so it
 * becomes its byte token and decodes back to the same byte.
 */
#include "tokenizer/tokenizer.h"
#include "model.h"

#include <stdlib.h>
#include <string.h>

moecl_status mc_ids_push(mc_ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v) return mc_error(MOECL_ERR_NOMEM, "tokenizer: out of memory");
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return MOECL_OK;
}

/* Length of the well-formed UTF-8 sequence at s[0..n), or 0 if s[0] does not
 * start one (RFC 3629: no overlongs, no surrogates, nothing past U+10FFFF). */
int mc_utf8_len(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    int len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if ((size_t)len > n) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

/* ------------------------------------------------------------------------ */
/* BPE on one word                                                          */
/* ------------------------------------------------------------------------ */

typedef struct sym {
    int32_t id;
    int32_t prev, next; /* -1: none */
    int32_t alive;
} sym;

typedef struct cand {
    int32_t rank;
    int32_t pos; /* left symbol */
} cand;

static inline bool cand_less(cand a, cand b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(cand *h, size_t *n, cand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(c, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, size_t *n) {
    cand top = h[0], last = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, b = i;
        cand best = last;
        if (l < m && cand_less(h[l], best)) { b = l; best = h[l]; }
        if (r < m && cand_less(h[r], best)) b = r;
        if (b == i) break;
        h[i] = h[b];
        i = b;
    }
    if (m) h[i] = last;
    return top;
}

static const mc_pair_slot *pair_find(const moecl_tokenizer *tok, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t x = key;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    for (size_t i = x & tok->pair_mask;; i = (i + 1) & tok->pair_mask) {
        const mc_pair_slot *s = &tok->pairs[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
    }
}

static void push_pair(const moecl_tokenizer *tok, const sym *s, int32_t pos, cand *h, size_t *nh) {
    if (pos < 0 || s[pos].next < 0) return;
    const mc_pair_slot *p = pair_find(tok, s[pos].id, s[s[pos].next].id);
    if (p) heap_push(h, nh, (cand){p->rank, pos});
}

/* Scratch for one encode call, grown as words need. */
typedef struct scratch {
    sym *s;
    cand *h;
    size_t cap;
    mc_spans pieces, parts; /* byte-level pre-tokenization */
} scratch;

static moecl_status scratch_reserve(scratch *sc, size_t n) {
    if (n <= sc->cap) return MOECL_OK;
    size_t cap = n < 64 ? 64 : n;
    sym *s = realloc(sc->s, cap * sizeof *s);
    if (s) sc->s = s;
    cand *h = s ? realloc(sc->h, cap * 3 * sizeof *h) : NULL;
    if (!s || !h) return mc_error(MOECL_ERR_NOMEM, "tokenizer: out of memory for a %zu-byte word", n);
    sc->h = h;
    sc->cap = cap;
    return MOECL_OK;
}

static moecl_status bpe_merge(const moecl_tokenizer *tok, scratch *sc, int32_t ns, mc_ids *out);

static moecl_status bpe_word(const moecl_tokenizer *tok, const uint8_t *w, size_t n, scratch *sc, mc_ids *out) {
    if (n == 0) return MOECL_OK;
    moecl_status st = scratch_reserve(sc, n);
    if (st) return st;
    sym *s = sc->s;
    int32_t ns = 0;
    for (size_t i = 0; i < n;) {
        int len = mc_utf8_len(w + i, n - i);
        int32_t id = -1;
        if (len == 1) id = tok->ascii_id[w[i]];
        else if (len > 1) id = mc_tokenizer_find(tok, (const char *)w + i, (size_t)len);
        if (len == 0) len = 1; /* an invalid byte: a character of its own */
        if (id >= 0 && tok->tokens[id].kind != MC_TOK_SPECIAL && tok->tokens[id].kind != MC_TOK_ADDED) {
            s[ns++].id = id;
        } else if (tok->byte_fallback) {
            for (int k = 0; k < len; k++) s[ns++].id = tok->byte_id[w[i + k]];
        } else if (id >= 0) {
            s[ns++].id = id;
        } else if (tok->unk_id >= 0) {
            if (!(tok->fuse_unk && ns > 0 && s[ns - 1].id == tok->unk_id)) s[ns++].id = tok->unk_id;
        } else {
            return mc_error(MOECL_ERR_INVALID_ARG, "%s: a character is not in the vocabulary and there is no "
                            "byte fallback or unk_token", tok->path);
        }
        i += (size_t)len;
    }
    return bpe_merge(tok, sc, ns, out);
}

/* Merge sc->s[0..ns) (ids set) by rank and append the result. */
static moecl_status bpe_merge(const moecl_tokenizer *tok, scratch *sc, int32_t ns, mc_ids *out) {
    sym *s = sc->s;
    for (int32_t i = 0; i < ns; i++) {
        s[i].prev = i - 1;
        s[i].next = i + 1 < ns ? i + 1 : -1;
        s[i].alive = 1;
    }

    cand *h = sc->h;
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < ns; i++) push_pair(tok, s, i, h, &nh);
    while (nh) {
        cand c = heap_pop(h, &nh);
        if (!s[c.pos].alive) continue;
        int32_t r = s[c.pos].next;
        if (r < 0) continue;
        const mc_pair_slot *p = pair_find(tok, s[c.pos].id, s[r].id);
        if (!p || p->rank != c.rank) continue; /* stale: a neighbour changed since it was queued */
        s[c.pos].id = p->result;
        s[c.pos].next = s[r].next;
        if (s[r].next >= 0) s[s[r].next].prev = c.pos;
        s[r].alive = 0;
        push_pair(tok, s, s[c.pos].prev, h, &nh);
        push_pair(tok, s, c.pos, h, &nh);
    }
    moecl_status st;
    for (int32_t i = 0; ns > 0 && i >= 0; i = s[i].next)
        if ((st = mc_ids_push(out, s[i].id))) return st;
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Normalizing a segment                                                    */
/* ------------------------------------------------------------------------ */

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static bool buf_put(buf *b, const void *data, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->n + n + 1 > cap) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return false;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = '\0';
    return true;
}

/* dst = src with every `from` replaced by `to`. */
static bool replace_all(buf *dst, const char *src, size_t n, const char *from, const char *to) {
    size_t fl = strlen(from), tl = strlen(to), start = 0;
    dst->n = 0;
    if (!buf_put(dst, "", 0)) return false;
    for (size_t i = 0; i + fl <= n;) {
        if (memcmp(src + i, from, fl) == 0) {
            if (!buf_put(dst, src + start, i - start) || !buf_put(dst, to, tl)) return false;
            i += fl;
            start = i;
        } else {
            i++;
        }
    }
    return buf_put(dst, src + start, n - start);
}

static moecl_status encode_segment(const moecl_tokenizer *tok, const char *text, size_t n, bool at_start,
                                   scratch *sc, buf *a, buf *b, mc_ids *out) {
    if (n == 0) return MOECL_OK;
    a->n = 0;
    if (!buf_put(a, text, n)) goto nomem;
    const char *split_on = NULL;
    for (int k = 0; k < tok->n_norm; k++) {
        const mc_norm_step *st = &tok->norm[k];
        b->n = 0;
        if (st->op == MC_NORM_PREPEND) {
            if (a->n && (!buf_put(b, st->a, strlen(st->a)) || !buf_put(b, a->p, a->n))) goto nomem;
        } else if (st->op == MC_NORM_REPLACE) {
            if (!replace_all(b, a->p, a->n, st->a, st->b)) goto nomem;
        } else { /* METASPACE */
            size_t rl = strlen(st->a);
            bool prepend = st->prepend_scheme == 1 || (st->prepend_scheme == 2 && at_start);
            if (!replace_all(b, a->p, a->n, " ", st->a)) goto nomem;
            if (prepend && !(b->n >= rl && memcmp(b->p, st->a, rl) == 0)) {
                buf t = *a;
                *a = *b;
                *b = t;
                b->n = 0;
                if (!buf_put(b, st->a, rl) || !buf_put(b, a->p, a->n)) goto nomem;
            }
            if (st->split) split_on = st->a;
        }
        buf t = *a;
        *a = *b;
        *b = t;
    }
    const uint8_t *w = (const uint8_t *)a->p;
    /* Metaspace split: a new word starts at every replacement character.
     * word_split: a new word starts where the marker follows other text. */
    bool only_after_text = !split_on;
    if (!split_on) split_on = tok->word_split;
    if (!split_on) return bpe_word(tok, w, a->n, sc, out);
    size_t rl = strlen(split_on), start = 0;
    const char *p = a->p, *end = a->p + a->n;
    moecl_status st;
    bool prev_marker = a->n >= rl && memcmp(p, split_on, rl) == 0;
    for (size_t i = prev_marker ? rl : 1; i + rl <= a->n;) {
        const char *hit = memchr(p + i, split_on[0], (size_t)(end - (p + i)));
        if (!hit || (size_t)(end - hit) < rl) break;
        size_t at = (size_t)(hit - p);
        if (memcmp(hit, split_on, rl) != 0) {
            i = at + 1;
            continue;
        }
        bool after_marker = at >= rl && memcmp(p + at - rl, split_on, rl) == 0;
        if (!(only_after_text && after_marker) && at > start) {
            if ((st = bpe_word(tok, w + start, at - start, sc, out))) return st;
            start = at;
        }
        i = at + rl;
    }
    return bpe_word(tok, w + start, a->n - start, sc, out);
nomem:
    return mc_error(MOECL_ERR_NOMEM, "tokenizer: out of memory normalizing %zu bytes", n);
}

/* The longest added token at text[i..n) that may be matched, or -1: special
 * ones only with parse_special; in a byte-level tokenizer, the tokens HF
 * marks "normalized" only on the normalized text (normalized true) and the
 * others only on the raw text. */
static int32_t match_added(const moecl_tokenizer *tok, const char *text, size_t i, size_t n, bool parse_special,
                           bool normalized) {
    if (!tok->added_first[(uint8_t)text[i]]) return -1;
    for (int k = 0; k < tok->n_added; k++) {
        const mc_token *t = &tok->tokens[tok->added[k]];
        if (t->kind == MC_TOK_SPECIAL && !parse_special) continue;
        if (tok->byte_level && (bool)t->normalized != normalized) continue;
        if (t->len <= n - i && t->text[0] == text[i] && memcmp(text + i, t->text, t->len) == 0) return tok->added[k];
    }
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Byte-level segments                                                      */
/* ------------------------------------------------------------------------ */

/* One pre-tokenized piece: its bytes as symbols, merged. */
static moecl_status bl_piece(const moecl_tokenizer *tok, const uint8_t *w, size_t n, scratch *sc, buf *tmp,
                             mc_ids *out) {
    if (n == 0) return MOECL_OK;
    if (tok->ignore_merges) { /* the piece spelled in the vocabulary's characters */
        tmp->n = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t cp = mc_bl_byte_char(w[i]);
            char c[2] = {(char)cp, 0};
            size_t k = 1;
            if (cp >= 0x80) {
                c[0] = (char)(0xC0 | (cp >> 6));
                c[1] = (char)(0x80 | (cp & 0x3F));
                k = 2;
            }
            if (!buf_put(tmp, c, k)) return mc_error(MOECL_ERR_NOMEM, "tokenizer: out of memory");
        }
        int32_t id = mc_tokenizer_find(tok, tmp->p, tmp->n);
        if (id >= 0 && tok->tokens[id].kind == MC_TOK_NORMAL) return mc_ids_push(out, id);
    }
    moecl_status st = scratch_reserve(sc, n);
    if (st) return st;
    for (size_t i = 0; i < n; i++) sc->s[i].id = tok->bl_byte_id[w[i]];
    return bpe_merge(tok, sc, (int32_t)n, out);
}

/* Well-formed UTF-8 text between added tokens: pre-tokenize, then BPE. */
static moecl_status bl_text(const moecl_tokenizer *tok, const char *text, size_t n, scratch *sc, buf *tmp,
                            mc_ids *out) {
    if (n == 0) return MOECL_OK;
    moecl_status st;
    buf pre = {0};
    if (tok->bl_prefix_space && text[0] != ' ') { /* ByteLevel add_prefix_space */
        if (!buf_put(&pre, " ", 1) || !buf_put(&pre, text, n)) {
            free(pre.p);
            return mc_error(MOECL_ERR_NOMEM, "tokenizer: out of memory");
        }
        text = pre.p;
        n = pre.n;
    }
    st = mc_pretok_split_text(tok, text, n, &sc->pieces, &sc->parts);
    for (size_t i = 0; i < sc->pieces.n && !st; i++) {
        const mc_span *p = &sc->pieces.v[i];
        st = bl_piece(tok, (const uint8_t *)text + p->start, p->end - p->start, sc, tmp, out);
    }
    free(pre.p);
    return st;
}

/* Text between raw added tokens, as HF runs it: NFC, normalized added
 * tokens, the rest pre-tokenized. A byte that is not part of well-formed
 * UTF-8 (which HF cannot be given) is a piece of its own: its byte token. */
static moecl_status encode_bl_segment(const moecl_tokenizer *tok, const char *text, size_t n, bool parse_special,
                                      scratch *sc, buf *tmp, mc_ids *out) {
    moecl_status st = MOECL_OK;
    for (size_t i = 0; i < n && !st;) {
        size_t j = i;
        int l;
        while (j < n && (l = mc_utf8_len((const uint8_t *)text + j, n - j)) > 0) j += (size_t)l;
        if (j == i) { /* an invalid byte; one the vocabulary lacks goes as HF drops an unknown character */
            int32_t id = tok->bl_byte_id[(uint8_t)text[i]];
            if (id < 0) id = tok->unk_id;
            if (id >= 0) st = mc_ids_push(out, id);
            i++;
            continue;
        }
        char *norm = NULL;
        size_t nn = 0;
        const char *t = text + i;
        size_t tn = j - i;
        if (tok->nfc && (st = mc_nfc(t, tn, &norm, &nn))) break;
        if (norm) {
            t = norm;
            tn = nn;
        }
        size_t seg = 0;
        for (size_t k = 0; k < tn && !st;) {
            int32_t id = tok->n_added ? match_added(tok, t, k, tn, parse_special, true) : -1;
            if (id < 0) {
                k++;
                continue;
            }
            if (!(st = bl_text(tok, t + seg, k - seg, sc, tmp, out))) st = mc_ids_push(out, id);
            k += tok->tokens[id].len;
            seg = k;
        }
        if (!st) st = bl_text(tok, t + seg, tn - seg, sc, tmp, out);
        free(norm);
        i = j;
    }
    return st;
}

moecl_status mc_tokenizer_encode(const moecl_tokenizer *tok, const char *text, size_t len, bool parse_special,
                                 mc_ids *out) {
    scratch sc = {0};
    buf a = {0}, b = {0};
    moecl_status st = MOECL_OK;
    size_t seg = 0;
#define SEGMENT(p, n, first)                                                                                    \
    (tok->byte_level ? encode_bl_segment(tok, (p), (n), parse_special, &sc, &a, out)                                          \
                     : encode_segment(tok, (p), (n), (first), &sc, &a, &b, out))
    if (tok->n_added && (parse_special || tok->has_nonspecial_added)) {
        for (size_t i = 0; i < len;) {
            int32_t id = match_added(tok, text, i, len, parse_special, false);
            if (id < 0) {
                i++;
                continue;
            }
            if ((st = SEGMENT(text + seg, i - seg, seg == 0))) goto done;
            if ((st = mc_ids_push(out, id))) goto done;
            i += tok->tokens[id].len;
            seg = i;
        }
    }
    st = SEGMENT(text + seg, len - seg, seg == 0);
#undef SEGMENT
done:
    free(sc.s);
    free(sc.h);
    free(sc.pieces.v);
    free(sc.parts.v);
    free(a.p);
    free(b.p);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Public: queries and encoding                                             */
/* ------------------------------------------------------------------------ */

const moecl_tokenizer *moecl_model_get_tokenizer(const moecl_model *model) {
    return model ? model->tokenizer : NULL;
}

int32_t moecl_tokenizer_n_vocab(const moecl_tokenizer *tok) { return tok ? tok->n_vocab : 0; }
int32_t moecl_tokenizer_bos_id(const moecl_tokenizer *tok) { return tok ? tok->bos_id : -1; }
int32_t moecl_tokenizer_eos_id(const moecl_tokenizer *tok) { return tok ? tok->eos_id : -1; }

const char *moecl_token_text(const moecl_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->n_vocab) return NULL;
    return tok->tokens[id].text;
}

const char *moecl_token_to_piece(const moecl_tokenizer *tok, int32_t id, size_t *len) {
    if (!tok || id < 0 || id >= tok->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = tok->tokens[id].piece_len;
    return tok->tokens[id].piece;
}

bool moecl_token_is_special(const moecl_tokenizer *tok, int32_t id) {
    return tok && id >= 0 && id < tok->n_vocab && tok->tokens[id].kind == MC_TOK_SPECIAL;
}

moecl_status moecl_tokenize(const moecl_tokenizer *tok, const char *text, size_t len, uint32_t flags,
                            int32_t *tokens, int32_t n_max, int32_t *n_tokens) {
    if (n_tokens) *n_tokens = 0;
    if (!tok || !n_tokens || (!text && len) || n_max < 0 || (!tokens && n_max))
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_tokenize: NULL argument or negative n_max");
    mc_ids ids = {0};
    moecl_status st = MOECL_OK;
    bool bos = tok->add_bos && tok->bos_id >= 0 && !(flags & MOECL_TOKENIZE_NO_BOS);
    bool eos = tok->add_eos && tok->eos_id >= 0 && !(flags & MOECL_TOKENIZE_NO_BOS);
    if (bos && (st = mc_ids_push(&ids, tok->bos_id))) goto done;
    if ((st = mc_tokenizer_encode(tok, text ? text : "", len, (flags & MOECL_TOKENIZE_PARSE_SPECIAL) != 0, &ids)))
        goto done;
    if (eos && (st = mc_ids_push(&ids, tok->eos_id))) goto done;
    if (ids.n > (size_t)INT32_MAX) {
        st = mc_error(MOECL_ERR_INVALID_ARG, "moecl_tokenize: more than 2^31 tokens");
        goto done;
    }
    *n_tokens = (int32_t)ids.n;
    if (!tokens) goto done; /* asking for the count */
    if (ids.n > (size_t)n_max) {
        st = mc_error(MOECL_ERR_INVALID_ARG, "moecl_tokenize: the text is %zu tokens, the buffer holds %d", ids.n,
                      n_max);
        goto done;
    }
    if (ids.n) memcpy(tokens, ids.v, ids.n * sizeof *tokens);
done:
    free(ids.v);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Decoding                                                                 */
/* ------------------------------------------------------------------------ */

/* Append id's piece, dropping leading spaces while *strip > 0. */
static bool append_piece(const moecl_tokenizer *tok, int32_t id, uint32_t flags, int *strip, bool *started, buf *b) {
    const mc_token *t = &tok->tokens[id];
    if (t->kind == MC_TOK_SPECIAL && (flags & MOECL_DETOKENIZE_SKIP_SPECIAL)) return true;
    const char *p = t->piece;
    size_t n = t->piece_len;
    if (!*started) {
        while (*strip > 0 && n > 0 && *p == ' ') {
            p++;
            n--;
            (*strip)--;
        }
        if (t->piece_len) *started = true;
    }
    return buf_put(b, p, n);
}

moecl_status moecl_detokenize(const moecl_tokenizer *tok, const int32_t *ids, int32_t n_ids, uint32_t flags,
                              char *text, size_t cap, size_t *len) {
    if (len) *len = 0;
    if (!tok || !len || (!ids && n_ids) || n_ids < 0 || (!text && cap))
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_detokenize: NULL argument or negative n_ids");
    buf b = {0};
    int strip = (flags & MOECL_DETOKENIZE_KEEP_LEADING_SPACE) ? 0 : tok->dec_strip_left;
    bool started = false;
    moecl_status st = MOECL_OK;
    if (!buf_put(&b, "", 0)) return mc_error(MOECL_ERR_NOMEM, "moecl_detokenize: out of memory");
    for (int32_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= tok->n_vocab) {
            st = mc_error(MOECL_ERR_INVALID_ARG, "moecl_detokenize: id %d is outside the vocabulary (0..%d)", ids[i],
                          tok->n_vocab - 1);
            goto done;
        }
        if (!append_piece(tok, ids[i], flags, &strip, &started, &b)) {
            st = mc_error(MOECL_ERR_NOMEM, "moecl_detokenize: out of memory");
            goto done;
        }
    }
    *len = b.n;
    if (!text) goto done;
    if (b.n + 1 > cap) {
        st = mc_error(MOECL_ERR_INVALID_ARG, "moecl_detokenize: the text is %zu bytes, the buffer holds %zu", b.n + 1,
                      cap);
        goto done;
    }
    memcpy(text, b.p, b.n + 1);
done:
    free(b.p);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Streaming                                                                */
/* ------------------------------------------------------------------------ */

struct moecl_detokenizer {
    const moecl_tokenizer *tok;
    uint32_t flags;
    int strip;
    bool started;
    char pending[4]; /* the start of a UTF-8 sequence not yet complete */
    int n_pending;
    buf out;
};

moecl_status moecl_detokenizer_new(const moecl_tokenizer *tok, uint32_t flags, moecl_detokenizer **out) {
    if (!out) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_detokenizer_new: out is NULL");
    *out = NULL;
    if (!tok) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_detokenizer_new: tokenizer is NULL");
    moecl_detokenizer *d = calloc(1, sizeof *d);
    if (!d) return mc_error(MOECL_ERR_NOMEM, "moecl_detokenizer_new: out of memory");
    d->tok = tok;
    d->flags = flags;
    moecl_detokenizer_reset(d);
    *out = d;
    return MOECL_OK;
}

void moecl_detokenizer_free(moecl_detokenizer *d) {
    if (!d) return;
    free(d->out.p);
    free(d);
}

void moecl_detokenizer_reset(moecl_detokenizer *d) {
    if (!d) return;
    d->strip = (d->flags & MOECL_DETOKENIZE_KEEP_LEADING_SPACE) ? 0 : d->tok->dec_strip_left;
    d->started = false;
    d->n_pending = 0;
}

/* A byte that could begin a sequence still incomplete at the end of s[i..n). */
static bool incomplete_tail(const uint8_t *s, size_t i, size_t n) {
    uint8_t c = s[i];
    int len = (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
    if (!len || i + (size_t)len <= n) return false;
    /* Check what is there: padding with a continuation byte that keeps every
     * constraint tells whether the prefix can still become well-formed. */
    uint8_t tmp[4] = {c, 0x90, 0x90, 0x90};
    if (c == 0xE0) tmp[1] = 0xA0;
    if (c == 0xF4 || c == 0xED) tmp[1] = 0x80;
    for (size_t k = i + 1; k < n; k++) tmp[k - i] = s[k];
    return mc_utf8_len(tmp, (size_t)len) == len;
}

moecl_status moecl_detokenizer_push(moecl_detokenizer *d, int32_t id, const char **text, size_t *len) {
    if (text) *text = "";
    if (len) *len = 0;
    if (!d || !text || !len) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_detokenizer_push: NULL argument");
    if (id < 0 || id >= d->tok->n_vocab)
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_detokenizer_push: id %d is outside the vocabulary (0..%d)", id,
                        d->tok->n_vocab - 1);
    buf *b = &d->out;
    b->n = 0;
    if (!buf_put(b, d->pending, (size_t)d->n_pending) ||
        !append_piece(d->tok, id, d->flags, &d->strip, &d->started, b))
        return mc_error(MOECL_ERR_NOMEM, "moecl_detokenizer_push: out of memory");
    /* Hold back a trailing sequence that is well-formed so far but not whole. */
    const uint8_t *s = (const uint8_t *)b->p;
    size_t n = b->n, keep = n;
    for (size_t i = n > 3 ? n - 3 : 0; i < n; i++) {
        if (incomplete_tail(s, i, n) && mc_utf8_len(s + i, n - i) == 0) {
            keep = i;
            break;
        }
    }
    d->n_pending = (int)(n - keep);
    memcpy(d->pending, b->p + keep, n - keep);
    b->p[keep] = '\0';
    *text = b->p;
    *len = keep;
    return MOECL_OK;
}

moecl_status moecl_detokenizer_flush(moecl_detokenizer *d, const char **text, size_t *len) {
    if (text) *text = "";
    if (len) *len = 0;
    if (!d || !text || !len) return mc_error(MOECL_ERR_INVALID_ARG, "moecl_detokenizer_flush: NULL argument");
    d->out.n = 0;
    if (!buf_put(&d->out, d->pending, (size_t)d->n_pending))
        return mc_error(MOECL_ERR_NOMEM, "moecl_detokenizer_flush: out of memory");
    *text = d->out.p;
    *len = d->out.n;
    d->n_pending = 0;
    return MOECL_OK;
}
