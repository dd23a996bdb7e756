/*
 * cli.c - helpers the moecl subcommands share (see cli.h).
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

moecl_status cli_read_text(const char *who, const char *path, size_t max_bytes, char **text, size_t *len) {
    *text = NULL;
    *len = 0;
    const bool is_stdin = !strcmp(path, "-");
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open %s: %s\n", who, path, strerror(errno));
        return MOECL_ERR_IO;
    }
    /* buf holds n bytes and room for cap - n more; one byte past max_bytes
     * is read to tell "exactly max_bytes" from "too large". */
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    moecl_status st = buf ? MOECL_OK : MOECL_ERR_NOMEM;
    while (st == MOECL_OK) {
        if (n == cap - 1) {
            if (cap - 1 > max_bytes) {
                st = MOECL_ERR_INVALID_ARG;
                break;
            }
            size_t ncap = cap * 2 < max_bytes + 2 ? cap * 2 : max_bytes + 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                st = MOECL_ERR_NOMEM;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        size_t r = fread(buf + n, 1, cap - 1 - n, f);
        n += r;
        if (r == 0) break;
    }
    if (st == MOECL_OK && n > max_bytes) st = MOECL_ERR_INVALID_ARG;
    if (st == MOECL_OK && ferror(f)) st = MOECL_ERR_IO;
    const int err = errno;
    if (!is_stdin) fclose(f);
    if (st == MOECL_ERR_IO) fprintf(stderr, "%s: cannot read %s: %s\n", who, path, strerror(err));
    else if (st == MOECL_ERR_INVALID_ARG)
        fprintf(stderr, "%s: %s is larger than %zu MiB (the most this command reads)\n", who, path, max_bytes >> 20);
    else if (st == MOECL_ERR_NOMEM) fprintf(stderr, "%s: out of memory reading %s\n", who, path);
    if (st) {
        free(buf);
        return st;
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return MOECL_OK;
}

bool cli_parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool cli_parse_int(const char *s, long lo, long hi, int *out) {
    long v;
    if (!cli_parse_long(s, lo, hi, &v)) return false;
    *out = (int)v;
    return true;
}

bool cli_parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

moecl_status cli_parse_ids(const char *s, long lo, long hi, int32_t **ids, int32_t *n) {
    size_t cap = 64, cnt = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) return MOECL_ERR_NOMEM;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < lo || x > hi || x < INT32_MIN || x > INT32_MAX || cnt == INT32_MAX) {
            free(v);
            return MOECL_ERR_INVALID_ARG;
        }
        if (cnt == cap) {
            int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv) {
                free(v);
                return MOECL_ERR_NOMEM;
            }
            v = nv;
        }
        v[cnt++] = (int32_t)x;
        for (p = end; *p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'; p++) {}
    }
    *ids = v;
    *n = (int32_t)cnt;
    return MOECL_OK;
}
