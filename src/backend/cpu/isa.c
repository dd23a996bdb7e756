/*
 * isa.c - which instruction set the CPU kernels use.
 *
 * Detected once, on first use, from CPUID: AVX-512 (F, BW, VL, DQ), else
 * AVX2 with FMA and F16C, else scalar C (every non-x86 build). AVX-512 VNNI,
 * where present with AVX-512, enables the int8 kernels. MOECL_CPU_ISA=
 * avx2|scalar in the environment caps the choice (read whenever detection
 * runs: on first use and after mc_cpu_force_scalar(false)), so the AVX2
 * kernels can be tested on an AVX-512 machine.
 */
#include "backend/cpu/kernels_impl.h"

#include <stdatomic.h>
#include <stdlib.h>

#if MC_X86
#include <cpuid.h>
#endif

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

int mc_cpu_level(void) {
    if (atomic_load_explicit(&g_force_scalar, memory_order_relaxed)) return ISA_SCALAR;
    int isa = atomic_load_explicit(&g_isa_detected, memory_order_relaxed);
    if (isa < 0) {
        isa = detect_isa();
        atomic_store_explicit(&g_isa_detected, isa, memory_order_relaxed);
    }
    return isa;
}

bool mc_cpu_vnni(void) {
    return mc_cpu_level() == ISA_AVX512 && atomic_load_explicit(&g_vnni, memory_order_relaxed);
}

const char *mc_cpu_isa(void) {
    static const char *const names[] = {"scalar", "avx2", "avx512"};
    return names[mc_cpu_level()];
}

void mc_cpu_force_scalar(bool on) {
    atomic_store(&g_force_scalar, on);
    if (!on) atomic_store(&g_isa_detected, -1);
}
