/*
 * cli.h - helpers the moecl subcommands share (tools/moecl.c, stats.c,
 * perplexity.c, serve.c): reading a text file, parsing numbers and id lists.
 * Each one that can fail says why on stderr, prefixed with `who`.
 */
#ifndef MOECL_TOOLS_CLI_H
#define MOECL_TOOLS_CLI_H

#include "moecl.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bound on a text read whole (prompt, corpus, calibration text): far above
 * any text a context or a perplexity run holds, low enough that a wrong path
 * (a model file, /dev/zero) fails at once instead of filling memory. */
#define CLI_TEXT_MAX_BYTES ((size_t)256 << 20)

/* The whole of path ("-": standard input) into *text (malloc'd, NUL-terminated
 * after *len bytes, may hold NUL bytes). More than max_bytes is an error;
 * memory grows with what is read, up to max_bytes + 1. Returns MOECL_OK,
 * MOECL_ERR_IO (cannot open or read), MOECL_ERR_INVALID_ARG (too large) or
 * MOECL_ERR_NOMEM, having said which on stderr; *text is NULL on error. */
moecl_status cli_read_text(const char *who, const char *path, size_t max_bytes, char **text, size_t *len);

/* A whole decimal number in [lo, hi] (nothing after it); false otherwise. */
bool cli_parse_long(const char *s, long lo, long hi, long *out);
bool cli_parse_int(const char *s, long lo, long hi, int *out);
/* A whole float (strtof's syntax, finite or not); false otherwise. */
bool cli_parse_float(const char *s, float *out);

/* "1,2,3" (separated by commas and/or white space) into *ids (malloc'd, at
 * least one element even for an empty list). Returns MOECL_OK,
 * MOECL_ERR_INVALID_ARG (not a list of numbers in [lo, hi]: the caller says
 * so in its words) or MOECL_ERR_NOMEM. */
moecl_status cli_parse_ids(const char *s, long lo, long hi, int32_t **ids, int32_t *n);

/* The model as run and chat find it (path NULL: $MOECL_MODEL, else the
 * default model); the path used into resolved. 0 on success, else the exit
 * code. Defined in tools/moecl.c. */
int cli_load_model(const char *path, moecl_model **model, char *resolved, size_t len);

#endif
