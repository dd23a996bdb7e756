/*
 * test_safetensors.c - the safetensors writer and reader: a round trip that
 * must be byte-exact, then broken files, each of which must fail with the
 * right status and a message naming the file and the problem.
 */
#include "formats/safetensors.h"
#include "test_util.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Scratch directory and file helpers                                       */
/* ------------------------------------------------------------------------ */

static char g_dir[512];

/* dir/name in a caller buffer. */
static const char *tpath(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", g_dir, name);
    return buf;
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    CHECKF(fp != NULL, "cannot create %s", path);
    if (!fp) return;
    CHECK(fwrite(data, 1, n, fp) == n);
    CHECK(fclose(fp) == 0);
}

static unsigned char *read_file(const char *path, size_t *n) { return (unsigned char *)t_read_file(path, n); }

static void put_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* A file with the given length field, header text and data_len bytes of data. */
static void write_raw(const char *path, uint64_t len_field, const char *header, size_t data_len) {
    size_t h = strlen(header);
    unsigned char *buf = malloc(8 + h + data_len);
    put_le64(buf, len_field);
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, 0xab, data_len);
    write_file(path, buf, 8 + h + data_len);
    free(buf);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* ------------------------------------------------------------------------ */
/* Expectations                                                             */
/* ------------------------------------------------------------------------ */

static void expect_err_at(int line, moecl_status got, moecl_status want, const char *path, const char *frag) {
    const char *msg = moecl_last_error();
    CHECKF(got == want, "line %d: status %d, want %d (%s)", line, got, want, msg);
    CHECKF(strstr(msg, path) != NULL, "line %d: message '%s' does not name '%s'", line, msg, path);
    CHECKF(strstr(msg, frag) != NULL, "line %d: message '%s' lacks '%s'", line, msg, frag);
}
#define EXPECT_ERR(got, want, path, frag) expect_err_at(__LINE__, (got), (want), (path), (frag))

static bool is_zeroed(const mc_st_file *f) {
    return !f->path && !f->map && !f->map_size && !f->n_tensors && !f->tensors;
}

/* Open path, expecting failure with status want and frag in the message. */
static void open_fails_at(int line, const char *path, moecl_status want, const char *frag) {
    mc_st_file f;
    moecl_status st = mc_st_open(path, &f);
    expect_err_at(line, st, want, path, frag);
    CHECKF(is_zeroed(&f), "line %d: file not zeroed after an error", line);
    if (st == MOECL_OK) mc_st_close(&f);
}
#define OPEN_FAILS(path, want, frag) open_fails_at(__LINE__, (path), (want), (frag))

/* A file whose header is exactly `header` (length field correct) followed
 * by data_len bytes, which must fail to open. */
static void bad_header_at(int line, const char *header, size_t data_len, moecl_status want, const char *frag) {
    char p[600];
    tpath(p, sizeof p, "bad.safetensors");
    write_raw(p, strlen(header), header, data_len);
    open_fails_at(line, p, want, frag);
}
#define BAD_HEADER(header, data_len, want, frag) bad_header_at(__LINE__, (header), (data_len), (want), (frag))

/* ------------------------------------------------------------------------ */
/* Writing and reading back                                                 */
/* ------------------------------------------------------------------------ */

static float g_a[3 * 5];
static uint16_t g_b[7], g_c[8];
static const float g_scalar = 42.5f;

static void fill_inputs(void) {
    uint64_t seed = 1;
    for (int i = 0; i < 15; i++) g_a[i] = t_rand_f(&seed);
    for (int i = 0; i < 7; i++) g_b[i] = (uint16_t)t_rand_u64(&seed);
    for (int i = 0; i < 8; i++) g_c[i] = (uint16_t)t_rand_u64(&seed);
}

static moecl_status write_good(const char *path) {
    mc_st_writer *w;
    moecl_status st = mc_st_writer_new(path, &w);
    if (st != MOECL_OK) return st;
    const int64_t sa[] = {3, 5}, sb[] = {7}, sc[] = {2, 2, 2}, se[] = {0, 4};
    CHECK(mc_st_writer_declare(w, "a.weight", MOECL_DTYPE_F32, 2, sa) == MOECL_OK);
    CHECK(mc_st_writer_declare(w, "b.bias", MOECL_DTYPE_F16, 1, sb) == MOECL_OK);
    CHECK(mc_st_writer_declare(w, "c", MOECL_DTYPE_BF16, 3, sc) == MOECL_OK);
    CHECK(mc_st_writer_declare(w, "scalar", MOECL_DTYPE_F32, 0, NULL) == MOECL_OK);
    CHECK(mc_st_writer_declare(w, "empty", MOECL_DTYPE_F32, 2, se) == MOECL_OK);
    CHECK(mc_st_writer_begin_data(w, "format", "pt") == MOECL_OK);
    /* a.weight in two uneven pieces, to exercise partial writes */
    CHECK(mc_st_writer_write(w, g_a, 7) == MOECL_OK);
    CHECK(mc_st_writer_write(w, (const char *)g_a + 7, sizeof g_a - 7) == MOECL_OK);
    CHECK(mc_st_writer_write(w, g_b, sizeof g_b) == MOECL_OK);
    CHECK(mc_st_writer_write(w, g_c, sizeof g_c) == MOECL_OK);
    CHECK(mc_st_writer_write(w, &g_scalar, sizeof g_scalar) == MOECL_OK);
    return mc_st_writer_finish(w);
}

static void check_tensor(const mc_st_tensor *t, const char *name, moecl_dtype type, int n_dims,
                         const int64_t *shape, const void *data, size_t nbytes) {
    CHECKF(t != NULL, "tensor %s not found", name);
    if (!t) return;
    CHECK(strcmp(t->name, name) == 0);
    CHECK(t->type == type);
    CHECK(t->n_dims == n_dims);
    for (int i = 0; i < n_dims; i++) CHECKF(t->shape[i] == shape[i], "%s shape[%d]", name, i);
    CHECK(t->nbytes == nbytes);
    CHECKF(nbytes == 0 || memcmp(t->data, data, nbytes) == 0, "%s: data differs", name);
}

static void test_roundtrip(void) {
    char dir[600], p[700];
    tpath(dir, sizeof dir, "single");
    CHECK(mkdir(dir, 0700) == 0);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    fill_inputs();
    CHECK(write_good(p) == MOECL_OK);

    /* The layout: length field, header padded with spaces to 8 bytes, data
     * starting with a.weight (declared first). */
    size_t n;
    unsigned char *raw = read_file(p, &n);
    CHECK(raw != NULL && n > 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | raw[i];
    CHECK(hlen % 8 == 0);
    CHECK(n == 8 + hlen + sizeof g_a + sizeof g_b + sizeof g_c + sizeof g_scalar);
    char *hdr = calloc(1, hlen + 1);
    memcpy(hdr, raw + 8, hlen);
    CHECK(strstr(hdr, "\"__metadata__\":{\"format\":\"pt\"}") != NULL);
    CHECK(strstr(hdr, "\"a.weight\":{\"dtype\":\"F32\",\"shape\":[3,5],\"data_offsets\":[0,60]}") != NULL);
    CHECK(memcmp(raw + 8 + hlen, g_a, sizeof g_a) == 0);
    free(hdr);
    free(raw);

    mc_st_file f;
    CHECK(mc_st_open(p, &f) == MOECL_OK);
    CHECK(f.n_tensors == 5);
    const char *sorted[] = {"a.weight", "b.bias", "c", "empty", "scalar"};
    for (int i = 0; i < f.n_tensors && i < 5; i++) CHECK(strcmp(f.tensors[i].name, sorted[i]) == 0);
    CHECK(f.n_tensors > 0 && f.tensors[0].data == (const char *)f.map + 8 + hlen);
    mc_st_close(&f);
    CHECK(is_zeroed(&f));
    mc_st_close(&f); /* a second close is harmless */

    mc_st_set set;
    CHECK(mc_st_set_open_dir(dir, &set) == MOECL_OK);
    CHECK(set.n_files == 1);
    const int64_t sa[] = {3, 5}, sb[] = {7}, sc[] = {2, 2, 2}, se[] = {0, 4};
    check_tensor(mc_st_set_find(&set, "a.weight"), "a.weight", MOECL_DTYPE_F32, 2, sa, g_a, sizeof g_a);
    check_tensor(mc_st_set_find(&set, "b.bias"), "b.bias", MOECL_DTYPE_F16, 1, sb, g_b, sizeof g_b);
    check_tensor(mc_st_set_find(&set, "c"), "c", MOECL_DTYPE_BF16, 3, sc, g_c, sizeof g_c);
    check_tensor(mc_st_set_find(&set, "scalar"), "scalar", MOECL_DTYPE_F32, 0, NULL, &g_scalar, 4);
    check_tensor(mc_st_set_find(&set, "empty"), "empty", MOECL_DTYPE_F32, 2, se, NULL, 0);
    CHECK(mc_st_set_find(&set, "missing") == NULL);
    CHECK(mc_st_set_find(&set, "") == NULL);
    CHECK(mc_st_set_find(NULL, "a.weight") == NULL);
    mc_st_set_close(&set);
    mc_st_set_close(&set);
    mc_st_set_close(NULL);
    mc_st_close(NULL);
}

/* Hand-written headers the format allows: empty tensors sharing an offset,
 * gaps, no metadata, no tensors at all. */
static void test_valid_edge_cases(void) {
    char p[600];
    tpath(p, sizeof p, "edge.safetensors");
    const char *h = "{\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[16,16]},"
                    "\"y\":{\"dtype\":\"F16\",\"shape\":[2,4],\"data_offsets\":[16,32]},"
                    "\"x\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,2]},"
                    "\"__metadata__\":{\"k\":\"v\"}}  \n";
    write_raw(p, strlen(h), h, 40);
    mc_st_file f;
    CHECK(mc_st_open(p, &f) == MOECL_OK);
    CHECK(f.n_tensors == 3);
    CHECK(f.n_tensors == 3 && strcmp(f.tensors[0].name, "x") == 0 && f.tensors[0].n_dims == 0);
    CHECK(f.n_tensors == 3 && f.tensors[2].nbytes == 0);
    mc_st_close(&f);

    write_raw(p, 2, "{}", 0);
    CHECK(mc_st_open(p, &f) == MOECL_OK);
    CHECK(f.n_tensors == 0 && f.tensors == NULL);
    mc_st_close(&f);
}

/* ------------------------------------------------------------------------ */
/* Writer misuse                                                            */
/* ------------------------------------------------------------------------ */

static void test_writer_errors(void) {
    char p[600];
    tpath(p, sizeof p, "w.safetensors");
    const int64_t s4[] = {4}, sneg[] = {-1};
    float four[4] = {1, 2, 3, 4};
    mc_st_writer *w;

    CHECK(mc_st_writer_new(p, &w) == MOECL_OK);
    CHECK(mc_st_writer_declare(w, "t", MOECL_DTYPE_F32, 1, s4) == MOECL_OK);
    EXPECT_ERR(mc_st_writer_declare(w, "t", MOECL_DTYPE_F32, 1, s4), MOECL_ERR_INVALID_ARG, p, "declared twice");
    EXPECT_ERR(mc_st_writer_declare(w, "u", MOECL_DTYPE_F32, 1, sneg), MOECL_ERR_INVALID_ARG, p, "out of range");
    EXPECT_ERR(mc_st_writer_declare(w, "u", MOECL_DTYPE_F32, 5, s4), MOECL_ERR_INVALID_ARG, p, "rank");
    EXPECT_ERR(mc_st_writer_declare(w, "u", MOECL_DTYPE_COUNT, 1, s4), MOECL_ERR_INVALID_ARG, p, "dtype");
    EXPECT_ERR(mc_st_writer_declare(w, "__metadata__", MOECL_DTYPE_F32, 1, s4), MOECL_ERR_INVALID_ARG, p,
               "__metadata__");
    EXPECT_ERR(mc_st_writer_write(w, four, 4), MOECL_ERR_INVALID_ARG, p, "before the header");
    EXPECT_ERR(mc_st_writer_begin_data(w, "k", NULL), MOECL_ERR_INVALID_ARG, p, "metadata");
    CHECK(mc_st_writer_begin_data(w, NULL, NULL) == MOECL_OK);
    EXPECT_ERR(mc_st_writer_declare(w, "late", MOECL_DTYPE_F32, 1, s4), MOECL_ERR_INVALID_ARG, p, "after the header");
    EXPECT_ERR(mc_st_writer_write(w, four, 20), MOECL_ERR_INVALID_ARG, p, "past the 16 declared");
    CHECK(mc_st_writer_write(w, four, 8) == MOECL_OK);
    /* finishing short fails, names the tensor, and removes the file */
    EXPECT_ERR(mc_st_writer_finish(w), MOECL_ERR_INVALID_ARG, p, "tensor 't': 8 of 16 bytes written");
    CHECK(access(p, F_OK) != 0);

    CHECK(mc_st_writer_new(p, &w) == MOECL_OK);
    CHECK(mc_st_writer_declare(w, "t", MOECL_DTYPE_F32, 1, s4) == MOECL_OK);
    EXPECT_ERR(mc_st_writer_finish(w), MOECL_ERR_INVALID_ARG, p, "before the header");
    CHECK(access(p, F_OK) != 0);

    CHECK(mc_st_writer_new(p, &w) == MOECL_OK);
    CHECK(mc_st_writer_declare(w, "t", MOECL_DTYPE_F32, 1, s4) == MOECL_OK);
    CHECK(mc_st_writer_begin_data(w, NULL, NULL) == MOECL_OK);
    CHECK(access(p, F_OK) != 0); /* under a temporary name until finished */
    mc_st_writer_abort(w);
    CHECK(access(p, F_OK) != 0);
    mc_st_writer_abort(NULL);

    char bad[700];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x.safetensors", g_dir);
    w = (mc_st_writer *)&w; /* must be reset to NULL on failure */
    EXPECT_ERR(mc_st_writer_new(bad, &w), MOECL_ERR_IO, bad, "cannot create");
    CHECK(w == NULL);
}

/* ------------------------------------------------------------------------ */
/* Broken files                                                             */
/* ------------------------------------------------------------------------ */

static void test_truncations(void) {
    char good[600], p[600];
    tpath(good, sizeof good, "single/model.safetensors");
    tpath(p, sizeof p, "cut.safetensors");
    size_t n;
    unsigned char *raw = read_file(good, &n);
    CHECK(raw != NULL);
    if (!raw) return;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | raw[i];

    write_file(p, raw, 0);
    OPEN_FAILS(p, MOECL_ERR_FORMAT, "file is 0 bytes, too short");
    write_file(p, raw, 4); /* inside the length field */
    OPEN_FAILS(p, MOECL_ERR_FORMAT, "too short for the 8-byte header length");
    write_file(p, raw, 8); /* length only */
    OPEN_FAILS(p, MOECL_ERR_FORMAT, "runs past the end of the file");
    write_file(p, raw, 8 + hlen / 2); /* inside the header */
    OPEN_FAILS(p, MOECL_ERR_FORMAT, "runs past the end of the file");
    write_file(p, raw, 8 + hlen); /* header, no data */
    OPEN_FAILS(p, MOECL_ERR_FORMAT, "lie past the end of the data section (0 bytes)");
    write_file(p, raw, n - 3); /* inside the data */
    OPEN_FAILS(p, MOECL_ERR_FORMAT, "lie past the end of the data section");
    free(raw);
}

static void test_header_length(void) {
    char p[600];
    tpath(p, sizeof p, "len.safetensors");
    write_raw(p, 1000, "{}", 8);
    OPEN_FAILS(p, MOECL_ERR_FORMAT, "header length 1000 runs past the end of the file (18 bytes)");
    write_raw(p, (uint64_t)1 << 63, "{}", 8);
    OPEN_FAILS(p, MOECL_ERR_FORMAT, "header length 9223372036854775808 runs past the end");
    write_raw(p, UINT64_MAX, "{}", 8);
    OPEN_FAILS(p, MOECL_ERR_FORMAT, "runs past the end");

    /* A length that fits in the file but exceeds the 16 MiB cap: a sparse
     * file, so the test costs no disk. */
    write_raw(p, (16 << 20) + 1, "{}", 0);
    CHECK(truncate(p, 8 + (16 << 20) + 1 + 16) == 0);
    OPEN_FAILS(p, MOECL_ERR_FORMAT, "exceeds the 16777216-byte limit");
}

static void test_bad_json(void) {
    BAD_HEADER("hello   ", 0, MOECL_ERR_FORMAT, "header is not valid JSON");
    BAD_HEADER("{\"a\":", 0, MOECL_ERR_FORMAT, "header is not valid JSON");
    BAD_HEADER("", 0, MOECL_ERR_FORMAT, "header is not valid JSON");
    BAD_HEADER("[1, 2, 3]", 0, MOECL_ERR_FORMAT, "header is not a JSON object");
    BAD_HEADER("\"str\"", 0, MOECL_ERR_FORMAT, "header is not a JSON object");
    BAD_HEADER("{} trailing", 0, MOECL_ERR_FORMAT, "trailing bytes");
    BAD_HEADER("{\"__metadata__\": 3}", 0, MOECL_ERR_FORMAT, "'__metadata__' is 3, expected an object");
    BAD_HEADER("{\"__metadata__\": {\"k\": 1}}", 0, MOECL_ERR_FORMAT, "'__metadata__' value 'k' is 1");
}

static void test_bad_entries(void) {
    BAD_HEADER("{\"a\": 3}", 0, MOECL_ERR_FORMAT, "tensor 'a': entry is 3, expected an object");
    BAD_HEADER("{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, MOECL_ERR_FORMAT,
               "tensor 'a': missing 'dtype'");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, MOECL_ERR_FORMAT,
               "tensor 'a': missing 'shape'");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, MOECL_ERR_FORMAT,
               "tensor 'a': missing 'data_offsets'");

    /* dtypes */
    BAD_HEADER("{\"a\": {\"dtype\": 7, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, MOECL_ERR_FORMAT,
               "'dtype' is 7, expected a string");
    BAD_HEADER("{\"a\": {\"dtype\": \"F33\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, MOECL_ERR_FORMAT,
               "unknown dtype 'F33'");
    BAD_HEADER("{\"a\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 8,
               MOECL_ERR_UNSUPPORTED, "dtype I64 is not supported");
    BAD_HEADER("{\"a\": {\"dtype\": \"F8_E4M3\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 8,
               MOECL_ERR_UNSUPPORTED, "dtype F8_E4M3 is not supported");

    /* shapes */
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": \"x\", \"data_offsets\": [0, 4]}}", 4, MOECL_ERR_FORMAT,
               "'shape' is a string");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4, MOECL_ERR_FORMAT,
               "shape[0] is -1");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [2, 2.5], \"data_offsets\": [0, 20]}}", 20,
               MOECL_ERR_FORMAT, "shape[1] is 2.5");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [\"2\"], \"data_offsets\": [0, 8]}}", 8, MOECL_ERR_FORMAT,
               "shape[0] is a string");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [1099511627777], \"data_offsets\": [0, 4]}}", 4,
               MOECL_ERR_FORMAT, "shape[0] is 1099511627777");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [1e300], \"data_offsets\": [0, 4]}}", 4,
               MOECL_ERR_FORMAT, "shape[0] is 1e+300");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [1099511627776, 1099511627776], \"data_offsets\": [0, 4]}}",
               4, MOECL_ERR_FORMAT, "shape [1099511627776, 1099511627776] is too large");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [1, 1, 1, 1, 1], \"data_offsets\": [0, 4]}}", 4,
               MOECL_ERR_UNSUPPORTED, "more than 4 dimensions");

    /* offsets */
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 0]}}", 8, MOECL_ERR_FORMAT,
               "data_offsets [8, 0] are reversed");
    BAD_HEADER("{\"a.weight\": {\"dtype\": \"F32\", \"shape\": [100], \"data_offsets\": [0, 400]}}", 256,
               MOECL_ERR_FORMAT,
               "tensor 'a.weight': data_offsets [0, 400] lie past the end of the data section (256 bytes)");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 12]}}", 16,
               MOECL_ERR_FORMAT, "hold 12 bytes, but shape [2, 2] of F32 needs 16");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4, MOECL_ERR_FORMAT,
               "'data_offsets' has 1 elements, expected [begin, end]");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": {}}}", 4, MOECL_ERR_FORMAT,
               "'data_offsets' is an object");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4.5]}}", 8, MOECL_ERR_FORMAT,
               "data_offsets[1] is 4.5");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 8, MOECL_ERR_FORMAT,
               "data_offsets[0] is -4");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 1e30]}}", 8, MOECL_ERR_FORMAT,
               "data_offsets[1] is 1e+30");

    /* whole-file checks */
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
               " \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}",
               24, MOECL_ERR_FORMAT, "tensors 'a' [0, 16] and 'b' [8, 24] overlap");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [8], \"data_offsets\": [0, 32]},"
               " \"z\": {\"dtype\": \"F16\", \"shape\": [0], \"data_offsets\": [4, 4]},"
               " \"b\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [28, 32]}}",
               32, MOECL_ERR_FORMAT, "tensors 'a' [0, 32] and 'b' [28, 32] overlap");
    BAD_HEADER("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
               " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
               8, MOECL_ERR_FORMAT, "duplicate tensor name 'a'");
}

static void test_not_files(void) {
    char p[600];
    OPEN_FAILS(g_dir, MOECL_ERR_IO, "not a regular file");
    tpath(p, sizeof p, "does-not-exist.safetensors");
    OPEN_FAILS(p, MOECL_ERR_IO, "cannot open");
}

/* ------------------------------------------------------------------------ */
/* Shard sets                                                               */
/* ------------------------------------------------------------------------ */

/* A shard holding 1-D F32 tensors of 4 elements each, named by names[]. */
static void write_shard(const char *path, const char *const *names, int n) {
    mc_st_writer *w;
    const int64_t s4[] = {4};
    CHECK(mc_st_writer_new(path, &w) == MOECL_OK);
    for (int i = 0; i < n; i++) CHECK(mc_st_writer_declare(w, names[i], MOECL_DTYPE_F32, 1, s4) == MOECL_OK);
    CHECK(mc_st_writer_begin_data(w, "format", "pt") == MOECL_OK);
    for (int i = 0; i < n; i++) {
        float v[4] = {(float)i, (float)i + 0.25f, (float)i + 0.5f, (float)i + 0.75f};
        CHECK(mc_st_writer_write(w, v, sizeof v) == MOECL_OK);
    }
    CHECK(mc_st_writer_finish(w) == MOECL_OK);
}

static void write_index(const char *dir, const char *json) {
    char p[700];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_file(p, json, strlen(json));
}

static void set_fails_at(int line, const char *dir, moecl_status want, const char *name, const char *frag) {
    mc_st_set set;
    moecl_status st = mc_st_set_open_dir(dir, &set);
    expect_err_at(line, st, want, name, frag);
    CHECKF(set.n_files == 0 && set.files == NULL, "line %d: set not zeroed after an error", line);
    if (st == MOECL_OK) mc_st_set_close(&set);
}
#define SET_FAILS(dir, want, name, frag) set_fails_at(__LINE__, (dir), (want), (name), (frag))

static void test_sharded(void) {
    char dir[600], p[700], index[700];
    tpath(dir, sizeof dir, "sharded");
    CHECK(mkdir(dir, 0700) == 0);
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    const char *n1[] = {"x", "y"}, *n2[] = {"z"}, *n3[] = {"w", "x"};
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
    write_shard(p, n1, 2);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    write_shard(p, n2, 1);
    snprintf(p, sizeof p, "%s/extra.safetensors", dir);
    write_shard(p, n3, 2);

    /* No index yet and no model.safetensors. */
    SET_FAILS(dir, MOECL_ERR_IO, dir, "no model.safetensors or model.safetensors.index.json");

    write_index(dir, "{\"metadata\": {\"total_size\": 48}, \"weight_map\": {"
                     "\"x\": \"model-00001-of-00002.safetensors\", \"z\": \"model-00002-of-00002.safetensors\","
                     "\"y\": \"model-00001-of-00002.safetensors\"}}");
    mc_st_set set;
    CHECK(mc_st_set_open_dir(dir, &set) == MOECL_OK);
    CHECK(set.n_files == 2);
    const mc_st_tensor *z = mc_st_set_find(&set, "z"), *y = mc_st_set_find(&set, "y");
    CHECK(z && y && mc_st_set_find(&set, "x"));
    CHECK(z && ((const float *)z->data)[1] == 0.25f);
    CHECK(y && ((const float *)y->data)[3] == 1.75f);
    CHECK(!mc_st_set_find(&set, "w"));
    mc_st_set_close(&set);

    write_index(dir, "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\","
                     "\"z\": \"model-00003-of-00002.safetensors\"}}");
    SET_FAILS(dir, MOECL_ERR_IO, dir, "model-00003-of-00002.safetensors: cannot open");
    SET_FAILS(dir, MOECL_ERR_IO, index, "(a shard listed in");
    write_index(dir, "{\"weight_map\": {\"x\": \"../x.safetensors\"}}");
    SET_FAILS(dir, MOECL_ERR_FORMAT, index, "tensor 'x' maps to shard '../x.safetensors', which is not a plain");
    write_index(dir, "{\"weight_map\": {\"x\": \"..\"}}");
    SET_FAILS(dir, MOECL_ERR_FORMAT, index, "not a plain file name");
    write_index(dir, "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\","
                     "\"z\": \"model-00001-of-00002.safetensors\"}}");
    SET_FAILS(dir, MOECL_ERR_FORMAT, index,
              "weight_map puts tensor 'z' in shard 'model-00001-of-00002.safetensors', which does not contain it");
    write_index(dir, "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\","
                     "\"x\": \"model-00002-of-00002.safetensors\"}}");
    SET_FAILS(dir, MOECL_ERR_FORMAT, index, "lists tensor 'x' more than once");
    write_index(dir, "{\"weight_map\": {\"y\": \"model-00001-of-00002.safetensors\","
                     "\"w\": \"extra.safetensors\"}}");
    SET_FAILS(dir, MOECL_ERR_FORMAT, index, "tensor 'x' is in both");
    write_index(dir, "{\"weight_map\": {\"x\": 3}}");
    SET_FAILS(dir, MOECL_ERR_FORMAT, index, "tensor 'x' maps to 3");
    write_index(dir, "{\"weight_map\": {}}");
    SET_FAILS(dir, MOECL_ERR_FORMAT, index, "'weight_map' is empty");
    write_index(dir, "{\"metadata\": {}}");
    SET_FAILS(dir, MOECL_ERR_FORMAT, index, "'weight_map' is missing");
    write_index(dir, "[]");
    SET_FAILS(dir, MOECL_ERR_FORMAT, index, "not a JSON object");
    write_index(dir, "{\"weight_map\": ");
    SET_FAILS(dir, MOECL_ERR_FORMAT, index, "not valid JSON");

    /* A broken shard's own message comes through. */
    snprintf(p, sizeof p, "%s/broken.safetensors", dir);
    write_file(p, "abc", 3);
    write_index(dir, "{\"weight_map\": {\"x\": \"broken.safetensors\"}}");
    SET_FAILS(dir, MOECL_ERR_FORMAT, "broken.safetensors", "too short");

    snprintf(p, sizeof p, "%s/nope", g_dir);
    SET_FAILS(p, MOECL_ERR_IO, p, "cannot open");
    snprintf(p, sizeof p, "%s/single/model.safetensors", g_dir);
    SET_FAILS(p, MOECL_ERR_IO, p, "not a directory");
}

/* ------------------------------------------------------------------------ */

int main(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/moecl-st-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) return t_skip("safetensors", "cannot create a temporary directory");

    test_roundtrip();
    test_valid_edge_cases();
    test_writer_errors();
    test_truncations();
    test_header_length();
    test_bad_json();
    test_bad_entries();
    test_not_files();
    test_sharded();

    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return t_done("safetensors");
}
