/*
 * tokenizer_gguf_write.c - a tokenizer as GGUF metadata (tokenizer.ggml.*),
 * the way llama.cpp's converter writes a SentencePiece-style Llama/Mistral
 * vocabulary: model "llama", every token's string, a score and a type.
 *
 * llama.cpp tokenizes such a vocabulary by repeatedly merging the adjacent
 * pair whose concatenation is the vocabulary token of highest score. Our
 * tokenizer merges by rank; Hugging Face made those merges from the
 * SentencePiece scores, in order of the merged token's score. So each token
 * gets the score -(best rank of a merge producing it): merging by score then
 * merges in rank order. Tokens no merge produces (characters, bytes,
 * specials) get 0. The merges themselves are written too
 * (tokenizer.ggml.merges, "left right" in rank order), which llama.cpp
 * ignores for this model and moecl uses to reproduce tokenizer.json exactly.
 *
 * A byte-level BPE vocabulary is written as llama.cpp's converter writes
 * one: model "gpt2", tokenizer.ggml.pre naming its pre-tokenizer (a
 * tokenizer whose pre-tokenizer llama.cpp has no name for cannot be
 * written), tokens and types (CONTROL for special added tokens, USER_DEFINED
 * for the others, as their text), the merges, no scores.
 *
 * Either way an added token not marked special that looks like a control
 * token ("<|fim_prefix|>", "<pad>") is written CONTROL: llama.cpp's
 * converter does so, and llama.cpp then keeps it out of plain text.
 */
#include "formats/gguf.h"
#include "tokenizer/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp's token types. */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6 };

typedef struct merge {
    int32_t rank, left, right;
} merge;

static int cmp_merge(const void *a, const void *b) {
    const merge *x = a, *y = b;
    return (x->rank > y->rank) - (x->rank < y->rank);
}

/* tokenizer.ggml.merges: every merge as "left right", in rank order. */
static moecl_status write_merges(const moecl_tokenizer *tok, mc_gguf_writer *w) {
    size_t n = 0, bytes = 0;
    for (size_t i = 0; tok->pairs && i <= tok->pair_mask; i++) n += tok->pairs[i].key != UINT64_MAX;
    if (!n) return MOECL_OK;
    merge *ms = malloc(n * sizeof *ms);
    mc_gguf_str *strs = malloc(n * sizeof *strs);
    char *text = NULL;
    moecl_status st = MOECL_OK;
    if (!ms || !strs) {
        st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory writing the merges", tok->path);
        goto done;
    }
    n = 0;
    for (size_t i = 0; i <= tok->pair_mask; i++) {
        const mc_pair_slot *s = &tok->pairs[i];
        if (s->key == UINT64_MAX) continue;
        ms[n].rank = s->rank;
        ms[n].left = (int32_t)(s->key >> 32);
        ms[n].right = (int32_t)(uint32_t)s->key;
        bytes += tok->tokens[ms[n].left].len + tok->tokens[ms[n].right].len + 1;
        n++;
    }
    qsort(ms, n, sizeof *ms, cmp_merge);
    if (!(text = malloc(bytes ? bytes : 1))) {
        st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory writing the merges", tok->path);
        goto done;
    }
    char *p = text;
    for (size_t i = 0; i < n; i++) {
        const mc_token *l = &tok->tokens[ms[i].left], *r = &tok->tokens[ms[i].right];
        strs[i].ptr = p;
        strs[i].len = (uint64_t)l->len + 1 + r->len;
        memcpy(p, l->text, l->len);
        p[l->len] = ' ';
        memcpy(p + l->len + 1, r->text, r->len);
        p += strs[i].len;
    }
    st = mc_gguf_writer_set_str_arr(w, "tokenizer.ggml.merges", strs, (uint64_t)n);
done:
    free(ms);
    free(strs);
    free(text);
    return st;
}

static bool wrapped_in(const mc_token *t, const char *pre, const char *post) {
    size_t a = strlen(pre), b = strlen(post);
    return t->len >= a + b && !memcmp(t->text, pre, a) && !memcmp(t->text + t->len - b, post, b);
}

/* The added tokens llama.cpp's converter types CONTROL though not special
 * (its does_token_look_special). */
static bool looks_special(const mc_token *t) {
    static const char *const names[] = {"<pad>", "<mask>", "<2mass>", "[@BOS@]"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (t->len == strlen(names[i]) && !memcmp(t->text, names[i], t->len)) return true;
    return wrapped_in(t, "<|", "|>") || wrapped_in(t, "<\xef\xbd\x9c", "\xef\xbd\x9c>") /* <｜...｜> */ ||
           wrapped_in(t, "<unused", ">");
}

moecl_status mc_tokenizer_write_gguf(const moecl_tokenizer *tok, mc_gguf_writer *w) {
    return mc_tokenizer_write_gguf_n(tok, w, tok->n_vocab);
}

moecl_status mc_tokenizer_write_gguf_n(const moecl_tokenizer *tok, mc_gguf_writer *w, int32_t n_total) {
    const int32_t n = n_total > tok->n_vocab ? n_total : tok->n_vocab;
    mc_gguf_str *strs = calloc((size_t)n, sizeof *strs);
    float *scores = calloc((size_t)n, sizeof *scores);
    int32_t *types = calloc((size_t)n, sizeof *types);
    int32_t *best = malloc((size_t)n * sizeof *best);
    char (*unused)[32] = NULL;
    int32_t n_unused = 0;
    moecl_status st = MOECL_OK;
    if (!strs || !scores || !types || !best) {
        st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory writing the tokenizer", tok->path);
        goto done;
    }
    for (int32_t i = 0; i < n; i++) best[i] = INT32_MAX;
    for (size_t i = 0; tok->pairs && i <= tok->pair_mask; i++) {
        const mc_pair_slot *s = &tok->pairs[i];
        if (s->key != UINT64_MAX && s->result >= 0 && s->result < n && s->rank < best[s->result])
            best[s->result] = s->rank;
    }
    for (int32_t i = 0; i < n; i++)
        if (i >= tok->n_vocab || tok->tokens[i].kind == MC_TOK_UNUSED) n_unused++;
    if (n_unused && !(unused = calloc((size_t)n_unused, sizeof *unused))) {
        st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory writing the tokenizer", tok->path);
        goto done;
    }
    for (int32_t i = 0, u = 0; i < n; i++) {
        static const mc_token pad = {.text = "", .kind = MC_TOK_UNUSED};
        const mc_token *t = i < tok->n_vocab ? &tok->tokens[i] : &pad;
        strs[i].ptr = t->text;
        strs[i].len = t->len;
        scores[i] = best[i] == INT32_MAX ? 0.0f : -(float)best[i];
        switch (t->kind) {
        case MC_TOK_BYTE: types[i] = TT_BYTE; break;
        case MC_TOK_SPECIAL: types[i] = i == tok->unk_id ? TT_UNKNOWN : TT_CONTROL; break;
        case MC_TOK_ADDED: types[i] = looks_special(t) ? TT_CONTROL : TT_USER_DEFINED; break;
        case MC_TOK_UNUSED: /* a gap in the ids: a unique placeholder string */
            snprintf(unused[u], sizeof unused[u], tok->byte_level ? "[PAD%d]" : "[moecl unused %d]", i);
            strs[i].ptr = unused[u];
            strs[i].len = strlen(unused[u]);
            u++;
            types[i] = TT_UNUSED;
            break;
        default: types[i] = i == tok->unk_id ? TT_UNKNOWN : TT_NORMAL; break;
        }
    }
    if (tok->byte_level) {
        if (!tok->pre_name) {
            st = mc_error(MOECL_ERR_UNSUPPORTED, "%s: the byte-level pre-tokenizer is none llama.cpp names (%s), so "
                          "it cannot be written as tokenizer.ggml.pre", tok->path, mc_pretok_names());
            goto done;
        }
        if ((st = mc_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2", 4)) ||
            (st = mc_gguf_writer_set_str(w, "tokenizer.ggml.pre", tok->pre_name, strlen(tok->pre_name))) ||
            (st = mc_gguf_writer_set_str_arr(w, "tokenizer.ggml.tokens", strs, (uint64_t)n)) ||
            (st = mc_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MC_GGUF_INT32, types, (uint64_t)n)) ||
            (st = write_merges(tok, w)))
            goto done;
    } else if ((st = mc_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama", 5)) ||
               (st = mc_gguf_writer_set_str_arr(w, "tokenizer.ggml.tokens", strs, (uint64_t)n)) ||
               (st = mc_gguf_writer_set_arr(w, "tokenizer.ggml.scores", MC_GGUF_FLOAT32, scores, (uint64_t)n)) ||
               (st = mc_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MC_GGUF_INT32, types, (uint64_t)n)) ||
               (st = write_merges(tok, w))) {
        goto done;
    }
    if (tok->bos_id >= 0 && (st = mc_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)tok->bos_id)))
        goto done;
    if (tok->eos_id >= 0 && (st = mc_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)tok->eos_id)))
        goto done;
    if (tok->unk_id >= 0 && (st = mc_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)tok->unk_id)))
        goto done;
    if (tok->pad_id >= 0 && (st = mc_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)tok->pad_id)))
        goto done;
    if ((st = mc_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", tok->add_bos)) ||
        (st = mc_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", tok->add_eos)))
        goto done;
    if (tok->chat_template)
        st = mc_gguf_writer_set_str(w, "tokenizer.chat_template", tok->chat_template, strlen(tok->chat_template));
done:
    free(strs);
    free(scores);
    free(types);
    free(best);
    free(unused);
    return st;
}
