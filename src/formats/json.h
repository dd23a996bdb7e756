/*
 * json.h - reading the JSON files of a model directory (config.json, the
 * shard index, safetensors headers, tokenizer.json and its configs) with
 * cJSON, strictly and within bounded memory.
 *
 * cJSON builds a tree of one ~64-byte node per value (plus a copy of every
 * string), so a file of numbers costs ~40 times its size. Every text is
 * therefore checked first by a small validator of its own that counts the
 * values as it goes: a text over its kind's byte or value limit, or not
 * valid JSON, is refused before cJSON allocates anything, with the byte
 * where it went wrong. Only a valid text within the limits reaches cJSON,
 * so a cJSON failure there is an allocation failure (MOECL_ERR_NOMEM).
 * The limits are stated in README.md ("Limits").
 */
#ifndef MOECL_JSON_H
#define MOECL_JSON_H

#include "internal.h"

#include <cjson/cJSON.h>

/* What a JSON text is, which sets its limits (json.c's table). */
typedef enum mc_json_kind {
    MC_JSON_CONFIG,           /* config.json, generation_config.json */
    MC_JSON_TOKENIZER_CONFIG, /* tokenizer_config.json */
    MC_JSON_TOKENIZER,        /* tokenizer.json */
    MC_JSON_ST_INDEX,         /* model.safetensors.index.json */
    MC_JSON_ST_HEADER,        /* the header of a .safetensors file */
    MC_JSON_DATA,             /* the tools' and tests' own reference files */
    MC_JSON_PROFILE,          /* an expert profile (placement.c) */
    MC_JSON_KIND_COUNT
} mc_json_kind;

/* The most bytes, values (every number, string, literal, array and object
 * counts one) and nesting depth a text of this kind may have. */
size_t mc_json_max_bytes(mc_json_kind kind);
size_t mc_json_max_values(mc_json_kind kind);
#define MC_JSON_MAX_DEPTH 128

/* Read a whole regular file of at most limit bytes into a NUL-terminated
 * buffer (*out, freed by the caller). Errors name path. */
moecl_status mc_read_text_file(const char *path, size_t limit, char **out, size_t *out_len);

/* Parse text[0..len) as one JSON value followed only by whitespace, within
 * kind's limits. text must be NUL-terminated at len. Errors:
 * MOECL_ERR_FORMAT (not valid JSON, with the byte; over a limit) or
 * MOECL_ERR_NOMEM. Thread-safe (cJSON's parser writes a process-global
 * error position, so parses are serialised by a mutex). */
moecl_status mc_json_parse(const char *path, mc_json_kind kind, const char *text, size_t len, cJSON **out);

/* Read path (at most kind's byte limit) and parse it as one JSON value. */
moecl_status mc_json_load_file(const char *path, mc_json_kind kind, cJSON **out);

/* Check text[0..len) as mc_json_parse does without building the tree: OK,
 * or MOECL_ERR_FORMAT with the message. *n_values (may be NULL) gets the
 * number of values counted. For the fuzzer and the tests. */
moecl_status mc_json_check(const char *path, mc_json_kind kind, const char *text, size_t len, size_t *n_values);

/* A JSON value as words for an error message: the number itself, or its
 * kind ("a string", "null", ..., "missing" for NULL). buf holds numbers. */
const char *mc_json_describe(const cJSON *v, char *buf, size_t n);

#endif
