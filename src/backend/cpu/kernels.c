/*
 * kernels.c - CPU compute kernels (see kernels.h).
 *
 * Y[T, rows] = X[T, cols] · Wᵀ is computed one of two ways:
 *
 *   T <= MC_SMALL_T   fused kernels (MC_SMALL_T_16 for F16/BF16 weights).
 *                     Each weight row is streamed from memory once, widened
 *                     to float32 in registers (F16 with F16C, BF16 by a
 *                     16-bit shift) and dotted with all T rows of X. Decode
 *                     (1-2 tokens per expert) runs these bound by memory
 *                     bandwidth; from T=4 on they are bound by FMA
 *                     throughput and still beat OpenBLAS, which is slow at
 *                     small M, up to the thresholds (measured; see kernels_impl.h).
 *   larger T          OpenBLAS sgemm. F32 weights are used in place; F16 and
 *                     BF16 weights are converted a block of rows at a time
 *                     (a block sized to stay in L2) into the caller's scratch
 *                     and multiplied from there.
 *
 * Threads: the caller's pool (util/threadpool.h) is the only one. Each call
 * runs at most one mc_pool_for over W's rows, in chunks whose boundaries are
 * multiples of MC_ROW_ALIGN; thread i uses slice i of scratch on the sgemm
 * path. OpenBLAS is kept at one thread and called from inside our chunks,
 * so the two libraries never compete for the cores.
 * Calls with little work run on the calling thread alone.
 *
 * This file chooses the kernels by instruction set (isa.c) and runs the
 * product; the kernels themselves live one file per ISA and concern (see
 * kernels_impl.h for the list).
 */
#include "backend/cpu/kernels_impl.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <strings.h>

static atomic_int g_last_qint = QINT_NONE; /* for mc_cpu_take_int8_kernels */

const char *mc_cpu_take_int8_kernels(void) {
    return mc_cpu_qint_name(atomic_exchange_explicit(&g_last_qint, QINT_NONE, memory_order_relaxed));
}

/* Workers that sleep at once (MOECL_SPIN_US=0) cost a wake per call. */
static double par_min_work(void) {
    return mc_pool_spin_us() > 0 ? MC_PAR_MIN_WORK : MC_PAR_MIN_WORK_PASSIVE;
}

/* ======================================================================== */
/* Dispatch                                                                 */
/* ======================================================================== */

static void fused_rows(int isa, moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T,
                       float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    if (is_quant(dt)) {
        mc_fused_quant(isa, dt, w, cols, X, T, Y, ldy, r0, r1);
        return;
    }
#if MC_X86
    if (isa == ISA_AVX512) mc_fused512(dt, w, cols, X, T, Y, ldy, r0, r1);
    else if (isa == ISA_AVX2) mc_fused256(dt, w, cols, X, T, Y, ldy, r0, r1);
    else
#endif
#if MC_ARM
    if (isa == ISA_FP16) mc_fused_fp16(dt, w, cols, X, T, Y, ldy, r0, r1);
    else if (isa == ISA_NEON) mc_fused_neon(dt, w, cols, X, T, Y, ldy, r0, r1);
    else
#endif
        mc_fused_scalar(dt, w, cols, X, T, Y, ldy, r0, r1);
    (void)isa;
}

static void to_f32_isa(int isa, moecl_dtype t, const void *src, float *dst, int64_t n) {
    if (t == MOECL_DTYPE_F32 || n <= 0) {
        if (n > 0 && (const void *)dst != src) memmove(dst, src, (size_t)n * sizeof(float));
        return;
    }
    if (is_quant(t)) {
        mc_deq_isa(isa, t, src, dst, n / mc_dtype_block(t));
        return;
    }
#if MC_X86
    if (isa == ISA_AVX512) mc_to_f32_512(t, src, dst, n);
    else if (isa == ISA_AVX2) mc_to_f32_256(t, src, dst, n);
    else
#endif
#if MC_ARM
    if (isa == ISA_NEON || isa == ISA_FP16) mc_to_f32_neon(t, src, dst, n);
    else
#endif
        mc_to_f32_scalar(t, src, dst, n);
    (void)isa;
}

void mc_cpu_to_f32(moecl_dtype t, const void *src, float *dst, int64_t n) {
    to_f32_isa(mc_cpu_level(), t, src, dst, n);
}

bool mc_cpu_f16_arith(moecl_dtype t, int64_t T) {
#if MC_ARM
    return t == MOECL_DTYPE_F16 && T >= MC_FP16_MIN_T && T <= MC_SMALL_T_16 && mc_cpu_level() == ISA_FP16;
#else
    (void)t, (void)T;
    return false;
#endif
}

/* ======================================================================== */
/* Matrix product                                                           */
/* ======================================================================== */

/* How a call is run; mc_cpu_matmul_scratch_size and mc_cpu_matmul must agree. */
typedef struct plan {
    bool blas;           /* sgemm path (else fused kernels) */
    int n_threads;       /* threads to ask for (1: no parallel region) */
    int64_t block_rows;  /* rows converted per sgemm call (F16/BF16 on the sgemm path) */
    size_t slice_floats; /* floats of scratch per thread, a multiple of 16 (64 bytes) */
} plan;

static plan make_plan(const mc_tensor *W, int64_t T, int n_threads) {
    plan p = {0};
    int64_t rows = W->rows, cols = W->cols;
    int64_t small_t = W->type == MOECL_DTYPE_F32 ? MC_SMALL_T : is_quant(W->type) ? MC_SMALL_T_Q : MC_SMALL_T_16;
    p.blas = T > small_t && rows <= INT_MAX && cols <= INT_MAX && T <= INT_MAX;

    int n = n_threads > 0 ? n_threads : 1;
    int64_t max_by_rows = (rows + MC_ROW_ALIGN - 1) / MC_ROW_ALIGN;
    if (n > max_by_rows) n = (int)max_by_rows;
    double work = (double)T * (double)rows * (double)cols;
    if (work < par_min_work() || n < 1) n = 1;
    p.n_threads = n;

    if (p.blas && W->type != MOECL_DTYPE_F32) {
        int64_t b = (int64_t)(MC_CONVERT_BLOCK_BYTES / ((size_t)cols * sizeof(float)));
        b = b / MC_ROW_ALIGN * MC_ROW_ALIGN;
        if (b < MC_CONVERT_MIN_ROWS) b = MC_CONVERT_MIN_ROWS;
        if (b > rows) b = rows;
        p.block_rows = b;
        p.slice_floats = ((size_t)b * (size_t)cols + 15) & ~(size_t)15;
    }
    return p;
}

size_t mc_cpu_matmul_scratch_size(const mc_tensor *W, int64_t T, int n_threads) {
    if (!W || T <= 0 || W->rows <= 0 || W->cols <= 0) return 0;
    plan p = make_plan(W, T, n_threads);
    size_t bytes;
    if (!mc_mul_size(p.slice_floats, sizeof(float), &bytes) || !mc_mul_size(bytes, (size_t)p.n_threads, &bytes))
        return SIZE_MAX;
    return bytes;
}

/* Rows [r0, r1) of Y: one thread's share. */
static void matmul_rows(const plan *p, int isa, int qint, const mc_tensor *W, const float *X, const qact *qa,
                        int64_t T, float *Y, int64_t r0, int64_t r1, float *slice) {
    const int64_t rows = W->rows, cols = W->cols;
    const size_t rb = row_bytes(W->type, cols);
    if (qa) {
        mc_qint_rows(qint, W->type, W->data, cols, qa, T, Y, rows, r0, r1);
        return;
    }
    if (!p->blas) {
        fused_rows(isa, W->type, W->data, cols, X, T, Y, rows, r0, r1);
        return;
    }
    if (W->type == MOECL_DTYPE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)(r1 - r0), (int)cols, 1.0f, X,
                    (int)cols, (const float *)W->data + r0 * cols, (int)cols, 0.0f, Y + r0, (int)rows);
        return;
    }
    for (int64_t b0 = r0; b0 < r1; b0 += p->block_rows) {
        int64_t nb = r1 - b0 < p->block_rows ? r1 - b0 : p->block_rows;
        to_f32_isa(isa, W->type, (const char *)W->data + (size_t)b0 * rb, slice, nb * cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)nb, (int)cols, 1.0f, X, (int)cols,
                    slice, (int)cols, 0.0f, Y + b0, (int)rows);
    }
}

typedef struct matmul_job {
    const plan *p;
    int isa, qint;
    const mc_tensor *W;
    const float *X;
    const qact *qa;
    int64_t T;
    float *Y, *scratch;
} matmul_job;

static void matmul_chunk(void *arg, int64_t r0, int64_t r1, int tid) {
    const matmul_job *j = arg;
    matmul_rows(j->p, j->isa, j->qint, j->W, j->X, j->qa, j->T, j->Y, r0, r1,
                j->scratch ? j->scratch + (size_t)tid * j->p->slice_floats : NULL);
}

void mc_cpu_matmul(const mc_tensor *W, const float *X, int64_t T, float *Y, mc_pool *pool, void *scratch) {
    const int64_t rows = W->rows, cols = W->cols;
    if (T <= 0 || rows <= 0) return;
    if (cols <= 0) {
        memset(Y, 0, (size_t)T * (size_t)rows * sizeof(float));
        return;
    }
    plan p = make_plan(W, T, mc_pool_size(pool));
    /* Without the scratch it asked for, fall back to the fused kernels,
     * which are correct (if slower) for any T. */
    if (p.blas && p.slice_floats && !scratch) p.blas = false;
    /* OpenBLAS's thread count is process-global: checked on every call (it
     * costs nothing) rather than once, in case other code changed it. */
    if (p.blas && openblas_get_num_threads() != 1) openblas_set_num_threads(1);
    /* int8 activations: quantized here, once, for every thread (if the
     * allocation fails, the float kernels do the work) */
    qact qa_store, *qa = NULL;
    const int qint = mc_cpu_qint();
    float *xr = NULL;
    if (mc_cpu_quant_int8(W->type, T)) {
        if (T <= MC_QINT_T && !p.blas && mc_qact_make(&qa_store, X, T, cols)) {
            qa = &qa_store;
            atomic_store_explicit(&g_last_qint, qint, memory_order_relaxed);
        } else if ((xr = malloc((size_t)T * (size_t)cols * sizeof *xr))) {
            /* the same 8-bit activations for the float paths: a token's
             * logits then differ between batch sizes only by the float
             * summation order, not by the activations' rounding */
            mc_qact_round(X, T * cols, xr);
            X = xr;
        }
    }
    matmul_job j = {.p = &p, .isa = mc_cpu_level(), .qint = qint, .W = W, .X = X, .qa = qa, .T = T, .Y = Y,
                    .scratch = scratch};
    if (p.blas) {
        /* sgemm packs X again on every call: one large block per thread */
        mc_pool_for(pool, rows, MC_POOL_STATIC, MC_ROW_ALIGN, p.n_threads, matmul_chunk, &j);
    } else {
        /* Several chunks per thread, so that a thread the scheduler has
         * taken off its core leaves little for the others to wait on. */
        int64_t grain = (rows + (int64_t)p.n_threads * MC_CHUNKS_PER_THREAD - 1) /
                        ((int64_t)p.n_threads * MC_CHUNKS_PER_THREAD);
        grain = (grain + MC_ROW_ALIGN - 1) / MC_ROW_ALIGN * MC_ROW_ALIGN;
        mc_pool_for(pool, rows, MC_POOL_DYNAMIC, grain, p.n_threads, matmul_chunk, &j);
    }
    if (qa) mc_qact_free(qa);
    free(xr);
}

/* ======================================================================== */
/* Element-wise                                                             */
/* ======================================================================== */

void mc_cpu_swiglu(float *gate, const float *up, int64_t n) {
    /* silu(g) = g * sigmoid(g), with sigmoid from exp(-|g|) so that nothing
     * overflows: 1 / (1 + e) for g >= 0, e / (1 + e) for g < 0. A few ulp
     * from the exact value everywhere. g = -inf gives NaN, as in PyTorch.
     * With libm's expf per element this was 7% of a Q4_K_M prompt (perf,
     * mixtral-mini pp512, AVX2): x86 runs the same formula 8 wide. */
#if MC_X86
    const int isa = mc_cpu_level();
    if (isa == ISA_AVX2 || isa == ISA_AVX512) {
        mc_swiglu_avx2(gate, up, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        float e = expf(-fabsf(g));
        float num = g >= 0.0f ? 1.0f : e;
        gate[i] = g * (num / (1.0f + e)) * up[i];
    }
}
