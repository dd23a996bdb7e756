/*
 * kernels_impl.h - what the CPU kernel files share (not an interface for the
 * rest of moecl: that is kernels.h).
 *
 *   isa.c             instruction-set detection, MOECL_CPU_ISA
 *   kernels.c         dispatch by ISA, the matrix product (threads, sgemm
 *                     path, fused path), element-wise ops
 *   kernels_scalar.c  portable C kernels (every CPU; the reference)
 *   kernels_avx512.c  AVX-512 float kernels            (x86-64 only)
 *   kernels_avx2.c    AVX2 + FMA + F16C float kernels  (x86-64 only)
 *   quant_tiles.c     quantized weights with float32 activations: SIMD
 *                     dequantizers and the tiled fused kernel
 *   int8.c            int8 activations (quantization, scalar tail, dispatch)
 *   int8_avx512.c     quantized weights x int8 activations, AVX-512 VNNI
 *   int8_avx2.c       the same in 256-bit registers, AVX2 and AVX-VNNI
 *                     (one body, int8_avx2_body.h, built for each)
 *   kernels_neon.c    NEON float kernels (F32, F16 by fcvtl, BF16)  (AArch64 only)
 *   kernels_fp16.c    F16 weights in FP16 arithmetic, ARMv8.2 +fp16 (AArch64 only)
 *   int8_neon.c       int8 kernels, NEON smull + sadalp             (AArch64 only)
 *   int8_dotprod.c    the same with sdot, ARMv8.2 +dotprod          (AArch64 only)
 *                     (one body, int8_neon_body.h, built for each)
 *
 * ISA: the library is built for baseline x86-64 or ARMv8-A. The x86 SIMD
 * kernels are compiled with target attributes, the ARM files beyond the
 * baseline with their own -march (meson.build); all are chosen at run time
 * (isa.c). Everything else (and other CPUs) uses portable scalar C.
 */
#ifndef MOECL_CPU_KERNELS_IMPL_H
#define MOECL_CPU_KERNELS_IMPL_H

#include "backend/cpu/kernels.h"
#include "quant/quant.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define MC_X86 1
#else
#define MC_X86 0
#endif
#if defined(__aarch64__) && defined(__GNUC__)
#define MC_ARM 1
#else
#define MC_ARM 0
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

/* Largest T whose quantized products run the int8 kernels (int8.c), where
 * there are any; above it X is rounded to the same 8-bit grid and sgemm
 * computes with it (on dequantized weights), which keeps prompts at sgemm
 * speed. Measured on Zen 3 (AVX2, a loaded machine, 3584x1024, 1 thread):
 * the int8 kernels ran at 1.0-1.3x the float tiles for Q4_K and Q8_0 up to
 * T=64 (Q6_K 0.8-1.9x), and the int8 kernels at every T made pp512 of
 * mixtral-mini 0.77-0.87x as fast (Q4_K_M; Q8_0 0.80-1.00). So: the same
 * crossover as MC_SMALL_T_Q. */
#ifndef MC_QINT_T
#define MC_QINT_T 64
#endif

/* Thread chunks of W start on multiples of this many rows. */
#ifndef MC_ROW_ALIGN
#define MC_ROW_ALIGN 16
#endif

/* T * rows * cols below this runs on the calling thread: waking the team
 * costs more than the work. Measured on Zen 4 (2 vCPU, KVM), BF16, T=1:
 * with OpenMP threads spinning between regions a region cost < 1 us and 2
 * threads broke even at ~32k; with threads asleep (OMP_WAIT_POLICY=passive)
 * every region cost 15-35 us (a futex wake through the hypervisor) and 2
 * threads only broke even at ~1M. The pool's workers spin for a while after
 * each call (threadpool.h), so within a decode step they are awake and the
 * first figure holds; MOECL_SPIN_US=0 gets MC_PAR_MIN_WORK_PASSIVE. */
#ifndef MC_PAR_MIN_WORK
#define MC_PAR_MIN_WORK 32768
#endif
#ifndef MC_PAR_MIN_WORK_PASSIVE
#define MC_PAR_MIN_WORK_PASSIVE (1 << 20)
#endif

/* Chunks per thread of the fused kernels' rows (claimed dynamically): more
 * chunks leave less for the other threads to wait on when one is taken off
 * its core, at a claim (one atomic operation) each. */
#ifndef MC_CHUNKS_PER_THREAD
#define MC_CHUNKS_PER_THREAD 4
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

/* ---- instruction sets -------------------------------------------------------- */

/* The float kernels' instruction set, and the int8 kernels'. */
enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, ISA_NEON = 3, ISA_FP16 = 4 };
enum { QINT_NONE = 0, QINT_AVX2 = 1, QINT_AVXVNNI = 2, QINT_VNNI512 = 3, QINT_NEON = 4, QINT_DOTPROD = 5 };

/* What the kernels use now (detected on first use; see isa.c). */
int mc_cpu_level(void);
int mc_cpu_qint(void);
/* "none", "avx2", "avxvnni", "avx512vnni", "neon", "dotprod". */
const char *mc_cpu_qint_name(int kind);

#if MC_X86
#define MC_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define MC_T256 __attribute__((target("avx2,fma,f16c")))
#define MC_TVNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))
#define MC_INLINE inline __attribute__((always_inline))
#endif
#if MC_ARM
#define MC_INLINE inline __attribute__((always_inline))
#endif

/* ---- small helpers ------------------------------------------------------------- */

static inline size_t elem_size(moecl_dtype t) { return t == MOECL_DTYPE_F32 ? 4 : 2; }

static inline bool is_quant(moecl_dtype t) { return mc_dtype_block(t) > 1; }

/* Bytes of a row of n weights (n a whole number of blocks). */
static inline size_t row_bytes(moecl_dtype t, int64_t n) {
    return is_quant(t) ? (size_t)(n / mc_dtype_block(t)) * mc_dtype_block_bytes(t) : (size_t)n * elem_size(t);
}

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

/* Eight independent partial sums: shorter dependency chains, and a smaller
 * rounding error than one running sum. */
static inline float dot_scalar(const float *a, const float *b, int64_t n) {
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    for (int j = 0; i < n; i++, j++) s[j] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
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

/* ---- kernels, by file ----------------------------------------------------------
 * The fused kernels compute rows [r0, r1) of Y[T, ldy] = X[T, cols] · Wᵀ for
 * any T, W of dtype dt at w (row-major, rows of cols weights). */

/* kernels_scalar.c */
void mc_to_f32_scalar(moecl_dtype dt, const void *src, float *dst, int64_t n);
void mc_fused_scalar(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T, float *Y, int64_t ldy,
                     int64_t r0, int64_t r1);

#if MC_X86
/* kernels_avx512.c (F32, F16, BF16) */
void mc_fused512(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T, float *Y, int64_t ldy,
                 int64_t r0, int64_t r1);
void mc_to_f32_512(moecl_dtype dt, const void *src, float *dst, int64_t n);
/* Y[t, r..r+R) (+)= tile[R, ldt] · X[t, 0..n) for every t < T (R: 1 or 4). */
void mc_tile_dot512(int R, const float *tile, int64_t ldt, const float *x, int64_t ldx, int64_t T, int64_t n, float *y,
                    int64_t ldy, bool add);

/* kernels_avx2.c (F32, F16, BF16) */
void mc_fused256(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T, float *Y, int64_t ldy,
                 int64_t r0, int64_t r1);
void mc_to_f32_256(moecl_dtype dt, const void *src, float *dst, int64_t n);
/* mc_cpu_swiglu in AVX2 + FMA (kernels_avx2.c) */
void mc_swiglu_avx2(float *gate, const float *up, int64_t n);
void mc_tile_dot256(int R, const float *tile, int64_t ldt, const float *x, int64_t ldx, int64_t T, int64_t n, float *y,
                    int64_t ldy, bool add);
#endif

#if MC_ARM
/* kernels_neon.c (F32, F16, BF16) */
void mc_fused_neon(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T, float *Y, int64_t ldy,
                   int64_t r0, int64_t r1);
void mc_to_f32_neon(moecl_dtype dt, const void *src, float *dst, int64_t n);
void mc_tile_dot_neon(int R, const float *tile, int64_t ldt, const float *x, int64_t ldx, int64_t T, int64_t n,
                      float *y, int64_t ldy, bool add);
/* kernels_fp16.c: F16 weights at MC_FP16_MIN_T <= T in FP16 arithmetic,
 * everything else as mc_fused_neon */
#ifndef MC_FP16_MIN_T
#define MC_FP16_MIN_T 1
#endif
void mc_fused_fp16(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T, float *Y, int64_t ldy,
                   int64_t r0, int64_t r1);
#endif

/* quant_tiles.c (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K with float32 activations) */
/* nb blocks of quantized type dt at src to float32 under an ISA. */
void mc_deq_isa(int isa, moecl_dtype dt, const void *src, float *dst, int64_t nb);
void mc_fused_quant(int isa, moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T, float *Y,
                    int64_t ldy, int64_t r0, int64_t r1);

/* int8.c: X[T, cols] quantized to int8, 32 columns per scale:
 * q[t*cols + c]; d and ds[t*nb + j] for the 32-column piece j
 * (nb = cols / 32): its scale, and scale * sum of its q. */
typedef struct qact {
    int8_t *q;
    float *d, *ds;
    int64_t cols, nb;
} qact;

/* Allocates and fills a (free with mc_qact_free); false if out of memory. */
bool mc_qact_make(qact *a, const float *X, int64_t T, int64_t cols);
/* Xr[i] = X[i] rounded as mc_qact_make rounds it, back in float32 (d * q):
 * the activations every T > MC_QINT_T product sees where int8 kernels exist,
 * so that a row gets the same activations whatever the batch. n: a multiple
 * of 32 (whole rows). */
void mc_qact_round(const float *X, int64_t n, float *Xr);
void mc_qact_free(qact *a);
/* Blocks [b0, nb) of a Q8_0 / Q4_0 row against row t of a, one at a time
 * (the pieces the SIMD kernels leave, when nb is not a multiple of 8). */
float mc_qint_tail(moecl_dtype dt, const void *w, int64_t b0, int64_t nb, const qact *a, int64_t t);
/* Rows [r0, r1) of Y[T, ldy] from int8 activations a (T <= MC_QINT_T) with
 * the int8 kernels of that kind (not QINT_NONE). */
void mc_qint_rows(int kind, moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T, float *Y, int64_t ldy,
                  int64_t r0, int64_t r1);

#if MC_X86
/* int8_avx512.c */
void mc_qint_rows_vnni512(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T, float *Y,
                          int64_t ldy, int64_t r0, int64_t r1);
/* int8_avx2.c */
void mc_qint_rows_avx2(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T, float *Y, int64_t ldy,
                       int64_t r0, int64_t r1);
void mc_qint_rows_avxvnni(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T, float *Y, int64_t ldy,
                          int64_t r0, int64_t r1);
/* int8.c's quantization of 32 activations, bit for bit, in 256-bit
 * registers (CPUs with the AVX2 int8 kernels): q and *d as int8.c's quant32,
 * returns sum q. mc_qact_round32_avx2 writes d * q back as float32 instead. */
int mc_quant32_avx2(const float *x, int8_t *q, float *d);
void mc_qact_round32_avx2(const float *x, float *xr);
#endif

#if MC_ARM
/* int8_neon.c, int8_dotprod.c */
void mc_qint_rows_neon(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T, float *Y, int64_t ldy,
                       int64_t r0, int64_t r1);
void mc_qint_rows_dotprod(moecl_dtype dt, const void *w, int64_t cols, const qact *a, int64_t T, float *Y,
                          int64_t ldy, int64_t r0, int64_t r1);
#endif

#endif
