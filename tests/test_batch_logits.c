/*
 * test_batch_logits.c - a token's logits do not depend on the batch it is
 * computed in.
 *
 * usage: test_batch_logits DATA_DIR TMP_DIR
 *
 * The tiny-q model (every dimension a multiple of 256) is quantized to each
 * type moecl computes with (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K). The same 64-token
 * prompt is then decoded three ways: one token per call, 6 tokens per call,
 * and all 64 in one call (logits_all), and the logits of each position are
 * compared across the three, under every instruction set this CPU has
 * (MOECL_CPU_ISA: scalar, avx2, avxvnni, avx512, avx512vnni, auto) and with
 * 1 and 2 threads. Up to 64 rows (MC_QINT_T) quantized weights get the same
 * kernels at every batch size (int8 activations where there are int8
 * kernels, float tiles where there are not), so the logits must agree bit
 * for bit. Above 64, sgemm computes on the same 8-bit activations and only
 * the float summation order differs (test_kernels bounds that per product,
 * 1e-5); in a whole model such a difference can still flip a router's
 * near-tie and move later logits by the size of the activations' rounding,
 * so it is checked per product, not here.
 */
#include "backend/cpu/kernels.h"
#include "test_util.h"

#include "moecl.h"

#include <string.h>
#include <sys/stat.h>

enum { N_TOK = 64 };

/* Logits of every position of the prompt decoded `step` tokens per call,
 * into out[N_TOK][n_vocab]; false on failure. */
static bool decode_steps(moecl_model *m, const int32_t *toks, int step, int n_threads, float *out, int n_vocab) {
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_CPU;
    cp.n_ctx = 128;
    cp.n_batch = 128;
    cp.logits_all = true;
    cp.n_threads = n_threads;
    moecl_context *ctx = NULL;
    if (moecl_context_new(m, &cp, &ctx)) return false;
    bool ok = true;
    for (int p = 0; ok && p < N_TOK; p += step) {
        const int n = N_TOK - p < step ? N_TOK - p : step;
        ok = moecl_decode(ctx, toks + p, n) == MOECL_OK;
        for (int i = 0; ok && i < n; i++) {
            const float *l = moecl_get_logits(ctx, i);
            ok = l != NULL;
            if (ok) memcpy(out + (size_t)(p + i) * (size_t)n_vocab, l, (size_t)n_vocab * sizeof(float));
        }
    }
    if (!ok) fprintf(stderr, "  decode: %s\n", moecl_last_error());
    moecl_context_free(ctx);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_batch_logits DATA_DIR TMP_DIR\n");
        return 1;
    }
    mkdir(argv[2], 0755);
    char in[4096], out[4096];
    snprintf(in, sizeof in, "%s/tiny-q", argv[1]);
    static const char *const types[] = {"q8_0", "q4_0", "q4_K", "q5_K", "q6_K"};
    /* MOECL_CPU_ISA caps, and the int8 kernels each must give to count as present */
    static const char *const levels[][2] = {{"scalar", "none"},         {"avx2", "avx2"},
                                            {"avxvnni", "avxvnni"},     {"avx512", NULL},
                                            {"avx512vnni", "avx512vnni"}, {"neon", "neon"},
                                            {"dotprod", "dotprod"},     {"auto", NULL}};
    int32_t toks[N_TOK];
    for (int i = 0; i < N_TOK; i++) toks[i] = (int32_t)((i * 37 + 11) % 250) + 3;
    int compared = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++) {
        snprintf(out, sizeof out, "%s/tiny-q.%s.gguf", argv[2], types[ti]);
        moecl_quantize_params qp = moecl_quantize_default_params();
        qp.type = types[ti];
        qp.n_threads = 2;
        moecl_status st = moecl_quantize(in, out, &qp);
        CHECKF(st == MOECL_OK, "quantize %s: %s", types[ti], moecl_last_error());
        moecl_model *m = NULL;
        if (st || (st = moecl_model_load(out, NULL, &m))) {
            CHECKF(false, "load %s: %s", out, moecl_last_error());
            continue;
        }
        moecl_model_info info;
        moecl_model_get_info(m, &info);
        const size_t nv = (size_t)info.n_vocab, n = N_TOK * nv;
        float *one = malloc(n * sizeof *one), *six = malloc(n * sizeof *six), *all = malloc(n * sizeof *all);
        for (size_t li = 0; li < sizeof levels / sizeof *levels; li++) {
            setenv("MOECL_CPU_ISA", levels[li][0], 1);
            mc_cpu_force_scalar(false); /* detect again under the cap */
            if (levels[li][1] && strcmp(mc_cpu_int8_kernels(), levels[li][1]) != 0) continue; /* not on this CPU */
            if (!strcmp(levels[li][0], "avx512") && strcmp(mc_cpu_isa(), "avx512") != 0) continue;
            for (int nt = 1; nt <= 2; nt++) {
                bool ok = decode_steps(m, toks, 1, nt, one, info.n_vocab) &&
                          decode_steps(m, toks, 6, nt, six, info.n_vocab) &&
                          decode_steps(m, toks, N_TOK, nt, all, info.n_vocab);
                CHECKF(ok, "%s %s: decode failed", types[ti], levels[li][0]);
                if (!ok) continue;
                int diff6 = 0, diff64 = 0;
                double worst = 0, big = 0;
                for (size_t i = 0; i < n; i++) {
                    diff6 += memcmp(&one[i], &six[i], sizeof(float)) != 0;
                    diff64 += memcmp(&one[i], &all[i], sizeof(float)) != 0;
                    worst = fmax(worst, fmax(fabs((double)one[i] - six[i]), fabs((double)one[i] - all[i])));
                    big = fmax(big, fabs((double)one[i]));
                }
                CHECKF(diff6 == 0 && diff64 == 0,
                       "%s MOECL_CPU_ISA=%s (%s, int8 kernels %s) %d thread(s): logits differ from one token per call "
                       "in %d (6 per call) and %d (64 per call) of %zu values; worst %.3g of max %.3g",
                       types[ti], levels[li][0], mc_cpu_isa(), mc_cpu_int8_kernels(), nt, diff6, diff64, n, worst,
                       big);
                compared++;
            }
            fprintf(stderr, "  %-4s MOECL_CPU_ISA=%-10s (kernels %s, int8 %s): compared\n", types[ti], levels[li][0],
                    mc_cpu_isa(), mc_cpu_int8_kernels());
        }
        unsetenv("MOECL_CPU_ISA");
        mc_cpu_force_scalar(false);
        free(one);
        free(six);
        free(all);
        moecl_model_free(m);
        remove(out);
    }
    CHECKF(compared >= 2 * 2 * 5, "only %d comparisons ran", compared);
    return t_done("batch_logits");
}
