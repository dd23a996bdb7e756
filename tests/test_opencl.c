/*
 * test_opencl.c - the OpenCL backend against the CPU backend, and falling
 * back when OpenCL cannot be had.
 *
 *   ops: the expert FFNs of a layer (mc_backend_i.moe_submit/moe_wait) on
 *     fresh random rows, OpenCL vs CPU by normalised error (<= 1e-5 with F32
 *     device weights, <= 2e-3 with F16): 1 row, a prime number of rows,
 *     experts with no rows, all rows on one expert, a slice that does not
 *     start at row 0, the few-row (_vec and _rows) and the tiled paths; models stored as F32,
 *     F16 and BF16 with shapes that are not multiples of the tiles.
 *   matmul: delegated to the CPU kernels, equal to the CPU backend.
 *   fallback: a selector matching nothing, a budget of 0 MiB, a build option
 *     the compiler rejects: AUTO warns and carries on with the CPU (same
 *     logits), OPENCL fails with the message.
 *   features: a device that reports an old OpenCL C, small work-groups,
 *     little local memory or a largest allocation below one expert matrix
 *     (MOECL_CL_TEST_LIMITS) is refused by name and feature.
 *   allocations: a buffer allocation that fails at load (AUTO: CPU, same
 *     logits; OPENCL: the error) and in the middle of a decode.
 *   device failure during a decode: an enqueue or a wait that fails
 *     (MOECL_CL_FAIL_AT) computes that layer on the CPU, says so, and the
 *     context goes on with the CPU: logits and the KV cache as on the CPU.
 *   quantized experts: Q8_0, Q4_0, Q4_K, Q5_K, Q6_K blocks on the device
 *     (mc_quantize_row), against a float64 FFN over the dequantized weights,
 *     <= 1e-5; device bytes are the blocks' bytes.
 *   cache: a second start loads the program binary from the cache; an
 *     entry truncated, with bytes flipped, of another format or of another
 *     program (lacking the kernels) never reaches the driver and is compiled
 *     again, with a warning naming the file; MOECL_CL_CACHE=0 / off /
 *     off:NAME turns the cache off.
 *
 * Skips (77) when there is no OpenCL device. The device, for every part:
 * $MOECL_DEVICE (an index or a name), else the first one.
 */
#include "test_util.h"
#include "tiny_model.h"

#include "backend/backend.h"
#include "model.h"
#include "backend/cpu/kernels.h"
#include "backend/opencl/opencl.h"
#include "quant/quant.h"

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------ */
/* Log capture                                                              */
/* ------------------------------------------------------------------------ */

static char g_log[16384];

/* The device under test, from $MOECL_DEVICE (else the first), as an index. */
static int g_dev_index;
static char g_dev_sel[16] = "0";

static void capture(moecl_log_level level, const char *msg, void *ud) {
    (void)ud;
    size_t n = strlen(g_log);
    snprintf(g_log + n, sizeof g_log - n, "[%d] %s\n", (int)level, msg);
}

/* ------------------------------------------------------------------------ */
/* Ops                                                                      */
/* ------------------------------------------------------------------------ */

/* rows[e] rows for expert e (0: not used), starting at row r0 of X. */
static void compare_moe(mc_backend *cl, mc_backend *cpu, const moecl_model *m, int layer, const int *rows,
                        int64_t r0, double bound, const char *what, uint64_t *seed) {
    const int E = m->hp.n_expert;
    const int64_t D = m->hp.n_embd;
    int ids[64], n_used = 0;
    int64_t offs[65];
    offs[0] = r0;
    for (int e = 0; e < E; e++)
        if (rows[e]) {
            ids[n_used] = e;
            offs[n_used + 1] = offs[n_used] + rows[e];
            n_used++;
        }
    const int64_t R = offs[n_used];
    float *X = malloc((size_t)(R ? R : 1) * D * sizeof(float));
    float *Yc = calloc((size_t)(R ? R : 1) * D, sizeof(float));
    float *Yg = calloc((size_t)(R ? R : 1) * D, sizeof(float));
    for (int64_t i = 0; i < R * D; i++) X[i] = t_rand_f(seed);
    mc_moe_work w = {.layer = layer, .n_used = n_used, .expert_ids = ids, .offsets = offs, .X = X, .Y = Yg};
    CHECKF(cl->iface->moe_submit(cl, &w) == MOECL_OK, "%s: submit: %s", what, moecl_last_error());
    mc_moe_work wc = w;
    wc.Y = Yc;
    CHECK(cpu->iface->moe_submit(cpu, &wc) == MOECL_OK); /* runs while the device works */
    CHECKF(cl->iface->moe_wait(cl) == MOECL_OK, "%s: wait: %s", what, moecl_last_error());
    double e = t_nerr(Yg + r0 * D, Yc + r0 * D, (size_t)((R - r0) * D));
    CHECKF(e <= bound, "%s: normalised error %.3g > %.1g", what, e, bound);
    bool untouched = true; /* rows before the slice are not written */
    for (int64_t i = 0; i < r0 * D; i++) untouched &= Yg[i] == 0.0f;
    CHECKF(untouched, "%s: rows before the slice were written", what);
    fprintf(stderr, "  %-44s %5lld rows  nerr %.3g\n", what, (long long)(R - r0), e);
    free(X);
    free(Yc);
    free(Yg);
}

/* Two threads for the CPU backends these tests make (contexts make their own). */
static mc_pool *g_pool;
static mc_pool *test_pool(void) {
    if (!g_pool) CHECK(mc_pool_new(2, &g_pool) == MOECL_OK);
    return g_pool;
}

static void test_ops_model(const char *dir, moecl_dtype dev_dtype, double bound) {
    moecl_model *m = NULL;
    CHECKF(moecl_model_load(dir, NULL, &m) == MOECL_OK, "%s: %s", dir, moecl_last_error());
    if (!m) return;
    const int E = m->hp.n_expert, L = m->hp.n_layer;
    fprintf(stderr, "%s (%s weights, E=%d, D=%d, F=%d) with %s on the device\n", dir,
            moecl_dtype_name(m->layers[0].experts[0].w1.type), E, m->hp.n_embd, m->hp.n_ff,
            moecl_dtype_name(dev_dtype));
    mc_backend *cpu = NULL, *cl = NULL;
    CHECK(mc_backend_cpu_new(m, test_pool(), &cpu) == MOECL_OK);
    uint8_t *place = calloc((size_t)L * E, 1);
    int64_t n_placed = 0;
    mc_opencl_params op = {.selector = getenv("MOECL_DEVICE"), .gpu_only = false, .mem_budget = -1,
                           .experts_per_layer = -1, .dtype = dev_dtype, .pool = test_pool()};
    CHECKF(mc_backend_opencl_new(m, &op, place, 1, &n_placed, &cl) == MOECL_OK, "%s", moecl_last_error());
    CHECK(n_placed == (int64_t)L * E);
    for (int i = 0; i < L * E; i++) CHECK(place[i] == 1);
    if (cl && cpu) {
        uint64_t seed = 42;
        int rows[64];
        char what[128];
        for (int layer = 0; layer < L; layer += L - 1 > 0 ? L - 1 : 1) {
            memset(rows, 0, sizeof rows);
            rows[E - 1] = 1;
            snprintf(what, sizeof what, "layer %d: 1 row", layer);
            compare_moe(cl, cpu, m, layer, rows, 0, bound, what, &seed);

            memset(rows, 0, sizeof rows);
            for (int e = 0; e < E; e += 2) rows[e] = 1 + e % 3; /* odd experts have none */
            snprintf(what, sizeof what, "layer %d: few rows, every other expert", layer);
            compare_moe(cl, cpu, m, layer, rows, 0, bound, what, &seed);

            memset(rows, 0, sizeof rows);
            for (int e = 0; e < E; e++) rows[e] = 5; /* the _vec kernels loop over ROWS */
            snprintf(what, sizeof what, "layer %d: 5 rows each", layer);
            compare_moe(cl, cpu, m, layer, rows, 0, bound, what, &seed);

            memset(rows, 0, sizeof rows);
            int left = 13; /* a prime, spread unevenly */
            for (int e = 0; e < E && left; e++) {
                rows[e] = e == E - 1 ? left : (int)(t_rand_u64(&seed) % (uint64_t)(left + 1));
                left -= rows[e];
            }
            snprintf(what, sizeof what, "layer %d: 13 rows spread", layer);
            compare_moe(cl, cpu, m, layer, rows, 0, bound, what, &seed);

            memset(rows, 0, sizeof rows);
            rows[1 % E] = 37; /* all rows on one expert: tiled */
            snprintf(what, sizeof what, "layer %d: 37 rows on one expert", layer);
            compare_moe(cl, cpu, m, layer, rows, 0, bound, what, &seed);

            memset(rows, 0, sizeof rows);
            for (int e = 0; e < E; e++) rows[e] = e == 0 ? 0 : 9 + 7 * e; /* tiled, uneven, after row 11 */
            snprintf(what, sizeof what, "layer %d: many rows from row 11", layer);
            compare_moe(cl, cpu, m, layer, rows, 11, bound, what, &seed);
        }
        /* matmul delegates to the CPU kernels */
        const mc_tensor *W = &m->layers[0].wq;
        float X[3 * 512], Yc[3 * 512], Yg[3 * 512];
        if (W->cols <= 512 && W->rows <= 512) {
            for (int i = 0; i < 3 * W->cols; i++) X[i] = t_rand_f(&seed);
            CHECK(cl->iface->matmul(cl, W, X, 3, Yg) == MOECL_OK);
            CHECK(cpu->iface->matmul(cpu, W, X, 3, Yc) == MOECL_OK);
            CHECK(t_nerr(Yg, Yc, (size_t)(3 * W->rows)) == 0.0);
        }
    }
    /* a budget of one expert per layer places exactly that */
    mc_backend_free(cl);
    cl = NULL;
    memset(place, 0, (size_t)L * E);
    op.experts_per_layer = 1;
    CHECKF(mc_backend_opencl_new(m, &op, place, 1, &n_placed, &cl) == MOECL_OK, "%s", moecl_last_error());
    CHECK(n_placed == L);
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) CHECK(place[l * E + e] == (e == 0 ? 1 : 0));
    mc_backend_free(cl);
    /* a byte budget of L + 1 experts: one per layer, and one more in layer 0 */
    cl = NULL;
    memset(place, 0, (size_t)L * E);
    op.experts_per_layer = -1;
    const size_t ws = dev_dtype == MOECL_DTYPE_F16 ? 2 : 4;
    op.mem_budget = (int64_t)((L + 1) * 3 * (size_t)m->hp.n_ff * (size_t)m->hp.n_embd * ws);
    CHECKF(mc_backend_opencl_new(m, &op, place, 1, &n_placed, &cl) == MOECL_OK, "%s", moecl_last_error());
    CHECK(n_placed == L + 1);
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) CHECK(place[l * E + e] == (e < 1 + (l == 0) ? 1 : 0));
    mc_backend_free(cl);
    mc_backend_free(cpu);
    free(place);
    moecl_model_free(m);
}

static void test_ops(const char *tmp) {
    const char *data = getenv("MOECL_TEST_DATA");
    char dir[4200];
    moecl_random_model_params p = tiny_params();
    p.n_embd = 72; /* not multiples of the tiles (16) or ROWS */
    p.n_ff = 100;
    p.n_expert = 8;
    p.n_head = 4;
    p.n_head_kv = 2;
    const moecl_dtype dts[3] = {MOECL_DTYPE_F32, MOECL_DTYPE_F16, MOECL_DTYPE_BF16};
    for (int i = 0; i < 3; i++) {
        p.dtype = dts[i];
        snprintf(dir, sizeof dir, "%s/%s", tmp, moecl_dtype_name(dts[i]));
        CHECKF(moecl_random_model_write(dir, &p, NULL, NULL) == MOECL_OK, "%s", moecl_last_error());
        /* F32 on the device is exact storage for every model dtype; F16 is
         * exact for F16 models and rounds the others. */
        test_ops_model(dir, MOECL_DTYPE_F32, 1e-5);
        test_ops_model(dir, MOECL_DTYPE_F16, dts[i] == MOECL_DTYPE_F16 ? 1e-5 : 2e-3);
    }
    if (data) {
        snprintf(dir, sizeof dir, "%s/tiny-e8", data);
        test_ops_model(dir, MOECL_DTYPE_F32, 1e-5);
    }
    /* the few-row kernels this device does not use by default */
    const char *prev = getenv("MOECL_CL_FEW_ROWS");
    moecl_device_info di;
    moecl_device_get_info(g_dev_index, &di);
    setenv("MOECL_CL_FEW_ROWS", di.is_gpu ? "rows" : "vec", 1);
    fprintf(stderr, "MOECL_CL_FEW_ROWS=%s:\n", getenv("MOECL_CL_FEW_ROWS"));
    for (int i = 0; i < 2; i++) {
        snprintf(dir, sizeof dir, "%s/%s", tmp, moecl_dtype_name(dts[i]));
        test_ops_model(dir, dts[i], 1e-5);
    }
    if (prev) setenv("MOECL_CL_FEW_ROWS", prev, 1);
    else unsetenv("MOECL_CL_FEW_ROWS");
    /* and the many-row kernels it does not use */
    setenv("MOECL_CL_PROMPT", di.is_gpu ? "blk" : "tiled", 1);
    fprintf(stderr, "MOECL_CL_PROMPT=%s:\n", getenv("MOECL_CL_PROMPT"));
    for (int i = 0; i < 2; i++) {
        snprintf(dir, sizeof dir, "%s/%s", tmp, moecl_dtype_name(dts[i]));
        test_ops_model(dir, dts[i], 1e-5);
    }
    unsetenv("MOECL_CL_PROMPT");
}

/* ------------------------------------------------------------------------ */
/* Falling back                                                             */
/* ------------------------------------------------------------------------ */

static const int32_t prompt[7] = {1, 5, 9, 17, 33, 65, 2};

/* Logits of the last prompt token under params, or false if creation failed. */
static bool logits_with(const moecl_model *m, moecl_context_params cp, float *out, moecl_status *st) {
    moecl_context *ctx = NULL;
    cp.n_ctx = 32;
    cp.n_threads = 2;
    g_log[0] = '\0';
    *st = moecl_context_new(m, &cp, &ctx);
    if (*st) return false;
    CHECK(moecl_decode(ctx, prompt, 7) == MOECL_OK);
    const float *l = moecl_get_logits(ctx, -1);
    CHECK(l != NULL);
    if (l) memcpy(out, l, 97 * sizeof(float));
    moecl_context_free(ctx);
    return l != NULL;
}

static void test_fallback(const char *dir) {
    moecl_model *m = NULL;
    CHECKF(moecl_model_load(dir, NULL, &m) == MOECL_OK, "%s", moecl_last_error());
    if (!m) return;
    moecl_log_set(capture, MOECL_LOG_INFO, NULL);
    float ref[97], got[97];
    moecl_status st;
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_CPU;
    CHECK(logits_with(m, cp, ref, &st));

    /* all experts on the device: close to the CPU */
    cp.backend = MOECL_BACKEND_OPENCL;
    CHECKF(logits_with(m, cp, got, &st), "%s", moecl_last_error());
    CHECKF(strstr(g_log, "experts on the device"), "log: %s", g_log);
    CHECK(t_nerr(got, ref, 97) <= 1e-5);

    /* where the experts live, as moecl info shows it */
    moecl_context *ctx = NULL;
    cp.gpu_experts = 1;
    CHECK(moecl_context_new(m, &cp, &ctx) == MOECL_OK);
    moecl_context_backend_info bi;
    CHECK(moecl_context_get_backend_info(ctx, &bi) == MOECL_OK);
    moecl_model_info mi;
    moecl_model_get_info(m, &mi);
    CHECK(bi.backend == MOECL_BACKEND_OPENCL && bi.device[0] && bi.device_dtype == MOECL_DTYPE_F32);
    CHECK(bi.n_expert_device == mi.n_layer && bi.n_expert_cpu == mi.n_layer * (mi.n_expert - 1));
    CHECK(bi.device_bytes == (uint64_t)mi.n_layer * 3 * mi.n_ff * mi.n_embd * 4);
    CHECK(moecl_context_expert_backend(ctx, 0, 0) == MOECL_BACKEND_OPENCL);
    CHECK(moecl_context_expert_backend(ctx, 1, 1) == MOECL_BACKEND_CPU);
    CHECK(moecl_context_expert_backend(ctx, mi.n_layer, 0) == -1 && moecl_context_expert_backend(NULL, 0, 0) == -1);
    moecl_context_free(ctx);
    cp.gpu_experts = -1;
    cp.backend = MOECL_BACKEND_CPU;
    CHECK(moecl_context_new(m, &cp, &ctx) == MOECL_OK);
    CHECK(moecl_context_get_backend_info(ctx, &bi) == MOECL_OK);
    CHECK(bi.backend == MOECL_BACKEND_CPU && bi.n_expert_device == 0 && bi.device[0] == '\0');
    moecl_context_free(ctx);

    /* a selector matching nothing */
    cp.device = "no-such-device";
    cp.backend = MOECL_BACKEND_AUTO;
    CHECK(logits_with(m, cp, got, &st));
    CHECKF(strstr(g_log, "falling back to the CPU backend") && strstr(g_log, "no device matches 'no-such-device'"),
           "log: %s", g_log);
    CHECK(t_nerr(got, ref, 97) == 0.0);
    cp.backend = MOECL_BACKEND_OPENCL;
    CHECK(!logits_with(m, cp, got, &st) && st == MOECL_ERR_BACKEND);
    CHECKF(strstr(moecl_last_error(), "no device matches 'no-such-device'"), "error: %s", moecl_last_error());
    cp.device = NULL;

    /* a budget of 0 MiB: every expert on the CPU, said so */
    cp.gpu_mem_mib = 0;
    CHECK(logits_with(m, cp, got, &st));
    CHECKF(strstr(g_log, "every expert on the CPU"), "log: %s", g_log);
    CHECK(t_nerr(got, ref, 97) == 0.0);
    cp.gpu_mem_mib = -1;

    /* a kernel build that fails */
    setenv("MOECL_CL_OPTIONS", "-cl-no-such-option", 1);
    cp.device = g_dev_sel;
    cp.backend = MOECL_BACKEND_AUTO;
    CHECK(logits_with(m, cp, got, &st));
    CHECKF(strstr(g_log, "falling back to the CPU backend") && strstr(g_log, "moe_ffn.cl"), "log: %s", g_log);
    CHECK(t_nerr(got, ref, 97) == 0.0);
    cp.backend = MOECL_BACKEND_OPENCL;
    CHECK(!logits_with(m, cp, got, &st) && st == MOECL_ERR_BACKEND);
    CHECKF(strstr(moecl_last_error(), "-cl-no-such-option"), "error: %s", moecl_last_error());
    unsetenv("MOECL_CL_OPTIONS");

    /* kernels loaded from a directory that lacks them */
    setenv("MOECL_CL_DIR", "/nonexistent-moecl-cl", 1);
    CHECK(!logits_with(m, cp, got, &st) && st != MOECL_OK);
    CHECKF(strstr(moecl_last_error(), "/nonexistent-moecl-cl/moe_ffn.cl"), "error: %s", moecl_last_error());
    unsetenv("MOECL_CL_DIR");

    moecl_log_set(NULL, MOECL_LOG_WARN, NULL);
    moecl_model_free(m);
}

/* ------------------------------------------------------------------------ */
/* Devices lacking a feature, allocations that fail, a device that fails    */
/* ------------------------------------------------------------------------ */

/* With env=val: AUTO (the device named) warns with msg and the device name
 * and gives the CPU's logits; OPENCL fails with msg. */
static void expect_refused(const moecl_model *m, const float *ref, const char *dev, const char *env, const char *val,
                           const char *msg) {
    setenv(env, val, 1);
    moecl_context_params cp = moecl_context_default_params();
    cp.device = g_dev_sel;
    float got[97];
    moecl_status st;
    CHECK(logits_with(m, cp, got, &st));
    CHECKF(strstr(g_log, "falling back to the CPU backend") && strstr(g_log, msg) && strstr(g_log, dev),
           "%s=%s: log: %s", env, val, g_log);
    CHECK(t_nerr(got, ref, 97) == 0.0);
    cp.backend = MOECL_BACKEND_OPENCL;
    CHECK(!logits_with(m, cp, got, &st) && st == MOECL_ERR_BACKEND);
    CHECKF(strstr(moecl_last_error(), msg), "%s=%s: error: %s", env, val, moecl_last_error());
    fprintf(stderr, "  %s=%s: %s\n", env, val, moecl_last_error());
    unsetenv(env);
}

/* The prompt, then one more token: the logits of both steps. */
static bool two_steps(const moecl_model *m, moecl_backend_type backend, float *a, float *b) {
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = backend;
    cp.n_ctx = 32;
    cp.n_threads = 2;
    moecl_context *ctx = NULL;
    g_log[0] = '\0';
    if (moecl_context_new(m, &cp, &ctx)) return false;
    bool ok = moecl_decode(ctx, prompt, 7) == MOECL_OK && moecl_get_logits(ctx, -1);
    if (ok) memcpy(a, moecl_get_logits(ctx, -1), 97 * sizeof(float));
    const int32_t next = 3;
    ok = ok && moecl_decode(ctx, &next, 1) == MOECL_OK && moecl_get_logits(ctx, -1);
    if (ok) memcpy(b, moecl_get_logits(ctx, -1), 97 * sizeof(float));
    ok = ok && moecl_seq_length(ctx, 0) == 8;
    moecl_context_free(ctx);
    return ok;
}

/* With env=val the device fails during the decode: both steps still give
 * the CPU's logits, and the log says what happened. */
static void expect_survives(const moecl_model *m, const float *ra, const float *rb, const char *env, const char *val,
                            const char *msg) {
    setenv(env, val, 1);
    float a[97], b[97];
    CHECKF(two_steps(m, MOECL_BACKEND_OPENCL, a, b), "%s=%s: %s", env, val, moecl_last_error());
    CHECKF(strstr(g_log, msg) && strstr(g_log, "run on the CPU") && strstr(g_log, "not used again"),
           "%s=%s: log: %s", env, val, g_log);
    const double ea = t_nerr(a, ra, 97), eb = t_nerr(b, rb, 97);
    CHECKF(ea <= 1e-5 && eb <= 1e-5, "%s=%s: nerr %.3g, %.3g", env, val, ea, eb);
    fprintf(stderr, "  %s=%s: decoded on, nerr %.3g / %.3g\n", env, val, ea, eb);
    unsetenv(env);
}

static void test_failures(const char *dir) {
    moecl_model *m = NULL;
    CHECKF(moecl_model_load(dir, NULL, &m) == MOECL_OK, "%s", moecl_last_error());
    if (!m) return;
    moecl_device_info di;
    CHECK(moecl_device_get_info(g_dev_index, &di) == MOECL_OK);
    moecl_log_set(capture, MOECL_LOG_INFO, NULL);
    fprintf(stderr, "device features and failures:\n");
    float ref[97], ra[97], rb[97];
    moecl_status st;
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_CPU;
    CHECK(logits_with(m, cp, ref, &st));
    CHECK(two_steps(m, MOECL_BACKEND_CPU, ra, rb));

    /* a device without what the kernels need */
    expect_refused(m, ref, di.name, "MOECL_CL_TEST_LIMITS", "clc=11", "takes OpenCL C 1.1; the kernels need 1.2");
    expect_refused(m, ref, di.name, "MOECL_CL_TEST_LIMITS", "wg=8", "work-groups of 8 work-items");
    expect_refused(m, ref, di.name, "MOECL_CL_TEST_LIMITS", "local=64", "bytes of local memory");
    expect_refused(m, ref, di.name, "MOECL_CL_TEST_LIMITS", "max_alloc=4096", "less than one expert matrix");
    /* tunables shrink to fit a smaller device, which then works */
    setenv("MOECL_CL_TEST_LIMITS", "wg=64,local=2048", 1);
    float got[97];
    cp.backend = MOECL_BACKEND_OPENCL;
    CHECKF(logits_with(m, cp, got, &st), "%s", moecl_last_error());
    CHECK(t_nerr(got, ref, 97) <= 1e-5);
    unsetenv("MOECL_CL_TEST_LIMITS");

    /* a weight buffer that cannot be allocated (the 1st is the groups) */
    expect_refused(m, ref, di.name, "MOECL_CL_FAIL_ALLOC", "3", "cannot allocate");

    /* the device failing in the middle of a decode */
    const int L = m->hp.n_layer;
    char n[32];
    snprintf(n, sizeof n, "%d", 1 + 3 * L + 1); /* the activations, at the first decode */
    expect_survives(m, ra, rb, "MOECL_CL_FAIL_ALLOC", n, "cannot allocate activations");
    expect_survives(m, ra, rb, "MOECL_CL_FAIL_AT", "submit:1", "enqueueing the expert FFNs of layer 0");
    expect_survives(m, ra, rb, "MOECL_CL_FAIL_AT", "submit:2", "enqueueing the expert FFNs of layer 1");
    expect_survives(m, ra, rb, "MOECL_CL_FAIL_AT", "wait:1", "waiting for the expert FFNs of layer 0");
    snprintf(n, sizeof n, "wait:%d", L + 1); /* the second step */
    expect_survives(m, ra, rb, "MOECL_CL_FAIL_AT", n, "waiting for the expert FFNs of layer 0");

    moecl_log_set(NULL, MOECL_LOG_WARN, NULL);
    moecl_model_free(m);
}

/* ------------------------------------------------------------------------ */
/* Quantized experts                                                        */
/* ------------------------------------------------------------------------ */

/* Y[n, D] = (silu(X·W1ᵀ) ⊙ X·W3ᵀ)·W2ᵀ in float64. */
static void ref_ffn(const float *w1, const float *w3, const float *w2, const float *X, int64_t n, int D, int F,
                    float *Y) {
    double *h = malloc((size_t)F * sizeof(double));
    for (int64_t r = 0; r < n; r++) {
        const float *x = X + r * D;
        for (int f = 0; f < F; f++) {
            double a1 = 0, a3 = 0;
            for (int k = 0; k < D; k++) {
                a1 += (double)w1[(int64_t)f * D + k] * x[k];
                a3 += (double)w3[(int64_t)f * D + k] * x[k];
            }
            h[f] = a1 / (1.0 + exp(-a1)) * a3;
        }
        for (int d = 0; d < D; d++) {
            double a = 0;
            for (int f = 0; f < F; f++) a += (double)w2[(int64_t)d * F + f] * h[f];
            Y[r * D + d] = (float)a;
        }
    }
    free(h);
}

/* The device's expert FFNs against ref_ffn over deq ([layer][expert][w1, w3, w2]). */
static void compare_ref(mc_backend *cl, const moecl_model *m, int layer, const int *rows, int64_t r0,
                        float *const *deq, double bound, const char *what, uint64_t *seed) {
    const int E = m->hp.n_expert, D = m->hp.n_embd, F = m->hp.n_ff;
    int ids[64], n_used = 0;
    int64_t offs[65];
    offs[0] = r0;
    for (int e = 0; e < E; e++)
        if (rows[e]) {
            ids[n_used] = e;
            offs[n_used + 1] = offs[n_used] + rows[e];
            n_used++;
        }
    const int64_t R = offs[n_used];
    float *X = malloc((size_t)R * D * sizeof(float)), *Yr = calloc((size_t)R * D, sizeof(float)),
          *Yg = calloc((size_t)R * D, sizeof(float));
    for (int64_t i = 0; i < R * D; i++) X[i] = t_rand_f(seed);
    for (int i = 0; i < n_used; i++) {
        float *const *w = deq + ((int64_t)layer * E + ids[i]) * 3;
        ref_ffn(w[0], w[1], w[2], X + offs[i] * D, offs[i + 1] - offs[i], D, F, Yr + offs[i] * D);
    }
    mc_moe_work w = {.layer = layer, .n_used = n_used, .expert_ids = ids, .offsets = offs, .X = X, .Y = Yg};
    CHECKF(cl->iface->moe_submit(cl, &w) == MOECL_OK, "%s: submit: %s", what, moecl_last_error());
    CHECKF(cl->iface->moe_wait(cl) == MOECL_OK, "%s: wait: %s", what, moecl_last_error());
    const double e = t_nerr(Yg + r0 * D, Yr + r0 * D, (size_t)((R - r0) * D));
    CHECKF(e <= bound, "%s: normalised error %.3g > %.1g", what, e, bound);
    fprintf(stderr, "  %-44s %5lld rows  nerr %.3g\n", what, (long long)(R - r0), e);
    free(X);
    free(Yr);
    free(Yg);
}

static void test_quant_type(moecl_model *m, moecl_dtype t) {
    const int E = m->hp.n_expert, L = m->hp.n_layer;
    float **deq = calloc((size_t)L * E * 3, sizeof *deq);
    void **blocks = calloc((size_t)L * E * 3, sizeof *blocks);
    mc_tensor *saved = calloc((size_t)L * E * 3, sizeof *saved);
    uint64_t bytes = 0;
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            mc_expert *x = &m->layers[l].experts[e];
            mc_tensor *ws[3] = {&x->w1, &x->w3, &x->w2};
            for (int i = 0; i < 3; i++) {
                const int64_t k = ((int64_t)l * E + e) * 3 + i, n = ws[i]->rows * ws[i]->cols;
                size_t rb = 0;
                CHECK(mc_dtype_row_bytes(t, ws[i]->cols, &rb));
                deq[k] = malloc((size_t)n * sizeof(float));
                blocks[k] = malloc(rb * (size_t)ws[i]->rows);
                mc_cpu_to_f32(ws[i]->type, ws[i]->data, deq[k], n);
                mc_quantize_row(t, deq[k], blocks[k], n);
                mc_dequantize_row(t, blocks[k], deq[k], n); /* the weights the device must use */
                float big = 0;
                for (int64_t j = 0; j < n; j++) big = fmaxf(big, fabsf(deq[k][j]));
                CHECKF(big > 0.01f, "%s: the quantized weights are all zero", moecl_dtype_name(t));
                saved[k] = *ws[i];
                ws[i]->type = t;
                ws[i]->data = blocks[k];
                ws[i]->nbytes = rb * (size_t)ws[i]->rows;
                bytes += ws[i]->nbytes;
            }
        }
    fprintf(stderr, "%s experts (D=%d, F=%d, E=%d), %.1f KiB on the device:\n", moecl_dtype_name(t), m->hp.n_embd,
            m->hp.n_ff, E, (double)bytes / 1024.0);
    uint8_t *place = calloc((size_t)L * E, 1);
    int64_t n_placed = 0;
    mc_opencl_params op = {.selector = getenv("MOECL_DEVICE"), .gpu_only = false, .mem_budget = -1,
                           .experts_per_layer = -1, .dtype = MOECL_DTYPE_COUNT, .pool = test_pool()};
    for (int pass = 0; pass < 2; pass++) { /* the blocks as they are; then dequantized to F32 at upload */
        op.dtype = pass ? MOECL_DTYPE_F32 : MOECL_DTYPE_COUNT;
        mc_backend *cl = NULL;
        CHECKF(mc_backend_opencl_new(m, &op, place, 1, &n_placed, &cl) == MOECL_OK, "%s", moecl_last_error());
        if (!cl) continue;
        CHECK(n_placed == (int64_t)L * E);
        char name[128];
        uint64_t dev_bytes = 0;
        moecl_dtype dd;
        mc_backend_opencl_describe(cl, name, sizeof name, &dev_bytes, &dd);
        CHECKF(dd == (pass ? MOECL_DTYPE_F32 : t), "device dtype %s", moecl_dtype_name(dd));
        CHECKF(dev_bytes == (pass ? (uint64_t)L * E * 3 * m->hp.n_ff * m->hp.n_embd * 4 : bytes),
               "device bytes %llu", (unsigned long long)dev_bytes);
        uint64_t seed = 7 + (uint64_t)t;
        int rows[64];
        char what[128];
        const char *as = pass ? "as f32" : "as blocks";
        for (int layer = 0; layer < L; layer++) {
            memset(rows, 0, sizeof rows);
            rows[E - 1] = 1;
            snprintf(what, sizeof what, "%s layer %d: 1 row", as, layer);
            compare_ref(cl, m, layer, rows, 0, deq, 1e-5, what, &seed);
            memset(rows, 0, sizeof rows);
            int left = 13; /* a prime, spread unevenly; some experts get none */
            for (int e = 0; e < E && left; e++) {
                rows[e] = e == E - 1 ? left : (int)(t_rand_u64(&seed) % (uint64_t)(left + 1));
                left -= rows[e];
            }
            snprintf(what, sizeof what, "%s layer %d: 13 rows spread", as, layer);
            compare_ref(cl, m, layer, rows, 0, deq, 1e-5, what, &seed);
            memset(rows, 0, sizeof rows);
            rows[1] = 37;
            snprintf(what, sizeof what, "%s layer %d: 37 rows on one expert", as, layer);
            compare_ref(cl, m, layer, rows, 0, deq, 1e-5, what, &seed);
            memset(rows, 0, sizeof rows);
            for (int e = 0; e < E; e += 2) rows[e] = 3 + 5 * e; /* odd experts have none */
            snprintf(what, sizeof what, "%s layer %d: every other expert from row 5", as, layer);
            compare_ref(cl, m, layer, rows, 5, deq, 1e-5, what, &seed);
        }
        mc_backend_free(cl);
    }
    /* placement counts the blocks' bytes: a budget of L + 1 experts */
    op.dtype = MOECL_DTYPE_COUNT;
    op.mem_budget = (int64_t)(bytes / ((uint64_t)L * E) * (uint64_t)(L + 1));
    mc_backend *cl = NULL;
    CHECKF(mc_backend_opencl_new(m, &op, place, 1, &n_placed, &cl) == MOECL_OK, "%s", moecl_last_error());
    CHECKF(n_placed == L + 1, "%lld placed", (long long)n_placed);
    mc_backend_free(cl);
    for (int64_t k = 0; k < (int64_t)L * E * 3; k++) {
        const int64_t l = k / (3 * E), e = k / 3 % E, i = k % 3;
        mc_expert *x = &m->layers[l].experts[e];
        mc_tensor *ws[3] = {&x->w1, &x->w3, &x->w2};
        *ws[i] = saved[k];
        free(deq[k]);
        free(blocks[k]);
    }
    free(deq);
    free(blocks);
    free(saved);
    free(place);
}

static void test_quant(const char *tmp) {
    char dir[4200];
    moecl_random_model_params p = tiny_params();
    p.n_embd = 256; /* whole K-quant blocks */
    p.n_ff = 512;
    p.n_expert = 8;
    p.n_head = 4;
    p.n_head_kv = 2;
    snprintf(dir, sizeof dir, "%s/quant", tmp);
    CHECKF(moecl_random_model_write(dir, &p, NULL, NULL) == MOECL_OK, "%s", moecl_last_error());
    moecl_model *m = NULL;
    CHECKF(moecl_model_load(dir, NULL, &m) == MOECL_OK, "%s", moecl_last_error());
    if (!m) return;
    const moecl_dtype types[5] = {MOECL_DTYPE_Q8_0, MOECL_DTYPE_Q4_0, MOECL_DTYPE_Q4_K, MOECL_DTYPE_Q5_K,
                                  MOECL_DTYPE_Q6_K};
    for (int i = 0; i < 5; i++) test_quant_type(m, types[i]);
    moecl_model_free(m);
}

/* ------------------------------------------------------------------------ */
/* The program binary cache                                                 */
/* ------------------------------------------------------------------------ */

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECKF(f != NULL, "cannot write %s", path);
    if (!f) return;
    CHECK(fwrite(p, 1, n, f) == n);
    CHECK(fclose(f) == 0);
}

/* The other moe_ffn.cl entry of the cache directory than `real`. */
static bool other_entry(const char *cache, const char *real, char *out, size_t len) {
    DIR *d = opendir(cache);
    bool found = false;
    for (struct dirent *e; d && !found && (e = readdir(d));) {
        if ((size_t)snprintf(out, len, "%s/%s", cache, e->d_name) >= len) continue;
        found = !strncmp(e->d_name, "moe_ffn.cl-", 11) && strcmp(out, real) && !strstr(e->d_name, ".tmp");
    }
    if (d) closedir(d);
    return found;
}

/* One start from a cache entry damaged as `what`: the log names the file and
 * says why, the program is compiled again, the logits are unchanged, and the
 * entry is good again afterwards. */
static void expect_rebuilt(const moecl_model *m, moecl_context_params cp, const float *ref, const char *path,
                           const char *what, const char *why) {
    float got[97];
    moecl_status st;
    CHECKF(logits_with(m, cp, got, &st), "%s: %s", what, moecl_last_error());
    CHECKF(strstr(g_log, "cached binary") && strstr(g_log, path) && strstr(g_log, why) &&
           strstr(g_log, "compiling again") && strstr(g_log, "compiled moe_ffn.cl") &&
           strstr(g_log, "cached the program binary at"), "%s: %s", what, g_log);
    CHECKF(t_nerr(got, ref, 97) == 0.0, "%s: logits differ", what);
    CHECKF(logits_with(m, cp, got, &st) && strstr(g_log, "from the cache"), "%s, then: %s", what, g_log);
    CHECK(t_nerr(got, ref, 97) == 0.0);
    fprintf(stderr, "  %s: rebuilt (%s)\n", what, why);
}

static void test_cache(const char *model_dir) {
    char cache[4200], path[4400] = "";
    snprintf(cache, sizeof cache, "%s/cl-cache", model_dir);
    const char *prev = getenv("MOECL_CACHE_DIR");
    char *saved = prev ? strdup(prev) : NULL;
    setenv("MOECL_CACHE_DIR", cache, 1);
    moecl_model *m = NULL;
    CHECK(moecl_model_load(model_dir, NULL, &m) == MOECL_OK);
    if (!m) {
        free(saved);
        return;
    }
    moecl_log_set(capture, MOECL_LOG_INFO, NULL);
    float ref[97], got[97];
    moecl_status st;
    moecl_context_params cp = moecl_context_default_params();
    cp.backend = MOECL_BACKEND_OPENCL;
    cp.device = g_dev_sel;
    CHECK(logits_with(m, cp, ref, &st));
    CHECKF(strstr(g_log, "cached the program binary at"), "first start: %s", g_log);
    /* moe_ffn.cl's entry (the bandwidth probe's probe.cl is cached too) */
    for (const char *at = g_log; (at = strstr(at, "cached the program binary at ")) != NULL; at++)
        if (sscanf(at + strlen("cached the program binary at "), "%4399s", path) == 1 && strstr(path, "/moe_ffn.cl-"))
            break;
        else
            path[0] = '\0';
    CHECK(logits_with(m, cp, got, &st));
    CHECKF(strstr(g_log, "from the cache"), "second start: %s", g_log);
    CHECK(t_nerr(got, ref, 97) == 0.0);
    fprintf(stderr, "cache: %s\n", path);

    /* Damaged entries never reach the driver (PoCL aborts on a truncated
     * binary, rusticl panics on a damaged one). */
    size_t n = 0;
    unsigned char *good = path[0] ? (unsigned char *)t_read_file(path, &n) : NULL;
    CHECK(good && n > 64);
    if (good && n > 64) {
        write_bytes(path, good, n / 2);
        expect_rebuilt(m, cp, ref, path, "truncated to half", "length differs");
        write_bytes(path, good, 20);
        expect_rebuilt(m, cp, ref, path, "truncated inside the header", "shorter than its header");
        unsigned char *bad = malloc(n);
        memcpy(bad, good, n);
        bad[n / 2] ^= 0x5a;
        bad[n - 1] ^= 0x01;
        write_bytes(path, bad, n);
        expect_rebuilt(m, cp, ref, path, "two bytes flipped", "checksum");
        memcpy(bad, good, n);
        bad[3] ^= 0x20;
        write_bytes(path, bad, n);
        expect_rebuilt(m, cp, ref, path, "magic flipped", "no moecl cache header");
        free(bad);
        write_bytes(path, "not a program binary", 20);
        expect_rebuilt(m, cp, ref, path, "not a binary", "shorter than its header");

        /* A sound entry of another program, lacking the kernels: a stub
         * moe_ffn.cl built through MOECL_CL_DIR, its entry copied over. */
        char stub_dir[4300], stub[4400], other[4400];
        snprintf(stub_dir, sizeof stub_dir, "%s/stub-cl", model_dir);
        mkdir(stub_dir, 0755);
        snprintf(stub, sizeof stub, "%s/moe_ffn.cl", stub_dir);
        const char *text = "__kernel void stub(__global float *x) { x[0] = 1.0f; }\n";
        write_bytes(stub, text, strlen(text));
        setenv("MOECL_CL_DIR", stub_dir, 1);
        CHECK(!logits_with(m, cp, got, &st)); /* no such kernels */
        unsetenv("MOECL_CL_DIR");
        CHECKF(other_entry(cache, path, other, sizeof other), "no cache entry for the stub in %s", cache);
        size_t k = 0;
        char *wrong = t_read_file(other, &k);
        CHECK(wrong != NULL);
        if (wrong) {
            write_bytes(path, wrong, k);
            expect_rebuilt(m, cp, ref, path, "another program's binary", "CL_INVALID_KERNEL_NAME");
        }
        free(wrong);
    }
    free(good);

    /* MOECL_CL_CACHE turns the cache off, for every device or by name */
    const char *offs[3] = {"0", "off", NULL};
    char by_name[300];
    moecl_device_info di;
    CHECK(moecl_device_get_info(g_dev_index, &di) == MOECL_OK);
    snprintf(by_name, sizeof by_name, "off:no-such-driver,%s", di.name);
    offs[2] = by_name;
    for (int i = 0; i < 3; i++) {
        setenv("MOECL_CL_CACHE", offs[i], 1);
        CHECK(logits_with(m, cp, got, &st));
        CHECKF(!strstr(g_log, "from the cache") && !strstr(g_log, "cached the program") &&
               strstr(g_log, "compiled moe_ffn.cl"), "MOECL_CL_CACHE=%s: %s", offs[i], g_log);
        CHECK(t_nerr(got, ref, 97) == 0.0);
    }
    setenv("MOECL_CL_CACHE", "off:no-such-driver", 1);
    CHECK(logits_with(m, cp, got, &st));
    CHECKF(strstr(g_log, "from the cache"), "MOECL_CL_CACHE=off:no-such-driver: %s", g_log);
    unsetenv("MOECL_CL_CACHE");

    moecl_log_set(NULL, MOECL_LOG_WARN, NULL);
    moecl_model_free(m);
    if (saved) setenv("MOECL_CACHE_DIR", saved, 1);
    else unsetenv("MOECL_CACHE_DIR");
    free(saved);
}

int main(void) {
    if (moecl_device_count() == 0) return t_skip("opencl", "no OpenCL device (no ICD or no platform)");
    /* every sub-test on the device $MOECL_DEVICE names (an index or a name) */
    const char *sel = getenv("MOECL_DEVICE");
    mc_cl_device dev;
    if (mc_cl_select(sel && *sel ? sel : "0", false, &dev) != MOECL_OK) {
        fprintf(stderr, "opencl: SKIP: MOECL_DEVICE=%s: %s\n", sel, moecl_last_error());
        return 77;
    }
    g_dev_index = dev.index;
    snprintf(g_dev_sel, sizeof g_dev_sel, "%d", dev.index);
    moecl_device_info di;
    CHECK(moecl_device_get_info(g_dev_index, &di) == MOECL_OK);
    fprintf(stderr, "device: %s / %s (%s), %.0f MiB\n", di.platform, di.name, di.version,
            (double)di.global_mem / 1048576.0);
    CHECK(moecl_device_get_info(-1, &di) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_device_get_info(0, NULL) == MOECL_ERR_INVALID_ARG);

    char buf[4096];
    const char *dir = tiny_model_dir(buf, sizeof buf);
    CHECK(dir != NULL);
    if (dir) {
        test_fallback(dir);
        test_failures(dir);
        test_quant(dir);
        test_cache(dir);
        test_ops(dir);
        remove_dir(dir);
    }
    mc_pool_free(g_pool);
    return t_done("opencl");
}
