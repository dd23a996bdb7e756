/*
 * json.c - see json.h.
 */
#include "json.h"
#include "util/fileio.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Limits                                                                   */
/* ------------------------------------------------------------------------ */

/* Bytes and values of the largest real files of each kind, with headroom
 * (README.md, "Limits", gives the measurements behind them). A value costs
 * cJSON one 64-byte node (80 with malloc's header) plus a copy of its
 * string or key, so the tree of a text at the limits takes at most about
 * max_values * 144 bytes + max_bytes. */
typedef struct json_limits {
    const char *what; /* the text in messages: "<path>: <what> is not valid JSON" */
    const char *kind; /* "more than N values, the limit for <kind>" */
    size_t max_bytes, max_values;
} json_limits;

static const json_limits k_limits[MC_JSON_KIND_COUNT] = {
    [MC_JSON_CONFIG] = {"file", "a config.json", (size_t)1 << 20, (size_t)64 << 10},
    [MC_JSON_TOKENIZER_CONFIG] = {"file", "a tokenizer_config.json", (size_t)8 << 20, (size_t)512 << 10},
    [MC_JSON_TOKENIZER] = {"tokenizer.json", "a tokenizer.json", (size_t)64 << 20, (size_t)4 << 20},
    [MC_JSON_ST_INDEX] = {"index", "a safetensors index", (size_t)32 << 20, (size_t)1 << 20},
    [MC_JSON_ST_HEADER] = {"header", "a safetensors header", (size_t)16 << 20, (size_t)2 << 20},
    [MC_JSON_DATA] = {"file", "a reference file", (size_t)64 << 20, (size_t)4 << 20},
    /* n_layer x n_expert shares: 1 M values covers 128 layers x 8192 experts */
    [MC_JSON_PROFILE] = {"file", "an expert profile", (size_t)32 << 20, (size_t)1 << 20},
};

static const json_limits *limits_of(mc_json_kind kind) {
    return &k_limits[(unsigned)kind < MC_JSON_KIND_COUNT ? kind : MC_JSON_CONFIG];
}

size_t mc_json_max_bytes(mc_json_kind kind) { return limits_of(kind)->max_bytes; }
size_t mc_json_max_values(mc_json_kind kind) { return limits_of(kind)->max_values; }

/* ------------------------------------------------------------------------ */
/* The validator                                                            */
/* ------------------------------------------------------------------------ */

/* RFC 8259 JSON, with cJSON's own restrictions on top, so that everything
 * accepted here cJSON accepts too (the fuzzer checks it): no lone UTF-16
 * surrogate in a \u escape, numbers of at most 63 characters (cJSON 1.7.15
 * parses a number from a 64-byte buffer and would stop inside a longer
 * one), at most MC_JSON_MAX_DEPTH levels (cJSON allows 1000). Stricter than
 * cJSON elsewhere: only RFC whitespace, no control characters in strings. */
typedef struct jscan {
    const unsigned char *p;
    size_t n, i;
    size_t values, max_values;
    const char *why; /* the first problem, at byte at */
    size_t at;
    enum { SCAN_SYNTAX, SCAN_VALUES, SCAN_DEPTH } what;
} jscan;

static bool bad(jscan *s, const char *why) {
    if (!s->why) {
        s->why = why;
        s->at = s->i;
    }
    return false;
}

static void skip_ws(jscan *s) {
    while (s->i < s->n) {
        unsigned char c = s->p[s->i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        s->i++;
    }
}

static bool is_digit(const jscan *s) { return s->i < s->n && s->p[s->i] >= '0' && s->p[s->i] <= '9'; }

static bool hex4(const jscan *s, size_t at, unsigned *u) {
    if (at > s->n || s->n - at < 4) return false;
    *u = 0;
    for (size_t k = 0; k < 4; k++) {
        unsigned char c = s->p[at + k];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                   : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16u;
        if (d == 16) return false;
        *u = *u << 4 | d;
    }
    return true;
}

static bool scan_string(jscan *s) {
    s->i++; /* the opening quote */
    for (;;) {
        if (s->i >= s->n) return bad(s, "a string that does not end");
        unsigned char c = s->p[s->i];
        if (c == '"') {
            s->i++;
            return true;
        }
        if (c < 0x20) return bad(s, "a control character in a string");
        if (c != '\\') {
            s->i++;
            continue;
        }
        if (s->i + 1 >= s->n) return bad(s, "a string that does not end");
        c = s->p[s->i + 1];
        if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
            s->i += 2;
            continue;
        }
        unsigned u, lo;
        if (c != 'u') return bad(s, "an invalid escape in a string");
        if (!hex4(s, s->i + 2, &u)) return bad(s, "an invalid \\u escape");
        if (u >= 0xDC00 && u <= 0xDFFF) return bad(s, "a lone UTF-16 low surrogate in a \\u escape");
        if (u >= 0xD800 && u <= 0xDBFF) {
            if (!(s->i + 7 < s->n && s->p[s->i + 6] == '\\' && s->p[s->i + 7] == 'u' && hex4(s, s->i + 8, &lo) &&
                  lo >= 0xDC00 && lo <= 0xDFFF))
                return bad(s, "a UTF-16 high surrogate without its low half in a \\u escape");
            s->i += 6;
        }
        s->i += 6;
    }
}

static bool scan_number(jscan *s) {
    const size_t start = s->i;
    if (s->p[s->i] == '-') s->i++;
    if (s->i < s->n && s->p[s->i] == '0') {
        s->i++;
    } else if (is_digit(s)) {
        while (is_digit(s)) s->i++;
    } else {
        return bad(s, "a malformed number");
    }
    if (s->i < s->n && s->p[s->i] == '.') {
        s->i++;
        if (!is_digit(s)) return bad(s, "a malformed number");
        while (is_digit(s)) s->i++;
    }
    if (s->i < s->n && (s->p[s->i] == 'e' || s->p[s->i] == 'E')) {
        s->i++;
        if (s->i < s->n && (s->p[s->i] == '+' || s->p[s->i] == '-')) s->i++;
        if (!is_digit(s)) return bad(s, "a malformed number");
        while (is_digit(s)) s->i++;
    }
    if (s->i - start > 63) {
        s->i = start;
        return bad(s, "a number longer than 63 characters");
    }
    return true;
}

static bool scan_word(jscan *s, const char *w, size_t l) {
    if (s->n - s->i < l || memcmp(s->p + s->i, w, l) != 0) return bad(s, "an unexpected character");
    s->i += l;
    return true;
}

static bool scan_value(jscan *s, int depth);

/* An array or an object at s->i, depth levels deep counting itself. */
static bool scan_container(jscan *s, int depth) {
    if (depth > MC_JSON_MAX_DEPTH) {
        s->what = SCAN_DEPTH;
        return bad(s, "nesting too deep");
    }
    const bool obj = s->p[s->i] == '{';
    const unsigned char close = obj ? '}' : ']';
    s->i++;
    skip_ws(s);
    if (s->i < s->n && s->p[s->i] == close) {
        s->i++;
        return true;
    }
    for (;;) {
        if (obj) {
            if (s->i >= s->n || s->p[s->i] != '"') return bad(s, "a key that is not a string");
            if (!scan_string(s)) return false;
            skip_ws(s);
            if (s->i >= s->n || s->p[s->i] != ':') return bad(s, "no ':' after a key");
            s->i++;
            skip_ws(s);
        }
        if (!scan_value(s, depth)) return false;
        skip_ws(s);
        if (s->i < s->n && s->p[s->i] == ',') {
            s->i++;
            skip_ws(s);
            continue;
        }
        if (s->i < s->n && s->p[s->i] == close) {
            s->i++;
            return true;
        }
        return bad(s, obj ? "no ',' or '}' after a member" : "no ',' or ']' after an element");
    }
}

static bool scan_value(jscan *s, int depth) {
    if (++s->values > s->max_values) {
        s->what = SCAN_VALUES;
        return bad(s, "too many values");
    }
    if (s->i >= s->n) return bad(s, "the text ends where a value was expected");
    switch (s->p[s->i]) {
    case '"': return scan_string(s);
    case '{':
    case '[': return scan_container(s, depth + 1);
    case 't': return scan_word(s, "true", 4);
    case 'f': return scan_word(s, "false", 5);
    case 'n': return scan_word(s, "null", 4);
    default:
        if (s->p[s->i] == '-' || is_digit(s)) return scan_number(s);
        return bad(s, "an unexpected character where a value was expected");
    }
}

moecl_status mc_json_check(const char *path, mc_json_kind kind, const char *text, size_t len, size_t *n_values) {
    const json_limits *lim = limits_of(kind);
    jscan s = {.p = (const unsigned char *)text, .n = len, .max_values = lim->max_values};
    if (n_values) *n_values = 0;
    if (len > lim->max_bytes)
        return mc_error(MOECL_ERR_FORMAT, "%s: %s is %zu bytes, more than the %zu-byte limit for %s", path, lim->what,
                        len, lim->max_bytes, lim->kind);
    /* cJSON skips a UTF-8 byte-order mark when at least 5 bytes follow from the start */
    if (len >= 5 && !memcmp(text, "\xEF\xBB\xBF", 3)) s.i = 3;
    skip_ws(&s);
    bool ok = scan_value(&s, 0);
    if (ok) {
        skip_ws(&s);
        if (s.i < s.n) ok = bad(&s, "trailing bytes after the JSON value");
    }
    if (n_values) *n_values = s.values > s.max_values ? s.max_values : s.values;
    if (ok) return MOECL_OK;
    if (s.what == SCAN_VALUES)
        return mc_error(MOECL_ERR_FORMAT, "%s: %s has more than %zu JSON values (at byte %zu), the limit for %s",
                        path, lim->what, lim->max_values, s.at, lim->kind);
    if (s.what == SCAN_DEPTH)
        return mc_error(MOECL_ERR_FORMAT, "%s: %s nests arrays and objects more than %d deep (at byte %zu)", path,
                        lim->what, MC_JSON_MAX_DEPTH, s.at);
    return mc_error(MOECL_ERR_FORMAT, "%s: %s is not valid JSON: %s at byte %zu", path, lim->what, s.why, s.at);
}

/* ------------------------------------------------------------------------ */
/* Parsing                                                                  */
/* ------------------------------------------------------------------------ */

/* cJSON_ParseWithLengthOpts writes a process-global error position on every
 * call (1.7.15 and later), a data race between two loads on two threads. */
static pthread_mutex_t g_parse_lock = PTHREAD_MUTEX_INITIALIZER;

moecl_status mc_json_parse(const char *path, mc_json_kind kind, const char *text, size_t len, cJSON **out) {
    *out = NULL;
    size_t n_values;
    moecl_status st = mc_json_check(path, kind, text, len, &n_values);
    if (st != MOECL_OK) return st;
    pthread_mutex_lock(&g_parse_lock);
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, NULL, false);
    pthread_mutex_unlock(&g_parse_lock);
    /* The text is valid and within cJSON's own limits (mc_json_check), so
     * the one way left for cJSON to fail is an allocation. */
    if (!j)
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory parsing the %s (%zu bytes, %zu JSON values)", path,
                        limits_of(kind)->what, len, n_values);
    *out = j;
    return MOECL_OK;
}

moecl_status mc_read_text_file(const char *path, size_t limit, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    int fd;
    struct stat sb;
    moecl_status st = mc_open_regular(path, &fd, &sb);
    if (st != MOECL_OK) return st;
    char *buf = NULL;
    size_t got = 0;
    if ((uint64_t)sb.st_size > limit) {
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

moecl_status mc_json_load_file(const char *path, mc_json_kind kind, cJSON **out) {
    char *text;
    size_t len;
    *out = NULL;
    moecl_status st = mc_read_text_file(path, limits_of(kind)->max_bytes, &text, &len);
    if (st != MOECL_OK) return st;
    st = mc_json_parse(path, kind, text, len, out);
    free(text);
    return st;
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
