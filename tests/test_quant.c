/*
 * test_quant.c - the quantized block formats against gguf.quants.
 *
 *  - dequantization, bit for bit, of random blocks with extreme f16 scales,
 *    against gguf.quants.dequantize (tests/data/quant/<type>.deq.bin, made by
 *    tools/make_quant_refs.py); both mc_dequantize_row and mc_cpu_to_f32
 *    under every instruction set this CPU has;
 *  - Q8_0 and Q4_0 quantization, byte for byte, against gguf.quants.quantize;
 *  - K-quant round trips on Gaussian data: relative RMSE within bounds;
 *  - quantize -> dequantize -> quantize is (nearly) a fixed point.
 */
#include "backend/cpu/kernels.h"
#include "quant/quant.h"
#include "test_util.h"

#include <stdbool.h>
#include <string.h>

static const char *const type_files[MOECL_DTYPE_COUNT] = {
    [MOECL_DTYPE_Q8_0] = "q8_0", [MOECL_DTYPE_Q4_0] = "q4_0", [MOECL_DTYPE_Q4_K] = "q4_k",
    [MOECL_DTYPE_Q5_K] = "q5_k", [MOECL_DTYPE_Q6_K] = "q6_k",
};

typedef struct ref_file {
    uint32_t n_blocks, block_bytes, block_elems;
    unsigned char *a, *b; /* the two arrays, in file order */
    unsigned char *mem;
} ref_file;

static bool read_ref(const char *name, const char *kind, ref_file *r, bool blocks_first) {
    const char *dir = getenv("MOECL_TEST_DATA");
    char path[4096];
    snprintf(path, sizeof path, "%s/quant/%s.%s.bin", dir ? dir : "tests/data", name, kind);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return false;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    r->mem = malloc((size_t)size);
    bool ok = r->mem && fread(r->mem, 1, (size_t)size, f) == (size_t)size && size >= 16 && !memcmp(r->mem, "MCQ1", 4);
    fclose(f);
    if (!ok) return false;
    memcpy(&r->n_blocks, r->mem + 4, 4);
    memcpy(&r->block_bytes, r->mem + 8, 4);
    memcpy(&r->block_elems, r->mem + 12, 4);
    size_t qb = (size_t)r->n_blocks * r->block_bytes, fb = (size_t)r->n_blocks * r->block_elems * 4;
    if ((size_t)size != 16 + qb + fb) return false;
    r->a = r->mem + 16;
    r->b = r->a + (blocks_first ? qb : fb);
    return true;
}

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static int count_bit_diffs(const float *got, const float *want, size_t n, const char *what) {
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (bits(got[i]) != bits(want[i]) && bad++ < 5)
            fprintf(stderr, "  %s: element %zu (block elem %zu) = %a, gguf.quants %a\n", what, i, i % 256,
                    (double)got[i], (double)want[i]);
    return bad;
}

/* ---- dequantization -------------------------------------------------------- */

static void test_dequant(moecl_dtype t) {
    ref_file r;
    CHECKF(read_ref(type_files[t], "deq", &r, true), "%s.deq.bin unreadable", type_files[t]);
    if (!r.mem) return;
    CHECK((int64_t)r.block_elems == mc_dtype_block(t) && r.block_bytes == mc_dtype_block_bytes(t));
    const size_t n = (size_t)r.n_blocks * r.block_elems;
    float *want = malloc(n * 4), *got = malloc(n * 4);
    memcpy(want, r.b, n * 4);
    /* the blocks copied to an aligned buffer (mmap'd tensors are aligned) */
    void *q = malloc((size_t)r.n_blocks * r.block_bytes);
    memcpy(q, r.a, (size_t)r.n_blocks * r.block_bytes);

    mc_dequantize_row(t, q, got, (int64_t)n);
    int bad = count_bit_diffs(got, want, n, moecl_dtype_name(t));
    CHECKF(bad == 0, "mc_dequantize_row %s: %d of %zu values differ from gguf.quants", moecl_dtype_name(t), bad, n);

    /* Block by block, then the CPU backend's conversion under each ISA. */
    for (uint32_t b = 0; b < r.n_blocks; b++)
        mc_dequantize_row(t, (const char *)q + (size_t)b * r.block_bytes, got + (size_t)b * r.block_elems,
                          r.block_elems);
    CHECK(count_bit_diffs(got, want, n, "per block") == 0);
    static const char *const isas[] = {NULL, "avx2", "scalar"};
    for (int k = 0; k < 3; k++) {
        if (isas[k]) setenv("MOECL_CPU_ISA", isas[k], 1);
        else unsetenv("MOECL_CPU_ISA");
        mc_cpu_force_scalar(false); /* re-detect under the cap */
        memset(got, 0xff, n * 4);
        mc_cpu_to_f32(t, q, got, (int64_t)n);
        bad = count_bit_diffs(got, want, n, mc_cpu_isa());
        CHECKF(bad == 0, "mc_cpu_to_f32 %s under %s: %d of %zu values differ", moecl_dtype_name(t), mc_cpu_isa(),
               bad, n);
    }
    unsetenv("MOECL_CPU_ISA");
    mc_cpu_force_scalar(false);
    fprintf(stderr, "dequant %-4s: %u blocks bit-exact with gguf.quants\n", moecl_dtype_name(t), r.n_blocks);
    free(want);
    free(got);
    free(q);
    free(r.mem);
}

/* ---- Q8_0 / Q4_0 quantization ------------------------------------------------ */

static void test_quant_exact(moecl_dtype t) {
    ref_file r;
    CHECKF(read_ref(type_files[t], "quant", &r, false), "%s.quant.bin unreadable", type_files[t]);
    if (!r.mem) return;
    const size_t n = (size_t)r.n_blocks * r.block_elems, qb = (size_t)r.n_blocks * r.block_bytes;
    float *x = malloc(n * 4);
    memcpy(x, r.a, n * 4);
    unsigned char *q = malloc(qb);
    memset(q, 0xa5, qb);
    mc_quantize_row(t, x, q, (int64_t)n);
    int bad = 0;
    for (uint32_t b = 0; b < r.n_blocks; b++)
        if (memcmp(q + (size_t)b * r.block_bytes, r.b + (size_t)b * r.block_bytes, r.block_bytes) && bad++ < 5)
            fprintf(stderr, "  %s: block %u differs from gguf.quants.quantize\n", moecl_dtype_name(t), b);
    CHECKF(bad == 0, "%s: %d of %u quantized blocks differ", moecl_dtype_name(t), bad, r.n_blocks);
    fprintf(stderr, "quant   %-4s: %u blocks byte-exact with gguf.quants\n", moecl_dtype_name(t), r.n_blocks);
    free(x);
    free(q);
    free(r.mem);
}

/* ---- round trips ------------------------------------------------------------- */

static float gauss(uint64_t *s) {
    double u1 = ((double)(t_rand_u64(s) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = (double)(t_rand_u64(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
}

static double rel_rmse(const float *y, const float *x, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
        den += (double)x[i] * x[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Relative RMSE bounds on N(0,1) data, a little above what is measured
 * (printed by the test; gcc 12, x86-64): Q8_0 0.0054, Q4_0 0.0858, Q4_K
 * 0.0715, Q5_K 0.0362, Q6_K 0.0179 (0.0207 for data scaled by 1e-3). */
static const double rmse_bound[MOECL_DTYPE_COUNT] = {
    [MOECL_DTYPE_Q8_0] = 0.006, [MOECL_DTYPE_Q4_0] = 0.095, [MOECL_DTYPE_Q4_K] = 0.08,
    [MOECL_DTYPE_Q5_K] = 0.042, [MOECL_DTYPE_Q6_K] = 0.024,
};

static void test_round_trip(moecl_dtype t) {
    enum { N = 256 * 256 };
    uint64_t s = 99 + (uint64_t)t;
    float *x = malloc(N * 4), *y = malloc(N * 4), *y2 = malloc(N * 4);
    size_t qbytes;
    CHECK(mc_dtype_row_bytes(t, N, &qbytes));
    unsigned char *q = malloc(qbytes), *q2 = malloc(qbytes);
    for (int i = 0; i < N; i++) x[i] = gauss(&s);
    mc_quantize_row(t, x, q, N);
    mc_dequantize_row(t, q, y, N);
    double e = rel_rmse(y, x, N);
    CHECKF(e <= rmse_bound[t], "%s: relative RMSE %.4f > %.4f", moecl_dtype_name(t), e, rmse_bound[t]);

    /* Scaled data: the error is relative, so about the same. */
    for (int i = 0; i < N; i++) x[i] *= 1e-3f;
    mc_quantize_row(t, x, q2, N);
    mc_dequantize_row(t, q2, y2, N);
    double es = rel_rmse(y2, x, N);
    CHECKF(es <= rmse_bound[t], "%s x1e-3: relative RMSE %.4f", moecl_dtype_name(t), es);

    /* Stability: quantizing the dequantized weights again gives (nearly)
     * the same weights. Q8_0/Q4_0 exactly; the K-quants' scale search may
     * move a few sub-blocks, by far less than the quantization error. */
    mc_quantize_row(t, y, q2, N);
    mc_dequantize_row(t, q2, y2, N);
    double drift = rel_rmse(y2, y, N);
    size_t same = 0, nb = N / (size_t)mc_dtype_block(t), bb = mc_dtype_block_bytes(t);
    for (size_t b = 0; b < nb; b++) same += !memcmp(q + b * bb, q2 + b * bb, bb);
    if (t == MOECL_DTYPE_Q8_0 || t == MOECL_DTYPE_Q4_0)
        CHECKF(same == nb, "%s: %zu of %zu blocks change on requantization", moecl_dtype_name(t), nb - same, nb);
    CHECKF(drift <= 0.25 * e, "%s: requantization drift %.4f (error %.4f)", moecl_dtype_name(t), drift, e);
    fprintf(stderr, "round trip %-4s: relative RMSE %.4f (x1e-3: %.4f); requantized: %zu/%zu blocks identical, "
            "drift %.2g\n", moecl_dtype_name(t), e, es, same, nb, drift);

    /* Degenerate blocks: zeros, a constant, a single spike. */
    const int B = (int)mc_dtype_block(t);
    for (int kind = 0; kind < 3; kind++) {
        for (int i = 0; i < B; i++) x[i] = kind == 0 ? 0.0f : kind == 1 ? -2.5f : (i == 7 ? 3.0f : 0.0f);
        mc_quantize_row(t, x, q, B);
        mc_dequantize_row(t, q, y, B);
        bool finite = true;
        for (int i = 0; i < B; i++) finite &= isfinite(y[i]);
        double ek = rel_rmse(y, x, (size_t)B);
        CHECKF(finite && ek <= 0.05, "%s degenerate block %d: error %.3g", moecl_dtype_name(t), kind, ek);
    }
    free(x);
    free(y);
    free(y2);
    free(q);
    free(q2);
}

int main(void) {
    for (int t = MOECL_DTYPE_Q8_0; t < MOECL_DTYPE_COUNT; t++) test_dequant((moecl_dtype)t);
    test_quant_exact(MOECL_DTYPE_Q8_0);
    test_quant_exact(MOECL_DTYPE_Q4_0);
    for (int t = MOECL_DTYPE_Q8_0; t < MOECL_DTYPE_COUNT; t++) test_round_trip((moecl_dtype)t);

    /* The float types round-trip through the same entry points. */
    float x[8] = {1, -2, 0.5f, 3.25f, -0.0f, 1e-3f, 65504, -7}, y[8];
    uint16_t h[8];
    for (int t = MOECL_DTYPE_F16; t <= MOECL_DTYPE_BF16; t++) {
        mc_quantize_row((moecl_dtype)t, x, h, 8);
        mc_dequantize_row((moecl_dtype)t, h, y, 8);
        CHECK(t_nerr(y, x, 8) < 1e-2);
    }
    mc_dequantize_row(MOECL_DTYPE_F32, x, y, 8);
    CHECK(!memcmp(x, y, sizeof x));
    return t_done("test_quant");
}
