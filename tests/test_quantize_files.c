/*
 * test_quantize_files.c - what moecl_quantize does to the file system, and
 * what the GGUF it writes carries.
 *
 * usage: test_quantize_files DATA_DIR TMP_DIR
 *
 *   same file: an output that is the input under another name (./X, a
 *     symlink, a hard link, a file of the input directory, through a
 *     symlink too) and an output that is a directory are refused before any
 *     work (the progress callback never runs), and the input is unchanged.
 *   two writers: two processes quantize to one path at the same time (held
 *     at the first progress report until both have started): exactly one
 *     succeeds, the file is that one's, whole and valid, the other fails
 *     saying so, and no temporary file is left.
 *   symlinks: a symlink planted at the old fixed name OUT.tmp, and at the
 *     exact random name the writer draws (mc_afile_random held fixed), is
 *     never followed: its target is unchanged; when every name is taken the
 *     writer gives up with a clear error; the default-model writer ignores
 *     symlinks at the names it once used (model.safetensors.partial).
 *   cancel: a progress callback returning false mid-write: MOECL_ERR_ABORTED,
 *     the destination as it was, no temporary file.
 *   fidelity: every golden model through quantize f32 reads back with the
 *     same hyperparameters (sliding window, special ids, tied embeddings
 *     ...), and tiny-swa's logits match transformers' past the window.
 */
#include "test_util.h"

#include "formats/atomic_file.h"
#include "formats/gguf.h"
#include "moecl.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *g_data, *g_tmp;

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static int g_calls; /* progress callbacks seen */

static bool count_progress(float f, void *user) {
    (void)f;
    (void)user;
    g_calls++;
    return true;
}

static moecl_status quantize(const char *in, const char *out, const char *type) {
    moecl_quantize_params p = moecl_quantize_default_params();
    p.type = type;
    p.n_threads = 1;
    p.allow_requantize = true;
    p.progress = count_progress;
    g_calls = 0;
    return moecl_quantize(in, out, &p);
}

/* Temporary files (NAME.xxxxxxxxxxxx.tmp) left in dir. */
static int count_temps(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t k = strlen(e->d_name);
        if (k > 17 && !strcmp(e->d_name + k - 4, ".tmp") && e->d_name[k - 17] == '.') n++;
    }
    if (d) closedir(d);
    return n;
}

/* The first temporary file's name in dir ("" if none). */
static void find_temp(const char *dir, char *out, size_t len) {
    DIR *d = opendir(dir);
    out[0] = '\0';
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t k = strlen(e->d_name);
        if (k > 17 && !strcmp(e->d_name + k - 4, ".tmp") && e->d_name[k - 17] == '.' &&
            (size_t)snprintf(out, len, "%s/%s", dir, e->d_name) < len)
            break;
        out[0] = '\0';
    }
    if (d) closedir(d);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    CHECKF(f != NULL, "cannot write %s", path);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static bool same_text(const char *path, const char *text) {
    char *got = t_read_file(path, NULL);
    bool same = got && !strcmp(got, text);
    free(got);
    return same;
}

static int64_t file_type_of(const char *path) {
    mc_gguf *g = NULL;
    int64_t v = -1;
    if (mc_gguf_open(path, &g) == MOECL_OK) mc_gguf_get_int(g, "general.file_type", true, &v);
    mc_gguf_close(g);
    return v;
}

/* ------------------------------------------------------------------------ */
/* The output is the input under another name                               */
/* ------------------------------------------------------------------------ */

static void expect_same_file(const char *in, const char *out, const char *what, const char *msg) {
    struct stat before, after;
    CHECK(stat(in, &before) == 0);
    moecl_status st = quantize(in, out, "q8_0");
    CHECKF(st == MOECL_ERR_INVALID_ARG && strstr(moecl_last_error(), msg), "%s: %s: %s", what,
           moecl_status_str(st), moecl_last_error());
    CHECKF(g_calls == 0, "%s: refused only after %d progress reports", what, g_calls);
    CHECK(stat(in, &after) == 0 && after.st_ino == before.st_ino && after.st_size == before.st_size &&
          after.st_mtime == before.st_mtime);
    fprintf(stderr, "  %s: %s\n", what, moecl_last_error());
}

static void test_same_file(void) {
    fprintf(stderr, "same file:\n");
    char dir[4096], gguf[4200], hf[4200], p[4300], q[4300];
    snprintf(dir, sizeof dir, "%s/same", g_tmp);
    mkdir(dir, 0755);
    snprintf(gguf, sizeof gguf, "%s/x.gguf", dir);
    snprintf(hf, sizeof hf, "%s/tiny-f32", g_data);
    CHECKF(quantize(hf, gguf, "f32") == MOECL_OK, "%s", moecl_last_error());

    /* "./x.gguf" from the directory of x.gguf */
    char cwd[4096];
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    CHECK(chdir(dir) == 0);
    expect_same_file("x.gguf", "./x.gguf", "x.gguf -> ./x.gguf", "is the input");
    CHECK(chdir(cwd) == 0);

    snprintf(p, sizeof p, "%s/link.gguf", dir);
    unlink(p);
    CHECK(symlink(gguf, p) == 0);
    expect_same_file(gguf, p, "a symlink to the input", "is the input");
    snprintf(p, sizeof p, "%s/hard.gguf", dir);
    unlink(p);
    CHECK(link(gguf, p) == 0);
    expect_same_file(gguf, p, "a hard link to the input", "is the input");

    /* a HF directory: its files, also through a symlink and a hard link */
    char hfcopy[4200];
    snprintf(hfcopy, sizeof hfcopy, "%s/hf", dir);
    mkdir(hfcopy, 0755);
    const char *files[2] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", hf, files[i]);
        snprintf(q, sizeof q, "%s/%s", hfcopy, files[i]);
        size_t n = 0;
        char *b = t_read_file(p, &n);
        FILE *f = b ? fopen(q, "wb") : NULL;
        CHECK(f && fwrite(b, 1, n, f) == n);
        if (f) fclose(f);
        free(b);
    }
    snprintf(p, sizeof p, "%s/model.safetensors", hfcopy);
    expect_same_file(hfcopy, p, "hfdir -> hfdir/model.safetensors", "is the input's file");
    snprintf(p, sizeof p, "%s/config.json", hfcopy);
    expect_same_file(hfcopy, p, "hfdir -> hfdir/config.json", "is the input's file");
    snprintf(p, sizeof p, "%s/weights-link.gguf", dir);
    snprintf(q, sizeof q, "%s/model.safetensors", hfcopy);
    unlink(p);
    CHECK(symlink(q, p) == 0);
    expect_same_file(hfcopy, p, "hfdir -> a symlink to its shard", "is the input's file");
    snprintf(p, sizeof p, "%s/weights-hard.gguf", dir);
    unlink(p);
    CHECK(link(q, p) == 0);
    expect_same_file(hfcopy, p, "hfdir -> a hard link to its shard", "is the input's file");

    /* a directory as the output, the input directory included */
    expect_same_file(hfcopy, dir, "a directory as the output", "is a directory");
    expect_same_file(hfcopy, hfcopy, "the input directory as the output", "is a directory");

    /* another file in the input directory is fine, twice */
    snprintf(p, sizeof p, "%s/model.gguf", hfcopy);
    CHECKF(quantize(hfcopy, p, "q8_0") == MOECL_OK && file_type_of(p) == 7, "%s", moecl_last_error());
    CHECKF(quantize(hfcopy, p, "q4_0") == MOECL_OK && file_type_of(p) == 2, "%s", moecl_last_error());
    CHECK(count_temps(dir) == 0 && count_temps(hfcopy) == 0);
}

/* ------------------------------------------------------------------------ */
/* Two writers of one file                                                  */
/* ------------------------------------------------------------------------ */

typedef struct gate {
    int ready_fd, go_fd;
    bool passed;
} gate;

/* At the first report: tell the parent, then wait for its go. */
static bool hold_at_start(float f, void *user) {
    (void)f;
    gate *g = user;
    if (!g->passed) {
        g->passed = true;
        char c = 'r';
        if (write(g->ready_fd, &c, 1) != 1 || read(g->go_fd, &c, 1) != 1) return false;
    }
    return true;
}

/* A child: quantize in to out as type; exit 0 done, 2 lost the race (and
 * said so), 1 anything else. */
static void writer_child(const char *in, const char *out, const char *type, int ready_fd, int go_fd) {
    gate g = {ready_fd, go_fd, false};
    moecl_quantize_params p = moecl_quantize_default_params();
    p.type = type;
    p.n_threads = 1;
    p.progress = hold_at_start;
    p.progress_user_data = &g;
    moecl_status st = moecl_quantize(in, out, &p);
    if (st == MOECL_OK) _exit(0);
    fprintf(stderr, "  %s writer: %s\n", type, moecl_last_error());
    _exit(st == MOECL_ERR_IO && strstr(moecl_last_error(), "another process wrote this file") ? 2 : 1);
}

static void race_once(const char *in, const char *out, bool existing) {
    const char *types[2] = {"q8_0", "q4_0"};
    const int64_t ftypes[2] = {7, 2};
    int ready[2], go[2][2];
    CHECK(pipe(ready) == 0);
    pid_t pid[2];
    for (int i = 0; i < 2; i++) {
        CHECK(pipe(go[i]) == 0);
        fflush(stderr);
        pid[i] = fork();
        if (pid[i] == 0) writer_child(in, out, types[i], ready[1], go[i][0]);
    }
    char c;
    for (int i = 0; i < 2; i++) CHECK(read(ready[0], &c, 1) == 1); /* both are writing */
    for (int i = 0; i < 2; i++) CHECK(write(go[i][1], "g", 1) == 1);
    int code[2];
    for (int i = 0; i < 2; i++) {
        int ws = 0;
        CHECK(waitpid(pid[i], &ws, 0) == pid[i]);
        code[i] = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
        close(go[i][0]);
        close(go[i][1]);
    }
    close(ready[0]);
    close(ready[1]);
    const int winner = code[0] == 0 ? 0 : 1;
    CHECKF((code[0] == 0 && code[1] == 2) || (code[0] == 2 && code[1] == 0), "exit codes %d, %d: one must win, "
           "the other say it lost", code[0], code[1]);
    const int64_t ft = file_type_of(out);
    CHECKF(ft == ftypes[winner], "the file is general.file_type %lld; the %s writer said it wrote it", (long long)ft,
           types[winner]);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", out);
    *strrchr(dir, '/') = '\0';
    CHECK(count_temps(dir) == 0);
    fprintf(stderr, "  two writers, destination %s: the %s writer won, the file is its, valid\n",
            existing ? "existing" : "new", types[winner]);
}

static void test_two_writers(void) {
    fprintf(stderr, "two writers:\n");
    char dir[4096], in[4200], out[4200];
    snprintf(dir, sizeof dir, "%s/race", g_tmp);
    mkdir(dir, 0755);
    snprintf(in, sizeof in, "%s/tiny-q", g_data);
    snprintf(out, sizeof out, "%s/same.gguf", dir);
    unlink(out);
    race_once(in, out, false);
    race_once(in, out, true);
}

/* ------------------------------------------------------------------------ */
/* Symlinks at temporary names                                              */
/* ------------------------------------------------------------------------ */

static uint64_t g_fixed;
static int g_draws;
static uint64_t fixed_random(void) {
    g_draws++;
    return g_fixed;
}
static uint64_t fixed_then_other(void) { return g_draws++ == 0 ? g_fixed : g_fixed + 1; }

static char g_seen_temp[4400];
static const char *g_watch_dir;

/* Notes the temporary file's name, then cancels. */
static bool note_temp_and_cancel(float f, void *user) {
    (void)f;
    (void)user;
    find_temp(g_watch_dir, g_seen_temp, sizeof g_seen_temp);
    return false;
}

static void test_symlinks(void) {
    fprintf(stderr, "symlinks:\n");
    char dir[4096], in[4200], out[4200], victim[4200], p[4300];
    snprintf(dir, sizeof dir, "%s/links", g_tmp);
    mkdir(dir, 0755);
    snprintf(in, sizeof in, "%s/tiny-f32", g_data);
    snprintf(out, sizeof out, "%s/out.gguf", dir);
    snprintf(victim, sizeof victim, "%s/victim.txt", dir);
    unlink(out);
    write_text(victim, "precious\n");

    /* the name the old writer always used */
    snprintf(p, sizeof p, "%s.tmp", out);
    unlink(p);
    CHECK(symlink(victim, p) == 0);
    CHECKF(quantize(in, out, "q8_0") == MOECL_OK, "%s", moecl_last_error());
    struct stat sb;
    CHECK(lstat(p, &sb) == 0 && S_ISLNK(sb.st_mode) && same_text(victim, "precious\n") && file_type_of(out) == 7);
    unlink(p);
    fprintf(stderr, "  a symlink at OUT.tmp: not followed\n");

    /* the exact name drawn: learn it (cancelled at the first report), plant
     * a symlink there, draw it again */
    g_fixed = 0x123456789abcdefull;
    mc_afile_random = fixed_random;
    g_watch_dir = dir;
    moecl_quantize_params qp = moecl_quantize_default_params();
    qp.type = "q8_0";
    qp.n_threads = 1;
    qp.progress = note_temp_and_cancel;
    CHECK(moecl_quantize(in, out, &qp) == MOECL_ERR_ABORTED);
    CHECKF(g_seen_temp[0], "no temporary file beside %s while writing", out);
    CHECK(count_temps(dir) == 0);
    CHECK(symlink(victim, g_seen_temp) == 0);
    g_draws = 0;
    mc_afile_random = fixed_then_other;
    unlink(out);
    CHECKF(quantize(in, out, "q8_0") == MOECL_OK, "%s", moecl_last_error());
    CHECK(g_draws == 2); /* the planted name, then another */
    CHECK(lstat(g_seen_temp, &sb) == 0 && S_ISLNK(sb.st_mode) && same_text(victim, "precious\n"));
    CHECK(file_type_of(out) == 7);
    fprintf(stderr, "  a symlink at the drawn name %s: skipped, not followed\n", strrchr(g_seen_temp, '/') + 1);

    /* every name taken: a clear error, nothing written anywhere */
    g_draws = 0;
    mc_afile_random = fixed_random;
    unlink(out);
    CHECK(quantize(in, out, "q8_0") == MOECL_ERR_IO);
    CHECKF(strstr(moecl_last_error(), "no free temporary name") && g_calls == 0, "%s", moecl_last_error());
    CHECK(access(out, F_OK) != 0 && same_text(victim, "precious\n"));
    fprintf(stderr, "  every name taken: %s\n", moecl_last_error());
    mc_afile_random = NULL;
    unlink(g_seen_temp);
    CHECK(count_temps(dir) == 0);

    /* the default-model writer: symlinks at the names it once used */
    char model[4200];
    snprintf(model, sizeof model, "%s/model", dir);
    mkdir(model, 0755);
    const char *old[2] = {"model.safetensors.partial", "config.json.tmp"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", model, old[i]);
        unlink(p);
        CHECK(symlink(victim, p) == 0);
    }
    moecl_random_model_params rp = moecl_random_model_default_params();
    rp.n_vocab = 64, rp.n_embd = 32, rp.n_ff = 64, rp.n_layer = 1, rp.n_head = 4, rp.n_head_kv = 2, rp.n_expert = 2;
    CHECKF(moecl_random_model_write(model, &rp, NULL, NULL) == MOECL_OK, "%s", moecl_last_error());
    moecl_model *m = NULL;
    CHECKF(moecl_model_load(model, NULL, &m) == MOECL_OK, "%s", moecl_last_error());
    moecl_model_free(m);
    CHECK(same_text(victim, "precious\n") && count_temps(model) == 0);
    fprintf(stderr, "  the default-model writer: symlinks at its old names not followed\n");
}

/* ------------------------------------------------------------------------ */
/* Cancelling                                                               */
/* ------------------------------------------------------------------------ */

static bool cancel_at_half(float f, void *user) {
    (void)user;
    return f < 0.5f;
}

static void test_cancel(void) {
    fprintf(stderr, "cancel:\n");
    char dir[4096], in[4200], out[4200];
    snprintf(dir, sizeof dir, "%s/cancel", g_tmp);
    mkdir(dir, 0755);
    snprintf(in, sizeof in, "%s/tiny-q", g_data);
    snprintf(out, sizeof out, "%s/out.gguf", dir);
    write_text(out, "the old file\n");
    moecl_quantize_params p = moecl_quantize_default_params();
    p.type = "q4_K_M";
    p.n_threads = 1;
    p.progress = cancel_at_half;
    CHECK(moecl_quantize(in, out, &p) == MOECL_ERR_ABORTED);
    CHECK(same_text(out, "the old file\n") && count_temps(dir) == 0);
    fprintf(stderr, "  cancelled at half: %s\n", moecl_last_error());
}

/* ------------------------------------------------------------------------ */
/* What the file carries                                                    */
/* ------------------------------------------------------------------------ */

static void test_fidelity(void) {
    fprintf(stderr, "fidelity:\n");
    static const char *const models[] = {"tiny-f32", "tiny-bf16", "tiny-f16", "tiny-top1", "tiny-e8",
                                         "tiny-headdim", "tiny-sharded", "tiny-swa", "tiny-tied", "tiny-q"};
    for (size_t i = 0; i < sizeof models / sizeof *models; i++) {
        char in[4200], out[4200];
        snprintf(in, sizeof in, "%s/%s", g_data, models[i]);
        snprintf(out, sizeof out, "%s/%s.f32.gguf", g_tmp, models[i]);
        CHECKF(quantize(in, out, "f32") == MOECL_OK, "%s: %s", models[i], moecl_last_error());
        moecl_model *a = NULL, *b = NULL;
        CHECK(moecl_model_load(in, NULL, &a) == MOECL_OK);
        CHECKF(moecl_model_load(out, NULL, &b) == MOECL_OK, "%s", moecl_last_error());
        if (!a || !b) {
            moecl_model_free(a);
            moecl_model_free(b);
            continue;
        }
        moecl_model_info x, y;
        moecl_model_get_info(a, &x);
        moecl_model_get_info(b, &y);
#define SAME(f) CHECKF(x.f == y.f, "%s: " #f " %g read back as %g", models[i], (double)x.f, (double)y.f)
        SAME(n_vocab); SAME(n_embd); SAME(n_ff); SAME(n_layer); SAME(n_head); SAME(n_head_kv); SAME(head_dim);
        SAME(n_expert); SAME(n_expert_used); SAME(n_ctx_train); SAME(sliding_window); SAME(rms_norm_eps);
        SAME(rope_theta); SAME(bos_id); SAME(eos_id); SAME(tie_word_embeddings); SAME(n_params);
#undef SAME
        fprintf(stderr, "  %-13s read back with the same hyperparameters (sliding window %d)\n", models[i],
                y.sliding_window);
        moecl_model_free(a);
        moecl_model_free(b);
    }

    /* tiny-swa (window 5, 20 positions) against transformers, every position */
    char ref_path[4200], out[4200];
    snprintf(ref_path, sizeof ref_path, "%s/tiny-swa/reference.json", g_data);
    snprintf(out, sizeof out, "%s/tiny-swa.f32.gguf", g_tmp);
    char *text = t_read_file(ref_path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    CHECKF(j != NULL, "cannot read %s", ref_path);
    if (!j) return;
    const cJSON *toks = cJSON_GetObjectItem(j, "tokens");
    const int n = cJSON_GetArraySize(toks), V = cJSON_GetObjectItem(j, "n_vocab")->valueint;
    int32_t tokens[64];
    for (int i = 0; i < n && i < 64; i++) tokens[i] = cJSON_GetArrayItem(toks, i)->valueint;
    snprintf(ref_path, sizeof ref_path, "%s/tiny-swa/%s", g_data, cJSON_GetObjectItem(j, "logits_file")->valuestring);
    cJSON_Delete(j);
    size_t len = 0;
    float *ref = (float *)t_read_file(ref_path, &len);
    CHECK(ref && len == (size_t)n * (size_t)V * sizeof(float) && n <= 64);
    moecl_model *m = NULL;
    CHECK(moecl_model_load(out, NULL, &m) == MOECL_OK);
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_CPU;
    cp.n_ctx = 64;
    cp.logits_all = true;
    moecl_context *ctx = NULL;
    if (m && ref && moecl_context_new(m, &cp, &ctx) == MOECL_OK && moecl_decode(ctx, tokens, n) == MOECL_OK) {
        moecl_model_info mi;
        moecl_model_get_info(m, &mi);
        double early = 0, late = 0;
        for (int i = 0; i < n; i++) {
            double e = t_nerr(moecl_get_logits(ctx, i), ref + (size_t)i * (size_t)V, (size_t)V);
            if (i < mi.sliding_window) early = e > early ? e : early;
            else late = e > late ? e : late;
        }
        CHECKF(mi.sliding_window == 5 && early <= 1e-4 && late <= 1e-4,
               "tiny-swa through GGUF: window %d, error %.3g within it, %.3g past it", mi.sliding_window, early,
               late);
        fprintf(stderr, "  tiny-swa through GGUF f32: window %d, normalised error %.3g within, %.3g past it\n",
                mi.sliding_window, early, late);
    } else {
        CHECKF(false, "tiny-swa through GGUF: %s", moecl_last_error());
    }
    moecl_context_free(ctx);
    moecl_model_free(m);
    free(ref);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_quantize_files DATA_DIR TMP_DIR\n");
        return 1;
    }
    g_data = argv[1];
    g_tmp = argv[2];
    mkdir(g_tmp, 0755);
    moecl_log_set(NULL, MOECL_LOG_ERROR, NULL);
    test_same_file();
    test_two_writers();
    test_symlinks();
    test_cancel();
    test_fidelity();
    return t_done("quantize_files");
}
