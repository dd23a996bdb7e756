/*
 * test_mapguard.c - a weight file truncated while the model is mapped gives
 * MOECL_ERR_IO naming the file, never a death by SIGBUS (src/guard.h).
 *
 *   test_mapguard DATA_DIR WORK_DIR
 *
 * For a safetensors directory and a GGUF file, each case in a child process
 * (a failure there would be a death by signal, which the parent reports):
 *   between   truncated between two decodes: the size re-check catches it;
 *   during    truncated by the abort callback in the middle of a decode: the
 *             reads of the weights fault, on whichever threads do them;
 *   load      truncated by the progress callback while the model loads;
 *   chained   the application's own SIGBUS handler still gets the faults that
 *             are not moecl's: on its own mapping, and on the model's mapping
 *             outside any moecl call.
 * After the error the model is dead: every later decode and context creation
 * returns MOECL_ERR_IO with the same message.
 */
#include "test_util.h"

#include "model.h"
#include "moecl.h"

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_weights[4200]; /* the file the cases truncate */
static char g_model[4096];   /* what moecl_model_load gets */
static const char *g_name;   /* the weight file's name, which messages must hold */

static bool copy(const char *src, const char *dst) {
    size_t len;
    char *d = t_read_file(src, &len);
    if (!d) return false;
    FILE *f = fopen(dst, "wb");
    bool ok = f && fwrite(d, 1, len, f) == len;
    if (f && fclose(f)) ok = false;
    free(d);
    return ok;
}

static bool expect_io(const char *what, moecl_status st, const char *msg) {
    CHECKF(st == MOECL_ERR_IO, "%s: status %s (%s), expected input/output error", what, moecl_status_str(st), msg);
    CHECKF(strstr(msg, g_name) != NULL, "%s: message '%s' does not name %s", what, msg, g_name);
    fprintf(stderr, "    %-10s -> %s\n", what, msg);
    return st == MOECL_ERR_IO;
}

static moecl_status open_ctx(moecl_model **m, moecl_context **ctx) {
    moecl_status st = moecl_model_load(g_model, NULL, m);
    if (st) return st;
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_CPU;
    cp.n_threads = 2;
    cp.n_ctx = 64;
    return moecl_context_new(*m, &cp, ctx);
}

/* After the failure the model and its contexts stay dead. */
static void expect_dead(moecl_model *m, moecl_context *ctx) {
    int32_t tok = 3;
    expect_io("again", moecl_decode(ctx, &tok, 1), moecl_context_last_error(ctx));
    moecl_context *c2 = NULL;
    moecl_status st = moecl_context_new(m, NULL, &c2);
    expect_io("new ctx", st, moecl_last_error());
    CHECK(c2 == NULL);
}

static int case_between(int go_fd, int wait_fd) {
    moecl_model *m = NULL;
    moecl_context *ctx = NULL;
    int32_t prompt[4] = {1, 5, 9, 2};
    moecl_status st = open_ctx(&m, &ctx);
    CHECKF(st == MOECL_OK, "load: %s", moecl_last_error());
    if (st) return t_done("test_mapguard");
    CHECKF(moecl_decode(ctx, prompt, 4) == MOECL_OK, "decode: %s", moecl_last_error());
    char c = 'r';
    if (write(go_fd, &c, 1) != 1 || read(wait_fd, &c, 1) != 1) return 1; /* the parent truncates */
    int32_t tok = 7;
    if (expect_io("decode", moecl_decode(ctx, &tok, 1), moecl_context_last_error(ctx))) expect_dead(m, ctx);
    moecl_context_free(ctx);
    moecl_model_free(m);
    return t_done("test_mapguard");
}

static bool truncate_now(void *user) {
    int *calls = user;
    if ((*calls)++ == 0 && truncate(g_weights, 0) != 0) perror("truncate");
    return false;
}

static int case_during(void) {
    moecl_model *m = NULL;
    moecl_context *ctx = NULL;
    int32_t prompt[8] = {1, 5, 9, 2, 4, 6, 8, 10};
    moecl_status st = moecl_model_load(g_model, NULL, &m);
    CHECKF(st == MOECL_OK, "load: %s", moecl_last_error());
    if (st) return t_done("test_mapguard");
    int calls = 0;
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_CPU;
    cp.n_threads = 2;
    cp.n_ctx = 64;
    cp.abort_callback = truncate_now;
    cp.abort_user_data = &calls;
    CHECKF(moecl_context_new(m, &cp, &ctx) == MOECL_OK, "context: %s", moecl_last_error());
    if (!ctx) return t_done("test_mapguard");
    st = moecl_decode(ctx, prompt, 8); /* the callback truncates before layer 0 */
    CHECK(calls >= 1);
    if (expect_io("decode", st, moecl_context_last_error(ctx))) {
        CHECKF(strstr(moecl_context_last_error(ctx), "SIGBUS") != NULL, "not caught as a fault: %s",
               moecl_context_last_error(ctx));
        expect_dead(m, ctx);
    }
    moecl_context_free(ctx);
    moecl_model_free(m);
    return t_done("test_mapguard");
}

static bool truncate_midway(float f, void *user) {
    (void)user;
    static bool done;
    if (f > 0.3f && !done) {
        done = true;
        if (truncate(g_weights, 0) != 0) perror("truncate");
    }
    return true;
}

/* moecl_quantize reading an input truncated while it writes: MOECL_ERR_IO
 * naming the file, and no output (nor temporary file) left behind. */
static char g_out[4300];
static int case_quantize(void) {
    moecl_quantize_params qp = moecl_quantize_default_params();
    qp.type = "q8_0";
    qp.n_threads = 2;
    qp.progress = truncate_midway;
    moecl_status st = moecl_quantize(g_model, g_out, &qp);
    expect_io("quantize", st, moecl_last_error());
    CHECKF(access(g_out, F_OK) != 0, "%s exists after a failed quantize", g_out);
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "ls '%s'.*.tmp >/dev/null 2>&1", g_out);
    CHECKF(system(cmd) != 0, "a temporary file of %s was left behind", g_out);
    return t_done("test_mapguard");
}

static int case_load(void) {
    moecl_model *m = NULL;
    moecl_model_params mp = moecl_model_default_params();
    mp.progress = truncate_midway;
    moecl_status st = moecl_model_load(g_model, &mp, &m);
    expect_io("load", st, moecl_last_error());
    CHECK(m == NULL);
    moecl_model_free(m);
    return t_done("test_mapguard");
}

static sigjmp_buf g_jmp;
static volatile sig_atomic_t g_app_faults;

static void app_handler(int sig, siginfo_t *si, void *uc) {
    (void)sig, (void)si, (void)uc;
    g_app_faults++;
    siglongjmp(g_jmp, 1);
}

static int case_chained(const char *work) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = app_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL); /* the application's, before moecl installs its own */

    moecl_model *m = NULL;
    moecl_context *ctx = NULL;
    int32_t prompt[4] = {1, 5, 9, 2};
    moecl_status st = open_ctx(&m, &ctx);
    CHECKF(st == MOECL_OK, "load: %s", moecl_last_error());
    if (st) return t_done("test_mapguard");
    CHECKF(moecl_decode(ctx, prompt, 4) == MOECL_OK, "decode: %s", moecl_last_error());

    /* A fault on a mapping of the application's own. */
    char own[4200];
    snprintf(own, sizeof own, "%s/mapguard-own.bin", work);
    int fd = open(own, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0 && ftruncate(fd, 65536) == 0);
    volatile const char *p = mmap(NULL, 65536, PROT_READ, MAP_SHARED, fd, 0);
    CHECK(p != MAP_FAILED);
    CHECK(ftruncate(fd, 0) == 0);
    if (sigsetjmp(g_jmp, 1) == 0) (void)p[8192];
    CHECKF(g_app_faults == 1, "the application's handler saw %d faults on its own mapping, expected 1",
           (int)g_app_faults);
    munmap((void *)p, 65536);
    close(fd);
    unlink(own);

    /* The model's mapping read outside any moecl call is not moecl's to catch. */
    CHECK(truncate(g_weights, 0) == 0);
    const volatile char *w = m->layers[0].wq.data;
    if (sigsetjmp(g_jmp, 1) == 0) (void)w[0];
    CHECKF(g_app_faults == 2, "the application's handler saw %d faults in all, expected 2", (int)g_app_faults);

    /* Inside a call it is moecl's. */
    int32_t tok = 7;
    expect_io("decode", moecl_decode(ctx, &tok, 1), moecl_context_last_error(ctx));
    CHECK(g_app_faults == 2);
    moecl_context_free(ctx);
    moecl_model_free(m);
    return t_done("test_mapguard");
}

/* Fresh copies of the model for one case. */
static bool prepare(const char *data, const char *work, bool gguf) {
    if (gguf) {
        char src[4200];
        snprintf(src, sizeof src, "%s/gguf/tiny-f32-f32.gguf", data);
        snprintf(g_model, sizeof g_model, "%s/mapguard.gguf", work);
        snprintf(g_weights, sizeof g_weights, "%s", g_model);
        g_name = "mapguard.gguf";
        return copy(src, g_model);
    }
    char src[4200], dst[4200];
    snprintf(g_model, sizeof g_model, "%s/mapguard-hf", work);
    mkdir(g_model, 0755);
    snprintf(src, sizeof src, "%s/tiny-f32/config.json", data);
    snprintf(dst, sizeof dst, "%s/config.json", g_model);
    if (!copy(src, dst)) return false;
    snprintf(src, sizeof src, "%s/tiny-f32/model.safetensors", data);
    snprintf(g_weights, sizeof g_weights, "%s/model.safetensors", g_model);
    g_name = "model.safetensors";
    return copy(src, g_weights);
}

static void run_case(const char *data, const char *work, bool gguf, const char *name) {
    fprintf(stderr, "  %s, truncated %s:\n", gguf ? "GGUF" : "safetensors", name);
    if (!prepare(data, work, gguf)) {
        CHECKF(false, "cannot copy the model into %s", work);
        return;
    }
    int go[2], resume[2];
    if (pipe(go) || pipe(resume)) {
        CHECK(false);
        return;
    }
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(go[0]);
        close(resume[1]);
        int rc = !strcmp(name, "between") ? case_between(go[1], resume[0])
                 : !strcmp(name, "during") ? case_during()
                 : !strcmp(name, "load")   ? case_load()
                 : !strcmp(name, "quantize") ? case_quantize()
                                           : case_chained(work);
        fflush(stderr);
        _exit(rc);
    }
    close(go[1]);
    close(resume[0]);
    char c;
    if (!strcmp(name, "between") && read(go[0], &c, 1) == 1) {
        CHECK(truncate(g_weights, 4096) == 0);
        CHECK(write(resume[1], "g", 1) == 1);
    }
    close(go[0]);
    close(resume[1]);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECKF(!WIFSIGNALED(status), "%s: the child died of signal %d (%s)", name, WTERMSIG(status),
           strsignal(WTERMSIG(status)));
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: the child's checks failed (status %d)", name,
           WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_mapguard DATA_DIR WORK_DIR\n");
        return 1;
    }
    mkdir(argv[2], 0755);
    moecl_log_set(NULL, MOECL_LOG_ERROR, NULL);
    snprintf(g_out, sizeof g_out, "%s/mapguard-out.gguf", argv[2]);
    static const char *cases[] = {"between", "during", "load", "chained", "quantize"};
    for (int g = 0; g < 2; g++)
        for (int i = 0; i < 5; i++) run_case(argv[1], argv[2], g == 1, cases[i]);
    return t_done("test_mapguard");
}
