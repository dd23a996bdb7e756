/*
 * internal.h - definitions shared by every file under src/ and nowhere else.
 */
#ifndef MOECL_INTERNAL_H
#define MOECL_INTERNAL_H

#include "moecl.h"

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#if defined(__GNUC__)
#define MC_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MC_PRINTF(a, b)
#endif

/* ---- errors and logging (moecl.c) ---------------------------------------- */

/* Record the message of a failure as the thread's last error, log it at
 * ERROR level, and return status (so callers can `return mc_error(...)`). */
moecl_status mc_error(moecl_status status, const char *fmt, ...) MC_PRINTF(2, 3);
void mc_log(moecl_log_level level, const char *fmt, ...) MC_PRINTF(2, 3);
void mc_clear_error(void);

/* Text taken from a file, made safe to print: control characters, DEL, the
 * C1 controls (U+0080..U+009F), bidirectional controls, line and paragraph
 * separators, and bytes that are not well-formed UTF-8 become \n, \t, \r,
 * \xNN or \uNNNN; other UTF-8 passes through. With MC_ESC_QUOTES backslash
 * and double quote are escaped too (for text shown between quotes). Writes
 * at most cap bytes into out (NUL included, never half an escape) and
 * returns how many bytes of s it took. mc_error and mc_log pass every
 * message through it, so file text in messages needs nothing more. */
#define MC_ESC_QUOTES 1u
size_t mc_escape(char *out, size_t cap, const char *s, size_t len, unsigned flags);

/* ---- overflow-checked size arithmetic ------------------------------------- */

/* Return false (and leave *out untouched) if the result does not fit. */
static inline bool mc_mul_size(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool mc_add_size(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* ---- number formats -------------------------------------------------------- */

static inline float mc_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { .u = (uint32_t)h << 16 };
    return v.f;
}

/* Round to nearest even, NaN kept quiet. */
static inline uint16_t mc_f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = { .f = f };
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

float mc_f16_to_f32(uint16_t h);
uint16_t mc_f32_to_f16(float f);

/* Bytes per element of a float weight dtype; 0 for the quantized types. */
size_t mc_dtype_size(moecl_dtype t);
/* Elements per block (1 for the float types, 32 or 256 for the quantized
 * ones) and bytes per block; 0 for a dtype out of range. */
int64_t mc_dtype_block(moecl_dtype t);
size_t mc_dtype_block_bytes(moecl_dtype t);
/* Bytes of a row of n elements; false if n is not a whole number of blocks
 * or the size overflows. */
bool mc_dtype_row_bytes(moecl_dtype t, int64_t n, size_t *out);

/* "[a, b, c]" of n_dims sizes into buf (truncated to n bytes); returns buf. */
const char *mc_shape_str(int n_dims, const int64_t *shape, char *buf, size_t n);

/* ---- tensors ------------------------------------------------------------- */

/* A 2-D (or 1-D, cols == 1... see below) weight matrix in row-major order, as
 * PyTorch stores nn.Linear weights: rows = out_features, cols = in_features.
 * A 1-D tensor of n elements has rows = 1, cols = n. data points into a
 * mapped file or into memory owned by the model; never freed through this. */
typedef struct mc_tensor {
    moecl_dtype type;
    int64_t rows;
    int64_t cols;
    const void *data;
    size_t nbytes;
} mc_tensor;

/* CLOCK_MONOTONIC in nanoseconds (traces and timings, never decisions). */
static inline int64_t mc_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif
