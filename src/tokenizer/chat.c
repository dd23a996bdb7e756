/*
 * chat.c - the Mixtral-Instruct conversation format, token for token as
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

moecl_status moecl_chat_tokenize(const moecl_tokenizer *tok, const moecl_chat_message *messages, int32_t n_messages,
                                 uint32_t flags, int32_t *tokens, int32_t n_max, int32_t *n_tokens) {
    if (n_tokens) *n_tokens = 0;
    if (!tok || !n_tokens || (!messages && n_messages) || n_messages < 0 || n_max < 0 || (!tokens && n_max))
        return mc_error(MOECL_ERR_INVALID_ARG, "moecl_chat_tokenize: NULL argument or negative count");
    turn *turns = calloc((size_t)n_messages + 1, sizeof *turns);
    char *sys = NULL, *piece = NULL;
    size_t sys_len = 0;
    int n_turns = 0;
    mc_ids ids = {0};
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
    if (!(flags & MOECL_CHAT_NO_BOS) && tok->bos_id >= 0 && (st = mc_ids_push(&ids, tok->bos_id))) goto done;
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
        if ((st = mc_tokenizer_encode(tok, piece, plen, false, &ids))) goto done;
        if (!turns[k].user && tok->eos_id >= 0 && (st = mc_ids_push(&ids, tok->eos_id))) goto done;
    }
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
    for (int k = 0; k < n_turns; k++) free(turns[k].text);
    free(turns);
    free(sys);
    free(piece);
    free(ids.v);
    return st;
}
