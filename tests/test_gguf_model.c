/*
 * test_gguf_model.c - a Mixtral GGUF that is wrong in one way at a time.
 *
 * usage: test_gguf_model GOOD.gguf TMP_DIR
 *
 * GOOD.gguf (tests/data/gguf/tiny-f32-f32.gguf, written by the python
 * converter) is rewritten through moecl's GGUF writer with one change: a
 * metadata value replaced or dropped, a tensor dropped, reshaped or given
 * another type. Each must fail to load with its status and a message naming
 * the file and the problem, never crash; the unchanged copy must load.
 */
#include "test_util.h"

#include "formats/gguf.h"
#include "moecl.h"

#include <string.h>
#include <sys/stat.h>

static const char *g_good, *g_tmp;

typedef struct change {
    const char *drop_kv;     /* key left out */
    const char *set_str_key; /* key set to a string value */
    const char *set_str;
    const char *set_u32_key; /* key set to a u32 value */
    uint32_t set_u32;
    const char *drop_tensor; /* tensor left out */
    const char *reshape;     /* tensor whose ne[0] is halved (its bytes halved too) */
    const char *retype;      /* tensor declared as Q4_1 (ggml type 3), same bytes budget */
} change;

/* Write GOOD with one change to path. */
static bool rewrite(const char *path, const change *c) {
    mc_gguf *g = NULL;
    if (mc_gguf_open(g_good, &g)) return false;
    mc_gguf_writer *w = NULL;
    moecl_status st = mc_gguf_writer_new(path, 32, &w);
    for (int64_t i = 0; !st && i < mc_gguf_n_kv(g); i++) {
        const mc_gguf_kv *kv = mc_gguf_kv_at(g, i);
        if ((c->drop_kv && !strcmp(kv->key, c->drop_kv)) || (c->set_str_key && !strcmp(kv->key, c->set_str_key)) ||
            (c->set_u32_key && !strcmp(kv->key, c->set_u32_key)))
            continue;
        st = mc_gguf_writer_copy_kv(w, kv);
    }
    if (!st && c->set_str_key) st = mc_gguf_writer_set_str(w, c->set_str_key, c->set_str, strlen(c->set_str));
    if (!st && c->set_u32_key) st = mc_gguf_writer_set_u32(w, c->set_u32_key, c->set_u32);
    for (int64_t i = 0; !st && i < mc_gguf_n_tensors(g); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, i);
        if (c->drop_tensor && !strcmp(t->name, c->drop_tensor)) continue;
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        uint32_t type = t->ggml_type;
        if (c->reshape && !strcmp(t->name, c->reshape)) ne[0] /= 2;
        if (c->retype && !strcmp(t->name, c->retype)) {
            type = 3;      /* Q4_1: 32 weights in 20 bytes */
            ne[0] = 32 * (int64_t)(t->nbytes / (size_t)t->ne[1] / 20 / (t->n_dims > 2 ? (size_t)t->ne[2] : 1));
        }
        st = mc_gguf_writer_add_tensor(w, t->name, type, t->n_dims, ne);
    }
    for (int64_t i = 0; !st && i < mc_gguf_n_tensors(g); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, i);
        if (c->drop_tensor && !strcmp(t->name, c->drop_tensor)) continue;
        size_t n = t->nbytes;
        if (c->reshape && !strcmp(t->name, c->reshape)) n /= 2;
        if (c->retype && !strcmp(t->name, c->retype)) {
            const size_t rows = (size_t)t->ne[1] * (t->n_dims > 2 ? (size_t)t->ne[2] : 1);
            n = rows * (t->nbytes / rows / 20) * 20;
        }
        st = mc_gguf_writer_write_data(w, t->data, n);
    }
    if (!st) st = mc_gguf_writer_finish(w);
    mc_gguf_writer_free(w);
    mc_gguf_close(g);
    if (st) fprintf(stderr, "rewrite %s: %s\n", path, moecl_last_error());
    return st == MOECL_OK;
}

static void expect(const char *what, const change *c, moecl_status want, const char *w1, const char *w2) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.gguf", g_tmp, what);
    CHECKF(rewrite(path, c), "%s: cannot write the test file", what);
    moecl_model *m = (moecl_model *)1;
    moecl_status st = moecl_model_load(path, NULL, &m);
    const char *msg = moecl_last_error();
    CHECKF(st == want && (st == MOECL_OK) == (m != NULL), "%s: status %s (%s), expected %s", what,
           moecl_status_str(st), msg, moecl_status_str(want));
    if (want != MOECL_OK) CHECKF(strstr(msg, path) != NULL, "%s: message '%s' does not name the file", what, msg);
    CHECKF(!w1 || strstr(msg, w1), "%s: message '%s' lacks '%s'", what, msg, w1);
    CHECKF(!w2 || strstr(msg, w2), "%s: message '%s' lacks '%s'", what, msg, w2);
    fprintf(stderr, "  %-22s -> %s\n", what, st ? msg : "loads");
    if (st == MOECL_OK) moecl_model_free(m);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_gguf_model GOOD.gguf TMP_DIR\n");
        return 1;
    }
    g_good = argv[1];
    g_tmp = argv[2];
    mkdir(g_tmp, 0755);

    expect("unchanged", &(change){0}, MOECL_OK, NULL, NULL);
    expect("no-expert-tensor", &(change){.drop_tensor = "blk.1.ffn_up_exps.weight"}, MOECL_ERR_FORMAT,
           "blk.1.ffn_up_exps.weight", "missing");
    expect("no-output-norm", &(change){.drop_tensor = "output_norm.weight"}, MOECL_ERR_FORMAT, "output_norm.weight",
           "missing");
    expect("expert-shape", &(change){.reshape = "blk.0.ffn_down_exps.weight"}, MOECL_ERR_FORMAT,
           "blk.0.ffn_down_exps.weight", "shape");
    expect("attn-shape", &(change){.reshape = "blk.0.attn_q.weight"}, MOECL_ERR_FORMAT, "blk.0.attn_q.weight",
           "shape");
    expect("unsupported-type", &(change){.retype = "blk.0.ffn_gate_exps.weight"}, MOECL_ERR_UNSUPPORTED,
           "blk.0.ffn_gate_exps.weight", "q4_1");
    expect("architecture", &(change){.set_str_key = "general.architecture", .set_str = "qwen2"},
           MOECL_ERR_UNSUPPORTED, "qwen2", NULL);
    expect("dense", &(change){.drop_kv = "llama.expert_count"}, MOECL_ERR_UNSUPPORTED, "expert_count", NULL);
    expect("no-embedding-length", &(change){.drop_kv = "llama.embedding_length"}, MOECL_ERR_FORMAT,
           "llama.embedding_length", NULL);
    expect("expert-used-too-many", &(change){.set_u32_key = "llama.expert_used_count", .set_u32 = 9},
           MOECL_ERR_FORMAT, "llama.expert_used_count", NULL);
    expect("heads-not-divisible", &(change){.set_u32_key = "llama.attention.head_count_kv", .set_u32 = 3},
           MOECL_ERR_FORMAT, "head_count", NULL);
    expect("rope-scaling", &(change){.set_str_key = "llama.rope.scaling.type", .set_str = "yarn"},
           MOECL_ERR_UNSUPPORTED, "yarn", NULL);
    expect("partial-rope", &(change){.set_u32_key = "llama.rope.dimension_count", .set_u32 = 8},
           MOECL_ERR_UNSUPPORTED, "RoPE", NULL);
    expect("type-mismatch", &(change){.set_str_key = "llama.block_count", .set_str = "two"}, MOECL_ERR_FORMAT,
           "llama.block_count", NULL);
    return t_done("gguf_model");
}
