/*
 * chat.c - conversation formats. Mixtral-Instruct's, token for token as
 * mistral-common's v1 instruct tokenizer (the reference for Mixtral 8x7B
 * Instruct) encodes it:
 *
 *   <s> tok("[INST] " system "\n\n" user1 " [/INST]") tok(assistant1) </s>
 *       tok("[INST] " user2 " [/INST]") ...
 *
 * Each piece is tokenized on its own (so each starts with "▁"), the system
 * messages (all of them, joined by "\n\n") go before the first user
 * message, and consecutive messages of one role are joined by "\n\n".
 * Text in messages is plain text: "[INST]" or "</s>" written by a user stay
 * text, never control tokens.
 *
 * The other formats (ChatML and its Qwen variants, OLMoE's) are what the
 * family's Jinja chat template renders for system/user/assistant messages
 * with add_generation_prompt, tokenized as transformers' apply_chat_template
 * tokenizes it: the whole text at once, special-token strings recognised.
 * The templates are recognised by what they say (moecl_chat_format), not
 * interpreted: moecl has no Jinja engine.
 */
#include "tokenizer/tokenizer.h"

#include <stdlib.h>
#include <string.h>

typedef struct turn {
    bool user;
    char *text;
    size_t len;
} turn;

static bool append(char **s, size_t *len, const char *add, size_t n) {
    char *p = realloc(*s, *len + n + 1);
    if (!p) return false;
    memcpy(p + *len, add, n);
    *len += n;
    p[*len] = '\0';
    *s = p;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Mixtral-Instruct                                                         */
/* ------------------------------------------------------------------------ */

static moecl_status mistral_ids(const moecl_tokenizer *tok, const moecl_chat_message *messages, int32_t n_messages,
                                uint32_t flags, mc_ids *ids) {
    turn *turns = calloc((size_t)n_messages + 1, sizeof *turns);
    char *sys = NULL, *piece = NULL;
    size_t sys_len = 0;
    int n_turns = 0;
    moecl_status st = MOECL_OK;
    if (!turns) return mc_error(MOECL_ERR_NOMEM, "moecl_chat_tokenize: out of memory");

    for (int32_t i = 0; i < n_messages; i++) {
        const char *role = messages[i].role, *content = messages[i].content;
        if (!role || !content) {
            st = mc_error(MOECL_ERR_INVALID_ARG, "moecl_chat_tokenize: message %d has a NULL role or content", i);
            goto done;
        }
        bool is_sys = !strcmp(role, "system"), user = !strcmp(role, "user");
        if (!is_sys && !user && strcmp(role, "assistant")) {
            st = mc_error(MOECL_ERR_INVALID_ARG, "moecl_chat_tokenize: message %d has role \"%s\" (system, user or "
                          "assistant)", i, role);
            goto done;
        }
        char **dst = is_sys ? &sys : NULL;
        size_t *dst_len = is_sys ? &sys_len : NULL;
        if (!is_sys) {
            if (!n_turns || turns[n_turns - 1].user != user) turns[n_turns++].user = user;
            dst = &turns[n_turns - 1].text;
            dst_len = &turns[n_turns - 1].len;
        }
        if ((*dst && !append(dst, dst_len, "\n\n", 2)) || !append(dst, dst_len, content, strlen(content))) {
            st = mc_error(MOECL_ERR_NOMEM, "moecl_chat_tokenize: out of memory");
            goto done;
        }
    }
    if (!n_turns || !turns[0].user || !turns[n_turns - 1].user) {
        st = mc_error(MOECL_ERR_INVALID_ARG, "moecl_chat_tokenize: the conversation must start and end with a user "
                      "message (system messages aside)");
        goto done;
    }
    if (!(flags & MOECL_CHAT_NO_BOS) && tok->bos_id >= 0 && (st = mc_ids_push(ids, tok->bos_id))) goto done;
    for (int k = 0; k < n_turns; k++) {
        size_t plen = 0;
        free(piece);
        piece = NULL;
        bool ok = true;
        if (turns[k].user) {
            ok = append(&piece, &plen, "[INST] ", 7);
            if (ok && k == 0 && sys) ok = append(&piece, &plen, sys, sys_len) && append(&piece, &plen, "\n\n", 2);
            ok = ok && append(&piece, &plen, turns[k].text, turns[k].len) && append(&piece, &plen, " [/INST]", 8);
        } else {
            ok = append(&piece, &plen, turns[k].text, turns[k].len);
        }
        if (!ok) {
            st = mc_error(MOECL_ERR_NOMEM, "moecl_chat_tokenize: out of memory");
            goto done;
        }
        if ((st = mc_tokenizer_encode(tok, piece, plen, false, ids))) goto done;
        if (!turns[k].user && tok->eos_id >= 0 && (st = mc_ids_push(ids, tok->eos_id))) goto done;
    }
done:
    for (int k = 0; k < n_turns; k++) free(turns[k].text);
    free(turns);
    free(sys);
    free(piece);
    return st;
}
/* ------------------------------------------------------------------------ */
/* Formats rendered as text                                                 */
/* ------------------------------------------------------------------------ */

enum fmt { FMT_MISTRAL, FMT_CHATML, FMT_QWEN2, FMT_QWEN25, FMT_QWEN3, FMT_OLMOE };
static const char *const fmt_names[] = {"mistral", "chatml", "qwen2", "qwen2.5", "qwen3", "olmoe"};
#define N_FMT 6
#define FMT_LIST "mistral, chatml, qwen2, qwen2.5, qwen3 and olmoe" /* fmt_names, for messages */

static const char qwen2_system[] = "You are a helpful assistant.";
static const char qwen25_system[] = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

typedef struct text {
    char *p;
    size_t n;
    bool ok;
} text;

static void put(text *t, const char *s, size_t n) {
    if (t->ok && !append(&t->p, &t->n, s, n)) t->ok = false;
}
static void puts_(text *t, const char *s) { put(t, s, strlen(s)); }

/* s[a, b) without the given characters at its ends (Python's strip). */
static void strip_nl(const char *s, size_t *a, size_t *b, bool left, bool right) {
    while (left && *a < *b && s[*a] == '\n') (*a)++;
    while (right && *b > *a && s[*b - 1] == '\n') (*b)--;
}

static const char *find_last(const char *s, size_t n, const char *pat) {
    size_t pl = strlen(pat);
    for (size_t i = n >= pl ? n - pl + 1 : 0; i-- > 0;)
        if (!memcmp(s + i, pat, pl)) return s + i;
    return NULL;
}

/* One Qwen3 assistant message: reasoning split off as the template does
 * (content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n'),
 * answer content.split('</think>')[-1].lstrip('\n')). */
static void qwen3_assistant(text *t, const char *c, bool after_last_query, bool last) {
    size_t n = strlen(c);
    const char *end_think = strstr(c, "</think>");
    size_t ra = 0, rb = 0, ca = 0, cb = n;
    if (end_think) {
        rb = (size_t)(end_think - c);
        strip_nl(c, &ra, &rb, false, true);
        const char *open = find_last(c, rb, "<think>");
        if (open) ra = (size_t)(open - c) + 7;
        strip_nl(c, &ra, &rb, true, false);
        ca = (size_t)(find_last(c, n, "</think>") - c) + 8;
        strip_nl(c, &ca, &cb, true, false);
    }
    puts_(t, "<|im_start|>assistant\n");
    if (after_last_query && (last || rb > ra)) {
        strip_nl(c, &ra, &rb, true, true);
        puts_(t, "<think>\n");
        put(t, c + ra, rb - ra);
        puts_(t, "\n</think>\n\n");
        strip_nl(c, &ca, &cb, true, false);
    }
    put(t, c + ca, cb - ca);
    puts_(t, "<|im_end|>\n");
}

static void chatml_message(text *t, const char *role, const char *content) {
    puts_(t, "<|im_start|>");
    puts_(t, role);
    puts_(t, "\n");
    puts_(t, content);
    puts_(t, "<|im_end|>\n");
}

/* What the family's template renders (see moecl.h). */
static moecl_status render(const moecl_tokenizer *tok, int fmt, const moecl_chat_message *m, int32_t n,
                           uint32_t flags, text *t) {
    bool cont = flags & MOECL_CHAT_NO_BOS;
    if (cont) puts_(t, "\n"); /* after the end-of-turn token of the reply before */
    if (fmt == FMT_OLMOE) {
        if (!cont) puts_(t, tok->tokens[tok->bos_id].text);
        for (int32_t i = 0; i < n; i++) {
            const char *r = m[i].role;
            puts_(t, !strcmp(r, "system") ? "<|system|>\n" : !strcmp(r, "user") ? "<|user|>\n" : "<|assistant|>\n");
            puts_(t, m[i].content);
            if (!strcmp(r, "assistant")) puts_(t, tok->tokens[tok->eos_id].text);
            if (i + 1 < n || strcmp(r, "assistant")) puts_(t, "\n");
        }
        if (n) puts_(t, "<|assistant|>\n");
        return MOECL_OK;
    }
    bool first_sys = n > 0 && !strcmp(m[0].role, "system");
    if ((fmt == FMT_QWEN2 || fmt == FMT_QWEN25) && !first_sys && !cont)
        chatml_message(t, "system", fmt == FMT_QWEN2 ? qwen2_system : qwen25_system);
    int32_t last_query = n - 1;
    if (fmt == FMT_QWEN3) {
        for (int32_t i = n - 1; i >= 0; i--) {
            const char *c = m[i].content;
            size_t cl = strlen(c);
            bool tool_response = cl >= 16 && !strncmp(c, "<tool_response>", 15) && cl >= 16 &&
                                 !strcmp(c + cl - 16, "</tool_response>");
            if (!strcmp(m[i].role, "user") && !tool_response) {
                last_query = i;
                break;
            }
        }
    }
    for (int32_t i = 0; i < n; i++) {
        if (fmt == FMT_QWEN3 && !strcmp(m[i].role, "assistant"))
            qwen3_assistant(t, m[i].content, i > last_query, i == n - 1);
        else
            chatml_message(t, m[i].role, m[i].content);
    }
    puts_(t, "<|im_start|>assistant\n");
    if (fmt == FMT_QWEN3 && (flags & MOECL_CHAT_NO_THINK)) puts_(t, "<think>\n\n</think>\n\n");
    return MOECL_OK;
}

/* The special tokens a format writes, which the vocabulary must have. */
static moecl_status check_vocab(const moecl_tokenizer *tok, int fmt) {
    if (fmt == FMT_OLMOE) {
        if (tok->bos_id < 0 || tok->eos_id < 0)
            return mc_error(MOECL_ERR_UNSUPPORTED, "%s: the olmoe chat format needs a BOS and an EOS token",
                            tok->path);
        return MOECL_OK;
    }
    if (fmt == FMT_MISTRAL) return MOECL_OK;
    const char *need[] = {"<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 2; i++) {
        int32_t id = mc_tokenizer_find(tok, need[i], strlen(need[i]));
        if (id < 0 || (tok->tokens[id].kind != MC_TOK_SPECIAL && tok->tokens[id].kind != MC_TOK_ADDED))
            return mc_error(MOECL_ERR_UNSUPPORTED, "%s: the %s chat format needs the special token %s, which the "
                            "vocabulary does not have", tok->path, fmt_names[fmt], need[i]);
    }
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Public                                                                   */
/* ------------------------------------------------------------------------ */

static int detect(const moecl_tokenizer *tok) {
    const char *t = tok->chat_template;
    if (!t) {
        if (!tok->byte_level) return FMT_MISTRAL; /* Mixtral's tokenizer.json comes without one */
        mc_error(MOECL_ERR_UNSUPPORTED, "%s: the tokenizer has no chat template: name a chat format (the CLI's "
                 "--chat-format): " FMT_LIST, tok->path);
        return -1;
    }
    if (strstr(t, "[INST]")) return FMT_MISTRAL;
    if (strstr(t, "<|im_start|>")) {
        if (strstr(t, "<think>") && strstr(t, "last_query_index")) return FMT_QWEN3;
        if (strstr(t, qwen25_system)) return FMT_QWEN25;
        if (strstr(t, qwen2_system)) return FMT_QWEN2;
        if (!strstr(t, "You are")) return FMT_CHATML;
    } else if (strstr(t, "<|user|>") && strstr(t, "<|assistant|>") && strstr(t, "bos_token") &&
               strstr(t, "eos_token")) {
        return FMT_OLMOE;
    }
    mc_error(MOECL_ERR_UNSUPPORTED, "%s: the chat template is not one moecl recognises: name a chat format (the "
             "CLI's --chat-format): " FMT_LIST, tok->path);
    return -1;
}

const char *moecl_chat_format(const moecl_tokenizer *tok) {
    if (!tok) {
        mc_error(MOECL_ERR_INVALID_ARG, "moecl_chat_format: tokenizer is NULL");
        return NULL;
    }
    int f = detect(tok);
    return f < 0 ? NULL : fmt_names[f];
}

moecl_status moecl_chat_tokenize_format(const moecl_tokenizer *tok, const char *format,
                                        const moecl_chat_message *messages, int32_t n_messages, uint32_t flags,
                                        int32_t *tokens, int32_t n_max, int32_t *n_tokens) {
    if (n_tokens) *n_tokens = 0;
    if (!tok || !n_tokens || (!messages && n_messages) || n_messages < 0 || n_max < 0 || (!tokens && n_max))
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_chat_tokenize: NULL argument or negative count");
    int fmt = -1;
    if (!format) {
        if ((fmt = detect(tok)) < 0) return MOECL_ERR_UNSUPPORTED;
    } else {
        for (int i = 0; i < N_FMT; i++)
            if (!strcmp(format, fmt_names[i])) fmt = i;
        if (fmt < 0)
            return mc_error(MOECL_ERR_INVALID_ARG, "moecl_chat_tokenize: unknown chat format \"%s\": moecl knows "
                            FMT_LIST, format);
    }
    moecl_status st = check_vocab(tok, fmt);
    if (st) return st;
    for (int32_t i = 0; i < n_messages; i++) {
        const char *role = messages[i].role;
        if (!role || !messages[i].content)
            return mc_error(MOECL_ERR_INVALID_ARG, "moecl_chat_tokenize: message %d has a NULL role or content", i);
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))
            return mc_error(MOECL_ERR_INVALID_ARG, "moecl_chat_tokenize: message %d has role \"%s\" (system, user or "
                            "assistant)", i, role);
    }
    mc_ids ids = {0};
    if (fmt == FMT_MISTRAL) {
        st = mistral_ids(tok, messages, n_messages, flags, &ids);
    } else {
        text t = {.ok = true};
        if (!(st = render(tok, fmt, messages, n_messages, flags, &t))) {
            if (!t.ok) st = mc_error(MOECL_ERR_NOMEM, "moecl_chat_tokenize: out of memory");
            else st = mc_tokenizer_encode(tok, t.p ? t.p : "", t.n, true, &ids);
        }
        free(t.p);
    }
    if (st) goto done;
    if (ids.n > (size_t)INT32_MAX) {
        st = mc_error(MOECL_ERR_INVALID_ARG, "moecl_chat_tokenize: more than 2^31 tokens");
        goto done;
    }
    *n_tokens = (int32_t)ids.n;
    if (!tokens) goto done;
    if (ids.n > (size_t)n_max) {
        st = mc_error(MOECL_ERR_INVALID_ARG, "moecl_chat_tokenize: the conversation is %zu tokens, the buffer holds "
                      "%d", ids.n, n_max);
        goto done;
    }
    if (ids.n) memcpy(tokens, ids.v, ids.n * sizeof *tokens);
done:
    free(ids.v);
    return st;
}

moecl_status moecl_chat_tokenize(const moecl_tokenizer *tok, const moecl_chat_message *messages, int32_t n_messages,
                                 uint32_t flags, int32_t *tokens, int32_t n_max, int32_t *n_tokens) {
    return moecl_chat_tokenize_format(tok, "mistral", messages, n_messages, flags, tokens, n_max, n_tokens);
}
