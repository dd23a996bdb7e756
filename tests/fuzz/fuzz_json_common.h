/*
 * fuzz_json_common.h - what the JSON fuzz targets share: the input as the
 * library reads a file (NUL-terminated, exact size, so an overread shows
 * under ASan), and the invariant of json.c's validator: a text it accepts
 * cJSON parses into a tree of exactly the values it counted.
 */
#ifndef MOECL_FUZZ_JSON_COMMON_H
#define MOECL_FUZZ_JSON_COMMON_H

#include "formats/json.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void fz_quiet(moecl_log_level level, const char *message, void *user_data) {
    (void)level, (void)message, (void)user_data;
}

static char *fz_text(const uint8_t *data, size_t size) {
    char *t = malloc(size + 1);
    if (!t) return NULL;
    if (size) memcpy(t, data, size);
    t[size] = '\0';
    return t;
}

static size_t fz_count(const cJSON *j) {
    size_t n = 1;
    for (const cJSON *c = j->child; c; c = c->next) n += fz_count(c);
    return n;
}

/* The validator against cJSON on text: trap where they disagree in the one
 * direction that matters (accepted here, refused or miscounted by cJSON). */
static void fz_check_validator(const char *text, size_t size, mc_json_kind kind) {
    size_t n_values = 0;
    if (mc_json_check("fuzz.json", kind, text, size, &n_values) != MOECL_OK) return;
    cJSON *j = NULL;
    moecl_status st = mc_json_parse("fuzz.json", kind, text, size, &j);
    if (st != MOECL_OK || !j || fz_count(j) != n_values) __builtin_trap();
    cJSON_Delete(j);
}

#endif
