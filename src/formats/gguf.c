/*
 * gguf.c - GGUF files (versions 2 and 3): a strict reader over mmap and a
 * streaming writer.
 *
 *   +-------+---------+-----------+--------+------------+--------------+-----+------------------+
 *   | GGUF  | version | n_tensors | n_kv   | n_kv       | n_tensors    | pad | data section     |
 *   | magic | u32     | u64       | u64    | key/values | tensor infos | to  | (tensor offsets  |
 *   | 4 B   |         |           |        |            |              | aln | are relative to  |
 *   +-------+---------+-----------+--------+------------+--------------+-----+-- its start) ----+
 *
 *   key/value:   string key, u32 value type, value
 *   string:      u64 byte length, bytes (no NUL)
 *   array:       u32 element type, u64 count, count values (arrays may nest)
 *   tensor info: string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset
 *
 * Everything is little-endian. Every count and length comes from a file we do
 * not trust: each is checked against the bytes left in the file before
 * anything is allocated for it, so a file of N bytes never makes us allocate
 * more than a small multiple of N.
 *
 * Decisions where the specification leaves room (following ggml's gguf.cpp):
 * - a dimension may be 0 (a tensor with no elements, 0 bytes); n_dims is 1..4;
 * - tensor offsets must be multiples of the alignment, lie inside the data
 *   section and not overlap, but need not be in order or contiguous;
 * - keys and tensor names must be non-empty, at most 65535 bytes, without NUL
 *   bytes; keys and names must be unique;
 * - arrays may nest up to MAX_DEPTH levels (ggml itself refuses nesting).
 */
#include "gguf.h"
#include "util/fileio.h"
#include "formats/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32u
#define MAX_NAME 65535u  /* the spec's bound on key length; also applied to tensor names */
#define MAX_DEPTH 8      /* arrays of arrays of ... */
#define MAX_DIMS 4

/* ------------------------------------------------------------------------ */
/* ggml types                                                               */
/* ------------------------------------------------------------------------ */

/* Every type ggml defines (gguf-py's GGML_QUANT_SIZES): elements per block
 * and bytes per block. A zero block means the number is not a type. */
typedef struct ggml_type_info {
    const char *name;
    uint32_t block;
    uint32_t bytes;
    int dtype; /* a moecl_dtype, or MOECL_DTYPE_COUNT */
} ggml_type_info;

#define QK_K 256
static const ggml_type_info k_types[] = {
    [0] = {"f32", 1, 4, MOECL_DTYPE_F32},
    [1] = {"f16", 1, 2, MOECL_DTYPE_F16},
    [2] = {"q4_0", 32, 2 + 16, MOECL_DTYPE_Q4_0},
    [3] = {"q4_1", 32, 2 + 2 + 16, MOECL_DTYPE_COUNT},
    [6] = {"q5_0", 32, 2 + 4 + 16, MOECL_DTYPE_COUNT},
    [7] = {"q5_1", 32, 2 + 2 + 4 + 16, MOECL_DTYPE_COUNT},
    [8] = {"q8_0", 32, 2 + 32, MOECL_DTYPE_Q8_0},
    [9] = {"q8_1", 32, 4 + 4 + 32, MOECL_DTYPE_COUNT},
    [10] = {"q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4, MOECL_DTYPE_COUNT},
    [11] = {"q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12, MOECL_DTYPE_COUNT},
    [12] = {"q4_K", QK_K, 2 + 2 + QK_K / 2 + 12, MOECL_DTYPE_Q4_K},
    [13] = {"q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12, MOECL_DTYPE_Q5_K},
    [14] = {"q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16, MOECL_DTYPE_Q6_K},
    [15] = {"q8_K", QK_K, 4 + QK_K + QK_K / 8, MOECL_DTYPE_COUNT},
    [16] = {"iq2_xxs", QK_K, 2 + QK_K / 4, MOECL_DTYPE_COUNT},
    [17] = {"iq2_xs", QK_K, 2 + QK_K / 4 + QK_K / 32, MOECL_DTYPE_COUNT},
    [18] = {"iq3_xxs", QK_K, 2 + QK_K / 4 + QK_K / 8, MOECL_DTYPE_COUNT},
    [19] = {"iq1_s", QK_K, 2 + QK_K / 8 + QK_K / 16, MOECL_DTYPE_COUNT},
    [20] = {"iq4_nl", 32, 2 + 16, MOECL_DTYPE_COUNT},
    [21] = {"iq3_s", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4, MOECL_DTYPE_COUNT},
    [22] = {"iq2_s", QK_K, 2 + QK_K / 4 + QK_K / 16, MOECL_DTYPE_COUNT},
    [23] = {"iq4_xs", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64, MOECL_DTYPE_COUNT},
    [24] = {"i8", 1, 1, MOECL_DTYPE_COUNT},
    [25] = {"i16", 1, 2, MOECL_DTYPE_COUNT},
    [26] = {"i32", 1, 4, MOECL_DTYPE_COUNT},
    [27] = {"i64", 1, 8, MOECL_DTYPE_COUNT},
    [28] = {"f64", 1, 8, MOECL_DTYPE_COUNT},
    [29] = {"iq1_m", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32, MOECL_DTYPE_COUNT},
    [30] = {"bf16", 1, 2, MOECL_DTYPE_BF16},
    [34] = {"tq1_0", QK_K, 2 + 4 * 13, MOECL_DTYPE_COUNT},
    [35] = {"tq2_0", QK_K, 2 + 64, MOECL_DTYPE_COUNT},
    [39] = {"mxfp4", 32, 1 + 16, MOECL_DTYPE_COUNT},
    [40] = {"nvfp4", 64, 4 + 32, MOECL_DTYPE_COUNT},
    [41] = {"q1_0", 128, 2 + 16, MOECL_DTYPE_COUNT},
};
#define N_TYPES (sizeof k_types / sizeof k_types[0])

static const ggml_type_info *type_info(uint32_t t) {
    return t < N_TYPES && k_types[t].block ? &k_types[t] : NULL;
}

const char *mc_gguf_type_name(uint32_t ggml_type) {
    const ggml_type_info *ti = type_info(ggml_type);
    return ti ? ti->name : NULL;
}

uint32_t mc_gguf_type_of(moecl_dtype t) {
    for (uint32_t i = 0; i < N_TYPES; i++)
        if (k_types[i].block && k_types[i].dtype == (int)t && t != MOECL_DTYPE_COUNT) return i;
    return UINT32_MAX;
}

/* Bytes of a tensor of this type and shape; false if ne[0] is not a whole
 * number of blocks, or the element count or byte size overflows. */
static bool tensor_nbytes(const ggml_type_info *ti, int n_dims, const int64_t *ne, uint64_t *out,
                          const char **why) {
    int64_t elems = 1;
    for (int i = 0; i < n_dims; i++) {
        if (ne[i] < 0) {
            *why = "a dimension is negative";
            return false;
        }
        if (__builtin_mul_overflow(elems, ne[i], &elems)) {
            *why = "the element count overflows int64";
            return false;
        }
    }
    if (ne[0] % ti->block != 0) {
        *why = "the row length is not a multiple of the type's block size";
        return false;
    }
    uint64_t n;
    if (__builtin_mul_overflow((uint64_t)(ne[0] / ti->block), (uint64_t)ti->bytes, &n)) {
        *why = "the byte size overflows";
        return false;
    }
    for (int i = 1; i < n_dims; i++) {
        if (__builtin_mul_overflow(n, (uint64_t)ne[i], &n)) {
            *why = "the byte size overflows";
            return false;
        }
    }
    if (n > SIZE_MAX) {
        *why = "the byte size does not fit in memory here";
        return false;
    }
    *out = n;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Value types                                                              */
/* ------------------------------------------------------------------------ */

static const char *const k_vtype_names[] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool",  "string", "array", "uint64", "int64", "float64",
};

const char *mc_gguf_vtype_name(mc_gguf_vtype t) {
    return (unsigned)t <= MC_GGUF_FLOAT64 ? k_vtype_names[t] : "unknown";
}

size_t mc_gguf_vtype_size(uint32_t t) {
    switch (t) {
    case MC_GGUF_UINT8: case MC_GGUF_INT8: case MC_GGUF_BOOL: return 1;
    case MC_GGUF_UINT16: case MC_GGUF_INT16: return 2;
    case MC_GGUF_UINT32: case MC_GGUF_INT32: case MC_GGUF_FLOAT32: return 4;
    case MC_GGUF_UINT64: case MC_GGUF_INT64: case MC_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* The fewest bytes one value of type t takes in a file. */
static uint64_t vtype_min_bytes(uint32_t t) {
    if (t == MC_GGUF_STRING) return 8;      /* the length */
    if (t == MC_GGUF_ARRAY) return 4 + 8;   /* element type and count */
    return mc_gguf_vtype_size(t);
}

static uint64_t ld_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* A scalar at p as int64; *ok false for a non-integer type or a uint64 above INT64_MAX. */
static int64_t scalar_int(mc_gguf_vtype t, const uint8_t *p, bool *ok) {
    *ok = true;
    switch (t) {
    case MC_GGUF_UINT8: return (int64_t)p[0];
    case MC_GGUF_INT8: return (int8_t)p[0];
    case MC_GGUF_UINT16: return (int64_t)ld_le(p, 2);
    case MC_GGUF_INT16: return (int16_t)ld_le(p, 2);
    case MC_GGUF_UINT32: return (int64_t)ld_le(p, 4);
    case MC_GGUF_INT32: return (int32_t)(uint32_t)ld_le(p, 4);
    case MC_GGUF_INT64: return (int64_t)ld_le(p, 8);
    case MC_GGUF_UINT64: {
        uint64_t u = ld_le(p, 8);
        if (u > INT64_MAX) *ok = false;
        return u > INT64_MAX ? 0 : (int64_t)u;
    }
    default: *ok = false; return 0;
    }
}

static double scalar_float(mc_gguf_vtype t, const uint8_t *p, bool *ok) {
    *ok = true;
    if (t == MC_GGUF_FLOAT32) {
        union { uint32_t u; float f; } v = {.u = (uint32_t)ld_le(p, 4)};
        return v.f;
    }
    if (t == MC_GGUF_FLOAT64) {
        union { uint64_t u; double d; } v = {.u = ld_le(p, 8)};
        return v.d;
    }
    int64_t i = scalar_int(t, p, ok);
    if (!*ok && t == MC_GGUF_UINT64) {
        *ok = true;
        return (double)ld_le(p, 8);
    }
    return (double)i;
}

/* ------------------------------------------------------------------------ */
/* The handle                                                               */
/* ------------------------------------------------------------------------ */

/* Every allocation made while parsing, freed together. */
typedef struct arena_blk {
    struct arena_blk *next;
    max_align_t data[];
} arena_blk;

struct mc_gguf {
    char *path;
    void *map;            /* our own mapping, or NULL for open_memory */
    size_t map_size;
    const uint8_t *base;  /* the file's bytes */
    uint64_t size;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset; /* start of the data section */
    int64_t n_kv;
    mc_gguf_kv *kvs;                   /* in file order */
    const mc_gguf_kv **kv_sorted;      /* by key */
    int64_t n_tensors;
    mc_gguf_tensor *tensors;           /* in file order */
    const mc_gguf_tensor **t_sorted;   /* by name */
    arena_blk *arena;
};

static void *arena_alloc(mc_gguf *g, uint64_t n, uint64_t size) {
    size_t bytes;
    if (!mc_mul_size((size_t)n, (size_t)size, &bytes) || n > SIZE_MAX ||
        !mc_add_size(bytes, sizeof(arena_blk), &bytes))
        return NULL;
    arena_blk *b = calloc(1, bytes);
    if (!b) return NULL;
    b->next = g->arena;
    g->arena = b;
    return b->data;
}

/* ------------------------------------------------------------------------ */
/* Reading: a cursor over the file                                          */
/* ------------------------------------------------------------------------ */

typedef struct rd {
    mc_gguf *g;
    uint64_t pos;
} rd;

MC_PRINTF(2, 3)
static moecl_status fmt_error(const mc_gguf *g, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mc_error(MOECL_ERR_FORMAT, "%s: %s", g->path, msg);
}

static moecl_status nomem(const mc_gguf *g) {
    return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", g->path);
}

static uint64_t left(const rd *r) {
    return r->g->size - r->pos;
}

/* n bytes at the cursor, or a truncation error naming what was being read. */
static moecl_status take(rd *r, uint64_t n, const char *what, const uint8_t **out) {
    *out = NULL;
    if (n > left(r))
        return fmt_error(r->g, "truncated: %s at offset %" PRIu64 " needs %" PRIu64 " bytes, but the file ends at %"
                         PRIu64, what, r->pos, n, r->g->size);
    *out = r->g->base + r->pos;
    r->pos += n;
    return MOECL_OK;
}

static moecl_status rd_u32(rd *r, const char *what, uint32_t *out) {
    const uint8_t *p = NULL;
    moecl_status st = take(r, 4, what, &p);
    *out = p ? (uint32_t)ld_le(p, 4) : 0;
    return st;
}

static moecl_status rd_u64(rd *r, const char *what, uint64_t *out) {
    const uint8_t *p = NULL;
    moecl_status st = take(r, 8, what, &p);
    *out = p ? ld_le(p, 8) : 0;
    return st;
}

static moecl_status rd_str(rd *r, const char *what, mc_gguf_str *out) {
    uint64_t len;
    out->ptr = "";
    out->len = 0;
    uint64_t at = r->pos;
    moecl_status st = rd_u64(r, what, &len);
    if (st) return st;
    if (len > left(r))
        return fmt_error(r->g, "%s at offset %" PRIu64 " claims %" PRIu64 " bytes, but only %" PRIu64
                         " remain in the file (string longer than the file)", what, at, len, left(r));
    out->ptr = (const char *)r->g->base + r->pos;
    r->pos += len;
    out->len = len;
    return MOECL_OK;
}

/* A key or tensor name: non-empty, bounded, no NUL; copied NUL-terminated. */
static moecl_status rd_name(rd *r, const char *what, char **out) {
    mc_gguf_str s;
    *out = NULL;
    uint64_t at = r->pos;
    moecl_status st = rd_str(r, what, &s);
    if (st) return st;
    if (s.len == 0) return fmt_error(r->g, "%s at offset %" PRIu64 " is empty", what, at);
    if (s.len > MAX_NAME)
        return fmt_error(r->g, "%s at offset %" PRIu64 " is %" PRIu64 " bytes long (the limit is %u)", what, at,
                         s.len, MAX_NAME);
    if (memchr(s.ptr, 0, (size_t)s.len))
        return fmt_error(r->g, "%s at offset %" PRIu64 " contains a NUL byte", what, at);
    char *c = arena_alloc(r->g, s.len + 1, 1);
    if (!c) return nomem(r->g);
    memcpy(c, s.ptr, (size_t)s.len);
    *out = c;
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Reading: metadata                                                        */
/* ------------------------------------------------------------------------ */

static moecl_status rd_value(rd *r, const char *key, uint32_t type, int depth, mc_gguf_kv *kv);

static moecl_status rd_array(rd *r, const char *key, int depth, mc_gguf_kv *kv) {
    mc_gguf *g = r->g;
    if (depth >= MAX_DEPTH)
        return fmt_error(g, "key '%s': arrays nested more than %d levels deep", key, MAX_DEPTH);
    uint32_t et;
    uint64_t n;
    uint64_t at = r->pos;
    moecl_status st = rd_u32(r, "array element type", &et);
    if (st == MOECL_OK) st = rd_u64(r, "array element count", &n);
    if (st) return st;
    if (et > MC_GGUF_FLOAT64)
        return fmt_error(g, "key '%s': array at offset %" PRIu64 " has unknown element type %" PRIu32, key, at, et);
    uint64_t min = vtype_min_bytes(et);
    if (n > left(r) / min)
        return fmt_error(g, "key '%s': array of %" PRIu64 " %s values at offset %" PRIu64 " needs at least %" PRIu64
                         " bytes per value, but only %" PRIu64 " bytes remain in the file", key, n,
                         mc_gguf_vtype_name(et), at, min, left(r));
    kv->type = MC_GGUF_ARRAY;
    kv->arr_type = (mc_gguf_vtype)et;
    kv->n = n;
    if (et == MC_GGUF_STRING) {
        mc_gguf_str *s = n ? arena_alloc(g, n, sizeof *s) : NULL;
        if (n && !s) return nomem(g);
        for (uint64_t i = 0; i < n; i++)
            if ((st = rd_str(r, "string in an array", &s[i]))) return st;
        kv->strs = s;
    } else if (et == MC_GGUF_ARRAY) {
        mc_gguf_kv *items = n ? arena_alloc(g, n, sizeof *items) : NULL;
        if (n && !items) return nomem(g);
        for (uint64_t i = 0; i < n; i++)
            if ((st = rd_array(r, key, depth + 1, &items[i]))) return st;
        kv->items = items;
    } else {
        const uint8_t *p = NULL;
        if ((st = take(r, n * min, "array values", &p))) return st;
        kv->data = p;
    }
    return MOECL_OK;
}

static moecl_status rd_value(rd *r, const char *key, uint32_t type, int depth, mc_gguf_kv *kv) {
    moecl_status st;
    kv->type = (mc_gguf_vtype)type;
    kv->n = 1;
    if (type == MC_GGUF_ARRAY) return rd_array(r, key, depth, kv);
    if (type == MC_GGUF_STRING) {
        mc_gguf_str *s = arena_alloc(r->g, 1, sizeof *s);
        if (!s) return nomem(r->g);
        if ((st = rd_str(r, "string value", s))) return st;
        kv->strs = s;
        return MOECL_OK;
    }
    size_t sz = mc_gguf_vtype_size(type);
    if (sz == 0) return fmt_error(r->g, "key '%s' has unknown value type %" PRIu32, key, type);
    const uint8_t *p = NULL;
    if ((st = take(r, sz, "value", &p))) return st;
    kv->data = p;
    return MOECL_OK;
}

static int cmp_kv(const void *a, const void *b) {
    return strcmp((*(const mc_gguf_kv *const *)a)->key, (*(const mc_gguf_kv *const *)b)->key);
}

static int cmp_tensor(const void *a, const void *b) {
    return strcmp((*(const mc_gguf_tensor *const *)a)->name, (*(const mc_gguf_tensor *const *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b) {
    const mc_gguf_tensor *x = *(const mc_gguf_tensor *const *)a, *y = *(const mc_gguf_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static moecl_status rd_kvs(rd *r, uint64_t n_kv) {
    mc_gguf *g = r->g;
    g->kvs = n_kv ? arena_alloc(g, n_kv, sizeof *g->kvs) : NULL;
    g->kv_sorted = n_kv ? arena_alloc(g, n_kv, sizeof *g->kv_sorted) : NULL;
    if (n_kv && (!g->kvs || !g->kv_sorted)) return nomem(g);
    for (uint64_t i = 0; i < n_kv; i++) {
        mc_gguf_kv *kv = &g->kvs[i];
        char *key = NULL;
        uint32_t type = 0;
        moecl_status st = rd_name(r, "metadata key", &key);
        if (st == MOECL_OK) st = rd_u32(r, "metadata value type", &type);
        if (st == MOECL_OK) st = rd_value(r, key, type, 0, kv);
        if (st) return st;
        kv->key = key;
        g->kv_sorted[i] = kv;
        g->n_kv++;
    }
    if (n_kv > 1) qsort(g->kv_sorted, (size_t)n_kv, sizeof *g->kv_sorted, cmp_kv);
    for (uint64_t i = 1; i < n_kv; i++)
        if (strcmp(g->kv_sorted[i - 1]->key, g->kv_sorted[i]->key) == 0)
            return fmt_error(g, "duplicate metadata key '%s'", g->kv_sorted[i]->key);

    const mc_gguf_kv *al = mc_gguf_find_kv(g, "general.alignment");
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (al) {
        if (al->type != MC_GGUF_UINT32)
            return fmt_error(g, "general.alignment is of type %s, expected uint32", mc_gguf_vtype_name(al->type));
        uint32_t a = (uint32_t)ld_le(al->data, 4);
        if (a == 0 || (a & (a - 1)) != 0)
            return fmt_error(g, "general.alignment is %" PRIu32 ", expected a nonzero power of two", a);
        g->alignment = a;
    }
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Reading: tensors                                                         */
/* ------------------------------------------------------------------------ */


static moecl_status rd_tensor_info(rd *r, mc_gguf_tensor *t) {
    mc_gguf *g = r->g;
    char *name = NULL;
    uint32_t n_dims = 0, type = 0;
    moecl_status st = rd_name(r, "tensor name", &name);
    if (st) return st;
    t->name = name;
    if ((st = rd_u32(r, "tensor dimension count", &n_dims))) return st;
    if (n_dims < 1 || n_dims > MAX_DIMS)
        return fmt_error(g, "tensor '%s': n_dims is %" PRIu32 ", expected 1..%d", name, n_dims, MAX_DIMS);
    t->n_dims = (int)n_dims;
    for (int i = 0; i < MAX_DIMS; i++) t->ne[i] = 1;
    for (uint32_t i = 0; i < n_dims; i++) {
        uint64_t d;
        if ((st = rd_u64(r, "tensor dimension", &d))) return st;
        if (d > INT64_MAX)
            return fmt_error(g, "tensor '%s': dimension %" PRIu32 " is %" PRIu64 ", more than int64 holds", name, i, d);
        t->ne[i] = (int64_t)d;
    }
    if ((st = rd_u32(r, "tensor type", &type)) || (st = rd_u64(r, "tensor offset", &t->offset))) return st;
    t->ggml_type = type;
    const ggml_type_info *ti = type_info(type);
    if (!ti) return fmt_error(g, "tensor '%s' has unknown ggml type %" PRIu32, name, type);
    t->dtype = (moecl_dtype)ti->dtype;
    uint64_t nbytes;
    const char *why = "";
    char sh[128];
    if (!tensor_nbytes(ti, t->n_dims, t->ne, &nbytes, &why))
        return fmt_error(g, "tensor '%s': shape %s of type %s: %s (block size %" PRIu32 ")", name,
                         mc_shape_str(t->n_dims, t->ne, sh, sizeof sh), ti->name, why, ti->block);
    t->nbytes = (size_t)nbytes;
    return MOECL_OK;
}

static moecl_status check_tensors(mc_gguf *g) {
    uint64_t data_size = g->size > g->data_offset ? g->size - g->data_offset : 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        mc_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment != 0)
            return fmt_error(g, "tensor '%s': offset %" PRIu64 " is not a multiple of the alignment %" PRIu64
                             " (misaligned)", t->name, t->offset, g->alignment);
        if (t->offset > data_size || t->nbytes > data_size - t->offset)
            return fmt_error(g, "tensor '%s': bytes [%" PRIu64 ", %" PRIu64 ") of the data section lie past the end "
                             "of the file (the data section starts at %" PRIu64 " and holds %" PRIu64 " bytes)",
                             t->name, t->offset, t->offset + (uint64_t)t->nbytes, g->data_offset, data_size);
        t->data = g->base + g->data_offset + t->offset;
    }
    if (g->n_tensors > 1) qsort(g->t_sorted, (size_t)g->n_tensors, sizeof *g->t_sorted, cmp_tensor);
    for (int64_t i = 1; i < g->n_tensors; i++)
        if (strcmp(g->t_sorted[i - 1]->name, g->t_sorted[i]->name) == 0)
            return fmt_error(g, "duplicate tensor name '%s'", g->t_sorted[i]->name);

    /* Sorted by offset, each non-empty tensor must start at or after the
     * furthest end seen so far. */
    if (g->n_tensors < 2) return MOECL_OK;
    const mc_gguf_tensor **by_off = malloc((size_t)g->n_tensors * sizeof *by_off);
    if (!by_off) return nomem(g);
    memcpy(by_off, g->t_sorted, (size_t)g->n_tensors * sizeof *by_off);
    qsort(by_off, (size_t)g->n_tensors, sizeof *by_off, cmp_tensor_offset);
    moecl_status st = MOECL_OK;
    const mc_gguf_tensor *far = NULL;
    for (int64_t i = 0; i < g->n_tensors && st == MOECL_OK; i++) {
        const mc_gguf_tensor *t = by_off[i];
        if (t->nbytes == 0) continue;
        if (far && t->offset < far->offset + far->nbytes)
            st = fmt_error(g, "tensors '%s' [%" PRIu64 ", %" PRIu64 ") and '%s' [%" PRIu64 ", %" PRIu64 ") overlap",
                           far->name, far->offset, far->offset + (uint64_t)far->nbytes, t->name, t->offset,
                           t->offset + (uint64_t)t->nbytes);
        if (!far || t->offset + t->nbytes > far->offset + far->nbytes) far = t;
    }
    free(by_off);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Reading: the whole file                                                  */
/* ------------------------------------------------------------------------ */

static moecl_status parse(mc_gguf *g) {
    rd r = {g, 0};
    const uint8_t *magic = NULL;
    moecl_status st = take(&r, 4, "magic", &magic);
    if (st) return st;
    if (memcmp(magic, GGUF_MAGIC, 4) != 0)
        return fmt_error(g, "bad magic %02x %02x %02x %02x: not a GGUF file (expected \"GGUF\")", magic[0],
                         magic[1], magic[2], magic[3]);
    uint32_t v;
    if ((st = rd_u32(&r, "version", &v))) return st;
    uint32_t swapped = __builtin_bswap32(v);
    if ((v & 0xffffu) == 0 && swapped >= 1 && swapped <= 3)
        return fmt_error(g, "the version field reads 0x%08" PRIx32 ": a big-endian GGUF (version %" PRIu32
                         "), which moecl does not read", v, swapped);
    if (v == 1)
        return fmt_error(g, "GGUF version 1 is not supported (an early draft with 32-bit counts; "
                         "convert the model again)");
    if (v != 2 && v != 3)
        return fmt_error(g, "unknown GGUF version %" PRIu32 " (moecl reads versions 2 and 3)", v);
    g->version = v;

    uint64_t n_tensors, n_kv;
    if ((st = rd_u64(&r, "tensor count", &n_tensors)) || (st = rd_u64(&r, "metadata count", &n_kv))) return st;
    /* Smallest entries: a key/value of 1-byte key + type + 1-byte value; a
     * tensor info of 1-byte name, n_dims, one dimension, type and offset. */
    if (n_kv > left(&r) / (8 + 1 + 4 + 1))
        return fmt_error(g, "metadata count %" PRIu64 " is absurd: the %" PRIu64 " bytes left in the file hold at "
                         "most %" PRIu64 " entries", n_kv, left(&r), left(&r) / 14);
    if (n_tensors > left(&r) / (8 + 1 + 4 + 8 + 4 + 8))
        return fmt_error(g, "tensor count %" PRIu64 " is absurd: the %" PRIu64 " bytes left in the file hold at "
                         "most %" PRIu64 " tensor infos", n_tensors, left(&r), left(&r) / 33);
    if ((st = rd_kvs(&r, n_kv))) return st;

    /* Checked again: the metadata took some of the bytes. */
    if (n_tensors > left(&r) / 33)
        return fmt_error(g, "tensor count %" PRIu64 " is absurd: the %" PRIu64 " bytes left after the metadata hold "
                         "at most %" PRIu64 " tensor infos", n_tensors, left(&r), left(&r) / 33);
    g->tensors = n_tensors ? arena_alloc(g, n_tensors, sizeof *g->tensors) : NULL;
    g->t_sorted = n_tensors ? arena_alloc(g, n_tensors, sizeof *g->t_sorted) : NULL;
    if (n_tensors && (!g->tensors || !g->t_sorted)) return nomem(g);
    for (uint64_t i = 0; i < n_tensors; i++) {
        if ((st = rd_tensor_info(&r, &g->tensors[i]))) return st;
        g->t_sorted[i] = &g->tensors[i];
        g->n_tensors++;
    }
    uint64_t pad = (g->alignment - r.pos % g->alignment) % g->alignment;
    if (__builtin_add_overflow(r.pos, pad, &g->data_offset))
        return fmt_error(g, "the data section offset overflows");
    if (n_tensors > 0 && g->data_offset > g->size)
        return fmt_error(g, "truncated: the data section would start at offset %" PRIu64 ", but the file ends at %"
                         PRIu64, g->data_offset, g->size);
    return check_tensors(g);
}

static moecl_status open_common(mc_gguf *g, mc_gguf **out) {
    moecl_status st = parse(g);
    if (st != MOECL_OK) {
        mc_gguf_close(g);
        return st;
    }
    *out = g;
    return MOECL_OK;
}

moecl_status mc_gguf_open_memory(const void *data, size_t size, const char *name, mc_gguf **out) {
    if (!out) return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_open_memory: no output handle");
    *out = NULL;
    if (!data && size) return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_open_memory: no data");
    if (!name) name = "(memory)";
    mc_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(name))) {
        free(g);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", name);
    }
    g->base = data ? data : (const uint8_t *)"";
    g->size = size;
    return open_common(g, out);
}

moecl_status mc_gguf_open(const char *path, mc_gguf **out) {
    if (!out) return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_open: no output handle");
    *out = NULL;
    if (!path) return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_open: no path");
    mc_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
    }
    int fd;
    struct stat sb;
    moecl_status st = mc_open_regular(path, &fd, &sb);
    if (st != MOECL_OK) {
        mc_gguf_close(g);
        return st;
    }
    if (sb.st_size == 0) {
        st = mc_error(MOECL_ERR_FORMAT, "%s: the file is empty, not a GGUF file", path);
    } else if ((uint64_t)sb.st_size > SIZE_MAX) {
        st = mc_error(MOECL_ERR_IO, "%s: file is %lld bytes, too large to map here", path, (long long)sb.st_size);
    } else {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st = mc_error(MOECL_ERR_IO, "%s: cannot map %lld bytes: %s", path, (long long)sb.st_size,
                          strerror(errno));
        } else {
            g->map = m;
            g->map_size = (size_t)sb.st_size;
            g->base = m;
            g->size = (uint64_t)sb.st_size;
        }
    }
    close(fd); /* the mapping keeps the pages reachable */
    if (st != MOECL_OK) {
        mc_gguf_close(g);
        return st;
    }
    return open_common(g, out);
}

void mc_gguf_close(mc_gguf *g) {
    if (!g) return;
    for (arena_blk *b = g->arena, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    if (g->map) munmap(g->map, g->map_size);
    free(g->path);
    free(g);
}

/* ------------------------------------------------------------------------ */
/* Reading: accessors                                                       */
/* ------------------------------------------------------------------------ */

const char *mc_gguf_path(const mc_gguf *g) { return g ? g->path : ""; }
uint32_t mc_gguf_version(const mc_gguf *g) { return g ? g->version : 0; }
uint64_t mc_gguf_alignment(const mc_gguf *g) { return g ? g->alignment : 0; }
uint64_t mc_gguf_file_size(const mc_gguf *g) { return g ? g->size : 0; }
int64_t mc_gguf_n_kv(const mc_gguf *g) { return g ? g->n_kv : 0; }
int64_t mc_gguf_n_tensors(const mc_gguf *g) { return g ? g->n_tensors : 0; }

const mc_gguf_kv *mc_gguf_kv_at(const mc_gguf *g, int64_t i) {
    return g && i >= 0 && i < g->n_kv ? &g->kvs[i] : NULL;
}

const mc_gguf_tensor *mc_gguf_tensor_at(const mc_gguf *g, int64_t i) {
    return g && i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const mc_gguf_kv *mc_gguf_find_kv(const mc_gguf *g, const char *key) {
    if (!g || !key || g->n_kv == 0) return NULL;
    mc_gguf_kv probe = {.key = key};
    const mc_gguf_kv *pp = &probe;
    const mc_gguf_kv **hit = bsearch(&pp, g->kv_sorted, (size_t)g->n_kv, sizeof *g->kv_sorted, cmp_kv);
    return hit ? *hit : NULL;
}

const mc_gguf_tensor *mc_gguf_find_tensor(const mc_gguf *g, const char *name) {
    if (!g || !name || g->n_tensors == 0) return NULL;
    mc_gguf_tensor probe = {.name = name};
    const mc_gguf_tensor *pp = &probe;
    const mc_gguf_tensor **hit = bsearch(&pp, g->t_sorted, (size_t)g->n_tensors, sizeof *g->t_sorted, cmp_tensor);
    return hit ? *hit : NULL;
}

/* The key's value, or: absent and optional (*kv NULL, OK), absent and required (error). */
static moecl_status find_for_get(const mc_gguf *g, const char *key, bool required, const mc_gguf_kv **kv) {
    *kv = NULL;
    if (!g || !key) return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_get: no file or key");
    *kv = mc_gguf_find_kv(g, key);
    if (!*kv && required) return mc_error(MOECL_ERR_FORMAT, "%s: metadata key '%s' is missing", g->path, key);
    return MOECL_OK;
}

static moecl_status wrong_type(const mc_gguf *g, const mc_gguf_kv *kv, const char *expected) {
    if (kv->type == MC_GGUF_ARRAY)
        return mc_error(MOECL_ERR_FORMAT, "%s: metadata key '%s' is an array of %s, expected %s", g->path, kv->key,
                        mc_gguf_vtype_name(kv->arr_type), expected);
    return mc_error(MOECL_ERR_FORMAT, "%s: metadata key '%s' is of type %s, expected %s", g->path, kv->key,
                    mc_gguf_vtype_name(kv->type), expected);
}

moecl_status mc_gguf_get_int(const mc_gguf *g, const char *key, bool required, int64_t *out) {
    const mc_gguf_kv *kv = NULL;
    moecl_status st = find_for_get(g, key, required, &kv);
    if (st || !kv) return st;
    bool ok;
    int64_t v = kv->type == MC_GGUF_ARRAY || kv->type == MC_GGUF_STRING ? (ok = false, 0)
                                                                        : scalar_int(kv->type, kv->data, &ok);
    if (!ok) {
        if (kv->type == MC_GGUF_UINT64)
            return mc_error(MOECL_ERR_FORMAT, "%s: metadata key '%s' = %" PRIu64 " does not fit int64", g->path, key,
                            ld_le(kv->data, 8));
        return wrong_type(g, kv, "an integer");
    }
    *out = v;
    return MOECL_OK;
}

moecl_status mc_gguf_get_float(const mc_gguf *g, const char *key, bool required, double *out) {
    const mc_gguf_kv *kv = NULL;
    moecl_status st = find_for_get(g, key, required, &kv);
    if (st || !kv) return st;
    if (kv->type != MC_GGUF_FLOAT32 && kv->type != MC_GGUF_FLOAT64) return wrong_type(g, kv, "float32 or float64");
    bool ok;
    *out = scalar_float(kv->type, kv->data, &ok);
    return MOECL_OK;
}

moecl_status mc_gguf_get_bool(const mc_gguf *g, const char *key, bool required, bool *out) {
    const mc_gguf_kv *kv = NULL;
    moecl_status st = find_for_get(g, key, required, &kv);
    if (st || !kv) return st;
    if (kv->type != MC_GGUF_BOOL) return wrong_type(g, kv, "bool");
    *out = *(const uint8_t *)kv->data != 0;
    return MOECL_OK;
}

moecl_status mc_gguf_get_str(const mc_gguf *g, const char *key, bool required, mc_gguf_str *out) {
    const mc_gguf_kv *kv = NULL;
    moecl_status st = find_for_get(g, key, required, &kv);
    if (st || !kv) return st;
    if (kv->type != MC_GGUF_STRING) return wrong_type(g, kv, "string");
    *out = kv->strs[0];
    return MOECL_OK;
}

moecl_status mc_gguf_get_arr(const mc_gguf *g, const char *key, bool required, mc_gguf_vtype elem,
                             const mc_gguf_kv **out) {
    const mc_gguf_kv *kv = NULL;
    moecl_status st = find_for_get(g, key, required, &kv);
    if (st || !kv) return st;
    if (kv->type != MC_GGUF_ARRAY || kv->arr_type != elem) {
        char want[48];
        snprintf(want, sizeof want, "an array of %s", mc_gguf_vtype_name(elem));
        return wrong_type(g, kv, want);
    }
    *out = kv;
    return MOECL_OK;
}

int64_t mc_gguf_arr_int(const mc_gguf_kv *arr, uint64_t i) {
    bool ok;
    size_t sz = mc_gguf_vtype_size(arr->arr_type);
    int64_t v = scalar_int(arr->arr_type, (const uint8_t *)arr->data + i * sz, &ok);
    if (!ok && arr->arr_type == MC_GGUF_UINT64) return INT64_MAX; /* saturate */
    return v;
}

double mc_gguf_arr_float(const mc_gguf_kv *arr, uint64_t i) {
    bool ok;
    size_t sz = mc_gguf_vtype_size(arr->arr_type);
    return scalar_float(arr->arr_type, (const uint8_t *)arr->data + i * sz, &ok);
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct wr_buf {
    uint8_t *p;
    size_t n, cap;
    bool failed; /* an allocation failed: everything after is dropped */
} wr_buf;

typedef struct wr_tensor {
    char *name;
    uint32_t type;
    int n_dims;
    int64_t ne[MAX_DIMS];
    uint64_t offset;
    uint64_t nbytes;
} wr_tensor;

struct mc_gguf_writer {
    char *path;
    mc_afile file;      /* the temporary file until finish renames it */
    uint32_t alignment;
    wr_buf kv;          /* the serialized key/values */
    int64_t n_kv;
    char **keys;        /* to refuse duplicates */
    size_t keys_cap;
    wr_tensor *tensors;
    int64_t n_tensors, tensors_cap;
    uint64_t data_size; /* the data section so far, padded */
    bool header_written;
    bool failed;        /* a write failed: only free is useful now */
    int64_t cur;        /* the tensor write_data fills */
    uint64_t cur_done;  /* its bytes written */
};

static void buf_put(wr_buf *b, const void *p, size_t n) {
    if (b->failed) return;
    if (n > b->cap - b->n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n) {
            if (cap > SIZE_MAX / 2) {
                b->failed = true;
                return;
            }
            cap *= 2;
        }
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->failed = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void buf_le(wr_buf *b, uint64_t v, int n) {
    uint8_t t[8];
    for (int i = 0; i < n; i++) t[i] = (uint8_t)(v >> (8 * i));
    buf_put(b, t, (size_t)n);
}

static void buf_str(wr_buf *b, const char *s, uint64_t len) {
    buf_le(b, len, 8);
    buf_put(b, s, (size_t)len);
}

static moecl_status wr_check(mc_gguf_writer *w, const char *fn) {
    if (!w) return mc_error(MOECL_ERR_INVALID_ARG, "%s: no writer", fn);
    if (w->failed) return mc_error(MOECL_ERR_INVALID_ARG, "%s: %s: an earlier write failed", w->path, fn);
    return MOECL_OK;
}

/* A new key: non-empty, without NUL, not yet used, and before the header. */
static moecl_status wr_key(mc_gguf_writer *w, const char *key, const char *fn) {
    moecl_status st = wr_check(w, fn);
    if (st) return st;
    if (!key || !key[0] || strlen(key) > MAX_NAME)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: %s: a key must be 1..%u bytes", w->path, fn, MAX_NAME);
    if (w->header_written)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: %s: key '%s' comes after tensor data was written", w->path, fn,
                        key);
    for (int64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return mc_error(MOECL_ERR_INVALID_ARG, "%s: %s: duplicate key '%s'", w->path, fn, key);
    if ((size_t)w->n_kv == w->keys_cap) {
        size_t cap = w->keys_cap ? 2 * w->keys_cap : 32;
        char **k = realloc(w->keys, cap * sizeof *k);
        if (!k) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", w->path);
        w->keys = k;
        w->keys_cap = cap;
    }
    if (!(w->keys[w->n_kv] = strdup(key))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", w->path);
    w->n_kv++;
    buf_str(&w->kv, key, strlen(key));
    return MOECL_OK;
}

static moecl_status wr_done(mc_gguf_writer *w) {
    if (w->kv.failed) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory for the metadata", w->path);
    return MOECL_OK;
}

moecl_status mc_gguf_writer_new(const char *path, uint32_t alignment, mc_gguf_writer **out) {
    if (!out) return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_writer_new: no output");
    *out = NULL;
    if (!path) return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_writer_new: no path");
    if (alignment == 0) alignment = GGUF_DEFAULT_ALIGNMENT;
    if (alignment & (alignment - 1))
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: alignment %" PRIu32 " is not a power of two", path, alignment);
    mc_gguf_writer *w = calloc(1, sizeof *w);
    if (w) w->file.fd = -1;
    if (!w || !(w->path = strdup(path))) {
        mc_gguf_writer_free(w);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
    }
    w->alignment = alignment;
    moecl_status st = mc_afile_open(&w->file, path, MC_AFILE_IF_UNCHANGED);
    if (st) {
        mc_gguf_writer_free(w);
        return st;
    }
    if (alignment != GGUF_DEFAULT_ALIGNMENT) {
        st = mc_gguf_writer_set_u32(w, "general.alignment", alignment);
        if (st) {
            mc_gguf_writer_free(w);
            return st;
        }
    }
    *out = w;
    return MOECL_OK;
}

static moecl_status set_scalar(mc_gguf_writer *w, const char *key, mc_gguf_vtype t, uint64_t bits) {
    moecl_status st = wr_key(w, key, "set");
    if (st) return st;
    buf_le(&w->kv, (uint64_t)t, 4);
    buf_le(&w->kv, bits, (int)mc_gguf_vtype_size(t));
    return wr_done(w);
}

moecl_status mc_gguf_writer_set_u32(mc_gguf_writer *w, const char *key, uint32_t v) {
    if (w && key && strcmp(key, "general.alignment") == 0) {
        /* The alignment is the writer's: only its own value may be stated. */
        if (v != w->alignment)
            return mc_error(MOECL_ERR_INVALID_ARG, "%s: general.alignment %" PRIu32 " differs from the writer's %"
                            PRIu32 " (pass it to mc_gguf_writer_new)", w->path, v, w->alignment);
        for (int64_t i = 0; i < w->n_kv; i++)
            if (strcmp(w->keys[i], key) == 0) return MOECL_OK;
    }
    return set_scalar(w, key, MC_GGUF_UINT32, v);
}
moecl_status mc_gguf_writer_set_i32(mc_gguf_writer *w, const char *key, int32_t v) {
    return set_scalar(w, key, MC_GGUF_INT32, (uint32_t)v);
}
moecl_status mc_gguf_writer_set_u64(mc_gguf_writer *w, const char *key, uint64_t v) {
    return set_scalar(w, key, MC_GGUF_UINT64, v);
}
moecl_status mc_gguf_writer_set_f32(mc_gguf_writer *w, const char *key, float v) {
    union { float f; uint32_t u; } b = {.f = v};
    return set_scalar(w, key, MC_GGUF_FLOAT32, b.u);
}
moecl_status mc_gguf_writer_set_bool(mc_gguf_writer *w, const char *key, bool v) {
    return set_scalar(w, key, MC_GGUF_BOOL, v ? 1 : 0);
}

moecl_status mc_gguf_writer_set_str(mc_gguf_writer *w, const char *key, const char *v, size_t len) {
    if (!v && len) return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_writer_set_str: no string");
    moecl_status st = wr_key(w, key, "set_str");
    if (st) return st;
    buf_le(&w->kv, MC_GGUF_STRING, 4);
    buf_str(&w->kv, v, len);
    return wr_done(w);
}

moecl_status mc_gguf_writer_set_arr(mc_gguf_writer *w, const char *key, mc_gguf_vtype elem, const void *data,
                                    uint64_t n) {
    size_t sz = mc_gguf_vtype_size(elem), bytes;
    if (sz == 0)
        return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_writer_set_arr: '%s': element type %s is not fixed-size",
                        key ? key : "", mc_gguf_vtype_name(elem));
    if (n > SIZE_MAX || !mc_mul_size((size_t)n, sz, &bytes) || (!data && n))
        return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_writer_set_arr: '%s': bad array", key ? key : "");
    moecl_status st = wr_key(w, key, "set_arr");
    if (st) return st;
    buf_le(&w->kv, MC_GGUF_ARRAY, 4);
    buf_le(&w->kv, (uint64_t)elem, 4);
    buf_le(&w->kv, n, 8);
    /* Values in host order; every supported host is little-endian. */
    buf_put(&w->kv, data, bytes);
    return wr_done(w);
}

moecl_status mc_gguf_writer_set_str_arr(mc_gguf_writer *w, const char *key, const mc_gguf_str *strs, uint64_t n) {
    if (!strs && n) return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_writer_set_str_arr: no strings");
    moecl_status st = wr_key(w, key, "set_str_arr");
    if (st) return st;
    buf_le(&w->kv, MC_GGUF_ARRAY, 4);
    buf_le(&w->kv, MC_GGUF_STRING, 4);
    buf_le(&w->kv, n, 8);
    for (uint64_t i = 0; i < n; i++) buf_str(&w->kv, strs[i].ptr, strs[i].len);
    return wr_done(w);
}

/* An array value (element type, count, elements) as read by this reader. */
static void put_array(wr_buf *b, const mc_gguf_kv *kv) {
    buf_le(b, (uint64_t)kv->arr_type, 4);
    buf_le(b, kv->n, 8);
    if (kv->arr_type == MC_GGUF_STRING)
        for (uint64_t i = 0; i < kv->n; i++) buf_str(b, kv->strs[i].ptr, kv->strs[i].len);
    else if (kv->arr_type == MC_GGUF_ARRAY)
        for (uint64_t i = 0; i < kv->n; i++) put_array(b, &kv->items[i]);
    else
        buf_put(b, kv->data, (size_t)kv->n * mc_gguf_vtype_size(kv->arr_type));
}

moecl_status mc_gguf_writer_copy_kv(mc_gguf_writer *w, const mc_gguf_kv *kv) {
    if (!kv || !kv->key) return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_writer_copy_kv: no key/value");
    if (kv->type > MC_GGUF_FLOAT64) return mc_error(MOECL_ERR_INVALID_ARG, "mc_gguf_writer_copy_kv: bad type");
    /* The alignment belongs to the writer (see mc_gguf_writer_new). */
    if (strcmp(kv->key, "general.alignment") == 0) return wr_check(w, "copy_kv");
    moecl_status st = wr_key(w, kv->key, "copy_kv");
    if (st) return st;
    buf_le(&w->kv, (uint64_t)kv->type, 4);
    if (kv->type == MC_GGUF_ARRAY)
        put_array(&w->kv, kv);
    else if (kv->type == MC_GGUF_STRING)
        buf_str(&w->kv, kv->strs[0].ptr, kv->strs[0].len);
    else
        buf_put(&w->kv, kv->data, mc_gguf_vtype_size(kv->type));
    return wr_done(w);
}

moecl_status mc_gguf_writer_add_tensor(mc_gguf_writer *w, const char *name, uint32_t ggml_type, int n_dims,
                                       const int64_t *ne) {
    moecl_status st = wr_check(w, "add_tensor");
    if (st) return st;
    if (!name || !name[0] || strlen(name) > MAX_NAME)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: add_tensor: a name must be 1..%u bytes", w->path, MAX_NAME);
    if (w->header_written)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: add_tensor '%s' after tensor data was written", w->path, name);
    const ggml_type_info *ti = type_info(ggml_type);
    if (!ti)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor '%s': unknown ggml type %" PRIu32, w->path, name,
                        ggml_type);
    if (n_dims < 1 || n_dims > MAX_DIMS || !ne)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor '%s': n_dims %d, expected 1..%d", w->path, name, n_dims,
                        MAX_DIMS);
    uint64_t nbytes, padded, end;
    const char *why = "";
    char sh[128];
    if (!tensor_nbytes(ti, n_dims, ne, &nbytes, &why))
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor '%s': shape %s of type %s: %s", w->path, name,
                        mc_shape_str(n_dims, ne, sh, sizeof sh), ti->name, why);
    padded = nbytes + (w->alignment - nbytes % w->alignment) % w->alignment;
    if (padded < nbytes || __builtin_add_overflow(w->data_size, padded, &end))
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor '%s': the data section overflows", w->path, name);
    for (int64_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return mc_error(MOECL_ERR_INVALID_ARG, "%s: duplicate tensor name '%s'", w->path, name);
    if (w->n_tensors == w->tensors_cap) {
        int64_t cap = w->tensors_cap ? 2 * w->tensors_cap : 64;
        wr_tensor *t = realloc(w->tensors, (size_t)cap * sizeof *t);
        if (!t) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", w->path);
        w->tensors = t;
        w->tensors_cap = cap;
    }
    wr_tensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", w->path);
    t->type = ggml_type;
    t->n_dims = n_dims;
    for (int i = 0; i < MAX_DIMS; i++) t->ne[i] = i < n_dims ? ne[i] : 1;
    t->offset = w->data_size;
    t->nbytes = nbytes;
    w->data_size = end;
    w->n_tensors++;
    return MOECL_OK;
}

static moecl_status wr_io(mc_gguf_writer *w, const void *p, size_t n) {
    moecl_status st = mc_afile_write(&w->file, p, n);
    if (st) w->failed = true;
    return st;
}

static moecl_status wr_pad(mc_gguf_writer *w, uint64_t pos) {
    static const uint8_t zeros[256];
    uint64_t pad = (w->alignment - pos % w->alignment) % w->alignment;
    moecl_status st = MOECL_OK;
    while (pad && st == MOECL_OK) {
        size_t k = pad < sizeof zeros ? (size_t)pad : sizeof zeros;
        st = wr_io(w, zeros, k);
        pad -= k;
    }
    return st;
}

static moecl_status write_header(mc_gguf_writer *w) {
    wr_buf h = {0};
    buf_put(&h, GGUF_MAGIC, 4);
    buf_le(&h, 3, 4);
    buf_le(&h, (uint64_t)w->n_tensors, 8);
    buf_le(&h, (uint64_t)w->n_kv, 8);
    buf_put(&h, w->kv.p, w->kv.n);
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const wr_tensor *t = &w->tensors[i];
        buf_str(&h, t->name, strlen(t->name));
        buf_le(&h, (uint64_t)t->n_dims, 4);
        for (int d = 0; d < t->n_dims; d++) buf_le(&h, (uint64_t)t->ne[d], 8);
        buf_le(&h, t->type, 4);
        buf_le(&h, t->offset, 8);
    }
    moecl_status st;
    if (h.failed) {
        w->failed = true;
        st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory for the header", w->path);
    } else {
        st = wr_io(w, h.p, h.n);
        if (st == MOECL_OK) st = wr_pad(w, h.n);
    }
    free(h.p);
    w->header_written = true;
    return st;
}

/* Skip past tensors already complete (and empty ones), padding each. */
static moecl_status advance(mc_gguf_writer *w) {
    moecl_status st = MOECL_OK;
    while (st == MOECL_OK && w->cur < w->n_tensors && w->cur_done == w->tensors[w->cur].nbytes) {
        st = wr_pad(w, w->cur_done);
        w->cur++;
        w->cur_done = 0;
    }
    return st;
}

moecl_status mc_gguf_writer_write_data(mc_gguf_writer *w, const void *data, size_t n) {
    moecl_status st = wr_check(w, "write_data");
    if (st) return st;
    if (!w->header_written && ((st = write_header(w)) || (st = advance(w)))) return st;
    if (n == 0) return MOECL_OK;
    if (!data) return mc_error(MOECL_ERR_INVALID_ARG, "%s: write_data: no data", w->path);
    if (w->cur >= w->n_tensors)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: write_data: %zu bytes after every tensor is complete", w->path, n);
    const wr_tensor *t = &w->tensors[w->cur];
    if (n > t->nbytes - w->cur_done)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: write_data: %zu bytes, but tensor '%s' has only %" PRIu64
                        " left to write", w->path, n, t->name, t->nbytes - w->cur_done);
    if ((st = wr_io(w, data, n))) return st;
    w->cur_done += n;
    return advance(w);
}

moecl_status mc_gguf_writer_finish(mc_gguf_writer *w) {
    moecl_status st = wr_check(w, "finish");
    if (st) return st;
    if (!w->header_written && ((st = write_header(w)) || (st = advance(w)))) return st;
    if (w->cur < w->n_tensors) {
        w->failed = true;
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: finish: tensor '%s' has %" PRIu64 " of its %" PRIu64
                        " bytes written", w->path, w->tensors[w->cur].name, w->cur_done, w->tensors[w->cur].nbytes);
    }
    w->failed = true; /* whatever happens next, the writer is spent */
    return mc_afile_commit(&w->file);
}

void mc_gguf_writer_free(mc_gguf_writer *w) {
    if (!w) return;
    mc_afile_discard(&w->file);
    for (int64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    for (int64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    free(w->kv.p);
    free(w->path);
    free(w);
}
