/*
 * engine.h - internals of the request engine (engine.c) that the tests
 * reach: the stop-string rules applied to the text of a request.
 */
#ifndef MOECL_ENGINE_H
#define MOECL_ENGINE_H

#include "internal.h"

#include <stdbool.h>
#include <stddef.h>

/* The first occurrence of any of the n stop strings (lengths len[i] > 0) in
 * text[0..n_text): its offset, or n_text if none occurs. */
size_t mc_stop_find(const char *text, size_t n_text, char *const *stop, const size_t *len, int n);

/* How many leading bytes of text[0..n_text) can be shown now, given that no
 * stop string occurs in it: everything except the longest suffix that is a
 * proper prefix of some stop string (more text may complete it), moved back
 * to the start of a UTF-8 character. */
size_t mc_stop_safe_len(const char *text, size_t n_text, char *const *stop, const size_t *len, int n);

#endif
