/*
 * json.h - reading the small JSON files of a model directory (config.json,
 * the shard index, a safetensors header) with cJSON, strictly.
 */
#ifndef MOECL_JSON_H
#define MOECL_JSON_H

#include "internal.h"

#include <cjson/cJSON.h>

/* Read a whole regular file of at most limit bytes into a NUL-terminated
 * buffer (*out, freed by the caller). Errors name path. */
moecl_status mc_read_text_file(const char *path, size_t limit, char **out, size_t *out_len);

/* Parse text[0..len) as one JSON value followed only by whitespace. text
 * must be NUL-terminated at len. what names the text in messages ("file",
 * "header"). */
moecl_status mc_json_parse(const char *path, const char *what, const char *text, size_t len, cJSON **out);

/* Read path (at most limit bytes) and parse it as one JSON value. */
moecl_status mc_json_load_file(const char *path, size_t limit, cJSON **out);

/* A JSON value as words for an error message: the number itself, or its
 * kind ("a string", "null", ..., "missing" for NULL). buf holds numbers. */
const char *mc_json_describe(const cJSON *v, char *buf, size_t n);

#endif
