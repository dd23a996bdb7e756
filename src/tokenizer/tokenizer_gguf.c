/*
 * tokenizer_gguf.c - the tokenizer in a GGUF file's metadata
 * (tokenizer.ggml.*), read into the same moecl_tokenizer that a Hugging Face
 * tokenizer.json of the Llama/Mistral kind gives.
 *
 * Supported: tokenizer.ggml.model "llama", llama.cpp's SentencePiece ("SPM")
 * vocabulary. Its tokens, scores and token types become the vocabulary;
 * CONTROL and UNKNOWN tokens are special added tokens, USER_DEFINED ones
 * plain added tokens (matched in any text), BYTE ones <0xXX> byte fallback.
 * The normalizer is HF's legacy Llama one, which is llama.cpp's too: "▁"
 * before every piece of text between added tokens (add_space_prefix), then
 * ' ' -> "▁"; the decoder undoes it and drops one leading space.
 *
 * The merge order comes from one of two places:
 *
 *   tokenizer.ggml.merges present ("left right", as tokenizer.json's):
 *       merge by rank, exactly as tokenizer.json does.
 *   otherwise, by score, as llama.cpp and SentencePiece do: of the adjacent
 *       pairs whose concatenation is a vocabulary token, merge the one whose
 *       token has the highest score, the leftmost on ties. That is BPE by rank
 *       over a pair table holding, for every normal token T and every split
 *       of T into two normal tokens L + R, the pair (L, R) -> T with rank =
 *       the place of T's score among all distinct scores, highest first:
 *       equal scores get equal ranks, and the heap takes the leftmost.
 *
 *       Tokenizer symbols start as vocabulary characters or byte tokens, as
 *       in HF; llama.cpp starts from characters and may merge one the
 *       vocabulary lacks into a longer token. No token of a vocabulary that
 *       SentencePiece trained holds a character it lacks (the Mistral one has
 *       none), so the two agree there.
 *
 * Also supported: "gpt2", llama.cpp's byte-level BPE vocabulary. Its
 * tokens are spelled in GPT-2's byte characters ("Ġhello"), merged by
 * tokenizer.ggml.merges (required); CONTROL tokens are special added tokens
 * and USER_DEFINED ones plain added tokens, both matched in the raw text.
 * The pre-tokenizer is the one tokenizer.ggml.pre names (bytelevel.c has
 * the regexes of each name, from the families' tokenizer.json files; an
 * unknown or missing name is refused rather than guessed).
 *
 * Other models are refused as MOECL_ERR_UNSUPPORTED.
 */
#include "formats/gguf.h"
#include "tokenizer/tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp's token types (tokenizer.ggml.token_type). */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6 };

#define MAX_VOCAB (1 << 24)


/* Well-formed UTF-8 without NUL bytes. */
static bool valid_text(const char *p, uint64_t n) {
    const uint8_t *s = (const uint8_t *)p;
    for (uint64_t i = 0; i < n;) {
        int l = s[i] ? mc_utf8_len(s + i, (size_t)(n - i)) : 0;
        if (!l) return false;
        i += (uint64_t)l;
    }
    return true;
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        if (n) memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* ------------------------------------------------------------------------ */
/* Metadata helpers                                                         */
/* ------------------------------------------------------------------------ */

static bool is_int_type(mc_gguf_vtype t) {
    return t <= MC_GGUF_INT32 || t == MC_GGUF_UINT64 || t == MC_GGUF_INT64;
}

/* An array of n values of some integer (ints) or float (!ints) type; absent
 * and !required: *out NULL. */
static moecl_status get_num_array(const mc_gguf *g, const char *key, bool ints, bool required, uint64_t n,
                                  const mc_gguf_kv **out) {
    const mc_gguf_kv *kv = mc_gguf_find_kv(g, key);
    *out = kv;
    if (!kv && !required) return MOECL_OK;
    if (!kv) return mc_error(MOECL_ERR_FORMAT, "%s: metadata key '%s' is missing", mc_gguf_path(g), key);
    bool ok = kv->type == MC_GGUF_ARRAY &&
              (ints ? is_int_type(kv->arr_type) : kv->arr_type == MC_GGUF_FLOAT32 || kv->arr_type == MC_GGUF_FLOAT64);
    if (!ok)
        return mc_error(MOECL_ERR_FORMAT, "%s: metadata key '%s' is %s%s, expected an array of %s", mc_gguf_path(g),
                        key, kv->type == MC_GGUF_ARRAY ? "an array of " : "of type ",
                        mc_gguf_vtype_name(kv->type == MC_GGUF_ARRAY ? kv->arr_type : kv->type),
                        ints ? "integers" : "float32");
    if (kv->n != n)
        return mc_error(MOECL_ERR_FORMAT, "%s: metadata key '%s' has %llu values, tokenizer.ggml.tokens has %llu",
                        mc_gguf_path(g), key, (unsigned long long)kv->n, (unsigned long long)n);
    return MOECL_OK;
}

/* A token id key: absent leaves *id; present must name a token. */
static moecl_status get_id(const mc_gguf *g, const char *key, int32_t n_vocab, int32_t *id) {
    int64_t v = INT64_MIN;
    moecl_status st = mc_gguf_get_int(g, key, false, &v);
    if (st || v == INT64_MIN) return st;
    if (v < 0 || v >= n_vocab)
        return mc_error(MOECL_ERR_FORMAT, "%s: metadata key '%s' = %lld is not a token id (0..%d)", mc_gguf_path(g),
                        key, (long long)v, n_vocab - 1);
    *id = (int32_t)v;
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* The vocabulary                                                           */
/* ------------------------------------------------------------------------ */

static moecl_status read_tokens(moecl_tokenizer *tok, const mc_gguf_kv *tokens,
                                const mc_gguf_kv *types) {
    const char *P = tok->path;
    moecl_status st = mc_tokenizer_alloc_vocab(tok, (int32_t)tokens->n);
    if (st) return st;
    int n_bytes = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        mc_token *t = &tok->tokens[id];
        const mc_gguf_str *s = &tokens->strs[id];
        int64_t type = mc_gguf_arr_int(types, (uint64_t)id);
        if (type < TT_NORMAL || type > TT_BYTE)
            return mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.ggml.token_type[%d] = %lld is not a token type (1..6)",
                            P, id, (long long)type);
        if (s->len > 65536 || !valid_text(s->ptr, s->len))
            return mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%d] is not valid UTF-8 text without NUL "
                            "bytes (or is longer than 64 KiB)", P, id);
        if (s->len == 0 && type != TT_UNUSED)
            return mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%d] is empty", P, id);
        if (!(t->text = dup_n(s->ptr, (size_t)s->len))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
        t->len = (uint32_t)s->len;
        switch (type) {
        case TT_NORMAL: t->kind = MC_TOK_NORMAL; break;
        case TT_UNKNOWN:
        case TT_CONTROL: t->kind = MC_TOK_SPECIAL; break;
        case TT_USER_DEFINED:
            t->kind = MC_TOK_ADDED;
            tok->has_nonspecial_added = true;
            break;
        case TT_UNUSED: t->kind = MC_TOK_UNUSED; continue; /* never matched: keep it out of the string table */
        default:
            if (!mc_tokenizer_byte_token(t->text, t->len, &t->byte))
                return mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%d] \"%s\" has type BYTE but is not "
                                "<0xXX>", P, id, t->text);
            t->kind = MC_TOK_BYTE;
            n_bytes++;
        }
        if (type == TT_UNKNOWN && tok->unk_id < 0) tok->unk_id = id; /* unless unknown_token_id says otherwise */
        int32_t o = mc_tokenizer_str_insert(tok, id);
        if (o >= 0)
            return mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%d] \"%s\" repeats tokens[%d]", P, id,
                            t->text, o);
    }

    if (tok->byte_level) {
        if (n_bytes)
            return mc_error(MOECL_ERR_FORMAT, "%s: a \"gpt2\" vocabulary with BYTE tokens (<0xXX>)", P);
        return MOECL_OK;
    }
    /* Byte fallback: all 256 <0xXX> tokens, or none (unknown characters become <unk>). */
    tok->byte_fallback = n_bytes > 0;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        int32_t id = mc_tokenizer_find(tok, name, 6);
        tok->byte_id[b] = id >= 0 && tok->tokens[id].kind == MC_TOK_BYTE ? id : -1;
        if (tok->byte_fallback && tok->byte_id[b] < 0)
            return mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %d byte tokens but not %s (byte "
                            "fallback needs all 256)", P, n_bytes, name);
    }
    for (int c = 0; c < 128; c++) {
        char s = (char)c;
        tok->ascii_id[c] = mc_tokenizer_find(tok, &s, 1);
    }
    return MOECL_OK;
}

/* tokenizer.ggml.merges: "left right", ranked by position. */
static moecl_status read_merges(moecl_tokenizer *tok, const mc_gguf_kv *merges) {
    const char *P = tok->path;
    if (merges->n > (uint64_t)INT32_MAX / 4) return mc_error(MOECL_ERR_FORMAT, "%s: too many merges", P);
    moecl_status st = mc_tokenizer_alloc_pairs(tok, (size_t)merges->n);
    if (st) return st;
    char *buf = NULL;
    size_t cap = 0;
    for (uint64_t i = 0; i < merges->n && !st; i++) {
        const mc_gguf_str *m = &merges->strs[i];
        const char *sp = m->len ? memchr(m->ptr, ' ', (size_t)m->len) : NULL;
        size_t ll = sp ? (size_t)(sp - m->ptr) : 0, rl = sp ? (size_t)m->len - ll - 1 : 0;
        if (!sp || !ll || !rl || memchr(sp + 1, ' ', rl)) {
            st = mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu] is not \"left right\"", P,
                          (unsigned long long)i);
            break;
        }
        int32_t a = mc_tokenizer_find(tok, m->ptr, ll), b = mc_tokenizer_find(tok, sp + 1, rl);
        if (a < 0 || b < 0) {
            st = mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu] names \"%.*s\", which is not in the "
                          "vocabulary", P, (unsigned long long)i, (int)(a < 0 ? ll : rl), a < 0 ? m->ptr : sp + 1);
            break;
        }
        if (ll + rl > cap) {
            cap = (ll + rl) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
                break;
            }
            buf = nb;
        }
        memcpy(buf, m->ptr, ll);
        memcpy(buf + ll, sp + 1, rl);
        int32_t c = mc_tokenizer_find(tok, buf, ll + rl);
        if (c < 0) {
            st = mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu] makes \"%.*s\", which is not in the "
                          "vocabulary", P, (unsigned long long)i, (int)(ll + rl), buf);
            break;
        }
        mc_tokenizer_pair_insert(tok, a, b, (int32_t)i, c);
    }
    free(buf);
    return st;
}

/* Every split of a normal token T into two normal tokens L + R. Hashing both
 * halves at every split point costs O(len^2) per token (a 64 KiB token: 4
 * G byte hashes). Instead two tries of the normal tokens, one of their
 * bytes read forward and one backward, are walked along T: the forward walk
 * meets every prefix of T that is a token, the backward walk every suffix,
 * each in one step per byte, and stops where no token goes on. The work is
 * at most 4 steps per byte of the normal tokens (two inserts, two walks). */

typedef struct trie_edge {
    uint64_t key; /* (node << 8 | byte) + 1; 0: empty slot */
    int32_t child;
} trie_edge;

typedef struct trie {
    trie_edge *edges; /* open addressing, at most half full */
    size_t mask, n_edges;
    int32_t *token;   /* by node: the normal token ending there, or -1 */
    size_t n_nodes, cap_nodes;
} trie;

typedef struct split {
    int32_t left, right, result;
} split;

typedef struct split_builder {
    moecl_tokenizer *tok;
    trie fwd, bwd;
    split *splits;
    size_t n_splits, cap_splits;
    uint64_t work, next_poll; /* trie steps taken; when to poll progress next */
    moecl_progress_fn progress;
    void *progress_user;
} split_builder;

#define POLL_STEPS ((uint64_t)1 << 18) /* steps between progress calls: about a millisecond */

static size_t edge_slot(uint64_t key, size_t mask) { return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & mask; }

static bool trie_init(trie *t) {
    memset(t, 0, sizeof *t);
    t->mask = 1023;
    t->cap_nodes = 512;
    t->edges = calloc(t->mask + 1, sizeof *t->edges);
    t->token = malloc(t->cap_nodes * sizeof *t->token);
    if (!t->edges || !t->token) return false;
    t->token[0] = -1;
    t->n_nodes = 1;
    return true;
}

static void trie_free(trie *t) {
    free(t->edges);
    free(t->token);
}

/* The child of node by byte b, or -1; one step of work (plus probes). */
static int32_t trie_child(const trie *t, int32_t node, uint8_t b, uint64_t *work) {
    const uint64_t key = ((uint64_t)node << 8 | b) + 1;
    for (size_t i = edge_slot(key, t->mask);; i = (i + 1) & t->mask) {
        ++*work;
        if (t->edges[i].key == key) return t->edges[i].child;
        if (!t->edges[i].key) return -1;
    }
}

static bool trie_grow(trie *t) {
    size_t mask = t->mask * 2 + 1;
    trie_edge *e = calloc(mask + 1, sizeof *e);
    if (!e) return false;
    for (size_t i = 0; i <= t->mask; i++) {
        if (!t->edges[i].key) continue;
        size_t j = edge_slot(t->edges[i].key, mask);
        while (e[j].key) j = (j + 1) & mask;
        e[j] = t->edges[i];
    }
    free(t->edges);
    t->edges = e;
    t->mask = mask;
    return true;
}

/* Add text (read backward if rev) as token id. False: out of memory. */
static bool trie_insert(trie *t, const uint8_t *text, uint32_t len, bool rev, int32_t id, uint64_t *work) {
    int32_t node = 0;
    for (uint32_t k = 0; k < len; k++) {
        const uint8_t b = text[rev ? len - 1 - k : k];
        int32_t c = trie_child(t, node, b, work);
        if (c < 0) {
            if ((t->n_edges + 1) * 2 > t->mask + 1 && !trie_grow(t)) return false;
            if (t->n_nodes == t->cap_nodes) {
                int32_t *nt = realloc(t->token, t->cap_nodes * 2 * sizeof *nt);
                if (!nt) return false;
                t->token = nt;
                t->cap_nodes *= 2;
            }
            c = (int32_t)t->n_nodes++;
            t->token[c] = -1;
            const uint64_t key = ((uint64_t)node << 8 | b) + 1;
            size_t i = edge_slot(key, t->mask);
            while (t->edges[i].key) i = (i + 1) & t->mask;
            t->edges[i] = (trie_edge){key, c};
            t->n_edges++;
        }
        node = c;
    }
    t->token[node] = id;
    return true;
}

static moecl_status poll_progress(split_builder *b) {
    if (!b->progress || b->work < b->next_poll) return MOECL_OK;
    b->next_poll = b->work + POLL_STEPS;
    /* The tensors, which the load's fraction counts, come later: still 0. */
    if (!b->progress(0.0f, b->progress_user))
        return mc_error(MOECL_ERR_ABORTED, "%s: loading cancelled by the progress callback (while building the "
                        "merge table from tokenizer.ggml.scores)", b->tok->path);
    return MOECL_OK;
}

/* Append T = tokens[id]'s splits to b->splits. left_at: scratch of T's length. */
static moecl_status splits_of(split_builder *b, int32_t id, int32_t *left_at) {
    const mc_token *t = &b->tok->tokens[id];
    const uint8_t *s = (const uint8_t *)t->text;
    const uint32_t n = t->len;
    /* left_at[k]: the token T[0, k), for 0 < k < n */
    int32_t node = 0;
    uint32_t reach = 0; /* prefixes T[0, k) for k <= reach were walked */
    for (uint32_t k = 1; k < n; k++) {
        left_at[k] = -1;
        if (node >= 0 && (node = trie_child(&b->fwd, node, s[k - 1], &b->work)) >= 0) {
            left_at[k] = b->fwd.token[node];
            reach = k;
        }
    }
    /* suffixes T[k, n), from the shortest: stop where no token ends that way, or no prefix is left */
    node = 0;
    for (uint32_t k = n - 1; k >= 1 && node >= 0; k--) {
        node = trie_child(&b->bwd, node, s[k], &b->work);
        if (node < 0 || k > reach || left_at[k] < 0 || b->bwd.token[node] < 0) continue;
        if ((s[k] & 0xC0) == 0x80) continue; /* never for valid UTF-8 halves; kept as the old rule */
        if (b->n_splits == b->cap_splits) {
            size_t cap = b->cap_splits ? b->cap_splits * 2 : 4096;
            split *ns = realloc(b->splits, cap * sizeof *ns);
            if (!ns) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", b->tok->path);
            b->splits = ns;
            b->cap_splits = cap;
        }
        b->splits[b->n_splits++] = (split){left_at[k], b->bwd.token[node], id};
    }
    return poll_progress(b);
}

/* Both tries, then every normal token's splits. */
static moecl_status find_splits(split_builder *b) {
    moecl_tokenizer *tok = b->tok;
    const char *P = tok->path;
    /* a node per byte at most, numbered in an int32_t */
    uint64_t total = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++)
        if (tok->tokens[id].kind == MC_TOK_NORMAL) total += tok->tokens[id].len;
    if (total >= (uint64_t)INT32_MAX)
        return mc_error(MOECL_ERR_FORMAT, "%s: the normal tokens hold %llu bytes, more than the %d a merge table "
                        "from scores is built for", P, (unsigned long long)total, INT32_MAX - 1);
    if (!trie_init(&b->fwd) || !trie_init(&b->bwd)) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
    uint32_t longest = 0;
    moecl_status st;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        const mc_token *t = &tok->tokens[id];
        if (t->kind != MC_TOK_NORMAL) continue;
        if (!trie_insert(&b->fwd, (const uint8_t *)t->text, t->len, false, id, &b->work) ||
            !trie_insert(&b->bwd, (const uint8_t *)t->text, t->len, true, id, &b->work))
            return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
        if (t->len > longest) longest = t->len;
        if ((st = poll_progress(b))) return st;
    }
    int32_t *left_at = malloc(((size_t)longest + 1) * sizeof *left_at);
    if (!left_at) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
    st = MOECL_OK;
    for (int32_t id = 0; id < tok->n_vocab && !st; id++)
        if (tok->tokens[id].kind == MC_TOK_NORMAL) st = splits_of(b, id, left_at);
    free(left_at);
    return st;
}

typedef struct scored {
    float score;
    int32_t id;
} scored;

static int by_score_desc(const void *a, const void *b) {
    float x = ((const scored *)a)->score, y = ((const scored *)b)->score;
    return x > y ? -1 : x < y ? 1 : 0;
}

/* The pair table from scores (see the top of the file); no scores: all 0. */
static moecl_status pairs_from_scores(moecl_tokenizer *tok, const mc_gguf_kv *scores_kv, moecl_progress_fn progress,
                                      void *progress_user, uint64_t *work) {
    const char *P = tok->path;
    const int32_t n = tok->n_vocab;
    scored *order = malloc((size_t)n * sizeof *order);
    int32_t *rank = malloc((size_t)n * sizeof *rank);
    split_builder b = {.tok = tok, .progress = progress, .progress_user = progress_user, .next_poll = POLL_STEPS};
    moecl_status st = MOECL_OK;
    if (!order || !rank) {
        st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
        goto done;
    }
    for (int32_t id = 0; id < n; id++) {
        double s = scores_kv ? mc_gguf_arr_float(scores_kv, (uint64_t)id) : 0.0;
        if (!isfinite(s) || fabs(s) > 3.4e38) {
            st = mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.ggml.scores[%d] is not a finite float32", P, id);
            goto done;
        }
        rank[id] = -1;
    }
    if ((st = find_splits(&b))) goto done;
    /* The tokens that are made by a split, by score, highest first. */
    int32_t n_cand = 0;
    for (size_t i = 0; i < b.n_splits; i++) {
        const int32_t id = b.splits[i].result;
        if (rank[id] == -2) continue;
        rank[id] = -2;
        order[n_cand++] = (scored){(float)(scores_kv ? mc_gguf_arr_float(scores_kv, (uint64_t)id) : 0.0), id};
    }
    /* Dense ranks: equal scores, equal rank (the heap then takes the leftmost pair). The sort
     * is not stable, which does not matter: only the score decides a rank. */
    qsort(order, (size_t)n_cand, sizeof *order, by_score_desc);
    int32_t r = -1;
    for (int32_t i = 0; i < n_cand; i++) {
        if (i == 0 || order[i].score != order[i - 1].score) r++;
        rank[order[i].id] = r;
    }
    if (n_cand > 1 && r == 0)
        mc_log(MOECL_LOG_WARN, "%s: every token has the same score and there are no tokenizer.ggml.merges: the merge "
               "order is lost (llama.cpp writes such files from a tokenizer.json alone), so the text is tokenized "
               "as llama.cpp would, not as tokenizer.json would", P);
    if ((st = mc_tokenizer_alloc_pairs(tok, b.n_splits))) goto done;
    /* Best rank first, as before: a pair names one token, so the order only shapes the table. */
    for (size_t i = 0; i < b.n_splits; i++)
        mc_tokenizer_pair_insert(tok, b.splits[i].left, b.splits[i].right, rank[b.splits[i].result],
                                 b.splits[i].result);
done:
    if (work) *work = b.work;
    trie_free(&b.fwd);
    trie_free(&b.bwd);
    free(b.splits);
    free(order);
    free(rank);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Normalizer, decoder, special ids                                         */
/* ------------------------------------------------------------------------ */

static moecl_status add_norm(moecl_tokenizer *tok, int op, const char *a, const char *b) {
    mc_norm_step *n = realloc(tok->norm, (size_t)(tok->n_norm + 1) * sizeof *n);
    if (!n) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    tok->norm = n;
    mc_norm_step *s = &tok->norm[tok->n_norm++];
    *s = (mc_norm_step){.op = op, .a = dup_n(a, strlen(a)), .b = b ? dup_n(b, strlen(b)) : NULL};
    if (!s->a || (b && !s->b)) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", tok->path);
    return MOECL_OK;
}

/* A "gpt2" vocabulary's pre-tokenizer, by name, and its byte tokens. */
static moecl_status read_bpe_settings(moecl_tokenizer *tok, const mc_gguf *g) {
    const char *P = tok->path;
    mc_gguf_str pre = {0};
    moecl_status st = mc_gguf_get_str(g, "tokenizer.ggml.pre", false, &pre);
    if (st) return st;
    if (!pre.ptr)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: a \"gpt2\" vocabulary without tokenizer.ggml.pre: its "
                        "pre-tokenizer is unknown (moecl knows %s)", P, mc_pretok_names());
    const mc_named_pretok *np = mc_pretok_by_name(pre.ptr, (size_t)pre.len);
    if (!np)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: tokenizer.ggml.pre \"%.*s\" is not a pre-tokenizer moecl knows "
                        "(%s)", P, (int)(pre.len > 40 ? 40 : pre.len), pre.ptr, mc_pretok_names());
    if ((st = mc_tokenizer_set_named_pretok(tok, np))) return st;
    tok->dec_byte_level = true;
    mc_tokenizer_bl_bytes(tok);
    for (int b = 0; b < 256; b++) /* as in tokenizer.json: only bytes no UTF-8 holds may lack a token */
        if (tok->bl_byte_id[b] < 0 && b != 0xC0 && b != 0xC1 && b < 0xF5)
            return mc_error(MOECL_ERR_FORMAT, "%s: a \"gpt2\" vocabulary without the token for byte 0x%02X", P, b);
    return MOECL_OK;
}

static moecl_status read_settings(moecl_tokenizer *tok, const mc_gguf *g) {
    const char *P = tok->path;
    bool space_prefix = true, extra_ws = false;
    moecl_status st;
    if (tok->byte_level) {
        if ((st = read_bpe_settings(tok, g))) return st;
        goto ids;
    }
    if ((st = mc_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", false, &space_prefix)) ||
        (st = mc_gguf_get_bool(g, "tokenizer.ggml.remove_extra_whitespaces", false, &extra_ws)))
        return st;
    if (extra_ws)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: tokenizer.ggml.remove_extra_whitespaces is not supported", P);
    const mc_gguf_kv *cmap = mc_gguf_find_kv(g, "tokenizer.ggml.precompiled_charsmap");
    if (cmap && !(cmap->type == MC_GGUF_ARRAY && cmap->n == 0))
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: tokenizer.ggml.precompiled_charsmap (a SentencePiece "
                        "normalizer) is not supported", P);

    /* HF's legacy Llama normalizer, llama.cpp's SPM rule: the decoder's mirror image. */
    if (space_prefix && (st = add_norm(tok, MC_NORM_PREPEND, "\xe2\x96\x81", NULL))) return st;
    if ((st = add_norm(tok, MC_NORM_REPLACE, " ", "\xe2\x96\x81"))) return st;
    tok->dec_metaspace = true;
    if (!(tok->dec_replacement = dup_n("\xe2\x96\x81", 3))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
    tok->dec_strip_left = space_prefix ? 1 : 0;
    tok->fuse_unk = true;

    /* Special ids: llama.cpp's defaults for this model where a key is absent
     * (none for "gpt2", whose files always name theirs). */
ids:;
    const int32_t n = tok->n_vocab;
    tok->bos_id = n > 1 && !tok->byte_level ? 1 : -1;
    tok->eos_id = n > 2 && !tok->byte_level ? 2 : -1;
    tok->add_bos = !tok->byte_level;
    tok->add_eos = false;
    if ((st = get_id(g, "tokenizer.ggml.bos_token_id", n, &tok->bos_id)) ||
        (st = get_id(g, "tokenizer.ggml.eos_token_id", n, &tok->eos_id)) ||
        (st = get_id(g, "tokenizer.ggml.unknown_token_id", n, &tok->unk_id)) ||
        (st = get_id(g, "tokenizer.ggml.padding_token_id", n, &tok->pad_id)) ||
        (st = mc_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", false, &tok->add_bos)) ||
        (st = mc_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", false, &tok->add_eos)))
        return st;
    if (tok->add_bos && tok->bos_id < 0) tok->add_bos = false;
    if (tok->add_eos && tok->eos_id < 0) tok->add_eos = false;

    mc_gguf_str tmpl = {0};
    if ((st = mc_gguf_get_str(g, "tokenizer.chat_template", false, &tmpl))) return st;
    if (tmpl.ptr) {
        if (memchr(tmpl.ptr, '\0', (size_t)tmpl.len))
            return mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.chat_template holds a NUL byte", P);
        if (!(tok->chat_template = dup_n(tmpl.ptr, (size_t)tmpl.len)))
            return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", P);
    }
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* The whole tokenizer                                                      */
/* ------------------------------------------------------------------------ */

static bool merges_kv_present(const mc_gguf *g) { return mc_gguf_find_kv(g, "tokenizer.ggml.merges") != NULL; }

moecl_status mc_tokenizer_from_gguf(const mc_gguf *g, moecl_tokenizer **out) {
    return mc_tokenizer_from_gguf_ex(g, NULL, NULL, NULL, out);
}

moecl_status mc_tokenizer_from_gguf_ex(const mc_gguf *g, moecl_progress_fn progress, void *progress_user,
                                       uint64_t *work, moecl_tokenizer **out) {
    *out = NULL;
    if (work) *work = 0;
    const char *path = mc_gguf_path(g);
    mc_gguf_str model = {0};
    moecl_status st = mc_gguf_get_str(g, "tokenizer.ggml.model", false, &model);
    if (st) return st;
    const mc_gguf_kv *tokens_kv = mc_gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!model.ptr && !tokens_kv) return MOECL_OK; /* no tokenizer in this file */
    if (!model.ptr)
        return mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.ggml.tokens without tokenizer.ggml.model", path);
    if ((model.len == 4 && !memcmp(model.ptr, "none", 4)) || (model.len == 8 && !memcmp(model.ptr, "no_vocab", 8)))
        return MOECL_OK;
    bool gpt2 = model.len == 4 && !memcmp(model.ptr, "gpt2", 4);
    if (!(model.len == 5 && !memcmp(model.ptr, "llama", 5)) && !gpt2)
        return mc_error(MOECL_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model \"%.*s\" is not supported (moecl reads "
                        "\"llama\", SentencePiece-style vocabularies, and \"gpt2\", byte-level BPE)", path,
                        (int)(model.len > 32 ? 32 : model.len), model.ptr);
    if (gpt2 && !merges_kv_present(g))
        return mc_error(MOECL_ERR_FORMAT, "%s: a \"gpt2\" vocabulary without tokenizer.ggml.merges", path);

    const mc_gguf_kv *types_kv, *scores_kv, *merges_kv = NULL;
    if ((st = mc_gguf_get_arr(g, "tokenizer.ggml.tokens", true, MC_GGUF_STRING, &tokens_kv))) return st;
    if (tokens_kv->n == 0 || tokens_kv->n > MAX_VOCAB)
        return mc_error(MOECL_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu tokens (1..%d)", path,
                        (unsigned long long)tokens_kv->n, MAX_VOCAB);
    if ((st = get_num_array(g, "tokenizer.ggml.token_type", true, true, tokens_kv->n, &types_kv)) ||
        (st = get_num_array(g, "tokenizer.ggml.scores", false, false, tokens_kv->n, &scores_kv)) ||
        (st = mc_gguf_get_arr(g, "tokenizer.ggml.merges", false, MC_GGUF_STRING, &merges_kv)))
        return st;

    moecl_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok || !(tok->path = dup_n(path, strlen(path)))) {
        free(tok);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
    }
    tok->bos_id = tok->eos_id = tok->unk_id = tok->pad_id = -1;
    tok->byte_level = gpt2;
    if ((st = read_tokens(tok, tokens_kv, types_kv))) goto fail;
    if ((st = merges_kv ? read_merges(tok, merges_kv) : pairs_from_scores(tok, scores_kv, progress, progress_user, work)))
        goto fail;
    if ((st = read_settings(tok, g))) goto fail;
    if ((st = mc_tokenizer_finish(tok))) goto fail;
    for (int32_t id = 0; id < tok->n_vocab; id++) { /* unused ids read back as nothing, as in tokenizer.json */
        mc_token *t = &tok->tokens[id];
        if (t->kind == MC_TOK_UNUSED) t->piece[t->piece_len = 0] = '\0';
    }
    *out = tok;
    return MOECL_OK;
fail:
    moecl_tokenizer_free(tok);
    return st;
}

moecl_status mc_tokenizer_load_gguf(const char *path, moecl_tokenizer **out) {
    *out = NULL;
    mc_gguf *g = NULL;
    moecl_status st = mc_gguf_open(path, &g);
    if (!st) st = mc_tokenizer_from_gguf(g, out);
    mc_gguf_close(g); /* the tokenizer keeps copies, nothing in the mapping */
    if (!st && !*out)
        st = mc_error(MOECL_ERR_FORMAT, "%s: the GGUF file has no tokenizer (no tokenizer.ggml.* metadata)", path);
    return st;
}
