/*
 * kernels_scalar.c - portable C kernels: what every CPU runs when it has no
 * SIMD kernels (non-x86, MOECL_CPU_ISA=scalar), and the tests' reference.
 */
#include "backend/cpu/kernels_impl.h"

void mc_to_f32_scalar(moecl_dtype dt, const void *src, float *dst, int64_t n) {
    if (dt == MOECL_DTYPE_F32) {
        memmove(dst, src, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i++) dst[i] = load_scalar(dt, src, i);
}

/* Rows [r0, r1) of Y[T, ldy] for any T. The row is widened 256 columns at a
 * time into a stack buffer, and each piece is dotted with up to 8 rows of X. */
void mc_fused_scalar(moecl_dtype dt, const void *w, int64_t cols, const float *X, int64_t T,
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
                mc_to_f32_scalar(dt, wr + (size_t)c0 * es, wb, n);
                for (int t = 0; t < tt; t++) acc[t] += dot_scalar(wb, X + (t0 + t) * cols + c0, n);
            }
            for (int t = 0; t < tt; t++) Y[(t0 + t) * ldy + r] = acc[t];
        }
    }
}
