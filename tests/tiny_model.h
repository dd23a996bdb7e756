/* tiny_model.h - a small random model in a temporary directory, for tests. */
#ifndef MOECL_TINY_MODEL_H
#define MOECL_TINY_MODEL_H

#include "moecl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static inline moecl_random_model_params tiny_params(void) {
    moecl_random_model_params p = moecl_random_model_default_params();
    p.n_vocab = 97;
    p.n_embd = 32;
    p.n_ff = 48;
    p.n_layer = 2;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.n_expert = 4;
    p.n_expert_used = 2;
    p.n_ctx_train = 256;
    p.seed = 3;
    return p;
}

/* Writes into a fresh temporary directory; returns its path (static). */
static inline const char *tiny_model_dir(char *buf, size_t len) {
    const char *tmp = getenv("TMPDIR");
    snprintf(buf, len, "%s/moecl-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(buf)) return NULL;
    moecl_random_model_params p = tiny_params();
    if (moecl_random_model_write(buf, &p, NULL, NULL) != MOECL_OK) return NULL;
    return buf;
}

static inline void remove_dir(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
}

#endif
