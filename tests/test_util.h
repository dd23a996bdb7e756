/*
 * test_util.h - the few helpers every C test uses. A test program exits 0
 * when all its checks pass, 1 when any failed, 77 when it cannot run here
 * (and says why on stderr).
 */
#ifndef MOECL_TEST_UTIL_H
#define MOECL_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_failures = 0;
static int t_checks = 0;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        t_checks++;                                                                   \
        if (!(cond)) {                                                                \
            t_failures++;                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                             \
    } while (0)

#define CHECKF(cond, ...)                                                     \
    do {                                                                      \
        t_checks++;                                                           \
        if (!(cond)) {                                                        \
            t_failures++;                                                     \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
        }                                                                     \
    } while (0)

/* Call at the end of main: prints a summary and gives the exit code. */
static inline int t_done(const char *name) {
    if (t_checks == 0) {
        fprintf(stderr, "%s: no checks ran\n", name);
        return 1;
    }
    fprintf(stderr, "%s: %d checks, %d failed\n", name, t_checks, t_failures);
    return t_failures ? 1 : 0;
}

static inline int t_skip(const char *name, const char *why) {
    fprintf(stderr, "%s: SKIP: %s\n", name, why);
    return 77;
}

/* The whole file, NUL-terminated (malloc'd), its length in *len (may be
 * NULL); NULL if it cannot be opened or read. */
static inline char *t_read_file(const char *path, size_t *len) {
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = size >= 0 ? malloc((size_t)size + 1) : NULL;
    size_t n = buf ? fread(buf, 1, (size_t)size, f) : 0;
    fclose(f);
    if (!buf) return NULL;
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

/* Lower-case hex ("48690a") into bytes (malloc'd, NUL-terminated after *len
 * bytes); NULL when out of memory. The references' "hex" fields. */
static inline char *t_unhex(const char *h, size_t *len) {
    const size_t n = strlen(h) / 2;
    char *s = malloc(n + 1);
    *len = 0;
    if (!s) return NULL;
    for (size_t i = 0; i < n; i++) {
        const char a = h[2 * i], b = h[2 * i + 1];
        s[i] = (char)((a <= '9' ? a - '0' : a - 'a' + 10) * 16 + (b <= '9' ? b - '0' : b - 'a' + 10));
    }
    s[n] = '\0';
    *len = n;
    return s;
}

/* max|a-b| / max|b|: the normalised error used throughout. */
static inline double t_nerr(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > num || isnan(d)) num = isnan(d) ? INFINITY : d;
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
    }
    return den > 0 ? num / den : num;
}

/* Deterministic random numbers for tests (splitmix64). */
static inline uint64_t t_rand_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline float t_rand_f(uint64_t *s) { /* uniform in [-1, 1) */
    return (float)((double)(t_rand_u64(s) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

#endif
