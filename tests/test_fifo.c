/*
 * test_fifo.c - a FIFO (or a directory, or a device) where a loader expects
 * a file is refused at once, naming the file, never waited on (issue 9,
 * defect 5): config.json, *.safetensors, the shard index, tokenizer.json,
 * tokenizer_config.json, generation_config.json and *.gguf, through the
 * public loaders and the readers beneath them.
 *
 *   test_fifo OUTDIR DATA MODELS     (DATA: tests/data, MODELS: models/)
 *
 * A loader that opened a FIFO without O_NONBLOCK would block in open()
 * until a writer came: the alarm turns that hang into a failure.
 */
#include "formats/gguf.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "util/fileio.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void quiet(moecl_log_level level, const char *message, void *user) { (void)level, (void)message, (void)user; }

static char g_out[2048], g_data[PATH_MAX], g_models[PATH_MAX];

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "test_fifo: a loader blocked opening a FIFO (alarm)\n";
    if (write(2, msg, sizeof msg - 1)) {}
    _exit(1);
}

/* A fresh directory OUTDIR/name with the files listed as "name=kind": kind
 * "fifo", "dir", "zero" (a link to /dev/zero) or a path (a link to it). */
static const char *make_dir(const char *name, const char *const *files) {
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", g_out, name);
    mkdir(g_out, 0777);
    mkdir(dir, 0777);
    for (int i = 0; files[i]; i++) {
        char file[8192], name[256], what[4096];
        const char *eq = strchr(files[i], '=');
        size_t nl = (size_t)(eq - files[i]) < sizeof name ? (size_t)(eq - files[i]) : sizeof name - 1;
        memcpy(name, files[i], nl);
        name[nl] = 0;
        snprintf(file, sizeof file, "%s/%s", dir, name);
        snprintf(what, sizeof what, "%s", eq + 1);
        unlink(file);
        rmdir(file);
        bool ok;
        if (!strcmp(what, "fifo")) ok = mkfifo(file, 0666) == 0;
        else if (!strcmp(what, "dir")) ok = mkdir(file, 0777) == 0;
        else if (!strcmp(what, "zero")) ok = symlink("/dev/zero", file) == 0;
        else ok = symlink(what, file) == 0;
        CHECKF(ok, "making %s: %s", file, strerror(errno));
    }
    return dir;
}

static void expect(moecl_status st, const char *file, const char *kind, const char *what) {
    char want[256];
    snprintf(want, sizeof want, "%s: not a regular file (%s)", file, kind);
    CHECKF(st == MOECL_ERR_IO && strstr(moecl_last_error(), want), "%s: status %d, \"%s\" (want \"%s\")", what, st,
           moecl_last_error(), want);
}

static void expect_model(const char *dir, const char *file, const char *kind) {
    moecl_model *m = NULL;
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    expect(moecl_model_load(dir, NULL, &m), path, kind, "moecl_model_load");
    CHECK(m == NULL);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s OUTDIR DATA MODELS\n", argv[0]);
        return 2;
    }
    snprintf(g_out, sizeof g_out, "%s", argv[1]);
    /* the links made below need absolute targets */
    if (!realpath(argv[2], g_data) || !realpath(argv[3], g_models)) {
        fprintf(stderr, "%s or %s: %s\n", argv[2], argv[3], strerror(errno));
        return 1;
    }
    moecl_log_set(quiet, MOECL_LOG_ERROR, NULL);
    signal(SIGALRM, on_alarm);
    alarm(60);

    char cfg[8192], st_file[8192], tokjson[8192];
    snprintf(cfg, sizeof cfg, "config.json=%s/tiny-f32/config.json", g_data);
    snprintf(st_file, sizeof st_file, "model.safetensors=%s/tiny-f32/model.safetensors", g_data);
    snprintf(tokjson, sizeof tokjson, "tokenizer.json=%s/tokenizer.json", g_models);
    char path[8192];

    /* config.json: a FIFO, a directory, /dev/zero */
    const char *dir = make_dir("config-fifo", (const char *[]){"config.json=fifo", st_file, NULL});
    expect_model(dir, "config.json", "a FIFO");
    snprintf(path, sizeof path, "%s/config.json", dir);
    mc_hparams hp;
    expect(mc_hf_config_load(path, &hp), path, "a FIFO", "mc_hf_config_load");
    dir = make_dir("config-dir", (const char *[]){"config.json=dir", st_file, NULL});
    expect_model(dir, "config.json", "a directory");
    dir = make_dir("config-zero", (const char *[]){"config.json=zero", st_file, NULL});
    expect_model(dir, "config.json", "a character device");

    /* model.safetensors, the index, a shard the index names */
    dir = make_dir("st-fifo", (const char *[]){cfg, "model.safetensors=fifo", NULL});
    expect_model(dir, "model.safetensors", "a FIFO");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    mc_st_file f;
    expect(mc_st_open(path, &f), path, "a FIFO", "mc_st_open");
    dir = make_dir("index-fifo", (const char *[]){cfg, "model.safetensors.index.json=fifo", NULL});
    expect_model(dir, "model.safetensors.index.json", "a FIFO");
    dir = make_dir("shard-fifo", (const char *[]){cfg, "model-00001-of-00001.safetensors=fifo", NULL});
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *ix = fopen(path, "w");
    CHECK(ix && fputs("{\"weight_map\": {\"model.norm.weight\": \"model-00001-of-00001.safetensors\"}}", ix) >= 0 &&
          fclose(ix) == 0);
    expect_model(dir, "model-00001-of-00001.safetensors", "a FIFO");

    /* tokenizer.json and the configs beside it */
    dir = make_dir("tok-fifo", (const char *[]){cfg, st_file, "tokenizer.json=fifo", NULL});
    expect_model(dir, "tokenizer.json", "a FIFO");
    moecl_tokenizer *tok = NULL;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    expect(moecl_tokenizer_load(dir, &tok), path, "a FIFO", "moecl_tokenizer_load(dir)");
    expect(moecl_tokenizer_load(path, &tok), path, "a FIFO", "moecl_tokenizer_load(file)");
    CHECK(tok == NULL);
    dir = make_dir("tokcfg-fifo", (const char *[]){tokjson, "tokenizer_config.json=fifo", NULL});
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    expect(moecl_tokenizer_load(dir, &tok), path, "a FIFO", "tokenizer_config.json");
    dir = make_dir("gencfg-fifo", (const char *[]){tokjson, "generation_config.json=fifo", NULL});
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    expect(moecl_tokenizer_load(dir, &tok), path, "a FIFO", "generation_config.json");

    /* *.gguf */
    dir = make_dir("gguf-fifo", (const char *[]){"model.gguf=fifo", NULL});
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    moecl_model *m = NULL;
    expect(moecl_model_load(path, NULL, &m), path, "a FIFO", "moecl_model_load(.gguf)");
    mc_gguf *g = NULL;
    expect(mc_gguf_open(path, &g), path, "a FIFO", "mc_gguf_open");
    expect(moecl_tokenizer_load(path, &tok), path, "a FIFO", "moecl_tokenizer_load(.gguf)");
    expect(mc_tokenizer_load_gguf(path, &tok), path, "a FIFO", "mc_tokenizer_load_gguf");

    /* the helper itself: a regular file opens blocking, with its stat */
    int fd = -1;
    struct stat sb;
    snprintf(path, sizeof path, "%s/tiny-f32/config.json", g_data);
    CHECKF(mc_open_regular(path, &fd, &sb) == MOECL_OK && fd >= 0 && S_ISREG(sb.st_mode), "%s", moecl_last_error());
    if (fd >= 0) close(fd);
    snprintf(path, sizeof path, "%s/no-such-file", g_out);
    CHECKF(mc_open_regular(path, &fd, NULL) == MOECL_ERR_IO && fd == -1 && strstr(moecl_last_error(), "cannot open"),
           "%s", moecl_last_error());

    /* and the files that were there all along still load */
    dir = make_dir("all-good", (const char *[]){cfg, st_file, NULL});
    CHECKF(moecl_model_load(dir, NULL, &m) == MOECL_OK && m, "%s", moecl_last_error());
    moecl_model_free(m);
    alarm(0);
    return t_done("fifo");
}
