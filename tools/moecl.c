/*
 * moecl - the command-line tool. Each subcommand is also an example of the
 * library API (include/moecl.h); nothing here reaches inside the library.
 *
 *   moecl run      [-m PATH] [--tokens 1,2,3] [-n N] [sampling options] [-t N] [-c N] [--ids]
 *   moecl info     [-m PATH]
 *   moecl bench    [-m PATH] [-p 128] [-n 64] [-t N] [-r 3]
 *   moecl generate DIR [--preset mini|default|tiny] [--dtype f32|f16|bf16] [--seed S]
 */
#include "moecl.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MOECL_MODELS_DIR
#define MOECL_MODELS_DIR "models"
#endif

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int fail(const char *what, moecl_status st) {
    const char *msg = moecl_last_error();
    fprintf(stderr, "moecl: %s: %s%s%s\n", what, moecl_status_str(st), *msg ? ": " : "", msg);
    return 1;
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "moecl: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see 'moecl help')\n");
    return 2;
}

/* ------------------------------------------------------------------------ */
/* Options                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct options {
    const char *model;
    const char *prompt;
    const char *tokens;
    int n_predict;
    int n_threads;
    int n_ctx;
    int n_prompt;   /* bench */
    int reps;       /* bench */
    bool ids_json;
    bool verbose;
    moecl_sampler_params sp;
} options;

static bool parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

static bool parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

/* Returns 0 on success, 2 on a usage error. */
static int parse_options(int argc, char **argv, int first, bool bench, options *o) {
    o->sp = moecl_sampler_default_params();
    o->n_predict = 32;
    o->n_prompt = 128;
    o->reps = 3;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED() do { if (!v) return usage_error("option %s needs a value", a); i++; } while (0)
#define INT(dst, lo, hi) do { NEED(); if (!parse_int(v, lo, hi, &(dst))) return usage_error("bad number for %s", a); } while (0)
#define FLT(dst) do { NEED(); if (!parse_float(v, &(dst))) return usage_error("bad number for %s", a); } while (0)
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { NEED(); o->model = v; }
        else if ((!strcmp(a, "-p") || !strcmp(a, "--prompt")) && bench) INT(o->n_prompt, 1, 1 << 20);
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { NEED(); o->prompt = v; }
        else if (!strcmp(a, "--tokens")) { NEED(); o->tokens = v; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) INT(o->n_predict, 0, 1 << 20);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) INT(o->n_threads, 1, 1024);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) INT(o->n_ctx, 1, 1 << 24);
        else if (!strcmp(a, "-r") || !strcmp(a, "--repetitions")) INT(o->reps, 1, 1000);
        else if (!strcmp(a, "--seed")) { NEED(); o->sp.seed = strtoull(v, NULL, 0); }
        else if (!strcmp(a, "--temp")) FLT(o->sp.temperature);
        else if (!strcmp(a, "--top-k")) INT(o->sp.top_k, 0, INT_MAX);
        else if (!strcmp(a, "--top-p")) FLT(o->sp.top_p);
        else if (!strcmp(a, "--min-p")) FLT(o->sp.min_p);
        else if (!strcmp(a, "--repeat-penalty")) FLT(o->sp.repeat_penalty);
        else if (!strcmp(a, "--repeat-last-n")) INT(o->sp.repeat_last_n, 0, 1 << 20);
        else if (!strcmp(a, "--ids")) o->ids_json = true;
        else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) o->verbose = true;
        else return usage_error("unknown option %s", a);
#undef NEED
#undef INT
#undef FLT
    }
    if (o->verbose) moecl_log_set(NULL, MOECL_LOG_INFO, NULL);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Loading, with the default model and a progress bar                       */
/* ------------------------------------------------------------------------ */

static bool progress_bar(float f, void *user) {
    const char *what = user;
    int w = 40, n = (int)(f * (float)w + 0.5f);
    fprintf(stderr, "\r%s [", what);
    for (int i = 0; i < w; i++) fputc(i < n ? '#' : ' ', stderr);
    fprintf(stderr, "] %3d%%", (int)(f * 100.0f + 0.5f));
    if (f >= 1.0f) fputc('\n', stderr);
    return true;
}

/* The default model: random weights, written on first use. */
static moecl_random_model_params default_model_params(void) {
    moecl_random_model_params p = moecl_random_model_default_params();
    p.n_embd = 256;
    p.n_ff = 768;
    p.n_layer = 4;
    p.n_head = 8;
    p.n_head_kv = 2;
    p.seed = 1;
    return p;
}

static const char *resolve_model(const options *o, char *buf, size_t len) {
    if (o->model) return o->model;
    const char *env = getenv("MOECL_MODEL");
    if (env && *env) return env;
    snprintf(buf, len, "%s/default", MOECL_MODELS_DIR);
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/model.safetensors", buf);
    struct stat sb;
    if (stat(probe, &sb) != 0) {
        fprintf(stderr, "moecl: writing the default model (RANDOM weights, output is noise) to %s\n", buf);
        moecl_random_model_params p = default_model_params();
        moecl_status st = moecl_random_model_write(buf, &p, isatty(2) ? progress_bar : NULL, "writing");
        if (st) {
            fail("cannot write the default model", st);
            return NULL;
        }
    }
    return buf;
}

static int load_model(const options *o, moecl_model **model, double *seconds) {
    char buf[4096];
    const char *path = resolve_model(o, buf, sizeof buf);
    if (!path) return 1;
    moecl_model_params mp = moecl_model_default_params();
    if (isatty(2)) {
        mp.progress = progress_bar;
        mp.progress_user_data = "loading";
    }
    double t0 = now_s();
    moecl_status st = moecl_model_load(path, &mp, model);
    if (seconds) *seconds = now_s() - t0;
    if (st) return fail("cannot load the model", st);
    return 0;
}

static int parse_token_list(const char *s, int32_t **out, int *n) {
    int cap = 16, cnt = 0;
    int32_t *v = malloc((size_t)cap * sizeof *v);
    if (!v) return 1;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < INT32_MIN || x > INT32_MAX) {
            free(v);
            return usage_error("bad token list '%s' (expected comma-separated ids)", s);
        }
        if (cnt == cap) {
            int32_t *nv = realloc(v, (size_t)(cap *= 2) * sizeof *v);
            if (!nv) { free(v); return 1; }
            v = nv;
        }
        v[cnt++] = (int32_t)x;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
    *out = v;
    *n = cnt;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* run                                                                      */
/* ------------------------------------------------------------------------ */

static int cmd_run(const options *o) {
    if (o->prompt)
        return usage_error("%s", "text prompts need the model's tokenizer, which this build cannot read yet; "
                                 "give token ids with --tokens 1,2,3");
    moecl_model *model = NULL;
    moecl_context *ctx = NULL;
    moecl_sampler *smpl = NULL;
    int32_t *prompt = NULL, *out_ids = NULL;
    int n_prompt = 0, rc = 1;
    double t_load;
    if ((rc = load_model(o, &model, &t_load))) return rc;
    rc = 1;
    moecl_model_info info;
    moecl_model_get_info(model, &info);

    if (o->tokens) {
        if ((rc = parse_token_list(o->tokens, &prompt, &n_prompt))) goto done;
        rc = 1;
    } else {
        prompt = malloc(sizeof *prompt);
        if (!prompt) goto done;
        prompt[0] = info.bos_id >= 0 ? info.bos_id : 0;
        n_prompt = 1;
    }
    if (n_prompt == 0) {
        rc = usage_error("%s", "the prompt is empty");
        goto done;
    }

    moecl_context_params cp = moecl_context_default_params();
    cp.n_threads = o->n_threads;
    cp.n_ctx = (uint32_t)o->n_ctx;
    if (!cp.n_ctx) {
        int want = n_prompt + o->n_predict;
        cp.n_ctx = (uint32_t)(want < info.n_ctx_train ? want : info.n_ctx_train);
    }
    cp.n_batch = (uint32_t)n_prompt;
    moecl_status st = moecl_context_new(model, &cp, &ctx);
    if (st) { fail("cannot create a context", st); goto done; }
    if ((st = moecl_sampler_new(&o->sp, &smpl))) { fail("cannot create a sampler", st); goto done; }
    for (int i = 0; i < n_prompt; i++) moecl_sampler_accept(smpl, prompt[i]);

    double t0 = now_s();
    if ((st = moecl_decode(ctx, prompt, n_prompt))) { fail("prompt", st); goto done; }
    double t_prompt = now_s() - t0;

    out_ids = malloc(((size_t)o->n_predict + 1) * sizeof *out_ids);
    if (!out_ids) goto done;
    int n_gen = 0;
    t0 = now_s();
    while (n_gen < o->n_predict) {
        int32_t tok;
        if ((st = moecl_sampler_sample(smpl, moecl_get_logits(ctx, -1), info.n_vocab, &tok))) {
            fail("sampling", st);
            goto done;
        }
        out_ids[n_gen++] = tok;
        if (!o->ids_json) {
            printf("%s%d", n_gen > 1 ? " " : "", tok);
            fflush(stdout);
        }
        if (tok == info.eos_id || n_gen == o->n_predict) break;
        if ((st = moecl_decode(ctx, &tok, 1))) { fail("decode", st); goto done; }
    }
    double t_gen = now_s() - t0;
    if (o->ids_json) {
        printf("[");
        for (int i = 0; i < n_gen; i++) printf("%s%d", i ? ", " : "", out_ids[i]);
        printf("]");
    }
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "load: %.2f s | prompt: %d tokens, %.1f tokens/s | generation: %d tokens, %.2f tokens/s\n",
            t_load, n_prompt, n_prompt / t_prompt, n_gen, n_gen > 1 ? (n_gen - 1) / t_gen : 0.0);
    rc = 0;
done:
    free(prompt);
    free(out_ids);
    moecl_sampler_free(smpl);
    moecl_context_free(ctx);
    moecl_model_free(model);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* info                                                                     */
/* ------------------------------------------------------------------------ */

static void print_count(const char *label, uint64_t n) {
    printf("%-22s %llu (%.2f B)\n", label, (unsigned long long)n, (double)n / 1e9);
}

static int cmd_info(const options *o) {
    moecl_model *model = NULL;
    int rc = load_model(o, &model, NULL);
    if (rc) return rc;
    moecl_model_info in;
    moecl_model_get_info(model, &in);
    printf("%-22s %s\n", "architecture", in.architecture);
    printf("%-22s %d\n", "layers", in.n_layer);
    printf("%-22s %d\n", "hidden size", in.n_embd);
    printf("%-22s %d\n", "expert hidden size", in.n_ff);
    printf("%-22s %d (head dim %d)\n", "attention heads", in.n_head, in.head_dim);
    printf("%-22s %d\n", "key/value heads", in.n_head_kv);
    printf("%-22s %d, top-%d per token\n", "experts", in.n_expert, in.n_expert_used);
    printf("%-22s %d\n", "vocabulary", in.n_vocab);
    printf("%-22s %d\n", "trained context", in.n_ctx_train);
    if (in.sliding_window) printf("%-22s %d\n", "sliding window", in.sliding_window);
    printf("%-22s %g\n", "rope theta", (double)in.rope_theta);
    printf("%-22s %g\n", "rms norm eps", (double)in.rms_norm_eps);
    printf("%-22s bos %d, eos %d\n", "special tokens", in.bos_id, in.eos_id);
    print_count("parameters", in.n_params);
    print_count("active per token", in.n_params_active);
    for (int d = 0; d < MOECL_DTYPE_COUNT; d++)
        if (in.bytes_by_dtype[d])
            printf("%-22s %.1f MiB\n", d == 0 ? "bytes in f32" : d == 1 ? "bytes in f16" : "bytes in bf16",
                   (double)in.bytes_by_dtype[d] / 1048576.0);
    moecl_model_free(model);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* bench                                                                    */
/* ------------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int cmd_bench(const options *o) {
    moecl_model *model = NULL;
    moecl_context *ctx = NULL;
    int rc = load_model(o, &model, NULL);
    if (rc) return rc;
    rc = 1;
    moecl_model_info in;
    moecl_model_get_info(model, &in);
    const int np = o->n_prompt, ng = o->n_predict;
    int32_t *toks = malloc((size_t)(np > 1 ? np : 1) * sizeof *toks);
    double *pp = calloc((size_t)o->reps, sizeof(double)), *tg = calloc((size_t)o->reps, sizeof(double));
    if (!toks || !pp || !tg) goto done;
    uint64_t s = 12345;
    for (int i = 0; i < np; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        toks[i] = (int32_t)((s >> 33) % (uint64_t)in.n_vocab);
    }
    moecl_context_params cp = moecl_context_default_params();
    cp.n_threads = o->n_threads;
    cp.n_ctx = (uint32_t)(np + ng + 1);
    cp.n_batch = (uint32_t)np;
    moecl_status st = moecl_context_new(model, &cp, &ctx);
    if (st) { fail("cannot create a context", st); goto done; }

    /* Warm-up: fault the mapped weights in and size the scratch buffers. */
    if ((st = moecl_decode(ctx, toks, np))) { fail("decode", st); goto done; }
    for (int r = 0; r < o->reps; r++) {
        moecl_seq_truncate(ctx, -1, 0);
        double t0 = now_s();
        if ((st = moecl_decode(ctx, toks, np))) { fail("decode", st); goto done; }
        pp[r] = np / (now_s() - t0);
        int32_t tok = toks[np - 1];
        t0 = now_s();
        for (int i = 0; i < ng; i++)
            if ((st = moecl_decode(ctx, &tok, 1))) { fail("decode", st); goto done; }
        tg[r] = ng / (now_s() - t0);
    }
    qsort(pp, (size_t)o->reps, sizeof(double), cmp_double);
    qsort(tg, (size_t)o->reps, sizeof(double), cmp_double);

    /* Weight bytes one generated token reads: everything but the experts and
     * the embedding table, plus top-k experts per layer. */
    uint64_t total = 0;
    for (int d = 0; d < MOECL_DTYPE_COUNT; d++) total += in.bytes_by_dtype[d];
    double bpp = (double)total / (double)in.n_params; /* bytes per parameter */
    double active = (double)(in.n_params_active - (uint64_t)in.n_vocab * in.n_embd) * bpp;
    printf("model: %d layers, %d experts top-%d, %.2f GB of weights, %.1f MB read per generated token\n",
           in.n_layer, in.n_expert, in.n_expert_used, (double)total / 1e9, active / 1e6);
    printf("pp%d: %.2f tokens/s (median of %d)\n", np, pp[o->reps / 2], o->reps);
    printf("tg%d: %.2f tokens/s (median of %d), %.2f GB/s of weights read\n", ng, tg[o->reps / 2], o->reps,
           tg[o->reps / 2] * active / 1e9);
    rc = 0;
done:
    free(toks);
    free(pp);
    free(tg);
    moecl_context_free(ctx);
    moecl_model_free(model);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* generate                                                                 */
/* ------------------------------------------------------------------------ */

static int cmd_generate(int argc, char **argv) {
    if (argc < 3) return usage_error("%s", "generate needs an output directory");
    const char *dir = argv[2];
    moecl_random_model_params p = moecl_random_model_default_params();
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage_error("option %s needs a value", a);
        i++;
        int x;
        if (!strcmp(a, "--preset")) {
            if (!strcmp(v, "mini")) p = moecl_random_model_default_params();
            else if (!strcmp(v, "default")) p = default_model_params();
            else if (!strcmp(v, "tiny")) {
                p.n_vocab = 256; p.n_embd = 64; p.n_ff = 128; p.n_layer = 2; p.n_head = 4; p.n_head_kv = 2;
                p.n_expert = 4;
            } else return usage_error("unknown preset %s (mini, default, tiny)", v);
        } else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "f32")) p.dtype = MOECL_DTYPE_F32;
            else if (!strcmp(v, "f16")) p.dtype = MOECL_DTYPE_F16;
            else if (!strcmp(v, "bf16")) p.dtype = MOECL_DTYPE_BF16;
            else return usage_error("unknown dtype %s (f32, f16, bf16)", v);
        } else if (!strcmp(a, "--seed")) p.seed = strtoull(v, NULL, 0);
        else if (!parse_int(v, 1, 1 << 24, &x)) return usage_error("bad number for %s", a);
        else if (!strcmp(a, "--vocab")) p.n_vocab = x;
        else if (!strcmp(a, "--hidden")) p.n_embd = x;
        else if (!strcmp(a, "--ff")) p.n_ff = x;
        else if (!strcmp(a, "--layers")) p.n_layer = x;
        else if (!strcmp(a, "--heads")) p.n_head = x;
        else if (!strcmp(a, "--kv-heads")) p.n_head_kv = x;
        else if (!strcmp(a, "--head-dim")) p.head_dim = x;
        else if (!strcmp(a, "--experts")) p.n_expert = x;
        else if (!strcmp(a, "--top-k")) p.n_expert_used = x;
        else return usage_error("unknown option %s", a);
    }
    double t0 = now_s();
    moecl_status st = moecl_random_model_write(dir, &p, isatty(2) ? progress_bar : NULL, "writing");
    if (st) return fail("generate", st);
    fprintf(stderr, "wrote %s (random weights, %s) in %.1f s\n", dir, moecl_dtype_name(p.dtype), now_s() - t0);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* OpenBLAS kernels                                                         */
/* ------------------------------------------------------------------------ */

/* OpenBLAS picks its kernels when it is loaded, from the CPU it recognises;
 * a CPU newer than the OpenBLAS build falls back to the generic "Prescott"
 * kernels, several times slower. The choice can only be overridden through
 * OPENBLAS_CORETYPE before the library loads, so the tool sets it and starts
 * itself again, once, when the CPU has the instructions the faster kernels
 * need. An explicit OPENBLAS_CORETYPE is always respected. */
char *openblas_get_corename(void);

static void ensure_fast_blas(char **argv) {
#if defined(__x86_64__) && defined(__linux__)
    if (getenv("OPENBLAS_CORETYPE") || getenv("MOECL_BLAS_REEXEC")) return;
    const char *core = openblas_get_corename();
    if (!core || (strcmp(core, "Prescott") && strcmp(core, "Core2") && strcmp(core, "Nehalem") &&
                  strcmp(core, "Katmai") && strcmp(core, "Northwood") && strcmp(core, "Banias")))
        return;
    __builtin_cpu_init();
    const char *want = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512cd"))
        want = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        want = "Haswell";
    if (!want) return;
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("MOECL_BLAS_REEXEC", "1", 1);
    execv("/proc/self/exe", argv); /* returns only on failure: carry on with what we have */
    unsetenv("OPENBLAS_CORETYPE");
#else
    (void)argv;
#endif
}

/* ------------------------------------------------------------------------ */

static void help(void) {
    printf("moecl %s - Mixture-of-Experts inference\n\n"
           "usage:\n"
           "  moecl run      [-m PATH] [--tokens 1,2,3] [-n N] [--seed S] [--temp T] [--top-k K] [--top-p P]\n"
           "                 [--min-p P] [--repeat-penalty R] [-t THREADS] [-c CTX] [--ids] [-v]\n"
           "  moecl info     [-m PATH]\n"
           "  moecl bench    [-m PATH] [-p 128] [-n 64] [-t THREADS] [-r REPS]\n"
           "  moecl generate DIR [--preset mini|default|tiny] [--dtype f32|f16|bf16] [--seed S]\n"
           "                 [--vocab N --hidden N --ff N --layers N --heads N --kv-heads N --head-dim N\n"
           "                  --experts N --top-k N]\n\n"
           "PATH is a Hugging Face model directory. Without -m: $MOECL_MODEL, else the default model\n"
           "(random weights) in %s/default, written on first use.\n",
           moecl_version(), MOECL_MODELS_DIR);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        help();
        return argc < 2 ? 2 : 0;
    }
    ensure_fast_blas(argv);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "generate")) return cmd_generate(argc, argv);
    options o = {0};
    int rc = parse_options(argc, argv, 2, !strcmp(cmd, "bench"), &o);
    if (rc) return rc;
    if (!strcmp(cmd, "run")) return cmd_run(&o);
    if (!strcmp(cmd, "info")) return cmd_info(&o);
    if (!strcmp(cmd, "bench")) return cmd_bench(&o);
    return usage_error("unknown command '%s'", cmd);
}
