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
 *                     small M, up to the thresholds (measured; see below).
 *   larger T          OpenBLAS sgemm. F32 weights are used in place; F16 and
 *                     BF16 weights are converted a block of rows at a time
 *                     (a block sized to stay in L2) into the caller's scratch
 *                     and multiplied from there.
 *
 * Threads: OpenMP is the only thread pool. Each call opens at most one
 * parallel region; thread i owns a contiguous chunk of W's rows (chunk
 * boundaries are multiples of MC_ROW_ALIGN) and, on the sgemm path, slice i
 * of scratch. OpenBLAS is kept at one thread and called from inside our
 * region, so the two libraries never compete for the cores.
 * Calls with little work run on the calling thread without a region.
 *
 * ISA: the library is built for baseline x86-64. The AVX-512 and AVX2
 * kernels are compiled with target attributes and chosen at run time with
 * __builtin_cpu_supports; everything else (and non-x86 builds) uses portable
 * scalar C. MOECL_CPU_ISA=avx2|scalar in the environment caps the choice
 * (read whenever detection runs: on first use and after
 * mc_cpu_force_scalar(false)), so the AVX2 kernels can be tested on an
 * AVX-512 machine.
 */
#include "backend/cpu/kernels.h"
#include "quant/quant.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define MC_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define MC_X86 0
#endif

/* ---- tunables (override with -D for experiments; see tools/bench_blas.c) -- */

/* Largest T that uses the fused kernels rather than sgemm: MC_SMALL_T for
 * F32 weights, MC_SMALL_T_16 for F16/BF16 (whose sgemm path also pays for
 * the conversion). Measured with bench-blas --sweep on Zen 4 (OpenBLAS
 * 0.3.21, 1 thread, 4096x14336 weight, GFLOP/s):
 *
 *   T              1    4   16   64   128   192
 *   F32  sgemm     3   10   32   67    81    88
 *   F32  fused    12   34   63   81    85    74
 *   BF16 sgemm     2    9   30   58    71    75   (convert + sgemm)
 *   BF16 fused    18   62   86   91    88    82
 *
 * The other expert shapes (14336x4096, 3584x1024, 1024x3584) and a
 * Sapphire Rapids (OpenBLAS 0.3.26) agree: the fused kernels win at every
 * T <= 64 (F32) and <= 128 (F16/BF16); sgemm draws level or ahead at
 * 1.5-2x those. */
#ifndef MC_SMALL_T
#define MC_SMALL_T 64
#endif
#ifndef MC_SMALL_T_16
#define MC_SMALL_T_16 128
#endif
/* The same for the quantized types (see the section on them below). */
#ifndef MC_SMALL_T_Q
#define MC_SMALL_T_Q 64
#endif

/* Thread chunks of W start on multiples of this many rows. */
#ifndef MC_ROW_ALIGN
#define MC_ROW_ALIGN 16
#endif

/* T * rows * cols below this runs on the calling thread: waking the team
 * costs more than the work. Measured on Zen 4 (2 vCPU, KVM), BF16, T=1:
 * with libgomp's default wait policy a region costs < 1 us and 2 threads
 * break even at ~32k; with OMP_WAIT_POLICY=passive every region costs
 * 15-35 us (a futex wake through the hypervisor) and 2 threads only break
 * even at ~1M, so that policy gets MC_PAR_MIN_WORK_PASSIVE. */
#ifndef MC_PAR_MIN_WORK
#define MC_PAR_MIN_WORK 32768
#endif
#ifndef MC_PAR_MIN_WORK_PASSIVE
#define MC_PAR_MIN_WORK_PASSIVE (1 << 20)
#endif

/* Float32 weights converted per sgemm call on the F16/BF16 path: about
 * MC_CONVERT_BLOCK_BYTES, and never fewer than MC_CONVERT_MIN_ROWS rows,
 * since every call packs all of X again and thin blocks make sgemm slow.
 * Zen 4, BF16, T=256, 1 thread: 16-row blocks of a 4096x14336 weight gave
 * 51 GFLOP/s, 128-row blocks 81 (14336x4096: 50 -> 85). */
#ifndef MC_CONVERT_BLOCK_BYTES
#define MC_CONVERT_BLOCK_BYTES (2 * 1024 * 1024)
#endif
#ifndef MC_CONVERT_MIN_ROWS
#define MC_CONVERT_MIN_ROWS 128
#endif

/* L2 bytes the fused kernels keep a block of X in (see fused_col_block).
 * Without the blocking a Sapphire Rapids fell from 112 to 39 GFLOP/s at
 * T=64 on a 4096x14336 F32 weight. */
#ifndef MC_FUSED_X_BYTES
#define MC_FUSED_X_BYTES (256 * 1024)
#endif

/* Software prefetch distance, in bytes ahead in each weight row, of the
 * memory-bound (T <= 2) fused kernels; 0: none. On Zen 4 the hardware
 * prefetchers do as well alone (1024 cost F16/BF16 ~10%); on a Sapphire
 * Rapids it was within noise either way. */
#ifndef MC_PREFETCH
#define MC_PREFETCH 0
#endif

/* ======================================================================== */
/* Instruction-set selection                                                */
/* ======================================================================== */

enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

static atomic_int g_isa_detected = -1; /* -1: not detected yet */
static atomic_bool g_force_scalar = false;
static atomic_bool g_vnni = false; /* AVX-512 VNNI, set by detect_isa (only with ISA_AVX512) */

static int detect_isa(void) {
    int best = ISA_SCALAR;
#if MC_X86
    /* F16C from CPUID directly: clang's __builtin_cpu_supports does not know
     * it. (The OS's saving of the AVX state is covered by "avx2".) */
    unsigned a, b, c, d;
    bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    best = avx512 ? ISA_AVX512 : avx2 ? ISA_AVX2 : ISA_SCALAR;
#endif
    const char *cap = getenv("MOECL_CPU_ISA");
    if (cap) {
        int capped = !strcmp(cap, "scalar") ? ISA_SCALAR : !strcmp(cap, "avx2") ? ISA_AVX2 : ISA_AVX512;
        if (capped < best) best = capped;
    }
#if MC_X86
    atomic_store(&g_vnni, best == ISA_AVX512 && __builtin_cpu_supports("avx512vnni"));
#endif
    return best;
}

static atomic_int g_passive = -1; /* OMP_WAIT_POLICY=passive; -1: not read yet */

static double par_min_work(void) {
    int passive = atomic_load_explicit(&g_passive, memory_order_relaxed);
    if (passive < 0) {
        const char *p = getenv("OMP_WAIT_POLICY");
        passive = p && !strcasecmp(p, "passive");
        atomic_store_explicit(&g_passive, passive, memory_order_relaxed);
    }
    return passive ? MC_PAR_MIN_WORK_PASSIVE : MC_PAR_MIN_WORK;
}

static int current_isa(void) {
    if (atomic_load_explicit(&g_force_scalar, memory_order_relaxed)) return ISA_SCALAR;
    int isa = atomic_load_explicit(&g_isa_detected, memory_order_relaxed);
    if (isa < 0) {
        isa = detect_isa();
        atomic_store_explicit(&g_isa_detected, isa, memory_order_relaxed);
    }
    return isa;
}

const char *mc_cpu_isa(void) {
    static const char *const names[] = {"scalar", "avx2", "avx512"};
    return names[current_isa()];
}

void mc_cpu_force_scalar(bool on) {
    atomic_store(&g_force_scalar, on);
    if (!on) atomic_store(&g_isa_detected, -1);
}

/* ======================================================================== */
/* Scalar conversions and kernels (every CPU)                               */
/* ======================================================================== */

static inline size_t elem_size(moecl_dtype t) { return t == MOECL_DTYPE_F32 ? 4 : 2; }

/* IEEE binary16 -> binary32, exact. NaNs come out quiet, as F16C makes them. */
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (exp == 0x1f) {
        v.u = sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0);
    } else if (exp != 0) {
        v.u = sign | ((exp + 112) << 23) | (man << 13);
    } else {
        v.f = (float)man * 0x1p-24f; /* zero or subnormal: exact */
        v.u |= sign;
    }
    return v.f;
}

static inline float load_scalar(moecl_dtype dt, const void *p, int64_t i) {
    switch (dt) {
    case MOECL_DTYPE_F16: return f16_to_f32(((const uint16_t *)p)[i]);
    case MOECL_DTYPE_BF16: return mc_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

static void to_f32_scalar(moecl_dtype dt, const void *src, float *dst, int64_t n) {
    if (dt == MOECL_DTYPE_F32) {
        memmove(dst, src, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i++) dst[i] = load_scalar(dt, src, i);
}

/* Eight independent partial sums: shorter dependency chains, and a smaller
 * rounding error than one running sum. */
static float dot_scalar(const float *a, const float *b, int64_t n) {
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    for (int j = 0; i < n; i++, j++) s[j] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* Rows [r0, r1) of Y[T, ldy] for any T. The row is widened 256 columns at a
 * time into a stack buffer, and each piece is dotted with up to 8 rows of X. */
static void fused_scalar(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T,
                         float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    enum { CB = 256, TB = 8 };
    float wb[CB];
    const size_t es = elem_size(dt);
    for (int64_t r = r0; r < r1; r++) {
        const char *wr = (const char *)w + (size_t)r * (size_t)cols * es;
        for (int64_t t0 = 0; t0 < T; t0 += TB) {
            int tt = (int)(T - t0 < TB ? T - t0 : TB);
            float acc[TB] = {0};
            for (int64_t c0 = 0; c0 < cols; c0 += CB) {
                int64_t n = cols - c0 < CB ? cols - c0 : CB;
                to_f32_scalar(dt, wr + (size_t)c0 * es, wb, n);
                for (int t = 0; t < tt; t++) acc[t] += dot_scalar(wb, X + (t0 + t) * cols + c0, n);
            }
            for (int t = 0; t < tt; t++) Y[(t0 + t) * ldy + r] = acc[t];
        }
    }
}

/* Columns per block of the SIMD fused kernels. With more than one chunk of
 * tokens (tchunk at a time) every group of weight rows re-reads X, so X is
 * taken a block of columns at a time, T * block * 4 <= MC_FUSED_X_BYTES, to
 * keep that block in L2; the partial dots are summed into Y. */
static inline int64_t fused_col_block(int64_t T, int64_t cols, int64_t tchunk) {
    if (T <= tchunk) return cols;
    int64_t kc = (int64_t)(MC_FUSED_X_BYTES / (sizeof(float) * (size_t)T)) / 64 * 64;
    if (kc < 256) kc = 256;
    return kc < cols ? kc : cols;
}

#if MC_X86
/* ======================================================================== */
/* AVX-512 kernels                                                          */
/* ======================================================================== */

#define MC_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define MC_T256 __attribute__((target("avx2,fma,f16c")))
#define MC_INLINE inline __attribute__((always_inline))

/* Sixteen weights from element i of a row, widened to float32. */
MC_T512 static MC_INLINE __m512 ld512(moecl_dtype dt, const void *p, int64_t i) {
    if (dt == MOECL_DTYPE_F32) return _mm512_loadu_ps((const float *)p + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i));
    if (dt == MOECL_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The same for the lanes in m only (the others read as 0, never touched). */
MC_T512 static MC_INLINE __m512 ld512_mask(moecl_dtype dt, const void *p, int64_t i, __mmask16 m) {
    if (dt == MOECL_DTYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)p + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i);
    if (dt == MOECL_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Y[t, r] for R consecutive weight rows at w and TT rows of X (R, TT <= 4,
 * compile-time constants after inlining: R*TT accumulators + R weights + 1
 * activation vector fit in the 32 zmm registers). With few tokens the loop
 * is memory-bound: it then takes a whole 64-byte line of every row per step
 * (and BF16 skips the widening shuffles). Columns past the last full step
 * go 16 at a time, the last few through one masked step. */
MC_T512 static MC_INLINE void dot512(moecl_dtype dt, const int R, const int TT, const void *w, size_t rb,
                                     const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy, bool add) {
    const size_t es = elem_size(dt);
    const int64_t step = TT <= 2 ? 64 / (int64_t)es : 16; /* elements per row per iteration */
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++) acc[r][t] = _mm512_setzero_ps();

    int64_t c = 0;
    if (step > 16) {
        for (; c + step <= n; c += step) {
#if MC_PREFETCH > 0
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                _mm_prefetch((const char *)w + r * rb + (size_t)c * es + MC_PREFETCH, _MM_HINT_T0);
#endif
            if (dt == MOECL_DTYPE_BF16) {
                /* 32 bf16 = 16 dwords: the low halves, shifted up, are the
                 * even elements as float32, the high halves (masked) the odd
                 * ones. Deinterleaving the activations instead of widening
                 * the weights costs two permutes per token, not two
                 * shuffles per weight row. */
                const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
                const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
                __m512 we[4], wo[4];
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    __m512i v = _mm512_loadu_si512((const void *)((const char *)w + r * rb + (size_t)c * 2));
                    we[r] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
                    wo[r] = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
                }
#pragma GCC unroll 4
                for (int t = 0; t < TT; t++) {
                    __m512 xa = _mm512_loadu_ps(x + t * ldx + c), xb = _mm512_loadu_ps(x + t * ldx + c + 16);
                    __m512 xe = _mm512_permutex2var_ps(xa, even, xb), xo = _mm512_permutex2var_ps(xa, odd, xb);
#pragma GCC unroll 4
                    for (int r = 0; r < R; r++) {
                        acc[r][t] = _mm512_fmadd_ps(we[r], xe, acc[r][t]);
                        acc[r][t] = _mm512_fmadd_ps(wo[r], xo, acc[r][t]);
                    }
                }
                continue;
            }
#pragma GCC unroll 4
            for (int64_t k = 0; k < step; k += 16) {
                __m512 wv[4];
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) wv[r] = ld512(dt, (const char *)w + r * rb, c + k);
#pragma GCC unroll 4
                for (int t = 0; t < TT; t++) {
                    __m512 xv = _mm512_loadu_ps(x + t * ldx + c + k);
#pragma GCC unroll 4
                    for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
        }
    }
    for (; c + 16 <= n; c += 16) {
        __m512 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = ld512(dt, (const char *)w + r * rb, c);
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++) {
            __m512 xv = _mm512_loadu_ps(x + t * ldx + c);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    if (c < n) {
        __mmask16 m = (__mmask16)((1u << (n - c)) - 1);
        __m512 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = ld512_mask(dt, (const char *)w + r * rb, c, m);
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + t * ldx + c);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++) y[t * ldy + r] = (add ? y[t * ldy + r] : 0.0f) + _mm512_reduce_add_ps(acc[r][t]);
}

/* Rows [r0, r1) of Y for any T: groups of 4 weight rows, each group dotted
 * with X four tokens at a time (a group re-read for the next four tokens
 * comes from L1, not memory). With more than four tokens the columns go in
 * blocks (fused_col_block) so that X[T, block] stays in L2 across groups. */
MC_T512 static MC_INLINE void fused512_dt(moecl_dtype dt, const void *w, int64_t cols, const float *X,
                                          int64_t T, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    const size_t es = elem_size(dt), rb = (size_t)cols * es;
    const int64_t kc = fused_col_block(T, cols, 4);
    for (int64_t k0 = 0; k0 < cols; k0 += kc) {
        const int64_t n = cols - k0 < kc ? cols - k0 : kc;
        const bool add = k0 > 0;
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) {
            const char *wr = (const char *)w + (size_t)r * rb + (size_t)k0 * es;
            for (int64_t t0 = 0; t0 < T; t0 += 4) {
                const float *x = X + t0 * cols + k0;
                float *y = Y + t0 * ldy + r;
                switch (T - t0) {
                case 1: dot512(dt, 4, 1, wr, rb, x, cols, n, y, ldy, add); break;
                case 2: dot512(dt, 4, 2, wr, rb, x, cols, n, y, ldy, add); break;
                case 3: dot512(dt, 4, 3, wr, rb, x, cols, n, y, ldy, add); break;
                default: dot512(dt, 4, 4, wr, rb, x, cols, n, y, ldy, add); break;
                }
            }
        }
        for (; r < r1; r++) {
            const char *wr = (const char *)w + (size_t)r * rb + (size_t)k0 * es;
            for (int64_t t0 = 0; t0 < T; t0 += 4) {
                const float *x = X + t0 * cols + k0;
                float *y = Y + t0 * ldy + r;
                switch (T - t0) {
                case 1: dot512(dt, 1, 1, wr, rb, x, cols, n, y, ldy, add); break;
                case 2: dot512(dt, 1, 2, wr, rb, x, cols, n, y, ldy, add); break;
                case 3: dot512(dt, 1, 3, wr, rb, x, cols, n, y, ldy, add); break;
                default: dot512(dt, 1, 4, wr, rb, x, cols, n, y, ldy, add); break;
                }
            }
        }
    }
}

MC_T512 static void fused512(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T,
                             float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    switch (dt) {
    case MOECL_DTYPE_F16: fused512_dt(MOECL_DTYPE_F16, w, cols, X, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_BF16: fused512_dt(MOECL_DTYPE_BF16, w, cols, X, T, Y, ldy, r0, r1); break;
    default: fused512_dt(MOECL_DTYPE_F32, w, cols, X, T, Y, ldy, r0, r1); break;
    }
}

MC_T512 static void to_f32_512(moecl_dtype dt, const void *src, float *dst, int64_t n) {
    int64_t i = 0;
    if (dt == MOECL_DTYPE_F16) {
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, ld512(MOECL_DTYPE_F16, src, i));
        if (i < n) {
            __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
            _mm512_mask_storeu_ps(dst + i, m, ld512_mask(MOECL_DTYPE_F16, src, i, m));
        }
    } else {
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, ld512(MOECL_DTYPE_BF16, src, i));
        if (i < n) {
            __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
            _mm512_mask_storeu_ps(dst + i, m, ld512_mask(MOECL_DTYPE_BF16, src, i, m));
        }
    }
}

/* ======================================================================== */
/* AVX2 kernels                                                             */
/* ======================================================================== */

MC_T256 static MC_INLINE __m256 ld256(moecl_dtype dt, const void *p, int64_t i) {
    if (dt == MOECL_DTYPE_F32) return _mm256_loadu_ps((const float *)p + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (dt == MOECL_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

MC_T256 static MC_INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* As dot512 with 8 lanes; R <= 4, TT <= 2 so that the accumulators, weights
 * and activation fit in 16 ymm registers. The tail is scalar. */
MC_T256 static MC_INLINE void dot256(moecl_dtype dt, const int R, const int TT, const void *w, size_t rb,
                                     const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy, bool add) {
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < TT; t++) acc[r][t] = _mm256_setzero_ps();

    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        __m256 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = ld256(dt, (const char *)w + r * rb, c);
#pragma GCC unroll 2
        for (int t = 0; t < TT; t++) {
            __m256 xv = _mm256_loadu_ps(x + t * ldx + c);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < TT; t++) {
            float s = hsum256(acc[r][t]);
            for (int64_t k = c; k < n; k++)
                s += load_scalar(dt, (const char *)w + r * rb, k) * x[t * ldx + k];
            y[t * ldy + r] = (add ? y[t * ldy + r] : 0.0f) + s;
        }
}

MC_T256 static MC_INLINE void fused256_dt(moecl_dtype dt, const void *w, int64_t cols, const float *X,
                                          int64_t T, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    const size_t es = elem_size(dt), rb = (size_t)cols * es;
    const int64_t kc = fused_col_block(T, cols, 2);
    for (int64_t k0 = 0; k0 < cols; k0 += kc) {
        const int64_t n = cols - k0 < kc ? cols - k0 : kc;
        const bool add = k0 > 0;
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) {
            const char *wr = (const char *)w + (size_t)r * rb + (size_t)k0 * es;
            for (int64_t t0 = 0; t0 < T; t0 += 2) {
                const float *x = X + t0 * cols + k0;
                float *y = Y + t0 * ldy + r;
                if (T - t0 == 1) dot256(dt, 4, 1, wr, rb, x, cols, n, y, ldy, add);
                else dot256(dt, 4, 2, wr, rb, x, cols, n, y, ldy, add);
            }
        }
        for (; r < r1; r++) {
            const char *wr = (const char *)w + (size_t)r * rb + (size_t)k0 * es;
            for (int64_t t0 = 0; t0 < T; t0 += 2) {
                const float *x = X + t0 * cols + k0;
                float *y = Y + t0 * ldy + r;
                if (T - t0 == 1) dot256(dt, 1, 1, wr, rb, x, cols, n, y, ldy, add);
                else dot256(dt, 1, 2, wr, rb, x, cols, n, y, ldy, add);
            }
        }
    }
}

MC_T256 static void fused256(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T,
                             float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    switch (dt) {
    case MOECL_DTYPE_F16: fused256_dt(MOECL_DTYPE_F16, w, cols, X, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_BF16: fused256_dt(MOECL_DTYPE_BF16, w, cols, X, T, Y, ldy, r0, r1); break;
    default: fused256_dt(MOECL_DTYPE_F32, w, cols, X, T, Y, ldy, r0, r1); break;
    }
}

MC_T256 static void to_f32_256(moecl_dtype dt, const void *src, float *dst, int64_t n) {
    int64_t i = 0;
    if (dt == MOECL_DTYPE_F16)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld256(MOECL_DTYPE_F16, src, i));
    else
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld256(MOECL_DTYPE_BF16, src, i));
    for (; i < n; i++) dst[i] = load_scalar(dt, src, i);
}
#endif /* MC_X86 */

/* ======================================================================== */
/* Quantized weights (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)                         */
/* ======================================================================== */

/*
 * A quantized weight is never widened as a whole. The fused kernels take
 * 4 rows x MC_QCHUNK columns at a time, dequantize them into a tile on the
 * stack (16 KiB: it stays in L1) and dot the tile with the T rows of X with
 * the float32 kernels above (dot512 / dot256 on F32, or dot_scalar), so each
 * weight block is read from memory once for all T rows. The sgemm path
 * dequantizes row blocks into the caller's scratch, as F16/BF16 do.
 * Activations stay float32: nothing is added to the error beyond the
 * weights' own quantization.
 *
 * The SIMD dequantizers give the same bits as mc_dequantize_row (and so as
 * gguf.quants): the same float32 products in the same order, a multiply and
 * a subtract rather than an FMA (the build is ISO C: GCC contracts nothing).
 */

/* Columns per dequantized tile: a multiple of every block size. */
#ifndef MC_QCHUNK
#define MC_QCHUNK 1024
#endif

/* Columns of X per pass of the AVX-512 T <= 2 kernels (a multiple of 256;
 * 0: whole rows). Each 16 weights load 64 bytes of X per token, so long
 * rows stream X from L2: Zen 4, Q4_K, T=1, 1 thread, rows of 16384 columns
 * ran at 4.5-6.4 GB/s, rows of 4096 at 11.7. But blocking at 4096 made the
 * 16384-column case slower still (2.9 GB/s; the weight rows are then read
 * in 2 KiB pieces), so it is off. All on a shared, noisy 2-vCPU VM. */
#ifndef MC_QX_COLS
#define MC_QX_COLS 0
#endif

static inline bool is_quant(moecl_dtype t) { return mc_dtype_block(t) > 1; }

/* Bytes of a row of n weights (n a whole number of blocks). */
static inline size_t row_bytes(moecl_dtype t, int64_t n) {
    return is_quant(t) ? (size_t)(n / mc_dtype_block(t)) * mc_dtype_block_bytes(t) : (size_t)n * elem_size(t);
}

#if MC_X86
/* ---- AVX-512: 16 weights per step ---- */

MC_T512 static MC_INLINE __m512i u8x16(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }
MC_T512 static MC_INLINE float h2f(uint16_t h) { return _cvtsh_ss(h); }

/* Sixteen weights w at offset pos of the current block: stored to y + pos
 * (TT == 0: dequantization), or multiplied into the TT rows of x + pos and
 * added to acc[t][a] (a: one of two accumulators, to halve the dependency
 * chains). TT and a are compile-time constants after inlining. */
#define EMIT512(pos, w, a)                                                                            \
    do {                                                                                              \
        if (TT == 0) {                                                                                \
            _mm512_storeu_ps(y + (pos), (w));                                                         \
        } else {                                                                                      \
            acc[0][a] = _mm512_fmadd_ps((w), _mm512_loadu_ps(x + (pos)), acc[0][a]);                  \
            if (TT == 2) acc[1][a] = _mm512_fmadd_ps((w), _mm512_loadu_ps(x + ldx + (pos)), acc[1][a]); \
        }                                                                                             \
    } while (0)

/* nb blocks of dt at src: dequantized to y (TT == 0), or dotted with TT <= 2
 * rows of x (ldx apart) into acc, never leaving registers. Either way the
 * weights are the float32 values mc_dequantize_row gives. */
MC_T512 static MC_INLINE void q512(moecl_dtype dt, const int TT, const void *src, int64_t nb, float *y,
                                   const float *x, int64_t ldx, __m512 acc[2][2]) {
    const __m512i m4 = _mm512_set1_epi32(0xf);
    switch (dt) {
    case MOECL_DTYPE_Q8_0:
        for (const mc_block_q8_0 *b = src; nb-- > 0; b++, y += TT ? 0 : 32, x += TT ? 32 : 0) {
            const __m512 d = _mm512_set1_ps(h2f(b->d));
            __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b->qs));
            __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b->qs + 16)));
            EMIT512(0, _mm512_mul_ps(_mm512_cvtepi32_ps(q0), d), 0);
            EMIT512(16, _mm512_mul_ps(_mm512_cvtepi32_ps(q1), d), 1);
        }
        break;
    case MOECL_DTYPE_Q4_0:
        for (const mc_block_q4_0 *b = src; nb-- > 0; b++, y += TT ? 0 : 32, x += TT ? 32 : 0) {
            const __m512 d = _mm512_set1_ps(h2f(b->d));
            const __m512i q = u8x16(b->qs), eight = _mm512_set1_epi32(8);
            __m512i lo = _mm512_sub_epi32(_mm512_and_si512(q, m4), eight);
            __m512i hi = _mm512_sub_epi32(_mm512_srli_epi32(q, 4), eight);
            EMIT512(0, _mm512_mul_ps(d, _mm512_cvtepi32_ps(lo)), 0);
            EMIT512(16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(hi)), 1);
        }
        break;
    case MOECL_DTYPE_Q4_K:
    case MOECL_DTYPE_Q5_K: {
        const bool five = dt == MOECL_DTYPE_Q5_K;
        const size_t bb = five ? sizeof(mc_block_q5_K) : sizeof(mc_block_q4_K);
        for (const char *p = src; nb-- > 0; p += bb, y += TT ? 0 : 256, x += TT ? 256 : 0) {
            /* Q4_K and Q5_K share d, dmin, scales; qs and qh are where they differ */
            const mc_block_q4_K *b = (const mc_block_q4_K *)p;
            const uint8_t *qs = five ? ((const mc_block_q5_K *)p)->qs : b->qs;
            const uint8_t *qh = five ? ((const mc_block_q5_K *)p)->qh : NULL;
            const float d = h2f(b->d), dmin = h2f(b->dmin);
            __m512i qhv[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
            if (five) {
                qhv[0] = u8x16(qh);
                qhv[1] = u8x16(qh + 16);
            }
            for (int k = 0; k < 4; k++) { /* sub-blocks 2k (low nibbles) and 2k+1 (high) */
                uint8_t sc0, m0, sc1, m1;
                mc_q4k_scale_min(b->scales, 2 * k, &sc0, &m0);
                mc_q4k_scale_min(b->scales, 2 * k + 1, &sc1, &m1);
                const __m512 dl0 = _mm512_set1_ps(d * (float)sc0), ml0 = _mm512_set1_ps(dmin * (float)m0);
                const __m512 dl1 = _mm512_set1_ps(d * (float)sc1), ml1 = _mm512_set1_ps(dmin * (float)m1);
                const __m128i s0 = _mm_cvtsi32_si128(2 * k), s1 = _mm_cvtsi32_si128(2 * k + 1);
#pragma GCC unroll 2
                for (int h = 0; h < 2; h++) {
                    const __m512i q = u8x16(qs + 32 * k + 16 * h);
                    __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_srli_epi32(q, 4);
                    if (five) {
                        const __m512i one = _mm512_set1_epi32(1);
                        lo = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_and_si512(_mm512_srl_epi32(qhv[h], s0), one), 4));
                        hi = _mm512_or_si512(hi, _mm512_slli_epi32(_mm512_and_si512(_mm512_srl_epi32(qhv[h], s1), one), 4));
                    }
                    EMIT512(64 * k + 16 * h, _mm512_sub_ps(_mm512_mul_ps(dl0, _mm512_cvtepi32_ps(lo)), ml0), 0);
                    EMIT512(64 * k + 32 + 16 * h, _mm512_sub_ps(_mm512_mul_ps(dl1, _mm512_cvtepi32_ps(hi)), ml1), 1);
                }
            }
        }
        break;
    }
    case MOECL_DTYPE_Q6_K:
        for (const mc_block_q6_K *b = src; nb-- > 0; b++, y += TT ? 0 : 256, x += TT ? 256 : 0) {
            const float d = h2f(b->d);
            const __m512i three = _mm512_set1_epi32(3), k32 = _mm512_set1_epi32(32);
            for (int h = 0; h < 2; h++)
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) { /* the 16 weights at r = 16j (+64) share ql bytes with r + 64 */
                    const int r = 16 * j;
                    const __m512i l = u8x16(b->ql + 64 * h + r), hb = u8x16(b->qh + 32 * h + r % 32);
                    const __m128i s_lo = _mm_cvtsi32_si128(2 * (r / 32)), s_hi = _mm_cvtsi32_si128(2 * (r / 32) + 4);
                    __m512i q0 = _mm512_or_si512(_mm512_and_si512(l, m4),
                                                 _mm512_slli_epi32(_mm512_and_si512(_mm512_srl_epi32(hb, s_lo), three), 4));
                    __m512i q1 = _mm512_or_si512(_mm512_srli_epi32(l, 4),
                                                 _mm512_slli_epi32(_mm512_and_si512(_mm512_srl_epi32(hb, s_hi), three), 4));
                    const int p0 = 128 * h + r, p1 = p0 + 64;
                    const __m512 d0 = _mm512_set1_ps(d * (float)b->scales[p0 / 16]);
                    const __m512 d1 = _mm512_set1_ps(d * (float)b->scales[p1 / 16]);
                    EMIT512(p0, _mm512_mul_ps(d0, _mm512_cvtepi32_ps(_mm512_sub_epi32(q0, k32))), 0);
                    EMIT512(p1, _mm512_mul_ps(d1, _mm512_cvtepi32_ps(_mm512_sub_epi32(q1, k32))), 1);
                }
        }
        break;
    default: break;
    }
}
#undef EMIT512

MC_T512 static void deq512(moecl_dtype dt, const void *src, float *y, int64_t nb) {
    q512(dt, 0, src, nb, y, NULL, 0, NULL);
}

/* Y[t, r] for rows [r0, r1) and T <= 2 tokens, each weight row read once and
 * dotted in registers (no tile): the memory-bound decode case. */
MC_T512 static MC_INLINE void rows_dot512_dt(moecl_dtype dt, const int TT, const void *w, size_t rb, int64_t nb,
                                             const float *X, int64_t ldx, float *Y, int64_t ldy, int64_t r0,
                                             int64_t r1, bool add) {
    for (int64_t r = r0; r < r1; r++) {
        __m512 acc[2][2] = {{_mm512_setzero_ps(), _mm512_setzero_ps()}, {_mm512_setzero_ps(), _mm512_setzero_ps()}};
        q512(dt, TT, (const char *)w + (size_t)r * rb, nb, NULL, X, ldx, acc);
        for (int t = 0; t < TT; t++)
            Y[t * ldy + r] = (add ? Y[t * ldy + r] : 0.0f) + _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
    }
}

MC_T512 static void rows_dot512(moecl_dtype dt, int64_t T, const void *w, size_t rb, int64_t nb, const float *X,
                                int64_t ldx, float *Y, int64_t ldy, int64_t r0, int64_t r1, bool add) {
#define MC_ROWS_DOT(DT)                                                                   \
    do {                                                                                  \
        if (T == 1) rows_dot512_dt(DT, 1, w, rb, nb, X, ldx, Y, ldy, r0, r1, add);        \
        else rows_dot512_dt(DT, 2, w, rb, nb, X, ldx, Y, ldy, r0, r1, add);               \
    } while (0)
    switch (dt) {
    case MOECL_DTYPE_Q8_0: MC_ROWS_DOT(MOECL_DTYPE_Q8_0); break;
    case MOECL_DTYPE_Q4_0: MC_ROWS_DOT(MOECL_DTYPE_Q4_0); break;
    case MOECL_DTYPE_Q4_K: MC_ROWS_DOT(MOECL_DTYPE_Q4_K); break;
    case MOECL_DTYPE_Q5_K: MC_ROWS_DOT(MOECL_DTYPE_Q5_K); break;
    case MOECL_DTYPE_Q6_K: MC_ROWS_DOT(MOECL_DTYPE_Q6_K); break;
    default: break;
    }
#undef MC_ROWS_DOT
}

/* Y[t, r..r+R) (+)= tile[R, ldt] · X[t, 0..n) for every t: dot512 on the
 * float32 tile, four tokens at a time. */
MC_T512 static void tile_dot512(int R, const float *tile, int64_t ldt, const float *x, int64_t ldx, int64_t T,
                                int64_t n, float *y, int64_t ldy, bool add) {
    const size_t rb = (size_t)ldt * sizeof(float);
    for (int64_t t0 = 0; t0 < T; t0 += 4) {
        const float *xt = x + t0 * ldx;
        float *yt = y + t0 * ldy;
        const int64_t tt = T - t0 < 4 ? T - t0 : 4;
        if (R == 4) {
            switch (tt) {
            case 1: dot512(MOECL_DTYPE_F32, 4, 1, tile, rb, xt, ldx, n, yt, ldy, add); break;
            case 2: dot512(MOECL_DTYPE_F32, 4, 2, tile, rb, xt, ldx, n, yt, ldy, add); break;
            case 3: dot512(MOECL_DTYPE_F32, 4, 3, tile, rb, xt, ldx, n, yt, ldy, add); break;
            default: dot512(MOECL_DTYPE_F32, 4, 4, tile, rb, xt, ldx, n, yt, ldy, add); break;
            }
        } else {
            switch (tt) {
            case 1: dot512(MOECL_DTYPE_F32, 1, 1, tile, rb, xt, ldx, n, yt, ldy, add); break;
            case 2: dot512(MOECL_DTYPE_F32, 1, 2, tile, rb, xt, ldx, n, yt, ldy, add); break;
            case 3: dot512(MOECL_DTYPE_F32, 1, 3, tile, rb, xt, ldx, n, yt, ldy, add); break;
            default: dot512(MOECL_DTYPE_F32, 1, 4, tile, rb, xt, ldx, n, yt, ldy, add); break;
            }
        }
    }
}

/* ---- AVX2: 8 weights per step ---- */

MC_T256 static MC_INLINE __m256i u8x8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }

MC_T256 static void deq256(moecl_dtype dt, const void *src, float *y, int64_t nb) {
    const __m256i m4 = _mm256_set1_epi32(0xf);
    switch (dt) {
    case MOECL_DTYPE_Q8_0:
        for (const mc_block_q8_0 *b = src; nb-- > 0; b++, y += 32) {
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(b->d));
            for (int k = 0; k < 4; k++) {
                __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8 * k)));
                _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
            }
        }
        break;
    case MOECL_DTYPE_Q4_0:
        for (const mc_block_q4_0 *b = src; nb-- > 0; b++, y += 32) {
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(b->d));
            const __m256i eight = _mm256_set1_epi32(8);
            for (int k = 0; k < 2; k++) {
                const __m256i q = u8x8(b->qs + 8 * k);
                __m256i lo = _mm256_sub_epi32(_mm256_and_si256(q, m4), eight);
                __m256i hi = _mm256_sub_epi32(_mm256_srli_epi32(q, 4), eight);
                _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(lo)));
                _mm256_storeu_ps(y + 16 + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(hi)));
            }
        }
        break;
    case MOECL_DTYPE_Q4_K:
    case MOECL_DTYPE_Q5_K: {
        const bool five = dt == MOECL_DTYPE_Q5_K;
        const size_t bb = mc_dtype_block_bytes(dt);
        for (const char *p = src; nb-- > 0; p += bb, y += 256) {
            const mc_block_q4_K *b = (const mc_block_q4_K *)p;
            const uint8_t *qs = five ? ((const mc_block_q5_K *)p)->qs : b->qs;
            const uint8_t *qh = five ? ((const mc_block_q5_K *)p)->qh : NULL;
            const float d = _cvtsh_ss(b->d), dmin = _cvtsh_ss(b->dmin);
            for (int s = 0; s < 8; s++) {
                uint8_t sc, m;
                mc_q4k_scale_min(b->scales, s, &sc, &m);
                const __m256 dl = _mm256_set1_ps(d * (float)sc), ml = _mm256_set1_ps(dmin * (float)m);
                const __m128i sh = _mm_cvtsi32_si128(4 * (s & 1)), hs = _mm_cvtsi32_si128(s);
                for (int k = 0; k < 4; k++) {
                    __m256i q = _mm256_and_si256(_mm256_srl_epi32(u8x8(qs + 32 * (s / 2) + 8 * k), sh), m4);
                    if (five) {
                        __m256i hb = _mm256_and_si256(_mm256_srl_epi32(u8x8(qh + 8 * k), hs), _mm256_set1_epi32(1));
                        q = _mm256_or_si256(q, _mm256_slli_epi32(hb, 4));
                    }
                    __m256 prod = _mm256_mul_ps(dl, _mm256_cvtepi32_ps(q));
                    _mm256_storeu_ps(y + 32 * s + 8 * k, _mm256_sub_ps(prod, ml));
                }
            }
        }
        break;
    }
    case MOECL_DTYPE_Q6_K:
        for (const mc_block_q6_K *b = src; nb-- > 0; b++, y += 256) {
            const float d = _cvtsh_ss(b->d);
            for (int p = 0; p < 256; p += 8) {
                const int h = p / 128, r = p % 128;
                __m256i lo = _mm256_and_si256(_mm256_srl_epi32(u8x8(b->ql + 64 * h + r % 64), _mm_cvtsi32_si128(4 * (r / 64))), m4);
                __m256i hi = _mm256_and_si256(_mm256_srl_epi32(u8x8(b->qh + 32 * h + r % 32), _mm_cvtsi32_si128(2 * (r / 32))),
                                              _mm256_set1_epi32(3));
                __m256i q = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32));
                const __m256 ds = _mm256_set1_ps(d * (float)b->scales[p / 16]);
                _mm256_storeu_ps(y + p, _mm256_mul_ps(ds, _mm256_cvtepi32_ps(q)));
            }
        }
        break;
    default: break;
    }
}

MC_T256 static void tile_dot256(int R, const float *tile, int64_t ldt, const float *x, int64_t ldx, int64_t T,
                                int64_t n, float *y, int64_t ldy, bool add) {
    const size_t rb = (size_t)ldt * sizeof(float);
    for (int64_t t0 = 0; t0 < T; t0 += 2) {
        const float *xt = x + t0 * ldx;
        float *yt = y + t0 * ldy;
        const bool one = T - t0 == 1;
        if (R == 4) {
            if (one) dot256(MOECL_DTYPE_F32, 4, 1, tile, rb, xt, ldx, n, yt, ldy, add);
            else dot256(MOECL_DTYPE_F32, 4, 2, tile, rb, xt, ldx, n, yt, ldy, add);
        } else {
            if (one) dot256(MOECL_DTYPE_F32, 1, 1, tile, rb, xt, ldx, n, yt, ldy, add);
            else dot256(MOECL_DTYPE_F32, 1, 2, tile, rb, xt, ldx, n, yt, ldy, add);
        }
    }
}
#endif /* MC_X86 */

/* nb blocks of quantized type dt at src to float32 under an ISA. */
static void deq_isa(int isa, moecl_dtype dt, const void *src, float *dst, int64_t nb) {
#if MC_X86
    if (isa == ISA_AVX512) deq512(dt, src, dst, nb);
    else if (isa == ISA_AVX2) deq256(dt, src, dst, nb);
    else
#endif
        mc_dequantize_row(dt, src, dst, nb * mc_dtype_block(dt));
    (void)isa;
}

static void tile_dot(int isa, int R, const float *tile, int64_t ldt, const float *x, int64_t ldx, int64_t T,
                     int64_t n, float *y, int64_t ldy, bool add) {
#if MC_X86
    if (isa == ISA_AVX512) {
        tile_dot512(R, tile, ldt, x, ldx, T, n, y, ldy, add);
        return;
    }
    if (isa == ISA_AVX2) {
        tile_dot256(R, tile, ldt, x, ldx, T, n, y, ldy, add);
        return;
    }
#endif
    (void)isa;
    for (int r = 0; r < R; r++)
        for (int64_t t = 0; t < T; t++) {
            float s = dot_scalar(tile + r * ldt, x + t * ldx, n);
            y[t * ldy + r] = (add ? y[t * ldy + r] : 0.0f) + s;
        }
}

/* Rows [r0, r1) of Y for any T, quantized W: groups of 4 rows, a tile of
 * MC_QCHUNK columns of each dequantized at a time and dotted with every
 * row of X. With many tokens the columns go in L2-sized blocks first
 * (fused_col_block), as in the float kernels. */
static void fused_quant(int isa, moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T, float *Y,
                        int64_t ldy, int64_t r0, int64_t r1) {
    _Alignas(64) float tile[4 * MC_QCHUNK];
    const int64_t blk = mc_dtype_block(dt);
    const size_t bb = mc_dtype_block_bytes(dt), rb = row_bytes(dt, cols);
#if MC_X86
    if (isa == ISA_AVX512 && T <= 2) {
        /* (MC_QX_COLS > 0: X is taken that many columns at a time) */
        const int64_t xc = MC_QX_COLS > 0 ? MC_QX_COLS : cols;
        for (int64_t k0 = 0; k0 < cols; k0 += xc) {
            const int64_t n = cols - k0 < xc ? cols - k0 : xc;
            rows_dot512(dt, T, (const char *)w + (size_t)(k0 / blk) * bb, rb, n / blk, X + k0, cols, Y, ldy, r0, r1,
                        k0 > 0);
        }
        return;
    }
#endif
    int64_t kc = fused_col_block(T, cols, isa == ISA_AVX2 ? 2 : 4);
    if (kc < cols) kc = kc / MC_QK_K * MC_QK_K; /* >= 256: whole blocks */
    for (int64_t k0 = 0; k0 < cols; k0 += kc) {
        const int64_t kend = cols - k0 < kc ? cols : k0 + kc;
        for (int64_t r = r0; r < r1;) {
            const int R = r1 - r >= 4 ? 4 : 1;
            for (int64_t c0 = k0; c0 < kend; c0 += MC_QCHUNK) {
                const int64_t n = kend - c0 < MC_QCHUNK ? kend - c0 : MC_QCHUNK;
                for (int i = 0; i < R; i++)
                    deq_isa(isa, dt, (const char *)w + (size_t)(r + i) * rb + (size_t)(c0 / blk) * bb,
                            tile + i * MC_QCHUNK, n / blk);
                tile_dot(isa, R, tile, MC_QCHUNK, X + c0, cols, T, n, Y + r, ldy, c0 > 0);
            }
            r += R;
        }
    }
}

/* ======================================================================== */
/* Quantized weights x int8 activations (decode)                            */
/* ======================================================================== */

/*
 * At T <= MC_QINT_T the float kernels above are bound by the work of
 * widening every weight to float32, not by memory. With AVX-512 VNNI the
 * rows of X are instead quantized once per call to int8, 32 columns per
 * scale (x ~ xd * xq, |xq| <= 127), and each 32-weight piece of a weight
 * row is an integer dot product (vpdpbusd: u8 weight x s8 activation, four
 * products per 32-bit lane), scaled in float32 per piece:
 *
 *   Q8_0   d * xd * sum(q * xq)                       (|q| as u8, sign moved onto xq)
 *   Q4_0   d * xd * (sum(q * xq) - 8 * sum(xq))       (q = 0..15)
 *   Q4_K   d*sc * xd * sum(q * xq) - dmin*m * xd * sum(xq)   (q = 0..15, 0..31 for Q5_K)
 *   Q6_K   d*sc * xd * sum((q - 32) * xq)             (as Q8_0; sc per 16 weights, so
 *                                                      per 4 lanes of the dot)
 *
 * The per-piece products d*sc*xd are made eight at a time (one 256-weight
 * group) and spread over the two 8-lane halves of each 64-weight dot with
 * a permute; the sum(xq) terms come precomputed with the activations (xds).
 * Rounding the activations to 8 bits adds an error of its own (see
 * tests/test_kernels.c for the bound); the float path stays the reference
 * (MOECL_CPU_ISA=avx2 or scalar selects it).
 */

/* Largest T that takes the int8 path (its weight reads are shared by all T
 * rows; the float kernels also read them once). */
#ifndef MC_QINT_T
#define MC_QINT_T 8
#endif

/* X[T, cols] quantized: q[t*cols + c]; d and ds[t*nb + j] for the 32-column
 * piece j (nb = cols / 32): its scale, and scale * sum of its q. */
typedef struct qact {
    int8_t *q;
    float *d, *ds;
    int64_t cols, nb;
} qact;

static bool qint_type(moecl_dtype t) {
    return t == MOECL_DTYPE_Q8_0 || t == MOECL_DTYPE_Q4_0 || t == MOECL_DTYPE_Q4_K || t == MOECL_DTYPE_Q5_K ||
           t == MOECL_DTYPE_Q6_K;
}

/* Allocates and fills a (free with qact_free); false if out of memory. */
static bool qact_make(qact *a, const float *X, int64_t T, int64_t cols) {
    a->cols = cols;
    a->nb = cols / 32;
    size_t nq = ((size_t)(T * cols) + 63) & ~(size_t)63, ns = (size_t)(T * a->nb);
    char *mem = aligned_alloc(64, nq + ((2 * ns * sizeof(float) + 63) & ~(size_t)63));
    if (!mem) return false;
    a->q = (int8_t *)mem;
    a->d = (float *)(mem + nq);
    a->ds = a->d + ns;
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < a->nb; j++) {
            const float *x = X + t * cols + 32 * j;
            int8_t *q = a->q + t * cols + 32 * j;
            float amax = 0.0f;
            for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
            const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
            int sum = 0;
            for (int i = 0; i < 32; i++) {
                int v = (int)lrintf(x[i] * id);
                v = v > 127 ? 127 : v < -127 ? -127 : v;
                q[i] = (int8_t)v;
                sum += v;
            }
            a->d[t * a->nb + j] = d;
            a->ds[t * a->nb + j] = d * (float)sum;
        }
    return true;
}

static void qact_free(qact *a) { free(a->q); }

bool mc_cpu_quant_int8(moecl_dtype t, int64_t T) {
    return MC_X86 && T >= 1 && T <= MC_QINT_T && qint_type(t) && current_isa() == ISA_AVX512 &&
           atomic_load_explicit(&g_vnni, memory_order_relaxed);
}

#if MC_X86
/* Blocks [b0, nb) of a Q8_0 / Q4_0 row against row t of a, one at a time
 * (the pieces the AVX-512 kernel leaves, when nb is not a multiple of 8). */
static float qint_tail(moecl_dtype dt, const void *w, int64_t b0, int64_t nb, const qact *a, int64_t t) {
    float s = 0.0f;
    for (int64_t j = b0; j < nb; j++) {
        const int8_t *xq = a->q + t * a->cols + 32 * j;
        int dot = 0;
        float d;
        if (dt == MOECL_DTYPE_Q8_0) {
            const mc_block_q8_0 *b = (const mc_block_q8_0 *)w + j;
            for (int i = 0; i < 32; i++) dot += b->qs[i] * xq[i];
            d = mc_f16_to_f32(b->d);
        } else {
            const mc_block_q4_0 *b = (const mc_block_q4_0 *)w + j;
            for (int i = 0; i < 16; i++) dot += ((b->qs[i] & 0xf) - 8) * xq[i] + ((b->qs[i] >> 4) - 8) * xq[i + 16];
            d = mc_f16_to_f32(b->d);
        }
        s += d * a->d[t * a->nb + j] * (float)dot;
    }
    return s;
}

#define MC_TVNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

/* Lanes 0-7 <- v[2k], lanes 8-15 <- v[2k+1]. */
MC_TVNNI static MC_INLINE __m512 spread_pair(__m256 v, int k) {
    const __m512i idx = _mm512_set_epi32(2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1,
                                         2 * k + 1, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k);
    return _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(v));
}

/* The eight 6-bit scales (sc) and mins (m) of a Q4_K/Q5_K block, as bytes. */
static inline void q4k_unpack(const uint8_t *s, uint64_t *sc, uint64_t *m) {
    uint32_t a, b, c;
    memcpy(&a, s, 4);
    memcpy(&b, s + 4, 4);
    memcpy(&c, s + 8, 4);
    const uint32_t lo6 = 0x3f3f3f3fu, lo4 = 0x0f0f0f0fu, hi2 = 0x30303030u;
    *sc = (uint64_t)(a & lo6) | (uint64_t)((c & lo4) | ((a >> 2) & hi2)) << 32;
    *m = (uint64_t)(b & lo6) | (uint64_t)(((c >> 4) & lo4) | ((b >> 2) & hi2)) << 32;
}

MC_TVNNI static MC_INLINE __m256 u8x8_ps(uint64_t v) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)v)));
}

/* Y[t0 + t, r] for TT <= 4 rows of a (from t0) and weight row w of nb
 * blocks: every 256-weight group is unpacked once, dotted with each row. */
MC_TVNNI static MC_INLINE void qint_row(moecl_dtype dt, const int TT, const void *w, int64_t nb, const qact *a,
                                        int64_t t0, float *y, int64_t ldy) {
    const __m512i zero = _mm512_setzero_si512();
    const __m256i m4 = _mm256_set1_epi8(0xf);
    __m512 acc[4];
    __m256 accm[4];
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++) {
        acc[t] = _mm512_setzero_ps();
        accm[t] = _mm256_setzero_ps();
    }
    const int8_t *xq[4];
    const float *xd[4], *xds[4];
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++) {
        xq[t] = a->q + (t0 + t) * a->cols;
        xd[t] = a->d + (t0 + t) * a->nb;
        xds[t] = a->ds + (t0 + t) * a->nb;
    }
    const bool q6 = dt == MOECL_DTYPE_Q6_K;
    const bool k_quant = dt == MOECL_DTYPE_Q4_K || dt == MOECL_DTYPE_Q5_K || q6;
    const bool signed_w = dt == MOECL_DTYPE_Q8_0 || q6; /* weights s8: sign moved onto x */
    const int64_t ng = k_quant ? nb : nb / 8; /* 256-weight groups */
    for (int64_t g = 0; g < ng; g++) {
        __m256 v[4];
        __m512i wz[4];
        __m512 scf = _mm512_setzero_ps(); /* Q6_K: d * scales[16] */
        if (q6) {
            const mc_block_q6_K *b = (const mc_block_q6_K *)w + g;
            scf = _mm512_mul_ps(_mm512_set1_ps(_cvtsh_ss(b->d)),
                                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b->scales))));
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) v[t] = _mm256_loadu_ps(xd[t] + 8 * g);
            const __m256i three = _mm256_set1_epi8(3), k32 = _mm256_set1_epi8(32);
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const __m256i l0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
                const __m256i l1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
                const __m256i hb = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
#pragma GCC unroll 2
                for (int j = 0; j < 2; j++) { /* j = 0: weights 0..63 of the half, low nibbles; 1: 64..127, high */
                    const __m256i a0 = j ? _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4) : _mm256_and_si256(l0, m4);
                    const __m256i a1 = j ? _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4) : _mm256_and_si256(l1, m4);
                    const __m256i h0 = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(4 * j)), three);
                    const __m256i h1 = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(4 * j + 2)), three);
                    const __m256i q0 = _mm256_sub_epi8(_mm256_or_si256(a0, _mm256_slli_epi16(h0, 4)), k32);
                    const __m256i q1 = _mm256_sub_epi8(_mm256_or_si256(a1, _mm256_slli_epi16(h1, 4)), k32);
                    wz[2 * h + j] = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
                }
            }
        } else if (k_quant) {
            const bool five = dt == MOECL_DTYPE_Q5_K;
            const char *p = (const char *)w + (size_t)g * (five ? sizeof(mc_block_q5_K) : sizeof(mc_block_q4_K));
            const mc_block_q4_K *b = (const mc_block_q4_K *)p;
            const uint8_t *qs = five ? ((const mc_block_q5_K *)p)->qs : b->qs;
            uint64_t sc, m;
            q4k_unpack(b->scales, &sc, &m);
            const __m256 dsc = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(b->d)), u8x8_ps(sc));
            const __m256 dm = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(b->dmin)), u8x8_ps(m));
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) {
                v[t] = _mm256_mul_ps(dsc, _mm256_loadu_ps(xd[t] + 8 * g));
                accm[t] = _mm256_fmadd_ps(dm, _mm256_loadu_ps(xds[t] + 8 * g), accm[t]);
            }
            __m256i hb = five ? _mm256_loadu_si256((const __m256i *)((const mc_block_q5_K *)p)->qh) : _mm256_setzero_si256();
            const __m256i one = _mm256_set1_epi8(1);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) { /* pieces 2k (low nibbles), 2k+1 (high) */
                const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
                __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if (five) {
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 1), one), 4));
                    hb = _mm256_srli_epi16(hb, 2);
                }
                wz[k] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            }
        } else {
            /* eight 32-weight blocks; their f16 scales gathered into one vector */
            const bool q8 = dt == MOECL_DTYPE_Q8_0;
            const size_t bb = q8 ? sizeof(mc_block_q8_0) : sizeof(mc_block_q4_0);
            const char *p = (const char *)w + (size_t)g * 8 * bb;
            uint16_t h[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) memcpy(&h[i], p + i * bb, 2);
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) {
                v[t] = _mm256_mul_ps(dw, _mm256_loadu_ps(xd[t] + 8 * g));
                if (!q8) accm[t] = _mm256_fmadd_ps(dw, _mm256_loadu_ps(xds[t] + 8 * g), accm[t]);
            }
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                const char *b0 = p + 2 * k * bb + 2, *b1 = b0 + bb;
                if (q8) {
                    wz[k] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)b0)),
                                               _mm256_loadu_si256((const __m256i *)b1), 1);
                } else {
                    const __m256i q = _mm256_loadu2_m128i((const __m128i *)b1, (const __m128i *)b0);
                    const __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    /* [lo0 lo1 hi0 hi1] -> [lo0 hi0 lo1 hi1] (128-bit lanes) */
                    wz[k] = _mm512_shuffle_i64x2(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
                                                 _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
                                                 _MM_SHUFFLE(3, 1, 2, 0));
                }
            }
        }
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            __m512i wu = wz[k];
            __mmask64 neg = 0;
            /* Q6_K: lane i of the dot covers weights 64k + 4i.., scale 4k + i/4 */
            const __m512 s6 = q6 ? _mm512_permutexvar_ps(_mm512_set_epi32(4 * k + 3, 4 * k + 3, 4 * k + 3, 4 * k + 3,
                                                                          4 * k + 2, 4 * k + 2, 4 * k + 2, 4 * k + 2,
                                                                          4 * k + 1, 4 * k + 1, 4 * k + 1, 4 * k + 1,
                                                                          4 * k, 4 * k, 4 * k, 4 * k),
                                                         scf)
                                 : scf;
            if (signed_w) {
                neg = _mm512_movepi8_mask(wu);
                wu = _mm512_abs_epi8(wu);
            }
#pragma GCC unroll 4
            for (int t = 0; t < TT; t++) {
                __m512i xv = _mm512_loadu_si512((const void *)(xq[t] + 256 * g + 64 * k));
                if (signed_w) xv = _mm512_mask_sub_epi8(xv, neg, zero, xv);
                const __m512i p = _mm512_dpbusd_epi32(zero, wu, xv);
                __m512 sv = spread_pair(v[t], k);
                if (q6) sv = _mm512_mul_ps(sv, s6);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sv, acc[t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < TT; t++) {
        __m128 m = _mm_add_ps(_mm256_castps256_ps128(accm[t]), _mm256_extractf128_ps(accm[t], 1));
        m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        m = _mm_add_ss(m, _mm_movehdup_ps(m));
        float s = _mm512_reduce_add_ps(acc[t]) - (dt == MOECL_DTYPE_Q4_0 ? 8.0f : 1.0f) * _mm_cvtss_f32(m);
        if (!k_quant && nb % 8) s += qint_tail(dt, w, nb / 8 * 8, nb, a, t0 + t);
        y[(t0 + t) * ldy] = s;
    }
}

MC_TVNNI static MC_INLINE void qint_rows_dt(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T,
                                            float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t nb = cols / mc_dtype_block(dt);
    const size_t rb = row_bytes(dt, cols);
    for (int64_t r = r0; r < r1; r++) {
        const char *wr = (const char *)w + (size_t)r * rb;
        for (int64_t t0 = 0; t0 < T; t0 += 4) {
            switch (T - t0) {
            case 1: qint_row(dt, 1, wr, nb, a, t0, Y + r, ldy); break;
            case 2: qint_row(dt, 2, wr, nb, a, t0, Y + r, ldy); break;
            case 3: qint_row(dt, 3, wr, nb, a, t0, Y + r, ldy); break;
            default: qint_row(dt, 4, wr, nb, a, t0, Y + r, ldy); break;
            }
        }
    }
}

MC_TVNNI static void qint_rows(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T, float *Y,
                               int64_t ldy, int64_t r0, int64_t r1) {
    switch (dt) {
    case MOECL_DTYPE_Q8_0: qint_rows_dt(MOECL_DTYPE_Q8_0, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q4_0: qint_rows_dt(MOECL_DTYPE_Q4_0, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q4_K: qint_rows_dt(MOECL_DTYPE_Q4_K, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q5_K: qint_rows_dt(MOECL_DTYPE_Q5_K, w, cols, a, T, Y, ldy, r0, r1); break;
    case MOECL_DTYPE_Q6_K: qint_rows_dt(MOECL_DTYPE_Q6_K, w, cols, a, T, Y, ldy, r0, r1); break;
    default: break;
    }
}
#endif /* MC_X86 */

/* ======================================================================== */
/* Dispatch                                                                 */
/* ======================================================================== */

static void fused_rows(int isa, moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T,
                       float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    if (is_quant(dt)) {
        fused_quant(isa, dt, w, cols, X, T, Y, ldy, r0, r1);
        return;
    }
#if MC_X86
    if (isa == ISA_AVX512) fused512(dt, w, cols, X, T, Y, ldy, r0, r1);
    else if (isa == ISA_AVX2) fused256(dt, w, cols, X, T, Y, ldy, r0, r1);
    else
#endif
        fused_scalar(dt, w, cols, X, T, Y, ldy, r0, r1);
    (void)isa;
}

static void to_f32_isa(int isa, moecl_dtype t, const void *src, float *dst, int64_t n) {
    if (t == MOECL_DTYPE_F32 || n <= 0) {
        if (n > 0 && (const void *)dst != src) memmove(dst, src, (size_t)n * sizeof(float));
        return;
    }
    if (is_quant(t)) {
        deq_isa(isa, t, src, dst, n / mc_dtype_block(t));
        return;
    }
#if MC_X86
    if (isa == ISA_AVX512) to_f32_512(t, src, dst, n);
    else if (isa == ISA_AVX2) to_f32_256(t, src, dst, n);
    else
#endif
        to_f32_scalar(t, src, dst, n);
    (void)isa;
}

void mc_cpu_to_f32(moecl_dtype t, const void *src, float *dst, int64_t n) {
    to_f32_isa(current_isa(), t, src, dst, n);
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

    int n = n_threads > 0 ? n_threads : omp_get_num_procs();
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
static void matmul_rows(const plan *p, int isa, const mc_tensor *W, const float *X, const qact *qa, int64_t T,
                        float *Y, int64_t r0, int64_t r1, float *slice) {
    const int64_t rows = W->rows, cols = W->cols;
    const size_t rb = row_bytes(W->type, cols);
#if MC_X86
    if (qa) {
        qint_rows(W->type, W->data, cols, qa, T, Y, rows, r0, r1);
        return;
    }
#endif
    (void)qa;
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

void mc_cpu_matmul(const mc_tensor *W, const float *X, int64_t T, float *Y, int n_threads, void *scratch) {
    const int64_t rows = W->rows, cols = W->cols;
    if (T <= 0 || rows <= 0) return;
    if (cols <= 0) {
        memset(Y, 0, (size_t)T * (size_t)rows * sizeof(float));
        return;
    }
    plan p = make_plan(W, T, n_threads);
    /* Without the scratch it asked for, fall back to the fused kernels,
     * which are correct (if slower) for any T. */
    if (p.blas && p.slice_floats && !scratch) p.blas = false;
    /* OpenBLAS's thread count is process-global: checked on every call (it
     * costs nothing) rather than once, in case other code changed it. */
    if (p.blas && openblas_get_num_threads() != 1) openblas_set_num_threads(1);
    const int isa = current_isa();
    float *scr = scratch;
    /* int8 activations: quantized here, once, for every thread (if the
     * allocation fails, the float kernels do the work) */
    qact qa_store, *qa = NULL;
    if (mc_cpu_quant_int8(W->type, T) && !p.blas && qact_make(&qa_store, X, T, cols)) qa = &qa_store;

    if (p.n_threads == 1) {
        matmul_rows(&p, isa, W, X, qa, T, Y, 0, rows, scr);
        if (qa) qact_free(qa);
        return;
    }
#pragma omp parallel num_threads(p.n_threads)
    {
        /* The team may be smaller than asked (nested region, thread limit). */
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int64_t chunk = (rows + nt - 1) / nt;
        chunk = (chunk + MC_ROW_ALIGN - 1) / MC_ROW_ALIGN * MC_ROW_ALIGN;
        int64_t r0 = (int64_t)id * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
        if (r0 < r1) matmul_rows(&p, isa, W, X, qa, T, Y, r0, r1, scr ? scr + (size_t)id * p.slice_floats : NULL);
    }
    if (qa) qact_free(qa);
}

/* ======================================================================== */
/* Element-wise                                                             */
/* ======================================================================== */

void mc_cpu_swiglu(float *gate, const float *up, int64_t n) {
    /* silu(g) = g * sigmoid(g), with sigmoid from exp(-|g|) so that nothing
     * overflows: 1 / (1 + e) for g >= 0, e / (1 + e) for g < 0. A few ulp
     * from the exact value everywhere. g = -inf gives NaN, as in PyTorch. */
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        float e = expf(-fabsf(g));
        float num = g >= 0.0f ? 1.0f : e;
        gate[i] = g * (num / (1.0f + e)) * up[i];
    }
}
