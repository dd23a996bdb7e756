/*
 * moecl - the command-line tool. Each subcommand is also an example of the
 * library API (include/moecl.h); nothing here reaches inside the library but
 * the GGUF dump of `info`.
 *
 *   moecl run      [-m PATH] [-p TEXT | -f FILE | --tokens 1,2,3] [-n N] [sampling options] [-t N] [-c N] [--ids]
 *   moecl tokenize   [-m PATH] [--no-bos] [--special] (-p TEXT | -f FILE)
 *   moecl detokenize [-m PATH] [--special] IDS...
 *   moecl chat     [-m PATH] [--system TEXT] [-n N] [sampling options] [-t N] [-c N]
 *   moecl info     [-m PATH] [backend options]
 *   moecl devices
 *   moecl bench    [-m PATH] [-p 128] [-n 64] [-t N] [-r 3]
 *   moecl generate DIR [--preset mini|default|tiny|qwen3-laptop] [--arch A] [--dtype f32|f16|bf16] [--seed S]
 *   moecl serve    -m PATH [--host H] [--port P] [--parallel N] [-c N] [--api-key KEY]   (tools/serve.c)
 */
#include "moecl.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "backend/cpu/kernels.h" /* mc_cpu_isa, for 'moecl info' */
#include "formats/atomic_file.h" /* internal: the one way moecl writes files */
#include "cli.h"
#include "cli_backend.h"
#include "gguf_dump.h"
#include <signal.h>
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
    const char *prompt_file;
    int n_predict;
    int n_threads;
    int n_ctx;
    int n_prompt;   /* bench */
    int reps;       /* bench */
    int depth;      /* bench: generation starts after this many prompt tokens; -1: the whole prompt */
    bool ids_json;
    bool no_bos;        /* tokenize, run: no BOS */
    bool parse_special; /* tokenize, run: "<s>" in the text is the special token */
    bool time_it;       /* tokenize: measure encoding throughput instead of printing ids */
    bool chat;          /* run: the prompt is one user message in the Mixtral-Instruct format */
    const char *system; /* run --chat, chat: a system message */
    const char *chat_format; /* run --chat, chat: NULL: the one the tokenizer's chat template is */
    bool verbose;
    moecl_sampler_params sp;
    cli_backend be;     /* backends, placement, KV cache (shared with serve) */
} options;

/* The routing frequencies the planner places by, loaded with the model from
 * --expert-profile or measured by --calibrate; NULL: uniform (K/E). */
static float *g_expert_freq;

/* The calibration text is read whole; a bound keeps a wrong path (a model
 * file, a device) from filling memory. */
#define CALIBRATE_MAX_BYTES (64u << 20)
/* Tokens routed for a calibration: enough for stable frequencies (the
 * frequencies of 8 experts settle within a percent after a few thousand
 * tokens), few enough to finish in seconds on a laptop. */
#define CALIBRATE_MAX_TOKENS 8192
#define CALIBRATE_CHUNK 512

/* --calibrate: route the text through model on the CPU with the routing
 * counters on, tokenized and in chunks of CALIBRATE_CHUNK tokens (each a
 * fresh sequence) as moecl stats does by default, and set freq[l * E + e] to the share of
 * tokens routed to expert e of layer l. */
static moecl_status calibrate_freq(const moecl_model *model, const char *path, int n_threads, float *freq) {
    char *text;
    size_t len;
    moecl_status st = cli_read_text("moecl: --calibrate", path, CALIBRATE_MAX_BYTES, &text, &len);
    if (st) return st;
    if (len == 0) {
        fprintf(stderr, "moecl: --calibrate: %s is empty\n", path);
        free(text);
        return MOECL_ERR_INVALID_ARG;
    }
    const moecl_tokenizer *tok = moecl_model_get_tokenizer(model);
    if (!tok) {
        fprintf(stderr, "moecl: --calibrate: the model has no tokenizer\n");
        free(text);
        return MOECL_ERR_INVALID_ARG;
    }
    int32_t n = 0;
    st = moecl_tokenize(tok, text, len, 0, NULL, 0, &n);
    int32_t *ids = st == MOECL_OK ? malloc((size_t)(n > 0 ? n : 1) * sizeof *ids) : NULL;
    if (st == MOECL_OK && !ids) st = MOECL_ERR_NOMEM;
    if (st == MOECL_OK) st = moecl_tokenize(tok, text, len, 0, ids, n, &n);
    free(text);
    if (st) {
        free(ids);
        return st;
    }
    if (n > CALIBRATE_MAX_TOKENS) n = CALIBRATE_MAX_TOKENS;
    moecl_model_info in;
    moecl_model_get_info(model, &in);
    const size_t cells = (size_t)in.n_layer * (size_t)in.n_expert;
    const int32_t chunk = in.n_ctx_train > 0 && in.n_ctx_train < CALIBRATE_CHUNK ? in.n_ctx_train : CALIBRATE_CHUNK;
    moecl_context_params cp = moecl_context_default_params();
    cp.n_threads = n_threads;
    cp.backend = MOECL_BACKEND_CPU;
    cp.n_ctx = (uint32_t)chunk;
    cp.n_batch = (uint32_t)chunk;
    moecl_context *ctx = NULL;
    uint64_t *counts = calloc(cells, sizeof *counts);
    st = counts ? moecl_context_new(model, &cp, &ctx) : MOECL_ERR_NOMEM;
    if (st == MOECL_OK) st = moecl_context_set_routing_counters(ctx, true);
    for (int32_t at = 0; st == MOECL_OK && at < n; at += chunk) {
        const int32_t len_chunk = n - at < chunk ? n - at : chunk;
        st = moecl_seq_truncate(ctx, 0, 0);
        if (st == MOECL_OK) st = moecl_decode(ctx, ids + at, len_chunk);
    }
    if (st == MOECL_OK) st = moecl_context_get_routing_counts(ctx, counts, NULL, cells);
    if (st == MOECL_OK)
        for (size_t i = 0; i < cells; i++) freq[i] = (float)((double)counts[i] / (double)n);
    if (st == MOECL_OK) fprintf(stderr, "moecl: calibrated expert frequencies on %d tokens of %s\n", n, path);
    moecl_context_free(ctx);
    free(counts);
    free(ids);
    return st;
}

/* A number out of range: say what is allowed (for -c, the library's limit). */
static int bad_number(const char *opt, const char *v, long lo, long hi) {
    fprintf(stderr, "moecl: option %s: '%s' is not a whole number from %ld to %ld%s\n(see 'moecl help')\n", opt, v,
            lo, hi,
            !strcmp(opt, "-c") || !strcmp(opt, "--ctx-size") ? " (the library's limit on positions, MOECL_MAX_CTX)"
                                                              : "");
    return 2;
}

/* --calibrate for the commands in other files (cli_backend.c). */
moecl_status cli_calibrate_freq(const moecl_model *model, const char *path, int n_threads, float *freq) {
    return calibrate_freq(model, path, n_threads, freq);
}

/* Returns 0 on success, 2 on a usage error. */
static int parse_options(int argc, char **argv, int first, bool bench, options *o) {
    o->sp = moecl_sampler_default_params();
    cli_backend_init(&o->be);
    o->n_predict = 32;
    o->n_prompt = 128;
    o->reps = 3;
    o->depth = -1;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char err[256];
        const int used = cli_backend_option(&o->be, a, v, err, sizeof err);
        if (used < 0) return usage_error("%s", err);
        if (used) {
            i += used - 1;
            continue;
        }
#define NEED() do { if (!v) return usage_error("option %s needs a value", a); i++; } while (0)
#define INT(dst, lo, hi) do { NEED(); if (!cli_parse_int(v, lo, hi, &(dst))) return bad_number(a, v, lo, hi); } while (0)
#define FLT(dst) do { NEED(); if (!cli_parse_float(v, &(dst))) return usage_error("bad number for %s", a); } while (0)
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { NEED(); o->model = v; }
        else if ((!strcmp(a, "-p") || !strcmp(a, "--prompt")) && bench) INT(o->n_prompt, 1, 1 << 20);
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { NEED(); o->prompt = v; }
        else if (!strcmp(a, "--tokens")) { NEED(); o->tokens = v; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { NEED(); o->prompt_file = v; }
        else if (!strcmp(a, "--no-bos")) o->no_bos = true;
        else if (!strcmp(a, "--special")) o->parse_special = true;
        else if (!strcmp(a, "--time")) o->time_it = true;
        else if (!strcmp(a, "--chat")) o->chat = true;
        else if (!strcmp(a, "--system")) { NEED(); o->system = v; }
        else if (!strcmp(a, "--chat-format")) { NEED(); o->chat_format = v; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) INT(o->n_predict, 0, 1 << 20);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) INT(o->n_threads, 1, 1024);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) INT(o->n_ctx, 1, (long)MOECL_MAX_CTX);
        else if (!strcmp(a, "-r") || !strcmp(a, "--repetitions")) INT(o->reps, 1, 1000);
        else if ((!strcmp(a, "-d") || !strcmp(a, "--depth")) && bench) INT(o->depth, 0, 1 << 20);
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

/* Shape of `moecl generate --preset default`: a small random model for benchmarks
 * (the default model itself is the trained one committed in models/default). */
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

/* Without -m: $MOECL_MODEL, else the small trained model committed in
 * models/default (tools/train_moe.py, models/README.md). */
static const char *resolve_model(const options *o, char *buf, size_t len) {
    if (o->model) return o->model;
    const char *env = getenv("MOECL_MODEL");
    if (env && *env) return env;
    snprintf(buf, len, "%s/default", MOECL_MODELS_DIR);
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/model.safetensors", buf);
    struct stat sb;
    if (stat(probe, &sb) != 0) {
        fprintf(stderr, "moecl: the default model %s is missing (it is committed with the repository): "
                "give -m PATH or set MOECL_MODEL\n", probe);
        return NULL;
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
    if (!g_expert_freq && (st = cli_backend_load_freq(&o->be, *model, o->n_threads, &g_expert_freq))) {
        moecl_model_free(*model);
        *model = NULL;
        if (st == MOECL_ERR_INVALID_ARG && o->be.expert_profile && o->be.calibrate) return 2;
        return fail(o->be.expert_profile ? "cannot use the expert profile" : "cannot calibrate the expert frequencies", st);
    }
    return 0;
}

/* For subcommands in other files (tools/stats.c): see cli.h. */
int cli_load_model(const char *path, moecl_model **model, char *resolved, size_t len) {
    options o = {0};
    o.model = path;
    char buf[4096];
    const char *p = resolve_model(&o, buf, sizeof buf);
    if (!p) return 1;
    snprintf(resolved, len, "%s", p);
    o.model = p;
    return load_model(&o, model, NULL);
}

static int parse_token_list(const char *s, int32_t **out, int *n) {
    moecl_status st = cli_parse_ids(s, INT32_MIN, INT32_MAX, out, n);
    if (st == MOECL_ERR_INVALID_ARG) return usage_error("bad token list '%s' (expected comma-separated ids)", s);
    return st ? 1 : 0;
}

/* ------------------------------------------------------------------------ */
/* Text: prompts, tokenize, detokenize                                      */
/* ------------------------------------------------------------------------ */

/* The prompt text of -p or -f (*text malloc'd, may hold NUL bytes). */
static int read_prompt(const options *o, char **text, size_t *len) {
    if (o->prompt && o->prompt_file) return usage_error("%s", "give -p TEXT or -f FILE, not both");
    if (o->prompt) {
        *len = strlen(o->prompt);
        *text = malloc(*len + 1);
        if (!*text) return 1;
        memcpy(*text, o->prompt, *len + 1);
        return 0;
    }
    return cli_read_text("moecl", o->prompt_file, CLI_TEXT_MAX_BYTES, text, len) ? 1 : 0;
}

static uint32_t tokenize_flags(const options *o) {
    return (o->no_bos ? MOECL_TOKENIZE_NO_BOS : 0) | (o->parse_special ? MOECL_TOKENIZE_PARSE_SPECIAL : 0);
}

/* Tokenize into a malloc'd array: ask for the count, then fill. */
static int tokenize_alloc(const moecl_tokenizer *tok, const char *text, size_t len, uint32_t flags, int32_t **ids,
                          int *n) {
    int32_t cnt = 0;
    moecl_status st = moecl_tokenize(tok, text, len, flags, NULL, 0, &cnt);
    if (st) return fail("tokenize", st);
    *ids = malloc(((size_t)cnt + 1) * sizeof **ids);
    if (!*ids) return 1;
    if ((st = moecl_tokenize(tok, text, len, flags, *ids, cnt, &cnt))) {
        free(*ids);
        *ids = NULL;
        return fail("tokenize", st);
    }
    *n = cnt;
    return 0;
}

/* One user message (after an optional system message) in the chat format
 * named (NULL: the one the tokenizer's template is). */
static int chat_tokenize_alloc(const moecl_tokenizer *tok, const char *format, const char *system, const char *user,
                               uint32_t flags, int32_t **ids, int *n) {
    moecl_chat_message m[2] = {{"system", system}, {"user", user}};
    const moecl_chat_message *msgs = system ? m : m + 1;
    int32_t nm = system ? 2 : 1, cnt = 0;
    moecl_status st = moecl_chat_tokenize_format(tok, format, msgs, nm, flags, NULL, 0, &cnt);
    if (st) return fail("chat", st);
    if (!(*ids = malloc(((size_t)cnt + 1) * sizeof **ids))) return 1;
    if ((st = moecl_chat_tokenize_format(tok, format, msgs, nm, flags, *ids, cnt, &cnt))) {
        free(*ids);
        *ids = NULL;
        return fail("chat", st);
    }
    *n = cnt;
    return 0;
}

/* A tokenizer alone: -m is a directory or a tokenizer.json; without it the
 * default model's, which is models/tokenizer.json. */
static int load_tokenizer(const options *o, moecl_tokenizer **tok) {
    const char *path = o->model ? o->model : getenv("MOECL_MODEL");
    char buf[4200];
    if (!path || !*path) {
        snprintf(buf, sizeof buf, "%s/tokenizer.json", MOECL_MODELS_DIR);
        path = buf;
    }
    moecl_status st = moecl_tokenizer_load(path, tok);
    return st ? fail("cannot load the tokenizer", st) : 0;
}

/* Encoding throughput on prefixes of the text (10 kB, 100 kB, ... and the
 * whole), one thread, best of 5: time per byte should stay flat. A prefix
 * is cut back to a character boundary. */
static int time_tokenize(const moecl_tokenizer *tok, const char *text, size_t len, uint32_t flags) {
    int32_t *ids = malloc((len + 2) * sizeof *ids);
    if (!ids) return 1;
    for (size_t want = 10000;; want *= 10) {
        size_t n = want < len ? want : len;
        while (n < len && ((uint8_t)text[n] & 0xC0) == 0x80) n--;
        double best = 1e30;
        int32_t cnt = 0;
        for (int r = 0; r < 5; r++) {
            double t0 = now_s();
            moecl_status st = moecl_tokenize(tok, text, n, flags, ids, (int32_t)(len + 2), &cnt);
            double t = now_s() - t0;
            if (st) { free(ids); return fail("tokenize", st); }
            if (t < best) best = t;
        }
        printf("%9zu bytes -> %8d tokens: %8.3f ms, %6.2f MB/s, %6.1f ns/byte\n", n, cnt, best * 1e3,
               (double)n / best / 1e6, best * 1e9 / (double)n);
        if (n == len) break;
    }
    free(ids);
    return 0;
}

static int cmd_tokenize(const options *o) {
    if (!o->prompt && !o->prompt_file) return usage_error("%s", "tokenize needs -p TEXT or -f FILE");
    char *text = NULL;
    int32_t *ids = NULL;
    int n = 0;
    moecl_tokenizer *tok = NULL;
    size_t len = 0;
    int rc = read_prompt(o, &text, &len);
    if (!rc) rc = load_tokenizer(o, &tok);
    if (!rc && o->time_it) rc = time_tokenize(tok, text, len, tokenize_flags(o));
    else if (!rc && o->chat) rc = chat_tokenize_alloc(tok, o->chat_format, o->system, text, 0, &ids, &n);
    else if (!rc) rc = tokenize_alloc(tok, text, len, tokenize_flags(o), &ids, &n);
    if (!rc && !o->time_it) {
        putchar('[');
        for (int i = 0; i < n; i++) printf("%s%d", i ? ", " : "", ids[i]);
        printf("]\n");
    }
    free(text);
    free(ids);
    moecl_tokenizer_free(tok);
    return rc;
}

/* detokenize [-m PATH] [--special] IDS... (ids as separate arguments or comma-separated). */
static int cmd_detokenize(int argc, char **argv) {
    options o = {0};
    int32_t *ids = NULL;
    int n = 0, rc = 0;
    bool skip_special = true;
    for (int i = 2; i < argc && !rc; i++) {
        if (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) {
            if (i + 1 >= argc) return usage_error("option %s needs a value", argv[i]);
            o.model = argv[++i];
        } else if (!strcmp(argv[i], "--special")) {
            skip_special = false;
        } else {
            int32_t *more;
            int k;
            if ((rc = parse_token_list(argv[i], &more, &k))) break;
            int32_t *all = realloc(ids, ((size_t)n + (size_t)k + 1) * sizeof *all);
            if (!all) { free(more); rc = 1; break; }
            ids = all;
            memcpy(ids + n, more, (size_t)k * sizeof *ids);
            n += k;
            free(more);
        }
    }
    moecl_tokenizer *tok = NULL;
    char *text = NULL;
    if (!rc) rc = load_tokenizer(&o, &tok);
    if (!rc) {
        uint32_t flags = skip_special ? MOECL_DETOKENIZE_SKIP_SPECIAL : 0;
        size_t len = 0;
        moecl_status st = moecl_detokenize(tok, ids, n, flags, NULL, 0, &len);
        if (!st && !(text = malloc(len + 1))) st = MOECL_ERR_NOMEM;
        if (!st) st = moecl_detokenize(tok, ids, n, flags, text, len + 1, &len);
        if (st) rc = fail("detokenize", st);
        else {
            fwrite(text, 1, len, stdout);
            putchar('\n');
        }
    }
    free(ids);
    free(text);
    moecl_tokenizer_free(tok);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Backends                                                                 */
/* ------------------------------------------------------------------------ */

static moecl_context_params context_params(const options *o) {
    moecl_context_params cp = moecl_context_default_params();
    cp.n_threads = o->n_threads;
    cli_backend_apply(&o->be, g_expert_freq, &cp);
    return cp;
}

/* Where the experts of ctx live, one line per layer ("G" device, "c" CPU). */
static void print_placement(FILE *f, const moecl_context *ctx, const moecl_model_info *in) {
    moecl_context_backend_info bi;
    if (moecl_context_get_backend_info(ctx, &bi) != MOECL_OK) return;
    moecl_placement_info pi;
    moecl_context_get_placement(ctx, &pi);
    if (pi.dense_device)
        fprintf(f, "%-22s on %s (%.1f MiB: weights, KV cache, activations)\n", "dense layers", pi.device[0].name,
                (double)pi.dense_bytes / 1048576.0);
    else
        fprintf(f, "%-22s on the host\n", "dense layers");
    if (bi.n_expert_device == 0 && !pi.dense_device) {
        fprintf(f, "%-22s all %d on the CPU\n", "experts placed", bi.n_expert_cpu);
        return;
    }
    if (pi.n_device <= 1)
        fprintf(f, "%-22s %d on %s (%.1f MiB, %s), %d on the CPU\n", "experts placed", bi.n_expert_device, bi.device,
                (double)bi.device_bytes / 1048576.0, moecl_dtype_name(bi.device_dtype), bi.n_expert_cpu);
    else
        fprintf(f, "%-22s %d on %d devices (%.1f MiB, %s), %d on the CPU\n", "experts placed", bi.n_expert_device,
                pi.n_device, (double)bi.device_bytes / 1048576.0, moecl_dtype_name(bi.device_dtype), bi.n_expert_cpu);
    fprintf(f, "%-22s by %s\n", "placement plan",
            pi.profiled ? "the expert profile, hottest first" : "uniform frequencies (no profile), layers in turn");
    for (int d = 0; d < pi.n_device; d++)
        fprintf(f, "  device %d %-13s %d experts, %.1f of %.1f MiB, reads %.1f GB/s, round trip %.0f us, "
                   "%.3g MB/token\n",
                d + 1, pi.device[d].name, pi.device[d].n_expert, (double)pi.device[d].bytes / 1048576.0,
                (double)pi.device[d].budget / 1048576.0, pi.device[d].read_gbs, pi.device[d].rtt_us,
                pi.device[d].gb_per_token * 1e3);
    fprintf(f, "  host     %d experts%s, reads %.1f GB/s, %.3g MB/token\n", pi.n_expert_host,
            pi.dense_device ? "" : " + dense layers", pi.host_read_gbs, pi.host_gb_per_token * 1e3);
    if (pi.predicted_tok_s > 0)
        fprintf(f, "%-22s %.1f tokens/s generated (all on the host: %.1f), memory-bound\n", "predicted",
                pi.predicted_tok_s, pi.predicted_tok_s_host);
    else
        fprintf(f, "%-22s none (a bandwidth was not measured)\n", "predicted");
    for (int l = 0; l < in->n_layer; l++) {
        fprintf(f, "  layer %-3d ", l);
        for (int e = 0; e < in->n_expert; e++) {
            const int32_t d = moecl_context_expert_device(ctx, l, e);
            fputc(d <= 0 ? 'c' : pi.n_device <= 1 ? 'G' : (char)('0' + d), f);
        }
        fputc('\n', f);
    }
}

static int cmd_devices(void) {
    int32_t n = moecl_device_count();
    if (n == 0) { /* moecl_last_error() says why: no OpenCL library, or no platform with a device */
        printf("no OpenCL devices: %s; the CPU backend is used\n", moecl_last_error());
        return 0;
    }
    for (int32_t i = 0; i < n; i++) {
        moecl_device_info d;
        if (moecl_device_get_info(i, &d) != MOECL_OK) continue;
        printf("%d: %s | %s | %s\n", i, d.platform, d.vendor, d.name);
        printf("   %s, driver %s, %s, %d compute units, fp16 %s\n", d.version, d.driver, d.is_gpu ? "GPU" : "CPU",
               d.compute_units, d.fp16 ? "yes" : "no");
        printf("   global memory %.0f MiB, largest buffer %.0f MiB\n", (double)d.global_mem / 1048576.0,
               (double)d.max_alloc / 1048576.0);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* run                                                                      */
/* ------------------------------------------------------------------------ */

static int cmd_run(const options *o) {
    if ((o->prompt || o->prompt_file) && o->tokens) return usage_error("%s", "give a text prompt or --tokens, not both");
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
    const moecl_tokenizer *tkz = moecl_model_get_tokenizer(model);
    moecl_detokenizer *detok = NULL;

    if (o->prompt || o->prompt_file) {
        if (!tkz) {
            rc = usage_error("%s", "this model directory has no tokenizer.json: give token ids with --tokens 1,2,3");
            goto done;
        }
        char *text = NULL;
        size_t len = 0;
        if ((rc = read_prompt(o, &text, &len))) goto done;
        if (o->chat) rc = chat_tokenize_alloc(tkz, o->chat_format, o->system, text, 0, &prompt, &n_prompt);
        else rc = tokenize_alloc(tkz, text, len, tokenize_flags(o), &prompt, &n_prompt);
        free(text);
        if (rc) goto done;
        rc = 1;
    } else if (o->tokens) {
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

    moecl_context_params cp = context_params(o);
    cp.n_ctx = (uint32_t)o->n_ctx;
    if (!cp.n_ctx) {
        int want = n_prompt + o->n_predict;
        cp.n_ctx = (uint32_t)(want < info.n_ctx_train ? want : info.n_ctx_train);
    }
    if ((uint32_t)n_prompt > cp.n_ctx) {
        fprintf(stderr, "moecl: the prompt is %d tokens and does not fit in the context of %u positions (%s): %u too many\n",
                n_prompt, cp.n_ctx, o->n_ctx ? "-c" : "the model's trained context", (uint32_t)n_prompt - cp.n_ctx);
        goto done;
    }
    cp.n_batch = (uint32_t)n_prompt;
    moecl_status st = moecl_context_new(model, &cp, &ctx);
    if (st) { fail("cannot create a context", st); goto done; }
    if (o->verbose) print_placement(stderr, ctx, &info);
    if ((st = moecl_sampler_new(&o->sp, &smpl))) { fail("cannot create a sampler", st); goto done; }
    for (int i = 0; i < n_prompt; i++) moecl_sampler_accept(smpl, prompt[i]);

    double t0 = now_s();
    if ((st = moecl_decode(ctx, prompt, n_prompt))) { fail("prompt", st); goto done; }
    double t_prompt = now_s() - t0;

    out_ids = malloc(((size_t)o->n_predict + 1) * sizeof *out_ids);
    if (!out_ids) goto done;
    /* Text streams out as whole characters; the continuation keeps its
     * leading space, since it follows the prompt. */
    if (tkz && !o->ids_json &&
        (st = moecl_detokenizer_new(tkz, MOECL_DETOKENIZE_SKIP_SPECIAL | MOECL_DETOKENIZE_KEEP_LEADING_SPACE, &detok))) {
        fail("detokenizer", st);
        goto done;
    }
    int n_gen = 0;
    moecl_status gen_st = MOECL_OK;
    t0 = now_s();
    while (n_gen < o->n_predict) {
        int32_t tok;
        if ((st = moecl_sampler_sample(smpl, moecl_get_logits(ctx, -1), info.n_vocab, &tok))) {
            fail("sampling", st);
            goto done;
        }
        out_ids[n_gen++] = tok;
        if (detok) {
            const char *piece;
            size_t len;
            /* An id past the tokenizer's vocabulary (a model with padded
             * embeddings) prints nothing. */
            if (moecl_detokenizer_push(detok, tok, &piece, &len) == MOECL_OK) fwrite(piece, 1, len, stdout);
            fflush(stdout);
        } else if (!o->ids_json) {
            printf("%s%d", n_gen > 1 ? " " : "", tok);
            fflush(stdout);
        }
        if (tok == info.eos_id || n_gen == o->n_predict) break;
        if ((gen_st = moecl_decode(ctx, &tok, 1))) break; /* what was generated is printed first */
    }
    if (detok) {
        const char *piece;
        size_t len;
        if (!moecl_detokenizer_flush(detok, &piece, &len)) fwrite(piece, 1, len, stdout);
    }
    double t_gen = now_s() - t0;
    if (o->ids_json) {
        printf("[");
        for (int i = 0; i < n_gen; i++) printf("%s%d", i ? ", " : "", out_ids[i]);
        printf("]");
    }
    printf("\n");
    fflush(stdout);
    if (gen_st) {
        fail("generation stopped", gen_st);
        if (gen_st == MOECL_ERR_CONTEXT_FULL)
            fprintf(stderr, "moecl: the context of %u positions is full after %d prompt and %d generated tokens "
                    "(raise -c or lower -n)\n", cp.n_ctx, n_prompt, n_gen);
        goto done;
    }
    fprintf(stderr, "load: %.2f s | prompt: %d tokens, %.1f tokens/s | generation: %d tokens, %.2f tokens/s\n",
            t_load, n_prompt, n_prompt / t_prompt, n_gen, n_gen > 1 ? (n_gen - 1) / t_gen : 0.0);
    rc = 0;
done:
    moecl_detokenizer_free(detok);
    free(prompt);
    free(out_ids);
    moecl_sampler_free(smpl);
    moecl_context_free(ctx);
    moecl_model_free(model);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* chat                                                                     */
/* ------------------------------------------------------------------------ */

/* Decode n tokens in batches of at most n_batch. */
static moecl_status decode_all(moecl_context *ctx, const int32_t *ids, int n, int n_batch) {
    for (int i = 0; i < n; i += n_batch) {
        int k = n - i < n_batch ? n - i : n_batch;
        moecl_status st = moecl_decode(ctx, ids + i, k);
        if (st) return st;
    }
    return MOECL_OK;
}

/* A multi-turn conversation on stdin/stdout. Each turn appends only its own
 * tokens ([INST] ... [/INST] and the reply, closed by </s>) to the KV cache,
 * so the history is never processed twice. */
static int cmd_chat(const options *o) {
    moecl_model *model = NULL;
    moecl_context *ctx = NULL;
    moecl_sampler *smpl = NULL;
    moecl_detokenizer *detok = NULL;
    char *line = NULL;
    size_t line_cap = 0;
    int rc = load_model(o, &model, NULL);
    if (rc) return rc;
    rc = 1;
    moecl_model_info info;
    moecl_model_get_info(model, &info);
    const moecl_tokenizer *tkz = moecl_model_get_tokenizer(model);
    if (!tkz) {
        fprintf(stderr, "moecl: chat needs the model's tokenizer.json\n");
        goto done;
    }
    const int32_t eos = moecl_tokenizer_eos_id(tkz);
    const int n_batch = 512;
    moecl_context_params cp = context_params(o);
    cp.n_ctx = (uint32_t)o->n_ctx;
    cp.n_batch = n_batch;
    moecl_status st = moecl_context_new(model, &cp, &ctx);
    if (st) { fail("cannot create a context", st); goto done; }
    if ((st = moecl_sampler_new(&o->sp, &smpl))) { fail("cannot create a sampler", st); goto done; }
    if ((st = moecl_detokenizer_new(tkz, MOECL_DETOKENIZE_SKIP_SPECIAL, &detok))) { fail("detokenizer", st); goto done; }
    const int n_ctx = (int)(o->n_ctx ? o->n_ctx : (info.n_ctx_train < 4096 ? info.n_ctx_train : 4096));
    /* Each turn keeps room for a reply of -n tokens and its </s>. */
    if (o->n_predict + 2 > n_ctx) {
        fprintf(stderr, "moecl: -n %d leaves no room for a message in the context of %d positions%s: lower -n "
                "(at most %d) or raise -c\n", o->n_predict, n_ctx, o->n_ctx ? " (-c)" : "", n_ctx - 2);
        goto done;
    }
    const bool tty = isatty(0) && isatty(2);
    int turn = 0;
    for (;;) {
        if (tty) fprintf(stderr, "> ");
        ssize_t got = getline(&line, &line_cap, stdin);
        if (got < 0) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = '\0';
        if (got == 0) continue;

        int32_t *ids = NULL;
        int n = 0;
        /* The first turn opens with <s> and the system message; later turns
         * append to the conversation in the cache. */
        if ((rc = chat_tokenize_alloc(tkz, o->chat_format, turn == 0 ? o->system : NULL, line, turn ? MOECL_CHAT_NO_BOS : 0, &ids,
                                      &n)))
            goto done;
        rc = 1;
        if (moecl_seq_length(ctx, 0) + n + o->n_predict + 1 > n_ctx) {
            fprintf(stderr, "moecl: the conversation no longer fits in the context (%d positions): starting over\n",
                    n_ctx);
            free(ids);
            moecl_seq_truncate(ctx, 0, 0);
            moecl_sampler_reset(smpl);
            if ((rc = chat_tokenize_alloc(tkz, o->chat_format, o->system, line, 0, &ids, &n))) goto done;
            rc = 1;
            if (n + o->n_predict + 1 > n_ctx) {
                free(ids);
                fprintf(stderr, "moecl: this message is %d tokens; with %d kept for the reply (-n) it does not fit in "
                        "the context of %d positions (%d too many): shorten it, lower -n or raise -c\n",
                        n, o->n_predict + 1, n_ctx, n + o->n_predict + 1 - n_ctx);
                turn = 0;
                continue;
            }
        }
        for (int i = 0; i < n; i++) moecl_sampler_accept(smpl, ids[i]);
        st = decode_all(ctx, ids, n, n_batch);
        free(ids);
        if (st) { fail("decode", st); goto done; }
        turn++;

        moecl_detokenizer_reset(detok);
        int32_t tok = -1;
        for (int g = 0; g < o->n_predict; g++) {
            if ((st = moecl_sampler_sample(smpl, moecl_get_logits(ctx, -1), info.n_vocab, &tok))) {
                fail("sampling", st);
                goto done;
            }
            if ((st = moecl_decode(ctx, &tok, 1))) { fail("decode", st); goto done; }
            const char *piece;
            size_t len;
            if (moecl_detokenizer_push(detok, tok, &piece, &len) == MOECL_OK) fwrite(piece, 1, len, stdout);
            fflush(stdout);
            if (tok == eos) break;
        }
        /* A reply cut off by -n is closed as the format requires. */
        if (tok != eos && eos >= 0 && (st = moecl_decode(ctx, &eos, 1))) { fail("decode", st); goto done; }
        const char *piece;
        size_t len;
        if (moecl_detokenizer_flush(detok, &piece, &len) == MOECL_OK) fwrite(piece, 1, len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        if (o->verbose) fprintf(stderr, "[%d positions in the cache]\n", moecl_seq_length(ctx, 0));
    }
    rc = 0;
done:
    free(line);
    moecl_detokenizer_free(detok);
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

static bool is_gguf_path(const char *p) {
    size_t n = strlen(p);
    return n >= 5 && !strcmp(p + n - 5, ".gguf");
}

static int cmd_info(const options *o) {
    char pbuf[4096];
    const char *path = resolve_model(o, pbuf, sizeof pbuf);
    if (!path) return 1;
    moecl_model *model = NULL;
    int rc = load_model(o, &model, NULL);
    if (rc) {
        /* A GGUF that is not a model moecl runs: still show what it holds. */
        if (is_gguf_path(path)) gguf_dump_print(path, -1);
        return rc;
    }
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
    const moecl_tokenizer *tkz = moecl_model_get_tokenizer(model);
    if (tkz)
        printf("%-22s %d ids, bos %d, eos %d\n", "tokenizer", moecl_tokenizer_n_vocab(tkz), moecl_tokenizer_bos_id(tkz),
               moecl_tokenizer_eos_id(tkz));
    else
        printf("%-22s none (no tokenizer.json: token ids only)\n", "tokenizer");
    print_count("parameters", in.n_params);
    print_count("active per token", in.n_params_active);
    for (int d = 0; d < MOECL_DTYPE_COUNT; d++)
        if (in.bytes_by_dtype[d])
            printf("bytes in %-13s %.1f MiB\n", moecl_dtype_name((moecl_dtype)d), (double)in.bytes_by_dtype[d] / 1048576.0);
    printf("%-22s %s, int8 %s\n", "CPU kernels", mc_cpu_isa(), mc_cpu_int8_kernels());
    /* Where the experts would run with these options. */
    moecl_context_params cp = context_params(o);
    cp.n_ctx = 16;
    moecl_context *ctx = NULL;
    moecl_status st = moecl_context_new(model, &cp, &ctx);
    if (st == MOECL_OK) print_placement(stdout, ctx, &in);
    else fail("cannot create a context to place the experts", st);
    moecl_context_free(ctx);
    moecl_model_free(model);
    if (st == MOECL_OK && is_gguf_path(path)) { /* the file itself: metadata and tensor table */
        printf("\n");
        if (gguf_dump_print(path, -1)) return fail("info", MOECL_ERR_FORMAT);
    }
    return st == MOECL_OK ? 0 : 1;
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
    const int np = o->n_prompt, ng = o->n_predict, depth = o->depth;
    if (depth > np) {
        fprintf(stderr, "moecl: bench: -d %d is deeper than the prompt of %d tokens (-p)\n", depth, np);
        moecl_model_free(model);
        return 2;
    }
    int32_t *toks = malloc((size_t)(np > 1 ? np : 1) * sizeof *toks);
    double *pp = calloc((size_t)o->reps, sizeof(double)), *tg = calloc((size_t)o->reps, sizeof(double));
    if (!toks || !pp || !tg) goto done;
    uint64_t s = 12345;
    for (int i = 0; i < np; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        toks[i] = (int32_t)((s >> 33) % (uint64_t)in.n_vocab);
    }
    moecl_context_params cp = context_params(o);
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
        /* Generation from the prompt's end, or from depth d (-d 0: an
         * empty cache, as llama-bench's tg runs). */
        int32_t tok = toks[depth > 0 ? depth - 1 : np - 1];
        if (depth >= 0) moecl_seq_truncate(ctx, -1, depth);
        t0 = now_s();
        for (int i = 0; i < ng; i++)
            if ((st = moecl_decode(ctx, &tok, 1))) { fail("decode", st); goto done; }
        tg[r] = ng / (now_s() - t0);
    }
    qsort(pp, (size_t)o->reps, sizeof(double), cmp_double);
    qsort(tg, (size_t)o->reps, sizeof(double), cmp_double);

    uint64_t total = 0;
    for (int d = 0; d < MOECL_DTYPE_COUNT; d++) total += in.bytes_by_dtype[d];
    const double active = (double)in.bytes_per_token;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("model: %d layers, %d experts top-%d in %s, %.2f GB of weights, %.1f MB read per generated token\n",
           in.n_layer, in.n_expert, in.n_expert_used, moecl_dtype_name(in.expert_dtype), (double)total / 1e9,
           active / 1e6);
    printf("peak RSS: %.2f GB (%.2f x the weights)\n", (double)ru.ru_maxrss * 1024 / 1e9,
           (double)ru.ru_maxrss * 1024 / (double)total);
    printf("pp%d: %.2f tokens/s (median of %d)\n", np, pp[o->reps / 2], o->reps);
    printf("tg%d: %.2f tokens/s (median of %d), %.2f GB/s of weights read, from depth %d\n", ng, tg[o->reps / 2],
           o->reps, tg[o->reps / 2] * active / 1e9, depth >= 0 ? depth : np);
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

/* Copy src to dst, written as every moecl file is (atomic_file.h). */
static bool copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb");
    if (!in) return false;
    mc_afile out;
    bool ok = mc_afile_open(&out, dst, 0) == MOECL_OK;
    char chunk[65536];
    size_t n;
    while (ok && (n = fread(chunk, 1, sizeof chunk, in)) > 0) ok = mc_afile_write(&out, chunk, n) == MOECL_OK;
    ok = ok && !ferror(in);
    fclose(in);
    if (ok) return mc_afile_commit(&out) == MOECL_OK;
    mc_afile_discard(&out);
    return false;
}

/* A tokenizer beside the written model: FILE as tokenizer.json, and the
 * tokenizer_config.json in FILE's directory when there is one. */
static int copy_tokenizer(const char *file, const char *dir) {
    char dst[4200], src[4200];
    snprintf(dst, sizeof dst, "%s/tokenizer.json", dir);
    if (!copy_file(file, dst)) {
        fprintf(stderr, "moecl: generate: cannot copy %s to %s\n", file, dst);
        return 1;
    }
    const char *slash = strrchr(file, '/');
    int n = slash ? (int)(slash - file) : 1;
    snprintf(src, sizeof src, "%.*s/tokenizer_config.json", n, slash ? file : ".");
    snprintf(dst, sizeof dst, "%s/tokenizer_config.json", dir);
    struct stat sb;
    if (stat(src, &sb) == 0 && !copy_file(src, dst)) {
        fprintf(stderr, "moecl: generate: cannot copy %s to %s\n", src, dst);
        return 1;
    }
    return 0;
}

static int cmd_generate(int argc, char **argv) {
    if (argc < 3) return usage_error("%s", "generate needs an output directory");
    const char *dir = argv[2];
    if (dir[0] == '-') return usage_error("generate needs the output directory first, before %s", dir);
    moecl_random_model_params p = moecl_random_model_default_params();
    const char *tokenizer = NULL;
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
            } else if (!strcmp(v, "qwen3-laptop")) {
                /* Qwen3-MoE's expert layout (128 experts top-8, renormalised)
                 * and vocabulary at laptop scale: hidden 1024, 8 layers. */
                p = moecl_random_model_default_params();
                p.arch = "qwen3moe";
                p.n_vocab = 151936; p.n_embd = 1024; p.n_ff = 384; p.n_layer = 8; p.n_head = 16; p.n_head_kv = 4;
                p.head_dim = 64; p.n_expert = 128; p.n_expert_used = 8; p.n_ctx_train = 40960;
                p.rms_norm_eps = 1e-6f; p.bos_id = 151643; p.eos_id = 151645;
            } else return usage_error("unknown preset %s (mini, default, tiny, qwen3-laptop)", v);
        } else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "f32")) p.dtype = MOECL_DTYPE_F32;
            else if (!strcmp(v, "f16")) p.dtype = MOECL_DTYPE_F16;
            else if (!strcmp(v, "bf16")) p.dtype = MOECL_DTYPE_BF16;
            else return usage_error("unknown dtype %s (f32, f16, bf16)", v);
        } else if (!strcmp(a, "--seed")) p.seed = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--arch")) p.arch = v; /* the library names the families it knows */
        else if (!strcmp(a, "--tokenizer")) tokenizer = v;
        else if (!strcmp(a, "--norm-topk")) {
            if (!cli_parse_int(v, 0, 1, &x)) return bad_number(a, v, 0, 1);
            p.norm_topk = x;
        } else if (!strcmp(a, "--dense-layers")) {
            if (!cli_parse_int(v, 0, 1 << 24, &x)) return bad_number(a, v, 0, 1 << 24);
            p.n_dense_layers = x;
        } else if (!strcmp(a, "--bos") || !strcmp(a, "--eos")) {
            if (!cli_parse_int(v, -1, INT32_MAX, &x)) return bad_number(a, v, -1, INT32_MAX);
            *(a[2] == 'b' ? &p.bos_id : &p.eos_id) = x;
        } else if (!cli_parse_int(v, 1, 1 << 24, &x)) return bad_number(a, v, 1, 1 << 24);
        else if (!strcmp(a, "--vocab")) p.n_vocab = x;
        else if (!strcmp(a, "--hidden")) p.n_embd = x;
        else if (!strcmp(a, "--ff")) p.n_ff = x;
        else if (!strcmp(a, "--ff-dense")) p.n_ff_dense = x;
        else if (!strcmp(a, "--ff-shexp")) p.n_ff_shexp = x;
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
    if (tokenizer && copy_tokenizer(tokenizer, dir)) return 1;
    fprintf(stderr, "wrote %s (%s, random weights, %s) in %.1f s\n", dir, p.arch ? p.arch : "mixtral",
            moecl_dtype_name(p.dtype), now_s() - t0);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* quantize                                                                 */
/* ------------------------------------------------------------------------ */

/* Ctrl-C, SIGTERM and SIGHUP during quantize: the handler only sets a flag,
 * which the progress callback returns, so the library stops at the next
 * chunk of rows and removes its temporary file. The handler is reset on the
 * first signal, so a second one kills at once. */
static volatile sig_atomic_t g_stop_signal;

static void on_stop_signal(int sig) { g_stop_signal = sig; }

static void catch_stop_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESETHAND | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) {
        struct sigaction old;
        /* a signal ignored when we started (nohup, a background job) stays ignored */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN) sigaction(sigs[i], &sa, NULL);
    }
}

typedef struct quantize_progress {
    bool bar;   /* stderr is a terminal */
    int shown;  /* the percentage last drawn */
} quantize_progress;

static bool on_quantize_progress(float f, void *user) {
    quantize_progress *q = user;
    int pct = (int)(f * 100.0f);
    if (q->bar && pct != q->shown) {
        q->shown = pct;
        progress_bar(f, "quantizing");
    }
    return g_stop_signal == 0;
}

static int cmd_quantize(int argc, char **argv) {
    const char *pos[3] = {NULL, NULL, NULL};
    int n_pos = 0;
    moecl_quantize_params p = moecl_quantize_default_params();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (i + 1 >= argc || !cli_parse_int(argv[i + 1], 1, 4096, &p.n_threads))
                return usage_error("option %s needs a thread count", a);
            i++;
        } else if (!strcmp(a, "--allow-requantize")) {
            p.allow_requantize = true;
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option %s", a);
        } else if (n_pos < 3) {
            pos[n_pos++] = a;
        } else {
            return usage_error("unexpected argument %s", a);
        }
    }
    if (n_pos < 2) return usage_error("%s", "quantize needs IN OUT.gguf [TYPE]");
    if (pos[2]) p.type = pos[2];
    quantize_progress qp = {.bar = isatty(2), .shown = -1};
    p.progress = on_quantize_progress;
    p.progress_user_data = &qp;
    catch_stop_signals();
    double t0 = now_s();
    moecl_status st = moecl_quantize(pos[0], pos[1], &p);
    const int sig = g_stop_signal;
    if (sig && st == MOECL_ERR_ABORTED) { /* the temporary file is gone: end as the signal would have */
        if (qp.bar) fputc('\n', stderr);
        fprintf(stderr, "moecl: quantize: interrupted by %s; %s not written\n", strsignal(sig), pos[1]);
        signal(sig, SIG_DFL);
        raise(sig);
        return 128 + sig;
    }
    if (st) return fail("quantize", st);
    fprintf(stderr, "wrote %s (%s) in %.1f s\n", pos[1], p.type, now_s() - t0);
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

int cmd_serve(int argc, char **argv);          /* tools/serve.c */
int cmd_bench_parallel(int argc, char **argv); /* tools/bench_parallel.c */
int cmd_stats(int argc, char **argv);          /* tools/stats.c */
int cmd_perplexity(int argc, char **argv);     /* tools/perplexity.c */

/* Each subcommand's usage; `moecl help` prints them all, `moecl CMD --help` its own. */
typedef struct usage_entry {
    const char *cmd, *text;
    bool backend; /* takes the backend options */
} usage_entry;

static const usage_entry k_usage[] = {
    {"run", "  moecl run      [-m PATH] [-p TEXT | -f FILE | --tokens 1,2,3] [--chat [--system TEXT]]\n"
            "                 [--no-bos] [--special] [-n N]\n"
            "                 [--seed S] [--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R]\n"
            "                 [-t THREADS] [-c CTX] [--ids] [-v] [backend options]\n", true},
    {"tokenize", "  moecl tokenize   [-m PATH] [--no-bos] [--special] [--time] (-p TEXT | -f FILE)  # ids as a JSON array\n"
                 "                   [--chat [--chat-format NAME] [--system TEXT]]  # the text as one user turn\n",
     false},
    {"detokenize", "  moecl detokenize [-m PATH] [--special] IDS...                          # text\n", false},
    {"chat", "  moecl chat     [-m PATH] [--system TEXT] [-n N] [sampling options] [-t THREADS] [-c CTX]\n"
             "                 # multi-turn conversation on stdin; run --chat: one turn. --chat-format NAME\n"
             "                 # (mistral, chatml, qwen2, qwen2.5, qwen3, olmoe): default, the model's template\n", true},
    {"info", "  moecl info     [-m PATH] [backend options]    # shape, parameters, where each expert runs\n", true},
    {"devices", "  moecl devices                               # OpenCL platforms and devices\n", false},
    {"bench", "  moecl bench    [-m PATH] [-p 128] [-n 64] [-d DEPTH] [-t THREADS] [-r REPS] [backend options]\n"
              "                 # -d: generation after DEPTH prompt tokens (default all; 0: llama-bench's tg)\n"
              "  moecl bench    --parallel 1,2,4,8 -m PATH [-p 32] [-n 32] [-t THREADS] [-r REPS]  # B sequences per step\n"
              "                 [--kv-type f32|f16] [--bw GB/s --gflops GFLOP/s]  # roofline fraction per B\n",
     true},
    {"generate", "  moecl generate DIR [--preset mini|default|tiny|qwen3-laptop] [--dtype f32|f16|bf16] [--seed S]\n"
                 "                 [--arch mixtral|qwen3moe|qwen2moe|olmoe] [--tokenizer tokenizer.json]\n"
                 "                 [--vocab N --hidden N --ff N --layers N --heads N --kv-heads N --head-dim N\n"
                 "                  --experts N --top-k N --norm-topk 0|1 --bos ID --eos ID]\n"
                 "                 [--dense-layers N --ff-dense N]  # qwen3moe, qwen2moe: the first N layers dense\n"
                 "                 [--ff-shexp N]                   # qwen2moe: the shared expert's width\n", false},
    {"serve", "  moecl serve    -m PATH [--host 127.0.0.1] [--port 8080] [--parallel N] [-c CTX] [-b BATCH]\n"
              "                 [--queue N] [--api-key KEY] [-n N] [sampling options] [-t THREADS] [backend options]\n"
              "                 # OpenAI-compatible HTTP server (README: Serving)\n", true},
    {"stats", "  moecl stats    [-m PATH] (-p TEXT | -f FILE | --tokens 1,2,3) [--layer L] [--json FILE]\n"
              "                 [--html FILE] [--save-profile FILE] [--pictures DIR] [-c CTX] [--max-tokens N]\n"
              "                 [-t THREADS]\n"
              "                 # routing: load, balance, co-activation, specialisation, consistency\n", false},
    {"quantize", "  moecl quantize IN OUT.gguf [TYPE] [-t THREADS] [--allow-requantize]\n"
                 "                 # TYPE: q4_K_M (default), q4_K_S, q5_K_M, q5_K_S, q6_K, q8_0, q4_0,\n"
                 "                 # q4_K, q5_K (every matrix that type), f16, bf16, f32\n", false},
    {"perplexity", "  moecl perplexity -m PATH (-f TEXT | --tokens IDS) [-c 512] [-b 512] [-t THREADS] [--chunks N]\n"
                   "                 [--kl-save FILE [--kl-top-k 64] | --kl-base FILE]\n"
                   "                 # llama.cpp-style chunked PPL; KL divergence and top-1 agreement vs a base\n",
     false},
};
#define N_USAGE (int)(sizeof k_usage / sizeof k_usage[0])

static void help(void) {
    printf("moecl %s - Mixture-of-Experts inference\n\nusage:\n", moecl_version());
    for (int i = 0; i < N_USAGE; i++) fputs(k_usage[i].text, stdout);
    printf("\nbackend options (run, chat, info, bench, serve):\n%s\n", cli_backend_help);
    printf("PATH is a Hugging Face model directory or a GGUF file (for tokenize/detokenize also a\n"
           "tokenizer.json).\n"
           "Without -m: $MOECL_MODEL, else the default model in %s/default: a small Mixtral\n"
           "trained on the World English Bible (models/README.md), Mistral v1 vocabulary.\n"
           "--special: \"<s>\", \"</s>\" in the text are the special tokens, not plain text\n"
           "(detokenize: print special tokens).\n",
           MOECL_MODELS_DIR);
}

/* `moecl CMD --help`: that command's usage on stdout. false for an unknown command. */
static bool command_help(const char *cmd) {
    for (int i = 0; i < N_USAGE; i++) {
        if (strcmp(cmd, k_usage[i].cmd)) continue;
        printf("usage:\n%s", k_usage[i].text);
        if (k_usage[i].backend) printf("\nbackend options:\n%s", cli_backend_help);
        printf("\n'moecl help' describes every command.\n");
        return true;
    }
    return false;
}

int main(int argc, char **argv) {
    if (argc > 2 && !strcmp(argv[1], "help") && command_help(argv[2])) return 0;
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        help();
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    /* Any subcommand answers --help (or -h) anywhere in its arguments. */
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (command_help(cmd)) return 0;
            return usage_error("unknown command '%s'", cmd);
        }
    ensure_fast_blas(argv);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc, argv);
    if (!strcmp(cmd, "detokenize")) return cmd_detokenize(argc, argv);
    if (!strcmp(cmd, "quantize")) return cmd_quantize(argc, argv);
    if (!strcmp(cmd, "serve")) return cmd_serve(argc, argv); /* tools/serve.c */
    if (!strcmp(cmd, "stats")) return cmd_stats(argc, argv); /* tools/stats.c */
    if (!strcmp(cmd, "perplexity")) return cmd_perplexity(argc, argv); /* tools/perplexity.c */
    for (int i = 2; !strcmp(cmd, "bench") && i < argc; i++)
        if (!strcmp(argv[i], "--parallel")) return cmd_bench_parallel(argc, argv); /* tools/bench_parallel.c */
    options o = {0};
    int rc = parse_options(argc, argv, 2, !strcmp(cmd, "bench"), &o);
    if (rc) return rc;
    if (!strcmp(cmd, "run")) return cmd_run(&o);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(&o);
    if (!strcmp(cmd, "chat")) return cmd_chat(&o);
    if (!strcmp(cmd, "info")) return cmd_info(&o);
    if (!strcmp(cmd, "devices")) return cmd_devices();
    if (!strcmp(cmd, "bench")) return cmd_bench(&o);
    return usage_error("unknown command '%s'", cmd);
}
