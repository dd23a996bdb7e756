/*
 * test_model_errors.c - a model directory that is wrong in one way at a
 * time: each gives its status and a message naming the file and the problem,
 * never a crash.
 */
#include "test_util.h"
#include "tiny_model.h"

#include "formats/safetensors.h"
#include "moecl.h"

#include <sys/stat.h>

static void spit(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(data, 1, len, f);
    fclose(f);
}

/* Load dir and check the status and that the message contains each word. */
static void expect(const char *what, const char *dir, moecl_status want, const char *w1, const char *w2) {
    moecl_model *m = (moecl_model *)1;
    moecl_status st = moecl_model_load(dir, NULL, &m);
    const char *msg = moecl_last_error();
    CHECKF(st == want && (st == MOECL_OK) == (m != NULL), "%s: status %s (%s), expected %s", what, moecl_status_str(st), msg,
           moecl_status_str(want));
    CHECKF(!w1 || strstr(msg, w1), "%s: message '%s' lacks '%s'", what, msg, w1);
    CHECKF(!w2 || strstr(msg, w2), "%s: message '%s' lacks '%s'", what, msg, w2);
    fprintf(stderr, "  %-28s -> %s\n", what, msg);
    if (st == MOECL_OK) moecl_model_free(m);
}

/* Replace the first occurrence of a with b (same length or not) in a file. */
static bool edit(const char *path, const char *a, const char *b) {
    size_t len;
    char *d = t_read_file(path, &len);
    if (!d) return false;
    char *p = memmem(d, len, a, strlen(a));
    if (!p) { free(d); return false; }
    size_t la = strlen(a), lb = strlen(b), off = (size_t)(p - d);
    char *o = malloc(len - la + lb);
    memcpy(o, d, off);
    memcpy(o + off, b, lb);
    memcpy(o + off + lb, d + off + la, len - off - la);
    spit(path, o, len - la + lb);
    free(d);
    free(o);
    return true;
}

/* Rewrite model.safetensors without tensor `skip`, or with `reshape` given
 * its transposed shape. */
static void rewrite(const char *dir, const char *skip, const char *reshape) {
    char path[600], out[620];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(out, sizeof out, "%s.new", path);
    mc_st_file f;
    if (mc_st_open(path, &f) != MOECL_OK) return;
    mc_st_writer *w;
    CHECK(mc_st_writer_new(out, &w) == MOECL_OK);
    for (int i = 0; i < f.n_tensors; i++) {
        mc_st_tensor *t = &f.tensors[i];
        if (skip && !strcmp(t->name, skip)) continue;
        int64_t shape[4] = {t->shape[0], t->shape[1], 0, 0};
        if (reshape && !strcmp(t->name, reshape) && t->n_dims == 2) { shape[0] = t->shape[1]; shape[1] = t->shape[0]; }
        mc_st_writer_declare(w, t->name, t->type, t->n_dims, shape);
    }
    mc_st_writer_begin_data(w, NULL, NULL);
    for (int i = 0; i < f.n_tensors; i++)
        if (!skip || strcmp(f.tensors[i].name, skip)) mc_st_writer_write(w, f.tensors[i].data, f.tensors[i].nbytes);
    CHECK(mc_st_writer_finish(w) == MOECL_OK);
    mc_st_close(&f);
    rename(out, path);
}

int main(void) {
    char buf[512], cfg[600], st[600];
    const char *dir = tiny_model_dir(buf, sizeof buf);
    CHECK(dir != NULL);
    if (!dir) return t_done("model_errors");
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(st, sizeof st, "%s/model.safetensors", dir);
    size_t cfg_len, st_len;
    char *cfg_text = t_read_file(cfg, &cfg_len), *st_data = t_read_file(st, &st_len);
#define RESTORE() (spit(cfg, cfg_text, cfg_len), spit(st, st_data, st_len))

    expect("good model", dir, MOECL_OK, NULL, NULL);
    expect("no such directory", "/nonexistent/moecl", MOECL_ERR_IO, "/nonexistent/moecl", NULL);
    expect("a file, not a directory", cfg, MOECL_ERR_UNSUPPORTED, "config.json", NULL);

    CHECK(edit(cfg, "\"hidden_size\"", "\"hidden_sizes\""));
    expect("config without hidden_size", dir, MOECL_ERR_FORMAT, "config.json", "hidden_size");
    RESTORE();
    CHECK(edit(cfg, "MixtralForCausalLM", "LlamaForCausalLM"));
    expect("another architecture", dir, MOECL_ERR_UNSUPPORTED, "config.json", "LlamaForCausalLM");
    RESTORE();
    CHECK(edit(cfg, "{", "{]"));
    expect("config not JSON", dir, MOECL_ERR_FORMAT, "config.json", NULL);
    RESTORE();
    CHECK(edit(cfg, "\"num_local_experts\":\t4", "\"num_local_experts\":\t8"));
    expect("config wants more experts", dir, MOECL_ERR_FORMAT, "gate.weight", "shape");
    RESTORE();
    CHECK(edit(cfg, "\"intermediate_size\":\t48", "\"intermediate_size\":\t50"));
    expect("config with another shape", dir, MOECL_ERR_FORMAT, "w1.weight", "shape");
    RESTORE();

    rewrite(dir, "model.layers.1.block_sparse_moe.experts.3.w2.weight", NULL);
    expect("missing expert tensor", dir, MOECL_ERR_FORMAT, "experts.3.w2.weight", "missing");
    RESTORE();
    rewrite(dir, "lm_head.weight", NULL);
    expect("missing lm_head", dir, MOECL_ERR_FORMAT, "lm_head.weight", "missing");
    RESTORE();
    rewrite(dir, NULL, "model.layers.0.self_attn.k_proj.weight");
    expect("transposed k_proj", dir, MOECL_ERR_FORMAT, "k_proj", "shape");
    RESTORE();
    CHECK(edit(st, "\"F32\"", "\"I32\""));
    expect("integer tensor", dir, MOECL_ERR_UNSUPPORTED, "model.safetensors", "I32");
    RESTORE();

    spit(st, st_data, st_len / 2);
    expect("truncated weights", dir, MOECL_ERR_FORMAT, "model.safetensors", NULL);
    spit(st, st_data, 5);
    expect("weights cut in the length", dir, MOECL_ERR_FORMAT, "model.safetensors", NULL);
    RESTORE();
    remove(st);
    expect("no weights", dir, MOECL_ERR_IO, "model.safetensors", NULL);
    RESTORE();
    expect("restored model", dir, MOECL_OK, NULL, NULL);

    free(cfg_text);
    free(st_data);
    remove_dir(dir);
    return t_done("model_errors");
}
