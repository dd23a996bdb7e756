/*
 * safetensors.c - reading safetensors files through mmap, sets of shards
 * listed by model.safetensors.index.json, and a streaming writer.
 *
 *   +------------+--------------------------+-------------------------------+
 *   | u64 LE: N  | N bytes of JSON header   | data section                  |
 *   +------------+--------------------------+-------------------------------+
 *   0            8                          8 + N                         EOF
 *
 * Every number in the header comes from a file we do not trust, so each one
 * is checked (a number, integral, in range) before it becomes a size or a
 * pointer, and every size product is overflow-checked.
 */
#include "safetensors.h"
#include "formats/atomic_file.h"
#include "json.h"
#include "util/fileio.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Limits and dtypes                                                        */
/* ------------------------------------------------------------------------ */

/* No real dimension comes near 2^40; larger ones only serve overflows. */
#define ST_MAX_DIM ((uint64_t)1 << 40)
#define ST_MAX_DIMS 4

static const char k_metadata_key[] = "__metadata__";
static const char k_index_name[] = "model.safetensors.index.json";
static const char k_single_name[] = "model.safetensors";

/* Every dtype the format defines, so that a valid file with a type moecl
 * does not run is told apart (UNSUPPORTED) from a corrupt one (FORMAT). */
typedef struct st_dtype_name {
    const char *name;
    int type; /* a moecl_dtype, or -1: valid safetensors, not run by moecl */
} st_dtype_name;

static const st_dtype_name k_dtypes[] = {
    {"F32", MOECL_DTYPE_F32}, {"F16", MOECL_DTYPE_F16}, {"BF16", MOECL_DTYPE_BF16},
    {"F64", -1},     {"I64", -1},     {"U64", -1},     {"I32", -1},     {"U32", -1},
    {"I16", -1},     {"U16", -1},     {"I8", -1},      {"U8", -1},      {"BOOL", -1},
    {"F8_E4M3", -1}, {"F8_E5M2", -1}, {"F8_E8M0", -1}, {"F6_E2M3", -1}, {"F6_E3M2", -1},
    {"F4", -1},      {"C64", -1},
};

static const char *dtype_st_name(moecl_dtype t) {
    for (size_t i = 0; i < sizeof k_dtypes / sizeof k_dtypes[0]; i++)
        if (k_dtypes[i].type == (int)t) return k_dtypes[i].name;
    return "?";
}

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* v as an integer in [0, max]. cJSON keeps numbers as doubles, so integral
 * and in-range are checked on the double before it is converted. */
static bool json_uint(const cJSON *v, uint64_t max, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0.0 && d < 0x1p64) || d != floor(d)) return false;
    uint64_t u = (uint64_t)d;
    if (u > max) return false;
    *out = u;
    return true;
}


/* ------------------------------------------------------------------------ */
/* Reading one file: mapping                                                */
/* ------------------------------------------------------------------------ */

static moecl_status map_file(const char *path, mc_st_file *f) {
    f->path = strdup(path);
    if (!f->path) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
    int fd;
    struct stat sb;
    moecl_status st = mc_open_regular(path, &fd, &sb);
    if (st != MOECL_OK) return st;
    if (sb.st_size < 8) {
        st = mc_error(MOECL_ERR_FORMAT, "%s: file is %lld bytes, too short for the 8-byte header length",
                      path, (long long)sb.st_size);
    } else if ((uint64_t)sb.st_size > SIZE_MAX) {
        st = mc_error(MOECL_ERR_IO, "%s: file is %lld bytes, too large to map here", path,
                      (long long)sb.st_size);
    } else {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st = mc_error(MOECL_ERR_IO, "%s: cannot map %lld bytes: %s", path, (long long)sb.st_size,
                          strerror(errno));
        } else {
            f->map = m;
            f->map_size = (size_t)sb.st_size;
        }
    }
    close(fd); /* the mapping keeps the file's pages reachable */
    return st;
}

/* ------------------------------------------------------------------------ */
/* Reading one file: the header entries                                     */
/* ------------------------------------------------------------------------ */

/* Where the data section lies, as found from the header length. */
typedef struct st_data {
    const uint8_t *base;
    uint64_t size;
} st_data;

MC_PRINTF(5, 6)
static moecl_status entry_error(moecl_status status, const mc_st_file *f, const char *name,
                                char *scratch, const char *fmt, ...) {
    /* scratch (256 bytes) holds the detail; the full message is built by mc_error */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(scratch, 256, fmt, ap);
    va_end(ap);
    return mc_error(status, "%s: tensor '%s': %s", f->path, name, scratch);
}

static moecl_status parse_dtype(const mc_st_file *f, const char *name, const cJSON *v, moecl_dtype *out) {
    char msg[256], num[40];
    if (!v) return entry_error(MOECL_ERR_FORMAT, f, name, msg, "missing 'dtype'");
    if (!cJSON_IsString(v))
        return entry_error(MOECL_ERR_FORMAT, f, name, msg, "'dtype' is %s, expected a string",
                           mc_json_describe(v, num, sizeof num));
    for (size_t i = 0; i < sizeof k_dtypes / sizeof k_dtypes[0]; i++) {
        if (strcmp(v->valuestring, k_dtypes[i].name) != 0) continue;
        if (k_dtypes[i].type < 0)
            return entry_error(MOECL_ERR_UNSUPPORTED, f, name, msg,
                               "dtype %s is not supported (moecl reads F32, F16 and BF16)", k_dtypes[i].name);
        *out = (moecl_dtype)k_dtypes[i].type;
        return MOECL_OK;
    }
    return entry_error(MOECL_ERR_FORMAT, f, name, msg, "unknown dtype '%.40s'", v->valuestring);
}

static moecl_status parse_shape(const mc_st_file *f, const char *name, const cJSON *v, mc_st_tensor *t) {
    char msg[256], num[40];
    if (!v) return entry_error(MOECL_ERR_FORMAT, f, name, msg, "missing 'shape'");
    if (!cJSON_IsArray(v))
        return entry_error(MOECL_ERR_FORMAT, f, name, msg, "'shape' is %s, expected an array of integers",
                           mc_json_describe(v, num, sizeof num));
    int n = 0;
    for (const cJSON *d = v->child; d; d = d->next, n++) {
        if (n == ST_MAX_DIMS)
            return entry_error(MOECL_ERR_UNSUPPORTED, f, name, msg,
                               "'shape' has more than %d dimensions", ST_MAX_DIMS);
        uint64_t u;
        if (!json_uint(d, ST_MAX_DIM, &u))
            return entry_error(MOECL_ERR_FORMAT, f, name, msg,
                               "shape[%d] is %s, expected an integer in [0, 2^40]", n,
                               mc_json_describe(d, num, sizeof num));
        t->shape[n] = (int64_t)u;
    }
    t->n_dims = n;
    return MOECL_OK;
}

/* The byte size shape * dtype needs, or an error if it overflows. */
static moecl_status shape_nbytes(const mc_st_file *f, const char *name, const mc_st_tensor *t, size_t *out) {
    size_t n = mc_dtype_size(t->type);
    for (int i = 0; i < t->n_dims; i++) {
        if (!mc_mul_size(n, (size_t)t->shape[i], &n)) {
            char msg[256], sh[128];
            return entry_error(MOECL_ERR_FORMAT, f, name, msg, "shape %s is too large (its byte size overflows)",
                               mc_shape_str(t->n_dims, t->shape, sh, sizeof sh));
        }
    }
    *out = n;
    return MOECL_OK;
}

static moecl_status parse_offsets(const mc_st_file *f, const char *name, const cJSON *v, st_data data,
                                  mc_st_tensor *t) {
    char msg[256], num[40], sh[128];
    if (!v) return entry_error(MOECL_ERR_FORMAT, f, name, msg, "missing 'data_offsets'");
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) != 2)
        return entry_error(MOECL_ERR_FORMAT, f, name, msg, "'data_offsets' has %d elements, expected [begin, end]",
                           cJSON_GetArraySize(v));
    if (!cJSON_IsArray(v))
        return entry_error(MOECL_ERR_FORMAT, f, name, msg, "'data_offsets' is %s, expected [begin, end]",
                           mc_json_describe(v, num, sizeof num));
    uint64_t off[2];
    for (int i = 0; i < 2; i++) {
        const cJSON *o = cJSON_GetArrayItem(v, i);
        if (!json_uint(o, UINT64_MAX, &off[i]))
            return entry_error(MOECL_ERR_FORMAT, f, name, msg, "data_offsets[%d] is %s, expected an integer >= 0",
                               i, mc_json_describe(o, num, sizeof num));
    }
    if (off[0] > off[1])
        return entry_error(MOECL_ERR_FORMAT, f, name, msg, "data_offsets [%" PRIu64 ", %" PRIu64 "] are reversed",
                           off[0], off[1]);
    if (off[1] > data.size)
        return entry_error(MOECL_ERR_FORMAT, f, name, msg,
                           "data_offsets [%" PRIu64 ", %" PRIu64 "] lie past the end of the data section "
                           "(%" PRIu64 " bytes)",
                           off[0], off[1], data.size);
    size_t need = 0;
    moecl_status st = shape_nbytes(f, name, t, &need);
    if (st != MOECL_OK) return st;
    if (off[1] - off[0] != need)
        return entry_error(MOECL_ERR_FORMAT, f, name, msg,
                           "data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                           " bytes, but shape %s of %s needs %zu (size mismatch)",
                           off[0], off[1], off[1] - off[0], mc_shape_str(t->n_dims, t->shape, sh, sizeof sh),
                           dtype_st_name(t->type), need);
    t->data = data.base + off[0];
    t->nbytes = need;
    return MOECL_OK;
}

static moecl_status parse_entry(const mc_st_file *f, const cJSON *e, st_data data, mc_st_tensor *t) {
    const char *name = e->string;
    char msg[256], num[40];
    if (!cJSON_IsObject(e))
        return entry_error(MOECL_ERR_FORMAT, f, name, msg, "entry is %s, expected an object",
                           mc_json_describe(e, num, sizeof num));
    moecl_status st = parse_dtype(f, name, cJSON_GetObjectItemCaseSensitive(e, "dtype"), &t->type);
    if (st == MOECL_OK) st = parse_shape(f, name, cJSON_GetObjectItemCaseSensitive(e, "shape"), t);
    if (st == MOECL_OK) st = parse_offsets(f, name, cJSON_GetObjectItemCaseSensitive(e, "data_offsets"), data, t);
    if (st != MOECL_OK) return st;
    t->name = strdup(name);
    if (!t->name) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", f->path);
    return MOECL_OK;
}

/* "__metadata__" is free-form, but the format says string -> string. */
static moecl_status check_metadata(const mc_st_file *f, const cJSON *m) {
    char num[40];
    if (!cJSON_IsObject(m))
        return mc_error(MOECL_ERR_FORMAT, "%s: '__metadata__' is %s, expected an object of strings", f->path,
                        mc_json_describe(m, num, sizeof num));
    for (const cJSON *kv = m->child; kv; kv = kv->next)
        if (!cJSON_IsString(kv))
            return mc_error(MOECL_ERR_FORMAT, "%s: '__metadata__' value '%s' is %s, expected a string", f->path,
                            kv->string, mc_json_describe(kv, num, sizeof num));
    return MOECL_OK;
}

/* ------------------------------------------------------------------------ */
/* Reading one file: whole-file checks                                      */
/* ------------------------------------------------------------------------ */

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const mc_st_tensor *)a)->name, ((const mc_st_tensor *)b)->name);
}

static int cmp_key_tensor(const void *key, const void *elem) {
    return strcmp((const char *)key, ((const mc_st_tensor *)elem)->name);
}

typedef struct st_range {
    uint64_t begin, end;
    const char *name;
} st_range;

static int cmp_range(const void *a, const void *b) {
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* cJSON keeps duplicate keys, so a name may appear twice; after sorting by
 * name they are neighbours. */
static moecl_status check_duplicates(const mc_st_file *f) {
    for (int i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            return mc_error(MOECL_ERR_FORMAT, "%s: duplicate tensor name '%s'", f->path, f->tensors[i].name);
    return MOECL_OK;
}

/* Two tensors sharing bytes would let a write to one (after a copy) or a
 * hostile file alias weights; sorted by begin, each non-empty range must
 * start at or after the furthest end seen so far. */
static moecl_status check_overlaps(const mc_st_file *f, st_data data) {
    if (f->n_tensors < 2) return MOECL_OK;
    st_range *r = malloc((size_t)f->n_tensors * sizeof *r);
    if (!r) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", f->path);
    for (int i = 0; i < f->n_tensors; i++) {
        const mc_st_tensor *t = &f->tensors[i];
        r[i].begin = (uint64_t)((const uint8_t *)t->data - data.base);
        r[i].end = r[i].begin + t->nbytes;
        r[i].name = t->name;
    }
    qsort(r, (size_t)f->n_tensors, sizeof *r, cmp_range);
    moecl_status st = MOECL_OK;
    const st_range *far = NULL; /* the non-empty range ending furthest so far */
    for (int i = 0; i < f->n_tensors && st == MOECL_OK; i++) {
        if (r[i].begin == r[i].end) continue;
        if (far && r[i].begin < far->end)
            st = mc_error(MOECL_ERR_FORMAT,
                          "%s: tensors '%s' [%" PRIu64 ", %" PRIu64 "] and '%s' [%" PRIu64 ", %" PRIu64 "] overlap",
                          f->path, far->name, far->begin, far->end, r[i].name, r[i].begin, r[i].end);
        if (!far || r[i].end > far->end) far = &r[i];
    }
    free(r);
    return st;
}

static moecl_status parse_file(mc_st_file *f) {
    const uint8_t *p = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > f->map_size - 8)
        return mc_error(MOECL_ERR_FORMAT, "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)",
                        f->path, hlen, f->map_size);
    /* Checked against the limit before anything is allocated (json.c; the
     * reference implementation allows 100 MB, real headers take a few MB). */
    if (hlen > mc_json_max_bytes(MC_JSON_ST_HEADER))
        return mc_error(MOECL_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the %zu-byte limit", f->path, hlen,
                        mc_json_max_bytes(MC_JSON_ST_HEADER));

    /* A NUL-terminated copy: the header in the mapping is not terminated. */
    char *text = malloc((size_t)hlen + 1);
    if (!text) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory for a %" PRIu64 "-byte header", f->path, hlen);
    memcpy(text, p + 8, (size_t)hlen);
    text[hlen] = '\0';
    cJSON *root = NULL;
    moecl_status st = mc_json_parse(f->path, MC_JSON_ST_HEADER, text, (size_t)hlen, &root);
    free(text);
    if (st != MOECL_OK) return st;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mc_error(MOECL_ERR_FORMAT, "%s: header is not a JSON object", f->path);
    }

    st_data data = {p + 8 + hlen, f->map_size - 8 - hlen};
    int n = 0;
    for (const cJSON *e = root->child; e && st == MOECL_OK; e = e->next) {
        if (strcmp(e->string, k_metadata_key) == 0)
            st = check_metadata(f, e);
        else
            n++;
    }
    if (st == MOECL_OK && n > 0) {
        f->tensors = calloc((size_t)n, sizeof *f->tensors);
        if (!f->tensors) st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory for %d tensors", f->path, n);
    }
    for (const cJSON *e = root->child; e && st == MOECL_OK; e = e->next) {
        if (strcmp(e->string, k_metadata_key) == 0) continue;
        st = parse_entry(f, e, data, &f->tensors[f->n_tensors]);
        if (st == MOECL_OK) f->n_tensors++;
    }
    cJSON_Delete(root);
    if (st != MOECL_OK) return st;

    if (f->n_tensors > 1) qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
    st = check_duplicates(f);
    if (st == MOECL_OK) st = check_overlaps(f, data);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Reading one file: public                                                 */
/* ------------------------------------------------------------------------ */

moecl_status mc_st_open(const char *path, mc_st_file *f) {
    if (!f) return mc_error(MOECL_ERR_INVALID_ARG, "mc_st_open: no output file");
    memset(f, 0, sizeof *f);
    if (!path) return mc_error(MOECL_ERR_INVALID_ARG, "mc_st_open: no path");
    mc_st_file tmp = {0};
    moecl_status st = map_file(path, &tmp);
    if (st == MOECL_OK) st = parse_file(&tmp);
    if (st != MOECL_OK) {
        mc_st_close(&tmp);
        return st;
    }
    *f = tmp;
    return MOECL_OK;
}

moecl_status mc_st_open_memory(const void *data, size_t size, const char *name, mc_st_file *f) {
    if (!f) return mc_error(MOECL_ERR_INVALID_ARG, "mc_st_open_memory: no output file");
    memset(f, 0, sizeof *f);
    if (!data && size) return mc_error(MOECL_ERR_INVALID_ARG, "mc_st_open_memory: no data");
    if (!name) name = "(memory)";
    mc_st_file tmp = {.map = (void *)data, .map_size = size, .borrowed = true};
    if (!(tmp.path = strdup(name))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", name);
    moecl_status st = size < 8 ? mc_error(MOECL_ERR_FORMAT, "%s: file is %zu bytes, too short for the 8-byte header "
                                          "length", name, size)
                               : parse_file(&tmp);
    if (st != MOECL_OK) {
        mc_st_close(&tmp);
        return st;
    }
    *f = tmp;
    return MOECL_OK;
}

void mc_st_close(mc_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    if (f->map && !f->borrowed) munmap(f->map, f->map_size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

static const mc_st_tensor *file_find(const mc_st_file *f, const char *name) {
    if (f->n_tensors == 0) return NULL;
    return bsearch(name, f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_key_tensor);
}

/* ------------------------------------------------------------------------ */
/* Sets of shards                                                           */
/* ------------------------------------------------------------------------ */

/* One line of the index's weight_map; strings point into the parsed JSON. */
typedef struct st_map_entry {
    const char *tensor;
    const char *shard;
} st_map_entry;

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const st_map_entry *)a)->tensor, ((const st_map_entry *)b)->tensor);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Shards must lie in the model directory itself: the index is data, and a
 * name like "../../etc/x" must not steer us elsewhere. */
static bool plain_file_name(const char *s) {
    return s[0] != '\0' && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* exists: true if path exists; a missing path is not an error. */
static moecl_status probe(const char *path, bool *exists) {
    struct stat sb;
    *exists = false;
    if (stat(path, &sb) == 0) {
        *exists = true;
        return MOECL_OK;
    }
    if (errno == ENOENT || errno == ENOTDIR) return MOECL_OK;
    return mc_error(MOECL_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
}

/* Read weight_map into entries sorted by tensor name, and the distinct shard
 * names sorted. Both arrays point into root. */
static moecl_status read_weight_map(const char *index_path, const cJSON *root, st_map_entry **out_entries,
                                    int *out_n, const char ***out_shards, int *out_n_shards) {
    char num[40];
    const cJSON *wm = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(root))
        return mc_error(MOECL_ERR_FORMAT, "%s: not a JSON object", index_path);
    if (!cJSON_IsObject(wm))
        return mc_error(MOECL_ERR_FORMAT, "%s: 'weight_map' is %s, expected an object", index_path,
                        mc_json_describe(wm, num, sizeof num));
    int n = cJSON_GetArraySize(wm);
    if (n <= 0) return mc_error(MOECL_ERR_FORMAT, "%s: 'weight_map' is empty", index_path);

    st_map_entry *entries = malloc((size_t)n * sizeof *entries);
    const char **shards = malloc((size_t)n * sizeof *shards);
    if (!entries || !shards) {
        free(entries);
        free(shards);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", index_path);
    }
    moecl_status st = MOECL_OK;
    int i = 0;
    for (const cJSON *kv = wm->child; kv && st == MOECL_OK; kv = kv->next, i++) {
        if (!cJSON_IsString(kv))
            st = mc_error(MOECL_ERR_FORMAT, "%s: tensor '%s' maps to %s, expected a shard file name", index_path,
                          kv->string, mc_json_describe(kv, num, sizeof num));
        else if (!plain_file_name(kv->valuestring))
            st = mc_error(MOECL_ERR_FORMAT,
                          "%s: tensor '%s' maps to shard '%s', which is not a plain file name in the model directory",
                          index_path, kv->string, kv->valuestring);
        else
            entries[i] = (st_map_entry){kv->string, kv->valuestring};
        shards[i] = kv->valuestring;
    }
    if (st == MOECL_OK) {
        qsort(entries, (size_t)n, sizeof *entries, cmp_entry);
        for (int k = 1; k < n && st == MOECL_OK; k++)
            if (strcmp(entries[k - 1].tensor, entries[k].tensor) == 0)
                st = mc_error(MOECL_ERR_FORMAT, "%s: weight_map lists tensor '%s' more than once", index_path,
                              entries[k].tensor);
    }
    if (st != MOECL_OK) {
        free(entries);
        free(shards);
        return st;
    }
    qsort(shards, (size_t)n, sizeof *shards, cmp_str);
    int n_shards = 0;
    for (int k = 0; k < n; k++)
        if (n_shards == 0 || strcmp(shards[n_shards - 1], shards[k]) != 0) shards[n_shards++] = shards[k];
    *out_entries = entries;
    *out_n = n;
    *out_shards = shards;
    *out_n_shards = n_shards;
    return MOECL_OK;
}

/* Every tensor the index names must be in the shard it names. */
static moecl_status check_weight_map(const char *index_path, const mc_st_set *set, const char **shards,
                                     const st_map_entry *entries, int n) {
    for (int i = 0; i < n; i++) {
        const char **s = bsearch(&entries[i].shard, shards, (size_t)set->n_files, sizeof *shards, cmp_str);
        if (!s || !file_find(&set->files[s - shards], entries[i].tensor))
            return mc_error(MOECL_ERR_FORMAT, "%s: weight_map puts tensor '%s' in shard '%s', which does not contain it",
                            index_path, entries[i].tensor, entries[i].shard);
    }
    return MOECL_OK;
}

typedef struct st_owner {
    const char *name;
    const char *path;
} st_owner;

static int cmp_owner(const void *a, const void *b) {
    return strcmp(((const st_owner *)a)->name, ((const st_owner *)b)->name);
}

/* A tensor in two shards would make mc_st_set_find's answer depend on file
 * order; refuse the ambiguity. */
static moecl_status check_cross_duplicates(const char *index_path, const mc_st_set *set) {
    size_t total = 0;
    for (int i = 0; i < set->n_files; i++) total += (size_t)set->files[i].n_tensors;
    if (total < 2) return MOECL_OK;
    st_owner *all = malloc(total * sizeof *all);
    if (!all) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", index_path);
    size_t k = 0;
    for (int i = 0; i < set->n_files; i++)
        for (int j = 0; j < set->files[i].n_tensors; j++)
            all[k++] = (st_owner){set->files[i].tensors[j].name, set->files[i].path};
    qsort(all, total, sizeof *all, cmp_owner);
    moecl_status st = MOECL_OK;
    for (size_t i = 1; i < total && st == MOECL_OK; i++)
        if (strcmp(all[i - 1].name, all[i].name) == 0)
            st = mc_error(MOECL_ERR_FORMAT, "%s: tensor '%s' is in both %s and %s", index_path, all[i].name,
                          all[i - 1].path, all[i].path);
    free(all);
    return st;
}

/* Open each distinct shard once. A shard's own error gets the index named
 * too, so the reader learns why that file was wanted. */
static moecl_status open_shards(const char *dir, const char *index_path, const char **shards, int n_shards,
                                mc_st_set *set) {
    set->files = calloc((size_t)n_shards, sizeof *set->files);
    if (!set->files) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory for %d shards", dir, n_shards);
    for (int i = 0; i < n_shards; i++) {
        char *p = path_join(dir, shards[i]);
        if (!p) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", dir);
        moecl_status st = mc_st_open(p, &set->files[i]);
        free(p);
        if (st != MOECL_OK) {
            char why[768];
            snprintf(why, sizeof why, "%s", moecl_last_error());
            return mc_error(st, "%s (a shard listed in %s)", why, index_path);
        }
        set->n_files++;
    }
    return MOECL_OK;
}

static moecl_status open_index(const char *dir, const char *index_path, mc_st_set *set) {
    cJSON *root = NULL;
    moecl_status st = mc_json_load_file(index_path, MC_JSON_ST_INDEX, &root);
    if (st != MOECL_OK) return st;

    st_map_entry *entries = NULL;
    const char **shards = NULL;
    int n = 0, n_shards = 0;
    st = read_weight_map(index_path, root, &entries, &n, &shards, &n_shards);
    if (st == MOECL_OK) st = open_shards(dir, index_path, shards, n_shards, set);
    if (st == MOECL_OK) st = check_weight_map(index_path, set, shards, entries, n);
    if (st == MOECL_OK) st = check_cross_duplicates(index_path, set);
    free(entries);
    free(shards);
    cJSON_Delete(root);
    return st;
}

static moecl_status open_single(const char *path, mc_st_set *set) {
    set->files = calloc(1, sizeof *set->files);
    if (!set->files) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
    moecl_status st = mc_st_open(path, &set->files[0]);
    if (st == MOECL_OK) set->n_files = 1;
    return st;
}

static moecl_status open_dir(const char *dir, mc_st_set *set) {
    struct stat sb;
    if (stat(dir, &sb) != 0) return mc_error(MOECL_ERR_IO, "%s: cannot open: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return mc_error(MOECL_ERR_IO, "%s: not a directory", dir);

    char *index = path_join(dir, k_index_name);
    char *single = path_join(dir, k_single_name);
    moecl_status st = MOECL_OK;
    bool has_index = false, has_single = false;
    if (!index || !single) st = mc_error(MOECL_ERR_NOMEM, "%s: out of memory", dir);
    if (st == MOECL_OK) st = probe(index, &has_index);
    if (st == MOECL_OK && !has_index) st = probe(single, &has_single);
    if (st == MOECL_OK) {
        if (has_index)
            st = open_index(dir, index, set);
        else if (has_single)
            st = open_single(single, set);
        else
            st = mc_error(MOECL_ERR_IO, "%s: no %s or %s", dir, k_single_name, k_index_name);
    }
    free(index);
    free(single);
    return st;
}

moecl_status mc_st_set_open_dir(const char *dir, mc_st_set *set) {
    if (!set) return mc_error(MOECL_ERR_INVALID_ARG, "mc_st_set_open_dir: no output set");
    memset(set, 0, sizeof *set);
    if (!dir) return mc_error(MOECL_ERR_INVALID_ARG, "mc_st_set_open_dir: no directory");
    moecl_status st = open_dir(dir, set);
    if (st != MOECL_OK) mc_st_set_close(set);
    return st;
}

void mc_st_set_close(mc_st_set *set) {
    if (!set) return;
    for (int i = 0; i < set->n_files; i++) mc_st_close(&set->files[i]);
    free(set->files);
    memset(set, 0, sizeof *set);
}

const mc_st_tensor *mc_st_set_find(const mc_st_set *set, const char *name) {
    if (!set || !name) return NULL;
    for (int i = 0; i < set->n_files; i++) {
        const mc_st_tensor *t = file_find(&set->files[i], name);
        if (t) return t;
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct st_decl {
    char *name;
    moecl_dtype type;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;
} st_decl;

struct mc_st_writer {
    char *path;
    mc_afile file;  /* a temporary file beside path until finish renames it */
    st_decl *decls; /* (n_decls) in declaration order, which is also data order */
    int n_decls, cap_decls;
    size_t total;   /* sum of the declared sizes */
    size_t written; /* data bytes written so far */
    bool in_data;   /* header written: only data may follow */
    bool failed;    /* a write failed: the file is unusable */
};

static void writer_free(mc_st_writer *w) {
    for (int i = 0; i < w->n_decls; i++) free(w->decls[i].name);
    free(w->decls);
    free(w->path);
    free(w);
}

moecl_status mc_st_writer_new(const char *path, mc_st_writer **out) {
    if (!out) return mc_error(MOECL_ERR_INVALID_ARG, "mc_st_writer_new: no output");
    *out = NULL;
    if (!path) return mc_error(MOECL_ERR_INVALID_ARG, "mc_st_writer_new: no path");
    mc_st_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) {
        free(w);
        return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", path);
    }
    moecl_status st = mc_afile_open(&w->file, path, 0);
    if (st) {
        writer_free(w);
        return st;
    }
    *out = w;
    return MOECL_OK;
}

static moecl_status check_decl(const mc_st_writer *w, const char *name, moecl_dtype type, int n_dims,
                               const int64_t *shape) {
    if (w->in_data) return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor declared after the header was written", w->path);
    if (!name || !name[0]) return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor declared without a name", w->path);
    if (strcmp(name, k_metadata_key) == 0)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: '%s' cannot name a tensor", w->path, name);
    if ((unsigned)type >= MOECL_DTYPE_COUNT)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor '%s': invalid dtype %d", w->path, name, (int)type);
    if (n_dims < 0 || n_dims > ST_MAX_DIMS || (n_dims > 0 && !shape))
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor '%s': invalid rank %d", w->path, name, n_dims);
    for (int i = 0; i < n_dims; i++)
        if (shape[i] < 0 || (uint64_t)shape[i] > ST_MAX_DIM)
            return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor '%s': shape[%d] = %" PRId64 " is out of range",
                            w->path, name, i, shape[i]);
    for (int i = 0; i < w->n_decls; i++)
        if (strcmp(w->decls[i].name, name) == 0)
            return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor '%s' declared twice", w->path, name);
    return MOECL_OK;
}

moecl_status mc_st_writer_declare(mc_st_writer *w, const char *name, moecl_dtype type, int n_dims,
                                  const int64_t *shape) {
    if (!w) return mc_error(MOECL_ERR_INVALID_ARG, "mc_st_writer_declare: no writer");
    moecl_status st = check_decl(w, name, type, n_dims, shape);
    if (st != MOECL_OK) return st;

    st_decl d = {.type = type, .n_dims = n_dims, .nbytes = mc_dtype_size(type)};
    size_t total;
    for (int i = 0; i < n_dims; i++) {
        d.shape[i] = shape[i];
        if (!mc_mul_size(d.nbytes, (size_t)shape[i], &d.nbytes))
            return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor '%s': byte size overflows", w->path, name);
    }
    if (!mc_add_size(w->total, d.nbytes, &total))
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor '%s': total data size overflows", w->path, name);
    if (w->n_decls == w->cap_decls) {
        int cap = w->cap_decls ? 2 * w->cap_decls : 16;
        st_decl *p = realloc(w->decls, (size_t)cap * sizeof *p);
        if (!p) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", w->path);
        w->decls = p;
        w->cap_decls = cap;
    }
    if (!(d.name = strdup(name))) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory", w->path);
    w->decls[w->n_decls++] = d;
    w->total = total;
    return MOECL_OK;
}

/* Integers go in as raw JSON text: cJSON prints large doubles as "1e+15",
 * which readers expecting u64 reject. */
static bool add_uint(cJSON *array, uint64_t v) {
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    cJSON *item = cJSON_CreateRaw(buf);
    if (!item) return false;
    if (!cJSON_AddItemToArray(array, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

static bool add_decl(cJSON *root, const st_decl *d, uint64_t begin) {
    cJSON *e = cJSON_AddObjectToObject(root, d->name);
    if (!e || !cJSON_AddStringToObject(e, "dtype", dtype_st_name(d->type))) return false;
    cJSON *shape = cJSON_AddArrayToObject(e, "shape");
    if (!shape) return false;
    for (int i = 0; i < d->n_dims; i++)
        if (!add_uint(shape, (uint64_t)d->shape[i])) return false;
    cJSON *off = cJSON_AddArrayToObject(e, "data_offsets");
    return off && add_uint(off, begin) && add_uint(off, begin + d->nbytes);
}

/* The header text, unpadded; NULL if out of memory. */
static char *build_header(const mc_st_writer *w, const char *key, const char *value) {
    cJSON *root = cJSON_CreateObject();
    bool ok = root != NULL;
    if (ok && key) {
        cJSON *md = cJSON_AddObjectToObject(root, k_metadata_key);
        ok = md && cJSON_AddStringToObject(md, key, value);
    }
    uint64_t offset = 0;
    for (int i = 0; ok && i < w->n_decls; i++) {
        ok = add_decl(root, &w->decls[i], offset);
        offset += w->decls[i].nbytes;
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return text;
}

static moecl_status write_bytes(mc_st_writer *w, const void *p, size_t n) {
    moecl_status st = mc_afile_write(&w->file, p, n);
    if (st) w->failed = true;
    return st;
}

moecl_status mc_st_writer_begin_data(mc_st_writer *w, const char *metadata_key, const char *metadata_value) {
    if (!w) return mc_error(MOECL_ERR_INVALID_ARG, "mc_st_writer_begin_data: no writer");
    if (w->in_data) return mc_error(MOECL_ERR_INVALID_ARG, "%s: header already written", w->path);
    if (!metadata_key != !metadata_value)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: metadata needs both a key and a value", w->path);

    char *text = build_header(w, metadata_key, metadata_value);
    if (!text) return mc_error(MOECL_ERR_NOMEM, "%s: out of memory building the header", w->path);
    /* Pad with spaces so the data section starts 8-byte aligned, as the
     * reference writer does. */
    size_t len = strlen(text);
    size_t pad = (8 - len % 8) % 8;
    uint64_t n = (uint64_t)(len + pad);
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(n >> (8 * i));
    static const char spaces[8] = "       ";
    moecl_status st = write_bytes(w, le, sizeof le);
    if (st == MOECL_OK) st = write_bytes(w, text, len);
    if (st == MOECL_OK) st = write_bytes(w, spaces, pad);
    cJSON_free(text);
    if (st == MOECL_OK) w->in_data = true;
    return st;
}

moecl_status mc_st_writer_write(mc_st_writer *w, const void *data, size_t nbytes) {
    if (!w) return mc_error(MOECL_ERR_INVALID_ARG, "mc_st_writer_write: no writer");
    if (!w->in_data) return mc_error(MOECL_ERR_INVALID_ARG, "%s: data written before the header", w->path);
    if (w->failed) return mc_error(MOECL_ERR_IO, "%s: an earlier write failed", w->path);
    if (nbytes && !data) return mc_error(MOECL_ERR_INVALID_ARG, "%s: NULL data", w->path);
    /* Checked before writing anything, so a refused call changes nothing. */
    if (nbytes > w->total - w->written)
        return mc_error(MOECL_ERR_INVALID_ARG, "%s: %zu bytes written past the %zu declared", w->path,
                        nbytes - (w->total - w->written), w->total);
    moecl_status st = write_bytes(w, data, nbytes);
    if (st == MOECL_OK) w->written += nbytes;
    return st;
}

/* The first tensor not fully written, for the error message. */
static moecl_status short_data_error(const mc_st_writer *w) {
    size_t begin = 0;
    for (int i = 0; i < w->n_decls; i++) {
        const st_decl *d = &w->decls[i];
        if (w->written < begin + d->nbytes)
            return mc_error(MOECL_ERR_INVALID_ARG, "%s: tensor '%s': %zu of %zu bytes written", w->path, d->name,
                            w->written > begin ? w->written - begin : 0, d->nbytes);
        begin += d->nbytes;
    }
    return mc_error(MOECL_ERR_INVALID_ARG, "%s: data incomplete", w->path);
}

moecl_status mc_st_writer_finish(mc_st_writer *w) {
    if (!w) return mc_error(MOECL_ERR_INVALID_ARG, "mc_st_writer_finish: no writer");
    moecl_status st = MOECL_OK;
    if (w->failed)
        st = mc_error(MOECL_ERR_IO, "%s: an earlier write failed", w->path);
    else if (!w->in_data)
        st = mc_error(MOECL_ERR_INVALID_ARG, "%s: finished before the header was written", w->path);
    else if (w->written != w->total)
        st = short_data_error(w);
    else
        st = mc_afile_commit(&w->file);
    /* A half-written file never appears under its name. */
    mc_afile_discard(&w->file);
    writer_free(w);
    return st;
}

void mc_st_writer_abort(mc_st_writer *w) {
    if (!w) return;
    mc_afile_discard(&w->file);
    writer_free(w);
}
