/*
 * llama_kld.c - moecl against llama.cpp on the same GGUF: the log-probabilities
 * llama-perplexity saved with --kl-divergence-base, compared with moecl's for
 * the same tokens.
 *
 * usage: llama-kld MODEL.gguf BASE.bin [THREADS] [--bos]
 *
 * BASE.bin is what `llama-perplexity -m MODEL.gguf -f TEXT -c N
 * --kl-divergence-base BASE.bin` writes (llama.cpp, 2025): "_logits_",
 * n_ctx, n_vocab, n_chunk (int32), the chunks' tokens (int32), then for each
 * chunk the second half's positions (first = n_ctx/2 .. n_ctx-2), each as
 * nv = 2*((n_vocab+1)/2) + 4 uint16: a float scale and a float minimum
 * log-probability, then each token's log-probability quantized to 16 bits
 * over the top 16 nats (0: at or below the minimum). This program decodes
 * each chunk with moecl (logits of every position; with --bos the chunk's
 * first token is replaced by BOS, as llama-perplexity does when the GGUF
 * says tokenizer.ggml.add_bos_token, or by its vocabulary's default) and
 * prints moecl's perplexity (to set beside llama-perplexity's), the mean
 * KL divergence of llama.cpp's distribution to moecl's, and how often the
 * two top tokens agree.
 */
#include "moecl.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what) {
    fprintf(stderr, "llama-kld: %s%s%s\n", what, moecl_last_error()[0] ? ": " : "", moecl_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: llama-kld MODEL.gguf BASE.bin [THREADS] [--bos]\n");
        return 2;
    }
    FILE *f = fopen(argv[2], "rb");
    char magic[8];
    int32_t n_ctx = 0, n_vocab = 0, n_chunk = 0;
    if (!f || fread(magic, 1, 8, f) != 8 || memcmp(magic, "_logits_", 8) || fread(&n_ctx, 4, 1, f) != 1 ||
        fread(&n_vocab, 4, 1, f) != 1 || fread(&n_chunk, 4, 1, f) != 1 || n_ctx < 4 || n_vocab < 2 || n_chunk < 1) {
        fprintf(stderr, "llama-kld: %s is not a llama-perplexity --kl-divergence-base file\n", argv[2]);
        return 1;
    }
    const int first = n_ctx / 2, nv = 2 * ((n_vocab + 1) / 2) + 4;
    int32_t *tokens = malloc((size_t)n_chunk * n_ctx * sizeof *tokens);
    uint16_t *lp = malloc((size_t)nv * sizeof *lp);
    double *ref = malloc((size_t)n_vocab * sizeof *ref), *mine = malloc((size_t)n_vocab * sizeof *mine);
    if (!tokens || !lp || !ref || !mine || fread(tokens, 4, (size_t)n_chunk * n_ctx, f) != (size_t)n_chunk * n_ctx) {
        fprintf(stderr, "llama-kld: %s: truncated\n", argv[2]);
        return 1;
    }
    moecl_model *m = NULL;
    moecl_context *ctx = NULL;
    if (moecl_model_load(argv[1], NULL, &m)) return fail("cannot load the model");
    moecl_model_info in;
    moecl_model_get_info(m, &in);
    if (in.n_vocab != n_vocab) {
        fprintf(stderr, "llama-kld: the model has %d tokens, the base file %d\n", in.n_vocab, n_vocab);
        return 1;
    }
    moecl_context_params cp = moecl_context_default_params();
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_batch = (uint32_t)n_ctx;
    cp.logits_all = true;
    cp.n_threads = argc > 3 && strcmp(argv[3], "--bos") ? atoi(argv[3]) : 0;
    cp.backend = MOECL_BACKEND_CPU;
    if (moecl_context_new(m, &cp, &ctx)) return fail("cannot create a context");
    const bool add_bos = !strcmp(argv[argc - 1], "--bos");

    double nll_mine = 0, kld = 0, kld_max = 0;
    long n = 0, same_top = 0;
    for (int c = 0; c < n_chunk; c++) {
        int32_t *tk = tokens + (size_t)c * n_ctx;
        const int32_t t0 = tk[0];
        if (add_bos && in.bos_id >= 0) tk[0] = in.bos_id;
        moecl_seq_truncate(ctx, -1, 0);
        if (moecl_decode(ctx, tk, n_ctx)) return fail("decode");
        tk[0] = t0;
        for (int i = first; i < n_ctx - 1; i++) {
            if (fread(lp, 2, (size_t)nv, f) != (size_t)nv) {
                fprintf(stderr, "llama-kld: %s: truncated at chunk %d\n", argv[2], c);
                return 1;
            }
            float scale, min_lp;
            memcpy(&scale, lp, 4);
            memcpy(&min_lp, lp + 2, 4);
            const float *lg = moecl_get_logits(ctx, i);
            double mx = lg[0], s = 0;
            for (int v = 1; v < n_vocab; v++) mx = lg[v] > mx ? lg[v] : mx;
            for (int v = 0; v < n_vocab; v++) s += exp(lg[v] - mx);
            const double lse = mx + log(s);
            int top_ref = 0, top_mine = 0;
            for (int v = 0; v < n_vocab; v++) {
                ref[v] = min_lp + scale * lp[4 + v];
                mine[v] = lg[v] - lse;
                if (ref[v] > ref[top_ref]) top_ref = v;
                if (mine[v] > mine[top_mine]) top_mine = v;
            }
            /* KL(p_ref || p_mine) over the tokens the base file resolves
             * (the rest share the floor: their mass is < e^-16 each). */
            double k = 0;
            for (int v = 0; v < n_vocab; v++)
                if (lp[4 + v]) k += exp(ref[v]) * (ref[v] - mine[v]);
            kld += k;
            kld_max = k > kld_max ? k : kld_max;
            same_top += top_ref == top_mine;
            nll_mine -= mine[tk[i + 1]];
            n++;
        }
    }
    printf("%s: %d chunks of %d, %ld positions scored\n", argv[1], n_chunk, n_ctx, n);
    /* llama.cpp's own is the "Final estimate" llama-perplexity printed: the
     * base file floors each log-probability 16 nats below the top one, so
     * it cannot give a random model's (whose tokens lie deep in the tail). */
    printf("PPL moecl %.4f over the same positions as llama-perplexity's estimate\n", exp(nll_mine / n));
    printf("KL divergence llama.cpp -> moecl: mean %.6f, max %.6f nats; same top token: %.2f%%\n", kld / n, kld_max,
           100.0 * same_top / n);
    moecl_context_free(ctx);
    moecl_model_free(m);
    free(tokens);
    free(lp);
    free(ref);
    free(mine);
    fclose(f);
    return 0;
}
