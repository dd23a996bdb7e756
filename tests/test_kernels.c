/*
 * test_kernels.c - the CPU kernels against float64 references.
 *
 * Every matmul configuration (dtype x shape x T) is computed once in double
 * from the same dtype-rounded weights, then mc_cpu_matmul is run with 1 and
 * 2 threads under each instruction set this CPU has (the detected one, the
 * lower ones by capping with MOECL_CPU_ISA - AVX2 on x86; NEON without
 * sdot, and FP16 arithmetic, on ARM - and forced scalar) and compared by
 * normalised error. F16 weights in FP16 arithmetic (ARM, MOECL_CPU_ISA=fp16)
 * have their own bound, FP16_BOUND. Conversions are checked bit-exactly on all 65536 inputs.
 * Quantized weights (Q8_0 .. Q6_K) are compared against a float64 product of
 * their mc_dequantize_row values, under the same 1e-5 bound (the kernels
 * keep activations in float32; only accumulation order differs) - except
 * on the int8 path (mc_cpu_quant_int8: T <= 8, any int8 kernels), which
 * rounds the activations to 8 bits, 32 columns per scale, and gets its own
 * bound, QINT_BOUND. There the same product is also run under forced scalar
 * (float activations) and the two compared.
 *
 * Each int8 kernel set (AVX2, AVX-VNNI, AVX-512 VNNI; NEON, NEON sdot) is
 * then selected by name through MOECL_CPU_ISA and run at every T <= 8 on
 * awkward shapes; the test fails if the kernels that ran are not the ones
 * asked for (AVX2 must be there on any CPU with AVX2, NEON on any ARM64;
 * the others are skipped, and said so, on CPUs without them). Last,
 * MOECL_CPU_ISA values: names in any case, and an unknown one refused by
 * moecl_context_new.
 *
 * Environment (all optional):
 *   MOECL_TEST_QUICK=1        fewer and smaller shapes, still awkward ones
 *                             (for qemu: tools/test-aarch64.sh)
 *   MOECL_TEST_EXPECT_INT8=K  the detected int8 kernels must be K (qemu's CPU
 *                             models: is the run-time detection right?)
 *   MOECL_TEST_EXPECT_FP16=0|1  whether MOECL_CPU_ISA=fp16 must be available
 */
#include "backend/cpu/kernels.h"
#include "backend/cpu/kernels_impl.h" /* mc_qact_make, mc_qact_round */
#include "quant/quant.h"
#include "test_util.h"
#include "tiny_model.h"

#include "moecl.h"

#include <stdbool.h>
#include <string.h>

/* ---- instruction-set modes ------------------------------------------------ */

/* auto, the levels named with MOECL_CPU_ISA (each must give the float
 * kernels named the same), scalar */
#if defined(__aarch64__)
enum { MODE_AUTO, MODE_NEON, MODE_FP16, MODE_SCALAR, MODE_COUNT };
static const char *const mode_names[MODE_COUNT] = {"auto", "neon", "fp16", "scalar"};
#else
enum { MODE_AUTO, MODE_AVX2, MODE_SCALAR, MODE_COUNT };
static const char *const mode_names[MODE_COUNT] = {"auto", "avx2", "scalar"};
#endif

static bool quick = false; /* MOECL_TEST_QUICK */

/* Switch the kernels to a mode; false if this CPU cannot run it (or it
 * would be the same as auto). */
static bool set_mode(int mode) {
    unsetenv("MOECL_CPU_ISA");
    mc_cpu_force_scalar(false);
    if (mode == MODE_SCALAR) {
        mc_cpu_force_scalar(true);
        return strcmp(mc_cpu_isa(), "scalar") == 0;
    }
    if (mode != MODE_AUTO) {
        const char *auto_isa = mc_cpu_isa(), *auto_int8 = mc_cpu_int8_kernels();
        setenv("MOECL_CPU_ISA", mode_names[mode], 1);
        mc_cpu_force_scalar(false); /* re-detect under the cap */
        return strcmp(mc_cpu_isa(), mode_names[mode]) == 0 &&
               (strcmp(mc_cpu_isa(), auto_isa) != 0 || strcmp(mc_cpu_int8_kernels(), auto_int8) != 0);
    }
    return true;
}

/* ---- independent number-format references --------------------------------- */

/* binary16 from its fields, in double (exact), then to float (exact). */
static float ref_f16(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0x1f) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp((double)m, -24);
    else v = ldexp((double)(m + 1024), e - 25);
    return (float)(s ? -v : v);
}

static float ref_bf16(uint16_t h) {
    int s = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
    double v;
    if (e == 0xff) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp((double)m, -133);
    else v = ldexp((double)(m + 128), e - 134);
    return (float)(s ? -v : v);
}

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Some binary16 value near f (truncated: any representable value is a fine
 * weight), subnormals included. */
static uint16_t trunc_f16(float f) {
    uint16_t sign = f < 0 ? 0x8000 : 0;
    float a = fabsf(f);
    if (a < 0x1p-14f) return sign | (uint16_t)(a * 0x1p24f);
    int e;
    double m = frexp(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    return sign | (uint16_t)((e + 14) << 10) | (uint16_t)((int)(m * 2048) & 0x3ff);
}

/* ---- conversions ------------------------------------------------------------ */

static void test_conversions(const char *mode) {
    enum { N = 65536 };
    uint16_t *h = malloc(N * sizeof *h);
    float *out = malloc(N * sizeof *out);
    for (int i = 0; i < N; i++) h[i] = (uint16_t)i;

    for (int dt = MOECL_DTYPE_F16; dt <= MOECL_DTYPE_BF16; dt++) {
        float (*ref)(uint16_t) = dt == MOECL_DTYPE_F16 ? ref_f16 : ref_bf16;
        mc_cpu_to_f32((moecl_dtype)dt, h, out, N);
        int bad = 0;
        for (int i = 0; i < N; i++) {
            float r = ref((uint16_t)i);
            bool ok = isnan(r) ? isnan(out[i]) : bits(out[i]) == bits(r);
            if (!ok && bad++ < 5)
                fprintf(stderr, "  %s %s: 0x%04x -> %a (0x%08x), expected %a\n", mode, moecl_dtype_name(dt), i,
                        (double)out[i], bits(out[i]), (double)r);
        }
        CHECKF(bad == 0, "%s %s: %d of 65536 conversions wrong", mode, moecl_dtype_name(dt), bad);

        /* Every length and misalignment of the vector tails; nothing
         * written past n. */
        int tail_bad = 0;
        for (int off = 0; off < 3; off++)
            for (int n = 0; n <= 40; n++) {
                float buf[48];
                for (int i = 0; i < 48; i++) buf[i] = -7.0f;
                mc_cpu_to_f32((moecl_dtype)dt, h + 0x3c00 + off, buf, n);
                for (int i = 0; i < 48; i++) {
                    float want = i < n ? ref((uint16_t)(0x3c00 + off + i)) : -7.0f;
                    if (bits(buf[i]) != bits(want)) tail_bad++;
                }
            }
        CHECKF(tail_bad == 0, "%s %s: %d wrong elements in tail tests", mode, moecl_dtype_name(dt), tail_bad);
    }

    float src[37], dst[37];
    for (int i = 0; i < 37; i++) src[i] = (float)i * 0.37f - 3;
    mc_cpu_to_f32(MOECL_DTYPE_F32, src, dst, 37);
    CHECK(memcmp(src, dst, sizeof src) == 0);
    free(h);
    free(out);
}

/* Every instruction set gives the same bits for all 65536 inputs, NaN
 * payloads included (the scalar code quiets NaNs the way F16C does). */
static void test_conversions_agree(const bool modes[MODE_COUNT]) {
    enum { N = 65536 };
    uint16_t *h = malloc(N * sizeof *h);
    float *ref = malloc(N * sizeof *ref), *out = malloc(N * sizeof *out);
    for (int i = 0; i < N; i++) h[i] = (uint16_t)i;
    for (int dt = MOECL_DTYPE_F16; dt <= MOECL_DTYPE_BF16; dt++) {
        set_mode(MODE_SCALAR);
        mc_cpu_to_f32((moecl_dtype)dt, h, ref, N);
        for (int mode = MODE_AUTO; mode < MODE_SCALAR; mode++) {
            if (!modes[mode]) continue;
            set_mode(mode);
            mc_cpu_to_f32((moecl_dtype)dt, h, out, N);
            CHECKF(memcmp(ref, out, N * sizeof *out) == 0, "%s %s: conversion bits differ from scalar",
                   mode_names[mode], moecl_dtype_name(dt));
        }
    }
    set_mode(MODE_AUTO);
    free(h);
    free(ref);
    free(out);
}

/* ---- swiglu ------------------------------------------------------------------ */

static void test_swiglu(void) {
    enum { N = 20000 };
    float *g = malloc(N * sizeof *g), *u = malloc(N * sizeof *u), *g0 = malloc(N * sizeof *g0);
    uint64_t s = 7;
    for (int i = 0; i < N; i++) {
        /* mostly the range activations live in, plus far tails */
        float scale = i % 10 == 0 ? 120.0f : 12.0f;
        g[i] = g0[i] = t_rand_f(&s) * scale;
        u[i] = t_rand_f(&s) * 4;
    }
    g[0] = g0[0] = 0.0f;
    g[1] = g0[1] = -0.0f;
    g[2] = g0[2] = 1e-30f;
    g[3] = g0[3] = -87.5f;
    g[4] = g0[4] = 89.0f;
    mc_cpu_swiglu(g, u, N);
    double worst = 0;
    int bad = 0;
    for (int i = 0; i < N; i++) {
        double x = g0[i], want = x / (1.0 + exp(-x)) * (double)u[i];
        double err = fabs((double)g[i] - want);
        /* relative 1e-6; results below float's normal range are judged in
         * absolute terms */
        double tol = fmax(1e-6 * fabs(want), 1e-37);
        if (fabs(want) > 1e-30) worst = fmax(worst, err / fabs(want));
        if (!(err <= tol) && bad++ < 5)
            fprintf(stderr, "  swiglu(%a, %a) = %a, want %a\n", (double)g0[i], (double)u[i], (double)g[i], want);
    }
    CHECKF(bad == 0, "swiglu: %d of %d beyond 1e-6 relative", bad, N);
    fprintf(stderr, "swiglu: worst relative error %.3g\n", worst);
    /* An element's bits must not depend on its place in the array (a row's
     * place in a batch, a thread's share; SIMD bodies and their tails): the
     * same values from offsets 1..9, in lengths that leave every tail size. */
    float *h = malloc(N * sizeof *h);
    int moved = 0;
    for (int off = 1; off <= 9; off++) {
        const int n = 61 + off;
        memcpy(h, g0 + off, (size_t)n * sizeof *h);
        mc_cpu_swiglu(h, u + off, n);
        moved += memcmp(h, g + off, (size_t)n * sizeof *h) != 0;
    }
    CHECKF(moved == 0, "swiglu: %d of 9 shifted copies differ in bits from the whole array's results", moved);
    h[0] = -INFINITY, h[1] = INFINITY;
    const float one[2] = {1.0f, 1.0f};
    mc_cpu_swiglu(h, one, 2);
    CHECKF(isnan(h[0]) && h[1] == INFINITY, "swiglu(-inf) = %g (NaN, as PyTorch), swiglu(inf) = %g", h[0], h[1]);
    free(h);
    free(g);
    free(u);
    free(g0);
}

/* ---- matmul ------------------------------------------------------------------ */

static int n_configs = 0;

/* A pool of nt threads (1..2), made on first use and kept for the run. */
static mc_pool *g_pools[3];
static mc_pool *pool_of(int nt) {
    if (!g_pools[nt]) CHECK(mc_pool_new(nt, &g_pools[nt]) == MOECL_OK);
    return g_pools[nt];
}
static double worst_nerr = 0;

/* Normalised error max|y - ref| / max|ref| of the int8-activation path
 * against float activations. Measured over this file's configurations
 * (uniform random weights and activations, Zen 4): Q4_0 1.0e-2, Q8_0 and
 * Q6_K 9.7e-3, Q5_K 7.3e-3, Q4_K 6.8e-3 at worst, all from configurations
 * with 1-2 weight rows (max|ref| over so few outputs can be small). The
 * kernels themselves are held to 1e-5 against X rounded the same way. */
#ifndef QINT_BOUND
#define QINT_BOUND 2e-2
#endif
static double worst_qint[MOECL_DTYPE_COUNT], worst_qint_big[MOECL_DTYPE_COUNT], worst_qint_exact = 0;

/* Normalised error of F16 weights in FP16 arithmetic (ARM, MOECL_CPU_ISA=
 * fp16: X rounded to binary16 after scaling each row into [1, 2), 4 products
 * per lane summed in binary16). Measured under qemu over this file's
 * configurations: see the summary line; the bound leaves ~3x. */
#ifndef FP16_BOUND
#define FP16_BOUND 3e-3
#endif
static double worst_f16a = 0;
static int n_f16a = 0;

/* X rounded as the int8 path rounds it (32 columns per scale amax / 127),
 * back in float: a reference that isolates the kernels' own error. */
static void round_x_int8(const float *X, float *Xq, int64_t n) {
    for (int64_t j = 0; j + 32 <= n; j += 32) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(X[j + i]));
        const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int i = 0; i < 32; i++) {
            long v = lrintf(X[j + i] * id);
            Xq[j + i] = d * (float)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
    }
}
static int n_qint = 0;

/* The activations' 8-bit rounding, bit for bit as round_x_int8 (a scalar
 * reference on libm's lrintf), whichever copy of it this CPU runs (AVX2 on
 * x86 with int8 kernels): mc_qact_round's floats, and mc_qact_make's int8
 * values, scales and scale * sums. Rounding ties (amax 127: x * id = x),
 * zero and -0 blocks, subnormals, a NaN (ignored by amax), an infinity, and
 * values at +-amax. */
static void test_qact_bits(void) {
    enum { NB = 64, N = 32 * NB };
    float *X = malloc(N * sizeof *X), *Xr = malloc(N * sizeof *Xr), *Xref = malloc(N * sizeof *Xref);
    uint64_t s = 11;
    for (int i = 0; i < N; i++) X[i] = t_rand_f(&s) * (i / 32 % 4 == 0 ? 1e-3f : i / 32 % 4 == 1 ? 30.0f : 1.0f);
    for (int i = 0; i < 32; i++) { /* block 0: ties at every half */
        X[i] = (float)(i - 16) + 0.5f;
        X[32 + i] = 0.0f;            /* block 1: zeros */
        X[64 + i] = -0.0f;           /* block 2: negative zeros */
        X[96 + i] = 1e-40f * (float)(i - 16); /* block 3: subnormals */
    }
    X[0] = 127.0f;                   /* block 0's amax: id = 1 */
    X[128 + 31] = NAN;               /* block 4, in the lane where a NaN would reach amax */
    X[160 + 7] = INFINITY;           /* block 5 */
    X[192 + 3] = -2.5f, X[192 + 4] = 2.5f; /* block 6: +-amax */
    for (int i = 0; i < 32; i++) X[192 + i] = i == 3 || i == 4 ? X[192 + i] : (float)(i % 5) * 0.5f;
    mc_qact_round(X, N, Xr);
    round_x_int8(X, Xref, N);
    CHECKF(!memcmp(Xr, Xref, N * sizeof *Xr), "mc_qact_round differs from the scalar reference (%s)",
           mc_cpu_int8_kernels());
    qact a;
    CHECK(mc_qact_make(&a, X, 2, N / 2));
    int bad = 0;
    for (int j = 0; j < NB; j++) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(X[32 * j + i]));
        const float d = amax / 127.0f;
        const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int i = 0; i < 32; i++) {
            long v = lrintf(X[32 * j + i] * id);
            v = v > 127 ? 127 : v < -127 ? -127 : v;
            bad += a.q[32 * j + i] != v;
            sum += (int)v;
        }
        const float ds = d * (float)sum;
        bad += memcmp(&a.d[j], &d, sizeof d) != 0;
        bad += memcmp(&a.ds[j], &ds, sizeof ds) != 0;
    }
    CHECKF(bad == 0, "mc_qact_make: %d values differ from the scalar reference (%s)", bad, mc_cpu_int8_kernels());
    mc_qact_free(&a);
    free(X);
    free(Xr);
    free(Xref);
}

/* Reference in double from the dtype-rounded weights wf[rows, cols]. Also
 * returns the largest sum_c |w x| / sqrt(cols): the size of a typical
 * output, a floor for the normaliser (see run_config). */
static double ref_matmul(const float *wf, const float *X, int64_t T, int64_t rows, int64_t cols, float *Y) {
    double scale = 0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t r = 0; r < rows; r++) {
            const float *w = wf + r * cols, *x = X + t * cols;
            double s[4] = {0};
            int64_t c = 0;
            for (; c + 4 <= cols; c += 4)
                for (int j = 0; j < 4; j++) s[j] += (double)w[c + j] * x[c + j];
            for (; c < cols; c++) s[0] += (double)w[c] * x[c];
            Y[t * rows + r] = (float)((s[0] + s[1]) + (s[2] + s[3]));
            double a = 0;
            for (c = 0; c < cols; c++) a += fabs((double)w[c] * x[c]);
            scale = fmax(scale, a / sqrt((double)cols));
        }
    return scale;
}

/* max|y - ref| / max(max|ref|, scale). With many outputs this is the usual
 * normalised error (max|ref| is the larger); with one or two, a dot product
 * that happens to cancel to near zero would otherwise turn an ordinary float
 * rounding of the sum into a large "relative" error. */
static double nerr(const float *y, const float *ref, size_t n, double scale) {
    double num = 0, den = scale;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)y[i] - (double)ref[i]);
        if (!(d <= num)) num = isnan(d) ? INFINITY : d;
        den = fmax(den, fabs((double)ref[i]));
    }
    return den > 0 ? num / den : num;
}

static void run_config(moecl_dtype dt, int64_t rows, int64_t cols, int64_t T, const bool modes[MODE_COUNT]) {
    uint64_t seed = (uint64_t)(rows * 1000003 + cols * 101 + T * 7 + dt);
    size_t n = (size_t)(rows * cols), wbytes;
    CHECK(mc_dtype_row_bytes(dt, cols, &wbytes));
    wbytes *= (size_t)rows;
    float *wf = malloc(n * sizeof *wf); /* the weights as float */
    void *wdata = malloc(wbytes);
    const bool quant = mc_dtype_block(dt) > 1;
    /* Quantized: random rows quantized, and the reference computed from
     * mc_dequantize_row's output (bit-exact with gguf.quants, test_quant). */
    for (size_t i = 0; quant && i < n; i++) wf[i] = t_rand_f(&seed);
    for (int64_t r = 0; quant && r < rows; r++) {
        char *q = (char *)wdata + (size_t)r * (wbytes / (size_t)rows);
        mc_quantize_row(dt, wf + r * cols, q, cols);
        mc_dequantize_row(dt, q, wf + r * cols, cols);
    }
    for (size_t i = 0; !quant && i < n; i++) {
        float v = t_rand_f(&seed);
        if (dt == MOECL_DTYPE_F32) {
            ((float *)wdata)[i] = wf[i] = v;
        } else if (dt == MOECL_DTYPE_F16) {
            uint16_t h = trunc_f16(v);
            ((uint16_t *)wdata)[i] = h;
            wf[i] = ref_f16(h);
        } else {
            uint16_t h = mc_f32_to_bf16(v);
            ((uint16_t *)wdata)[i] = h;
            wf[i] = ref_bf16(h);
        }
    }
    float *X = malloc((size_t)(T * cols) * sizeof *X);
    for (int64_t i = 0; i < T * cols; i++) X[i] = t_rand_f(&seed);
    float *ref = malloc((size_t)(T * rows) * sizeof *ref);
    float *Y = malloc((size_t)(T * rows) * sizeof *Y);
    double scale = ref_matmul(wf, X, T, rows, cols, ref);

    mc_tensor W = {.type = dt, .rows = rows, .cols = cols, .data = wdata, .nbytes = wbytes};
    for (int mode = 0; mode < MODE_COUNT; mode++) {
        if (!modes[mode]) continue;
        set_mode(mode);
        for (int nt = 1; nt <= 2; nt++) {
            size_t ss = mc_cpu_matmul_scratch_size(&W, T, nt);
            if (dt == MOECL_DTYPE_F32 || T <= 8) CHECKF(ss == 0, "scratch %zu for F32 or T=%lld", ss, (long long)T);
            void *scratch = ss ? aligned_alloc(64, (ss + 63) & ~(size_t)63) : NULL;
            CHECK(ss == 0 || scratch);
            for (size_t i = 0; i < (size_t)(T * rows); i++) Y[i] = NAN; /* every output must be written */
            mc_cpu_matmul(&W, X, T, Y, pool_of(nt), scratch);
            double e = nerr(Y, ref, (size_t)(T * rows), scale);
            const bool qint = mc_cpu_quant_int8(dt, T), f16a = mc_cpu_f16_arith(dt, T);
            if (f16a) {
                worst_f16a = fmax(worst_f16a, e);
                n_f16a++;
            } else if (qint) {
                worst_qint[dt] = fmax(worst_qint[dt], e);
                if (cols >= 1024) worst_qint_big[dt] = fmax(worst_qint_big[dt], e);
                n_qint++;
            } else {
                worst_nerr = fmax(worst_nerr, e);
            }
            CHECKF(e <= (qint ? QINT_BOUND : f16a ? FP16_BOUND : 1e-5),
                   "%s %s%s rows=%lld cols=%lld T=%lld threads=%d: nerr %.3g", mode_names[mode], moecl_dtype_name(dt),
                   qint ? " (int8)" : f16a ? " (fp16 arithmetic)" : "", (long long)rows, (long long)cols,
                   (long long)T, nt, e);
            if (qint) {
                /* against a float64 product with X rounded the same way:
                 * only accumulation order (and the float32 scales) differ */
                float *Xq = malloc((size_t)(T * cols) * sizeof *Xq), *refq = malloc((size_t)(T * rows) * sizeof *refq);
                round_x_int8(X, Xq, T * cols);
                double sq = ref_matmul(wf, Xq, T, rows, cols, refq);
                double eq = nerr(Y, refq, (size_t)(T * rows), sq);
                worst_qint_exact = fmax(worst_qint_exact, eq);
                CHECKF(eq <= 1e-5, "%s int8 vs rounded-X reference rows=%lld cols=%lld T=%lld: nerr %.3g",
                       moecl_dtype_name(dt), (long long)rows, (long long)cols, (long long)T, eq);
                free(Xq);
                free(refq);
            }
            if (qint) { /* the SIMD int8 path against the scalar float path */
                float *Ys = malloc((size_t)(T * rows) * sizeof *Ys);
                mc_cpu_force_scalar(true);
                mc_cpu_matmul(&W, X, T, Ys, pool_of(nt), NULL);
                set_mode(mode);
                double es = nerr(Y, Ys, (size_t)(T * rows), scale);
                CHECKF(es <= QINT_BOUND, "%s int8 vs scalar rows=%lld cols=%lld T=%lld: nerr %.3g",
                       moecl_dtype_name(dt), (long long)rows, (long long)cols, (long long)T, es);
                free(Ys);
            }
            free(scratch);
            n_configs++;
        }
    }
    /* Without the scratch it asked for, mc_cpu_matmul still gets it right. */
    set_mode(MODE_AUTO);
    if (mc_cpu_matmul_scratch_size(&W, T, 2) > 0) {
        for (size_t i = 0; i < (size_t)(T * rows); i++) Y[i] = NAN;
        mc_cpu_matmul(&W, X, T, Y, pool_of(2), NULL);
        float *Xq = NULL;
        if (mc_cpu_quant_int8(dt, T)) { /* against X rounded as it rounds it */
            Xq = malloc((size_t)(T * cols) * sizeof *Xq);
            round_x_int8(X, Xq, T * cols);
            scale = ref_matmul(wf, Xq, T, rows, cols, ref);
            free(Xq);
        }
        double e = nerr(Y, ref, (size_t)(T * rows), scale);
        CHECKF(e <= 1e-5, "no scratch %s rows=%lld cols=%lld T=%lld: nerr %.3g", moecl_dtype_name(dt),
               (long long)rows, (long long)cols, (long long)T, e);
    }
    free(wf);
    free(wdata);
    free(X);
    free(ref);
    free(Y);
}

/* The elements of a list, or of its quick version (MOECL_TEST_QUICK). */
#define LIST(full, small) (quick ? (small) : (full))
#define LEN(full, small) (quick ? sizeof(small) / sizeof *(small) : sizeof(full) / sizeof *(full))

static void test_matmul(const bool modes[MODE_COUNT]) {
    /* quick: still T = 1, 2, odd T, the sgemm thresholds (64 / 128) crossed,
     * rows that end 4-row groups and thread chunks unevenly, columns with
     * vector tails and (1024 at T = 67, F16/BF16) L2 column blocks */
    static const int64_t Ts[] = {1, 2, 3, 5, 7, 8, 13, 64, 67, 131}, qk_Ts[] = {1, 2, 3, 5, 8, 13, 67, 131};
    static const int64_t rows_list[] = {1, 17, 96, 1000}, qk_rows[] = {1, 17, 37};
    static const int64_t cols_list[] = {1, 7, 33, 64, 1024, 3584}, qk_cols[] = {1, 7, 33, 1024};
    for (int dt = 0; dt <= MOECL_DTYPE_BF16; dt++)
        for (size_t ri = 0; ri < LEN(rows_list, qk_rows); ri++)
            for (size_t ci = 0; ci < LEN(cols_list, qk_cols); ci++)
                for (size_t ti = 0; ti < LEN(Ts, qk_Ts); ti++) {
                    int64_t rows = LIST(rows_list, qk_rows)[ri], cols = LIST(cols_list, qk_cols)[ci],
                            T = LIST(Ts, qk_Ts)[ti];
                    /* The largest shape with a subset of T, to keep the run
                     * short (the double reference dominates). */
                    if (rows == 1000 && cols == 3584 && (T == 3 || T == 7 || T == 13)) continue;
                    run_config((moecl_dtype)dt, rows, cols, T, modes);
                }

    /* Quantized weights: the fused kernels (T <= 64), the dequantize +
     * sgemm path (65, 200); columns of one block, several, and past one
     * dequantized tile (1280 = 1024 + 256); prime row counts (thread chunks
     * and the 4-row groups end unevenly). */
    static const int64_t qTs[] = {1, 2, 3, 7, 8, 31, 64, 65, 200}, qk_qTs[] = {1, 2, 3, 8, 31, 65};
    static const int64_t qrows[] = {1, 13, 97}, qk_qrows[] = {1, 13};
    static const int64_t qcols[] = {32, 96, 256, 288, 1280}, qk_qcols[] = {32, 256, 288, 1280};
    for (int dt = MOECL_DTYPE_Q8_0; dt < MOECL_DTYPE_COUNT; dt++)
        for (size_t ri = 0; ri < LEN(qrows, qk_qrows); ri++)
            for (size_t ci = 0; ci < LEN(qcols, qk_qcols); ci++)
                for (size_t ti = 0; ti < LEN(qTs, qk_qTs); ti++) {
                    const int64_t c = LIST(qcols, qk_qcols)[ci];
                    if (c % mc_dtype_block((moecl_dtype)dt)) continue;
                    run_config((moecl_dtype)dt, LIST(qrows, qk_qrows)[ri], c, LIST(qTs, qk_qTs)[ti], modes);
                }
    run_config(MOECL_DTYPE_Q4_K, quick ? 37 : 300, 4096, 64, modes); /* column blocks at T=64 */

    /* Degenerate shapes. */
    float X[4] = {1, 2, 3, 4}, Y[4] = {5, 5, 5, 5};
    mc_tensor W0 = {.type = MOECL_DTYPE_F32, .rows = 2, .cols = 0, .data = X, .nbytes = 0};
    mc_cpu_matmul(&W0, X, 2, Y, pool_of(2), NULL);
    CHECK(Y[0] == 0 && Y[1] == 0 && Y[2] == 0 && Y[3] == 0);
    Y[0] = 5;
    mc_cpu_matmul(&W0, X, 0, Y, pool_of(2), NULL);
    CHECK(Y[0] == 5);
    CHECK(mc_cpu_matmul_scratch_size(&W0, 100, 2) == 0);
}

/* ---- int8 kernels, each selected by name --------------------------------------- */

/* One int8 configuration: the kernels named `kern` must run, and agree with
 * a float64 product on the same int8-rounded activations within 1e-5
 * (measured: 6e-7 at worst; only accumulation order and float32 scales
 * differ), and with the scalar float path within QINT_BOUND. */
static double worst_int8_exact[4];
static void run_int8_config(const char *level, const char *kern, int ki, moecl_dtype dt, int64_t rows, int64_t cols,
                            int64_t T) {
    uint64_t seed = (uint64_t)(rows * 7919 + cols * 13 + T * 3 + dt);
    size_t rb;
    CHECK(mc_dtype_row_bytes(dt, cols, &rb));
    float *wf = malloc((size_t)(rows * cols) * sizeof *wf), *X = malloc((size_t)(T * cols) * sizeof *X);
    float *Xq = malloc((size_t)(T * cols) * sizeof *Xq);
    char *q = malloc(rb * (size_t)rows);
    for (int64_t i = 0; i < rows * cols; i++) wf[i] = t_rand_f(&seed);
    for (int64_t r = 0; r < rows; r++) {
        mc_quantize_row(dt, wf + r * cols, q + (size_t)r * rb, cols);
        mc_dequantize_row(dt, q + (size_t)r * rb, wf + r * cols, cols);
    }
    /* activations of very different sizes per 32 columns, as real ones are */
    for (int64_t i = 0; i < T * cols; i++) X[i] = t_rand_f(&seed) * ((i / 32) % 3 == 0 ? 9.0f : 0.3f);
    round_x_int8(X, Xq, T * cols);
    float *ref = malloc((size_t)(T * rows) * sizeof *ref), *Y = malloc((size_t)(T * rows) * sizeof *Y);
    float *Ys = malloc((size_t)(T * rows) * sizeof *Ys);
    double scale = ref_matmul(wf, Xq, T, rows, cols, ref);
    mc_tensor W = {.type = dt, .rows = rows, .cols = cols, .data = q, .nbytes = rb * (size_t)rows};
    for (int nt = 1; nt <= 2; nt++) {
        setenv("MOECL_CPU_ISA", level, 1);
        mc_cpu_force_scalar(false);
        for (int64_t i = 0; i < T * rows; i++) Y[i] = NAN;
        (void)mc_cpu_take_int8_kernels();
        mc_cpu_matmul(&W, X, T, Y, pool_of(nt), NULL);
        const char *ran = mc_cpu_take_int8_kernels();
        CHECKF(!strcmp(ran, kern), "MOECL_CPU_ISA=%s %s T=%lld: int8 kernels %s ran, not %s", level,
               moecl_dtype_name(dt), (long long)T, ran, kern);
        double e = nerr(Y, ref, (size_t)(T * rows), scale);
        worst_int8_exact[ki] = fmax(worst_int8_exact[ki], e);
        CHECKF(e <= 1e-5, "%s int8 %s rows=%lld cols=%lld T=%lld threads=%d vs rounded-X float64: nerr %.3g", kern,
               moecl_dtype_name(dt), (long long)rows, (long long)cols, (long long)T, nt, e);
        mc_cpu_force_scalar(true);
        mc_cpu_matmul(&W, X, T, Ys, pool_of(nt), NULL);
        double es = nerr(Y, Ys, (size_t)(T * rows), scale);
        CHECKF(es <= QINT_BOUND, "%s int8 %s rows=%lld cols=%lld T=%lld vs scalar float path: nerr %.3g", kern,
               moecl_dtype_name(dt), (long long)rows, (long long)cols, (long long)T, es);
        n_configs++;
    }
    free(wf);
    free(X);
    free(Xq);
    free(q);
    free(ref);
    free(Y);
    free(Ys);
}

static void test_int8_kernels(void) {
    /* level name for MOECL_CPU_ISA, and the int8 kernels it must give (the
     * first on every CPU with SIMD kernels) */
#if defined(__aarch64__)
    static const char *const sets[][2] = {{"neon", "neon"}, {"dotprod", "dotprod"}};
#else
    static const char *const sets[][2] = {{"avx2", "avx2"}, {"avxvnni", "avxvnni"}, {"avx512vnni", "avx512vnni"}};
#endif
    const int nsets = (int)(sizeof sets / sizeof *sets);
    static const int64_t rows_full[] = {1, 3, 6, 37}, rows_quick[] = {1, 6};
    /* Q8_0 / Q4_0: 1 block, under one group of 8, groups plus a tail;
     * K-quants: 1 to 9 blocks of 256 */
    static const int64_t cols_small_full[] = {32, 224, 288, 1056}, cols_k_full[] = {256, 768, 2304};
    static const int64_t cols_small_quick[] = {32, 288}, cols_k_quick[] = {256, 768};
    const int64_t *rows_list = LIST(rows_full, rows_quick), *cols_small = LIST(cols_small_full, cols_small_quick),
                  *cols_k = LIST(cols_k_full, cols_k_quick);
    const size_t nrows = LEN(rows_full, rows_quick);
    for (int ki = 0; ki < nsets; ki++) {
        setenv("MOECL_CPU_ISA", sets[ki][0], 1);
        mc_cpu_force_scalar(false);
        const char *have = mc_cpu_int8_kernels();
        if (strcmp(have, sets[ki][1]) != 0) {
            if (ki == 0) /* AVX2 int8 kernels on every CPU with AVX2, NEON on every ARM64 */
                CHECKF(!strcmp(mc_cpu_isa(), "scalar"), "MOECL_CPU_ISA=%s on a CPU with %s gives int8 kernels %s",
                       sets[0][0], mc_cpu_isa(), have);
            fprintf(stderr, "int8 kernels %s: not on this CPU (MOECL_CPU_ISA=%s gives %s), not tested\n",
                    sets[ki][1], sets[ki][0], have);
            continue;
        }
        int before = n_configs;
        for (int dt = MOECL_DTYPE_Q8_0; dt < MOECL_DTYPE_COUNT; dt++) {
            const bool kq = mc_dtype_block((moecl_dtype)dt) == 256;
            const int64_t *cl = kq ? cols_k : cols_small;
            const size_t ncl = kq ? LEN(cols_k_full, cols_k_quick) : LEN(cols_small_full, cols_small_quick);
            for (size_t ri = 0; ri < nrows; ri++)
                for (size_t ci = 0; ci < ncl; ci++)
                    for (int64_t T = 1; T <= 10; T++) /* and 13, 64: T > 8 */
                        run_int8_config(sets[ki][0], sets[ki][1], ki, (moecl_dtype)dt, rows_list[ri], cl[ci],
                                        T <= 8 ? T : T == 9 ? 13 : 64);
        }
        fprintf(stderr, "int8 kernels %s: %d runs, worst normalised error against rounded-X float64 %.3g\n",
                sets[ki][1], n_configs - before, worst_int8_exact[ki]);
    }
    unsetenv("MOECL_CPU_ISA");
    mc_cpu_force_scalar(false);
}

/* ---- batch independence ----------------------------------------------------------- */

/* A row of X gets the same result alone, in a batch of 6 and of 64 (bit for
 * bit: the same kernels, int8 where there are any), and within 1e-5 in a
 * batch of 70 or 200 (sgemm on the same 8-bit activations: only the float
 * summation order differs), for every quantized type, every instruction set
 * this CPU has (MOECL_CPU_ISA) and 1 and 2 threads. */
static double worst_batch70 = 0;
static void test_batch_rows(void) {
    static const char *const levels[][2] = {{"scalar", "none"}, {"avx2", "avx2"}, {"avxvnni", "avxvnni"},
                                            {"avx512", NULL},   {"avx512vnni", "avx512vnni"},
                                            {"neon", "neon"},   {"dotprod", "dotprod"}};
    const int64_t rows = 97, cols = 1280, TB = 200;
    uint64_t seed = 99;
    float *wf = malloc((size_t)(rows * cols) * sizeof *wf), *X = malloc((size_t)(TB * cols) * sizeof *X);
    float *Y1 = malloc((size_t)(TB * rows) * sizeof *Y1), *Yb = malloc((size_t)(TB * rows) * sizeof *Yb);
    for (int64_t i = 0; i < TB * cols; i++) X[i] = t_rand_f(&seed) * ((i / 32) % 3 == 0 ? 9.0f : 0.3f);
    int runs = 0;
    for (int dt = MOECL_DTYPE_Q8_0; dt < MOECL_DTYPE_COUNT; dt++) {
        size_t rb;
        CHECK(mc_dtype_row_bytes((moecl_dtype)dt, cols, &rb));
        char *q = malloc(rb * (size_t)rows);
        for (int64_t i = 0; i < rows * cols; i++) wf[i] = t_rand_f(&seed);
        for (int64_t r = 0; r < rows; r++) mc_quantize_row((moecl_dtype)dt, wf + r * cols, q + (size_t)r * rb, cols);
        mc_tensor W = {.type = (moecl_dtype)dt, .rows = rows, .cols = cols, .data = q, .nbytes = rb * (size_t)rows};
        for (size_t li = 0; li < sizeof levels / sizeof *levels; li++) {
            setenv("MOECL_CPU_ISA", levels[li][0], 1);
            mc_cpu_force_scalar(false);
            if (levels[li][1] ? strcmp(mc_cpu_int8_kernels(), levels[li][1]) != 0
                              : strcmp(mc_cpu_isa(), "avx512") != 0)
                continue; /* not on this CPU */
            for (int nt = 1; nt <= 2; nt++) {
                for (int64_t t = 0; t < 70; t++) mc_cpu_matmul(&W, X + t * cols, 1, Y1 + t * rows, pool_of(nt), NULL);
                static const int64_t Ts[] = {6, 64, 70, 200};
                for (int k = 0; k < 4; k++) {
                    const int64_t T = Ts[k];
                    size_t ss = mc_cpu_matmul_scratch_size(&W, T, nt);
                    void *scratch = ss ? aligned_alloc(64, (ss + 63) & ~(size_t)63) : NULL;
                    mc_cpu_matmul(&W, X, T, Yb, pool_of(nt), scratch);
                    free(scratch);
                    const int64_t n = (T < 70 ? T : 70) * rows;
                    if (T <= 64) {
                        CHECKF(!memcmp(Y1, Yb, (size_t)n * sizeof *Y1),
                               "MOECL_CPU_ISA=%s %s %d thread(s): rows in a batch of %lld differ from the rows alone",
                               levels[li][0], moecl_dtype_name((moecl_dtype)dt), nt, (long long)T);
                    } else {
                        double e = nerr(Yb, Y1, (size_t)n, 0);
                        worst_batch70 = fmax(worst_batch70, e);
                        CHECKF(e <= 1e-5, "MOECL_CPU_ISA=%s %s %d thread(s): batch of %lld against rows alone: %.3g",
                               levels[li][0], moecl_dtype_name((moecl_dtype)dt), nt, (long long)T, e);
                    }
                }
                runs++;
            }
        }
        free(q);
    }
    CHECKF(runs >= 2 * 5, "only %d batch-independence runs", runs);
    fprintf(stderr, "batch independence: %d runs; batches of 6 and 64 bit-identical to rows alone, 70 and 200 within "
                    "%.3g (bound 1e-5)\n", runs, worst_batch70);
    unsetenv("MOECL_CPU_ISA");
    mc_cpu_force_scalar(false);
    free(wf);
    free(X);
    free(Y1);
    free(Yb);
}

/* ---- MOECL_CPU_ISA values --------------------------------------------------------- */

static void test_isa_env(void) {
    unsetenv("MOECL_CPU_ISA");
    mc_cpu_force_scalar(false);
    const char *auto_isa = mc_cpu_isa(), *auto_int8 = mc_cpu_int8_kernels();
    CHECK(mc_cpu_check_env() == MOECL_OK);
    static const char *const same_as_auto[] = {"", "auto", "AUTO"};
    for (int i = 0; i < 3; i++) {
        setenv("MOECL_CPU_ISA", same_as_auto[i], 1);
        mc_cpu_force_scalar(false);
        CHECKF(mc_cpu_check_env() == MOECL_OK, "MOECL_CPU_ISA='%s' refused", same_as_auto[i]);
        CHECK(!strcmp(mc_cpu_isa(), auto_isa) && !strcmp(mc_cpu_int8_kernels(), auto_int8));
    }
    /* any case */
    setenv("MOECL_CPU_ISA", "Scalar", 1);
    mc_cpu_force_scalar(false);
    CHECK(mc_cpu_check_env() == MOECL_OK);
    CHECK(!strcmp(mc_cpu_isa(), "scalar") && !strcmp(mc_cpu_int8_kernels(), "none"));
#if defined(__aarch64__)
    /* the lowest SIMD level, in capitals; another architecture's names and
     * anything else unknown; the accepted names */
    const char *lowest = "NEON", *lowest_isa = "neon", *lowest_int8 = "neon";
    static const char *const bad[] = {"avx2", "neon ", "sdot", "neon,scalar"};
    static const char *const accepted[] = {"fp16", "dotprod", "neon", "scalar", "auto"};
#else
    const char *lowest = "AVX2", *lowest_isa = "avx2", *lowest_int8 = "avx2";
    static const char *const bad[] = {"avx3", "neon", " avx2", "avx2,scalar"};
    static const char *const accepted[] = {"avx512vnni", "avxvnni", "avx2", "scalar", "auto"};
#endif
    setenv("MOECL_CPU_ISA", lowest, 1);
    mc_cpu_force_scalar(false);
    CHECK(mc_cpu_check_env() == MOECL_OK);
    if (strcmp(auto_isa, "scalar") != 0)
        CHECKF(!strcmp(mc_cpu_isa(), lowest_isa) && !strcmp(mc_cpu_int8_kernels(), lowest_int8),
               "MOECL_CPU_ISA=%s gives %s with int8 kernels %s", lowest, mc_cpu_isa(), mc_cpu_int8_kernels());

    /* unknown: an error naming the accepted values; the kernels run as auto */
    for (int i = 0; i < 4; i++) {
        setenv("MOECL_CPU_ISA", bad[i], 1);
        mc_cpu_force_scalar(false);
        CHECKF(mc_cpu_check_env() == MOECL_ERR_INVALID_ARG, "MOECL_CPU_ISA='%s' accepted", bad[i]);
        const char *msg = moecl_last_error();
        bool names_all = true;
        for (int j = 0; j < 5; j++) names_all = names_all && strstr(msg, accepted[j]);
        CHECKF(strstr(msg, "MOECL_CPU_ISA") && strstr(msg, bad[i]) && names_all, "message: %s", msg);
        CHECK(!strcmp(mc_cpu_isa(), auto_isa));
    }

    /* ... and moecl_context_new refuses it */
    unsetenv("MOECL_CPU_ISA");
    char buf[512];
    const char *dir = tiny_model_dir(buf, sizeof buf);
    CHECK(dir != NULL);
    moecl_model *model = NULL;
    if (dir && moecl_model_load(dir, NULL, &model) == MOECL_OK) {
        moecl_context_params cp = moecl_context_default_params();
        cp.n_ctx = 16;
        moecl_context *ctx = (moecl_context *)1;
        setenv("MOECL_CPU_ISA", "avx-512", 1);
        CHECK(moecl_context_new(model, &cp, &ctx) == MOECL_ERR_INVALID_ARG && ctx == NULL);
        CHECKF(strstr(moecl_last_error(), "MOECL_CPU_ISA='avx-512'") != NULL, "message: %s", moecl_last_error());
        setenv("MOECL_CPU_ISA", lowest_isa, 1);
        CHECK(moecl_context_new(model, &cp, &ctx) == MOECL_OK && ctx != NULL);
        moecl_context_free(ctx);
        moecl_model_free(model);
    } else {
        CHECKF(false, "tiny model at %s did not load: %s", dir ? dir : "(none)", moecl_last_error());
    }
    if (dir) remove_dir(dir);
    unsetenv("MOECL_CPU_ISA");
    mc_cpu_force_scalar(false);
}

/* The detection against what the environment says this CPU has (qemu's CPU
 * models in tools/test-aarch64.sh). */
static void test_expected_cpu(void) {
    const char *want_int8 = getenv("MOECL_TEST_EXPECT_INT8"), *want_fp16 = getenv("MOECL_TEST_EXPECT_FP16");
    if (want_int8) {
        set_mode(MODE_AUTO);
        CHECKF(!strcmp(mc_cpu_int8_kernels(), want_int8), "detected int8 kernels %s, expected %s",
               mc_cpu_int8_kernels(), want_int8);
    }
    if (want_fp16) {
        setenv("MOECL_CPU_ISA", "fp16", 1);
        mc_cpu_force_scalar(false);
        const bool has = !strcmp(mc_cpu_isa(), "fp16");
        CHECKF(has == (strcmp(want_fp16, "1") == 0), "MOECL_CPU_ISA=fp16 gives %s; MOECL_TEST_EXPECT_FP16=%s",
               mc_cpu_isa(), want_fp16);
    }
    set_mode(MODE_AUTO);
}

int main(void) {
    const char *q = getenv("MOECL_TEST_QUICK");
    quick = q && *q && strcmp(q, "0") != 0;
    bool modes[MODE_COUNT];
    set_mode(MODE_AUTO);
    const char *isa = mc_cpu_isa();
    CHECK(!strcmp(isa, "avx512") || !strcmp(isa, "avx2") || !strcmp(isa, "neon") || !strcmp(isa, "scalar"));
    fprintf(stderr, "test_kernels: detected ISA %s, int8 kernels %s%s; testing", isa, mc_cpu_int8_kernels(),
            quick ? " (quick: MOECL_TEST_QUICK)" : "");
    for (int mode = 0; mode < MODE_COUNT; mode++) {
        modes[mode] = mode == MODE_AUTO || set_mode(mode);
        if (modes[mode]) fprintf(stderr, " %s", mode_names[mode]);
    }
    fprintf(stderr, "\n");
    test_expected_cpu();

    for (int mode = 0; mode < MODE_COUNT; mode++) {
        if (!modes[mode]) continue;
        set_mode(mode);
        test_conversions(mode_names[mode]);
    }
    test_conversions_agree(modes);
    for (int mode = 0; mode < MODE_COUNT; mode++) { /* SIMD copies (x86: AVX2) and the scalar one */
        if (!modes[mode]) continue;
        set_mode(mode);
        fprintf(stderr, "%s ", mode_names[mode]);
        test_swiglu();
    }
    set_mode(MODE_AUTO);
    test_qact_bits();
    test_matmul(modes);
    test_int8_kernels();
    test_batch_rows();
    test_isa_env();
    set_mode(MODE_AUTO);
    fprintf(stderr, "matmul: %d runs, worst normalised error %.3g (float activations)\n", n_configs, worst_nerr);
    for (int dt = 0; dt < MOECL_DTYPE_COUNT; dt++)
        if (worst_qint[dt] > 0)
            fprintf(stderr, "matmul: %s int8 activations: worst normalised error %.3g (bound %.0e), %.3g at cols >= 1024\n",
                    moecl_dtype_name((moecl_dtype)dt), worst_qint[dt], QINT_BOUND, worst_qint_big[dt]);
    fprintf(stderr, "matmul: %d runs on the int8 path; against X rounded to int8: worst %.3g\n", n_qint,
            worst_qint_exact);
    if (n_f16a)
        fprintf(stderr, "matmul: %d runs of F16 in FP16 arithmetic: worst normalised error %.3g (bound %.0e)\n", n_f16a,
                worst_f16a, FP16_BOUND);
    for (int i = 0; i < 3; i++) mc_pool_free(g_pools[i]);
    return t_done("test_kernels");
}
