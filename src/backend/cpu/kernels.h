/*
 * kernels.h - CPU compute kernels: matrix products against weights stored in
 * any moecl_dtype, SwiGLU. One thread pool (the caller's mc_pool); OpenBLAS
 * is only ever called single-threaded, from inside the pool's chunks.
 */
#ifndef MOECL_CPU_KERNELS_H
#define MOECL_CPU_KERNELS_H

#include "internal.h"
#include "util/threadpool.h"

#include <stdbool.h>

/* Y[T, W.rows] = X[T, W.cols] · Wᵀ. X, Y float32 row-major, contiguous.
 * Few rows (T <= MC_SMALL_T): fused dequantize-and-dot kernels that read each
 * weight once for all T rows. Many rows: per-thread chunks of W converted to
 * float32 in scratch (unless already F32) and multiplied with sgemm.
 * Runs on the threads of pool (NULL: the calling thread alone).
 * scratch: at least mc_cpu_matmul_scratch_size(W, T, mc_pool_size(pool))
 * bytes, 64-byte aligned (may be NULL if that size is 0). */
size_t mc_cpu_matmul_scratch_size(const mc_tensor *W, int64_t T, int n_threads);
void mc_cpu_matmul(const mc_tensor *W, const float *X, int64_t T, float *Y, mc_pool *pool, void *scratch);

/* gate[i] = silu(gate[i]) * up[i] for n elements. */
void mc_cpu_swiglu(float *gate, const float *up, int64_t n);

/* Convert n elements of type t at src to float32. */
void mc_cpu_to_f32(moecl_dtype t, const void *src, float *dst, int64_t n);

/* The instruction set the fused float kernels use: "avx512", "avx2",
 * "neon", "fp16" (NEON, F16 weights in FP16 arithmetic) or "scalar". */
const char *mc_cpu_isa(void);
/* The int8 kernels quantized weights use at few rows: "avx512vnni",
 * "avxvnni", "avx2", "dotprod", "neon", or "none" (float activations:
 * scalar builds, and MOECL_CPU_ISA=scalar). */
const char *mc_cpu_int8_kernels(void);
/* Whether mc_cpu_matmul on weights of type t with T rows of X rounds X to
 * 8 bits, 32 columns per scale (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K with any int8
 * kernels, at every T), which adds the activations' rounding error: the
 * integer dot-product kernels at T <= 64, sgemm on the rounded X
 * above. Each row of X is rounded on its own, so a row's result does not
 * depend on the others beyond the float summation order. */
bool mc_cpu_quant_int8(moecl_dtype t, int64_t T);
/* Whether mc_cpu_matmul on weights of type t with T rows of X computes in
 * FP16 arithmetic (MOECL_CPU_ISA=fp16 on ARM: F16 weights on the fused path,
 * T <= 128), which rounds X and the partial sums to binary16. */
bool mc_cpu_f16_arith(moecl_dtype t, int64_t T);
/* Tests: the int8 kernels the latest mc_cpu_matmul that took the int8 path
 * ran (names as mc_cpu_int8_kernels), and forget it: "none" if no call did
 * since the last time this was asked. */
const char *mc_cpu_take_int8_kernels(void);
/* MOECL_CPU_ISA names a level the kernels know (see isa.c), or is unset:
 * MOECL_OK; otherwise MOECL_ERR_INVALID_ARG, with a message listing the
 * accepted names. */
moecl_status mc_cpu_check_env(void);
/* Tests: force the scalar kernels (true) or go back to detection (false). */
void mc_cpu_force_scalar(bool on);

#endif
