/*
 * test_gguf.c - the GGUF reader and writer.
 *
 *   test_gguf                         files written by PyPI gguf's GGUFWriter
 *                                     (tests/data/gguf-format, tools/make_gguf_refs.py)
 *                                     read back exactly; our writer's round trips;
 *                                     broken files, each failing with a message that
 *                                     names the file and the problem
 *   test_gguf --python CHECKER        a file our writer wrote, read by gguf's
 *                                     GGUFReader (skips, 77, without python3 + gguf)
 *
 * Exact comparison goes through a canonical text form (described in
 * tools/make_gguf_refs.py): every key/value sorted by key, every tensor with
 * its shape, offset, size and a hash of its bytes.
 */
#include "formats/gguf.h"
#include "test_util.h"

#include <dirent.h>
#include <ftw.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[512];
static const char *g_data; /* tests/data/gguf-format */

static const char *tpath(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", g_dir, name);
    return buf;
}

static unsigned char *read_file(const char *path, size_t *n) { return (unsigned char *)t_read_file(path, n); }

static void write_file(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    CHECKF(fp != NULL, "cannot create %s", path);
    if (!fp) return;
    CHECK(fwrite(data, 1, n, fp) == n);
    CHECK(fclose(fp) == 0);
}

static bool exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* The writer's temporary file beside out: out.XXXXXXXXXXXX.tmp. */
static bool has_temp(const char *out) {
    char dir[700];
    snprintf(dir, sizeof dir, "%s", out);
    char *slash = strrchr(dir, '/');
    const char *base = slash ? slash + 1 : out;
    if (slash) *slash = '\0';
    DIR *d = opendir(slash ? dir : ".");
    bool found = false;
    size_t nb = strlen(base);
    for (struct dirent *e; d && !found && (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        found = n == nb + 17 && !strncmp(e->d_name, base, nb) && e->d_name[nb] == '.' &&
                !strcmp(e->d_name + n - 4, ".tmp");
    }
    if (d) closedir(d);
    return found;
}

/* ------------------------------------------------------------------------ */
/* The canonical text form                                                  */
/* ------------------------------------------------------------------------ */

static uint64_t fnv1a64(const void *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ ((const uint8_t *)p)[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void put_hexstr(FILE *f, mc_gguf_str s) {
    fputc('"', f);
    for (uint64_t i = 0; i < s.len; i++) fprintf(f, "%02x", (unsigned char)s.ptr[i]);
    fputc('"', f);
}

static void put_scalar(FILE *f, mc_gguf_vtype t, const uint8_t *p) {
    switch (t) {
    case MC_GGUF_UINT8: fprintf(f, "%u", p[0]); break;
    case MC_GGUF_INT8: fprintf(f, "%d", (int8_t)p[0]); break;
    case MC_GGUF_BOOL: fprintf(f, "%d", p[0] != 0); break;
    case MC_GGUF_UINT16: fprintf(f, "%u", (unsigned)le(p, 2)); break;
    case MC_GGUF_INT16: fprintf(f, "%d", (int16_t)le(p, 2)); break;
    case MC_GGUF_UINT32: fprintf(f, "%u", (unsigned)le(p, 4)); break;
    case MC_GGUF_INT32: fprintf(f, "%d", (int32_t)(uint32_t)le(p, 4)); break;
    case MC_GGUF_FLOAT32: fprintf(f, "0x%08x", (unsigned)le(p, 4)); break;
    case MC_GGUF_UINT64: fprintf(f, "%llu", (unsigned long long)le(p, 8)); break;
    case MC_GGUF_INT64: fprintf(f, "%lld", (long long)(int64_t)le(p, 8)); break;
    case MC_GGUF_FLOAT64: fprintf(f, "0x%016llx", (unsigned long long)le(p, 8)); break;
    default: fprintf(f, "?"); break;
    }
}


static void put_array(FILE *f, const mc_gguf_kv *kv) {
    fprintf(f, "array %s %llu [", mc_gguf_vtype_name(kv->arr_type), (unsigned long long)kv->n);
    for (uint64_t i = 0; i < kv->n; i++) {
        if (i) fputc(' ', f);
        if (kv->arr_type == MC_GGUF_STRING)
            put_hexstr(f, kv->strs[i]);
        else if (kv->arr_type == MC_GGUF_ARRAY)
            put_array(f, &kv->items[i]);
        else
            put_scalar(f, kv->arr_type, (const uint8_t *)kv->data + i * mc_gguf_vtype_size(kv->arr_type));
    }
    fputc(']', f);
}

static int cmp_kv_key(const void *a, const void *b) {
    return strcmp((*(const mc_gguf_kv *const *)a)->key, (*(const mc_gguf_kv *const *)b)->key);
}

/* The canonical form of an open file; the caller frees it. */
static char *canonical(const mc_gguf *g) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fprintf(f, "version %u\nalignment %llu\n", mc_gguf_version(g), (unsigned long long)mc_gguf_alignment(g));
    int64_t n = mc_gguf_n_kv(g);
    const mc_gguf_kv **kvs = malloc((size_t)(n ? n : 1) * sizeof *kvs);
    for (int64_t i = 0; i < n; i++) kvs[i] = mc_gguf_kv_at(g, i);
    qsort(kvs, (size_t)n, sizeof *kvs, cmp_kv_key);
    for (int64_t i = 0; i < n; i++) {
        const mc_gguf_kv *kv = kvs[i];
        fprintf(f, "kv %s ", kv->key);
        if (kv->type == MC_GGUF_ARRAY)
            put_array(f, kv);
        else if (kv->type == MC_GGUF_STRING)
            fprintf(f, "string "), put_hexstr(f, kv->strs[0]);
        else
            fprintf(f, "%s ", mc_gguf_vtype_name(kv->type)), put_scalar(f, kv->type, kv->data);
        fputc('\n', f);
    }
    free(kvs);
    for (int64_t i = 0; i < mc_gguf_n_tensors(g); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, i);
        fprintf(f, "tensor %s %s ne=", t->name, mc_gguf_type_name(t->ggml_type));
        for (int d = 0; d < t->n_dims; d++) fprintf(f, "%s%lld", d ? "," : "", (long long)t->ne[d]);
        fprintf(f, " offset=%llu nbytes=%zu fnv1a64=%016llx\n", (unsigned long long)t->offset, t->nbytes,
                (unsigned long long)fnv1a64(t->data, t->nbytes));
    }
    fclose(f);
    return text;
}

static void check_text(const char *what, const char *got, const char *want) {
    bool same = got && want && strcmp(got, want) == 0;
    CHECKF(same, "%s: canonical form differs", what);
    if (same || !got || !want) return;
    /* the first differing line */
    const char *a = got, *b = want;
    while (*a && *a == *b) a++, b++;
    while (a > got && a[-1] != '\n') a--, b--;
    fprintf(stderr, "  got:  %.200s\n  want: %.200s\n", a, b);
}

/* ------------------------------------------------------------------------ */
/* Files from the reference writer                                          */
/* ------------------------------------------------------------------------ */

static void test_reference_files(void) {
    static const int aligns[] = {32, 64, 8};
    for (size_t k = 0; k < sizeof aligns / sizeof aligns[0]; k++) {
        char path[600], exp_path[600];
        snprintf(path, sizeof path, "%s/ref-a%d.gguf", g_data, aligns[k]);
        snprintf(exp_path, sizeof exp_path, "%s/ref-a%d.expected", g_data, aligns[k]);
        size_t n;
        char *want = (char *)read_file(exp_path, &n);
        CHECKF(want != NULL, "cannot read %s", exp_path);
        mc_gguf *g = NULL;
        moecl_status st = mc_gguf_open(path, &g);
        CHECKF(st == MOECL_OK, "%s: %s", path, moecl_last_error());
        if (g && want) {
            CHECK(mc_gguf_alignment(g) == (uint64_t)aligns[k]);
            char *got = canonical(g);
            check_text(path, got, want);
            free(got);
            /* the same from memory */
            size_t size;
            unsigned char *bytes = read_file(path, &size);
            mc_gguf *m = NULL;
            CHECK(mc_gguf_open_memory(bytes, size, "mem", &m) == MOECL_OK);
            if (m) {
                got = canonical(m);
                check_text("from memory", got, want);
                free(got);
                CHECK(strcmp(mc_gguf_path(m), "mem") == 0);
            }
            mc_gguf_close(m);
            free(bytes);
        }
        mc_gguf_close(g);
        free(want);
    }

    /* Typed getters on ref-a32. */
    char path[600];
    snprintf(path, sizeof path, "%s/ref-a32.gguf", g_data);
    mc_gguf *g = NULL;
    if (mc_gguf_open(path, &g) != MOECL_OK) return;
    int64_t i64 = 0;
    double d = 0;
    bool b = false;
    mc_gguf_str s = {0};
    const mc_gguf_kv *arr = NULL;
    CHECK(mc_gguf_version(g) == 3);
    CHECK(mc_gguf_get_int(g, "test.u8", true, &i64) == MOECL_OK && i64 == 200);
    CHECK(mc_gguf_get_int(g, "test.i8", true, &i64) == MOECL_OK && i64 == -100);
    CHECK(mc_gguf_get_int(g, "test.u16", true, &i64) == MOECL_OK && i64 == 60000);
    CHECK(mc_gguf_get_int(g, "test.i16", true, &i64) == MOECL_OK && i64 == -30000);
    CHECK(mc_gguf_get_int(g, "test.u32", true, &i64) == MOECL_OK && i64 == 4000000000);
    CHECK(mc_gguf_get_int(g, "test.i32", true, &i64) == MOECL_OK && i64 == -2000000000);
    CHECK(mc_gguf_get_int(g, "test.i64", true, &i64) == MOECL_OK && i64 == -9000000000000000000);
    /* 1.8e19 does not fit int64 */
    CHECK(mc_gguf_get_int(g, "test.u64", true, &i64) == MOECL_ERR_FORMAT);
    CHECK(strstr(moecl_last_error(), "test.u64") && strstr(moecl_last_error(), "ref-a32.gguf"));
    CHECK(mc_gguf_get_float(g, "test.f32", true, &d) == MOECL_OK && d == (double)3.1415927f);
    CHECK(mc_gguf_get_float(g, "test.f64", true, &d) == MOECL_OK && d == -2.718281828459045);
    CHECK(mc_gguf_get_float(g, "test.u8", true, &d) == MOECL_ERR_FORMAT);
    CHECK(strstr(moecl_last_error(), "uint8"));
    CHECK(mc_gguf_get_bool(g, "test.bool_t", true, &b) == MOECL_OK && b);
    CHECK(mc_gguf_get_bool(g, "test.bool_f", true, &b) == MOECL_OK && !b);
    CHECK(mc_gguf_get_str(g, "test.str", true, &s) == MOECL_OK && s.len == 11 && !memcmp(s.ptr, "hello, GGUF", 11));
    CHECK(mc_gguf_get_int(g, "test.str", true, &i64) == MOECL_ERR_FORMAT);
    i64 = 42;
    CHECK(mc_gguf_get_int(g, "test.absent", false, &i64) == MOECL_OK && i64 == 42);
    CHECK(mc_gguf_get_int(g, "test.absent", true, &i64) == MOECL_ERR_FORMAT);
    CHECK(strstr(moecl_last_error(), "test.absent") && strstr(moecl_last_error(), "missing"));
    CHECK(mc_gguf_get_arr(g, "test.arr_i32", true, MC_GGUF_INT32, &arr) == MOECL_OK && arr->n == 4);
    if (arr) CHECK(mc_gguf_arr_int(arr, 0) == -1 && mc_gguf_arr_int(arr, 3) == 2147483647);
    CHECK(mc_gguf_get_arr(g, "test.arr_i32", true, MC_GGUF_FLOAT32, &arr) == MOECL_ERR_FORMAT);
    CHECK(strstr(moecl_last_error(), "array of int32"));
    CHECK(mc_gguf_get_arr(g, "test.arr_f32", true, MC_GGUF_FLOAT32, &arr) == MOECL_OK);
    CHECK(mc_gguf_arr_float(arr, 1) == -1.25);
    CHECK(mc_gguf_get_arr(g, "test.arr_f64", true, MC_GGUF_FLOAT64, &arr) == MOECL_OK);
    CHECK(mc_gguf_arr_float(arr, 0) == 1.0 / 3.0);
    CHECK(mc_gguf_get_arr(g, "test.arr_u8", true, MC_GGUF_UINT8, &arr) == MOECL_OK);
    CHECK(mc_gguf_arr_int(arr, 2) == 255);
    CHECK(mc_gguf_get_arr(g, "test.nested2", true, MC_GGUF_ARRAY, &arr) == MOECL_OK);
    if (arr && arr->n == 2) {
        CHECK(arr->items[0].arr_type == MC_GGUF_ARRAY && arr->items[0].n == 2);
        CHECK(arr->items[0].items[1].arr_type == MC_GGUF_INT32 && mc_gguf_arr_int(&arr->items[0].items[1], 1) == 3);
        CHECK(arr->items[1].items[0].arr_type == MC_GGUF_FLOAT32 &&
              mc_gguf_arr_float(&arr->items[1].items[0], 0) == 0.25);
    }
    const mc_gguf_tensor *t = mc_gguf_find_tensor(g, "t.q4_K");
    CHECK(t && t->dtype == MOECL_DTYPE_Q4_K && t->ne[0] == 256 && t->ne[1] == 2 && t->nbytes == 2 * 144);
    t = mc_gguf_find_tensor(g, "t.q5_1");
    CHECK(t && t->dtype == MOECL_DTYPE_COUNT && t->nbytes == 24);
    t = mc_gguf_find_tensor(g, "t.f16_4d");
    CHECK(t && t->dtype == MOECL_DTYPE_F16 && t->n_dims == 4 && t->ne[3] == 2);
    t = mc_gguf_find_tensor(g, "t.bf16");
    CHECK(t && t->dtype == MOECL_DTYPE_BF16);
    t = mc_gguf_find_tensor(g, "t.f32_1d");
    CHECK(t && t->n_dims == 1 && t->ne[1] == 1 && t->ne[3] == 1 && ((uintptr_t)t->data % 32) == 0);
    CHECK(mc_gguf_find_tensor(g, "t.nope") == NULL);
    CHECK(mc_gguf_find_kv(g, "t.nope") == NULL);
    CHECK(mc_gguf_kv_at(g, -1) == NULL && mc_gguf_kv_at(g, mc_gguf_n_kv(g)) == NULL);
    CHECK(mc_gguf_tensor_at(g, mc_gguf_n_tensors(g)) == NULL);
    mc_gguf_close(g);
    mc_gguf_close(NULL);

    /* Type names and the dtype mapping. */
    CHECK(!strcmp(mc_gguf_type_name(12), "q4_K") && !strcmp(mc_gguf_type_name(30), "bf16"));
    CHECK(mc_gguf_type_name(4) == NULL && mc_gguf_type_name(1000) == NULL);
    CHECK(mc_gguf_type_of(MOECL_DTYPE_Q6_K) == MC_GGML_Q6_K && mc_gguf_type_of(MOECL_DTYPE_BF16) == MC_GGML_BF16);
    CHECK(mc_gguf_type_of(MOECL_DTYPE_Q8_0) == MC_GGML_Q8_0 && mc_gguf_type_of(MOECL_DTYPE_COUNT) == UINT32_MAX);
}

/* ------------------------------------------------------------------------ */
/* Our writer                                                               */
/* ------------------------------------------------------------------------ */

/* Copy every key/value and tensor of src into a new file written by us. */
static moecl_status copy_file(const mc_gguf *src, const char *out, uint32_t alignment, size_t chunk) {
    mc_gguf_writer *w = NULL;
    moecl_status st = mc_gguf_writer_new(out, alignment, &w);
    for (int64_t i = 0; st == MOECL_OK && i < mc_gguf_n_kv(src); i++) st = mc_gguf_writer_copy_kv(w, mc_gguf_kv_at(src, i));
    for (int64_t i = 0; st == MOECL_OK && i < mc_gguf_n_tensors(src); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(src, i);
        st = mc_gguf_writer_add_tensor(w, t->name, t->ggml_type, t->n_dims, t->ne);
    }
    for (int64_t i = 0; st == MOECL_OK && i < mc_gguf_n_tensors(src); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(src, i);
        for (size_t o = 0; st == MOECL_OK && o < t->nbytes; o += chunk)
            st = mc_gguf_writer_write_data(w, (const char *)t->data + o, t->nbytes - o < chunk ? t->nbytes - o : chunk);
    }
    if (st == MOECL_OK) st = mc_gguf_writer_finish(w);
    mc_gguf_writer_free(w);
    return st;
}

static void test_copy_round_trip(void) {
    static const int aligns[] = {32, 64, 8};
    for (size_t k = 0; k < 3; k++) {
        char path[600], exp_path[600], out[600], name[64];
        snprintf(path, sizeof path, "%s/ref-a%d.gguf", g_data, aligns[k]);
        snprintf(exp_path, sizeof exp_path, "%s/ref-a%d.expected", g_data, aligns[k]);
        snprintf(name, sizeof name, "copy-a%d.gguf", aligns[k]);
        tpath(out, sizeof out, name);
        mc_gguf *g = NULL, *c = NULL;
        if (mc_gguf_open(path, &g) != MOECL_OK) {
            CHECKF(0, "%s", moecl_last_error());
            continue;
        }
        moecl_status st = copy_file(g, out, (uint32_t)aligns[k], k == 0 ? 7 : 1u << 20);
        CHECKF(st == MOECL_OK, "%s", moecl_last_error());
        CHECK(mc_gguf_open(out, &c) == MOECL_OK);
        size_t n;
        char *want = (char *)read_file(exp_path, &n);
        if (c && want) {
            char *got = canonical(c);
            check_text(out, got, want);
            free(got);
        }
        /* GGUFWriter and we lay out the same bytes */
        size_t na, nb;
        unsigned char *a = read_file(path, &na), *b = read_file(out, &nb);
        if (aligns[k] == 32) CHECKF(a && b && na == nb && !memcmp(a, b, na), "copy of %s is not byte-identical", path);
        free(a);
        free(b);
        free(want);
        mc_gguf_close(c);
        mc_gguf_close(g);
    }
}

/* Every setter, read back through the getters. */
static void test_writer_values(void) {
    char out[600];
    tpath(out, sizeof out, "values.gguf");
    mc_gguf_writer *w = NULL;
    CHECK(mc_gguf_writer_new(out, 0, &w) == MOECL_OK);
    if (!w) return;
    uint8_t u8[] = {1, 2, 250};
    int8_t i8[] = {-5, 5};
    uint16_t u16[] = {65535};
    int16_t i16[] = {-2, 3};
    uint32_t u32[] = {7, 4000000000u};
    int32_t i32[] = {-7, 8, 9};
    float f32[] = {0.5f, -3.25f};
    uint8_t bl[] = {1, 0};
    uint64_t u64[] = {1ull << 63};
    int64_t i64[] = {-(1ll << 62)};
    double f64[] = {1e-300};
    mc_gguf_str strs[] = {{"one", 3}, {"", 0}, {"th\0ree", 6}};
    CHECK(mc_gguf_writer_set_u32(w, "v.u32", 123) == MOECL_OK);
    CHECK(mc_gguf_writer_set_i32(w, "v.i32", -123) == MOECL_OK);
    CHECK(mc_gguf_writer_set_u64(w, "v.u64", 1ull << 40) == MOECL_OK);
    CHECK(mc_gguf_writer_set_f32(w, "v.f32", 0.125f) == MOECL_OK);
    CHECK(mc_gguf_writer_set_bool(w, "v.bool", true) == MOECL_OK);
    CHECK(mc_gguf_writer_set_str(w, "v.str", "abc", 3) == MOECL_OK);
    CHECK(mc_gguf_writer_set_str(w, "v.empty", NULL, 0) == MOECL_OK);
    CHECK(mc_gguf_writer_set_arr(w, "a.u8", MC_GGUF_UINT8, u8, 3) == MOECL_OK);
    CHECK(mc_gguf_writer_set_arr(w, "a.i8", MC_GGUF_INT8, i8, 2) == MOECL_OK);
    CHECK(mc_gguf_writer_set_arr(w, "a.u16", MC_GGUF_UINT16, u16, 1) == MOECL_OK);
    CHECK(mc_gguf_writer_set_arr(w, "a.i16", MC_GGUF_INT16, i16, 2) == MOECL_OK);
    CHECK(mc_gguf_writer_set_arr(w, "a.u32", MC_GGUF_UINT32, u32, 2) == MOECL_OK);
    CHECK(mc_gguf_writer_set_arr(w, "a.i32", MC_GGUF_INT32, i32, 3) == MOECL_OK);
    CHECK(mc_gguf_writer_set_arr(w, "a.f32", MC_GGUF_FLOAT32, f32, 2) == MOECL_OK);
    CHECK(mc_gguf_writer_set_arr(w, "a.bool", MC_GGUF_BOOL, bl, 2) == MOECL_OK);
    CHECK(mc_gguf_writer_set_arr(w, "a.u64", MC_GGUF_UINT64, u64, 1) == MOECL_OK);
    CHECK(mc_gguf_writer_set_arr(w, "a.i64", MC_GGUF_INT64, i64, 1) == MOECL_OK);
    CHECK(mc_gguf_writer_set_arr(w, "a.f64", MC_GGUF_FLOAT64, f64, 1) == MOECL_OK);
    CHECK(mc_gguf_writer_set_arr(w, "a.empty", MC_GGUF_INT32, NULL, 0) == MOECL_OK);
    CHECK(mc_gguf_writer_set_str_arr(w, "a.str", strs, 3) == MOECL_OK);
    /* refused */
    CHECK(mc_gguf_writer_set_u32(w, "v.u32", 1) == MOECL_ERR_INVALID_ARG);
    CHECK(strstr(moecl_last_error(), "duplicate key 'v.u32'"));
    CHECK(mc_gguf_writer_set_arr(w, "a.bad", MC_GGUF_STRING, strs, 1) == MOECL_ERR_INVALID_ARG);
    CHECK(mc_gguf_writer_set_u32(w, "general.alignment", 64) == MOECL_ERR_INVALID_ARG);
    CHECK(mc_gguf_writer_set_u32(w, "", 1) == MOECL_ERR_INVALID_ARG);
    int64_t ne_bad[] = {16, 2};
    CHECK(mc_gguf_writer_add_tensor(w, "bad", MC_GGML_Q4_0, 2, ne_bad) == MOECL_ERR_INVALID_ARG);
    CHECK(strstr(moecl_last_error(), "block size") || strstr(moecl_last_error(), "multiple"));
    CHECK(mc_gguf_writer_add_tensor(w, "bad", 4, 1, ne_bad) == MOECL_ERR_INVALID_ARG);
    CHECK(mc_gguf_writer_add_tensor(w, "bad", MC_GGML_F32, 5, ne_bad) == MOECL_ERR_INVALID_ARG);

    /* tensors of several types, one empty */
    int64_t ne_f32[] = {3, 2}, ne_q8[] = {64, 1}, ne_q6k[] = {256}, ne_empty[] = {0, 4}, ne_bf16[] = {5, 1, 1, 2};
    CHECK(mc_gguf_writer_add_tensor(w, "w.f32", MC_GGML_F32, 2, ne_f32) == MOECL_OK);
    CHECK(mc_gguf_writer_add_tensor(w, "w.empty", MC_GGML_F16, 2, ne_empty) == MOECL_OK);
    CHECK(mc_gguf_writer_add_tensor(w, "w.q8_0", MC_GGML_Q8_0, 2, ne_q8) == MOECL_OK);
    CHECK(mc_gguf_writer_add_tensor(w, "w.q6_K", MC_GGML_Q6_K, 1, ne_q6k) == MOECL_OK);
    CHECK(mc_gguf_writer_add_tensor(w, "w.bf16", MC_GGML_BF16, 4, ne_bf16) == MOECL_OK);
    CHECK(mc_gguf_writer_add_tensor(w, "w.f32", MC_GGML_F32, 2, ne_f32) == MOECL_ERR_INVALID_ARG);
    float wf[6] = {1, 2, 3, 4, 5, 6};
    uint8_t q8[68], q6[210], bf[20];
    for (size_t i = 0; i < sizeof q8; i++) q8[i] = (uint8_t)(i * 7);
    for (size_t i = 0; i < sizeof q6; i++) q6[i] = (uint8_t)(i * 13);
    for (size_t i = 0; i < sizeof bf; i++) bf[i] = (uint8_t)(i + 100);
    CHECK(mc_gguf_writer_write_data(w, wf, sizeof wf) == MOECL_OK);
    CHECK(mc_gguf_writer_set_u32(w, "late", 1) == MOECL_ERR_INVALID_ARG); /* after the header */
    CHECK(mc_gguf_writer_write_data(w, q8, 60) == MOECL_OK);
    CHECK(mc_gguf_writer_write_data(w, q8 + 60, 10) == MOECL_ERR_INVALID_ARG); /* more than is left */
    CHECK(mc_gguf_writer_write_data(w, q8 + 60, 8) == MOECL_OK);
    CHECK(mc_gguf_writer_write_data(w, q6, sizeof q6) == MOECL_OK);
    CHECK(has_temp(out) && !exists(out));
    CHECK(mc_gguf_writer_write_data(w, bf, sizeof bf) == MOECL_OK);
    CHECK(mc_gguf_writer_write_data(w, bf, 1) == MOECL_ERR_INVALID_ARG);
    CHECK(mc_gguf_writer_finish(w) == MOECL_OK);
    mc_gguf_writer_free(w);
    CHECK(exists(out) && !has_temp(out));

    mc_gguf *g = NULL;
    CHECKF(mc_gguf_open(out, &g) == MOECL_OK, "%s", moecl_last_error());
    if (!g) return;
    int64_t iv = 0;
    double dv = 0;
    bool bv = false;
    mc_gguf_str sv = {0};
    const mc_gguf_kv *a = NULL;
    CHECK(mc_gguf_version(g) == 3 && mc_gguf_alignment(g) == 32 && mc_gguf_n_kv(g) == 20);
    CHECK(mc_gguf_find_kv(g, "general.alignment") == NULL);
    CHECK(mc_gguf_get_int(g, "v.u32", true, &iv) == MOECL_OK && iv == 123);
    CHECK(mc_gguf_find_kv(g, "v.u32")->type == MC_GGUF_UINT32);
    CHECK(mc_gguf_get_int(g, "v.i32", true, &iv) == MOECL_OK && iv == -123);
    CHECK(mc_gguf_get_int(g, "v.u64", true, &iv) == MOECL_OK && iv == 1ll << 40);
    CHECK(mc_gguf_get_float(g, "v.f32", true, &dv) == MOECL_OK && dv == 0.125);
    CHECK(mc_gguf_get_bool(g, "v.bool", true, &bv) == MOECL_OK && bv);
    CHECK(mc_gguf_get_str(g, "v.str", true, &sv) == MOECL_OK && sv.len == 3 && !memcmp(sv.ptr, "abc", 3));
    CHECK(mc_gguf_get_str(g, "v.empty", true, &sv) == MOECL_OK && sv.len == 0);
    CHECK(mc_gguf_get_arr(g, "a.u8", true, MC_GGUF_UINT8, &a) == MOECL_OK && a->n == 3 && mc_gguf_arr_int(a, 2) == 250);
    CHECK(mc_gguf_get_arr(g, "a.i8", true, MC_GGUF_INT8, &a) == MOECL_OK && mc_gguf_arr_int(a, 0) == -5);
    CHECK(mc_gguf_get_arr(g, "a.u16", true, MC_GGUF_UINT16, &a) == MOECL_OK && mc_gguf_arr_int(a, 0) == 65535);
    CHECK(mc_gguf_get_arr(g, "a.i16", true, MC_GGUF_INT16, &a) == MOECL_OK && mc_gguf_arr_int(a, 0) == -2);
    CHECK(mc_gguf_get_arr(g, "a.u32", true, MC_GGUF_UINT32, &a) == MOECL_OK && mc_gguf_arr_int(a, 1) == 4000000000);
    CHECK(mc_gguf_get_arr(g, "a.i32", true, MC_GGUF_INT32, &a) == MOECL_OK && mc_gguf_arr_int(a, 2) == 9);
    CHECK(mc_gguf_get_arr(g, "a.f32", true, MC_GGUF_FLOAT32, &a) == MOECL_OK && mc_gguf_arr_float(a, 1) == -3.25);
    CHECK(mc_gguf_get_arr(g, "a.bool", true, MC_GGUF_BOOL, &a) == MOECL_OK && a->n == 2);
    CHECK(mc_gguf_get_arr(g, "a.u64", true, MC_GGUF_UINT64, &a) == MOECL_OK && mc_gguf_arr_int(a, 0) == INT64_MAX);
    CHECK(mc_gguf_arr_float(a, 0) == 9223372036854775808.0);
    CHECK(mc_gguf_get_arr(g, "a.i64", true, MC_GGUF_INT64, &a) == MOECL_OK && mc_gguf_arr_int(a, 0) == -(1ll << 62));
    CHECK(mc_gguf_get_arr(g, "a.f64", true, MC_GGUF_FLOAT64, &a) == MOECL_OK && mc_gguf_arr_float(a, 0) == 1e-300);
    CHECK(mc_gguf_get_arr(g, "a.empty", true, MC_GGUF_INT32, &a) == MOECL_OK && a->n == 0);
    CHECK(mc_gguf_get_arr(g, "a.str", true, MC_GGUF_STRING, &a) == MOECL_OK && a->n == 3);
    if (a && a->n == 3) CHECK(a->strs[2].len == 6 && !memcmp(a->strs[2].ptr, "th\0ree", 6) && a->strs[1].len == 0);
    const mc_gguf_tensor *t = mc_gguf_find_tensor(g, "w.f32");
    CHECK(t && t->nbytes == 24 && !memcmp(t->data, wf, 24) && t->offset == 0);
    t = mc_gguf_find_tensor(g, "w.empty");
    CHECK(t && t->nbytes == 0 && t->ne[0] == 0 && t->ne[1] == 4);
    t = mc_gguf_find_tensor(g, "w.q8_0");
    CHECK(t && t->nbytes == 68 && !memcmp(t->data, q8, 68) && t->dtype == MOECL_DTYPE_Q8_0 && t->offset % 32 == 0);
    t = mc_gguf_find_tensor(g, "w.q6_K");
    CHECK(t && t->nbytes == 210 && !memcmp(t->data, q6, 210) && t->dtype == MOECL_DTYPE_Q6_K);
    t = mc_gguf_find_tensor(g, "w.bf16");
    CHECK(t && t->nbytes == 20 && !memcmp(t->data, bf, 20) && t->n_dims == 4 && t->ne[3] == 2);

    /* a copy of every value through copy_kv (nested arrays in the reference file too) */
    char out2[600];
    CHECK(copy_file(g, tpath(out2, sizeof out2, "values-copy.gguf"), 128, 5) == MOECL_OK);
    mc_gguf *c = NULL;
    CHECK(mc_gguf_open(out2, &c) == MOECL_OK);
    if (c) {
        char *x = canonical(g), *y = canonical(c);
        /* the alignment and the general.alignment key differ */
        CHECK(mc_gguf_alignment(c) == 128 && mc_gguf_n_kv(c) == mc_gguf_n_kv(g) + 1);
        char *xk = strstr(x, "kv "), *yk = strstr(y, "kv a.");
        char *gal = strstr(y, "kv general.alignment uint32 128\n");
        CHECK(gal != NULL);
        if (gal) memmove(gal, gal + strlen("kv general.alignment uint32 128\n"), strlen(gal + 32) + 1);
        /* tensor offsets differ with the alignment: compare the metadata */
        char *xt = strstr(x, "\ntensor "), *yt = strstr(y, "\ntensor ");
        if (xt) xt[1] = 0;
        if (yt) yt[1] = 0;
        CHECK(xk && yk && !strcmp(xk, yk));
        free(x);
        free(y);
    }
    mc_gguf_close(c);
    mc_gguf_close(g);
}

/* Failures never leave a file under the real name. */
static void test_writer_failures(void) {
    char out[600];
    tpath(out, sizeof out, "never.gguf");
    mc_gguf_writer *w = NULL;
    int64_t ne[] = {8};
    float data[8] = {0};

    /* freed before finish */
    CHECK(mc_gguf_writer_new(out, 0, &w) == MOECL_OK);
    CHECK(mc_gguf_writer_add_tensor(w, "x", MC_GGML_F32, 1, ne) == MOECL_OK);
    CHECK(mc_gguf_writer_write_data(w, data, 16) == MOECL_OK);
    CHECK(has_temp(out));
    mc_gguf_writer_free(w);
    CHECK(!exists(out) && !has_temp(out));

    /* finish with a tensor incomplete */
    CHECK(mc_gguf_writer_new(out, 0, &w) == MOECL_OK);
    CHECK(mc_gguf_writer_add_tensor(w, "x", MC_GGML_F32, 1, ne) == MOECL_OK);
    CHECK(mc_gguf_writer_write_data(w, data, 16) == MOECL_OK);
    CHECK(mc_gguf_writer_finish(w) == MOECL_ERR_INVALID_ARG);
    CHECK(strstr(moecl_last_error(), "'x'") && strstr(moecl_last_error(), "16 of its 32"));
    CHECK(mc_gguf_writer_finish(w) == MOECL_ERR_INVALID_ARG);
    mc_gguf_writer_free(w);
    CHECK(!exists(out) && !has_temp(out));

    /* bad alignment, an unwritable place */
    CHECK(mc_gguf_writer_new(out, 24, &w) == MOECL_ERR_INVALID_ARG && w == NULL);
    char bad[700];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x.gguf", g_dir);
    CHECK(mc_gguf_writer_new(bad, 0, &w) == MOECL_ERR_IO && w == NULL);
    CHECK(strstr(moecl_last_error(), "no/such/dir"));
    mc_gguf_writer_free(NULL);

    /* a file with no tensors */
    CHECK(mc_gguf_writer_new(out, 0, &w) == MOECL_OK);
    CHECK(mc_gguf_writer_set_str(w, "general.name", "empty", 5) == MOECL_OK);
    CHECK(mc_gguf_writer_finish(w) == MOECL_OK);
    mc_gguf_writer_free(w);
    mc_gguf *g = NULL;
    CHECK(mc_gguf_open(out, &g) == MOECL_OK && mc_gguf_n_tensors(g) == 0 && mc_gguf_n_kv(g) == 1);
    mc_gguf_close(g);
    unlink(out);
}

/* ------------------------------------------------------------------------ */
/* Broken files                                                             */
/* ------------------------------------------------------------------------ */

/* A file built byte by byte. */
typedef struct bld {
    uint8_t b[4096];
    size_t n;
} bld;

static void b_raw(bld *b, const void *p, size_t n) {
    memcpy(b->b + b->n, p, n);
    b->n += n;
}
static void b_u32(bld *b, uint32_t v) {
    for (int i = 0; i < 4; i++) b->b[b->n++] = (uint8_t)(v >> (8 * i));
}
static void b_u64(bld *b, uint64_t v) {
    for (int i = 0; i < 8; i++) b->b[b->n++] = (uint8_t)(v >> (8 * i));
}
static void b_str(bld *b, const char *s) {
    b_u64(b, strlen(s));
    b_raw(b, s, strlen(s));
}
static void b_header(bld *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    b->n = 0;
    b_raw(b, "GGUF", 4);
    b_u32(b, version);
    b_u64(b, n_tensors);
    b_u64(b, n_kv);
}
static void b_kv_u32(bld *b, const char *key, uint32_t v) {
    b_str(b, key);
    b_u32(b, MC_GGUF_UINT32);
    b_u32(b, v);
}
/* A tensor info with up to 4 dims. */
static void b_tensor(bld *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off) {
    b_str(b, name);
    b_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) b_u64(b, ne[i]);
    b_u32(b, type);
    b_u64(b, off);
}
/* Pad to 32 and append n bytes of data. */
static void b_data(bld *b, size_t n) {
    while (b->n % 32) b->b[b->n++] = 0;
    memset(b->b + b->n, 0x5a, n);
    b->n += n;
}

/* Open the bytes as a file and expect failure with status and message parts. */
static void expect_fail(const char *name, const void *data, size_t n, moecl_status want, const char *msg) {
    char path[600];
    tpath(path, sizeof path, name);
    write_file(path, data, n);
    mc_gguf *g = (mc_gguf *)1;
    moecl_status st = mc_gguf_open(path, &g);
    const char *err = moecl_last_error();
    CHECKF(st == want, "%s: status %d, want %d (%s)", name, st, want, err);
    CHECKF(g == NULL, "%s: handle not NULL on failure", name);
    CHECKF(strstr(err, path) != NULL, "%s: message does not name the file: %s", name, err);
    CHECKF(strstr(err, msg) != NULL, "%s: message lacks '%s': %s", name, msg, err);
    if (st == MOECL_OK) mc_gguf_close(g);
    unlink(path);
}

#define FAIL_CASE(name, x, msg) expect_fail(name, (x).b, (x).n, MOECL_ERR_FORMAT, msg)

static void test_bad_headers(void) {
    bld b;
    uint64_t ne4[] = {4, 1, 1, 1};

    /* a valid small file first: the cases below break one thing each */
    b_header(&b, 3, 1, 1);
    b_kv_u32(&b, "k", 1);
    b_tensor(&b, "t", 1, ne4, MC_GGML_F32, 0);
    b_data(&b, 16);
    char path[600];
    tpath(path, sizeof path, "ok.gguf");
    write_file(path, b.b, b.n);
    mc_gguf *g = NULL;
    CHECKF(mc_gguf_open(path, &g) == MOECL_OK, "%s", moecl_last_error());
    mc_gguf_close(g);
    /* version 2 reads the same */
    b.b[4] = 2;
    write_file(path, b.b, b.n);
    CHECK(mc_gguf_open(path, &g) == MOECL_OK && mc_gguf_version(g) == 2);
    mc_gguf_close(g);

    bld c = b;
    memcpy(c.b, "GGML", 4);
    FAIL_CASE("magic.gguf", c, "bad magic");
    c = b;
    c.b[4] = 1;
    FAIL_CASE("v1.gguf", c, "version 1 is not supported");
    c = b;
    c.b[4] = 4;
    FAIL_CASE("v4.gguf", c, "unknown GGUF version 4");
    c = b;
    c.b[4] = 0;
    c.b[7] = 0x77;
    FAIL_CASE("vbig.gguf", c, "unknown GGUF version");
    c = b;
    c.b[4] = 0;
    c.b[7] = 3;
    FAIL_CASE("bigendian.gguf", c, "big-endian");
    expect_fail("empty.gguf", "", 0, MOECL_ERR_FORMAT, "empty");
    expect_fail("short.gguf", "GGU", 3, MOECL_ERR_FORMAT, "truncated");

    /* absurd counts */
    b_header(&c, 3, 0, 1ull << 63);
    b_kv_u32(&c, "k", 1);
    FAIL_CASE("kv-count.gguf", c, "metadata count 9223372036854775808 is absurd");
    b_header(&c, 3, 1ull << 63, 0);
    b_data(&c, 64);
    FAIL_CASE("tensor-count.gguf", c, "tensor count 9223372036854775808 is absurd");
    b_header(&c, 3, UINT64_MAX, UINT64_MAX);
    FAIL_CASE("counts-max.gguf", c, "absurd");
    /* a count that fits the bytes but then the metadata eats them */
    b_header(&c, 3, 3, 1);
    b_str(&c, "k");
    b_u32(&c, MC_GGUF_ARRAY);
    b_u32(&c, MC_GGUF_UINT8);
    b_u64(&c, 60);
    b_data(&c, 60);
    FAIL_CASE("tensor-count2.gguf", c, "tensor count 3 is absurd");

    /* strings */
    b_header(&c, 3, 0, 1);
    b_u64(&c, 1ull << 40);
    b_raw(&c, "key.................", 20);
    FAIL_CASE("keylen.gguf", c, "longer than the file");
    b_header(&c, 3, 0, 1);
    b_u64(&c, UINT64_MAX);
    b_raw(&c, "key.......", 10);
    FAIL_CASE("keylen-max.gguf", c, "longer than the file");
    b_header(&c, 3, 0, 1);
    b_str(&c, "k");
    b_u32(&c, MC_GGUF_STRING);
    b_u64(&c, 100);
    b_raw(&c, "short", 5);
    FAIL_CASE("strlen.gguf", c, "longer than the file");
    b_header(&c, 3, 0, 1);
    b_u64(&c, 3);
    b_raw(&c, "a\0b", 3);
    b_u32(&c, MC_GGUF_UINT8);
    b_raw(&c, "x", 1);
    FAIL_CASE("key-nul.gguf", c, "NUL byte");
    b_header(&c, 3, 0, 1);
    b_str(&c, "");
    b_u32(&c, MC_GGUF_UINT8);
    b_raw(&c, "x", 1);
    FAIL_CASE("key-empty.gguf", c, "empty");

    /* metadata */
    b_header(&c, 3, 0, 2);
    b_kv_u32(&c, "dup", 1);
    b_kv_u32(&c, "dup", 2);
    FAIL_CASE("dup-key.gguf", c, "duplicate metadata key 'dup'");
    b_header(&c, 3, 0, 1);
    b_str(&c, "k");
    b_u32(&c, 13);
    b_u64(&c, 0);
    FAIL_CASE("vtype.gguf", c, "unknown value type 13");
    b_header(&c, 3, 0, 1);
    b_str(&c, "k");
    b_u32(&c, MC_GGUF_ARRAY);
    b_u32(&c, 99);
    b_u64(&c, 0);
    FAIL_CASE("arr-type.gguf", c, "unknown element type 99");
    b_header(&c, 3, 0, 1);
    b_str(&c, "k");
    b_u32(&c, MC_GGUF_ARRAY);
    b_u32(&c, MC_GGUF_UINT64);
    b_u64(&c, 1ull << 61);
    b_u64(&c, 0);
    FAIL_CASE("arr-count.gguf", c, "remain in the file");
    b_header(&c, 3, 0, 1);
    b_str(&c, "k");
    b_u32(&c, MC_GGUF_ARRAY);
    for (int i = 0; i < 20; i++) {
        b_u32(&c, MC_GGUF_ARRAY);
        b_u64(&c, 1);
    }
    b_u32(&c, MC_GGUF_UINT8);
    b_u64(&c, 0);
    FAIL_CASE("arr-deep.gguf", c, "nested more than");

    /* general.alignment */
    b_header(&c, 3, 0, 1);
    b_kv_u32(&c, "general.alignment", 3);
    FAIL_CASE("align3.gguf", c, "general.alignment is 3, expected a nonzero power of two");
    b_header(&c, 3, 0, 1);
    b_kv_u32(&c, "general.alignment", 0);
    FAIL_CASE("align0.gguf", c, "general.alignment is 0");
    b_header(&c, 3, 0, 1);
    b_str(&c, "general.alignment");
    b_u32(&c, MC_GGUF_UINT64);
    b_u64(&c, 64);
    FAIL_CASE("align-type.gguf", c, "general.alignment is of type uint64, expected uint32");
}

static void test_bad_tensors(void) {
    bld c;
    uint64_t ne[] = {4, 2, 1, 1, 1};
#define ONE_TENSOR(n_dims, dims, type, off, data)  \
    do {                                          \
        b_header(&c, 3, 1, 0);                    \
        b_tensor(&c, "w", n_dims, dims, type, off); \
        b_data(&c, data);                         \
    } while (0)
    ONE_TENSOR(0, ne, MC_GGML_F32, 0, 32);
    FAIL_CASE("ndims0.gguf", c, "tensor 'w': n_dims is 0, expected 1..4");
    ONE_TENSOR(5, ne, MC_GGML_F32, 0, 32);
    FAIL_CASE("ndims5.gguf", c, "n_dims is 5");
    uint64_t big[] = {1ull << 32, 1ull << 32, 4};
    ONE_TENSOR(3, big, MC_GGML_F32, 0, 32);
    FAIL_CASE("overflow.gguf", c, "element count overflows");
    uint64_t big2[] = {1ull << 61, 2};
    ONE_TENSOR(2, big2, MC_GGML_F32, 0, 32);
    FAIL_CASE("overflow2.gguf", c, "byte size overflows");
    uint64_t huge[] = {1ull << 63};
    ONE_TENSOR(1, huge, MC_GGML_F32, 0, 32);
    FAIL_CASE("dim-huge.gguf", c, "more than int64 holds");
    ONE_TENSOR(2, ne, 4, 0, 32);
    FAIL_CASE("type4.gguf", c, "unknown ggml type 4");
    ONE_TENSOR(2, ne, 1000, 0, 32);
    FAIL_CASE("type1000.gguf", c, "unknown ggml type 1000");
    uint64_t ne_q[] = {16, 2};
    ONE_TENSOR(2, ne_q, MC_GGML_Q4_0, 0, 64);
    FAIL_CASE("block.gguf", c, "not a multiple of the type's block size");
    ONE_TENSOR(2, ne, MC_GGML_F32, 4, 64);
    FAIL_CASE("misaligned.gguf", c, "offset 4 is not a multiple of the alignment 32");
    ONE_TENSOR(2, ne, MC_GGML_F32, 64, 32);
    FAIL_CASE("past-eof.gguf", c, "past the end of the file");
    ONE_TENSOR(2, ne, MC_GGML_F32, 0, 31);
    FAIL_CASE("short-data.gguf", c, "past the end of the file");
    ONE_TENSOR(2, ne, MC_GGML_F32, 1ull << 63, 32);
    FAIL_CASE("off-huge.gguf", c, "past the end of the file");
    ONE_TENSOR(2, ne, MC_GGML_F32, UINT64_MAX - 31, 32);
    FAIL_CASE("off-max.gguf", c, "past the end of the file");
    /* n_dims 0 .. 4 dims of 0 are allowed: 0 bytes */
    uint64_t zero[] = {0, 3};
    ONE_TENSOR(2, zero, MC_GGML_Q4_K, 0, 0);
    c.n = c.n - c.n % 32;
    char path[600];
    tpath(path, sizeof path, "zero.gguf");
    write_file(path, c.b, c.n);
    mc_gguf *g = NULL;
    CHECKF(mc_gguf_open(path, &g) == MOECL_OK, "%s", moecl_last_error());
    CHECK(g && mc_gguf_tensor_at(g, 0)->nbytes == 0);
    mc_gguf_close(g);

    /* two tensors */
    b_header(&c, 3, 2, 0);
    b_tensor(&c, "a", 2, ne, MC_GGML_F32, 0);
    b_tensor(&c, "b", 1, ne, MC_GGML_F32, 0);
    b_data(&c, 64);
    FAIL_CASE("overlap.gguf", c, "overlap");
    b_header(&c, 3, 2, 0);
    b_tensor(&c, "a", 1, ne, MC_GGML_F32, 32);
    b_tensor(&c, "b", 2, ne, MC_GGML_F32, 0); /* [0, 32) then [32, 48): fine */
    b_data(&c, 64);
    tpath(path, sizeof path, "two.gguf");
    write_file(path, c.b, c.n);
    CHECKF(mc_gguf_open(path, &g) == MOECL_OK, "%s", moecl_last_error());
    mc_gguf_close(g);
    uint64_t ne44[] = {4, 4};
    b_header(&c, 3, 2, 0);
    b_tensor(&c, "a", 2, ne44, MC_GGML_F32, 0); /* [0, 64) */
    b_tensor(&c, "b", 1, ne, MC_GGML_F32, 32);  /* [32, 48): inside a */
    b_data(&c, 64);
    FAIL_CASE("overlap2.gguf", c, "tensors 'a' [0, 64) and 'b' [32, 48) overlap");
    b_header(&c, 3, 2, 0);
    b_tensor(&c, "same", 1, ne, MC_GGML_F32, 0);
    b_tensor(&c, "same", 1, ne, MC_GGML_F32, 32);
    b_data(&c, 64);
    FAIL_CASE("dup-tensor.gguf", c, "duplicate tensor name 'same'");
    /* the data section starts past the end of the file */
    b_header(&c, 3, 1, 0);
    b_tensor(&c, "z", 2, zero, MC_GGML_F32, 0);
    if (c.n % 32 == 0) c.n--; /* make sure padding is needed and missing */
    FAIL_CASE("no-data.gguf", c, "truncated");
#undef ONE_TENSOR
}

/* Every prefix of a valid file fails cleanly, and says how. */
static void test_truncations(void) {
    char path[600];
    snprintf(path, sizeof path, "%s/ref-a64.gguf", g_data);
    size_t n;
    unsigned char *full = read_file(path, &n);
    CHECK(full != NULL && n > 1000);
    if (!full) return;
    int failed_right = 0, tried = 0;
    for (size_t len = 0; len < n; len++) {
        /* memory: every length; a copy of exactly len bytes so ASan sees overreads */
        unsigned char *cut = malloc(len ? len : 1);
        memcpy(cut, full, len);
        mc_gguf *g = NULL;
        moecl_status st = mc_gguf_open_memory(cut, len, "cut.gguf", &g);
        const char *err = moecl_last_error();
        tried++;
        bool named = strstr(err, "cut.gguf") != NULL;
        bool said = strstr(err, "truncated") || strstr(err, "longer than the file") || strstr(err, "absurd") ||
                    strstr(err, "remain in the file") || strstr(err, "past the end");
        /* a file cut inside the last padding of the data section, right after the
         * last tensor, is still valid */
        if (st == MOECL_OK) {
            CHECKF(len + 64 > n, "a cut at %zu of %zu bytes opened", len, n);
        } else if (st == MOECL_ERR_FORMAT && named && said) {
            failed_right++;
        } else {
            CHECKF(0, "cut at %zu: status %d, message: %s", len, st, err);
        }
        mc_gguf_close(g);
        free(cut);
    }
    CHECKF(failed_right > (int)n - 64, "%d of %d cuts failed as expected", failed_right, tried);
    /* and a few through files */
    size_t cuts[] = {0, 4, 7, 20, 23, 100, n / 2, n - 100};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "cut%zu.gguf", cuts[i]);
        expect_fail(name, full, cuts[i], MOECL_ERR_FORMAT, cuts[i] == 0 ? "empty" : "");
    }
    free(full);

    char be[600];
    snprintf(be, sizeof be, "%s/ref-bigendian.gguf", g_data);
    mc_gguf *g = NULL;
    CHECK(mc_gguf_open(be, &g) == MOECL_ERR_FORMAT && g == NULL);
    CHECK(strstr(moecl_last_error(), "big-endian") && strstr(moecl_last_error(), "ref-bigendian.gguf"));
    CHECK(mc_gguf_open(g_dir, &g) == MOECL_ERR_IO);
    CHECK(strstr(moecl_last_error(), "not a regular file"));
    char nope[600];
    CHECK(mc_gguf_open(tpath(nope, sizeof nope, "nope.gguf"), &g) == MOECL_ERR_IO);
    CHECK(strstr(moecl_last_error(), "nope.gguf") && strstr(moecl_last_error(), "cannot open"));
}

/* ------------------------------------------------------------------------ */
/* The reference reader on a file we wrote                                  */
/* ------------------------------------------------------------------------ */

static int run_python_check(const char *checker) {
    if (system("python3 -c 'import gguf' >/dev/null 2>&1") != 0)
        return t_skip("gguf_python", "python3 with PyPI's gguf package is not available");
    char src[600], out[600], exp[600];
    snprintf(src, sizeof src, "%s/ref-a64.gguf", g_data);
    tpath(out, sizeof out, "ours.gguf");
    tpath(exp, sizeof exp, "ours.expected");
    mc_gguf *g = NULL;
    CHECKF(mc_gguf_open(src, &g) == MOECL_OK, "%s", moecl_last_error());
    if (!g) return t_done("gguf_python");
    CHECKF(copy_file(g, out, 64, 1000) == MOECL_OK, "%s", moecl_last_error());
    mc_gguf_close(g);
    /* what we expect GGUFReader to see: what our reader sees */
    CHECK(mc_gguf_open(out, &g) == MOECL_OK);
    if (!g) return t_done("gguf_python");
    char *text = canonical(g);
    mc_gguf_close(g);
    write_file(exp, text, strlen(text));
    free(text);
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "python3 '%s' --check '%s' '%s'", checker, out, exp);
    CHECKF(system(cmd) == 0, "%s failed", cmd);

    /* also the file with every setter's value */
    test_writer_values();
    tpath(out, sizeof out, "values.gguf");
    tpath(exp, sizeof exp, "values.expected");
    CHECK(mc_gguf_open(out, &g) == MOECL_OK);
    if (!g) return t_done("gguf_python");
    text = canonical(g);
    mc_gguf_close(g);
    write_file(exp, text, strlen(text));
    free(text);
    snprintf(cmd, sizeof cmd, "python3 '%s' --check '%s' '%s'", checker, out, exp);
    CHECKF(system(cmd) == 0, "%s failed", cmd);
    return t_done("gguf_python");
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void quiet(moecl_log_level level, const char *message, void *user_data) {
    (void)level, (void)message, (void)user_data;
}

int main(int argc, char **argv) {
    const char *data = getenv("MOECL_TEST_DATA");
    static char data_dir[512];
    snprintf(data_dir, sizeof data_dir, "%s/gguf-format", data && data[0] ? data : "tests/data");
    g_data = data_dir;
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/moecl-gguf-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) return t_skip("gguf", "cannot create a temporary directory");
    moecl_log_set(quiet, MOECL_LOG_ERROR, NULL); /* the expected failures would fill the log */

    int rc;
    if (argc == 3 && strcmp(argv[1], "--python") == 0) {
        rc = run_python_check(argv[2]);
    } else {
        test_reference_files();
        test_copy_round_trip();
        test_writer_values();
        test_writer_failures();
        test_bad_headers();
        test_bad_tensors();
        test_truncations();
        rc = t_done("gguf");
    }
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
