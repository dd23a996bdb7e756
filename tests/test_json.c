/*
 * test_json.c - the JSON reader every loader uses (src/formats/json.c):
 * what its validator accepts and refuses (with the byte), its per-kind
 * limits on bytes, values and depth, an allocation failure inside cJSON
 * reported as MOECL_ERR_NOMEM (issue 9, defects 2 and 3), and the peak
 * memory of refusing hostile files, measured in a child process.
 *
 *   test_json OUTDIR DATA      (DATA: tests/data)
 *
 * The hostile inputs are generated here into OUTDIR and removed after.
 */
#include "formats/hf_config.h"
#include "formats/json.h"
#include "formats/safetensors.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void quiet(moecl_log_level level, const char *message, void *user) { (void)level, (void)message, (void)user; }

static bool has(const char *needle) { return strstr(moecl_last_error(), needle) != NULL; }

/* ------------------------------------------------------------------------ */
/* The validator                                                            */
/* ------------------------------------------------------------------------ */

static void expect_n(const char *text, size_t len, moecl_status want, const char *needle) {
    cJSON *j = NULL;
    moecl_status st = mc_json_parse("t.json", MC_JSON_CONFIG, text, len, &j);
    CHECKF(st == want && (!needle || has(needle)), "\"%.60s\": status %d (want %d), \"%s\" (want \"%s\")", text,
           st, want, moecl_last_error(), needle ? needle : "");
    CHECK((st == MOECL_OK) == (j != NULL));
    cJSON_Delete(j);
}

static void expect(const char *text, moecl_status want, const char *needle) {
    expect_n(text, strlen(text), want, needle);
}

static char *repeat_str(const char *a, int n, const char *b, int m) {
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la * (size_t)n + lb * (size_t)m + 1), *p = s;
    for (int i = 0; i < n; i++, p += la) memcpy(p, a, la);
    for (int i = 0; i < m; i++, p += lb) memcpy(p, b, lb);
    *p = 0;
    return s;
}

static void test_validator(void) {
    const moecl_status OK = MOECL_OK, BAD = MOECL_ERR_FORMAT;
    /* valid, and cJSON builds it */
    expect("{}", OK, NULL);
    expect(" [ ] \n", OK, NULL);
    expect("0", OK, NULL);
    expect("-0.5e+10", OK, NULL);
    expect("[1,[2,{\"a\":null}],true,false,\"\"]", OK, NULL);
    expect("\"\\u00e9\\ud83d\\ude00\\\"\\\\\\/\\b\\f\\n\\r\\t\"", OK, NULL);
    expect("\xEF\xBB\xBF{}  ", OK, NULL); /* a byte-order mark, as cJSON skips it */
    expect("[123456789012345678901234567890123456789012345678901234567890123]", OK, NULL); /* 63 characters */
    /* invalid, with what and where */
    expect("", BAD, "not valid JSON: the text ends where a value was expected at byte 0");
    expect("   ", BAD, "not valid JSON");
    expect("[1,]", BAD, "an unexpected character where a value was expected at byte 3");
    expect("{\"a\":1,}", BAD, "a key that is not a string at byte 7");
    expect("01", BAD, "trailing bytes after the JSON value at byte 1");
    expect("{} x", BAD, "trailing bytes after the JSON value at byte 3");
    expect("1.", BAD, "a malformed number");
    expect(".5", BAD, "an unexpected character");
    expect("+1", BAD, "an unexpected character");
    expect("-", BAD, "a malformed number");
    expect("1e", BAD, "a malformed number");
    expect("\"\\x\"", BAD, "an invalid escape in a string at byte 1");
    expect("\"\\u12g4\"", BAD, "an invalid \\u escape");
    expect("\"\\ud800\"", BAD, "high surrogate without its low half");
    expect("\"\\ud800\\u0041\"", BAD, "high surrogate without its low half");
    expect("\"\\udc00\"", BAD, "a lone UTF-16 low surrogate");
    expect("\"a\x01\"", BAD, "a control character in a string at byte 2");
    expect("\"abc", BAD, "a string that does not end");
    expect("tru", BAD, "an unexpected character");
    expect("[1 2]", BAD, "no ',' or ']' after an element at byte 3");
    expect("{1:2}", BAD, "a key that is not a string at byte 1");
    expect("{\"a\" 1}", BAD, "no ':' after a key at byte 5");
    expect("[1234567890123456789012345678901234567890123456789012345678901234]", BAD,
           "a number longer than 63 characters at byte 1");
    expect_n("[1,\0 2]", 7, BAD, "at byte 3"); /* a NUL is not whitespace */
    expect("\xEF\xBB\xBF{}", OK, NULL);
    expect("\xEF\xBB\xBF" "1", BAD, "not valid JSON"); /* too short for cJSON to skip the mark */

    /* depth: 128 levels, not 129 */
    char *ok = repeat_str("[", MC_JSON_MAX_DEPTH, "]", MC_JSON_MAX_DEPTH);
    char *deep = repeat_str("[", MC_JSON_MAX_DEPTH + 1, "]", MC_JSON_MAX_DEPTH + 1);
    expect(ok, OK, NULL);
    expect(deep, BAD, "nests arrays and objects more than 128 deep (at byte 128)");
    free(ok);
    free(deep);
}

/* ------------------------------------------------------------------------ */
/* Limits                                                                   */
/* ------------------------------------------------------------------------ */

/* "[0,0,...,0]": n >= 2 values (the array and n - 1 zeros), 2n - 1 bytes. */
static char *numbers(size_t n, size_t *len) {
    *len = 2 * n - 1;
    char *s = malloc(*len + 1);
    s[0] = '[';
    for (size_t i = 1; i < *len - 1; i++) s[i] = i % 2 ? '0' : ',';
    s[*len - 1] = ']';
    s[*len] = 0;
    return s;
}

static void test_value_limits(void) {
    char msg[160];
    for (int k = 0; k < MC_JSON_KIND_COUNT; k++) {
        const size_t max = mc_json_max_values((mc_json_kind)k);
        size_t len, counted = 0;
        char *t = numbers(max + 1, &len);
        moecl_status st = mc_json_check("t.json", (mc_json_kind)k, t, len, &counted);
        snprintf(msg, sizeof msg, "has more than %zu JSON values", max);
        CHECKF(st == MOECL_ERR_FORMAT && has(msg), "kind %d, %zu values: %s", k, max + 1, moecl_last_error());
        /* one fewer is within the limit (the validator alone: the big trees are built below in a child) */
        t[len - 3] = ']';
        st = mc_json_check("t.json", (mc_json_kind)k, t, len - 2, &counted);
        CHECKF(st == MOECL_OK && counted == max, "kind %d, %zu values: %s (counted %zu)", k, max, moecl_last_error(),
               counted);
        free(t);
    }
    /* config.json at its limit: cJSON builds all 65536 values */
    size_t len;
    char *t = numbers(mc_json_max_values(MC_JSON_CONFIG), &len);
    cJSON *j = NULL;
    CHECKF(mc_json_parse("t.json", MC_JSON_CONFIG, t, len, &j) == MOECL_OK && cJSON_GetArraySize(j) == 65535, "%s",
           moecl_last_error());
    cJSON_Delete(j);
    free(t);
}

static bool write_file(const char *path, const char *text, size_t len) {
    FILE *f = fopen(path, "wb");
    bool ok = f && fwrite(text, 1, len, f) == len;
    if (f && fclose(f) != 0) ok = false;
    return ok;
}

static void test_byte_limits(const char *dir) {
    const char *names[MC_JSON_KIND_COUNT] = {"config.json", "tokenizer_config.json", "tokenizer.json",
                                             "model.safetensors.index.json", NULL, "data.json"};
    char path[4096], msg[128];
    for (int k = 0; k < MC_JSON_KIND_COUNT; k++) {
        if (!names[k]) continue;
        snprintf(path, sizeof path, "%s/%s", dir, names[k]);
        FILE *f = fopen(path, "wb");
        CHECK(f && fputs("{}", f) >= 0 && fclose(f) == 0);
        cJSON *j = NULL;
        CHECKF(mc_json_load_file(path, (mc_json_kind)k, &j) == MOECL_OK, "%s", moecl_last_error());
        cJSON_Delete(j);
        /* one byte over (a sparse file: no disk) */
        const size_t max = mc_json_max_bytes((mc_json_kind)k);
        CHECK(truncate(path, (off_t)max + 1) == 0);
        snprintf(msg, sizeof msg, "file is %zu bytes, more than the %zu-byte limit", max + 1, max);
        CHECKF(mc_json_load_file(path, (mc_json_kind)k, &j) == MOECL_ERR_FORMAT && has(msg) && !j, "%s: %s",
               names[k], moecl_last_error());
        unlink(path);
    }
    /* a safetensors header one byte over: refused from its length field */
    snprintf(path, sizeof path, "%s/big.safetensors", dir);
    uint64_t h = mc_json_max_bytes(MC_JSON_ST_HEADER) + 1;
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(&h, 8, 1, f) == 1 && fclose(f) == 0);
    CHECK(truncate(path, (off_t)(8 + h + 8)) == 0);
    mc_st_file sf;
    snprintf(msg, sizeof msg, "header length %llu exceeds the %zu-byte limit", (unsigned long long)h,
             mc_json_max_bytes(MC_JSON_ST_HEADER));
    CHECKF(mc_st_open(path, &sf) == MOECL_ERR_FORMAT && has(msg), "%s", moecl_last_error());
    unlink(path);
}

/* ------------------------------------------------------------------------ */
/* Allocation failures                                                      */
/* ------------------------------------------------------------------------ */

static long g_fail_at = -1, g_allocs;

static void *failing_malloc(size_t n) {
    if (g_fail_at >= 0 && g_allocs++ == g_fail_at) return NULL;
    return malloc(n);
}

static void test_nomem(const char *data) {
    const char *text = "{\"architectures\": [\"MixtralForCausalLM\"], \"a\": {\"b\": [1, 2.5, \"x\", null, true]}}";
    cJSON_Hooks hooks = {failing_malloc, free};
    cJSON_InitHooks(&hooks);
    long k = 0;
    int nomem = 0;
    for (;; k++) {
        g_allocs = 0;
        g_fail_at = k;
        cJSON *j = NULL;
        moecl_status st = mc_json_parse("t.json", MC_JSON_CONFIG, text, strlen(text), &j);
        if (st == MOECL_OK) {
            CHECKF(g_allocs <= k, "allocation %ld failed and the parse still succeeded", k);
            cJSON_Delete(j);
            break;
        }
        CHECKF(st == MOECL_ERR_NOMEM && has("t.json: out of memory parsing the file") && !has("not valid JSON"),
               "allocation %ld failing: status %d, %s", k, st, moecl_last_error());
        nomem++;
    }
    CHECKF(nomem >= 10, "only %d allocations to fail", nomem);
    /* through a loader: config.json's reader passes it on */
    char path[4096];
    snprintf(path, sizeof path, "%s/tiny-f32/config.json", data);
    mc_hparams hp;
    g_allocs = 0;
    g_fail_at = 3;
    CHECKF(mc_hf_config_load(path, &hp) == MOECL_ERR_NOMEM && has("out of memory"), "%s", moecl_last_error());
    g_fail_at = -1;
    CHECKF(mc_hf_config_load(path, &hp) == MOECL_OK, "%s", moecl_last_error());
    cJSON_InitHooks(NULL);
    /* a malformed text is still malformed, not out of memory */
    expect("{\"a\":", MOECL_ERR_FORMAT, "not valid JSON");
}

/* ------------------------------------------------------------------------ */
/* Peak memory of refusing hostile files, in a child                        */
/* ------------------------------------------------------------------------ */

typedef enum { RUN_NOTHING, RUN_TOKENIZER, RUN_CONFIG, RUN_SAFETENSORS, RUN_INDEX_JSON } run_kind;

/* The child: a fresh process (exec'd, so the parent's heap does not hide
 * its allocations), running one loader on path. Exits 0 when the status is
 * want and the message holds needle. */
static int child_main(char **argv) {
    run_kind what = (run_kind)atoi(argv[2]);
    const char *path = argv[3], *needle = argv[5];
    moecl_status want = (moecl_status)atoi(argv[4]), st = MOECL_OK;
    if (what == RUN_TOKENIZER) {
        moecl_tokenizer *tok = NULL;
        st = moecl_tokenizer_load(path, &tok);
        moecl_tokenizer_free(tok);
    } else if (what == RUN_CONFIG) {
        mc_hparams hp;
        st = mc_hf_config_load(path, &hp);
    } else if (what == RUN_SAFETENSORS) {
        mc_st_file f;
        st = mc_st_open(path, &f);
        if (!st) mc_st_close(&f);
    } else if (what == RUN_INDEX_JSON) {
        cJSON *j = NULL;
        st = mc_json_load_file(path, MC_JSON_ST_INDEX, &j);
        cJSON_Delete(j);
    }
    bool ok = st == want && (!needle[0] || has(needle));
    if (!ok) fprintf(stderr, "child: status %d, %s\n", st, moecl_last_error());
    return ok ? 0 : 1;
}

/* Run child_main in a new process; *kb gets its peak RSS. */
static bool in_child(run_kind what, const char *path, moecl_status want, const char *needle, long *kb) {
    char w[16], s[16];
    snprintf(w, sizeof w, "%d", (int)what);
    snprintf(s, sizeof s, "%d", (int)want);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/proc/self/exe", "test_json", "--child", w, path, s, needle ? needle : "", (char *)NULL);
        _exit(127);
    }
    int ws = 0;
    struct rusage ru;
    if (pid < 0 || wait4(pid, &ws, 0, &ru) != pid) return false;
    *kb = ru.ru_maxrss;
    return WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
}

static void test_peak_rss(const char *dir) {
    char path[4096];
    long base = 0, kb = 0;
    CHECK(in_child(RUN_NOTHING, "-", MOECL_OK, NULL, &base));

    /* tokenizer.json of numbers at the byte limit (64 MiB): refused by the
     * validator on the 4194305th value, having held only the text. The
     * 255 MB one of the issue peaked at 10.7 GB. */
    size_t len, n = (mc_json_max_bytes(MC_JSON_TOKENIZER) + 1) / 2;
    char *t = numbers(n, &len);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    CHECK(write_file(path, t, len));
    free(t);
    bool ok = in_child(RUN_TOKENIZER, path, MOECL_ERR_FORMAT, "has more than 4194304 JSON values", &kb);
    fprintf(stderr, "tokenizer.json of %zu bytes of numbers: peak RSS %ld KiB (%ld above the baseline %ld)\n", len,
            kb, kb - base, base);
    CHECKF(ok && kb - base <= (long)(len >> 10) + 16384, "peak %ld KiB above the baseline for a %zu-byte file",
           kb - base, len);
    unlink(path);

    /* a shard index at its value limit (1048576): the largest tree the
     * validator lets cJSON build for it, 80 bytes a number */
    const long values = (long)mc_json_max_values(MC_JSON_ST_INDEX);
    t = numbers((size_t)values, &len);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    CHECK(write_file(path, t, len));
    free(t);
    ok = in_child(RUN_INDEX_JSON, path, MOECL_OK, NULL, &kb);
    fprintf(stderr, "index of %ld values (%zu bytes): peak RSS %ld KiB above the baseline\n", values, len,
            kb - base);
    CHECKF(ok && kb - base <= values * 144 / 1024 + 2 * (long)(len >> 10) + 16384 && kb - base >= values * 64 / 1024,
           "peak %ld KiB above the baseline", kb - base);
    unlink(path);

    /* a safetensors header of numbers at the byte limit (16 MiB) */
    n = (mc_json_max_bytes(MC_JSON_ST_HEADER) + 1) / 2;
    t = numbers(n, &len);
    snprintf(path, sizeof path, "%s/numbers.safetensors", dir);
    FILE *f = fopen(path, "wb");
    uint64_t h = len;
    CHECK(f && fwrite(&h, 8, 1, f) == 1 && fwrite(t, 1, len, f) == len && fclose(f) == 0);
    free(t);
    ok = in_child(RUN_SAFETENSORS, path, MOECL_ERR_FORMAT, "has more than 2097152 JSON values", &kb);
    fprintf(stderr, "safetensors header of %zu bytes of numbers: peak RSS %ld KiB above the baseline\n", len,
            kb - base);
    CHECKF(ok && kb - base <= 2 * (long)(len >> 10) + 16384, "peak %ld KiB above the baseline", kb - base);
    unlink(path);
}

int main(int argc, char **argv) {
    if (argc == 6 && !strcmp(argv[1], "--child")) return child_main(argv);
    if (argc != 3) {
        fprintf(stderr, "usage: %s OUTDIR DATA\n", argv[0]);
        return 2;
    }
    moecl_log_set(quiet, MOECL_LOG_ERROR, NULL);
    mkdir(argv[1], 0777);
    test_validator();
    test_value_limits();
    test_byte_limits(argv[1]);
    test_nomem(argv[2]);
#if defined(__SANITIZE_ADDRESS__)
#define MC_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MC_TEST_ASAN 1
#endif
#endif
#ifdef MC_TEST_ASAN
    /* AddressSanitizer's allocator keeps freed memory in quarantine and pads
     * every block: peak RSS says nothing about moecl's own bound there. */
    fprintf(stderr, "json: peak-RSS checks skipped under AddressSanitizer\n");
    (void)test_peak_rss;
#else
    test_peak_rss(argv[1]);
#endif
    return t_done("json");
}
