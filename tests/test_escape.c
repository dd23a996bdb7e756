/*
 * test_escape.c - no byte of a hostile file reaches the terminal as a
 * control: mc_escape itself, the library's messages, and `moecl info`.
 *
 *   test_escape MOECL_EXE TINY_GGUF WORK_DIR
 *
 * Writes two GGUF files from the tiny model with escape sequences (ESC, BEL,
 * C1 CSI, DEL, a bidi override, invalid UTF-8) in metadata keys, string
 * values, string arrays and tensor names: one that still loads (so `moecl
 * info` prints its metadata and tensor table) and one whose architecture
 * value is hostile (so the load fails with a message quoting it, and `info`
 * dumps the file after the error). The output must hold no control byte
 * other than newline, no C1 control, only well-formed UTF-8, and the escaped
 * forms of the hostile text (so the test fails if the text was dropped
 * instead of escaped).
 */
#include "test_util.h"

#include "formats/gguf.h"
#include "internal.h"
#include "moecl.h"
#include "tokenizer/tokenizer.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define HOSTILE "\x1b]0;owned\x07\x1b[2J\x1b[31m\xc2\x9b" "1m\x7f\xe2\x80\xae\xff"

static void esc_is(const char *in, size_t len, unsigned flags, const char *want) {
    char out[256];
    mc_escape(out, sizeof out, in, len, flags);
    CHECKF(!strcmp(out, want), "mc_escape: got '%s', want '%s'", out, want);
}

static void unit(void) {
    esc_is("plain text", 10, 0, "plain text");
    esc_is("\x1b[31mred", 8, 0, "\\x1b[31mred");
    esc_is("a\nb\tc\r", 6, 0, "a\\nb\\tc\\r");
    esc_is("\x7f", 1, 0, "\\x7f");
    esc_is("\xc2\x9b" "2J", 4, 0, "\\u009b2J");           /* C1 CSI */
    esc_is("\xe2\x80\xae" "abc", 6, 0, "\\u202eabc");      /* right-to-left override */
    esc_is("\xff\xc3", 2, 0, "\\xff\\xc3");               /* invalid, truncated */
    esc_is("\xc0\xaf", 2, 0, "\\xc0\\xaf");               /* overlong */
    esc_is("caf\xc3\xa9 \xe2\x96\x81 \xf0\x9f\x98\x80", 14, 0, "caf\xc3\xa9 \xe2\x96\x81 \xf0\x9f\x98\x80");
    esc_is("a\"b\\c", 5, 0, "a\"b\\c");
    esc_is("a\"b\\c", 5, MC_ESC_QUOTES, "a\\\"b\\\\c");
    esc_is("x\0y", 3, 0, "x\\x00y");
    /* A short buffer never holds half an escape, and the count says how far it got. */
    char small[6];
    size_t took = mc_escape(small, sizeof small, "ab\x1b" "cd", 5, 0);
    CHECKF(!strcmp(small, "ab") && took == 2, "short buffer: '%s', took %zu", small, took);
}

/* Only newlines, printable ASCII and well-formed UTF-8 without C1 controls. */
static bool clean(const char *what, const char *s, size_t len) {
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n' || (c >= 0x20 && c < 0x7f)) {
            i++;
            continue;
        }
        int n = c >= 0x80 ? mc_utf8_len((const uint8_t *)s + i, len - i) : 0;
        bool c1 = n == 2 && c == 0xc2 && (unsigned char)s[i + 1] < 0xa0;
        if (n == 0 || c1) {
            CHECKF(false, "%s: raw byte 0x%02x at offset %zu: ...%.40s", what, c, i, s + (i > 40 ? i - 40 : 0));
            return false;
        }
        i += (size_t)n;
    }
    return true;
}

/* The tiny model again, plus hostile metadata and tensors; arch replaces
 * general.architecture when not NULL. */
static bool write_hostile(const char *src, const char *dst, const char *arch) {
    mc_gguf *g = NULL;
    mc_gguf_writer *w = NULL;
    bool ok = mc_gguf_open(src, &g) == MOECL_OK && mc_gguf_writer_new(dst, 32, &w) == MOECL_OK;
    for (int64_t i = 0; ok && i < mc_gguf_n_kv(g); i++) {
        const mc_gguf_kv *kv = mc_gguf_kv_at(g, i);
        if (arch && !strcmp(kv->key, "general.architecture")) ok = !mc_gguf_writer_set_str(w, kv->key, arch, strlen(arch));
        else ok = !mc_gguf_writer_copy_kv(w, kv);
    }
    const char *hv = "value " HOSTILE;
    mc_gguf_str arr[2] = {{"item " HOSTILE, strlen("item " HOSTILE)}, {"\x1b[5m", 4}};
    ok = ok && !mc_gguf_writer_set_str(w, "evil.key." HOSTILE, hv, strlen(hv));
    ok = ok && !mc_gguf_writer_set_str_arr(w, "evil.array", arr, 2);
    ok = ok && !mc_gguf_writer_set_u32(w, "evil\x1b[1m.number", 7);
    for (int64_t i = 0; ok && i < mc_gguf_n_tensors(g); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, i);
        ok = !mc_gguf_writer_add_tensor(w, t->name, t->ggml_type, t->n_dims, t->ne);
    }
    const int64_t ne[1] = {4};
    const float extra[4] = {1, 2, 3, 4};
    ok = ok && !mc_gguf_writer_add_tensor(w, "evil.tensor." HOSTILE, 0 /* F32 */, 1, ne);
    for (int64_t i = 0; ok && i < mc_gguf_n_tensors(g); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, i);
        ok = !mc_gguf_writer_write_data(w, t->data, t->nbytes);
    }
    ok = ok && !mc_gguf_writer_write_data(w, extra, sizeof extra);
    ok = ok && !mc_gguf_writer_finish(w);
    if (!ok) fprintf(stderr, "test_escape: writing %s: %s\n", dst, moecl_last_error());
    mc_gguf_writer_free(w);
    mc_gguf_close(g);
    return ok;
}

/* `moecl info -m file` with stdout and stderr into one buffer. */
static char *run_info(const char *exe, const char *model, const char *out_path, int *status, size_t *len) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) _exit(127);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(exe, exe, "info", "-m", model, "--backend", "cpu", (char *)NULL);
        _exit(127);
    }
    waitpid(pid, status, 0);
    return t_read_file(out_path, len);
}

static void check_info(const char *exe, const char *model, const char *work, bool loads) {
    char out_path[4200];
    snprintf(out_path, sizeof out_path, "%s/info.txt", work);
    int status = 0;
    size_t len = 0;
    char *out = run_info(exe, model, out_path, &status, &len);
    CHECKF(out != NULL, "no output from moecl info %s", model);
    if (!out) return;
    const bool exit0 = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    CHECKF(exit0 == loads, "moecl info %s: exit status %d", model, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    clean(model, out, len);
    /* The hostile text is there, escaped: keys, values, arrays, tensor names. */
    CHECKF(strstr(out, "evil.key.\\x1b]0;owned\\x07\\x1b[2J\\x1b[31m\\u009b1m\\x7f\\u202e\\xff"), "escaped key missing");
    CHECKF(strstr(out, "\"value \\x1b]0;owned"), "escaped value missing");
    CHECKF(strstr(out, "\"\\x1b[5m\""), "escaped array item missing");
    CHECKF(strstr(out, "evil\\x1b[1m.number"), "escaped key of a number missing");
    CHECKF(strstr(out, "evil.tensor.\\x1b]0;owned"), "escaped tensor name missing");
    if (!loads) CHECKF(strstr(out, "ll\\x1b[31mama"), "the error does not quote the architecture, escaped");
    if (t_failures) fprintf(stderr, "---- moecl info output ----\n%s\n----\n", out);
    free(out);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: test_escape MOECL_EXE TINY_GGUF WORK_DIR\n");
        return 1;
    }
    unit();
    mkdir(argv[3], 0755);
    char loads[4200], fails[4200];
    snprintf(loads, sizeof loads, "%s/hostile.gguf", argv[3]);
    snprintf(fails, sizeof fails, "%s/hostile-arch.gguf", argv[3]);
    CHECK(write_hostile(argv[2], loads, NULL));
    CHECK(write_hostile(argv[2], fails, "ll\x1b[31mama"));

    /* The library's own message. */
    moecl_model *m = NULL;
    CHECK(moecl_model_load(fails, NULL, &m) != MOECL_OK);
    const char *msg = moecl_last_error();
    clean("moecl_last_error", msg, strlen(msg));
    CHECKF(strstr(msg, "ll\\x1b[31mama"), "message: %s", msg);
    fprintf(stderr, "  message: %s\n", msg);

    check_info(argv[1], loads, argv[3], true);
    check_info(argv[1], fails, argv[3], false);
    return t_done("test_escape");
}
