/*
 * gguf.h - GGUF files (versions 2 and 3): a strict reader over mmap and a
 * streaming writer.
 *
 * The reader validates everything before anything is used: counts, string
 * lengths and dimensions against the bytes left in the file, element counts
 * and byte sizes without overflow, known tensor types, tensor offsets inside
 * the data section, aligned to general.alignment, and not overlapping. Every
 * error is MOECL_ERR_FORMAT (or IO) with a message naming the file and the
 * problem. Metadata values and tensor data point into the mapping.
 */
#ifndef MOECL_GGUF_H
#define MOECL_GGUF_H

#include "internal.h"

#include <stdbool.h>
#include <stdint.h>

/* Metadata value types, as numbered in the file. */
typedef enum mc_gguf_vtype {
    MC_GGUF_UINT8 = 0,
    MC_GGUF_INT8 = 1,
    MC_GGUF_UINT16 = 2,
    MC_GGUF_INT16 = 3,
    MC_GGUF_UINT32 = 4,
    MC_GGUF_INT32 = 5,
    MC_GGUF_FLOAT32 = 6,
    MC_GGUF_BOOL = 7,
    MC_GGUF_STRING = 8,
    MC_GGUF_ARRAY = 9,
    MC_GGUF_UINT64 = 10,
    MC_GGUF_INT64 = 11,
    MC_GGUF_FLOAT64 = 12,
} mc_gguf_vtype;

/* ggml tensor types moecl computes with (the file may name any ggml type). */
enum {
    MC_GGML_F32 = 0,
    MC_GGML_F16 = 1,
    MC_GGML_Q4_0 = 2,
    MC_GGML_Q8_0 = 8,
    MC_GGML_Q4_K = 12,
    MC_GGML_Q5_K = 13,
    MC_GGML_Q6_K = 14,
    MC_GGML_BF16 = 30,
};

/* A string in the file: not NUL-terminated. */
typedef struct mc_gguf_str {
    const char *ptr;
    uint64_t len;
} mc_gguf_str;

/* One metadata value. Arrays may nest: an array of arrays has items. */
typedef struct mc_gguf_kv {
    const char *key;                /* NUL-terminated copy; NULL for array items */
    mc_gguf_vtype type;             /* a scalar type, STRING or ARRAY */
    mc_gguf_vtype arr_type;         /* ARRAY: the element type */
    uint64_t n;                     /* ARRAY: element count; otherwise 1 */
    const void *data;               /* scalars, arrays of scalars: the first value in the
                                       mapping (little-endian, maybe unaligned) */
    const mc_gguf_str *strs;        /* STRING: one; ARRAY of STRING: n */
    const struct mc_gguf_kv *items; /* ARRAY of ARRAY: n */
} mc_gguf_kv;

typedef struct mc_gguf_tensor {
    const char *name;   /* NUL-terminated copy */
    uint32_t ggml_type; /* as stored */
    moecl_dtype dtype;  /* MOECL_DTYPE_COUNT: a valid ggml type moecl does not compute with */
    int n_dims;         /* 1..4 */
    int64_t ne[4];      /* ne[0]: elements per row (innermost); unused dims are 1 */
    uint64_t offset;    /* from the start of the data section */
    const void *data;   /* in the mapping */
    size_t nbytes;
} mc_gguf_tensor;

typedef struct mc_gguf mc_gguf;

/* Map and validate a file. */
moecl_status mc_gguf_open(const char *path, mc_gguf **out);
/* Validate a file already in memory (tests, fuzzing); data must outlive the
 * handle; name is used in messages. */
moecl_status mc_gguf_open_memory(const void *data, size_t size, const char *name, mc_gguf **out);
void mc_gguf_close(mc_gguf *g);

const char *mc_gguf_path(const mc_gguf *g);
uint32_t mc_gguf_version(const mc_gguf *g);
uint64_t mc_gguf_alignment(const mc_gguf *g);
uint64_t mc_gguf_file_size(const mc_gguf *g);

int64_t mc_gguf_n_kv(const mc_gguf *g);
const mc_gguf_kv *mc_gguf_kv_at(const mc_gguf *g, int64_t i);
const mc_gguf_kv *mc_gguf_find_kv(const mc_gguf *g, const char *key); /* NULL: absent */

int64_t mc_gguf_n_tensors(const mc_gguf *g);
const mc_gguf_tensor *mc_gguf_tensor_at(const mc_gguf *g, int64_t i);
const mc_gguf_tensor *mc_gguf_find_tensor(const mc_gguf *g, const char *name); /* NULL: absent */

/* Typed getters. Absent and !required: MOECL_OK with *out untouched; absent
 * and required, or of another type: MOECL_ERR_FORMAT naming file and key.
 * get_int accepts every integer type whose value fits int64; get_float
 * FLOAT32, FLOAT64; get_arr checks the element type. */
moecl_status mc_gguf_get_int(const mc_gguf *g, const char *key, bool required, int64_t *out);
moecl_status mc_gguf_get_float(const mc_gguf *g, const char *key, bool required, double *out);
moecl_status mc_gguf_get_bool(const mc_gguf *g, const char *key, bool required, bool *out);
moecl_status mc_gguf_get_str(const mc_gguf *g, const char *key, bool required, mc_gguf_str *out);
moecl_status mc_gguf_get_arr(const mc_gguf *g, const char *key, bool required, mc_gguf_vtype elem,
                             const mc_gguf_kv **out);
/* Element i of a numeric array as int64 / double (the caller checked the type and i < n). */
int64_t mc_gguf_arr_int(const mc_gguf_kv *arr, uint64_t i);
double mc_gguf_arr_float(const mc_gguf_kv *arr, uint64_t i);

/* "q4_K", "f32", ... for any ggml type; NULL for numbers that are not one. */
const char *mc_gguf_type_name(uint32_t ggml_type);
const char *mc_gguf_vtype_name(mc_gguf_vtype t);
/* Bytes of one fixed-size value; 0 for STRING, ARRAY and unknown types. */
size_t mc_gguf_vtype_size(uint32_t t);
/* The ggml type of a moecl dtype. */
uint32_t mc_gguf_type_of(moecl_dtype t);

/* ---- writing -------------------------------------------------------------- */

/* Writes a temporary file beside PATH and renames it to PATH only when
 * finished (formats/atomic_file.h, MC_AFILE_IF_UNCHANGED), so a failure never
 * leaves a half-written file under the real name, and of two writers of one
 * PATH at a time the later to finish fails. Order of use:
 * set_* and add_tensor (any order), then write_data for every tensor in the
 * order they were added, then finish. free without finish removes the
 * temporary file. */
typedef struct mc_gguf_writer mc_gguf_writer;

moecl_status mc_gguf_writer_new(const char *path, uint32_t alignment, mc_gguf_writer **out);
moecl_status mc_gguf_writer_set_u32(mc_gguf_writer *w, const char *key, uint32_t v);
moecl_status mc_gguf_writer_set_i32(mc_gguf_writer *w, const char *key, int32_t v);
moecl_status mc_gguf_writer_set_u64(mc_gguf_writer *w, const char *key, uint64_t v);
moecl_status mc_gguf_writer_set_f32(mc_gguf_writer *w, const char *key, float v);
moecl_status mc_gguf_writer_set_bool(mc_gguf_writer *w, const char *key, bool v);
moecl_status mc_gguf_writer_set_str(mc_gguf_writer *w, const char *key, const char *v, size_t len);
/* An array of n fixed-size values of type elem (not STRING/ARRAY), copied. */
moecl_status mc_gguf_writer_set_arr(mc_gguf_writer *w, const char *key, mc_gguf_vtype elem, const void *data,
                                    uint64_t n);
moecl_status mc_gguf_writer_set_str_arr(mc_gguf_writer *w, const char *key, const mc_gguf_str *strs, uint64_t n);
/* Copy a metadata value read from another file (any type, nested arrays too). */
moecl_status mc_gguf_writer_copy_kv(mc_gguf_writer *w, const mc_gguf_kv *kv);
/* Declare a tensor; ne[0] is the row length. nbytes follows from type and shape. */
moecl_status mc_gguf_writer_add_tensor(mc_gguf_writer *w, const char *name, uint32_t ggml_type, int n_dims,
                                       const int64_t *ne);
/* Append bytes of the current tensor (called as many times as needed); the
 * header is written before the first call. */
moecl_status mc_gguf_writer_write_data(mc_gguf_writer *w, const void *data, size_t n);
moecl_status mc_gguf_writer_finish(mc_gguf_writer *w);
void mc_gguf_writer_free(mc_gguf_writer *w);

#endif
