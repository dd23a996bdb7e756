/*
 * test_arch.c - the table of architectures at its edges: each family's
 * model directory (tests/data, tools/make_golden.py) changed in one way at
 * a time. What a family's config asks for and moecl does not implement is
 * refused by name; a tensor an option calls for is missing by name; the
 * router rule survives a GGUF round trip; a tokenizer.json moecl cannot read
 * leaves the weights loadable.
 *
 * usage: test_arch DATA_DIR TMP_DIR
 */
#include "test_util.h"

#include "arch/arch.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "moecl.h"

#include <string.h>
#include <sys/stat.h>

static const char *g_data, *g_tmp;

static void spit(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(data, 1, len, f);
    fclose(f);
}

/* A fresh copy of data/<model> (config.json, model.safetensors) as tmp/<name>. */
static const char *copy_model(const char *model, const char *name, char *dir, size_t n) {
    snprintf(dir, n, "%s/%s", g_tmp, name);
    mkdir(dir, 0755);
    const char *files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char src[1024], dst[1024];
        snprintf(src, sizeof src, "%s/%s/%s", g_data, model, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        size_t len;
        char *d = t_read_file(src, &len);
        CHECKF(d != NULL, "cannot read %s", src);
        if (d) spit(dst, d, len);
        free(d);
    }
    return dir;
}

/* Replace the first occurrence of a with b in dir/config.json. */
static bool edit(const char *dir, const char *a, const char *b) {
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t len;
    char *d = t_read_file(path, &len);
    if (!d) return false;
    char *p = memmem(d, len, a, strlen(a));
    if (!p) {
        free(d);
        return false;
    }
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

/* Rewrite dir/model.safetensors without tensor `skip`. */
static void drop_tensor(const char *dir, const char *skip) {
    char path[1024], out[1100];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(out, sizeof out, "%s.new", path);
    mc_st_file f;
    if (mc_st_open(path, &f) != MOECL_OK) return;
    mc_st_writer *w;
    CHECK(mc_st_writer_new(out, &w) == MOECL_OK);
    bool found = false;
    for (int i = 0; i < f.n_tensors; i++) {
        mc_st_tensor *t = &f.tensors[i];
        if (!strcmp(t->name, skip)) {
            found = true;
            continue;
        }
        mc_st_writer_declare(w, t->name, t->type, t->n_dims, t->shape);
    }
    CHECKF(found, "test bug: no tensor %s", skip);
    mc_st_writer_begin_data(w, NULL, NULL);
    for (int i = 0; i < f.n_tensors; i++)
        if (strcmp(f.tensors[i].name, skip)) mc_st_writer_write(w, f.tensors[i].data, f.tensors[i].nbytes);
    CHECK(mc_st_writer_finish(w) == MOECL_OK);
    mc_st_close(&f);
    rename(out, path);
}

/* Load dir: the status, and each word in the message. */
static void expect(const char *what, const char *dir, moecl_status want, const char *w1, const char *w2) {
    moecl_model *m = NULL;
    moecl_status st = moecl_model_load(dir, NULL, &m);
    const char *msg = st ? moecl_last_error() : "";
    CHECKF(st == want, "%s: status %s (%s), expected %s", what, moecl_status_str(st), msg, moecl_status_str(want));
    CHECKF(!w1 || strstr(msg, w1), "%s: message '%s' lacks '%s'", what, msg, w1);
    CHECKF(!w2 || strstr(msg, w2), "%s: message '%s' lacks '%s'", what, msg, w2);
    fprintf(stderr, "  %-34s -> %s\n", what, st ? msg : "loads");
    moecl_model_free(m);
}

/* The logits of the last of 12 fixed tokens. */
static bool last_logits(const char *path, float *out, int n_vocab) {
    moecl_model *m = NULL;
    if (moecl_model_load(path, NULL, &m)) {
        fprintf(stderr, "load %s: %s\n", path, moecl_last_error());
        return false;
    }
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_CPU;
    cp.n_ctx = 32;
    cp.n_threads = 1;
    moecl_context *ctx = NULL;
    bool ok = moecl_context_new(m, &cp, &ctx) == MOECL_OK;
    const int32_t toks[12] = {5, 17, 99, 3, 42, 42, 7, 120, 64, 11, 90, 31};
    ok = ok && moecl_decode(ctx, toks, 12) == MOECL_OK;
    const float *l = ok ? moecl_get_logits(ctx, -1) : NULL;
    if (l) memcpy(out, l, (size_t)n_vocab * sizeof(float));
    moecl_context_free(ctx);
    moecl_model_free(m);
    return l != NULL;
}

static void families_load(void) {
    const char *models[][2] = {{"tiny-qwen3moe", "Qwen3MoeForCausalLM"}, {"tiny-olmoe", "OlmoeForCausalLM"},
                               {"tiny-qwen2moe", "Qwen2MoeForCausalLM"}, {"tiny-fused", "MixtralForCausalLM"}};
    for (int i = 0; i < 4; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", g_data, models[i][0]);
        moecl_model *m = NULL;
        CHECKF(moecl_model_load(path, NULL, &m) == MOECL_OK, "%s: %s", path, moecl_last_error());
        moecl_model_info in;
        if (m && moecl_model_get_info(m, &in) == MOECL_OK)
            CHECKF(!strcmp(in.architecture, models[i][1]), "%s: architecture %s", path, in.architecture);
        moecl_model_free(m);
    }
}

static void refused_by_name(void) {
    char d[1024];
    copy_model("tiny-qwen3moe", "q3-swa", d, sizeof d);
    CHECK(edit(d, "\"use_sliding_window\": false", "\"use_sliding_window\": true"));
    expect("qwen3moe use_sliding_window", d, MOECL_ERR_UNSUPPORTED, "config.json", "use_sliding_window");
    copy_model("tiny-qwen3moe", "q3-yarn", d, sizeof d);
    CHECK(edit(d, "\"rope_theta\"", "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}, \"rope_theta\""));
    expect("qwen3moe rope_scaling yarn", d, MOECL_ERR_UNSUPPORTED, "config.json", "yarn");
    copy_model("tiny-qwen2moe", "q2-gelu", d, sizeof d);
    CHECK(edit(d, "\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""));
    expect("qwen2moe hidden_act gelu", d, MOECL_ERR_UNSUPPORTED, "config.json", "gelu");
    copy_model("tiny-olmoe", "olmoe-clip", d, sizeof d);
    CHECK(edit(d, "\"norm_topk_prob\"", "\"clip_qkv\": 8.0, \"norm_topk_prob\""));
    expect("olmoe clip_qkv", d, MOECL_ERR_UNSUPPORTED, "config.json", "clip_qkv");
    copy_model("tiny-olmoe", "olmoe-null-clip", d, sizeof d);
    CHECK(edit(d, "\"norm_topk_prob\"", "\"clip_qkv\": null, \"norm_topk_prob\""));
    expect("olmoe clip_qkv null", d, MOECL_OK, NULL, NULL);
    copy_model("tiny-qwen3moe", "q3-type", d, sizeof d);
    CHECK(edit(d, "\"model_type\": \"qwen3_moe\"", "\"model_type\": \"olmoe\""));
    expect("model_type of another family", d, MOECL_ERR_UNSUPPORTED, "model_type 'olmoe'", "Qwen3MoeForCausalLM");
    copy_model("tiny-qwen2moe", "q2-all-dense", d, sizeof d);
    CHECK(edit(d, "\"decoder_sparse_step\": 1", "\"decoder_sparse_step\": 7"));
    expect("qwen2moe every layer dense", d, MOECL_ERR_UNSUPPORTED, "every layer is dense", NULL);
    copy_model("tiny-qwen3moe", "q3-dense-ff", d, sizeof d);
    CHECK(edit(d, "\"intermediate_size\": 96,", ""));
    expect("qwen3moe dense layer without F", d, MOECL_ERR_FORMAT, "intermediate_size", NULL);
    copy_model("tiny-qwen3moe", "q3-bad-layer", d, sizeof d);
    CHECK(edit(d, "\"mlp_only_layers\": [1]", "\"mlp_only_layers\": [3]"));
    expect("qwen3moe mlp_only_layers out of range", d, MOECL_ERR_FORMAT, "mlp_only_layers", NULL);
}

static void options_need_tensors(void) {
    char d[1024];
    copy_model("tiny-qwen3moe", "q3-no-qnorm", d, sizeof d);
    drop_tensor(d, "model.layers.2.self_attn.q_norm.weight");
    expect("qwen3moe without a q_norm", d, MOECL_ERR_FORMAT, "model.layers.2.self_attn.q_norm.weight", "missing");
    copy_model("tiny-qwen3moe", "q3-not-dense", d, sizeof d);
    CHECK(edit(d, "\"mlp_only_layers\": [1]", "\"mlp_only_layers\": []"));
    expect("qwen3moe dense layer read as MoE", d, MOECL_ERR_FORMAT, "model.layers.1.mlp.gate.weight", "missing");
    copy_model("tiny-qwen3moe", "q3-bias", d, sizeof d);
    CHECK(edit(d, "\"attention_bias\": false", "\"attention_bias\": true"));
    expect("qwen3moe attention_bias without biases", d, MOECL_ERR_FORMAT, "q_proj.bias", "missing");
    copy_model("tiny-olmoe", "olmoe-no-knorm", d, sizeof d);
    drop_tensor(d, "model.layers.0.self_attn.k_norm.weight");
    expect("olmoe without a k_norm", d, MOECL_ERR_FORMAT, "k_norm.weight", "missing");
    copy_model("tiny-qwen2moe", "q2-no-bias", d, sizeof d);
    drop_tensor(d, "model.layers.1.self_attn.v_proj.bias");
    expect("qwen2moe without a v bias", d, MOECL_ERR_FORMAT, "v_proj.bias", "missing");
    copy_model("tiny-qwen2moe", "q2-no-shexp-gate", d, sizeof d);
    drop_tensor(d, "model.layers.0.mlp.shared_expert_gate.weight");
    expect("qwen2moe without a shared gate", d, MOECL_ERR_FORMAT, "shared_expert_gate.weight", "missing");
    copy_model("tiny-fused", "fused-no-down", d, sizeof d);
    drop_tensor(d, "model.layers.1.mlp.experts.down_proj");
    expect("fused layout without down_proj", d, MOECL_ERR_FORMAT, "model.layers.1.mlp.experts.down_proj", "missing");
}

/* The router rule is data that must survive GGUF: Qwen3-MoE with
 * norm_topk_prob false is not what llama.cpp assumes for qwen3moe, so
 * moecl's writer says so and its reader follows. */
static void router_rule_through_gguf(void) {
    enum { V = 128 };
    char d[1024], gguf[1100];
    static float renorm[V], plain[V], back[V];
    char base[1024];
    snprintf(base, sizeof base, "%s/tiny-qwen3moe", g_data);
    CHECK(last_logits(base, renorm, V));
    copy_model("tiny-qwen3moe", "q3-plain", d, sizeof d);
    CHECK(edit(d, "\"norm_topk_prob\": true", "\"norm_topk_prob\": false"));
    CHECK(last_logits(d, plain, V));
    snprintf(gguf, sizeof gguf, "%s/q3-plain.gguf", g_tmp);
    moecl_quantize_params qp = moecl_quantize_default_params();
    qp.type = "f32";
    qp.n_threads = 1;
    CHECKF(moecl_quantize(d, gguf, &qp) == MOECL_OK, "%s", moecl_last_error());
    CHECK(last_logits(gguf, back, V));
    const double rule = t_nerr(plain, renorm, V), trip = t_nerr(back, plain, V);
    CHECKF(rule > 1e-2, "the rule does not show in the logits (%.3g)", rule);
    CHECKF(trip < 1e-5, "norm_topk_prob false lost through GGUF: %.3g", trip);
    fprintf(stderr, "  router rule: renormalised vs not %.3g; HF vs its GGUF %.3g\n", rule, trip);
}

/* A tokenizer.json of a kind moecl does not read: the weights still load. */
static void unreadable_tokenizer(void) {
    char d[1024], path[1100];
    copy_model("tiny-olmoe", "olmoe-wordpiece", d, sizeof d);
    snprintf(path, sizeof path, "%s/tokenizer.json", d);
    static const char tok[] = "{\"version\": \"1.0\", \"model\": {\"type\": \"WordPiece\", \"unk_token\": \"[UNK]\", "
                              "\"vocab\": {\"[UNK]\": 0, \"a\": 1}}}";
    spit(path, tok, sizeof tok - 1);
    moecl_model *m = NULL;
    CHECKF(moecl_model_load(d, NULL, &m) == MOECL_OK, "%s", moecl_last_error());
    CHECK(m && moecl_model_get_tokenizer(m) == NULL);
    moecl_model_free(m);
}

/* Configs in the form of released models of each family (Qwen3-30B-A3B,
 * Qwen1.5-MoE-A2.7B, OLMoE-1B-7B: their keys and shapes as published,
 * written from memory, not copied files), read through the table. */
static void released_configs(void) {
    static const char qwen3[] =
        "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,"
        " \"bos_token_id\": 151643, \"decoder_sparse_step\": 1, \"eos_token_id\": 151645, \"head_dim\": 128,"
        " \"hidden_act\": \"silu\", \"hidden_size\": 2048, \"intermediate_size\": 6144,"
        " \"max_position_embeddings\": 40960, \"max_window_layers\": 48, \"mlp_only_layers\": [],"
        " \"model_type\": \"qwen3_moe\", \"moe_intermediate_size\": 768, \"norm_topk_prob\": true,"
        " \"num_attention_heads\": 32, \"num_experts\": 128, \"num_experts_per_tok\": 8,"
        " \"num_hidden_layers\": 48, \"num_key_value_heads\": 4, \"rms_norm_eps\": 1e-06,"
        " \"rope_scaling\": null, \"rope_theta\": 1000000.0, \"sliding_window\": null,"
        " \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", \"use_sliding_window\": false,"
        " \"vocab_size\": 151936}";
    static const char qwen2[] =
        "{\"architectures\": [\"Qwen2MoeForCausalLM\"], \"bos_token_id\": 151643, \"decoder_sparse_step\": 1,"
        " \"eos_token_id\": 151643, \"hidden_act\": \"silu\", \"hidden_size\": 2048,"
        " \"intermediate_size\": 5632, \"max_position_embeddings\": 8192, \"max_window_layers\": 21,"
        " \"model_type\": \"qwen2_moe\", \"moe_intermediate_size\": 1408, \"norm_topk_prob\": false,"
        " \"num_attention_heads\": 16, \"num_experts\": 60, \"num_experts_per_tok\": 4,"
        " \"num_hidden_layers\": 24, \"num_key_value_heads\": 16, \"rms_norm_eps\": 1e-06,"
        " \"rope_theta\": 1000000.0, \"shared_expert_intermediate_size\": 5632, \"sliding_window\": 32768,"
        " \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", \"use_sliding_window\": false,"
        " \"vocab_size\": 151936}";
    static const char olmoe[] =
        "{\"architectures\": [\"OlmoeForCausalLM\"], \"attention_bias\": false, \"clip_qkv\": null,"
        " \"eos_token_id\": 50279, \"hidden_act\": \"silu\", \"hidden_size\": 2048,"
        " \"intermediate_size\": 1024, \"max_position_embeddings\": 4096, \"model_type\": \"olmoe\","
        " \"norm_topk_prob\": false, \"num_attention_heads\": 16, \"num_experts\": 64,"
        " \"num_experts_per_tok\": 8, \"num_hidden_layers\": 16, \"num_key_value_heads\": 16,"
        " \"pad_token_id\": 1, \"rms_norm_eps\": 1e-05, \"rope_scaling\": null, \"rope_theta\": 10000.0,"
        " \"tie_word_embeddings\": false, \"vocab_size\": 50304}";
    char path[1100];
    snprintf(path, sizeof path, "%s/config.json", g_tmp);
    mc_hparams hp;
    spit(path, qwen3, sizeof qwen3 - 1);
    CHECKF(mc_hf_config_load(path, &hp) == MOECL_OK, "Qwen3-30B-A3B: %s", moecl_last_error());
    CHECK(hp.n_expert == 128 && hp.n_expert_used == 8 && hp.n_ff == 768 && hp.head_dim == 128 &&
          hp.n_head_kv == 4 && hp.norm_topk && hp.qk_norm == MC_QK_NORM_HEAD && !hp.qkv_bias &&
          hp.sliding_window == 0 && !mc_hp_dense(&hp, 0) && hp.n_ff_dense == 6144 && hp.eos_id == 151645);
    spit(path, qwen2, sizeof qwen2 - 1);
    CHECKF(mc_hf_config_load(path, &hp) == MOECL_OK, "Qwen1.5-MoE-A2.7B: %s", moecl_last_error());
    CHECK(hp.n_expert == 60 && hp.n_expert_used == 4 && hp.n_ff == 1408 && hp.n_ff_shexp == 5632 &&
          hp.shared_expert && hp.qkv_bias && !hp.attn_bias && !hp.norm_topk && hp.sliding_window == 0 &&
          hp.head_dim == 128);
    spit(path, olmoe, sizeof olmoe - 1);
    CHECKF(mc_hf_config_load(path, &hp) == MOECL_OK, "OLMoE-1B-7B: %s", moecl_last_error());
    CHECK(hp.n_expert == 64 && hp.n_expert_used == 8 && hp.n_ff == 1024 && hp.qk_norm == MC_QK_NORM_FULL &&
          !hp.norm_topk && !hp.qkv_bias && hp.rope_theta == 10000.0f && hp.bos_id == -1);
}

/* The same for a GGUF whose tokenizer.ggml.model moecl does not read yet. */
static void unreadable_gguf_tokenizer(void) {
    char src[1024], dst[1100];
    snprintf(src, sizeof src, "%s/gguf/tiny-olmoe-f32.gguf", g_data);
    snprintf(dst, sizeof dst, "%s/olmoe-bert.gguf", g_tmp);
    mc_gguf *g = NULL;
    mc_gguf_writer *w = NULL;
    moecl_status st = mc_gguf_open(src, &g);
    if (!st) st = mc_gguf_writer_new(dst, 32, &w);
    for (int64_t i = 0; !st && i < mc_gguf_n_kv(g); i++) st = mc_gguf_writer_copy_kv(w, mc_gguf_kv_at(g, i));
    if (!st) st = mc_gguf_writer_set_str(w, "tokenizer.ggml.model", "bert", 4);
    for (int64_t i = 0; !st && i < mc_gguf_n_tensors(g); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, i);
        st = mc_gguf_writer_add_tensor(w, t->name, t->ggml_type, t->n_dims, t->ne);
    }
    for (int64_t i = 0; !st && i < mc_gguf_n_tensors(g); i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, i);
        st = mc_gguf_writer_write_data(w, t->data, t->nbytes);
    }
    if (!st) st = mc_gguf_writer_finish(w);
    mc_gguf_writer_free(w);
    mc_gguf_close(g);
    CHECKF(st == MOECL_OK, "rewriting %s: %s", src, moecl_last_error());
    moecl_model *m = NULL;
    CHECKF(moecl_model_load(dst, NULL, &m) == MOECL_OK, "%s", moecl_last_error());
    CHECK(m && moecl_model_get_tokenizer(m) == NULL);
    moecl_model_free(m);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_arch DATA_DIR TMP_DIR\n");
        return 1;
    }
    g_data = argv[1];
    g_tmp = argv[2];
    mkdir(g_tmp, 0755);
    families_load();
    released_configs();
    refused_by_name();
    options_need_tensors();
    router_rule_through_gguf();
    unreadable_tokenizer();
    unreadable_gguf_tokenizer();
    return t_done("arch");
}
