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
 *   cache: a second start loads the program binary from the cache; a
 *     damaged binary is compiled again.
 *
 * Skips (77) when there is no OpenCL device. The device: $MOECL_DEVICE,
 * else the first one.
 */
#include "test_util.h"
#include "tiny_model.h"

#include "backend/backend.h"
#include "model.h"

#include <string.h>

/* ------------------------------------------------------------------------ */
/* Log capture                                                              */
/* ------------------------------------------------------------------------ */

static char g_log[8192];

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

static void test_ops_model(const char *dir, moecl_dtype dev_dtype, double bound) {
    moecl_model *m = NULL;
    CHECKF(moecl_model_load(dir, NULL, &m) == MOECL_OK, "%s: %s", dir, moecl_last_error());
    if (!m) return;
    const int E = m->hp.n_expert, L = m->hp.n_layer;
    fprintf(stderr, "%s (%s weights, E=%d, D=%d, F=%d) with %s on the device\n", dir,
            moecl_dtype_name(m->layers[0].experts[0].w1.type), E, m->hp.n_embd, m->hp.n_ff,
            moecl_dtype_name(dev_dtype));
    mc_backend *cpu = NULL, *cl = NULL;
    CHECK(mc_backend_cpu_new(m, 2, &cpu) == MOECL_OK);
    uint8_t *place = calloc((size_t)L * E, 1);
    int64_t n_placed = 0;
    mc_opencl_params op = {.selector = getenv("MOECL_DEVICE"), .gpu_only = false, .mem_budget = -1,
                           .experts_per_layer = -1, .dtype = dev_dtype, .n_threads = 2};
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
    moecl_device_get_info(0, &di);
    setenv("MOECL_CL_FEW_ROWS", di.is_gpu ? "rows" : "vec", 1);
    fprintf(stderr, "MOECL_CL_FEW_ROWS=%s:\n", getenv("MOECL_CL_FEW_ROWS"));
    for (int i = 0; i < 2; i++) {
        snprintf(dir, sizeof dir, "%s/%s", tmp, moecl_dtype_name(dts[i]));
        test_ops_model(dir, dts[i], 1e-5);
    }
    if (prev) setenv("MOECL_CL_FEW_ROWS", prev, 1);
    else unsetenv("MOECL_CL_FEW_ROWS");
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
    cp.device = "0";
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
/* The program binary cache                                                 */
/* ------------------------------------------------------------------------ */

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
    CHECK(logits_with(m, cp, ref, &st));
    CHECKF(strstr(g_log, "cached the program binary at"), "first start: %s", g_log);
    const char *at = strstr(g_log, "cached the program binary at ");
    if (at) sscanf(at + strlen("cached the program binary at "), "%4399s", path);
    CHECK(logits_with(m, cp, got, &st));
    CHECKF(strstr(g_log, "from the cache"), "second start: %s", g_log);
    CHECK(t_nerr(got, ref, 97) == 0.0);
    FILE *f = path[0] ? fopen(path, "wb") : NULL; /* a damaged binary is rebuilt from source */
    CHECK(f != NULL);
    if (f) {
        fputs("not a program binary", f);
        fclose(f);
        CHECK(logits_with(m, cp, got, &st));
        CHECKF(strstr(g_log, "does not load") && strstr(g_log, "compiled moe_ffn.cl"), "damaged: %s", g_log);
        CHECK(t_nerr(got, ref, 97) == 0.0);
    }
    fprintf(stderr, "cache: %s\n", path);
    moecl_log_set(NULL, MOECL_LOG_WARN, NULL);
    moecl_model_free(m);
    if (saved) setenv("MOECL_CACHE_DIR", saved, 1);
    else unsetenv("MOECL_CACHE_DIR");
    free(saved);
}

int main(void) {
    if (moecl_device_count() == 0) return t_skip("opencl", "no OpenCL device (no ICD or no platform)");
    moecl_device_info di;
    const char *sel = getenv("MOECL_DEVICE");
    CHECK(moecl_device_get_info(sel && *sel >= '0' && *sel <= '9' ? atoi(sel) : 0, &di) == MOECL_OK);
    fprintf(stderr, "device: %s / %s (%s), %.0f MiB\n", di.platform, di.name, di.version,
            (double)di.global_mem / 1048576.0);
    CHECK(moecl_device_get_info(-1, &di) == MOECL_ERR_INVALID_ARG);
    CHECK(moecl_device_get_info(0, NULL) == MOECL_ERR_INVALID_ARG);

    char buf[4096];
    const char *dir = tiny_model_dir(buf, sizeof buf);
    CHECK(dir != NULL);
    if (dir) {
        test_fallback(dir);
        test_cache(dir);
        test_ops(dir);
        remove_dir(dir);
    }
    return t_done("opencl");
}
