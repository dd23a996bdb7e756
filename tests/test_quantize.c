/*
 * test_quantize.c - moecl_quantize: HF directory or GGUF in, GGUF out.
 *
 * usage: test_quantize DATA_DIR TMP_DIR
 *
 * For each file type: quantize the tiny-q golden model (F32, every
 * dimension a multiple of 256), load the result, and compare its logits on
 * the reference tokens with transformers' F32 logits within the bound
 * measured for that type (tests/data/README.md). Then:
 *   - the tensor types follow the recipe (q4_K_M: attn_v, ffn_down of the
 *     first/last layers, output in Q6_K), metadata as llama.cpp expects;
 *   - Q8_0 and Q4_0 tensors equal, byte for byte, those tools/convert_gguf.py
 *     wrote with PyPI gguf's reference quantizers, for every tensor of the
 *     same name and type;
 *   - GGUF in, GGUF out (f32 GGUF -> q8_0); requantizing is refused unless
 *     allowed, except to f32, which keeps every value (Q4_0, Q4_K_M, F16,
 *     BF16 files widened and compared bit for bit with their dequantized
 *     tensors);
 *   - errors: unknown type, output = input, a missing input, an output
 *     directory that does not exist (no file left behind).
 */
#include "test_util.h"

#include "formats/gguf.h"
#include "quant/quant.h"
#include "moecl.h"

#include <cjson/cJSON.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *g_data, *g_tmp;

typedef struct ref {
    int n_pos, n_vocab;
    int32_t tokens[64];
    float *logits;
} ref;

static bool load_ref(const char *dir, ref *r) {
    char path[8192];
    snprintf(path, sizeof path, "%s/reference.json", dir);
    char *text = t_read_file(path, NULL);
    if (!text) return false;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) return false;
    cJSON *toks = cJSON_GetObjectItem(j, "tokens");
    r->n_pos = cJSON_GetArraySize(toks);
    r->n_vocab = cJSON_GetObjectItem(j, "n_vocab")->valueint;
    for (int i = 0; i < r->n_pos && i < 64; i++) r->tokens[i] = cJSON_GetArrayItem(toks, i)->valueint;
    snprintf(path, sizeof path, "%s/%s", dir, cJSON_GetObjectItem(j, "logits_file")->valuestring);
    cJSON_Delete(j);
    size_t len;
    r->logits = (float *)t_read_file(path, &len);
    return r->logits && len == (size_t)r->n_pos * (size_t)r->n_vocab * sizeof(float);
}

/* Worst normalised error of the model's logits over all positions. */
static double logits_error(const char *model_path, const ref *r) {
    moecl_model *m = NULL;
    if (moecl_model_load(model_path, NULL, &m)) {
        fprintf(stderr, "load %s: %s\n", model_path, moecl_last_error());
        return INFINITY;
    }
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_CPU;
    cp.n_ctx = 64;
    cp.logits_all = true;
    cp.n_threads = 2;
    moecl_context *ctx = NULL;
    double worst = INFINITY;
    if (!moecl_context_new(m, &cp, &ctx) && !moecl_decode(ctx, r->tokens, r->n_pos)) {
        worst = 0;
        for (int i = 0; i < r->n_pos; i++) {
            double e = t_nerr(moecl_get_logits(ctx, i), r->logits + (size_t)i * (size_t)r->n_vocab, (size_t)r->n_vocab);
            if (e > worst) worst = e;
        }
    }
    moecl_context_free(ctx);
    moecl_model_free(m);
    return worst;
}

static moecl_status quantize(const char *in, const char *out, const char *type, bool allow) {
    moecl_quantize_params p = moecl_quantize_default_params();
    p.type = type;
    p.n_threads = 2;
    p.allow_requantize = allow;
    return moecl_quantize(in, out, &p);
}

static uint32_t tensor_type(const mc_gguf *g, const char *name) {
    const mc_gguf_tensor *t = mc_gguf_find_tensor(g, name);
    return t ? t->ggml_type : UINT32_MAX;
}

/* Tensors of the same name and type hold the same bytes. */
static int compare_with_reference(const char *ours, const char *theirs, int *n_same_type) {
    mc_gguf *a = NULL, *b = NULL;
    int differ = -1;
    *n_same_type = 0;
    if (!mc_gguf_open(ours, &a) && !mc_gguf_open(theirs, &b)) {
        differ = 0;
        for (int64_t i = 0; i < mc_gguf_n_tensors(a); i++) {
            const mc_gguf_tensor *ta = mc_gguf_tensor_at(a, i), *tb = mc_gguf_find_tensor(b, ta->name);
            if (!tb || tb->ggml_type != ta->ggml_type) continue;
            (*n_same_type)++;
            if (ta->nbytes != tb->nbytes || memcmp(ta->data, tb->data, ta->nbytes)) {
                fprintf(stderr, "  %s (%s) differs from %s\n", ta->name, mc_gguf_type_name(ta->ggml_type), theirs);
                differ++;
            }
        }
    }
    mc_gguf_close(a);
    mc_gguf_close(b);
    return differ;
}

static void test_types(const ref *r) {
    /* Bounds: normalised error against the F32 reference, about 1.5x what
     * the python converter's files of the same type measure on this model
     * (tests/data/README.md: random tiny models amplify weight error about
     * 5x on the logits). */
    static const struct { const char *type; double bound; } types[] = {
        {"f32", 1e-4}, {"f16", 4e-3}, {"q8_0", 0.06}, {"q6_K", 0.25}, {"q5_K_M", 0.4},
        {"q4_K_M", 0.75}, {"q4_K", 0.75}, {"q4_0", 0.75},
    };
    char in[4096], out[4096];
    snprintf(in, sizeof in, "%s/tiny-q", g_data);
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        snprintf(out, sizeof out, "%s/tiny-q.%s.gguf", g_tmp, types[i].type);
        moecl_status st = quantize(in, out, types[i].type, false);
        CHECKF(st == MOECL_OK, "quantize %s: %s", types[i].type, moecl_last_error());
        if (st) continue;
        double e = logits_error(out, r);
        CHECKF(e <= types[i].bound, "%s: normalised error %.3g > %.3g", types[i].type, e, types[i].bound);
        struct stat sb;
        stat(out, &sb);
        fprintf(stderr, "  %-7s %8.1f KiB  normalised error vs F32 %.3g (bound %.3g)\n", types[i].type,
                (double)sb.st_size / 1024, e, types[i].bound);

        /* Against the python converter's file of the same type, where there is one. */
        char theirs[4096];
        snprintf(theirs, sizeof theirs, "%s/gguf/tiny-q-%s.gguf", g_data, types[i].type);
        if (access(theirs, R_OK) == 0 && !strcmp(types[i].type, "q4_0")) {
            int same = 0, differ = compare_with_reference(out, theirs, &same);
            CHECKF(differ == 0 && same > 0, "%s: %d of %d tensors differ from %s", types[i].type, differ, same, theirs);
            fprintf(stderr, "          %d tensors of the same type byte-identical with %s\n", same, theirs);
        }
    }

    /* Q8_0 of tiny-f32 (rows of 64 and 96: whole Q8_0 blocks). */
    snprintf(in, sizeof in, "%s/tiny-f32", g_data);
    snprintf(out, sizeof out, "%s/tiny-f32.q8_0.gguf", g_tmp);
    CHECKF(quantize(in, out, "q8_0", false) == MOECL_OK, "quantize tiny-f32 q8_0: %s", moecl_last_error());
    char theirs[4096];
    snprintf(theirs, sizeof theirs, "%s/gguf/tiny-f32-q8_0.gguf", g_data);
    int same = 0, differ = compare_with_reference(out, theirs, &same);
    CHECKF(differ == 0 && same > 0, "tiny-f32 q8_0: %d of %d tensors differ from %s", differ, same, theirs);
    fprintf(stderr, "  tiny-f32 q8_0: %d tensors of the same type byte-identical with %s\n", same, theirs);

    /* The q4_K_M recipe on a 2-layer, 4-expert model: use_more_bits(i, 2)
     * holds for layer 1 only. */
    snprintf(out, sizeof out, "%s/tiny-q.q4_K_M.gguf", g_tmp);
    mc_gguf *g = NULL;
    CHECK(mc_gguf_open(out, &g) == MOECL_OK);
    if (g) {
        CHECK(tensor_type(g, "output.weight") == MC_GGML_Q6_K);
        CHECK(tensor_type(g, "token_embd.weight") == MC_GGML_Q4_K);
        CHECK(tensor_type(g, "blk.1.attn_v.weight") == MC_GGML_Q6_K);
        CHECK(tensor_type(g, "blk.0.attn_v.weight") == MC_GGML_Q4_K);
        CHECK(tensor_type(g, "blk.0.ffn_down_exps.weight") == MC_GGML_Q4_K);
        CHECK(tensor_type(g, "blk.1.ffn_down_exps.weight") == MC_GGML_Q6_K);
        CHECK(tensor_type(g, "blk.0.ffn_gate_exps.weight") == MC_GGML_Q4_K);
        CHECK(tensor_type(g, "blk.0.attn_q.weight") == MC_GGML_Q4_K);
        CHECK(tensor_type(g, "blk.0.ffn_gate_inp.weight") == MC_GGML_F32);
        CHECK(tensor_type(g, "blk.0.attn_norm.weight") == MC_GGML_F32);
        int64_t v = -1;
        CHECK(mc_gguf_get_int(g, "general.file_type", true, &v) == MOECL_OK && v == 15);
        CHECK(mc_gguf_get_int(g, "llama.expert_count", true, &v) == MOECL_OK && v == 4);
        CHECK(mc_gguf_get_int(g, "llama.expert_used_count", true, &v) == MOECL_OK && v == 2);
        CHECK(mc_gguf_get_int(g, "llama.block_count", true, &v) == MOECL_OK && v == 2);
        const mc_gguf_tensor *t = mc_gguf_find_tensor(g, "blk.0.ffn_down_exps.weight");
        CHECK(t && t->n_dims == 3 && t->ne[0] == 256 && t->ne[2] == 4);
        mc_gguf_close(g);
    }
}

static void test_gguf_in(const ref *r) {
    char f32[4096], q8[4096], q4[4096];
    snprintf(f32, sizeof f32, "%s/tiny-q.f32.gguf", g_tmp);
    snprintf(q8, sizeof q8, "%s/tiny-q.f32-to-q8_0.gguf", g_tmp);
    snprintf(q4, sizeof q4, "%s/tiny-q.q8_0-to-q4_0.gguf", g_tmp);
    CHECKF(quantize(f32, q8, "q8_0", false) == MOECL_OK, "%s", moecl_last_error());
    double e = logits_error(q8, r);
    CHECKF(e <= 0.06, "GGUF f32 -> q8_0: %.3g", e);
    /* The same weights as quantizing the HF directory directly. */
    char direct[4096];
    snprintf(direct, sizeof direct, "%s/tiny-q.q8_0.gguf", g_tmp);
    int same = 0;
    CHECKF(compare_with_reference(q8, direct, &same) == 0 && same > 0, "GGUF -> q8_0 differs from HF -> q8_0");

    remove(q4); /* from an earlier run */
    CHECK(quantize(q8, q4, "q4_0", false) == MOECL_ERR_INVALID_ARG);
    CHECK(strstr(moecl_last_error(), "already quantized") != NULL);
    CHECK(access(q4, F_OK) != 0);
    CHECKF(quantize(q8, q4, "q4_0", true) == MOECL_OK, "%s", moecl_last_error());
}

/* Every tensor of `wide` is F32 and holds, bit for bit, the values of the
 * tensor of the same name in `src` (dequantized or widened); -1 if either
 * file does not open or a tensor is missing. */
static int compare_widened(const char *src, const char *wide) {
    mc_gguf *a = NULL, *b = NULL;
    int differ = -1;
    if (!mc_gguf_open(src, &a) && !mc_gguf_open(wide, &b)) {
        differ = 0;
        for (int64_t i = 0; i < mc_gguf_n_tensors(a); i++) {
            const mc_gguf_tensor *ta = mc_gguf_tensor_at(a, i), *tb = mc_gguf_find_tensor(b, ta->name);
            if (!tb || tb->dtype != MOECL_DTYPE_F32 || ta->dtype == MOECL_DTYPE_COUNT) {
                differ = -1;
                break;
            }
            int64_t n = 1;
            for (int d = 0; d < 4; d++) n *= ta->ne[d];
            size_t rb = 0;
            if (tb->nbytes != (size_t)n * sizeof(float) || !mc_dtype_row_bytes(ta->dtype, ta->ne[0], &rb)) {
                differ = -1;
                break;
            }
            float *row = malloc((size_t)ta->ne[0] * sizeof *row);
            bool same = row != NULL;
            for (int64_t r = 0; same && r < n / ta->ne[0]; r++) {
                mc_dequantize_row(ta->dtype, (const char *)ta->data + (size_t)r * rb, row, ta->ne[0]);
                same = !memcmp(row, (const float *)tb->data + r * ta->ne[0], (size_t)ta->ne[0] * sizeof *row);
            }
            free(row);
            if (!same) {
                fprintf(stderr, "  %s (%s) widened to F32 differs\n", ta->name, mc_gguf_type_name(ta->ggml_type));
                differ++;
            }
        }
    }
    mc_gguf_close(a);
    mc_gguf_close(b);
    return differ;
}

/* To f32 is lossless from any type, so no --allow-requantize: Q4_0 (and
 * the Q8_0 / F32 tensors beside it), F16 and BF16 files widened, every value
 * kept. Any lossy conversion of quantized weights still needs the flag. */
static void test_widen_to_f32(void) {
    char src[4096], out[4096], hf[4096];
    snprintf(hf, sizeof hf, "%s/tiny-q", g_data);
    static const char *const from[] = {"tiny-q.q8_0-to-q4_0.gguf", "tiny-q.q4_K_M.gguf", "tiny-q.f16.gguf",
                                       "tiny-q.bf16.gguf"};
    snprintf(src, sizeof src, "%s/tiny-q.bf16.gguf", g_tmp);
    CHECKF(quantize(hf, src, "bf16", false) == MOECL_OK, "quantize bf16: %s", moecl_last_error());
    for (size_t i = 0; i < sizeof from / sizeof *from; i++) {
        snprintf(src, sizeof src, "%s/%s", g_tmp, from[i]);
        snprintf(out, sizeof out, "%s/%s.f32.gguf", g_tmp, from[i]);
        moecl_status st = quantize(src, out, "f32", false);
        CHECKF(st == MOECL_OK, "%s to f32 without --allow-requantize: %s", from[i], moecl_last_error());
        if (st) continue;
        CHECKF(compare_widened(src, out) == 0, "%s to f32: values changed", from[i]);
        remove(out);
    }
    snprintf(src, sizeof src, "%s/tiny-q.q4_K_M.gguf", g_tmp);
    static const char *const lossy[] = {"f16", "bf16", "q8_0", "q6_K"};
    for (size_t i = 0; i < sizeof lossy / sizeof *lossy; i++) {
        snprintf(out, sizeof out, "%s/q4_K_M-to-%s.gguf", g_tmp, lossy[i]);
        remove(out);
        CHECKF(quantize(src, out, lossy[i], false) == MOECL_ERR_INVALID_ARG, "q4_K_M to %s accepted", lossy[i]);
        CHECK(strstr(moecl_last_error(), "already quantized") != NULL);
        CHECK(access(out, F_OK) != 0);
    }
}

static void test_errors(void) {
    char in[4096], out[4096];
    snprintf(in, sizeof in, "%s/tiny-q", g_data);
    snprintf(out, sizeof out, "%s/x.gguf", g_tmp);
    CHECK(quantize(in, out, "q3_K", false) == MOECL_ERR_INVALID_ARG);
    CHECK(strstr(moecl_last_error(), "q3_K") != NULL);
    CHECK(quantize(in, in, "q8_0", false) == MOECL_ERR_INVALID_ARG);
    char missing[4096];
    snprintf(missing, sizeof missing, "%s/no-such-model", g_tmp);
    CHECK(quantize(missing, out, "q8_0", false) == MOECL_ERR_IO);
    CHECK(strstr(moecl_last_error(), "no-such-model") != NULL);
    snprintf(out, sizeof out, "%s/no-such-dir/x.gguf", g_tmp);
    CHECK(quantize(in, out, "q8_0", false) == MOECL_ERR_IO);
    CHECK(strstr(moecl_last_error(), "no-such-dir") != NULL);
    CHECK(access(out, F_OK) != 0);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_quantize DATA_DIR TMP_DIR\n");
        return 1;
    }
    g_data = argv[1];
    g_tmp = argv[2];
    /* The files' weights are judged, not the kernels: float activations
     * (the scalar kernels), since the default kernels round the activations
     * to 8 bits for quantized weights at every batch size, which adds its
     * own error (tests/test_kernels.c bounds that). */
    setenv("MOECL_CPU_ISA", "scalar", 1);
    mkdir(g_tmp, 0755);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tiny-q", g_data);
    ref r = {0};
    CHECKF(load_ref(dir, &r), "cannot read the reference in %s", dir);
    if (!t_failures) {
        test_types(&r);
        test_gguf_in(&r);
        test_widen_to_f32();
        test_errors();
    }
    free(r.logits);
    return t_done("quantize");
}
