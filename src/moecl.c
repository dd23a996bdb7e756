/*
 * moecl.c - status codes, the last-error message, logging, dtype helpers.
 */
#include "internal.h"
#include "tokenizer/tokenizer.h"

#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Version and status                                                       */
/* ------------------------------------------------------------------------ */

const char *moecl_version(void) { return MOECL_VERSION_STRING; }

const char *moecl_status_str(moecl_status status) {
    switch (status) {
    case MOECL_OK: return "ok";
    case MOECL_ERR_INVALID_ARG: return "invalid argument";
    case MOECL_ERR_IO: return "input/output error";
    case MOECL_ERR_FORMAT: return "malformed file";
    case MOECL_ERR_UNSUPPORTED: return "unsupported";
    case MOECL_ERR_NOMEM: return "out of memory";
    case MOECL_ERR_CONTEXT_FULL: return "context full";
    case MOECL_ERR_ABORTED: return "aborted";
    case MOECL_ERR_BACKEND: return "backend error";
    case MOECL_ERR_BUSY: return "busy";
    }
    return "unknown status";
}

/* ------------------------------------------------------------------------ */
/* Errors and logging                                                       */
/* ------------------------------------------------------------------------ */

static _Thread_local char tl_last_error[1024];

static void default_log(moecl_log_level level, const char *message, void *user_data) {
    (void)user_data;
    static const char *names[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "moecl: %s: %s\n", names[level], message);
}

static moecl_log_fn g_log_fn = default_log;
static void *g_log_user;
static moecl_log_level g_log_max = MOECL_LOG_WARN;

void moecl_log_set(moecl_log_fn fn, moecl_log_level max_level, void *user_data) {
    g_log_fn = fn ? fn : default_log;
    g_log_user = user_data;
    g_log_max = max_level;
}

/* Messages quote file text (names, keys, values): every message is escaped
 * (mc_escape) before anyone sees it, so no file can send control sequences
 * to a terminal or a log through moecl. */
static void log_v(moecl_log_level level, const char *fmt, va_list ap) {
    if (level > g_log_max) return;
    char raw[1024], buf[1024];
    vsnprintf(raw, sizeof raw, fmt, ap);
    mc_escape(buf, sizeof buf, raw, strlen(raw), 0);
    g_log_fn(level, buf, g_log_user);
}

void mc_log(moecl_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_v(level, fmt, ap);
    va_end(ap);
}

moecl_status mc_error(moecl_status status, const char *fmt, ...) {
    char raw[sizeof tl_last_error]; /* arguments may point into tl_last_error */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    mc_escape(tl_last_error, sizeof tl_last_error, raw, strlen(raw), 0);
    /* Errors are returned to the caller, who decides what to show; log them
     * at debug level only so an application is not told twice. */
    mc_log(MOECL_LOG_DEBUG, "%s", tl_last_error);
    return status;
}

void mc_clear_error(void) { tl_last_error[0] = '\0'; }

const char *moecl_last_error(void) { return tl_last_error; }

/* ------------------------------------------------------------------------ */
/* Escaping text from files                                                 */
/* ------------------------------------------------------------------------ */

/* Code points a terminal acts on or that reorder what follows: C1 controls,
 * the bidirectional embeddings, overrides and isolates, line and paragraph
 * separators. */
static bool unsafe_cp(uint32_t cp) {
    return (cp >= 0x80 && cp <= 0x9f) || (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069) ||
           cp == 0x200e || cp == 0x200f || cp == 0x061c;
}

size_t mc_escape(char *out, size_t cap, const char *s, size_t len, unsigned flags) {
    static const char hex[] = "0123456789abcdef";
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, o = 0;
    if (!cap) return 0;
    while (i < len) {
        char e[8];
        size_t ne = 0, take = 1;
        const uint8_t c = u[i];
        if ((flags & MC_ESC_QUOTES) && (c == '\\' || c == '"')) {
            e[ne++] = '\\';
            e[ne++] = (char)c;
        } else if (c == '\n' || c == '\t' || c == '\r') {
            e[ne++] = '\\';
            e[ne++] = c == '\n' ? 'n' : c == '\t' ? 't' : 'r';
        } else if (c < 0x20 || c == 0x7f) {
            ne = (size_t)snprintf(e, sizeof e, "\\x%c%c", hex[c >> 4], hex[c & 15]);
        } else if (c < 0x80) {
            e[ne++] = (char)c;
        } else {
            const int n = mc_utf8_len(u + i, len - i);
            uint32_t cp = 0;
            if (n > 0) {
                cp = n == 2 ? c & 0x1fu : n == 3 ? c & 0x0fu : c & 0x07u;
                for (int k = 1; k < n; k++) cp = (cp << 6) | (u[i + k] & 0x3fu);
            }
            if (n == 0) {
                ne = (size_t)snprintf(e, sizeof e, "\\x%c%c", hex[c >> 4], hex[c & 15]);
            } else if (unsafe_cp(cp)) {
                ne = (size_t)snprintf(e, sizeof e, "\\u%04x", (unsigned)cp);
                take = (size_t)n;
            } else {
                memcpy(e, u + i, (size_t)n);
                ne = take = (size_t)n;
            }
        }
        if (o + ne + 1 > cap) break;
        memcpy(out + o, e, ne);
        o += ne;
        i += take;
    }
    out[o] = '\0';
    return i;
}


/* ------------------------------------------------------------------------ */
/* dtypes                                                                   */
/* ------------------------------------------------------------------------ */

const char *moecl_dtype_name(moecl_dtype dtype) {
    switch (dtype) {
    case MOECL_DTYPE_F32: return "f32";
    case MOECL_DTYPE_F16: return "f16";
    case MOECL_DTYPE_BF16: return "bf16";
    case MOECL_DTYPE_Q8_0: return "q8_0";
    case MOECL_DTYPE_Q4_0: return "q4_0";
    case MOECL_DTYPE_Q4_K: return "q4_K";
    case MOECL_DTYPE_Q5_K: return "q5_K";
    case MOECL_DTYPE_Q6_K: return "q6_K";
    default: return "?";
    }
}

size_t mc_dtype_size(moecl_dtype t) {
    switch (t) {
    case MOECL_DTYPE_F32: return 4;
    case MOECL_DTYPE_F16: return 2;
    case MOECL_DTYPE_BF16: return 2;
    default: return 0;
    }
}

const char *mc_shape_str(int n_dims, const int64_t *shape, char *buf, size_t n) {
    size_t len = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < n_dims && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (len < n) snprintf(buf + len, n - len, "]");
    return buf;
}

int64_t mc_dtype_block(moecl_dtype t) {
    switch (t) {
    case MOECL_DTYPE_F32:
    case MOECL_DTYPE_F16:
    case MOECL_DTYPE_BF16: return 1;
    case MOECL_DTYPE_Q8_0:
    case MOECL_DTYPE_Q4_0: return 32;
    case MOECL_DTYPE_Q4_K:
    case MOECL_DTYPE_Q5_K:
    case MOECL_DTYPE_Q6_K: return 256;
    default: return 0;
    }
}

size_t mc_dtype_block_bytes(moecl_dtype t) {
    switch (t) {
    case MOECL_DTYPE_F32: return 4;
    case MOECL_DTYPE_F16:
    case MOECL_DTYPE_BF16: return 2;
    case MOECL_DTYPE_Q8_0: return 34;  /* f16 scale, 32 int8 */
    case MOECL_DTYPE_Q4_0: return 18;  /* f16 scale, 32 nibbles */
    case MOECL_DTYPE_Q4_K: return 144; /* f16 d, dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles */
    case MOECL_DTYPE_Q5_K: return 176; /* as Q4_K plus 32 bytes of high bits */
    case MOECL_DTYPE_Q6_K: return 210; /* 128 low nibbles, 64 high 2-bits, 16 int8 scales, f16 d */
    default: return 0;
    }
}

bool mc_dtype_row_bytes(moecl_dtype t, int64_t n, size_t *out) {
    const int64_t blk = mc_dtype_block(t);
    if (blk <= 0 || n < 0 || n % blk) return false;
    return mc_mul_size((size_t)(n / blk), mc_dtype_block_bytes(t), out);
}

/*
 * IEEE half:  s eeeee mmmmmmmmmm   (bias 15)
 * IEEE float: s eeeeeeee m*23      (bias 127)
 */
float mc_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (exp == 0x1f) {                  /* inf / NaN */
        v.u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {              /* normal */
        v.u = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {              /* zero */
        v.u = sign;
    } else {                            /* subnormal: value = man * 2^-24 */
        v.f = (float)man * 0x1p-24f;
        v.u |= sign;
    }
    return v.f;
}

uint16_t mc_f32_to_f16(float f) {
    union { float f; uint32_t u; } v = { .f = f };
    uint32_t sign = (v.u >> 16) & 0x8000u;
    uint32_t a = v.u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);          /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);         /* rounds to inf */
    if (a < 0x38800000u) {                                            /* subnormal or zero in half */
        /* value / 2^-24, rounded to nearest even, as an integer mantissa */
        v.u = a;
        float scaled = v.f * 0x1p24f;
        uint32_t m = (uint32_t)scaled;
        float rem = scaled - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1u))) m++;
        return (uint16_t)(sign | m);
    }
    /* normal: rebias, round mantissa from 23 to 10 bits, nearest even */
    uint32_t r = a - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}
