/*
 * isa.c - which instruction set the CPU kernels use.
 *
 * Detected once, on first use, from CPUID, as one of these levels (each a
 * float kernel set and an int8 kernel set; see int8.c):
 *
 *   level        float kernels   int8 kernels (quantized weights, T <= 64)  needs
 *   scalar       portable C      none (float activations)                   -
 *   avx2         AVX2            AVX2 vpmaddubsw                            AVX2, FMA, F16C
 *   avxvnni      AVX2            AVX-VNNI vpdpbusd (256-bit, VEX)           + AVX-VNNI
 *   avx512       AVX-512         the best 256-bit one of the two above      AVX-512 F/BW/VL/DQ
 *   avx512vnni   AVX-512         AVX-512 VNNI                               + AVX512-VNNI
 *
 * On 64-bit ARM (Linux: getauxval(AT_HWCAP)) the levels are
 *
 *   level        float kernels           int8 kernels (T <= 8)               needs
 *   scalar       portable C              none (float activations)            -
 *   neon         NEON (F16 by fcvtl)     NEON smull + sadalp                 AArch64 (always)
 *   dotprod      NEON                    NEON sdot                           + ASIMDDP
 *   fp16         NEON, F16 weights in    the best of the two above           + ASIMDHP
 *                FP16 arithmetic
 *
 * fp16 is used only when named: its arithmetic rounds the activations and
 * the partial sums to binary16 (see kernels_fp16.c for the error), where
 * the neon path's F16 conversion is exact; "auto" stops at dotprod.
 * Other CPUs are scalar. MOECL_CPU_ISA in the environment caps the
 * level (read whenever detection runs: on first use and after
 * mc_cpu_force_scalar(false)): the highest level this CPU has at or below
 * the one named is used, so the AVX2 kernels can be tested on an AVX-512
 * machine. Names are matched in any case; "auto" (or an empty value) means
 * no cap. Any other value is refused by mc_cpu_check_env, which the CPU
 * backend calls when a context is made; the kernels themselves (which may
 * run earlier, while a model loads) treat it as "auto".
 */
#include "backend/cpu/kernels_impl.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <strings.h>

#if MC_X86
#include <cpuid.h>
#endif
#if MC_ARM && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

#if MC_ARM
enum { LV_SCALAR, LV_NEON, LV_DOTPROD, LV_FP16, LV_COUNT };
static const char *const level_names[LV_COUNT] = {"scalar", "neon", "dotprod", "fp16"};
/* The highest level "auto" picks (fp16 only when named: see above). */
#define LV_AUTO LV_DOTPROD
#define LV_ACCEPTED "auto, fp16, dotprod, neon, scalar"
#else
enum { LV_SCALAR, LV_AVX2, LV_AVXVNNI, LV_AVX512, LV_AVX512VNNI, LV_COUNT };
static const char *const level_names[LV_COUNT] = {"scalar", "avx2", "avxvnni", "avx512", "avx512vnni"};
#define LV_AUTO (LV_COUNT - 1)
#define LV_ACCEPTED "auto, avx512vnni, avx512, avxvnni, avx2, scalar"
#endif

/* The detected choice, isa * 8 + qint; -1: not detected yet. */
static atomic_int g_detected = -1;
static atomic_bool g_force_scalar = false;

/* The cap named by MOECL_CPU_ISA: a level, LV_COUNT for none, -1 if the
 * value is not a level's name. */
static int env_cap(void) {
    const char *v = getenv("MOECL_CPU_ISA");
    if (!v || !*v || !strcasecmp(v, "auto")) return LV_COUNT;
    for (int i = 0; i < LV_COUNT; i++)
        if (!strcasecmp(v, level_names[i])) return i;
    return -1;
}

#if MC_ARM
static int detect(void) {
    bool has[LV_COUNT] = {[LV_SCALAR] = true, [LV_NEON] = true};
#if defined(__linux__)
    const unsigned long hw = getauxval(AT_HWCAP);
    has[LV_DOTPROD] = (hw & HWCAP_ASIMDDP) != 0;
    has[LV_FP16] = (hw & HWCAP_ASIMDHP) != 0;
#endif
    int cap = env_cap();
    int lv = cap < 0 || cap >= LV_COUNT ? LV_AUTO : cap;
    while (!has[lv]) lv--;
    switch (lv) {
    case LV_NEON: return ISA_NEON * 8 + QINT_NEON;
    case LV_DOTPROD: return ISA_NEON * 8 + QINT_DOTPROD;
    case LV_FP16: return ISA_FP16 * 8 + (has[LV_DOTPROD] ? QINT_DOTPROD : QINT_NEON);
    default: return ISA_SCALAR * 8 + QINT_NONE;
    }
}
#else
static int detect(void) {
    bool has[LV_COUNT] = {[LV_SCALAR] = true};
    bool avxvnni = false;
#if MC_X86
    /* F16C and AVX-VNNI from CPUID directly: clang's __builtin_cpu_supports
     * knows neither. (The OS's saving of the AVX state is covered by "avx2".) */
    unsigned a, b, c, d;
    bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    avxvnni = __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4));
    __builtin_cpu_init();
    has[LV_AVX2] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    has[LV_AVXVNNI] = has[LV_AVX2] && avxvnni;
    has[LV_AVX512] = has[LV_AVX2] && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    has[LV_AVX512VNNI] = has[LV_AVX512] && __builtin_cpu_supports("avx512vnni");
#endif
    int cap = env_cap();
    int lv = cap < 0 || cap >= LV_COUNT ? LV_COUNT - 1 : cap;
    while (!has[lv]) lv--;
    switch (lv) {
    case LV_AVX2: return ISA_AVX2 * 8 + QINT_AVX2;
    case LV_AVXVNNI: return ISA_AVX2 * 8 + QINT_AVXVNNI;
    case LV_AVX512: return ISA_AVX512 * 8 + (avxvnni ? QINT_AVXVNNI : QINT_AVX2);
    case LV_AVX512VNNI: return ISA_AVX512 * 8 + QINT_VNNI512;
    default: return ISA_SCALAR * 8 + QINT_NONE;
    }
}
#endif

static int detected(void) {
    int v = atomic_load_explicit(&g_detected, memory_order_relaxed);
    if (v < 0) {
        v = detect();
        atomic_store_explicit(&g_detected, v, memory_order_relaxed);
    }
    return v;
}

int mc_cpu_level(void) {
    if (atomic_load_explicit(&g_force_scalar, memory_order_relaxed)) return ISA_SCALAR;
    return detected() / 8;
}

int mc_cpu_qint(void) {
    if (atomic_load_explicit(&g_force_scalar, memory_order_relaxed)) return QINT_NONE;
    return detected() % 8;
}

const char *mc_cpu_isa(void) {
    static const char *const names[] = {"scalar", "avx2", "avx512", "neon", "fp16"};
    return names[mc_cpu_level()];
}

const char *mc_cpu_qint_name(int kind) {
    static const char *const names[] = {"none", "avx2", "avxvnni", "avx512vnni", "neon", "dotprod"};
    return kind >= 0 && kind <= QINT_DOTPROD ? names[kind] : "none";
}

const char *mc_cpu_int8_kernels(void) { return mc_cpu_qint_name(mc_cpu_qint()); }

void mc_cpu_force_scalar(bool on) {
    atomic_store(&g_force_scalar, on);
    if (!on) atomic_store(&g_detected, -1);
}

moecl_status mc_cpu_check_env(void) {
    if (env_cap() >= 0) return MOECL_OK;
    return mc_error(MOECL_ERR_INVALID_ARG,
                    "MOECL_CPU_ISA='%s' is not an instruction set of this build; accepted (in any case): " LV_ACCEPTED,
                    getenv("MOECL_CPU_ISA"));
}
