/*
 * json.c - see json.h.
 */
#include "json.h"

#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Parse text[0..len) as one JSON value followed only by whitespace (the
 * writer pads headers with spaces). text must be NUL-terminated at len, so
 * the parser can never read past the buffer. */
moecl_status mc_json_parse(const char *path, const char *what, const char *text, size_t len,
                            cJSON **out) {
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, false);
    size_t at = end ? (size_t)(end - text) : 0;
    if (!j) return mc_error(MOECL_ERR_FORMAT, "%s: %s is not valid JSON (error at byte %zu)", path, what, at);
    for (size_t i = at; i < len; i++) {
        if (text[i] == '\0' || !strchr(" \t\r\n", text[i])) {
            cJSON_Delete(j);
            return mc_error(MOECL_ERR_FORMAT, "%s: %s has trailing bytes after the JSON value (at byte %zu)",
                            path, what, i);
        }
    }
    *out = j;
    return MOECL_OK;
}


moecl_status mc_read_text_file(const char *path, size_t limit, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mc_error(MOECL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    moecl_status st = MOECL_OK;
    char *buf = NULL;
    size_t got = 0;
    if (fstat(fd, &sb) != 0) {
        st = mc_error(MOECL_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        st = mc_error(MOECL_ERR_IO, "%s: not a regular file", path);
    } else if ((uint64_t)sb.st_size > limit) {
        st = mc_error(MOECL_ERR_FORMAT, "%s: file is %lld bytes, more than the %zu-byte limit", path,
                      (long long)sb.st_size, limit);
    } else if (!(buf = malloc((size_t)sb.st_size + 1))) {
        st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory reading %lld bytes", path, (long long)sb.st_size);
    }
    while (st == MOECL_OK && got < (size_t)sb.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) st = mc_error(MOECL_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
        if (r <= 0) break; /* a file that shrank under us: keep what was there */
        got += (size_t)r;
    }
    close(fd);
    if (st != MOECL_OK) {
        free(buf);
        return st;
    }
    buf[got] = '\0';
    *out = buf;
    *out_len = got;
    return MOECL_OK;
}


/* A JSON value as words for an error message: the number itself, or its kind. */
const char *mc_json_describe(const cJSON *v, char *buf, size_t n) {
    if (!v) return "missing";
    if (cJSON_IsNumber(v)) {
        snprintf(buf, n, "%.15g", v->valuedouble);
        if (strtod(buf, NULL) != v->valuedouble) snprintf(buf, n, "%.17g", v->valuedouble);
        return buf;
    }
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

moecl_status mc_json_load_file(const char *path, size_t limit, cJSON **out) {
    char *text;
    size_t len;
    *out = NULL;
    moecl_status st = mc_read_text_file(path, limit, &text, &len);
    if (st != MOECL_OK) return st;
    st = mc_json_parse(path, "file", text, len, out);
    free(text);
    return st;
}
